"""Internal. The HTTP/1.1 plumbing of the local server: sockets, framing, one thread per connection.

What a request means is not decided here: each complete request goes to the owner's ``_handle``
(a :class:`LocalServer`), and the :class:`~._routes.Reply` it returns is written back, or the
connection closed or held as the reply says.
"""

from __future__ import annotations

import contextlib
import email.utils
import re
import selectors
import socket
import socketserver
import sys
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from ._routes import Reply, error

# Bodies beyond this are refused unread: the SDK caps messages far below it, and
# reading a hostile Content-Length would allocate that much memory up front.
_MAX_BODY = 16 * 1024 * 1024
_MAX_LINE = 65536
_REASONS: dict[int, str] = {status.value: status.phrase for status in HTTPStatus}
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")


class Owner(Protocol):
    """What the HTTP layer needs from the server it serves: a :class:`LocalServer`."""

    @property
    def latency(self) -> float: ...

    def _handle(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes,
        received_at: float,
        framing_error: Reply | None,
    ) -> Reply: ...

    def _track_connection(self, connection: socket.socket) -> None: ...

    def _forget_connection(self, connection: socket.socket) -> None: ...


class _FramingError(Exception):
    """The request body cannot be read, so the connection cannot be reused."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def shutdown_quietly(connection: socket.socket) -> None:
    # The client or the handler may have closed it already.
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Replies go out in one write, but a 100-continue interim reply does not, and
    # Nagle's algorithm would then hold the final reply until a delayed ACK.
    disable_nagle_algorithm = True
    server: HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.owner._track_connection(self.connection)

    def finish(self) -> None:
        self.server.owner._forget_connection(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Stay silent: benchmarks push thousands of requests per second."""

    def _serve(self) -> None:
        owner = self.server.owner
        received_at = time.monotonic()
        headers = {name.lower(): value for name, value in self.headers.items()}
        framing_error: Reply | None = None
        try:
            body = self._read_body(headers)
        except _FramingError as exc:
            body = b""
            framing_error = error(exc.status, str(exc))
            # Unread body bytes would be parsed as the next request.
            self.close_connection = True
        latency = owner.latency
        if latency > 0:
            time.sleep(latency)
        reply = owner._handle(self.command, self.path, headers, body, received_at, framing_error)
        if reply.release is not None:
            reply.release.wait()
        if reply.status == 0:
            self.close_connection = True
            return
        self._write(reply)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve

    def _read_body(self, headers: dict[str, str]) -> bytes:
        transfer_encoding = headers.get("transfer-encoding")
        if transfer_encoding is not None:
            if transfer_encoding.strip().lower() != "chunked":
                raise _FramingError(501, "only chunked Transfer-Encoding is supported")
            return self._read_chunked()
        declared = headers.get("content-length")
        if declared is None:
            return b""
        declared = declared.strip()
        # int() alone would accept "+5", "1_0" and non-ASCII digits.
        if not (declared.isascii() and declared.isdigit()):
            raise _FramingError(400, "invalid Content-Length")
        length = int(declared)
        if length > _MAX_BODY:
            raise _FramingError(413, "request body too large")
        return self._read_exactly(length)

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            size_field = self.rfile.readline(_MAX_LINE).split(b";", 1)[0].strip()
            if _CHUNK_SIZE.fullmatch(size_field) is None:
                raise _FramingError(400, "malformed chunk size")
            size = int(size_field, 16)
            if size == 0:
                break
            total += size
            if total > _MAX_BODY:
                raise _FramingError(413, "request body too large")
            chunks.append(self._read_exactly(size))
            if self.rfile.readline(_MAX_LINE) not in (b"\r\n", b"\n"):
                raise _FramingError(400, "malformed chunk terminator")
        while self.rfile.readline(_MAX_LINE) not in (b"\r\n", b"\n", b""):
            pass  # Trailer fields carry nothing this API uses.
        return b"".join(chunks)

    def _read_exactly(self, length: int) -> bytes:
        data = self.rfile.read(length)
        if len(data) < length:
            raise ConnectionResetError("client closed the connection mid-body")
        return data

    def _write(self, reply: Reply) -> None:
        lines = [
            f"{self.protocol_version} {reply.status} {_REASONS.get(reply.status, '')}",
            "Content-Type: application/json",
            f"Content-Length: {len(reply.payload)}",
            # Like the real API's: `flameup-analytics check` compares it with the local clock.
            f"Date: {email.utils.formatdate(usegmt=True)}",
        ]
        lines.extend(f"{name}: {value}" for name, value in reply.headers)
        if self.close_connection:
            lines.append("Connection: close")
        head = "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n"
        # One write per reply: a separate body write costs a syscall and a packet.
        self.wfile.write(head if self.command == "HEAD" else head + reply.payload)


class HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    # With the default backlog of 5, a burst of new connections makes the kernel
    # drop SYNs, and clients then wait a full second before retrying.
    request_queue_size = 1024

    def __init__(self, owner: Owner, host: str, port: int) -> None:
        self.owner = owner
        self.host = host
        if ":" in host:
            self.address_family = socket.AF_INET6
        # Made first: a failed bind calls server_close(), which closes these too.
        self._wake_reader, self._wake_writer = socket.socketpair()
        super().__init__((host, port), Handler)

    def serve_until_woken(self) -> None:
        """Accept connections, each served in its own thread, until ``wake()``.

        serve_forever() only notices shutdown() between polls, which would make
        stop() either slow or the idle server busy; a wake-up socket avoids both.
        """
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            selector.register(self._wake_reader, selectors.EVENT_READ)
            while True:
                ready = selector.select()
                if any(key.fileobj is self._wake_reader for key, _ in ready):
                    return
                try:
                    request, client_address = self.get_request()
                except OSError:
                    continue  # The client gave up before we accepted it.
                try:
                    self.process_request(request, client_address)
                except Exception:
                    # e.g. no thread could be started: drop this connection, keep serving.
                    self.handle_error(request, client_address)
                    self.shutdown_request(request)

    def wake(self) -> None:
        self._wake_writer.send(b"\0")

    def server_close(self) -> None:
        super().server_close()
        self._wake_reader.close()
        self._wake_writer.close()

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn), which can take
        # seconds on some machines, only to fill in server_name.
        socketserver.TCPServer.server_bind(self)
        self.server_name = self.host
        self.server_port = self.socket.getsockname()[1]

    def handle_error(
        self,
        request: socket.socket | tuple[bytes, socket.socket],
        client_address: Any,
    ) -> None:
        # Clients vanishing mid-request, and stop() shutting sockets, are routine.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)
