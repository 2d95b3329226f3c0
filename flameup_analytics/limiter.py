"""How many requests may be in flight at once: an adaptive limit, and a pause for the whole client.

The API has no bulk endpoint, so throughput over a real network comes from keeping many small
requests in flight (2,000 events/s at 50 ms needs about 100). How many the API can take is not
known in advance, and changes: the limit learns it from what the answers show.

- **Growing.** While a backlog waits for a slot, each answer lets the limit grow: like Netflix's
  Gradient2 (``concurrency-limits``), the new limit is ``limit * gradient + sqrt(limit)``, where the
  gradient compares the long-run round trip with the recent one. While answers stay as fast as
  usual the gradient is 1 and the limit grows by about its square root per round trip; when the
  recent round trips get slower (the API or a proxy starts queueing) the gradient falls below 1 and
  the limit shrinks toward what keeps latency flat. Without a backlog the limit never grows: an
  idle client must not claim a capacity it never tested.
- **Shrinking.** An answer that says "too much" (429, 503) or no answer in time (a timeout, a
  refused or reset connection) halves the limit at once, down to 1, as TCP does on loss.
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
#: How quickly the limit moves toward each new estimate (0..1).
SMOOTHING = 0.2
#: Weight of one round trip in the long-run average (about the last 500).
_LONG_WEIGHT = 1 / 500
#: Weight of one round trip in the recent average (about the last 10).
_SHORT_WEIGHT = 1 / 10
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
        #: ``time.monotonic()`` before which no new attempt may start (a Retry-After, a pause).
        self.paused_until = 0.0

    @property
    def slots(self) -> int:
        return int(self.limit)

    def has_room(self, in_flight: int, now: float) -> bool:
        return in_flight < int(self.limit) and now >= self.paused_until

    def answered(self, rtt: float, backlog: bool) -> None:
        """An answer that says nothing about overload came after ``rtt`` seconds."""
        rtt = max(rtt, _NOISE_FLOOR)
        if self._long_rtt == 0.0:
            self._long_rtt = self._short_rtt = rtt
        else:
            self._long_rtt += (rtt - self._long_rtt) * _LONG_WEIGHT
            self._short_rtt += (rtt - self._short_rtt) * _SHORT_WEIGHT
            # After a lasting improvement the long-run average must follow, or every later
            # answer would look fast and the limit would grow past what the API can take.
            if self._long_rtt > 2 * self._short_rtt:
                self._long_rtt *= 0.95
        gradient = max(0.5, min(1.0, TOLERANCE * self._long_rtt / self._short_rtt))
        estimate = self.limit * gradient + (math.sqrt(self.limit) if backlog else 0.0)
        if not backlog:
            estimate = min(estimate, self.limit)
        smoothed = self.limit + (estimate - self.limit) * SMOOTHING
        self.limit = max(float(MINIMUM), min(float(self.maximum), smoothed))

    def overloaded(self) -> None:
        """A 429/503, a timeout or a failed connection: halve the limit."""
        self.limit = max(float(MINIMUM), self.limit / 2)

    def pause(self, until: float) -> None:
        """No new attempt before ``until`` (``time.monotonic()``), for the whole client."""
        self.paused_until = max(self.paused_until, until)
