"""RequestsTransport: the optional transport that sends through a ``requests`` adapter over urllib3.

A module of its own so that ``import flameup_analytics`` never loads ``requests`` and ``urllib3``
(tens of milliseconds): the default :class:`~flameup_analytics.transport.HTTPTransport` only needs
``requests``' proxy and CA bundle helpers, which it imports when it first uses them. The package
imports this module on first access to ``flameup_analytics.RequestsTransport``.
"""

from __future__ import annotations

import http.client
import io
import os
import socket
import threading
import urllib.parse
from collections.abc import Mapping
from typing import Any, cast

import requests
import requests.adapters
import urllib3
import urllib3.connection
import urllib3.exceptions
from requests.structures import CaseInsensitiveDict

from ._http_client import AnswerLimits, refuse_beyond_cap
from .transport import MAX_RESPONSE_BYTES, Request, Response, _PooledTransport, _time_left

__all__ = ["RequestsTransport"]


class _AnswerReader(io.RawIOBase, AnswerLimits):
    """A socket urllib3 made, as one answer is read from it, with the same limits."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        # A file of the socket keeps it open while this reads: http.client closes the connection
        # and hands its socket to the answer when the server says "Connection: close".
        self._file = sock.makefile("rb", buffering=0)
        self.expect_answer(deadline)

    def makefile(self, mode: str) -> io.BufferedReader:
        """What ``http.client.HTTPResponse`` asks its socket for."""
        return io.BufferedReader(self)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self._sock.settimeout(_time_left(self.deadline))
        return self._counted(self._sock.recv_into(buffer))

    def close(self) -> None:
        self._file.close()
        super().close()


class _Answer(http.client.HTTPResponse):
    """An ``http.client`` answer read through an :class:`_AnswerReader`."""

    def __init__(self, sock: socket.socket, deadline: float, method: str | None = None) -> None:
        self._reader = _AnswerReader(sock, deadline)
        super().__init__(cast(socket.socket, self._reader), method=method)

    def begin(self) -> None:
        super().begin()
        self._reader.expect_body()


#: The deadline of the attempt this thread is making through a RequestsTransport: urllib3 builds
#: and reuses connections inside ``adapter.send``, out of reach of a per-call argument.
_requests_attempt = threading.local()


class _Urllib3Connection(urllib3.connection.HTTPConnection):
    """urllib3's connection, whose answers (a proxy's CONNECT answer too) are read through an
    :class:`_AnswerReader` by the deadline of the attempt this thread is making."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        # The TLS handshake that may follow gets only what the connect left.
        sock.settimeout(_time_left(_requests_attempt.deadline))
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        # urllib3 would set the socket's timeout for sending from the value fixed before connecting.
        self.timeout = _time_left(_requests_attempt.deadline)
        super().request(*args, **kwargs)

    def response_class(  # type: ignore[override]
        self, sock: socket.socket, debuglevel: int = 0, method: str | None = None, url: str | None = None
    ) -> _Answer:
        return _Answer(sock, _requests_attempt.deadline, method)


class _Urllib3TLSConnection(_Urllib3Connection, urllib3.connection.HTTPSConnection):
    pass


class _Urllib3Pool(urllib3.HTTPConnectionPool):
    ConnectionCls = _Urllib3Connection


class _Urllib3TLSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _Urllib3TLSConnection


_URLLIB3_POOLS = {"http": _Urllib3Pool, "https": _Urllib3TLSPool}


class _Adapter(requests.adapters.HTTPAdapter):
    """An adapter whose pools (direct and through a proxy) make deadline-bound connections."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _URLLIB3_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = _URLLIB3_POOLS
        return manager


class RequestsTransport(_PooledTransport):
    """``requests`` at the level that costs least per request: a prepared request sent straight
    through a pooled keep-alive ``HTTPAdapter``, skipping the Session's merging, hooks and cookies.

    Slower than :class:`HTTPTransport`; for code that mocks ``requests`` (``responses``) or needs
    an adapter of its own. Same guarantees: ``timeout`` bounds the whole attempt, bodies over
    :data:`MAX_RESPONSE_BYTES` (1 MiB) are refused, plain ``http://`` proxies only; ``proxies`` and
    ``verify`` as for :class:`HTTPTransport`.
    Safe to share between threads.
    """

    def __init__(
        self,
        pool_size: int = 10,
        *,
        proxies: Mapping[str, str | None] | None = None,
        verify: bool | str | os.PathLike[str] = True,
    ) -> None:
        super().__init__(pool_size, proxies=proxies, verify=verify)
        self._adapter = _Adapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)

    def _failures(self) -> tuple[type[BaseException], ...]:
        return (requests.RequestException, urllib3.exceptions.HTTPError, OSError, http.client.HTTPException)

    def _send_once(self, request: Request, deadline: float) -> Response:
        proxy_url = self._proxy_for(request.url)
        prepared = requests.PreparedRequest()
        prepared.method = request.method
        prepared.url = request.url
        headers = CaseInsensitiveDict(request.headers)
        if request.body is not None:
            # Without it the adapter would fall back to chunked encoding.
            headers["Content-Length"] = str(len(request.body))
        prepared.headers = headers
        prepared.body = request.body
        _requests_attempt.deadline = deadline
        connect_timeout = _time_left(deadline)
        answer = self._adapter.send(
            prepared,
            stream=True,
            timeout=(connect_timeout, connect_timeout),
            verify=False if self._verify is False else (self._ca_bundle or True),
            proxies={urllib.parse.urlsplit(request.url).scheme: proxy_url} if proxy_url else {},
        )
        try:
            refuse_beyond_cap(answer.raw.length_remaining)
            # Decoded bytes: a small compressed body cannot expand past the cap either.
            body = answer.raw.read(MAX_RESPONSE_BYTES + 1, decode_content=True)
            refuse_beyond_cap(len(body))
        except BaseException:
            answer.close()  # closes the half-read connection instead of pooling it
            raise
        # Read to its end: urllib3 has put the connection back in the pool.
        return Response(answer.status_code, answer.headers, body)

    def close(self) -> None:
        """Close every pooled connection of the adapter."""
        self._adapter.close()
