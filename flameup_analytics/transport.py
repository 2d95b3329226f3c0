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
from requests.structures import CaseInsensitiveDict
from requests.utils import get_environ_proxies

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


class RequestsTransport:
    """``requests`` at the level that costs least per request: a prepared request sent straight
    through a pooled keep-alive ``HTTPAdapter``, skipping the Session's merging, hooks and cookies.

    Honours ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY`` and ``REQUESTS_CA_BUNDLE`` like a Session does.
    """

    def __init__(self, pool_size: int = 10) -> None:
        self._adapter = requests.adapters.HTTPAdapter(
            pool_connections=1, pool_maxsize=pool_size, max_retries=0
        )
        self._verify: bool | str = (
            os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        )
        self._proxies: dict[str, dict[str, str]] = {}
        self._proxies_lock = threading.Lock()

    def _proxies_for(self, url: str) -> dict[str, str]:
        origin = url.split("/", 3)[:3]
        key = "/".join(origin)
        proxies = self._proxies.get(key)
        if proxies is None:
            with self._proxies_lock:
                proxies = self._proxies[key] = get_environ_proxies(url)
        return proxies

    def send(self, request: Request, timeout: float) -> Response:
        prepared = requests.PreparedRequest()
        prepared.method = request.method
        prepared.url = request.url
        headers = CaseInsensitiveDict(request.headers)
        if request.body is not None:
            # Without it the adapter would fall back to chunked encoding.
            headers["Content-Length"] = str(len(request.body))
        prepared.headers = headers
        prepared.body = request.body
        try:
            try:
                return self._send(prepared, timeout)
            except requests.ConnectionError as exc:
                if not _closed_by_peer(exc):
                    raise
                # A pooled keep-alive connection the server (or a NAT, or a frozen and thawed
                # serverless runtime) had closed: once more, on a fresh connection. The
                # idempotency key makes a duplicate harmless if the first one did arrive.
                return self._send(prepared, timeout)
        except (requests.RequestException, OSError) as exc:
            raise TransportError(f"{type(exc).__name__}: {exc}") from exc

    def _send(self, prepared: requests.PreparedRequest, timeout: float) -> Response:
        answer = self._adapter.send(
            prepared, timeout=timeout, verify=self._verify, proxies=self._proxies_for(prepared.url or "")
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
