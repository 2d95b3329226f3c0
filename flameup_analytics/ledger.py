"""Where every message ends, counted exactly once: delivered, rejected, dropped or spooled.

The :class:`Ledger` owns the counters behind :meth:`Client.stats`, reports losses to ``on_error``
and hands undeliverable messages to the spool.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Literal

from ._log import logger
from ._value import Value
from .delivery import Outcome, Result
from .errors import DeliveryError, FlameupError
from .message import Message, Queued, public
from .relay import RelayStats
from .spool import Spool

ErrorCallback = Callable[[FlameupError, list[Message]], object]
OutcomeResult = Literal["delivered", "rejected", "dropped", "spooled"]


class MessageOutcome(Value):
    """Where one message ended, as passed to ``on_outcome``: for metrics without subclassing."""

    __slots__ = ("message", "result", "status", "attempts", "error")
    message: Message
    #: ``"delivered"``, ``"rejected"``, ``"dropped"`` or ``"spooled"`` (to be replayed later).
    result: OutcomeResult
    #: The last HTTP status, or None when no answer came (or no attempt was made).
    status: int | None
    #: Requests made for it this time (0 when it never reached the network).
    attempts: int
    #: Why it was not delivered, if it was not.
    error: FlameupError | None

    def __init__(
        self,
        message: Message,
        result: OutcomeResult,
        status: int | None,
        attempts: int,
        error: FlameupError | None,
    ) -> None:
        self._set(message, result, status, attempts, error)

    @property
    def kind(self) -> str:
        return self.message.kind


OutcomeCallback = Callable[[MessageOutcome], object]
#: What was attempted for one message: (requests made, last HTTP status or None).
Tried = tuple[int, "int | None"]
NOT_TRIED: Tried = (0, None)

#: Warnings about lost messages are repeated at most this often, so a long outage can't flood logs.
WARNING_INTERVAL = 60.0

#: What to check, by the status of a rejection.
_REJECTION_HINTS = {
    400: ": the API refused the message's content",
    404: ": a wrong workspace or host? check FLAMEUP_WORKSPACE_ID / workspace_id and FLAMEUP_HOST / host",
    405: ": a wrong host? check FLAMEUP_HOST / host",
    413: ": the message is too large for the API; lower max_message_bytes",
    422: ": the API refused the message's content",
}


class Stats(Value):
    """A snapshot of a client's counters.

    Every message accepted by ``track``/``identify`` (``enqueued``) or read back from the spool
    (``replayed``) is, at any moment, in exactly one of ``queued``, ``delivered``, ``rejected``,
    ``dropped``, ``spooled`` or ``filtered``: when the client is idle,
    ``enqueued + replayed == queued + delivered + rejected + dropped + spooled + filtered``.
    """

    __slots__ = (
        "queued",
        "enqueued",
        "delivered",
        "rejected",
        "retried",
        "dropped",
        "spooled",
        "replayed",
        "internal_errors",
        "corrupt",
        "concurrency",
        "filtered",
        "relay",
    )
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
    #: The adaptive limit on requests in flight now (0 while no worker runs): it grows while a
    #: backlog waits and answers stay fast, and shrinks on 429/503, timeouts and slower answers.
    concurrency: int
    #: Dropped by the client's ``before_send`` (it returned None): on purpose, never an error.
    filtered: int
    #: Relay mode (``delivery="relay"``): this process's appends and the relay's counters; None in
    #: the in-process mode. The fields above count only what the in-process worker handles
    #: there: the messages that fell back to it (``relay.fallbacks``).
    relay: RelayStats | None

    def __init__(
        self,
        queued: int,
        enqueued: int,
        delivered: int,
        rejected: int,
        retried: int,
        dropped: int,
        spooled: int,
        replayed: int,
        internal_errors: int,
        corrupt: int,
        concurrency: int = 0,
        filtered: int = 0,
        relay: RelayStats | None = None,
    ) -> None:
        self._set(
            queued,
            enqueued,
            delivered,
            rejected,
            retried,
            dropped,
            spooled,
            replayed,
            internal_errors,
            corrupt,
            concurrency,
            filtered,
            relay,
        )


class Ledger:
    def __init__(
        self, spool: Spool, on_error: ErrorCallback | None, on_outcome: OutcomeCallback | None = None
    ) -> None:
        self._spool = spool
        self._on_error = on_error
        self._on_outcome = on_outcome
        self._lock = threading.Lock()
        self.delivered = 0
        self.rejected = 0
        self.retried = 0
        self.dropped = 0
        self.spooled = 0
        self.replayed = 0
        self.internal_errors = 0
        self.filtered = 0
        #: Live messages that did not reach the API (spooled or dropped): flush() compares it.
        self.unreached = 0
        self._last_warning = -WARNING_INTERVAL
        self._auth_failure_logged = False
        self._misdirection_logged = False
        self._misconfiguration_logged = False
        #: Whether the current outage was announced; the next delivery ends it.
        self._outage_logged = False
        #: Rejections counted since the last warning about them, and when that was, by status.
        self._rejections: dict[int | None, tuple[int, float]] = {}

    def snapshot(
        self, queued: int, enqueued: int, corrupt: int, concurrency: int = 0, relay: RelayStats | None = None
    ) -> Stats:
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
                concurrency=concurrency,
                filtered=self.filtered,
                relay=relay,
            )

    def count_retry(self) -> None:
        with self._lock:
            self.retried += 1

    def count_replayed(self, count: int) -> None:
        with self._lock:
            self.replayed += count

    def count_filtered(self) -> None:
        with self._lock:
            self.filtered += 1

    def count_internal_error(self) -> None:
        with self._lock:
            self.internal_errors += 1

    def delivered_one(self, message: Queued, tried: Tried) -> None:
        """Count a delivered message: what :meth:`record` does for one, without building an
        :class:`Outcome` (this runs for every message the worker delivers)."""
        with self._lock:
            self.delivered += 1
            ended_outage, self._outage_logged = self._outage_logged, False
        if ended_outage:
            logger.warning("the Flameup API answers again: delivery resumed")
        if self._on_outcome is not None:
            self._announce([message], "delivered", [tried], None)

    def record(self, message: Queued, outcome: Outcome) -> None:
        """Count a message whose delivery ended with ``outcome``."""
        result = outcome.result
        if result is Result.DELIVERED:
            self.delivered_one(message, outcome.tried)
        elif result is Result.REJECTED:
            assert outcome.error is not None
            with self._lock:
                self.rejected += 1
            self._warn_rejection(outcome)
            self._announce([message], "rejected", [outcome.tried], outcome.error)
            self.report(outcome.error, [message])
        else:
            self.hand_on([message], self.undelivered_error(outcome), [outcome.tried])

    def _warn_rejection(self, outcome: Outcome) -> None:
        """A rejection is never silent: a warning per status at most once a minute, with a count."""
        status = outcome.status
        now = time.monotonic()
        with self._lock:
            since, last = self._rejections.get(status, (0, -WARNING_INTERVAL))
            since += 1
            due = now - last >= WARNING_INTERVAL
            self._rejections[status] = (0, now) if due else (since, last)
        if due:
            logger.warning(
                "the Flameup API rejected %d message(s) for good (%s)%s. Rejected messages are not "
                "retried: see stats().rejected and on_error. Logged at most once a minute per status.",
                since,
                outcome.error,
                _REJECTION_HINTS.get(status or 0, ""),
            )

    def undelivered_error(self, outcome: Outcome) -> DeliveryError:
        if outcome.result is Result.MISCONFIGURED:
            if not self._misconfiguration_logged:
                self._misconfiguration_logged = True
                logger.error(
                    "messages cannot be sent: %s. Messages are kept, not dropped. Logged once per client.",
                    outcome.error,
                )
            return DeliveryError("misconfigured", "the client cannot send as configured", outcome.error)
        if outcome.result is Result.UNAUTHORIZED:
            if not self._auth_failure_logged:
                self._auth_failure_logged = True
                logger.error(
                    "the Flameup API refused the API key (%s). Messages are kept, not "
                    "dropped; check FLAMEUP_API_KEY / api_key. Logged once per client.",
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
        with self._lock:
            announce, self._outage_logged = not self._outage_logged, True
        if announce:
            logger.warning(
                "the Flameup API is unreachable or failing (%s): undelivered messages %s. "
                "Logged once per outage.",
                outcome.error,
                self.where_kept(),
            )
        return DeliveryError(
            "retries_exhausted", f"not delivered after {outcome.attempts} attempt(s)", outcome.error
        )

    def where_kept(self) -> str:
        """Where a message handed on goes, in words, for log lines."""
        directory = getattr(self._spool, "directory", None)
        if directory is None:
            return "are dropped (the disk spool is off: spool_dir=False)"
        return f"go to the disk spool in {directory} and are replayed when the API answers again"

    def hand_on(self, messages: Sequence[Queued], error: FlameupError, tried: Sequence[Tried] = ()) -> int:
        """Spool what the spool takes; drop (count, warn, report) the rest. Returns how many
        were spooled.

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
            self.unreached += len(messages)
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
        return kept

    def left_in_spool(
        self, messages: Sequence[Queued], error: DeliveryError, tried: Sequence[Tried] = ()
    ) -> None:
        """Replayed messages that stay where they are, in their segment (not written again, so
        the spool's cap can never drop them): spooled, as before they were read."""
        if not messages:
            return
        with self._lock:
            self.spooled += len(messages)
        self._announce(messages, "spooled", tried, error)

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
