"""Transports: how one HTTP request reaches the API.

The worker and the synchronous calls speak to a :class:`Transport`; the default one is
:class:`RequestsTransport`. Tests and unusual environments plug in their own, e.g. :class:`MockTransport`.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import requests
import requests.adapters
import urllib3
import urllib3.exceptions
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


class _PooledTransport:
    """What both bundled transports share: keep-alive pools, proxies from the environment like
    ``requests`` reads them, a CA bundle from ``REQUESTS_CA_BUNDLE``, one transparent retry of a
    connection the server had closed, and errors mapped to :class:`TransportError`."""

    #: The exceptions of the underlying library that mean "no answer came".
    _errors: tuple[type[BaseException], ...] = (OSError,)

    def __init__(self, pool_size: int) -> None:
        self._pool_size = pool_size
        self._ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
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


class HTTPTransport(_PooledTransport):
    """The default transport: urllib3, the HTTP engine under ``requests``, used directly.

    Each message is its own request (the API has no bulk endpoint), so per-request cost is what
    bounds throughput: this spends about 40 % less CPU per request than a prepared request
    through a ``requests`` adapter (see docs/benchmarks.md).
    """

    _errors = (urllib3.exceptions.HTTPError, OSError)

    def __init__(self, pool_size: int = 10) -> None:
        super().__init__(pool_size)
        self._manager = urllib3.PoolManager(
            num_pools=4,
            maxsize=pool_size,
            cert_reqs="CERT_REQUIRED",
            ca_certs=self._ca_bundle or DEFAULT_CA_BUNDLE_PATH,
        )
        self._proxy_managers: dict[str, urllib3.ProxyManager] = {}
        self._pools: dict[str, urllib3.HTTPConnectionPool] = {}

    def _send_once(self, request: Request, timeout: float) -> Response:
        url = request.url
        scheme, _, rest = url.partition("://")
        origin, slash, path = rest.partition("/")
        proxy = self._proxies_for(url).get(scheme)
        options: dict[str, Any] = {
            "body": request.body,
            "headers": dict(request.headers),
            "retries": False,
            "redirect": False,
            "timeout": timeout,
            "preload_content": True,
        }
        if proxy:
            answer = self._proxy_manager(proxy).urlopen(request.method, url, **options)
        else:
            key = scheme + "://" + origin
            pool = self._pools.get(key)
            if pool is None:
                pool = self._pools[key] = self._manager.connection_from_url(url)
            answer = pool.urlopen(request.method, slash + path, **options)
        return Response(answer.status, answer.headers, answer.data)

    def _proxy_manager(self, proxy: str) -> urllib3.ProxyManager:
        manager = self._proxy_managers.get(proxy)
        if manager is None:
            manager = self._proxy_managers[proxy] = urllib3.ProxyManager(
                proxy,
                maxsize=self._pool_size,
                cert_reqs="CERT_REQUIRED",
                ca_certs=self._ca_bundle or DEFAULT_CA_BUNDLE_PATH,
            )
        return manager

    def close(self) -> None:
        self._manager.clear()
        for manager in self._proxy_managers.values():
            manager.clear()


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
