"""Where every message ends, counted exactly once: delivered, rejected, dropped or spooled.

The :class:`Ledger` owns the counters behind :meth:`Client.stats`, reports losses to ``on_error``
and hands undeliverable messages to the spool.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from .delivery import Outcome, Result
from .errors import DeliveryError, FlameupError
from .message import Message, Queued, public
from .spool import Spool

logger = logging.getLogger("flameup_analytics")

ErrorCallback = Callable[[FlameupError, list[Message]], object]
OutcomeResult = Literal["delivered", "rejected", "dropped", "spooled"]


@dataclass(frozen=True)
class MessageOutcome:
    """Where one message ended, as passed to ``on_outcome``: for metrics without subclassing."""

    message: Message
    #: ``"delivered"``, ``"rejected"``, ``"dropped"`` or ``"spooled"`` (to be replayed later).
    result: OutcomeResult
    #: The last HTTP status, or None when no answer came (or no attempt was made).
    status: int | None
    #: Requests made for it this time (0 when it never reached the network).
    attempts: int
    #: Why it was not delivered, if it was not.
    error: FlameupError | None

    @property
    def kind(self) -> str:
        return self.message.kind


OutcomeCallback = Callable[[MessageOutcome], object]
#: What was attempted for one message: (requests made, last HTTP status or None).
Tried = tuple[int, "int | None"]
NOT_TRIED: Tried = (0, None)

#: Warnings about lost messages are repeated at most this often, so a long outage can't flood logs.
WARNING_INTERVAL = 60.0


@dataclass(frozen=True)
class Stats:
    """A snapshot of a client's counters.

    Every message accepted by ``track``/``identify`` (``enqueued``) or read back from the spool
    (``replayed``) is, at any moment, in exactly one of ``queued``, ``delivered``, ``rejected``,
    ``dropped`` or ``spooled``: when the client is idle,
    ``enqueued + replayed == queued + delivered + rejected + dropped + spooled``.
    """

    #: Waiting in memory now, including requests in flight.
    queued: int
    #: Accepted by ``track``/``identify`` since the client started (in this process).
    enqueued: int
    #: Accepted by the API (2xx).
    delivered: int
    #: Refused for good by the API (a 4xx other than 401/403); reported to ``on_error``.
    rejected: int
    #: Retry attempts made (one message may be retried several times).
    retried: int
    #: Lost by the SDK's own choice (queue and spool both full or off); reported to ``on_error``.
    dropped: int
    #: Written to the disk spool, to be delivered later.
    spooled: int
    #: Read back from the spool and handed to the worker.
    replayed: int
    #: Failures inside the SDK that were caught so the worker keeps running.
    internal_errors: int
    #: Damaged places skipped while reading the spool (torn writes, bit flips, garbage).
    corrupt: int


class Ledger:
    def __init__(
        self, spool: Spool, on_error: ErrorCallback | None, on_outcome: OutcomeCallback | None = None
    ) -> None:
        self._spool = spool
        self._on_error = on_error
        self._on_outcome = on_outcome
        self._lock = threading.Lock()
        self.enqueued = 0
        self.delivered = 0
        self.rejected = 0
        self.retried = 0
        self.dropped = 0
        self.spooled = 0
        self.replayed = 0
        self.internal_errors = 0
        self._last_warning = -WARNING_INTERVAL
        self._auth_failure_logged = False
        self._misdirection_logged = False

    def snapshot(self, queued: int, enqueued: int, corrupt: int) -> Stats:
        with self._lock:
            return Stats(
                queued=queued,
                enqueued=enqueued,
                delivered=self.delivered,
                rejected=self.rejected,
                retried=self.retried,
                dropped=self.dropped,
                spooled=self.spooled,
                replayed=self.replayed,
                internal_errors=self.internal_errors,
                corrupt=corrupt,
            )

    def count_retry(self) -> None:
        with self._lock:
            self.retried += 1

    def count_replayed(self, count: int) -> None:
        with self._lock:
            self.replayed += count

    def count_internal_error(self) -> None:
        with self._lock:
            self.internal_errors += 1

    def record(self, message: Queued, outcome: Outcome) -> None:
        """Count a message whose delivery ended with ``outcome``."""
        result = outcome.result
        if result is Result.DELIVERED:
            with self._lock:
                self.delivered += 1
            self._announce([message], "delivered", [outcome.tried], None)
        elif result is Result.REJECTED:
            assert outcome.error is not None
            with self._lock:
                self.rejected += 1
            logger.debug("a message was rejected by the API: %s", outcome.error)
            self._announce([message], "rejected", [outcome.tried], outcome.error)
            self.report(outcome.error, [message])
        else:
            self.hand_on([message], self.undelivered_error(outcome), [outcome.tried])

    def undelivered_error(self, outcome: Outcome) -> DeliveryError:
        if outcome.result is Result.UNAUTHORIZED:
            if not self._auth_failure_logged:
                self._auth_failure_logged = True
                logger.error(
                    "the Flameup API refused the API key (HTTP %s: %s). Messages are kept, not "
                    "dropped; check FLAMEUP_API_KEY / api_key. Logged once per client.",
                    outcome.status,
                    outcome.error,
                )
            return DeliveryError("unauthorized", "the API refused the key", outcome.error)
        if outcome.result is Result.MISDIRECTED:
            if not self._misdirection_logged:
                self._misdirection_logged = True
                location = outcome.response.header("Location") if outcome.response else None
                logger.error(
                    "the API answered HTTP %s (a redirect to %s): the host is wrong. Messages are "
                    "kept, not dropped; check FLAMEUP_HOST / host. Logged once per client.",
                    outcome.status,
                    location or "an unnamed place",
                )
            return DeliveryError("misdirected", "the API redirected the request", outcome.error)
        if outcome.result is Result.ABORTED:
            return DeliveryError("shutdown", "shutdown interrupted the retries", outcome.error)
        return DeliveryError(
            "retries_exhausted", f"not delivered after {outcome.attempts} attempt(s)", outcome.error
        )

    def hand_on(self, messages: Sequence[Queued], error: FlameupError, tried: Sequence[Tried] = ()) -> None:
        """Spool what the spool takes; drop (count, warn, report) the rest.

        ``tried`` says, message by message from the first, what was attempted for it this time;
        the messages it does not reach were not attempted."""
        try:
            kept = self._spool.store(messages)
        except Exception:
            logger.exception("the spool failed; the messages are dropped")
            kept = 0
            with self._lock:
                self.internal_errors += 1
        lost = list(messages[kept:])
        with self._lock:
            self.spooled += kept
            self.dropped += len(lost)
            warn = bool(lost) and time.monotonic() - self._last_warning >= WARNING_INTERVAL
            if warn:
                self._last_warning = time.monotonic()
        if warn:
            logger.warning(
                "dropped %d message(s): %s (stats().dropped counts every one; further drops are "
                "logged at most once a minute)",
                len(lost),
                error,
            )
        self._announce(messages[:kept], "spooled", tried[:kept], error)
        self._announce(lost, "dropped", tried[kept:], error)
        if lost:
            self.report(error, lost)

    def left_in_spool(self, messages: Sequence[Queued], tried: Sequence[Tried] = ()) -> None:
        """Replayed messages abandoned at shutdown: still in their segment, so spooled again."""
        with self._lock:
            self.spooled += len(messages)
        self._announce(messages, "spooled", tried, DeliveryError("shutdown", "the shutdown deadline passed"))

    def _announce(
        self,
        messages: Sequence[Queued],
        result: OutcomeResult,
        tried: Sequence[Tried],
        error: FlameupError | None,
    ) -> None:
        if self._on_outcome is None or not messages:
            return
        for index, message in enumerate(messages):
            attempts, status = tried[index] if index < len(tried) else NOT_TRIED
            try:
                self._on_outcome(MessageOutcome(public(message), result, status, attempts, error))
            except Exception:
                logger.exception("on_outcome raised; the SDK carries on")

    def report(self, error: FlameupError, messages: Sequence[Queued]) -> None:
        if self._on_error is None:
            return
        try:
            self._on_error(error, [public(message) for message in messages])
        except Exception:
            logger.exception("on_error raised; the SDK carries on")
