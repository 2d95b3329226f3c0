"""The I/O that carries the worker's requests: many in flight at once, for few CPU microseconds.

The API has no bulk endpoint, so the worker keeps many single-message requests in flight. Two
carriers do that behind one interface (``start``, ``poll``, ``close``):

- ``LoopCarrier`` (``event_loop.py``, imported when a worker first needs it), for the default
  :class:`~flameup_analytics.HTTPTransport`: one event loop, in the worker's own thread, drives
  every keep-alive connection.
- :class:`ThreadCarrier`, for any other transport (``MockTransport``, ``RequestsTransport``,
  yours): sender threads call ``transport.send()``; finished exchanges come back to the worker.

Both bound each attempt by one deadline (connect, send, the complete answer) and cap what an
answer may hold (:data:`~flameup_analytics.transport.MAX_RESPONSE_BYTES`). The worker's wake-up
pipe is part of every ``poll``, so callers, ``flush()`` and ``shutdown()`` interrupt it.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from .errors import ConfigurationError, FlameupError, TransportError
from .queue import Wakeup
from .transport import HTTPTransport, Request, Response, Transport

if TYPE_CHECKING:
    from queue import SimpleQueue


class RequestTemplate:
    """What every request of one kind shares: all but the body and the idempotency key. Compared
    by identity: it is a key of the loop's route cache."""

    __slots__ = ("method", "url", "headers")

    def __init__(self, method: str, url: str, headers: Mapping[str, str]) -> None:
        self.method = method
        self.url = url
        self.headers = headers

    def request(self, key: str, body: bytes) -> Request:
        headers = dict(self.headers)
        headers["Idempotency-Key"] = key
        return Request(self.method, self.url, headers, body)


class Exchange:
    """One attempt to send a message: what to send, by when, and what came back.

    The worker keeps its own bookkeeping in a subclass; the carriers read ``template``, ``key``,
    ``body`` and ``deadline`` and fill in ``response`` or ``error``.
    """

    __slots__ = ("body", "deadline", "error", "key", "response", "sent_at", "template")

    def __init__(self, template: RequestTemplate, key: str, body: bytes) -> None:
        self.template = template
        self.key = key
        self.body = body
        self.deadline = 0.0
        self.sent_at = 0.0
        self.response: Response | None = None
        self.error: FlameupError | None = None


class Carrier(Protocol):
    def start(self, exchange: Exchange, timeout: float) -> None:
        """Begin an attempt, bounded by ``timeout`` seconds in all."""

    def poll(self, timeout: float | None) -> list[Exchange]:
        """Wait until an attempt ends, the wake-up is set, or ``timeout`` passes; the ended ones."""

    def close(self) -> None:
        """Stop: close every connection. Attempts in flight end without a result."""


def carrier_for(transport: Transport, wakeup: Wakeup, max_concurrency: int) -> Carrier:
    if type(transport) is HTTPTransport:
        # Here: sockets and selectors cost the package's import a tenth of its time.
        from .event_loop import LoopCarrier

        return LoopCarrier(transport, wakeup)
    return ThreadCarrier(transport, wakeup, max_concurrency)


# --- any transport: sender threads ------------------------------------------------------------


class ThreadCarrier:
    """Runs ``transport.send()`` on daemon sender threads, started as needed (never more than the
    number of attempts in flight). Not ``concurrent.futures``: its threads are joined at exit, so
    one request hung on a dead server would hold the process open."""

    def __init__(self, transport: Transport, wakeup: Wakeup, max_threads: int) -> None:
        from queue import SimpleQueue  # here: only a custom transport needs it

        self._transport = transport
        self._wakeup = wakeup
        self._max_threads = max_threads
        self._jobs: SimpleQueue[tuple[Exchange, float] | None] = SimpleQueue()
        self._threads = 0
        self._idle = 0
        self._lock = threading.Lock()
        self._done: collections.deque[Exchange] = collections.deque()
        self._closed = False

    def start(self, exchange: Exchange, timeout: float) -> None:
        exchange.sent_at = time.monotonic()
        exchange.deadline = exchange.sent_at + timeout
        with self._lock:
            start_thread = self._idle == 0 and self._threads < self._max_threads
            if start_thread:
                self._threads += 1
            else:
                self._idle -= 1
        if start_thread:
            threading.Thread(target=self._serve, name=f"flameup-sender-{self._threads}", daemon=True).start()
        self._jobs.put((exchange, timeout))

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            exchange, timeout = job
            try:
                request = exchange.template.request(exchange.key, exchange.body)
                exchange.response = self._transport.send(request, timeout)
            except (TransportError, ConfigurationError) as exc:
                exchange.error = exc
            except Exception as exc:
                # A bug in a custom transport: the worker counts it and hands the message on.
                exchange.error = _InternalError(exc)
            self._done.append(exchange)
            with self._lock:
                self._idle += 1
            self._wakeup.set()

    def poll(self, timeout: float | None) -> list[Exchange]:
        if not self._done:
            self._wakeup.wait(timeout)
        self._wakeup.clear()
        done = self._done
        return [done.popleft() for _ in range(len(done))]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            threads, self._threads, self._idle = self._threads, 0, 0
        for _ in range(threads):
            self._jobs.put(None)


class _InternalError(FlameupError):
    """An exception a custom transport raised instead of returning or raising TransportError."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"internal error: {cause!r}")
        self.cause = cause


def internal_error_of(exchange: Exchange) -> BaseException | None:
    """The unexpected exception behind a failed attempt, if a bug caused it."""
    error = exchange.error
    return error.cause if isinstance(error, _InternalError) else None
