"""The retry policy: which answers are worth another try, and how long to wait before it.

A frozen value object (like urllib3's ``Retry``): share one between clients, derive variants with
its ``replace()``. The waits come from the ``backoff`` package's generators.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from . import _config
from ._value import Value

#: Statuses the API contract names as transient. 501 and 505 are 5xx but retrying cannot fix them.
RETRYABLE_STATUSES = frozenset({408, 425, 429} | (set(range(500, 600)) - {501, 505}))
#: A wrong or revoked key: the data is kept for when the key is fixed, never dropped.
AUTH_STATUSES = frozenset({401, 403})


class RetryPolicy(Value):
    """Exponential backoff with full jitter, a cap per wait, and ``Retry-After`` as a minimum.

    Attributes:
        max_retries: retries after the first attempt (so ``max_retries + 1`` attempts in all).
        backoff_factor: the first wait is drawn from ``[0, backoff_factor]``; each next one doubles.
        max_backoff: the cap on any single computed wait, in seconds.
        max_retry_after: a ``Retry-After`` longer than this ends the retries at once (the message is
            handed on to the spool instead of holding the worker for that long).

    Frozen: ``policy.replace(max_retries=3)`` makes a changed copy.
    """

    __slots__ = ("max_retries", "backoff_factor", "max_backoff", "max_retry_after")
    max_retries: int
    backoff_factor: float
    max_backoff: float
    max_retry_after: float

    def __init__(
        self,
        max_retries: int = 6,
        backoff_factor: float = 0.5,
        max_backoff: float = 10.0,
        max_retry_after: float = 60.0,
    ) -> None:
        self._set(
            _config.count("max_retries", max_retries, 0),
            _config.seconds("backoff_factor", backoff_factor, zero_allowed=True),
            _config.seconds("max_backoff", max_backoff, zero_allowed=True),
            _config.seconds("max_retry_after", max_retry_after, zero_allowed=True),
        )

    @staticmethod
    def is_retryable(status: int) -> bool:
        return status in RETRYABLE_STATUSES

    def waits(self) -> Iterator[float]:
        """The successive computed waits of one message, jittered and capped."""
        # Imported here, at the first retry: ``backoff`` imports asyncio, 20 ms that a program
        # pays at ``import flameup_analytics`` otherwise.
        import backoff

        generator = backoff.expo(base=2, factor=self.backoff_factor, max_value=self.max_backoff)
        generator.send(None)  # backoff's generators are primed with an empty send
        for ceiling in generator:
            yield backoff.full_jitter(min(ceiling, self.max_backoff))

    def delay(self, waits: Iterator[float], retry_after: float | None) -> float | None:
        """Seconds to wait before the next attempt, or None when ``Retry-After`` exceeds the limit."""
        if retry_after is not None and retry_after > self.max_retry_after:
            return None
        computed = next(waits)
        return computed if retry_after is None else max(computed, retry_after)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP date; None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    import email.utils  # here: an HTTP date is rare, and the email package costs ms at import

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
