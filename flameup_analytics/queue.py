"""The bounded in-memory queue between the callers and the worker, and the worker's wake-up.

Callers only append to a deque (atomic under the GIL, no lock); the worker takes messages from the
other end. The count of messages taken lets ``flush()`` name, without a lock on the hot path, the
exact set of messages enqueued before it was called.

A message whose idempotency key the SDK makes waits as its body alone, and gets its key as it is
taken (:func:`~flameup_analytics.message.unpack`): from then on, retries and the spool keep that key.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import weakref
from collections import deque

from .message import Pending, Queued, unpack


class Wakeup:
    """What wakes the worker: set from any thread, waited on by the worker.

    A pipe rather than a ``threading.Event``, so the worker can wait on it and on its sockets in
    one ``select`` (the I/O loop that carries requests). Setting it twice costs one write: the flag
    is read first, as ``Event.is_set()`` would be.
    """

    def __init__(self) -> None:
        self._reader, self._writer = os.pipe()
        os.set_blocking(self._reader, False)
        os.set_blocking(self._writer, False)
        #: Read without a lock: a stale False costs one spare byte in the pipe, nothing more.
        self.flag = False
        # A forked child drops its copy of its parent's queue: the descriptors go with it. Not at
        # exit: the exit hook still wakes workers then.
        weakref.finalize(self, _close_all, self._reader, self._writer).atexit = False

    def fileno(self) -> int:
        return self._reader

    def set(self) -> None:
        if not self.flag:
            self.flag = True
            with contextlib.suppress(BlockingIOError):  # the pipe is full: it is set already
                os.write(self._writer, b"\0")

    def is_set(self) -> bool:
        return self.flag

    def clear(self) -> None:
        self.flag = False
        with contextlib.suppress(BlockingIOError):
            while os.read(self._reader, 4096):
                pass

    def wait(self, timeout: float | None) -> bool:
        """Wait until set or ``timeout`` passes; whether it was set."""
        if self.flag:
            return True
        with contextlib.suppress(InterruptedError):
            select.select([self._reader], [], [], timeout)
        return self.flag


def _close_all(*descriptors: int) -> None:
    for descriptor in descriptors:
        with contextlib.suppress(OSError):
            os.close(descriptor)


class MessageQueue:
    def __init__(self, max_size: int, flush_at: int) -> None:
        self._items: deque[Pending] = deque()
        self._max_size = max_size
        self._flush_at = flush_at
        #: Set when the worker should run: ``flush_at`` messages wait, or a flush or shutdown began.
        self.wakeup = Wakeup()
        self._take_lock = threading.Lock()
        self._taken = 0
        #: Messages the worker took but still holds back (behind a user's earlier ones): they
        #: count against ``max_size`` too, so memory stays bounded whoever holds them.
        self.held = 0

    def put(self, message: Pending) -> bool:
        """Append without blocking; False when full. Concurrent callers may overshoot by a few."""
        items = self._items
        if len(items) + self.held >= self._max_size:
            return False
        items.append(message)
        if len(items) >= self._flush_at and not self.wakeup.flag:
            self.wakeup.set()
        return True

    def take(self, limit: int) -> tuple[int, list[Queued]]:
        """Up to ``limit`` messages, oldest first, with the sequence number of the first one."""
        items = self._items
        with self._take_lock:
            first = self._taken
            batch = [items.popleft() for _ in range(min(limit, len(items)))]
            self._taken += len(batch)
        return first, [unpack(item) if isinstance(item, bytes) else item for item in batch]

    def take_all(self) -> list[Queued]:
        return self.take(len(self._items))[1]

    def mark(self) -> int:
        """The sequence number that the next message enqueued from now on will have."""
        with self._take_lock:
            return self._taken + len(self._items)

    @property
    def taken(self) -> int:
        return self._taken

    def __len__(self) -> int:
        return len(self._items)
