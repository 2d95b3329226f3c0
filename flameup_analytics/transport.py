"""Transports: how one HTTP request reaches the API.

The worker and the synchronous calls speak to a :class:`Transport`; the default one is
:class:`RequestsTransport`. Tests and unusual environments plug in their own, e.g. :class:`MockTransport`.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import select
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import requests
import requests.adapters
from requests.structures import CaseInsensitiveDict
from requests.utils import DEFAULT_CA_BUNDLE_PATH, get_environ_proxies

from .errors import TransportError


@dataclass(frozen=True)
class Request:
    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes | None = None


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """A header's value, looked up without regard to case."""
        lowered = name.lower()
        for key, value in self.headers.items():
            if key.lower() == lowered:
                return value
        return None

    def json(self) -> Any:
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
    """Sends one request and returns the answer, or raises :class:`TransportError` when none came."""

    def send(self, request: Request, timeout: float) -> Response: ...

    def close(self) -> None: ...


def configured_ca_bundle() -> str | None:
    """The CA bundle the environment asks for, as ``requests`` reads it, if any."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")


def tls_context(ca_bundle: str | None = None) -> ssl.SSLContext:
    """Verification against ``ca_bundle``, else against the bundle ``requests`` ships (certifi)."""
    return ssl.create_default_context(cafile=ca_bundle or DEFAULT_CA_BUNDLE_PATH)


class _PooledTransport:
    """What both bundled transports share: keep-alive pools, proxies from the environment like
    ``requests`` reads them, a CA bundle from ``REQUESTS_CA_BUNDLE``, one transparent retry of a
    connection the server had closed, and errors mapped to :class:`TransportError`."""

    #: The exceptions of the underlying library that mean "no answer came".
    _errors: tuple[type[BaseException], ...] = (OSError,)

    def __init__(self, pool_size: int) -> None:
        self._pool_size = pool_size
        self._ca_bundle = configured_ca_bundle()
        self._proxies: dict[str, dict[str, str]] = {}

    def _proxies_for(self, url: str) -> dict[str, str]:
        origin = "/".join(url.split("/", 3)[:3])
        proxies = self._proxies.get(origin)
        if proxies is None:  # a race here only looks the environment up twice
            proxies = self._proxies[origin] = get_environ_proxies(url)
        return proxies

    def send(self, request: Request, timeout: float) -> Response:
        try:
            try:
                return self._send_once(request, timeout)
            except self._errors as exc:
                if not _closed_by_peer(exc):
                    raise
                # A pooled keep-alive connection the server (or a NAT, or a frozen and thawed
                # serverless runtime) had closed: once more, on a fresh connection. The
                # idempotency key makes a duplicate harmless if the first one did arrive.
                return self._send_once(request, timeout)
        except self._errors as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}") from exc

    def _send_once(self, request: Request, timeout: float) -> Response:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class _Route:
    """How to reach one URL: which pool, how to open a connection, what to put on the request line."""

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
    """

    _errors = (OSError, http.client.HTTPException)

    def __init__(self, pool_size: int = 10) -> None:
        super().__init__(pool_size)
        self._idle: dict[tuple[str, str, int, str], list[http.client.HTTPConnection]] = {}
        self._routes: dict[str, _Route] = {}
        self._lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None
        self._closed = False

    def _send_once(self, request: Request, timeout: float) -> Response:
        route = self._routes.get(request.url) or self._route(request.url)
        connection = self._checkout(route, timeout)
        try:
            connection.timeout = timeout
            if connection.sock is not None:
                connection.sock.settimeout(timeout)
            headers = dict(request.headers, **route.proxy_headers) if route.proxy_headers else request.headers
            connection.request(request.method, route.target, request.body, headers)
            answer = connection.getresponse()
            body = answer.read()
        except BaseException:
            connection.close()
            raise
        if answer.will_close:
            connection.close()
        else:
            self._checkin(route, connection)
        return Response(answer.status, dict(answer.getheaders()), body)

    def _route(self, url: str) -> _Route:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise http.client.InvalidURL(f"cannot send to {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        proxy_url = self._proxies_for(url).get(parts.scheme)
        proxy = urllib.parse.urlsplit(proxy_url) if proxy_url else None
        proxy_headers: dict[str, str] = {}
        if proxy is not None:
            if proxy.scheme != "http" or not proxy.hostname:
                raise http.client.InvalidURL(f"only http:// proxies are supported, not {proxy_url!r}")
            if proxy.username:
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

    def _checkout(self, route: _Route, timeout: float) -> http.client.HTTPConnection:
        with self._lock:
            idle = self._idle.get(route.pool)
            while idle:
                connection = idle.pop()
                if not _closed_while_idle(connection):
                    return connection
                connection.close()
        return self._connect(route, timeout)

    def _connect(self, route: _Route, timeout: float) -> http.client.HTTPConnection:
        host, port = (
            (route.proxy.hostname, route.proxy.port or 80) if route.proxy else (route.host, route.port)
        )
        assert host is not None
        connection: http.client.HTTPConnection
        if route.scheme == "https":
            connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=self._tls_context())
            if route.proxy is not None:
                connection.set_tunnel(route.host, route.port, headers=route.tunnel_headers)
        else:
            connection = http.client.HTTPConnection(host, port, timeout=timeout)
        connection.connect()
        assert connection.sock is not None
        # http.client writes the head and the body of a request separately: with Nagle's
        # algorithm on, the body would wait for the peer's (delayed) ACK of the head, up to 40 ms
        # a request on a real network. urllib3 turns it off for the same reason.
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = tls_context(self._ca_bundle)
        return self._tls

    def _checkin(self, route: _Route, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(route.pool, [])
            if not self._closed and len(idle) < self._pool_size:
                idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()


def _closed_while_idle(connection: http.client.HTTPConnection) -> bool:
    """An idle keep-alive socket that became readable was closed (or broken) by the other end."""
    sock = connection.sock
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class RequestsTransport(_PooledTransport):
    """``requests`` at the level that costs least per request: a prepared request sent straight
    through a pooled keep-alive ``HTTPAdapter``, skipping the Session's merging, hooks and cookies.

    Slower than :class:`HTTPTransport`; for code that mocks ``requests`` (``responses``) or needs
    an adapter of its own.
    """

    _errors = (requests.RequestException, OSError)

    def __init__(self, pool_size: int = 10) -> None:
        super().__init__(pool_size)
        self._adapter = requests.adapters.HTTPAdapter(
            pool_connections=1, pool_maxsize=pool_size, max_retries=0
        )

    def _send_once(self, request: Request, timeout: float) -> Response:
        prepared = requests.PreparedRequest()
        prepared.method = request.method
        prepared.url = request.url
        headers = CaseInsensitiveDict(request.headers)
        if request.body is not None:
            # Without it the adapter would fall back to chunked encoding.
            headers["Content-Length"] = str(len(request.body))
        prepared.headers = headers
        prepared.body = request.body
        answer = self._adapter.send(
            prepared,
            timeout=timeout,
            verify=self._ca_bundle or True,
            proxies=self._proxies_for(request.url),
        )
        body = answer.content  # reads the whole body, which returns the connection to the pool
        return Response(answer.status_code, answer.headers, body)

    def close(self) -> None:
        self._adapter.close()


def _closed_by_peer(error: BaseException) -> bool:
    """Whether the connection was closed under us (not refused, not timed out).

    requests and urllib3 wrap the socket error, in ``args`` or as cause/context: look through all.
    """
    pending, seen = [error], set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)):
            return True
        linked = [current.__cause__, current.__context__, *current.args]
        pending += [item for item in linked if isinstance(item, BaseException)]
    return False


class MockTransport:
    """A transport that answers with a function of the request, for tests (like httpx's).

    >>> transport = MockTransport(lambda request: Response(200))
    """

    def __init__(self, handler: Callable[[Request], Response]) -> None:
        self.handler = handler
        self.requests: list[Request] = []
        self._lock = threading.Lock()

    def send(self, request: Request, timeout: float) -> Response:
        with self._lock:
            self.requests.append(request)
        return self.handler(request)

    def close(self) -> None:
        pass
