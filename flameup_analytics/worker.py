"""The worker: one daemon thread that dispatches queued (and replayed) messages continuously.

It sleeps until ``flush_at`` messages wait, ``flush_interval`` passes, or a flush or shutdown
wakes it; from then on it keeps requests in flight for as long as messages wait. There is no batch
barrier: whenever a request slot is free it takes the next message whose user's lane allows it
(``lanes.py``: an identify waits for its user's earlier messages; tracks go together up to a per-user
limit), so a slow or busy user never holds up the others. How many slots there are is the
adaptive limit of ``limiter.py``; the I/O that carries the requests is ``connections.py`` (and its
event loop, ``event_loop.py``).

A message that is worth retrying keeps its slot while it waits: a sick API slows delivery down
instead of multiplying the load on it. A message that cannot be delivered now is handed on to the
spool together with the messages of its user that wait behind it, so they stay in order on disk.

The spool is replayed through the same lanes, limit, retries and accounting, with what live
traffic leaves free; a replayed message that fails again stays in its segment.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

from ._log import logger
from .connections import Carrier, Exchange, RequestTemplate, internal_error_of
from .delivery import Outcome, Result, judge
from .errors import DeliveryError
from .lanes import Lanes, Ordering
from .ledger import NOT_TRIED, Ledger, Tried
from .limiter import ConcurrencyLimit
from .message import Queued, key_of
from .queue import MessageQueue
from .retry import RetryPolicy, parse_retry_after
from .spool import DiskSpool, SegmentReader


class ReplayEnd(enum.Enum):
    """How a replay pass ended."""

    #: Every record this process could claim is final (delivered or rejected): nothing left.
    DRAINED = "drained"
    #: Shutdown began: the rest stays on disk for the next process.
    PAUSED = "paused"
    #: A replayed message could not be delivered: the API is down again. The rest stays on disk
    #: and the next pass waits for a backoff, or for live delivery to succeed.
    FAILED = "failed"


class _Entry(Exchange):
    """A message on its way: its attempts, and where it came from (the queue, or a segment)."""

    __slots__ = ("attempts", "kind", "message", "record", "segment", "seq", "status", "user", "waits")

    def __init__(self, seq: int, message: Queued, template: RequestTemplate) -> None:
        super().__init__(template, key_of(message), message[2])
        self.seq = seq
        self.message = message
        self.kind = message[0]
        self.user = message[1]
        self.attempts = 0
        self.status: int | None = None
        self.waits: Iterator[float] | None = None
        self.segment: _Segment | None = None
        self.record = 0

    @property
    def tried(self) -> Tried:
        return self.attempts, self.status


class _Segment:
    """A segment being replayed: which of its records were sent, and which are final."""

    def __init__(self, reader: SegmentReader) -> None:
        self.reader = reader
        self.records = reader.records
        self.next = 0
        #: Per record: True final, False not (it stays), None not known yet.
        self.final: list[bool | None] = [None] * len(self.records)
        #: Records final without a break from the first: the ack may go this far.
        self.final_run = 0
        #: How far the ack file says (written every ``batch_size`` records, and at the end).
        self.acked = 0
        self.open = 0
        #: Released (or deleted): records still in flight no longer move its ack.
        self.closed = False

    @property
    def admitted_all(self) -> bool:
        return self.next >= len(self.records)

    def extend_final_run(self) -> int:
        """Extend the run of final records past those that became final; its new end."""
        final = self.final
        run = self.final_run
        while run < len(final) and final[run]:
            run += 1
        self.final_run = run
        return run


class Worker:
    """The dispatcher thread of one client (see the module docstring).

    ``wait_settled``, ``unsettled_count``, ``replay_spool``, ``stop``, ``join`` and
    ``take_unsettled`` may be called from any thread; everything else runs on the worker's own.
    """

    def __init__(
        self,
        queue: MessageQueue,
        ledger: Ledger,
        carrier: Carrier,
        templates: dict[str, RequestTemplate],
        *,
        retry: RetryPolicy,
        timeout: float,
        batch_size: int,
        flush_interval: float,
        max_concurrency: int,
        ordering: Ordering = "relaxed",
        spool: DiskSpool | None = None,
        replay_interval: float = 30.0,
        idle_timeout: float = 60.0,
        may_retire: Callable[[Worker], bool] | None = None,
    ) -> None:
        self._queue = queue
        self._ledger = ledger
        self._carrier = carrier
        self._templates = templates
        self._retry = retry
        self._timeout = timeout
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._limit = ConcurrencyLimit(max_concurrency)
        self._lanes: Lanes[_Entry] = Lanes(ordering, max(1, max_concurrency // 2))
        #: Messages holding a slot: in flight, or waiting to be retried.
        self._in_flight = 0
        #: Attempts on the wire now: never more than the limit, retries included.
        self._on_wire = 0
        #: Retries waiting for their time: (due, tie-breaker, entry).
        self._timers: list[tuple[float, int, _Entry]] = []
        self._tie = itertools.count()
        #: Every message taken and not yet settled, by sequence number (replayed ones negative).
        self._pending: dict[int, _Entry] = {}
        #: Live sequence numbers in the order they were taken, for flush()'s low water mark.
        self._live_order: deque[int] = deque()
        #: What each waiting flush() waits for: the low water mark it needs.
        self._flush_targets: list[int] = []
        #: Pending messages whose outcome is being counted right now.
        self._claimed: set[int] = set()
        #: Guards ``_pending`` together with the queue's take count; flush() waits on it.
        self._settled = threading.Condition(threading.Lock())
        self._stopping = False
        #: When the queue may be drained although fewer than ``flush_at`` messages wait.
        self._drain_at = time.monotonic() + flush_interval
        self._spool = spool
        self._replay_interval = replay_interval
        self._idle_timeout = idle_timeout
        self._may_retire = may_retire
        self._replay_due = 0.0  # monotonic time of the next look at the spool: at once, on start
        self._last_failure = 0.0
        self._last_success = 0.0
        #: Counts finished replay passes, and how the last one ended.
        self._replay_passes = 0
        self._replay_end: ReplayEnd | None = None
        self._replay_requested = False
        #: The pass under way: the segments still to claim, the one being sent, the one before it
        #: while its last answers come back (the next starts meanwhile: no round trip idle per
        #: segment, and never more than two segments' records in memory), whether it failed.
        self._claims: Iterator[SegmentReader] | None = None
        self._segment: _Segment | None = None
        self._finishing: _Segment | None = None
        self._replay_halted = False
        self._replay_retry_after = 0.0
        self._replay_waits = retry.waits()
        #: Replayed messages get negative sequence numbers: flush() does not wait for them.
        self._replay_seqs = itertools.count(-1, -1)
        self.abort = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flameup-worker", daemon=True)

    @property
    def concurrency_limit(self) -> int:
        """The adaptive limit on requests in flight, now."""
        return self._limit.slots

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Deliver what is queued, then end. Returns at once; see :meth:`join`."""
        self._stopping = True
        self._queue.wakeup.set()

    def join(self, timeout: float) -> bool:
        self._thread.join(max(0.0, timeout))
        return not self._thread.is_alive()

    def take_unsettled(self) -> tuple[list[Queued], list[Tried]]:
        """Interrupt delivery and take back every message not yet settled, oldest first, with
        what was attempted for each.

        A request already in flight may still succeed; its message is then both delivered and
        handed on, which the idempotency key makes harmless.
        """
        self.abort.set()
        self._queue.wakeup.set()
        with self._settled:
            seqs = sorted(seq for seq in self._pending if seq not in self._claimed)
            live = [self._pending.pop(seq) for seq in seqs if seq >= 0]
            # Replayed messages are not handed on again: they are still in their segment, which
            # was not acked past them, so the next replay (here or in another process) sends them.
            replayed = [self._pending.pop(seq) for seq in reversed(seqs) if seq < 0]
            unsettled = [entry.message for entry in live]
            tried = [entry.tried for entry in live]
            unsettled += self._queue.take_all()
            self._settled.notify_all()
        self._ledger.left_in_spool(
            [entry.message for entry in replayed],
            DeliveryError("shutdown", "the shutdown deadline passed"),
            [entry.tried for entry in replayed],
        )
        return unsettled, tried

    # --- flush -------------------------------------------------------------------------------

    def wait_settled(self, target: int, timeout: float) -> bool:
        """Wait until every message with a sequence number below ``target`` is settled."""
        with self._settled:
            self._flush_targets.append(target)
        self._queue.wakeup.set()
        with self._settled:
            try:
                return self._settled.wait_for(lambda: self._low_water() >= target, timeout)
            finally:
                self._flush_targets.remove(target)

    def unsettled_count(self) -> int:
        """Messages queued or in flight, counted consistently with the settled ones."""
        with self._settled:
            return len(self._pending) + len(self._queue)

    def _low_water(self) -> int:
        order, pending = self._live_order, self._pending
        while order and order[0] not in pending:
            order.popleft()
        return order[0] if order else self._queue.taken

    # --- the loop ----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._serve()
        finally:
            self._end_replay_pass(ReplayEnd.PAUSED)
            self._carrier.close()

    def _serve(self) -> None:
        idle_since = time.monotonic()
        while not self.abort.is_set():
            try:
                now = time.monotonic()
                self._seal_spilled()
                self._fire_timers(now)
                self._admit(now)
                self._replay(now)
                if self._busy():
                    idle_since = now
                elif self._stopping or (now - idle_since >= self._idle_timeout and self._retire()):
                    return
                for exchange in self._carrier.poll(self._sleep(now)):
                    assert isinstance(exchange, _Entry)
                    self._answered(exchange)
            except Exception:
                logger.exception("unexpected error in the worker; it carries on")
                self._ledger.count_internal_error()
                self.abort.wait(self._flush_interval)  # no hot loop if the fault persists

    def _busy(self) -> bool:
        return bool(self._in_flight or len(self._queue) or self._lanes.waiting or self._claims)

    def _sleep(self, now: float) -> float:
        """How long the loop may wait for I/O before it has something to do by itself."""
        limit = self._limit
        wake = now + self._flush_interval
        if self._timers:
            due = self._timers[0][0]
            if due <= now:  # held back: by a pause until it ends, by the limit until an answer
                due = limit.paused_until if now < limit.paused_until else wake
            wake = min(wake, due)
        if len(self._queue) and not self._draining(now):
            wake = min(wake, self._drain_at)
        if now < limit.paused_until and (len(self._queue) or self._lanes.waiting):
            wake = min(wake, limit.paused_until)
        if self._spool is not None and not self._claims and not self._stopping:
            wake = min(wake, self._replay_due)
        return max(0.0, wake - now)

    def _draining(self, now: float) -> bool:
        """Whether queued messages go now: once started, delivery goes on while any wait."""
        return (
            self._in_flight > 0
            or now >= self._drain_at
            or len(self._queue) >= self._batch_size
            or bool(self._flush_targets)
            or self._stopping
        )

    def _seal_spilled(self) -> None:
        """fsync the segments that spills from callers' threads filled: callers never wait for it."""
        if self._spool is not None:
            self._spool.seal_pending()

    def _retire(self) -> bool:
        """End the thread of a long-idle worker (many short-lived clients must not pile up
        threads), unless the spool still holds work for it or the client refuses."""
        if self._spool is not None and (
            self._spool.has_unreplayed or self._replay_end is not ReplayEnd.DRAINED
        ):
            return False
        return self._may_retire is not None and self._may_retire(self)

    # --- taking messages ---------------------------------------------------------------------

    def _admit(self, now: float) -> None:
        """Fill the free slots: first users whose lane lets a message go, then the queue."""
        limit, lanes = self._limit, self._lanes
        while limit.has_room(self._in_flight, now):
            ready = lanes.next()
            if ready is not None:
                self._send(ready[2])
                continue
            if not len(self._queue) or not self._draining(now):
                break
            self._take(limit.slots - self._in_flight)
        if not len(self._queue) and not self._in_flight:
            self._drain_at = now + self._flush_interval

    def _take(self, count: int) -> None:
        """Take up to ``count`` messages from the queue: each goes at once, or waits in its lane."""
        templates, lanes = self._templates, self._lanes
        with self._settled:
            first, batch = self._queue.take(count)
            entries = [
                _Entry(seq, message, templates[message[0]]) for seq, message in enumerate(batch, first)
            ]
            for entry in entries:
                self._pending[entry.seq] = entry
                self._live_order.append(entry.seq)
        for entry in entries:
            if lanes.may_send(entry.user, entry.kind):
                lanes.sent(entry.user, entry.kind)
                self._send(entry)
            else:
                lanes.wait(entry.user, entry.kind, entry)
        self._queue.held = lanes.waiting

    def _send(self, entry: _Entry) -> None:
        """Start an entry's first attempt: it holds a slot until it is settled."""
        self._in_flight += 1
        entry.waits = self._retry.waits()
        self._attempt(entry)

    def _attempt(self, entry: _Entry) -> None:
        entry.attempts += 1
        self._on_wire += 1
        self._carrier.start(entry, self._timeout)

    def _fire_timers(self, now: float) -> None:
        """Retry the messages whose wait is over, within the limit: after a storm of 429s the
        limit is 1, and so is what reaches the API, retries included."""
        timers, limit = self._timers, self._limit
        while timers and timers[0][0] <= now:
            if now < limit.paused_until or self._on_wire >= limit.slots:
                return
            _, _, entry = heapq.heappop(timers)
            if entry.seq in self._pending:
                self._attempt(entry)

    # --- answers -----------------------------------------------------------------------------

    def _answered(self, entry: _Entry) -> None:
        now = time.monotonic()
        self._on_wire -= 1
        if entry.seq not in self._pending:
            self._release(entry)  # taken back by a shutdown meanwhile
            return
        cause = internal_error_of(entry)
        if cause is not None:
            logger.error("unexpected error while delivering; the message is handed on", exc_info=cause)
            self._ledger.count_internal_error()
        entry.status = None if entry.response is None else entry.response.status
        verdict = judge(entry.response, entry.error, self._retry)
        if verdict.overload:
            self._limit.overloaded()
            if verdict.retry_after is not None and verdict.retry_after <= self._retry.max_retry_after:
                self._limit.pause(now + verdict.retry_after)
        elif entry.response is not None:
            self._limit.answered(now - entry.sent_at, backlog=self._backlog(), now=now)
        result = verdict.result
        if result is Result.DELIVERED:
            self._last_success = now
            self._settle_final(entry, None)
            return
        if result is None:
            assert entry.waits is not None
            if cause is None and entry.attempts <= self._retry.max_retries:
                delay = self._retry.delay(entry.waits, verdict.retry_after)
                if delay is not None:
                    self._ledger.count_retry()
                    heapq.heappush(self._timers, (now + delay, next(self._tie), entry))
                    return
            result = Result.EXHAUSTED
        outcome = Outcome(result, entry.attempts, entry.response, verdict.error)
        if result is Result.REJECTED:
            self._last_success = now
            self._settle_final(entry, outcome)
        else:
            self._last_failure = now
            self._settle_undelivered(entry, outcome)

    def _backlog(self) -> bool:
        return bool(len(self._queue) or self._lanes.waiting) or self._in_flight >= self._limit.slots

    def _release(self, entry: _Entry) -> None:
        self._in_flight -= 1
        self._lanes.final(entry.user, entry.kind)
        self._queue.held = self._lanes.waiting

    def _settle_final(self, entry: _Entry, outcome: Outcome | None) -> None:
        """Count a message the API took (``outcome`` None: delivered) or rejected."""
        # _settling() for one message, spelled out: this runs for every delivered message.
        seq = entry.seq
        with self._settled:
            claimed = seq in self._pending and seq not in self._claimed
            if claimed:
                self._claimed.add(seq)
        if claimed:
            try:
                if outcome is None:
                    self._ledger.delivered_one(entry.message, entry.tried)
                else:
                    self._ledger.record(entry.message, outcome)
            finally:
                with self._settled:
                    del self._pending[seq]
                    self._claimed.discard(seq)
                    if self._flush_targets and self._low_water() >= min(self._flush_targets):
                        self._settled.notify_all()
        self._release(entry)
        if entry.segment is not None:
            self._record_done(entry, True)

    def _settle_undelivered(self, entry: _Entry, outcome: Outcome) -> None:
        """Hand on a message that cannot be delivered now, with its user's messages behind it
        (replayed ones stay in their segment instead)."""
        behind = self._lanes.take_waiting(entry.user)
        self._release(entry)
        entries = [entry, *behind]
        live = [e for e in entries if e.segment is None]
        replayed = [e for e in entries if e.segment is not None]
        if live:
            with self._settling([e.seq for e in live]) as claimed:
                if claimed:
                    error = self._ledger.undelivered_error(outcome)
                    rest = [e for e in live if e.seq in claimed]
                    # Only the first was tried: those behind it were handed on untried.
                    tried = [e.tried if e is entry else NOT_TRIED for e in rest]
                    self._ledger.hand_on([e.message for e in rest], error, tried)
        if replayed:
            self._replay_halted = True
            if outcome.response is not None and entry.segment is not None:
                self._replay_retry_after = max(self._replay_retry_after, _retry_after(outcome))
            with self._settling([e.seq for e in replayed]) as claimed:
                if claimed:
                    error = self._ledger.undelivered_error(outcome)
                    rest = [e for e in replayed if e.seq in claimed]
                    tried = [e.tried if e is entry else NOT_TRIED for e in rest]
                    self._ledger.left_in_spool([e.message for e in rest], error, tried)
            for e in replayed:
                self._record_done(e, False)
        self._queue.held = self._lanes.waiting

    @contextlib.contextmanager
    def _settling(self, seqs: list[int]) -> Iterator[set[int]]:
        """Claim messages for settling and release them once counted, so a flush that returns
        True sees their outcome in stats() and on_error. Yields those not taken by a shutdown."""
        with self._settled:
            claimed = {seq for seq in seqs if seq in self._pending and seq not in self._claimed}
            self._claimed |= claimed
        try:
            yield claimed
        finally:
            with self._settled:
                for seq in claimed:
                    del self._pending[seq]
                self._claimed -= claimed
                # Wake flush() only when it can return: waking it per message costs the worker
                # about a third of its CPU (docs/benchmarks.md).
                if self._flush_targets and self._low_water() >= min(self._flush_targets):
                    self._settled.notify_all()

    # --- replay --------------------------------------------------------------------------------

    def replay_spool(self, timeout: float) -> bool:
        """Replay the spool now. True once a pass left nothing this process could claim; False
        when a pass failed (the API is down again: no new pass is forced) or at the deadline."""
        deadline = time.monotonic() + timeout
        with self._settled:
            while True:
                self._replay_requested = True
                self._queue.wakeup.set()
                if not self._settled.wait_for(
                    functools.partial(self._replay_pass_after, self._replay_passes),
                    deadline - time.monotonic(),
                ):
                    return False
                if self._replay_end is not ReplayEnd.PAUSED or self._stopping:
                    return self._replay_end is ReplayEnd.DRAINED

    def _replay_pass_after(self, passes: int) -> bool:
        return self._replay_passes > passes

    def _replay(self, now: float) -> None:
        """Start a pass when one is due, and feed the pass's records to the free slots that live
        traffic leaves (live messages first: replay waits while any are queued)."""
        if self._spool is None:
            return
        if self._claims is None:
            if self._stopping or not self._replay_wanted(now):
                return
            self._replay_requested = False
            self._replay_halted = False
            self._claims = iter(self._spool.claim())
        if self._stopping:
            # No new record; the segments are released (acked as far as they got) once those in
            # flight are answered, so what they delivered is not sent again by the next process.
            if self._no_segment_open:
                self._end_replay_pass(ReplayEnd.PAUSED)
            return
        while not self._replay_halted and not len(self._queue):
            segment = self._segment
            if segment is not None and segment.admitted_all and self._finishing is None:
                self._finishing, self._segment = segment, None
                continue
            if segment is None:
                try:
                    reader = next(self._claims, None)
                except Exception:
                    # Not the API's fault, but the pass cannot go on: it ends as failed (so
                    # replay_spool() says so, and the next pass waits for the backoff).
                    logger.exception("the spool could not be read; the replay pass stops")
                    self._ledger.count_internal_error()
                    self._replay_halted = True
                    break
                if reader is None:
                    if self._finishing is None:
                        self._end_replay_pass(ReplayEnd.DRAINED)
                    return
                segment = self._segment = _Segment(reader)
                self._close_segment_if_done(segment)
                continue
            if segment.admitted_all or not self._limit.has_room(self._in_flight, now):
                return
            self._admit_record(segment)
        if self._replay_halted and self._no_segment_open:
            self._end_replay_pass(ReplayEnd.FAILED)

    @property
    def _no_segment_open(self) -> bool:
        """Neither the segment being sent nor the one whose last answers come back is open."""
        return self._segment is None and self._finishing is None

    def _replay_wanted(self, now: float) -> bool:
        assert self._spool is not None
        recovered = self._last_success > self._last_failure and (
            self._spool.has_unreplayed or self._replay_end is ReplayEnd.FAILED
        )
        return now >= self._replay_due or recovered or self._replay_requested

    def _admit_record(self, segment: _Segment) -> None:
        index = segment.next
        segment.next += 1
        message = segment.records[index].message
        entry = _Entry(next(self._replay_seqs), message, self._templates[message.kind])
        entry.segment, entry.record = segment, index
        segment.open += 1
        with self._settled:
            self._pending[entry.seq] = entry
        self._ledger.count_replayed(1)
        if self._lanes.may_send(entry.user, entry.kind):
            self._lanes.sent(entry.user, entry.kind)
            self._send(entry)
        else:
            self._lanes.wait(entry.user, entry.kind, entry)

    def _record_done(self, entry: _Entry, final: bool) -> None:
        segment = entry.segment
        assert segment is not None
        segment.final[entry.record] = final
        segment.open -= 1
        if not final:
            self._replay_halted = True
        if not segment.closed:
            self._close_segment_if_done(segment)

    def _close_segment_if_done(self, segment: _Segment) -> None:
        """Ack the unbroken run of final records; delete the segment once all are final, or
        release it when the pass stopped and nothing of it is in flight."""
        acked = segment.extend_final_run()
        if acked == len(segment.final) and segment.admitted_all:
            assert self._spool is not None
            self._spool.forget_bytes(segment.reader.size)
            segment.reader.delete()
            self._segment_closed(segment)
            return
        stopped = self._replay_halted or self._stopping or self.abort.is_set()
        if acked > segment.acked and (acked - segment.acked >= self._batch_size or stopped):
            # An ack that cannot be written (a full disk) costs duplicates after a crash, no more:
            # the pass goes on from memory, and a finished segment is deleted all the same.
            segment.reader.ack_records(acked)
            segment.acked = acked
        if stopped and segment.open == 0:
            segment.reader.release()
            self._segment_closed(segment)

    def _segment_closed(self, segment: _Segment) -> None:
        segment.closed = True
        if self._segment is segment:
            self._segment = None
        elif self._finishing is segment:
            self._finishing = None

    def _end_replay_pass(self, end: ReplayEnd) -> None:
        claims, self._claims = self._claims, None
        if claims is None:
            return
        for segment in (self._finishing, self._segment):
            if segment is not None:
                acked = segment.extend_final_run()
                if acked > segment.acked:
                    segment.reader.ack_records(acked)
                segment.reader.release()
                segment.closed = True
        self._segment = self._finishing = None
        with contextlib.suppress(Exception):
            close = getattr(claims, "close", None)
            if close is not None:
                close()
        self._schedule_next_replay(end)
        with self._settled:
            self._replay_passes += 1
            self._replay_end = end
            self._settled.notify_all()

    def _schedule_next_replay(self, end: ReplayEnd) -> None:
        now = time.monotonic()
        if end is ReplayEnd.PAUSED:
            self._replay_due = 0.0
        elif end is ReplayEnd.DRAINED:
            self._replay_waits = self._retry.waits()
            self._replay_due = now + self._replay_interval
        else:
            # The same backoff as a message's retries (and no sooner than a Retry-After), so a
            # down API never sees a replay storm; live delivery succeeding cuts it short.
            wait = min(next(self._replay_waits), self._replay_interval)
            self._replay_due = now + max(wait, self._replay_retry_after)
            self._replay_retry_after = 0.0


def _retry_after(outcome: Outcome) -> float:
    if outcome.response is None:
        return 0.0
    return parse_retry_after(outcome.response.header("Retry-After")) or 0.0
