"""Transports: how one HTTP request reaches the API.

The worker and the synchronous calls speak to a :class:`Transport`; the default one is
:class:`HTTPTransport`. Tests and unusual environments plug in their own, e.g. :class:`MockTransport`.

In both bundled transports ``send(request, timeout)`` bounds the whole attempt by one deadline,
``timeout`` seconds after it starts: connecting (through a proxy's CONNECT tunnel and the TLS
handshake included), sending the request, and receiving the status line, the headers and the complete
body. A server that answers slowly, even one byte at a time, costs at most ``timeout``. (Resolving
the host name is left to the system's resolver and its own timeout.) An answer is read up to
:data:`MAX_RESPONSE_BYTES` of body and :data:`MAX_HEADER_BYTES` of head; a larger one is a failed
attempt. Either failure raises :class:`TransportError` and closes the connection: it never goes back
to the pool half-read.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, cast, runtime_checkable

from . import _config
from ._log import logger
from ._redact import redact_text, redact_url
from ._value import Value, set_field
from .errors import ConfigurationError, TransportError

if TYPE_CHECKING:
    import http.client
    import ssl

    from ._http_client import Connection, LimitedSocket


#: The largest response body read, in bytes (1 MiB). The API's answers are a few hundred bytes;
#: a larger one is refused as a failed attempt (``TransportError``), so a broken or hostile server
#: or proxy cannot make the SDK hold more than this in memory.
MAX_RESPONSE_BYTES = 1024 * 1024

#: The largest head (status line and header section) read, in bytes (64 KiB). ``http.client``
#: alone would accept 100 lines of 64 KiB each.
MAX_HEADER_BYTES = 64 * 1024


class Request(Value):
    """One HTTP request as the SDK builds it: method, absolute URL, headers and the JSON body."""

    __slots__ = ("method", "url", "headers", "body")
    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes | None

    def __init__(self, method: str, url: str, headers: Mapping[str, str], body: bytes | None = None) -> None:
        set_field(self, "method", method)
        set_field(self, "url", url)
        set_field(self, "headers", headers)
        set_field(self, "body", body)


class Response(Value):
    """One HTTP answer: status, headers and the complete body (at most :data:`MAX_RESPONSE_BYTES`)."""

    __slots__ = ("status", "headers", "body")
    status: int
    headers: Mapping[str, str]
    body: bytes

    def __init__(self, status: int, headers: Mapping[str, str] | None = None, body: bytes = b"") -> None:
        set_field(self, "status", status)
        set_field(self, "headers", {} if headers is None else headers)
        set_field(self, "body", body)

    def header(self, name: str) -> str | None:
        """A header's value, looked up without regard to case."""
        lowered = name.lower()
        for key, value in self.headers.items():
            if key.lower() == lowered:
                return value
        return None

    def json(self) -> Any:
        """The body decoded as JSON; None for an empty body. Raises ``ValueError`` if it is not JSON."""
        return json.loads(self.body) if self.body else None

    def error_message(self) -> str:
        """The API's ``{"error": {"message": ...}}`` text, or the start of the raw body."""
        try:
            message = self.json()["error"]["message"]
        except (ValueError, TypeError, KeyError):
            return self.body[:200].decode("utf-8", "replace") or f"HTTP {self.status}"
        return str(message)


@runtime_checkable
class Transport(Protocol):
    """Sends one request and returns the answer, or raises :class:`TransportError` when none came.

    ``send`` is called concurrently from up to ``max_concurrency`` sender threads (and from the
    threads making synchronous calls): it must be thread-safe.
    """

    def send(self, request: Request, timeout: float) -> Response:
        """Send ``request`` once; ``timeout`` (seconds) should bound the whole attempt."""
        ...

    def close(self) -> None:
        """Release pooled connections; called once, when the client shuts down."""
        ...


def configured_ca_bundle() -> str | None:
    """The CA bundle the environment asks for, as ``requests`` reads it, if any."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")


def tls_context(ca_bundle: str | None = None) -> ssl.SSLContext:
    """Verification against ``ca_bundle`` (a PEM file or a directory of hashed certificates), else
    against the bundle ``requests`` ships (certifi)."""
    import ssl  # here, not at the top: only the first TLS connection needs it

    if ca_bundle and os.path.isdir(ca_bundle):
        return ssl.create_default_context(capath=ca_bundle)
    if not ca_bundle:
        # Here, not at the top: importing requests costs more than the rest of the package.
        from requests.utils import DEFAULT_CA_BUNDLE_PATH

        ca_bundle = DEFAULT_CA_BUNDLE_PATH
    return ssl.create_default_context(cafile=ca_bundle)


def _unverified_context() -> ssl.SSLContext:
    import ssl

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


# --- one deadline for every step of an attempt ---------------------------------------------------


def _time_left(deadline: float) -> float:
    """Seconds until ``deadline``, for the next socket operation; TimeoutError once it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    return left


# --- proxies and URLs ------------------------------------------------------------------------------


def _origin(url: str) -> str:
    return "/".join(url.split("/", 3)[:3])


def usable_proxy(url: str, proxies: Mapping[str, str | None] | None = None) -> str | None:
    """The proxy for ``url``: from ``proxies`` (``requests``' shape, already checked) when given,
    else from the environment (``HTTPS_PROXY``/``HTTP_PROXY``, ``NO_PROXY`` honoured).

    Raises :class:`ConfigurationError` for what no retry can fix: a URL that is not ``http(s)://``
    with a host, or a proxy other than ``http://host[:port]``.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or not _has_valid_port(parts):
        raise ConfigurationError(
            f"cannot send to {redact_url(url)}: not an http:// or https:// URL with a host and a valid port",
            option="host",
            env="FLAMEUP_HOST",
        )
    # Here, not at the top: importing requests costs more than the rest of the package. The first
    # request to an origin asks (on the worker's thread); the answer is cached per transport.
    from requests.utils import get_environ_proxies, select_proxy

    if proxies is not None:
        # select_proxy only looks keys up (a None value means direct): any mapping will do.
        chosen: str | None = select_proxy(url, cast("dict[str, str]", proxies))
        return chosen or None
    proxy_url = get_environ_proxies(url).get(parts.scheme)
    if not proxy_url:
        return None
    if "://" not in proxy_url:  # "proxy:3128" means http://, as for requests and curl
        proxy_url = "http://" + proxy_url
    proxy = urllib.parse.urlsplit(proxy_url)
    if proxy.scheme != "http" or not proxy.hostname or not _has_valid_port(proxy):
        env = "HTTPS_PROXY" if parts.scheme == "https" else "HTTP_PROXY"
        # A password holding "/" or "#" unencoded splits the URL elsewhere: redact_url could
        # not find all of it, so such a URL is not shown at all.
        shown = redact_url(proxy_url) if _has_valid_port(proxy) else f"in {env}"
        raise ConfigurationError(
            f"cannot use the proxy {shown} for {parts.scheme}:// requests: only "
            f"http://[user:password@]host:port proxies are supported (HTTPS goes through a CONNECT "
            f"tunnel); fix {env}, or exclude {parts.hostname} with NO_PROXY",
            option="proxies",
            env=env,
        )
    return proxy_url


def _has_valid_port(parts: urllib.parse.SplitResult) -> bool:
    try:
        parts.port  # noqa: B018 (parsed on access)
    except ValueError:
        return False
    return True


def _passwords(urls: list[str]) -> list[str]:
    """The passwords in ``urls``, as written and decoded, to mask wherever they appear."""
    found = []
    for url in urls:
        password = urllib.parse.urlsplit(url).password
        if password:
            found += [password, urllib.parse.unquote(password)]
    return found


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and everything linked to it: cause, context, and exceptions in its ``args``.

    requests and urllib3 wrap the socket error in one or the other: look through all.
    """
    pending, seen = [error], set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = [current.__cause__, current.__context__, *current.args]
        pending += [item for item in linked if isinstance(item, BaseException)]


def _closed_by_peer(error: BaseException) -> bool:
    """Whether the connection was closed under us (not refused, not timed out)."""
    import http.client  # loaded already: the failed request used it

    closed = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
    return any(isinstance(linked, closed) for linked in _chain(error))


class _PooledTransport:
    """What both bundled transports share: keep-alive pools, proxies (``proxies=``, else the
    environment like ``requests`` reads it), TLS verification (``verify=``, else the CA bundle of
    ``REQUESTS_CA_BUNDLE``, else certifi's), one transparent retry of a connection the server had
    closed, one deadline per attempt, and errors mapped to :class:`TransportError` with
    credentials masked.

    ``proxies`` takes ``requests``' shape, ``{"https": "http://proxy:3128"}`` (keys ``http``,
    ``https``, ``all``, or any of them with ``://host``; a value of None goes direct), and when given
    replaces the environment's proxy settings (``NO_PROXY`` included) entirely. ``verify`` is True,
    False (no verification at all: logged as a warning), or the path of a CA bundle. Both raise
    :class:`ConfigurationError` naming the option for an unusable value.
    """

    def __init__(
        self,
        pool_size: int,
        *,
        proxies: Mapping[str, str | None] | None = None,
        verify: bool | str | os.PathLike[str] = True,
    ) -> None:
        self._pool_size = pool_size
        self._explicit_proxies = _config.proxies(proxies)
        self._verify = _config.verify(verify)
        self._ca_bundle = self._verify if isinstance(self._verify, str) else configured_ca_bundle()
        if self._verify is False:
            logger.warning(
                "verify=False: TLS certificates are NOT verified, so anyone on the network path can "
                "read and change the SDK's requests, API key included. Use it only against a local "
                "test server; for a private CA pass verify='/path/to/ca.pem'."
            )
        self._proxies: dict[str, str | None] = {}

    def check_url(self, url: str) -> None:
        """Raise :class:`ConfigurationError` now if no request to ``url`` can ever be sent.

        That is: ``url`` is not ``http(s)://`` with a host, or the proxy the environment names for
        it is not a plain ``http://`` proxy with a host. ``option``/``env`` name what to fix; no
        password appears in the message.
        """
        self._proxy_for(url)

    def _proxy_for(self, url: str) -> str | None:
        origin = _origin(url)
        if origin in self._proxies:
            return self._proxies[origin]
        # A race here only reads the environment twice; an unusable proxy is never cached.
        proxy = self._proxies[origin] = usable_proxy(url, self._explicit_proxies)
        return proxy

    def send(self, request: Request, timeout: float) -> Response:
        """Send ``request`` once and return the answer, whatever its status.

        ``timeout`` bounds the whole attempt (connect, TLS, send, the complete answer). Raises
        :class:`TransportError` when no complete answer came in time, or the answer was larger
        than :data:`MAX_RESPONSE_BYTES`; :class:`ConfigurationError` when the URL or its proxy
        cannot be used at all. Safe to call from several threads at once.
        """
        deadline = time.monotonic() + timeout
        try:
            try:
                return self._send_once(request, deadline)
            except self._failures() as exc:
                if not _closed_by_peer(exc) or time.monotonic() >= deadline:
                    raise
                # A pooled keep-alive connection the server (or a NAT, or a frozen and thawed
                # serverless runtime) had closed: once more, on a fresh connection, by the same
                # deadline. The idempotency key makes a duplicate harmless if the first one arrived.
                return self._send_once(request, deadline)
        except self._failures() as exc:
            message, chain_shows_a_password = self._describe(exc, request.url, timeout)
            if chain_shows_a_password:  # a traceback would print it
                raise TransportError(message) from None
            raise TransportError(message) from exc

    def _describe(self, error: BaseException, url: str, timeout: float) -> tuple[str, bool]:
        """``error`` as the SDK shows it, every password masked; and whether the text of an
        exception in its chain shows one."""
        from ._http_client import AnswerTooLarge

        linked = list(_chain(error))
        too_large = next((item for item in linked if isinstance(item, AnswerTooLarge)), None)
        if too_large is not None:
            text = str(too_large)
        elif any(isinstance(item, TimeoutError) for item in linked):
            text = f"timed out: no complete answer within the {timeout:g} s timeout ({type(error).__name__})"
        else:
            text = f"{type(error).__name__}: {error}"
        secrets = _passwords([url, self._proxies.get(_origin(url)) or ""])
        shows_a_password = any(redact_text(str(item), *secrets) != str(item) for item in linked)
        return redact_text(text, *secrets), shows_a_password

    def _failures(self) -> tuple[type[BaseException], ...]:
        """The exceptions of the underlying library that mean "no answer came" (looked up only
        once one was raised)."""
        return (OSError,)

    def _send_once(self, request: Request, deadline: float) -> Response:
        raise NotImplementedError

    def close(self) -> None:
        """Close every pooled connection; later sends open new ones."""
        raise NotImplementedError


# --- HTTPTransport: http.client -------------------------------------------------------------------


class _Route(NamedTuple):
    """How to reach one URL: which pool, how to open a connection, what to put on the request line.
    (A NamedTuple: internal, and cheap to define.)"""

    pool: tuple[str, str, int, str]
    scheme: str
    host: str
    port: int
    target: str
    proxy: urllib.parse.SplitResult | None
    #: Proxy credentials: on each request through a plain proxy, or on the CONNECT of a tunnel.
    proxy_headers: dict[str, str]
    tunnel_headers: dict[str, str]


class HTTPTransport(_PooledTransport):
    """The default transport: keep-alive connections of the standard library's ``http.client``.

    Each message is its own request (the API has no bulk endpoint), so the cost of one request
    bounds throughput; this one spends about a third of the CPU of a prepared request through a
    ``requests`` adapter (docs/benchmarks.md). Plain ``http://`` proxies are supported (HTTPS
    through a CONNECT tunnel); TLS is verified against ``requests``' CA bundle (certifi).
    ``proxies={"https": "http://proxy:3128"}`` (``requests``' shape) replaces the environment's
    proxy settings; ``verify`` is True, False (no verification: a warning is logged) or the path of
    a CA bundle; either raises :class:`ConfigurationError` naming it when unusable.

    ``send``'s ``timeout`` bounds the whole attempt (connect, proxy tunnel, TLS handshake, request,
    status line, headers and body); bodies over :data:`MAX_RESPONSE_BYTES` (1 MiB) are refused.
    Both end in :class:`TransportError` and a closed connection. Safe to share between threads.
    """

    def __init__(
        self,
        pool_size: int = 10,
        *,
        proxies: Mapping[str, str | None] | None = None,
        verify: bool | str | os.PathLike[str] = True,
    ) -> None:
        super().__init__(pool_size, proxies=proxies, verify=verify)
        self._idle: dict[tuple[str, str, int, str], list[Connection]] = {}
        self._routes: dict[str, _Route] = {}
        self._lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None
        self._closed = False

    def _failures(self) -> tuple[type[BaseException], ...]:
        import http.client  # loaded already, by the request that failed

        return (OSError, http.client.HTTPException)

    def _send_once(self, request: Request, deadline: float) -> Response:
        from ._http_client import refuse_beyond_cap

        route = self._routes.get(request.url) or self._route(request.url)
        connection = self._checkout(route, deadline)
        answer: http.client.HTTPResponse | None = None
        # A LimitedSocket, or the LimitedSSLSocket wrapped around one.
        sock = cast("LimitedSocket", connection.sock)
        try:
            sock.expect_answer(deadline)
            sock.settimeout(_time_left(deadline))
            headers = dict(request.headers, **route.proxy_headers) if route.proxy_headers else request.headers
            connection.request(request.method, route.target, request.body, headers)
            answer = connection.getresponse()
            sock.expect_body()
            refuse_beyond_cap(answer.length)
            # A declared length is read whole (a short body raises IncompleteRead); chunked or
            # until-close bodies only up to one byte past the cap.
            body = answer.read() if answer.length is not None else answer.read(MAX_RESPONSE_BYTES + 1)
            refuse_beyond_cap(len(body))
        except BaseException:
            # Half-read, or the answer holds the socket ("Connection: close"): close both.
            if answer is not None:
                answer.close()
            connection.close()
            raise
        if answer.will_close:
            connection.close()
        else:
            self._checkin(route, connection)
        return Response(answer.status, dict(answer.getheaders()), body)

    def _route(self, url: str) -> _Route:
        proxy_url = self._proxy_for(url)
        parts = urllib.parse.urlsplit(url)
        assert parts.hostname is not None  # _proxy_for refused URLs without a host
        port = parts.port or (443 if parts.scheme == "https" else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        proxy = urllib.parse.urlsplit(proxy_url) if proxy_url else None
        proxy_headers: dict[str, str] = {}
        if proxy is not None:
            if proxy.username:
                import base64  # here: only a proxy with credentials needs it

                credentials = (
                    f"{urllib.parse.unquote(proxy.username)}:{urllib.parse.unquote(proxy.password or '')}"
                )
                proxy_headers["Proxy-Authorization"] = (
                    "Basic " + base64.b64encode(credentials.encode()).decode()
                )
            if parts.scheme == "http":
                target = url  # a plain proxy forwards absolute URLs
        tunnel = proxy is not None and parts.scheme == "https"
        route = _Route(
            pool=(parts.scheme, parts.hostname, port, proxy_url or ""),
            scheme=parts.scheme,
            host=parts.hostname,
            port=port,
            target=target,
            proxy=proxy,
            proxy_headers={} if tunnel else proxy_headers,
            tunnel_headers=proxy_headers if tunnel else {},
        )
        self._routes[url] = route
        return route

    def _checkout(self, route: _Route, deadline: float) -> Connection:
        from ._http_client import closed_while_idle

        with self._lock:
            idle = self._idle.get(route.pool)
            while idle:
                connection = idle.pop()
                if not closed_while_idle(connection):
                    return connection
                connection.close()
        return self._connect(route, deadline)

    def _connect(self, route: _Route, deadline: float) -> Connection:
        # Here, not at the top: http.client loads most of the email package, and the first
        # connection is made on the worker's thread.
        from ._http_client import Connection, TLSConnection

        host, port = (
            (route.proxy.hostname, route.proxy.port or 80) if route.proxy else (route.host, route.port)
        )
        assert host is not None
        connection: Connection
        if route.scheme == "https":
            connection = TLSConnection(host, port, deadline, context=self._tls_context())
            if route.proxy is not None:
                connection.set_tunnel(route.host, route.port, headers=route.tunnel_headers)
        else:
            connection = Connection(host, port, deadline)
        try:
            connection.connect()
        except BaseException:
            connection.close()
            raise
        return connection

    def _tls_context(self) -> ssl.SSLContext:
        from ._http_client import LimitedSSLSocket

        if self._tls is None:
            self._tls = _unverified_context() if self._verify is False else tls_context(self._ca_bundle)
            self._tls.sslsocket_class = LimitedSSLSocket
        return self._tls

    def _checkin(self, route: _Route, connection: Connection) -> None:
        with self._lock:
            idle = self._idle.setdefault(route.pool, [])
            if not self._closed and len(idle) < self._pool_size:
                idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        """Close every idle pooled connection; a connection in use closes when its request ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()


def __getattr__(name: str) -> Any:
    # RequestsTransport lived here until it moved to a module of its own (which imports requests,
    # so that importing this one does not): ``from flameup_analytics.transport import
    # RequestsTransport`` keeps working.
    if name == "RequestsTransport":
        from .requests_transport import RequestsTransport

        return RequestsTransport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class MockTransport:
    """A transport that answers with a function of the request, for tests (like httpx's).

    >>> transport = MockTransport(lambda request: Response(200))
    """

    def __init__(self, handler: Callable[[Request], Response]) -> None:
        self.handler = handler
        self.requests: list[Request] = []
        self._lock = threading.Lock()

    def send(self, request: Request, timeout: float) -> Response:
        """Record ``request`` in :attr:`requests` and return ``handler(request)``; ``timeout`` is ignored."""
        with self._lock:
            self.requests.append(request)
        return self.handler(request)

    def close(self) -> None:
        """Nothing to release."""
