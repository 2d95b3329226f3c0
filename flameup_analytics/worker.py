"""The background worker: drains the queue in batches and delivers each batch concurrently.

One daemon thread sleeps until ``flush_at`` messages wait, ``flush_interval`` passes, or a flush or
shutdown wakes it. It then takes batches until the queue is empty. A batch is split into one chain
per user id, each chain sent in call order, up to ``max_concurrency`` chains at once; the next batch
starts when the last one is settled, so per-user order also holds across batches.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from queue import SimpleQueue

from .delivery import Outcome, Result
from .errors import DeliveryError, FlameupError
from .ledger import NOT_TRIED, Ledger, Tried
from .message import USER_ID, Queued
from .queue import MessageQueue
from .retry import RetryPolicy, parse_retry_after
from .spool import DiskSpool, SegmentReader

logger = logging.getLogger("flameup_analytics")

DeliverFn = Callable[[Queued, threading.Event, Callable[[], None]], Outcome]


class ReplayEnd(enum.Enum):
    """How a replay pass ended."""

    #: Every record this process could claim is final (delivered or rejected): nothing left.
    DRAINED = "drained"
    #: Live traffic waits, or shutdown began: come back to it right after.
    PAUSED = "paused"
    #: A replayed message could not be delivered: the API is down again. The rest stays on disk
    #: and the next pass waits for a backoff, or for live delivery to succeed.
    FAILED = "failed"


class _SenderPool:
    """Daemon threads that help the worker run a batch's chains; started as first needed.

    Not ``concurrent.futures``: its threads are joined at interpreter exit, so one request hung on
    a dead server would hold the process open.
    """

    def __init__(self, size: int, on_failure: Callable[[], None]) -> None:
        self._size = size
        self._on_failure = on_failure
        self._jobs: SimpleQueue[Callable[[], None] | None] = SimpleQueue()
        self._threads: list[threading.Thread] = []

    def run(self, tasks: list[Callable[[], None]]) -> None:
        """Run every task, up to ``size`` at once (one on the calling thread); return when all ended."""
        waiting = deque(tasks)
        lock = threading.Lock()
        remaining = len(tasks)
        finished = threading.Event()

        def drain() -> None:
            nonlocal remaining
            while True:
                try:
                    task = waiting.popleft()
                except IndexError:
                    return
                try:
                    task()
                except Exception:
                    logger.exception("unexpected error while delivering; the worker carries on")
                    self._on_failure()
                finally:
                    with lock:
                        remaining -= 1
                        if remaining == 0:
                            finished.set()

        helpers = min(self._size, len(tasks)) - 1
        while len(self._threads) < helpers:
            thread = threading.Thread(
                target=self._work, name=f"flameup-sender-{len(self._threads) + 1}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        for _ in range(helpers):
            self._jobs.put(drain)
        drain()
        finished.wait()

    def close(self) -> None:
        """Let the helper threads end once they are idle."""
        for _ in self._threads:
            self._jobs.put(None)
        self._threads.clear()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()


class Worker:
    def __init__(
        self,
        queue: MessageQueue,
        ledger: Ledger,
        deliver: DeliverFn,
        *,
        batch_size: int,
        flush_interval: float,
        max_concurrency: int,
        spool: DiskSpool | None = None,
        retry: RetryPolicy | None = None,
        replay_interval: float = 30.0,
        idle_timeout: float = 60.0,
        may_retire: Callable[[Worker], bool] | None = None,
    ) -> None:
        self._queue = queue
        self._ledger = ledger
        self._deliver = deliver
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._pool = _SenderPool(max_concurrency, ledger.count_internal_error)
        #: Messages taken from the queue and not yet settled, by sequence number.
        self._pending: dict[int, Queued] = {}
        #: What each waiting flush() waits for: the low water mark it needs.
        self._flush_targets: list[int] = []
        #: Requests made so far for each message in flight, for on_outcome if shutdown takes it.
        self._attempts: dict[int, int] = {}
        #: Pending messages whose outcome is being counted right now.
        self._claimed: set[int] = set()
        #: Guards ``_pending`` together with the queue's take count; flush() waits on it.
        self._settled = threading.Condition(threading.Lock())
        self._stopping = False
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
        #: Set when a replayed message failed: the chains of the pass stop taking new ones.
        self._replay_halted = False
        #: The waits between failed passes: the client's retry policy, as for a message.
        self._retry = retry or RetryPolicy()
        self._replay_waits = self._retry.waits()
        self._replay_retry_after = 0.0
        #: Replayed messages get negative sequence numbers: flush() does not wait for them.
        self._replay_seqs = itertools.count(-1, -1)
        self.abort = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flameup-worker", daemon=True)

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
            live = [seq for seq in seqs if seq >= 0]
            # Replayed messages are not handed on again: they are still in their segment, which
            # was not acked, so the next replay (here or in another process) sends them.
            replayed = [seq for seq in seqs if seq < 0]
            unsettled = [self._pending.pop(seq) for seq in live]
            tried: list[Tried] = [(self._attempts.get(seq, 0), None) for seq in live]
            abandoned = [self._pending.pop(seq) for seq in replayed]
            abandoned_tried: list[Tried] = [(self._attempts.get(seq, 0), None) for seq in replayed]
            unsettled += self._queue.take_all()
            self._settled.notify_all()
        self._ledger.left_in_spool(
            abandoned, DeliveryError("shutdown", "the shutdown deadline passed"), abandoned_tried
        )
        return unsettled, tried

    # --- flush -------------------------------------------------------------------------------

    def wait_settled(self, target: int, timeout: float) -> bool:
        """Wait until every message with a sequence number below ``target`` is settled."""
        self._queue.wakeup.set()
        with self._settled:
            self._flush_targets.append(target)
            try:
                return self._settled.wait_for(lambda: self._low_water() >= target, timeout)
            finally:
                self._flush_targets.remove(target)

    def unsettled_count(self) -> int:
        """Messages queued or in flight, counted consistently with the settled ones."""
        with self._settled:
            return len(self._pending) + len(self._queue)

    def _low_water(self) -> int:
        return min((seq for seq in self._pending if seq >= 0), default=self._queue.taken)

    # --- delivery ----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._serve()
        finally:
            self._pool.close()

    def _serve(self) -> None:
        wakeup = self._queue.wakeup
        idle_since = time.monotonic()
        while not self.abort.is_set():
            woken = wakeup.wait(self._flush_interval)
            wakeup.clear()
            if woken or len(self._queue):
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= self._idle_timeout and self._retire():
                return
            try:
                self._seal_spilled()
                while len(self._queue) and not self.abort.is_set():
                    self._deliver_batch()
                    self._seal_spilled()
                if not self._stopping:
                    self._replay()
            except Exception:
                logger.exception("unexpected error in the worker; it carries on")
                self._ledger.count_internal_error()
                self.abort.wait(self._flush_interval)  # no hot loop if the fault persists
            if self._stopping and not len(self._queue):
                return

    def _seal_spilled(self) -> None:
        """fsync the segments that spills from callers' threads filled: callers never wait for it."""
        if self._spool is not None:
            self._spool.seal_pending()

    def _deliver_batch(self) -> None:
        with self._settled:
            first, batch = self._queue.take(self._batch_size)
        self._deliver_messages(list(enumerate(batch, first)), replaying=False)

    def _deliver_messages(self, entries: list[tuple[int, Queued]], *, replaying: bool) -> set[int]:
        """Deliver numbered messages, one chain per user; return the numbers of those that did not
        reach the API (handed on, or, when ``replaying``, left in their segment)."""
        chains: dict[str, list[tuple[int, Queued]]] = {}
        with self._settled:
            for seq, message in entries:
                self._pending[seq] = message
                chains.setdefault(message[USER_ID], []).append((seq, message))
        logger.debug("delivering a batch of %d message(s) for %d user(s)", len(entries), len(chains))
        unreached: set[int] = set()
        self._pool.run(
            [functools.partial(self._deliver_chain, chain, unreached, replaying) for chain in chains.values()]
        )
        return unreached

    def _retire(self) -> bool:
        """End the thread of a long-idle worker (many short-lived clients must not pile up
        threads), unless the spool still holds work for it or the client refuses."""
        if self._spool is not None and (
            self._spool.has_unreplayed or self._replay_end is not ReplayEnd.DRAINED
        ):
            return False
        return self._may_retire is not None and self._may_retire(self)

    # --- replay ------------------------------------------------------------------------------

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
                if self._replay_end is not ReplayEnd.PAUSED:
                    return self._replay_end is ReplayEnd.DRAINED

    def _replay_pass_after(self, passes: int) -> bool:
        return self._replay_passes > passes

    def _replay(self) -> None:
        """Replay spooled messages, oldest first, while the API takes them and no live batch waits."""
        if self._spool is None or self.abort.is_set():
            return
        now = time.monotonic()
        recovered = self._last_success > self._last_failure and (
            self._spool.has_unreplayed or self._replay_end is ReplayEnd.FAILED
        )
        if now < self._replay_due and not recovered and not self._replay_requested:
            return
        self._replay_requested = False
        self._replay_halted = False
        end = ReplayEnd.DRAINED
        try:
            for reader in self._spool.claim():
                try:
                    end = self._replay_segment(reader)
                finally:
                    reader.release()
                if end is not ReplayEnd.DRAINED:
                    break
        finally:
            self._schedule_next_replay(end)
            with self._settled:
                self._replay_passes += 1
                self._replay_end = end
                self._settled.notify_all()

    def _schedule_next_replay(self, end: ReplayEnd) -> None:
        now = time.monotonic()
        if end is ReplayEnd.PAUSED:
            self._replay_due = 0.0  # live traffic first; come back right after it
        elif end is ReplayEnd.DRAINED:
            self._replay_waits = self._retry.waits()
            self._replay_due = now + self._replay_interval
        else:
            # The same backoff as a message's retries (and no sooner than a Retry-After), so a
            # down API never sees a replay storm; live delivery succeeding cuts it short.
            wait = min(next(self._replay_waits), self._replay_interval)
            self._replay_due = now + max(wait, self._replay_retry_after)
            self._replay_retry_after = 0.0

    def _replay_segment(self, reader: SegmentReader) -> ReplayEnd:
        """Replay one locked segment. Its records are acknowledged up to the last one of an
        unbroken run of final ones; those that did not reach the API stay in it, in order (they
        are never written again, so the spool's cap cannot drop them)."""
        records = reader.records
        for start in range(0, len(records), self._batch_size):
            if self.abort.is_set() or self._stopping or len(self._queue) >= self._batch_size:
                return ReplayEnd.PAUSED
            chunk = records[start : start + self._batch_size]
            self._ledger.count_replayed(len(chunk))
            seqs = [next(self._replay_seqs) for _ in chunk]
            unreached = self._deliver_messages(
                [(seq, record.message) for seq, record in zip(seqs, chunk, strict=True)], replaying=True
            )
            final = next((index for index, seq in enumerate(seqs) if seq in unreached), len(chunk))
            if final:
                # An ack that cannot be written (a full disk) costs duplicates after a crash,
                # nothing more: the pass goes on from memory, and a finished segment is deleted.
                reader.ack(chunk[final - 1].end)
            if final < len(chunk):
                return ReplayEnd.PAUSED if self.abort.is_set() else ReplayEnd.FAILED
        assert self._spool is not None
        self._spool.forget_bytes(reader.size)
        reader.delete()
        return ReplayEnd.DRAINED

    # --- one user's messages -----------------------------------------------------------------

    def _deliver_chain(self, chain: list[tuple[int, Queued]], unreached: set[int], replaying: bool) -> None:
        """Deliver one user's messages in order; add those that did not reach the API to
        ``unreached``.

        If one cannot be delivered now, neither can the ones after it: they are handed on with
        it, so the spool keeps them in order (replayed ones stay in their segment instead)."""
        for index, (seq, message) in enumerate(chain):
            if self.abort.is_set():
                unreached.update(s for s, _ in chain[index:])
                return
            if replaying and self._replay_halted:
                self._leave_in_spool(chain[index:], None, unreached)
                return
            self._attempts[seq] = 0
            try:
                outcome = self._deliver(message, self.abort, functools.partial(self._count_attempt, seq))
            except Exception as exc:
                # A bug (say, in a custom transport) must not leave the message unsettled forever.
                logger.exception("unexpected error while delivering; the message is handed on")
                self._ledger.count_internal_error()
                outcome = Outcome(Result.EXHAUSTED, 1, error=FlameupError(f"internal error: {exc!r}"))
            finally:
                self._attempts.pop(seq, None)
            if outcome.result in (Result.DELIVERED, Result.REJECTED):
                self._last_success = time.monotonic()
                with self._settling([seq]) as claimed:
                    if claimed:
                        self._ledger.record(message, outcome)
                continue
            self._last_failure = time.monotonic()
            if replaying:
                self._replay_halted = True
                self._replay_retry_after = self._retry_after(outcome)
                self._leave_in_spool(chain[index:], outcome, unreached)
                return
            unreached.update(s for s, _ in chain[index:])
            with self._settling([s for s, _ in chain[index:]]) as claimed:
                if claimed:
                    error: DeliveryError = self._ledger.undelivered_error(outcome)
                    rest = [(s, m) for s, m in chain[index:] if s in claimed]
                    # Only this one was tried: those behind it were handed on untried.
                    tried = [outcome.tried if s == seq else NOT_TRIED for s, _ in rest]
                    self._ledger.hand_on([m for _, m in rest], error, tried)
            return

    def _leave_in_spool(
        self, entries: list[tuple[int, Queued]], outcome: Outcome | None, unreached: set[int]
    ) -> None:
        """Replayed messages that did not reach the API stay where they are, in their segment."""
        unreached.update(seq for seq, _ in entries)
        with self._settling([seq for seq, _ in entries]) as claimed:
            if claimed:
                if outcome is None:
                    error = DeliveryError("retries_exhausted", "the replay stopped: the API is failing")
                    tried: list[Tried] = [NOT_TRIED] * len(claimed)
                else:
                    error = self._ledger.undelivered_error(outcome)
                    tried = [outcome.tried] + [NOT_TRIED] * (len(claimed) - 1)
                self._ledger.left_in_spool([m for s, m in entries if s in claimed], error, tried)

    @staticmethod
    def _retry_after(outcome: Outcome) -> float:
        if outcome.response is None:
            return 0.0
        return parse_retry_after(outcome.response.header("Retry-After")) or 0.0

    def _count_attempt(self, seq: int) -> None:
        self._attempts[seq] = self._attempts.get(seq, 0) + 1

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
