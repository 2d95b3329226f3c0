"""Per-user ordering: which of a user's messages may be sent now.

Each user with messages waiting or in flight has a :class:`Lane`. The rules keep what matters and
no more (docs/delivery.md, "Ordering"):

- an ``identify`` is sent only once every earlier message of its user is final, and the user's
  later messages wait for it: traits are last-writer-wins, so two identifies must never cross;
- ``track`` calls between two identifies may be in flight together, up to ``per_user`` at once:
  each carries its own ``timestamp``, so the API orders them;
- with ``ordering="strict"`` every message waits for the one before it (one at a time per user).

:class:`Lanes` also keeps the round-robin of users whose next message may go, so a user with a
long backlog gets a fair share of the slots and never holds up the others.

Used from the dispatcher's thread only: no locks.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, Literal, TypeVar

from .message import IDENTIFY

Ordering = Literal["relaxed", "strict"]
E = TypeVar("E")


class Lane(Generic[E]):
    """One user's messages: those waiting, in call order, and how many are in flight."""

    __slots__ = ("in_flight", "identify_in_flight", "queued", "waiting")

    def __init__(self) -> None:
        self.waiting: deque[tuple[str, E]] = deque()
        self.in_flight = 0
        self.identify_in_flight = False
        #: Whether the user is in the round-robin of lanes that may send.
        self.queued = False


class Lanes(Generic[E]):
    """Every user's lane; ``E`` is whatever the dispatcher tracks per message."""

    def __init__(self, ordering: Ordering, per_user: int) -> None:
        self._per_user = 1 if ordering == "strict" else per_user
        self._lanes: dict[str, Lane[E]] = {}
        self._ready: deque[str] = deque()
        #: Messages waiting in lanes (not in flight), for the memory bound.
        self.waiting = 0

    def __len__(self) -> int:
        return len(self._lanes)

    def may_send(self, user: str, kind: str) -> bool:
        """Whether a new message of ``kind`` for ``user`` may go at once (nothing of theirs waits)."""
        lane = self._lanes.get(user)
        return lane is None or (not lane.waiting and self._head_may_go(lane, kind))

    def _head_may_go(self, lane: Lane[E], kind: str) -> bool:
        if lane.in_flight == 0:
            return True
        if kind == IDENTIFY or lane.identify_in_flight:
            return False
        return lane.in_flight < self._per_user

    def sent(self, user: str, kind: str) -> None:
        """A message of ``user`` went out (it had ``may_send`` or came from :meth:`next`)."""
        lane = self._lanes.get(user)
        if lane is None:
            lane = self._lanes[user] = Lane()
        lane.in_flight += 1
        if kind == IDENTIFY:
            lane.identify_in_flight = True

    def wait(self, user: str, kind: str, entry: E) -> None:
        """Park a message behind the user's earlier ones."""
        lane = self._lanes.get(user)
        if lane is None:
            lane = self._lanes[user] = Lane()
        lane.waiting.append((kind, entry))
        self.waiting += 1
        self._enqueue_if_ready(user, lane)

    def final(self, user: str, kind: str) -> None:
        """A message of ``user`` in flight reached its end (delivered, rejected or handed on)."""
        lane = self._lanes[user]
        lane.in_flight -= 1
        if kind == IDENTIFY:
            lane.identify_in_flight = False
        if lane.waiting:
            self._enqueue_if_ready(user, lane)
        elif lane.in_flight == 0:
            del self._lanes[user]

    def next(self) -> tuple[str, str, E] | None:
        """The next message that may go, round-robin over users; it counts as sent."""
        ready = self._ready
        while ready:
            user = ready.popleft()
            lane = self._lanes.get(user)
            if lane is None:
                continue
            lane.queued = False
            if not lane.waiting or not self._head_may_go(lane, lane.waiting[0][0]):
                continue
            kind, entry = lane.waiting.popleft()
            self.waiting -= 1
            self.sent(user, kind)
            self._enqueue_if_ready(user, lane)
            return user, kind, entry
        return None

    def take_waiting(self, user: str) -> list[E]:
        """Remove and return every waiting message of ``user``, oldest first (they are handed on
        with an earlier one that failed, to keep their order on disk)."""
        lane = self._lanes.get(user)
        if lane is None or not lane.waiting:
            return []
        entries = [entry for _, entry in lane.waiting]
        self.waiting -= len(entries)
        lane.waiting.clear()
        if lane.in_flight == 0:
            del self._lanes[user]
        return entries

    def take_all_waiting(self) -> list[E]:
        """Every waiting message of every user (shutdown)."""
        entries: list[E] = []
        for user in list(self._lanes):
            entries += self.take_waiting(user)
        return entries

    def _enqueue_if_ready(self, user: str, lane: Lane[E]) -> None:
        if not lane.queued and lane.waiting and self._head_may_go(lane, lane.waiting[0][0]):
            lane.queued = True
            self._ready.append(user)
