"""HTTP servers on 127.0.0.1 that misbehave on purpose, for the transports' fault tests.

Standard library only. Each server reads a request (head and ``Content-Length`` body), then lets an
answer function write whatever it likes: slowly, endlessly, or too much. It records whether the
client hung up while it was still answering, which is how a test sees that the transport closed
the connection instead of pooling it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from types import TracebackType

#: Writes the answer to one request; returns early once ``stopped`` is set.
Answer = Callable[[socket.socket, threading.Event], None]

#: The most any answer below writes, whatever its name promises: the same tests run against a
#: transport without a cap (to see them fail) and must not take the host's memory with them.
SAFETY_LIMIT = 64 * 1024 * 1024


class MisbehavingServer:
    """Serves every connection on its own thread with ``answer``; use as a ``with`` block."""

    def __init__(self, answer: Answer) -> None:
        self._answer = answer
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        #: Set when a write failed because the client had closed the connection.
        self.client_hung_up = threading.Event()
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._connections: list[socket.socket] = []
        self._threads: list[threading.Thread] = []

    @property
    def connections(self) -> int:
        """How many connections clients opened so far."""
        with self._lock:
            return len(self._connections)

    def __enter__(self) -> MisbehavingServer:
        self._spawn(self._accept)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._stopped.set()
        with self._lock:
            connections, threads = list(self._connections), list(self._threads)
        # shutdown() wakes the threads blocked in accept() or recv() (close() alone would not), and
        # a transport still reading (one without a deadline).
        for sock in [self._listener, *connections]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in threads:
            thread.join(timeout=5)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._connections.append(connection)
            self._spawn(self._serve, connection)

    def _serve(self, connection: socket.socket) -> None:
        try:
            while not self._stopped.is_set() and _read_request(connection):
                self._answer(connection, self._stopped)
        except (BrokenPipeError, ConnectionResetError):
            self.client_hung_up.set()
        except OSError:
            pass  # closed by __exit__


def _read_request(connection: socket.socket) -> bool:
    """Consume one request; False when the client closed the connection instead."""
    received = b""
    while b"\r\n\r\n" not in received:
        data = connection.recv(65536)
        if not data:
            return False
        received += data
    head, _, body = received.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        data = connection.recv(65536)
        if not data:
            return False
        body += data
    return True


def drip(prefix: bytes, dripped: bytes, interval: float = 0.05) -> Answer:
    """``prefix`` at once, then ``dripped`` one byte every ``interval`` seconds (minutes in all)."""

    def answer(connection: socket.socket, stopped: threading.Event) -> None:
        connection.sendall(prefix)
        for index in range(len(dripped)):
            if stopped.wait(interval):
                return
            connection.sendall(dripped[index : index + 1])

    return answer


#: A valid head and body, for the drip to cut in the part a test wants slow.
STATUS_LINE = b"HTTP/1.1 200 OK\r\n"
SLOW_HEADER = b"X-Slow: " + b"s" * 10_000 + b"\r\n"


def drip_status_line() -> Answer:
    return drip(b"", b"HTTP/1.1 200 " + b"O" * 10_000 + b"\r\nContent-Length: 0\r\n\r\n")


def drip_headers() -> Answer:
    return drip(STATUS_LINE, SLOW_HEADER + b"Content-Length: 0\r\n\r\n")


def drip_body() -> Answer:
    body = b'{"success": true, "padding": "' + b"p" * 10_000 + b'"}'
    return drip(STATUS_LINE + b"Content-Length: %d\r\n\r\n" % len(body), body)


def huge_body(length: int = 100 * 1000 * 1000) -> Answer:
    """A 200 declaring ``length`` bytes of body, and sending them (up to :data:`SAFETY_LIMIT`)."""

    def answer(connection: socket.socket, stopped: threading.Event) -> None:
        connection.sendall(STATUS_LINE + b"Content-Length: %d\r\n\r\n" % length)
        _send_repeatedly(connection, stopped, b"0" * 65536, min(length, SAFETY_LIMIT))

    return answer


def endless_chunks() -> Answer:
    """A chunked 200 whose chunks keep coming (up to :data:`SAFETY_LIMIT`)."""

    def answer(connection: socket.socket, stopped: threading.Event) -> None:
        connection.sendall(STATUS_LINE + b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n" % 65536 + b"c" * 65536 + b"\r\n"
        _send_repeatedly(connection, stopped, chunk, SAFETY_LIMIT)

    return answer


def endless_header_section() -> Answer:
    """A status line, then long header lines that keep coming, each within ``http.client``'s
    64 KiB line limit (up to :data:`SAFETY_LIMIT`)."""

    def answer(connection: socket.socket, stopped: threading.Event) -> None:
        connection.sendall(STATUS_LINE)
        _send_repeatedly(connection, stopped, b"X-Pad: " + b"h" * 60_000 + b"\r\n", SAFETY_LIMIT)

    return answer


def _send_repeatedly(connection: socket.socket, stopped: threading.Event, data: bytes, total: int) -> None:
    sent = 0
    while sent < total and not stopped.is_set():
        connection.sendall(data)
        sent += len(data)
