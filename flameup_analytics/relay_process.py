"""The relay: one process per spool directory that delivers what relay-mode clients append there.

It runs the in-process pipeline unchanged: a :class:`Worker` (lanes, adaptive limit, retries,
accounting, acks) whose spool is a :class:`RelaySpool`, which claims sealed segments as any replay
does and also reads, under a shared lock, the segments their writers still append to. The
:class:`Relay` loop asks the worker for a replay pass whenever the directory changed (and every
``rescan_interval``, so a writer's death is noticed), backs off while the API fails, writes its
status file every second and drains on SIGTERM. Behaviour and guarantees: docs/relay.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ._log import logger
from ._spool_format import SEGMENT_SUFFIX, Record, appended, backlog_of
from .client import Client
from .connections import carrier_for
from .errors import FlameupError
from .lanes import Ordering
from .ledger import Ledger
from .message import Message
from .queue import MessageQueue
from .relay import LOCK_NAME, STATUS_NAME
from .spool import (
    DiskSpool,
    NoSpool,
    SegmentReader,
    WarningThrottle,
    reachable,
    read_ack,
    read_locked,
    replace_file,
)
from .worker import Worker

#: How long a starting relay tries to win the election (a client's probe holds the lock briefly).
_ELECTION_PATIENCE = 0.5
STATUS_INTERVAL = 1.0
#: How long the loop waits for a replay pass before it looks again (the pass goes on meanwhile).
_PASS_WAIT = 1.0
#: A pass reads its live segments again only this long after its last read. A read holds up the
#: writers' appends; a relay that keeps up gains nothing from it (its next pass comes within the
#: loop's 20 ms), one with a backlog keeps the API busy instead of idle for a round trip.
READ_AGAIN_AFTER = 0.2


class LiveSegmentReader(SegmentReader):
    """A segment whose writer still appends, read under a shared lock up to its last intact
    record. It is never deleted from here: once its records are final it is acked to their end,
    and deleted after its writer sealed it, by the ordinary (exclusive) claim.

    A pass may read a segment again while the records of its last read are still in flight:
    the new reader has that one ``before`` it, and its acks wait until every record before its
    own is final, so an ack never covers a record that was not."""

    def __init__(
        self,
        path: Path,
        fd: int,
        records: list[Record],
        corrupt: int,
        cursors: dict[str, int],
        before: LiveSegmentReader | None = None,
    ) -> None:
        # size 0: a live segment's bytes stay in the directory; nothing to forget.
        super().__init__(path, fd, records, corrupt, 0)
        self._cursors = cursors
        #: The reader of this segment's records before ours, until they are all final.
        self._before = before
        self._next: LiveSegmentReader | None = None
        if before is not None:
            before._next = self
        #: The last ack asked for while the reader before was not settled.
        self._waiting_ack: int | None = None
        #: Every record read is final (the worker deleted it).
        self._final = False

    @property
    def end(self) -> int:
        """The offset just past the last record read: where the next read of the segment starts."""
        return self.records[-1].end

    @property
    def settled(self) -> bool:
        """Every record up to :attr:`end` is final, and acked (or the ack failed and was logged)."""
        return self._final and self._before is None

    def ack(self, end: int) -> bool:
        if self._before is not None:
            self._waiting_ack = end
            return True
        written = super().ack(end)
        if written:
            self._cursors[self.path.name] = end
        return written

    def delete(self) -> bool:
        """Every record read is final: ack up to the last of them, keep the segment."""
        try:
            written = self.ack(self.end)
            self._final = True
            self._settle_next()
            return written
        finally:
            self.release()

    def _settle_next(self) -> None:
        """Once this reader is settled, the acks the next reader of the segment held back go out."""
        follower = self._next
        if not self.settled or follower is None:
            return
        follower._before = None
        if follower._waiting_ack is not None:
            follower.ack(follower._waiting_ack)
        follower._settle_next()


class LiveBatch(SegmentReader):
    """The new records of every live segment of a pass, as one reader, so the worker sends them
    together: one segment at a time would wait for each writer's slowest request in turn. The
    records follow one another segment by segment, each keeping its segment's offset as its
    ``end``; the batch is acked by count (:meth:`ack_records`), which finds each segment's part.

    A sealed segment that follows a live one joins the batch behind it (and is deleted with it):
    its writer may have moved on to it from the live one, so its records are newer and must not
    be sent first."""

    def __init__(self, parts: list[SegmentReader]) -> None:
        records: list[Record] = []
        #: Where each segment's records begin in the batch, so an ack finds the segments it
        #: covers without walking the records.
        self._starts: list[int] = []
        for part in parts:
            self._starts.append(len(records))
            records += part.records
        super().__init__(parts[0].path, -1, records, 0, sum(part.size for part in parts))
        self._parts = parts
        #: Parts before this one are acked to their last record.
        self._first_open = 0
        self._acked_in_part = 0

    def ack_records(self, count: int) -> bool:
        """The batch's first ``count`` records are final: ack each segment that far."""
        written = True
        index = self._first_open
        while index < len(self._parts) and self._starts[index] < count:
            part = self._parts[index]
            covered = min(count - self._starts[index], len(part.records))
            if covered > (self._acked_in_part if index == self._first_open else 0):
                written = part.ack_records(covered) and written
            if covered < len(part.records):
                self._first_open, self._acked_in_part = index, covered
                return written
            index += 1
        self._first_open, self._acked_in_part = index, 0
        return written

    def delete(self) -> bool:
        return all([part.delete() for part in self._parts])

    def release(self) -> None:
        for part in self._parts:
            part.release()


class RelaySpool(DiskSpool):
    """The relay's view of a spool directory: sealed segments first claimed as by any replay
    (exclusively, then deleted once final), and those still being appended to, read live."""

    def __init__(self, directory: Path, read_interval: float = READ_AGAIN_AFTER) -> None:
        super().__init__(directory)
        #: Per live segment, the ack this relay wrote last: a pass's first read starts there.
        self._cursors: dict[str, int] = {}
        #: Per live segment read in this pass, its newest reader: the next read starts at its end.
        self._readers: dict[str, LiveSegmentReader] = {}
        self._read_interval = read_interval

    def claim(self) -> Iterator[SegmentReader]:
        """Each sealed segment, oldest first, then the new records of every live one as one batch;
        then, each time the worker asks for more, what was appended since, as the next batch."""
        # A new pass: whatever the last one left unacked is read again, from the acks.
        self._readers.clear()
        while True:
            read_at = time.monotonic()
            batch: list[SegmentReader] = []
            for path in self.segments():
                # Exclusive fails while its writer, or a reader of ours with records in flight,
                # holds it: a segment sealed during a long pass is still deleted in that pass.
                reader = SegmentReader.open(path, self.warnings)
                if reader is not None:
                    self._cursors.pop(path.name, None)
                    self._readers.pop(path.name, None)
                    self.count_corrupt(reader)
                    if batch:  # behind a live segment: see LiveBatch
                        batch.append(reader)
                    else:
                        yield reader
                    continue
                live = self._open_live(path)
                if live is not None:
                    self.count_corrupt(live)
                    batch.append(live)
            if not batch:
                return
            yield LiveBatch(batch)
            # The worker asks for the next batch once this one's records were all sent, while
            # their last answers come back: reading again then keeps the API busy, where ending
            # the pass left it one round trip idle (see READ_AGAIN_AFTER).
            if time.monotonic() - read_at < self._read_interval:
                return

    def _open_live(self, path: Path) -> LiveSegmentReader | None:
        """The segment's new records, when its writer holds it shared; None when nothing new, or
        when someone holds it exclusively (a writer that spills, or another replayer)."""
        before = self._readers.get(path.name)
        cursor = before.end if before is not None else self._cursors.get(path.name)
        with contextlib.suppress(OSError):
            if path.stat().st_size == cursor:
                return None  # nothing new since the last ack, or the last read
        # Only what follows the cursor: a writer's appends wait while its segment is read, and
        # reading all of it on every pass slowed a CPU-bound writer by a few percent.
        opened = read_locked(path, fcntl.LOCK_SH, start=cursor or 0)
        if opened is None:
            return None
        fd, data = opened
        if cursor is None:
            records, corrupt = appended(data, read_ack(path))
        else:
            records, corrupt = appended(data, 0, trusted=True, base=cursor)
        if not records:
            os.close(fd)
            return None
        reader = LiveSegmentReader(
            path, fd, records, corrupt, self._cursors, None if before is None or before.settled else before
        )
        self._readers[path.name] = reader
        return reader


class Relay:
    """The service loop around a :class:`Worker` for one directory (see the module docstring).

    ``run`` returns when ``stop()`` is called (then it drains for at most ``drain_timeout``), or
    after ``exit_when_idle`` seconds with no segment left in the directory (every record final,
    and no writer)."""

    def __init__(
        self,
        directory: Path,
        *,
        api_key: str | None = None,
        workspace_id: str | None = None,
        host: str | None = None,
        max_concurrency: int = 128,
        ordering: Ordering = "relaxed",
        timeout: float = 10.0,
        poll_interval: float = 0.02,
        rescan_interval: float = 1.0,
        read_again_after: float = READ_AGAIN_AFTER,
        exit_when_idle: float | None = None,
        drain_timeout: float = 10.0,
    ) -> None:
        self.directory = Path(directory)
        # A client without a spool checks the options and builds the requests exactly as a
        # tracking process does; its own queue and worker are never used.
        self._client = Client(
            api_key,
            workspace_id,
            host=host,
            max_concurrency=max_concurrency,
            ordering=ordering,
            timeout=timeout,
            spool_dir=False,
        )
        self._spool = RelaySpool(self.directory, read_again_after)
        self._ledger = Ledger(NoSpool(), self._on_error)
        self._queue = MessageQueue(1, 1)
        self._worker = Worker(
            self._queue,
            self._ledger,
            carrier_for(self._client._transport, self._queue.wakeup, max_concurrency),
            self._client._templates,
            retry=self._client.retry,
            timeout=self._client.timeout,
            batch_size=100,
            flush_interval=0.05,
            max_concurrency=max_concurrency,
            ordering=self._client.ordering,
            spool=self._spool,
            # Passes are asked for by the loop; the worker's own schedule is the backoff's cap.
            replay_interval=30.0,
        )
        self._poll_interval = poll_interval
        self._rescan_interval = rescan_interval
        self._exit_when_idle = exit_when_idle
        self._drain_timeout = drain_timeout
        self._stopping = threading.Event()
        self._started = time.time()
        self._state = "starting"
        self._last_error: tuple[float, str] | None = None
        self._rate = 0.0
        self._status_mark = (time.monotonic(), 0)
        self._lock_fd = -1
        self.warnings = WarningThrottle()

    def _on_error(self, error: FlameupError, messages: list[Message]) -> None:
        self._last_error = (time.time(), str(error))

    def stop(self) -> None:
        """Drain and end ``run`` (from a signal handler or any thread)."""
        self._stopping.set()
        self._worker.stop()

    # --- the loop ------------------------------------------------------------------------------

    def run(self) -> bool:
        """Serve until stopped or idle; False when another relay already serves the directory."""
        if not self._elect():
            self._client.shutdown()
            return False
        logger.info("relay %d delivers from %s", os.getpid(), self.directory)
        self._worker.start()
        self._state = "running"
        reporter = threading.Thread(target=self._report_forever, name="flameup-relay-status", daemon=True)
        reporter.start()
        try:
            self._serve()
        finally:
            self._drain()
            reporter.join(STATUS_INTERVAL * 2)
            self._write_status()
            os.close(self._lock_fd)
            self._client.shutdown()
        return True

    def _serve(self) -> None:
        waits = self._client.retry.waits()
        seen: object = None
        next_pass = 0.0
        idle_since = time.monotonic()
        while not self._stopping.is_set():
            if not self._still_elected():
                logger.warning("relay %d: another relay serves %s now; exiting", os.getpid(), self.directory)
                return
            now = time.monotonic()
            signature = _signature(self.directory)
            if now >= next_pass or signature != seen:
                # Bounded, so a stop() that races the call never leaves the loop waiting for a
                # pass the stopped worker will not make.
                drained = self._worker.replay_spool(timeout=_PASS_WAIT)
                if self._stopping.is_set():
                    return
                if not drained and time.monotonic() - now >= _PASS_WAIT:
                    continue  # a long pass goes on: wait for it again
                if drained:
                    seen, waits = signature, self._client.retry.waits()
                    next_pass = time.monotonic() + self._rescan_interval
                else:
                    # The API fails: the same backoff as a message's retries, never a storm.
                    seen, next_pass = signature, time.monotonic() + next(waits)
            if signature:
                idle_since = now
            elif self._exit_when_idle is not None and now - idle_since >= self._exit_when_idle:
                logger.info("relay %d: nothing left to deliver and no writer; exiting", os.getpid())
                return
            # Not at once after a pass, even when writers appended meanwhile: a relay reading a
            # segment back to back slows its writers (their appends wait for its reads) by ~7 %
            # at 1,000 events/s, against ~1 % with this pause (bench_relay.py --host).
            self._stopping.wait(self._poll_interval)

    def _drain(self) -> None:
        self._state = "draining"
        self._worker.stop()
        if not self._worker.join(self._drain_timeout):
            # What is in flight stays in its segment, acked up to the last final record.
            self._worker.take_unsettled()
            self._worker.join(1.0)
        self._state = "stopped"

    def _elect(self) -> bool:
        """Take the directory's relay lock and write our pid in it; False when another relay holds it."""
        self._spool.make_directory()
        fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + _ELECTION_PATIENCE
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                time.sleep(0.01)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
        self._lock_fd = fd
        return True

    def _still_elected(self) -> bool:
        """Whether this relay still holds the directory's lock. When the directory was removed
        (``rm -rf``, a tmp cleaner), its lock went with it: the relay makes both again and is
        elected anew, before clients, seeing no relay, start another that would read the same live
        segments beside it. False when another relay was elected first."""
        if reachable(self._lock_fd, self.directory / LOCK_NAME):
            return True
        logger.warning("relay %d: %s was removed; making it again", os.getpid(), self.directory)
        try:
            return self._elect()
        except OSError as exc:
            self.warnings.warn(
                "elect", "relay %d cannot make %s again (%s)", os.getpid(), self.directory, exc
            )
            return True  # still the only one that can serve it: try again on the next turn

    # --- status ----------------------------------------------------------------------------------

    def _report_forever(self) -> None:
        while self._state != "stopped" and not self._worker.abort.is_set():
            self._write_status()
            if self._stopping.wait(STATUS_INTERVAL):
                return

    def _write_status(self) -> None:
        try:
            content = json.dumps(self.status(), indent=1).encode()
            replace_file(self.directory / STATUS_NAME, content)
        except Exception as exc:  # never let the report stop the relay
            self.warnings.warn("status", "cannot write the relay's status in %s (%s)", self.directory, exc)

    def status(self) -> dict[str, Any]:
        """What ``relay.json`` holds: who, the counters, the backlog, the rate, the last error."""
        stats = self._ledger.snapshot(
            queued=self._worker.unsettled_count(),
            enqueued=0,
            corrupt=self._spool.corrupt,
            concurrency=self._worker.concurrency_limit,
        )
        now = time.monotonic()
        since, delivered = self._status_mark
        if now - since >= STATUS_INTERVAL / 2:
            self._rate = (stats.delivered - delivered) / (now - since)
            self._status_mark = (now, stats.delivered)
        error_at, error = self._last_error or (None, None)
        return {
            "pid": os.getpid(),
            "directory": str(self.directory),
            "state": self._state,
            "started": self._started,
            "updated": time.time(),
            "delivered": stats.delivered,
            "rejected": stats.rejected,
            "retried": stats.retried,
            "read": stats.replayed,
            "in_flight": stats.queued,
            "internal_errors": stats.internal_errors,
            "corrupt": stats.corrupt,
            "concurrency": stats.concurrency,
            "delivery_rate": round(self._rate, 1),
            "backlog": backlog(self.directory),
            "last_error": error,
            "last_error_at": error_at,
        }


def backlog(directory: Path) -> dict[str, Any]:
    """What waits in ``directory``: segments, records and bytes after their acks, and when the
    oldest of them was written. Reads each segment from its ack on (nothing is locked)."""
    segments = records = size = 0
    oldest: float | None = None
    for path in DiskSpool(directory).segments():
        try:
            with open(path, "rb") as file:
                data = file.read()
        except OSError:
            continue
        ack = read_ack(path)
        start = ack if ack is not None and ack <= len(data) else 0
        count, created = backlog_of(data, start)
        segments += 1
        records += count
        size += len(data) - start
        if created is not None:
            oldest = created if oldest is None else min(oldest, created)
    return {"segments": segments, "records": records, "bytes": size, "oldest": oldest}


def _signature(directory: Path) -> tuple[tuple[str, int], ...]:
    """The segments of ``directory`` and their sizes: what changes when anything is written."""
    try:
        entries = [entry for entry in os.scandir(directory) if entry.name.endswith(SEGMENT_SUFFIX)]
    except OSError:
        return ()
    sizes = []
    for entry in entries:
        with contextlib.suppress(OSError):
            sizes.append((entry.name, entry.stat().st_size))
    return tuple(sorted(sizes))
