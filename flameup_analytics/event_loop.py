"""The event loop that carries the default transport's requests (``LoopCarrier``).

One loop, in the worker's own thread, drives every keep-alive connection of an
:class:`~flameup_analytics.HTTPTransport`. It writes each request as one prebuilt byte string,
reads and parses the answers itself, and wakes once for all the answers that arrived together: no
thread per request, so no GIL hand-off per answer. New connections (DNS, TCP, a proxy's CONNECT,
the TLS handshake: blocking steps) are opened by a short-lived helper thread with the transport's
own code, within the attempt's deadline, then handed over. The interface it serves, and the other
carrier: ``connections.py``.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import errno
import selectors
import socket
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, cast

from . import transport as transport_module
from ._redact import redact_text
from .connections import Exchange, RequestTemplate
from .errors import ConfigurationError, FlameupError, TransportError
from .queue import Wakeup
from .transport import HTTPTransport, Response

if TYPE_CHECKING:
    import ssl

_READ_SIZE = 256 * 1024
_MAX_HEAD = 64 * 1024

#: What a non-blocking send, or receive, raises when it must wait for the socket. TLS adds its own,
#: known once ``ssl`` is imported: by the first https connection (an http-only process never
#: imports it, nor pays the 8 ms that costs).
_SEND_BLOCKED: tuple[type[OSError], ...] = (BlockingIOError,)
_RECV_BLOCKED: tuple[type[OSError], ...] = (BlockingIOError,)


def _is_tls(sock: socket.socket) -> bool:
    global _SEND_BLOCKED, _RECV_BLOCKED
    ssl = sys.modules.get("ssl")  # a TLS socket exists only once ssl was imported
    if ssl is None or not isinstance(sock, ssl.SSLSocket):
        return False
    _SEND_BLOCKED = (BlockingIOError, ssl.SSLWantWriteError)
    _RECV_BLOCKED = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
    return True


class _Connection:
    """A keep-alive connection owned by the loop, and the attempt it carries (if any)."""

    __slots__ = ("answered", "buffer", "exchange", "pool", "reused", "sock", "tls", "unsent")

    def __init__(self, sock: socket.socket, pool: object) -> None:
        self.sock = sock
        self.tls = _is_tls(sock)
        self.pool = pool
        self.exchange: Exchange | None = None
        self.buffer = bytearray()
        self.unsent = b""
        #: Whether this connection carried an attempt before the current one.
        self.reused = False
        #: Whether any byte of the current answer arrived.
        self.answered = False


class _Route:
    """What the loop needs of one URL: which pool, and the request's bytes before the body."""

    __slots__ = ("pool", "prefix", "transport_route")

    def __init__(self, pool: object, prefix: bytes, transport_route: Any) -> None:
        self.pool = pool
        self.prefix = prefix
        self.transport_route = transport_route


class LoopCarrier:
    """Every attempt of the worker on one ``selectors`` loop, in the worker's thread."""

    def __init__(self, transport: HTTPTransport, wakeup: Wakeup) -> None:
        self._transport = transport
        self._wakeup = wakeup
        self._selector = selectors.DefaultSelector()
        self._selector.register(wakeup.fileno(), selectors.EVENT_READ, None)
        self._routes: dict[RequestTemplate, _Route] = {}
        self._idle: dict[object, list[_Connection]] = {}
        self._busy: set[_Connection] = set()
        #: (deadline, connection, exchange) per attempt sent, in deadline order: the nearest one
        #: without a scan of every busy connection on each wake. The worker gives every attempt
        #: the same timeout, so an attempt is appended at the end. Entries of attempts that ended
        #: are dropped as they reach the front (or all at once, when they outnumber the live ones).
        self._deadlines: collections.deque[tuple[float, _Connection, Exchange]] = collections.deque()
        #: Attempts waiting for a new connection, and connections (or errors) that helpers made.
        self._connecting = 0
        self._connected: collections.deque[tuple[Exchange, _Route, object]] = collections.deque()
        self._done: list[Exchange] = []
        self._closed = False
        self._lock = threading.Lock()

    # --- starting an attempt -------------------------------------------------------------------

    def start(self, exchange: Exchange, timeout: float) -> None:
        exchange.sent_at = now = time.monotonic()
        exchange.deadline = now + timeout
        exchange.response = exchange.error = None
        try:
            route = self._routes.get(exchange.template) or self._route(exchange.template)
        except ConfigurationError as exc:
            exchange.error = exc
            self._done.append(exchange)
            return
        idle = self._idle.get(route.pool)
        if idle:
            self._send(idle.pop(), exchange, route)
        else:
            self._open(exchange, route)

    def _route(self, template: RequestTemplate) -> _Route:
        transport_route = self._transport._route(template.url)  # raises ConfigurationError
        host = transport_route.host
        default_port = 443 if transport_route.scheme == "https" else 80
        authority = host if transport_route.port == default_port else f"{host}:{transport_route.port}"
        if ":" in host and not host.startswith("["):
            authority = f"[{host}]" + (
                "" if transport_route.port == default_port else f":{transport_route.port}"
            )
        lines = [f"{template.method} {transport_route.target} HTTP/1.1", f"Host: {authority}"]
        lines += [f"{name}: {value}" for name, value in template.headers.items()]
        lines += [f"{name}: {value}" for name, value in transport_route.proxy_headers.items()]
        prefix = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        route = self._routes[template] = _Route(transport_route.pool, prefix, transport_route)
        return route

    def _open(self, exchange: Exchange, route: _Route) -> None:
        """A new connection, made by a helper thread (its steps block), within the deadline."""
        self._connecting += 1
        threading.Thread(
            target=self._connect, args=(exchange, route), name="flameup-connect", daemon=True
        ).start()

    def _connect(self, exchange: Exchange, route: _Route) -> None:
        try:
            connection = self._transport._connect(route.transport_route, exchange.deadline)
            sock = connection.sock
            connection.sock = None  # the loop owns the socket now; http.client must not close it
            assert sock is not None
            sock.setblocking(False)
            result: object = sock
        except OSError as exc:  # ssl.SSLError included
            result = TransportError(redact_text(f"cannot connect: {type(exc).__name__}: {exc}"))
        except TransportError as exc:
            result = exc
        with self._lock:
            closed = self._closed
            if not closed:
                self._connected.append((exchange, route, result))
        if closed and isinstance(result, socket.socket):
            result.close()
        self._wakeup.set()

    def _send(self, connection: _Connection, exchange: Exchange, route: _Route) -> None:
        body = exchange.body
        data = b"".join(
            (
                route.prefix,
                b"Idempotency-Key: ",
                exchange.key.encode("latin-1"),
                b"\r\nContent-Length: ",
                str(len(body)).encode(),
                b"\r\n\r\n",
                body,
            )
        )
        connection.exchange = exchange
        connection.answered = False
        self._busy.add(connection)
        self._watch(connection, exchange)
        try:
            sent = connection.sock.send(data)
        except _SEND_BLOCKED:
            sent = 0
        except OSError as exc:
            self._failed(connection, exc)
            return
        if sent < len(data):
            connection.unsent = data[sent:]
            self._selector.modify(connection.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, connection)

    # --- waiting ---------------------------------------------------------------------------------

    def poll(self, timeout: float | None) -> list[Exchange]:
        if self._done or self._connected:
            timeout = 0.0
        nearest = self._nearest_deadline()
        if nearest is not None:
            left = max(0.0, nearest - time.monotonic())
            timeout = left if timeout is None else min(timeout, left)
        try:
            events = self._selector.select(timeout)
        except InterruptedError:
            events = []
        for key, mask in events:
            connection = key.data
            if connection is None:
                self._wakeup.clear()
            elif mask & selectors.EVENT_WRITE and connection.unsent:
                self._write_more(connection)
            elif mask & selectors.EVENT_READ:
                self._read(connection)
        while self._connected:
            exchange, route, result = self._connected.popleft()
            self._connecting -= 1
            if isinstance(result, socket.socket):
                connection = _Connection(result, route.pool)
                self._selector.register(result, selectors.EVENT_READ, connection)
                self._send(connection, exchange, route)
            else:
                assert isinstance(result, FlameupError)
                exchange.error = result
                self._done.append(exchange)
        nearest = self._nearest_deadline()
        if nearest is not None and nearest <= time.monotonic():
            now = time.monotonic()
            deadlines = self._deadlines
            while deadlines and deadlines[0][0] <= now:
                deadline, connection, exchange = deadlines.popleft()
                if _current(deadline, connection, exchange, self._busy):
                    self._failed(connection, TimeoutError("no complete answer within the timeout"))
        done, self._done = self._done, []
        return done

    def _watch(self, connection: _Connection, exchange: Exchange) -> None:
        deadlines = self._deadlines
        entry = (exchange.deadline, connection, exchange)
        if deadlines and deadlines[-1][0] > entry[0]:
            # A shorter timeout than the last attempt's (no caller does that today): keep the order.
            deadlines.insert(bisect.bisect(deadlines, entry[0], key=_deadline_of), entry)
        else:
            deadlines.append(entry)
        if len(deadlines) > 4 * len(self._busy) + 64:  # one slow attempt in front holds many
            busy = self._busy
            self._deadlines = collections.deque(e for e in deadlines if _current(*e, busy))

    def _nearest_deadline(self) -> float | None:
        deadlines, busy = self._deadlines, self._busy
        while deadlines:
            deadline, connection, exchange = deadlines[0]
            if _current(deadline, connection, exchange, busy):
                return deadline
            deadlines.popleft()
        return None

    def _write_more(self, connection: _Connection) -> None:
        try:
            sent = connection.sock.send(connection.unsent)
        except _SEND_BLOCKED:
            return
        except OSError as exc:
            self._failed(connection, exc)
            return
        connection.unsent = connection.unsent[sent:]
        if not connection.unsent:
            self._selector.modify(connection.sock, selectors.EVENT_READ, connection)

    def _read(self, connection: _Connection) -> None:
        sock = connection.sock
        try:
            chunk = sock.recv(_READ_SIZE)
            while connection.tls and cast("ssl.SSLSocket", sock).pending():
                chunk += sock.recv(_READ_SIZE)
        except _RECV_BLOCKED:
            return
        except OSError as exc:
            self._failed(connection, exc)
            return
        if connection.exchange is None:
            # Readable while idle: the server closed it (or sent what it should not have).
            self._discard(connection)
            return
        if not chunk:
            try:
                answer = _parse(connection.buffer, at_close=True) if connection.answered else None
            except _Malformed as exc:
                self._failed(connection, exc)
                return
            if answer is None:
                self._failed(connection, ConnectionResetError("the server closed the connection"))
            else:
                self._answered(connection, answer)
            return
        connection.answered = True
        buffer = connection.buffer
        buffer += chunk
        if len(buffer) > transport_module.MAX_RESPONSE_BYTES + _MAX_HEAD:
            self._failed(connection, _TooLarge())
            return
        try:
            answer = _parse(buffer, at_close=False)
        except _Malformed as exc:
            self._failed(connection, exc)
            return
        if answer is not None:
            self._answered(connection, answer)

    # --- ending an attempt -----------------------------------------------------------------------

    def _answered(self, connection: _Connection, answer: _Answer) -> None:
        exchange = connection.exchange
        assert exchange is not None
        status, head, body, keep_alive = answer
        exchange.response = Response(status, _Headers(head), body)
        self._done.append(exchange)
        self._busy.discard(connection)
        connection.exchange = None
        connection.buffer = bytearray()
        if not keep_alive or self._closed:
            self._discard(connection)
        else:
            connection.reused = True
            self._idle.setdefault(connection.pool, []).append(connection)

    def _failed(self, connection: _Connection, error: BaseException) -> None:
        exchange = connection.exchange
        self._discard(connection)
        if exchange is None:
            return
        if connection.reused and not connection.answered and _closed_by_peer(error):
            # A keep-alive connection the server (or a NAT, or a frozen runtime) had closed: once
            # more on a fresh one, as the transport does. The idempotency key makes it harmless.
            route = self._routes[exchange.template]
            self._open(exchange, route)
            return
        if isinstance(error, (_TooLarge, _Malformed)):
            exchange.error = TransportError(str(error))
        else:
            reason = "timed out" if isinstance(error, TimeoutError) else f"{type(error).__name__}: {error}"
            exchange.error = TransportError(redact_text(reason))
        self._done.append(exchange)

    def _discard(self, connection: _Connection) -> None:
        self._busy.discard(connection)
        idle = self._idle.get(connection.pool)
        if idle and connection in idle:
            idle.remove(connection)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(connection.sock)
        with contextlib.suppress(OSError):
            connection.sock.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        for connection in [*self._busy, *(c for idle in self._idle.values() for c in idle)]:
            with contextlib.suppress(OSError):
                connection.sock.close()
        self._busy.clear()
        self._idle.clear()
        with contextlib.suppress(OSError):
            self._selector.close()


def _current(deadline: float, connection: _Connection, exchange: Exchange, busy: set[_Connection]) -> bool:
    """Whether a deadline entry's attempt is still carried by its connection. An exchange tried
    again gets a new entry; the old one (even on the same connection) no longer counts, because
    ``exchange.deadline`` moved on."""
    return connection.exchange is exchange and exchange.deadline == deadline and connection in busy


def _deadline_of(entry: tuple[float, _Connection, Exchange]) -> float:
    return entry[0]


def _closed_by_peer(error: BaseException) -> bool:
    if isinstance(error, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return True
    return isinstance(error, OSError) and error.errno in (errno.ECONNRESET, errno.EPIPE)


# --- reading an answer ------------------------------------------------------------------------------


class _Malformed(Exception):
    """The answer is not HTTP/1.x the loop can read."""


class _TooLarge(_Malformed):
    def __init__(self) -> None:
        super().__init__(f"the answer is larger than {transport_module.MAX_RESPONSE_BYTES} bytes")


#: An answer read whole: status, header section, body, whether the connection stays open.
_Answer = tuple[int, bytes, bytes, bool]


class _Headers(Mapping[str, str]):
    """An answer's headers, parsed only if someone asks: a delivered message never does."""

    __slots__ = ("_head", "_parsed")

    def __init__(self, head: bytes) -> None:
        self._head = head
        self._parsed: dict[str, str] | None = None

    def _fields(self) -> dict[str, str]:
        if self._parsed is None:
            fields: dict[str, str] = {}
            for line in self._head.split(b"\r\n")[1:]:
                name, separator, value = line.partition(b":")
                if separator:
                    fields[name.decode("latin-1").strip()] = value.decode("latin-1").strip()
            self._parsed = fields
        return self._parsed

    def __getitem__(self, name: str) -> str:
        return self._fields()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields())

    def __len__(self) -> int:
        return len(self._fields())


def _parse(buffer: bytearray, at_close: bool) -> _Answer | None:
    """The answer in ``buffer`` if it has all arrived (``at_close``: the connection ended), else
    None; raises _Malformed for what cannot become one. One pass over the header section."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > _MAX_HEAD:
            raise _Malformed("the answer's header section is too large")
        return None
    end += 4
    if buffer[:7] != b"HTTP/1.":
        raise _Malformed("not an HTTP/1.x answer")
    try:
        status = int(buffer[9:12])
    except ValueError:
        raise _Malformed("an answer without a status") from None
    if 100 <= status < 200:  # an interim answer: the real one follows it
        del buffer[:end]
        return _parse(buffer, at_close)
    head = bytes(buffer[:end])
    lowered = head.lower()
    keep_alive = b"\r\nconnection: close" not in lowered and not lowered.startswith(b"http/1.0")
    start = lowered.find(b"\r\ncontent-length:")
    if start >= 0:
        text = lowered[start + 17 : lowered.find(b"\r\n", start + 2)].strip()
        if not text.isdigit():
            raise _Malformed("invalid Content-Length")
        length = int(text)
        if length > transport_module.MAX_RESPONSE_BYTES:
            raise _TooLarge()
        if len(buffer) - end < length:
            return None
        return status, head, bytes(buffer[end : end + length]), keep_alive and not at_close
    if b"\r\ntransfer-encoding:" in lowered and b"chunked" in lowered:
        body = _chunks(buffer, end)
        return None if body is None else (status, head, body, keep_alive and not at_close)
    if status in (204, 304):
        return status, head, b"", keep_alive and not at_close
    # The body ends when the connection does.
    if not at_close:
        return None
    body = bytes(buffer[end:])
    if len(body) > transport_module.MAX_RESPONSE_BYTES:
        raise _TooLarge()
    return status, head, body, False


def _chunks(buffer: bytearray, offset: int) -> bytes | None:
    """The decoded body of a chunked answer, or None if it has not all arrived."""
    parts: list[bytes] = []
    total = 0
    while True:
        line_end = buffer.find(b"\r\n", offset)
        if line_end < 0:
            return None
        size_text = bytes(buffer[offset:line_end]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise _Malformed("malformed chunk size") from None
        if size == 0:
            return b"".join(parts) if buffer.find(b"\r\n\r\n", line_end) >= 0 else None
        total += size
        if total > transport_module.MAX_RESPONSE_BYTES:
            raise _TooLarge()
        start = line_end + 2
        if len(buffer) < start + size + 2:
            return None
        parts.append(bytes(buffer[start : start + size]))
        offset = start + size + 2
