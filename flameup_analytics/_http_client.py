"""Internal. HTTPTransport's ``http.client`` pieces: answers read under one deadline and a cap on
their size, and connections that connect by a deadline.

A module of its own, imported on HTTPTransport's first connection or request (on the worker's
thread) rather than with the package: ``http.client`` loads most of the ``email`` package.
"""

from __future__ import annotations

import http.client
import math
import select
import socket
import ssl
from typing import Any

from .transport import MAX_HEADER_BYTES, MAX_RESPONSE_BYTES, _time_left


class AnswerTooLarge(http.client.HTTPException):
    """The server sent more than the SDK reads; the connection cannot be reused."""


_BODY_TOO_LARGE = f"answer larger than {MAX_RESPONSE_BYTES // 1024 // 1024} MiB"
_HEAD_TOO_LARGE = f"answer's header section larger than {MAX_HEADER_BYTES // 1024} KiB"


class AnswerLimits:
    """What the answer being read from a socket may still take: time until ``deadline``, and
    ``allowance`` more bytes. Set for each answer. Every receive waits only for the time left and
    is counted, so a server dripping bytes cannot stretch an attempt, nor a large answer fill memory.
    """

    deadline = math.inf
    allowance = MAX_HEADER_BYTES
    refusal = _HEAD_TOO_LARGE

    def expect_answer(self, deadline: float) -> None:
        """The next bytes are a new answer's head, due by ``deadline``."""
        self.deadline = deadline
        self.allowance = MAX_HEADER_BYTES
        self.refusal = _HEAD_TOO_LARGE

    def expect_body(self) -> None:
        """The head is in; the body (chunk framing and trailers included) gets its own allowance."""
        self.allowance = MAX_RESPONSE_BYTES + MAX_HEADER_BYTES
        self.refusal = _BODY_TOO_LARGE

    def _counted(self, received: int) -> int:
        self.allowance -= received
        if self.allowance < 0:
            raise AnswerTooLarge(self.refusal)
        return received


class LimitedSocket(socket.socket, AnswerLimits):
    """HTTPTransport's TCP sockets. ``http.client`` reads an answer through ``makefile()``, one
    ``recv_into`` at a time: limits kept on the socket cost the least per request."""

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        self.settimeout(_time_left(self.deadline))
        return self._counted(super().recv_into(buffer, nbytes, flags))


class LimitedSSLSocket(ssl.SSLSocket, AnswerLimits):
    """HTTPTransport's TLS sockets (its ``SSLContext.sslsocket_class``)."""

    def recv_into(self, buffer: Any, nbytes: int | None = None, flags: int = 0) -> int:
        self.settimeout(_time_left(self.deadline))
        return self._counted(super().recv_into(buffer, nbytes, flags))


def refuse_beyond_cap(body_size: int | None) -> None:
    """:class:`AnswerTooLarge` if a body of ``body_size`` bytes (declared or read) is over the cap."""
    if body_size is not None and body_size > MAX_RESPONSE_BYTES:
        raise AnswerTooLarge(_BODY_TOO_LARGE)


# --- connections that connect by a deadline -------------------------------------------------------


def open_socket(address: tuple[str, int], deadline: float) -> LimitedSocket:
    """A TCP connection to the first of ``address``'s addresses that accepts before ``deadline``.

    ``socket.create_connection`` would give every address the whole timeout.
    """
    host, port = address
    error: OSError = OSError(f"no address for {host}")
    for family, kind, proto, _, sockaddr in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
        sock = LimitedSocket(family, kind, proto)
        sock.expect_answer(deadline)  # a proxy's answer to CONNECT comes first
        try:
            sock.settimeout(_time_left(deadline))
            sock.connect(sockaddr)
            # Also the budget of the TLS handshake that may follow (one deadline for all of it).
            sock.settimeout(_time_left(deadline))
        except OSError as exc:
            sock.close()
            error = exc
            continue
        # http.client writes the head and the body of a request separately: with Nagle's
        # algorithm on, the body would wait for the peer's (delayed) ACK of the head, up to 40 ms
        # a request on a real network. urllib3 turns it off for the same reason.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise error


class Connection(http.client.HTTPConnection):
    """An ``http.client`` connection on a :class:`LimitedSocket` that connects by ``deadline``."""

    def __init__(self, host: str, port: int, deadline: float, **options: Any) -> None:
        super().__init__(host, port, **options)
        self._deadline = deadline
        self._create_connection = self._connect_by_deadline

    def _connect_by_deadline(
        self, address: tuple[str, int], timeout: object = None, source_address: object = None
    ) -> socket.socket:
        return open_socket(address, self._deadline)


class TLSConnection(Connection, http.client.HTTPSConnection):
    pass


def closed_while_idle(connection: http.client.HTTPConnection) -> bool:
    """An idle keep-alive socket that became readable was closed (or broken) by the other end."""
    sock = connection.sock
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)
