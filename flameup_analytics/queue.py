"""The bounded in-memory queue between the callers and the worker.

Callers only append to a deque (atomic under the GIL, no lock); the worker takes batches from the
other end. The count of messages taken lets ``flush()`` name, without a lock on the hot path, the
exact set of messages enqueued before it was called.
"""

from __future__ import annotations

import threading
from collections import deque

from .message import Queued


class MessageQueue:
    def __init__(self, max_size: int, flush_at: int) -> None:
        self._items: deque[Queued] = deque()
        self._max_size = max_size
        self._flush_at = flush_at
        #: Set when the worker should run: ``flush_at`` messages wait, or a flush or shutdown began.
        self.wakeup = threading.Event()
        self._take_lock = threading.Lock()
        self._taken = 0

    def put(self, message: Queued) -> bool:
        """Append without blocking; False when full. Concurrent callers may overshoot by a few."""
        items = self._items
        if len(items) >= self._max_size:
            return False
        items.append(message)
        if len(items) >= self._flush_at and not self.wakeup.is_set():
            self.wakeup.set()
        return True

    def take(self, limit: int) -> tuple[int, list[Queued]]:
        """Up to ``limit`` messages, oldest first, with the sequence number of the first one."""
        items = self._items
        with self._take_lock:
            first = self._taken
            batch = [items.popleft() for _ in range(min(limit, len(items)))]
            self._taken += len(batch)
        return first, batch

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
