"""How many requests may be in flight at once: an adaptive limit, and a pause for the whole client.

The API has no bulk endpoint, so throughput over a real network comes from keeping many small
requests in flight (2,000 events/s at 50 ms needs about 100). How many the API can take is not
known in advance, and changes: the limit learns it from what the answers show.

- **Once per round trip.** The limit moves at most once per round trip (the recent average), on
  what that round trip's answers showed, as TCP's window does: a burst of answers that all waited
  for the same reason (the API, or this process's GIL held by a busy host thread) is one signal,
  not a hundred, so the limit does not collapse on one bad moment and swing back.
- **Growing.** While a backlog waits for a slot, each answer adds one to the limit, so it doubles
  each round trip (TCP's slow start), until the first sign of trouble; after that it grows like
  Netflix's Gradient2 (``concurrency-limits``): ``limit * gradient + sqrt(limit)``, where the
  gradient compares the long-run round trip with the recent one. While answers stay as fast as
  usual the gradient is 1 and the limit grows by its square root per round trip; when the recent
  round trips get much slower (the API or a proxy starts queueing) the gradient falls below 1 and
  the limit shrinks, by at most a tenth per round trip. Without a backlog the limit never grows:
  an idle client must not claim a capacity it never tested.
- **Shrinking.** An answer that says "too much" (429, 503) or no answer in time (a timeout, a
  refused or reset connection) halves the limit at once, down to 1, and ends the slow start: the
  API said so explicitly, and a storm of 429s must bring the client down to one request within
  a second.
- **Pausing.** A ``Retry-After`` on such an answer pauses every new attempt of the client until it
  passes, not only the one message's: the API asked the client, not the message, to wait.

Used from the dispatcher's thread only: no locks. :attr:`limit` is read by ``stats()`` from other
threads, which is safe (one float).
"""

from __future__ import annotations

import math

#: Below this the limit never falls: one request at a time keeps probing for recovery.
MINIMUM = 1
#: Where a new client starts: enough for a web app's trickle, small enough not to flood.
INITIAL = 8
#: How much slower than usual the recent round trips may be before the limit shrinks.
TOLERANCE = 1.5
#: How far a shrink on latency alone goes toward its estimate each round trip (0..1).
SMOOTHING = 0.2
#: Weight of one round trip (the mean of its answers) in the long-run average (about the last 20).
_LONG_WEIGHT = 1 / 20
#: Weight of one round trip in the recent average (about the last 2).
_SHORT_WEIGHT = 1 / 2
#: Round trips under this are measurement noise on a loopback or LAN: never a reason to shrink.
_NOISE_FLOOR = 0.002


class ConcurrencyLimit:
    """The adaptive limit on requests in flight, between 1 and ``maximum``."""

    def __init__(self, maximum: int, initial: int = INITIAL) -> None:
        self.maximum = maximum
        #: The current limit (a float: it moves by fractions; slots are its integer part).
        self.limit = float(max(MINIMUM, min(initial, maximum)))
        self._long_rtt = 0.0
        self._short_rtt = 0.0
        #: When the current round trip's answers have all been seen: the limit moves then.
        self._round_ends = 0.0
        #: The current round trip's answers: how many, their round trips' sum, whether a backlog
        #: waited at any of them.
        self._round_answers = 0
        self._round_total = 0.0
        self._backlog = False
        #: Doubling each round trip, until the first sign of trouble.
        self._slow_start = True
        #: ``time.monotonic()`` before which no new attempt may start (a Retry-After, a pause).
        self.paused_until = 0.0

    @property
    def slots(self) -> int:
        return int(self.limit)

    def has_room(self, in_flight: int, now: float) -> bool:
        return in_flight < int(self.limit) and now >= self.paused_until

    def answered(self, rtt: float, backlog: bool, now: float) -> None:
        """An answer that says nothing about overload came after ``rtt`` seconds, at ``now``
        (``time.monotonic()``); ``backlog``: messages were waiting for a slot."""
        self._round_total += max(rtt, _NOISE_FLOOR)
        self._round_answers += 1
        self._backlog = self._backlog or backlog
        if self._slow_start and backlog:  # one more per answer: twice as many each round trip
            self.limit = min(float(self.maximum), self.limit + 1)
        if now >= self._round_ends:
            self._end_round(now)

    def _end_round(self, now: float) -> None:
        sample = self._round_total / self._round_answers
        backlog = self._backlog
        self._round_total, self._round_answers, self._backlog = 0.0, 0, False
        if self._long_rtt == 0.0:
            self._long_rtt = self._short_rtt = sample
        else:
            self._long_rtt += (sample - self._long_rtt) * _LONG_WEIGHT
            self._short_rtt += (sample - self._short_rtt) * _SHORT_WEIGHT
            # After a lasting improvement the long-run average must follow, or every later
            # round trip would look fast and the limit would grow past what the API can take.
            if self._long_rtt > 2 * self._short_rtt:
                self._long_rtt *= 0.95
        self._round_ends = now + self._short_rtt
        gradient = max(0.5, min(1.0, TOLERANCE * self._long_rtt / self._short_rtt))
        if gradient < 1.0:
            self._slow_start = False
        if not backlog or self._slow_start:
            estimate = min(self.limit * gradient, self.limit)
        else:
            estimate = self.limit * gradient + math.sqrt(self.limit)
        if estimate < self.limit:  # a shrink on latency alone is gentle: the signal is noisy
            estimate = self.limit + (estimate - self.limit) * SMOOTHING
        self.limit = max(float(MINIMUM), min(float(self.maximum), estimate))

    def overloaded(self) -> None:
        """A 429/503, a timeout or a failed connection: halve the limit."""
        self.limit = max(float(MINIMUM), self.limit / 2)
        self._slow_start = False

    def pause(self, until: float) -> None:
        """No new attempt before ``until`` (``time.monotonic()``), for the whole client."""
        self.paused_until = max(self.paused_until, until)
