"""Relay mode, the side of the process that tracks: its segments, the relay it needs, its flush.

With ``Client(..., delivery="relay")``, ``track``/``identify`` append each record to this
process's own segment in the spool directory with one ``write(2)`` (``O_APPEND``): when they
return, the event is in the kernel and survives the process's SIGKILL, OOM kill or crash. A relay
process (``relay_process.py``), one per directory, delivers it. Guarantees: docs/relay.md.

The writer holds a *shared* ``flock`` on its segment while it appends: the relay, which takes the
same shared lock, reads it meanwhile, up to the last intact record; a replayer that wants the
segment for itself (an exclusive lock) waits until the writer is gone. A segment is sealed when its
lock is released: the writer closed it (full, or at shutdown) or died. The relay then deletes it
once every record is final.

Files of the relay next to the segments: ``relay.lock`` (held, exclusively, by the running relay:
the election), ``relay.json`` (its status, rewritten every second) and ``relay.log`` (what a relay
started by a client logs).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

try:
    import fcntl
except ImportError:  # Windows: no relay mode (Client refuses it)
    fcntl = None  # type: ignore[assignment]

from ._log import logger
from ._spool_format import decode_ack, decode_records, encode_record
from ._value import Value
from .lanes import Ordering
from .message import Queued
from .spool import DEFAULT_SEGMENT_BYTES, DiskSpool, ack_path, measure, open_segment, reachable

LOCK_NAME = "relay.lock"
STATUS_NAME = "relay.json"
LOG_NAME = "relay.log"
#: Past this size, relay.log becomes relay.log.1 (replacing the one before) when a client starts a
#: relay: a directory whose relays come and go for months must not fill its disk with their logs.
LOG_MAX_BYTES = 1024 * 1024
#: How often a client checks that a relay runs (and starts one), and seals what it filled.
CHECK_INTERVAL = 0.5
#: A relay a client started exits after this long with nothing left to deliver and no writer.
AUTO_RELAY_IDLE_EXIT = 60.0
#: A descriptor the hot path may still be about to write to is closed only after this long.
_CLOSE_DELAY = 1.0
#: After the directory refused a segment or a write, relay mode is tried again after this long.
_RETRY_INTERVAL = 1.0
#: Not more than one relay started per this long by one process (a relay takes time to elect itself).
_START_INTERVAL = 2.0

#: When relay mode's appends reach the disk (docs/relay.md, "The guarantees"): ``"never"`` (the
#: kernel writes them back when it will), ``"interval"`` (the checker thread, at most every
#: ``CHECK_INTERVAL``), ``"always"`` (after each append, in the caller's thread).
Fsync = Literal["never", "interval", "always"]


class RelayStats(Value):
    """Relay mode's counters (``client.stats().relay``): this process's writes, and the counters
    of the directory's relay as its status file (``relay.json``) last gave them.

    The relay's counters cover every process writing to the directory, since that relay started
    (a new relay starts again from 0); they are 0, and ``updated`` None, until a relay wrote its
    status."""

    __slots__ = (
        "written",
        "fallbacks",
        "relays_started",
        "pid",
        "delivered",
        "rejected",
        "retried",
        "backlog_records",
        "backlog_bytes",
        "backlog_oldest",
        "delivery_rate",
        "concurrency",
        "last_error",
        "last_error_at",
        "updated",
    )
    #: Records this process appended to its relay segments (not counted in ``Stats.enqueued``).
    written: int
    #: Messages that went to the in-process worker instead (the directory full or unwritable):
    #: counted in ``Stats.enqueued`` and the rest of ``Stats`` like any in-process message. Records
    #: rescued from a removed directory that could not be made again count here and in ``written``.
    fallbacks: int
    #: Relays this process started.
    relays_started: int
    #: The pid of the relay holding the directory's election lock now (0 for the moment one takes
    #: it); None when none runs.
    pid: int | None
    #: Records the relay saw accepted by the API (2xx).
    delivered: int
    #: Records the API refused for good (a final 4xx).
    rejected: int
    #: Retry attempts the relay made.
    retried: int
    #: Records waiting in the directory's segments (after their acks), and their bytes.
    backlog_records: int
    backlog_bytes: int
    #: When the oldest waiting record was written (Unix time); None when nothing waits.
    backlog_oldest: float | None
    #: Records delivered per second, over the relay's last status interval.
    delivery_rate: float
    #: The relay's adaptive limit on requests in flight.
    concurrency: int
    #: The relay's last delivery error, and when (Unix time); None when it had none.
    last_error: str | None
    last_error_at: float | None
    #: When the relay wrote these counters (Unix time); None when there is no status file.
    updated: float | None

    def __init__(
        self,
        written: int,
        fallbacks: int,
        relays_started: int,
        pid: int | None,
        delivered: int = 0,
        rejected: int = 0,
        retried: int = 0,
        backlog_records: int = 0,
        backlog_bytes: int = 0,
        backlog_oldest: float | None = None,
        delivery_rate: float = 0.0,
        concurrency: int = 0,
        last_error: str | None = None,
        last_error_at: float | None = None,
        updated: float | None = None,
    ) -> None:
        self._set(
            written,
            fallbacks,
            relays_started,
            pid,
            delivered,
            rejected,
            retried,
            backlog_records,
            backlog_bytes,
            backlog_oldest,
            delivery_rate,
            concurrency,
            last_error,
            last_error_at,
            updated,
        )

    @classmethod
    def of(cls, written: int, fallbacks: int, relays_started: int, directory: Path) -> RelayStats:
        """This process's counters, with the relay's read from ``directory``."""
        status = read_status(directory) or {}
        backlog = status.get("backlog") or {}
        return cls(
            written,
            fallbacks,
            relays_started,
            relay_pid(directory),
            delivered=status.get("delivered", 0),
            rejected=status.get("rejected", 0),
            retried=status.get("retried", 0),
            backlog_records=backlog.get("records", 0),
            backlog_bytes=backlog.get("bytes", 0),
            backlog_oldest=backlog.get("oldest"),
            delivery_rate=status.get("delivery_rate", 0.0),
            concurrency=status.get("concurrency", 0),
            last_error=status.get("last_error"),
            last_error_at=status.get("last_error_at"),
            updated=status.get("updated"),
        )


class RelayWriter:
    """The relay-mode writer of one client: appends records from any thread, never blocks on a
    lock, never raises. A daemon thread checks every ``CHECK_INTERVAL`` that a relay runs, and
    closes (seals) the segments the hot path left behind."""

    def __init__(
        self,
        spool: DiskSpool,
        environment: dict[str, str],
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        fsync: Fsync = "never",
        ordering: Ordering = "relaxed",
        start_relay: bool = True,
        fallback: Callable[[Queued], object] | None = None,
    ) -> None:
        #: Chooses and makes the directory, and knows the cap the relay segments count against.
        self._spool = spool
        #: Where records rescued from a removed directory go when no new segment can take them
        #: (the client's in-process worker); without one they are dropped, and logged.
        self._fallback = fallback
        self._environment = environment
        self._segment_bytes = segment_bytes
        self._fsync = fsync
        #: The ordering of a relay this writer starts (a running relay keeps its own).
        self._ordering = ordering
        self._start_relay = start_relay
        self._lock = threading.Lock()
        self._fd = -1
        self._path: Path | None = None
        self._written_bytes = 0
        #: Bytes of the open segment the last check found in the directory, where the relay reads:
        #: what was appended after them may have gone to a directory removed since (rescued then).
        self._checked_size = 0
        #: What the open segment may hold: ``segment_bytes``, or less when the spool's cap is near.
        self._limit = 0
        #: No new segment is tried before this (monotonic) after one could not be made: a full or
        #: unwritable directory must not cost every track() a directory listing.
        self._retry_at = 0.0
        #: Why the directory last refused a new segment.
        self._refusal: OSError | None = None
        self._sequence = 0
        self._number = 0
        self._writer = os.urandom(4).hex()
        #: Segments this process wrote whose records are not all known final (flush() waits for them).
        self._segments: list[Path] = []
        #: Descriptors taken out of use: since when (closed, i.e. sealed, after ``_CLOSE_DELAY``), and
        #: for a segment whose directory was removed, the offset its late appends are rescued from.
        self._retired: list[tuple[float, int, int | None]] = []
        self._warned = False
        #: ``fsync="interval"``: ``written`` at the last sync, and whether a segment was created
        #: since the last check (its directory entry must reach the disk too).
        self._synced = 0
        self._unsynced_segment = False
        self._last_start = -_START_INTERVAL
        self._children: list[Any] = []
        self.written = 0
        self.fallbacks = 0
        self.relays_started = 0
        self._stop = threading.Event()
        self._checker: threading.Thread | None = None

    @property
    def directory(self) -> Path:
        return self._spool.directory

    # --- the hot path ----------------------------------------------------------------------

    def append(self, message: Queued) -> bool:
        """Append ``message`` with one ``write(2)``; False (the caller falls back to the in-process
        worker) when it could not be written whole."""
        fd = self._fd
        if fd < 0 or self._written_bytes >= self._limit:
            fd = self._next_segment()
            if fd < 0:
                return self._fell_back(None)
        frame = encode_record(message, time.time())
        try:
            written = os.write(fd, frame)
        except OSError as exc:
            return self._fell_back(exc)
        if written != len(frame):
            # A torn record (the disk filled): the relay skips it once the segment is sealed.
            return self._fell_back(OSError(f"short write ({written} of {len(frame)} bytes)"))
        if self._fsync == "always":
            with contextlib.suppress(OSError):
                os.fsync(fd)
        # Not atomic across threads: a lost increment only delays a rotation, or miscounts stats.
        self._written_bytes += written
        self.written += 1
        return True

    def _next_segment(self) -> int:
        """The descriptor to append to: a new segment when there is none or it is full; -1 when
        none can be made (the directory unwritable, or the spool's cap reached: then not tried
        again for ``_RETRY_INTERVAL``)."""
        with self._lock:
            if self._fd >= 0 and self._written_bytes < self._limit:
                return self._fd  # another thread made it meanwhile
            full = self._fd
            # A directory removed since the last check: what the full segment got meanwhile is
            # rescued now (to a new segment), since a retired segment is no longer looked at.
            self._check_reachable()
            if self._fd == full or self._written_bytes >= self._limit:
                self._retire()
            fd = self._fd if self._fd >= 0 else self._open_segment()
        if fd >= 0:
            self._ensure_checker()
        return fd

    def _open_segment(self) -> int:
        """Make a new segment the open one (the lock held); -1 when the directory refuses it."""
        if time.monotonic() < self._retry_at:
            return -1
        try:
            directory = self._spool.make_directory()
            room = self._spool.max_bytes - measure(directory)
            if room <= 0:
                raise OSError(errno.ENOSPC, f"the spool is full (max_spool_bytes={self._spool.max_bytes})")
            self._number += 1
            fd, path, self._sequence = open_segment(
                directory, self._sequence, self._writer, self._number, fcntl.LOCK_SH
            )
        except OSError as exc:
            self._refusal = exc
            self._retry_at = time.monotonic() + _RETRY_INTERVAL
            return -1
        self._segments.append(path)
        self._fd, self._path, self._written_bytes, self._checked_size = fd, path, 0, 0
        self._limit = min(self._segment_bytes, room)
        self._unsynced_segment = True
        if self._fsync == "always":
            self._sync_directory()
        return fd

    def _retire(self) -> None:
        """Stop appending to the current segment; it is sealed (closed) by the checker later,
        since a caller's thread may have read its descriptor and not written yet."""
        if self._fd >= 0:
            self._retired.append((time.monotonic(), self._fd, None))
            self._fd, self._path = -1, None

    def _check_reachable(self) -> None:
        """If the open segment is no longer where the relay reads (its directory was removed,
        ``rm -rf`` or a tmp cleaner), retire it and rescue what was appended to it since the last
        check found it there (the lock held). What it held before is gone with the directory."""
        fd, path = self._fd, self._path
        if fd < 0 or path is None:
            return
        try:
            size = os.fstat(fd).st_size  # before the check: all of it was in the directory if found
        except OSError:
            return
        if reachable(fd, path):
            self._checked_size = size
            return
        logger.warning("%s was removed while relay mode wrote to it: writing it again", path.parent)
        self._fd, self._path = -1, None
        rescued_up_to = self._rescue(fd, self._checked_size)
        # Appends racing this moment (a caller's thread that read the descriptor before it was
        # retired) are rescued when the segment is sealed, from where this rescue stopped.
        self._retired.append((time.monotonic(), fd, rescued_up_to))

    def _rescue(self, fd: int, start: int) -> int:
        """Write the intact records of ``fd`` past ``start`` to a new segment (or hand them to the
        fallback when none can be made); the offset up to which they were taken (the lock held)."""
        data = _read_from(fd, start)
        records, _ = decode_records(data)
        if not records:
            return start
        frames = b"".join(encode_record(record.message, record.created) for record in records)
        target = self._fd if self._fd >= 0 else self._open_segment()
        try:
            if target < 0 or os.write(target, frames) != len(frames):
                raise OSError(errno.EIO, "no segment took them whole")
            self._written_bytes += len(frames)
        except OSError as exc:
            self._retire()  # a short write left a torn record: start afresh
            self._hand_over([record.message for record in records], exc)
        return start + records[-1].end

    def _hand_over(self, messages: list[Queued], error: OSError) -> None:
        if self._fallback is None:
            logger.error(
                "relay mode lost %d record(s) that could not be written again (%s)", len(messages), error
            )
            return
        self.fallbacks += len(messages)
        for message in messages:
            self._fallback(message)

    def _fell_back(self, error: OSError | None) -> bool:
        self.fallbacks += 1
        if error is not None:
            with self._lock:
                self._retire()  # a failed write may have left a torn record: start afresh
                self._retry_at = time.monotonic() + _RETRY_INTERVAL
        if not self._warned:
            self._warned = True
            logger.warning(
                "relay mode cannot write to %s (%s): messages go to the in-process worker until it can",
                self.directory,
                error or self._refusal,
            )
        return False

    # --- the checker thread ------------------------------------------------------------------

    def _ensure_checker(self) -> None:
        if self._checker is None and not self._stop.is_set():
            self._checker = threading.Thread(
                target=self._check_forever, name="flameup-relay-check", daemon=True
            )
            self._checker.start()

    def _check_forever(self) -> None:
        # At once, then periodically: a relay is started as soon as the first record is written.
        while not self._stop.is_set():
            try:
                self.check()
            except Exception:
                logger.exception("the relay check failed; it carries on")
            self._stop.wait(CHECK_INTERVAL)

    def check(self) -> None:
        """Seal retired segments, move off a segment whose directory was removed, sync what was
        written since the last check (``fsync="interval"``), and start a relay if none runs while
        this process has records."""
        now = time.monotonic()
        with self._lock:
            due = [(fd, rescue) for since, fd, rescue in self._retired if now - since >= _CLOSE_DELAY]
            self._retired = [entry for entry in self._retired if now - entry[0] < _CLOSE_DELAY]
            for fd, rescue in due:
                if rescue is not None:
                    self._rescue(fd, rescue)
            self._check_reachable()
            # Retired segments too: records reach them until the moment they are retired.
            unsynced = [fd for _, fd, _ in self._retired] + ([self._fd] if self._fd >= 0 else [])
            # Claimed under the lock, so two checks at once never sync the same writes twice.
            written, new_segment = self.written, self._unsynced_segment
            dirty = written != self._synced or new_segment
            self._synced, self._unsynced_segment = written, False
        if self._fsync == "interval" and dirty:
            self._sync(unsynced, directory=new_segment)
        for fd, _ in due:
            _seal(fd, durable=self._fsync != "never")
        self._children = [child for child in self._children if child.poll() is None]
        if self._start_relay and now - self._last_start >= _START_INTERVAL and self._needs_relay():
            self._last_start = now
            self._launch()

    def _sync(self, descriptors: list[int], *, directory: bool) -> None:
        """``fsync="interval"``: the segments written since the last check to the disk, and the
        directory when a segment was created (an idle client syncs nothing)."""
        if directory:
            self._sync_directory()
        for fd in descriptors:
            with contextlib.suppress(OSError):
                os.fsync(fd)

    def _sync_directory(self) -> None:
        """A new segment's name reaches the disk only with its directory's."""
        with contextlib.suppress(OSError):
            fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _needs_relay(self) -> bool:
        """Whether a segment of this process is open or not yet delivered, and no relay runs."""
        with self._lock:
            self._segments = [path for path in self._segments if path == self._path or path.exists()]
            writing = bool(self._segments) and not self._stop.is_set()
        return writing and relay_pid(self.directory) is None

    def _launch(self) -> None:
        """Start a relay for the directory, detached (its own session), logging to relay.log."""
        import subprocess  # here: only a process in relay mode ever needs it

        package_root = str(Path(__file__).resolve().parent.parent)
        environment = dict(os.environ, **self._environment)
        environment["PYTHONPATH"] = os.pathsep.join(
            [package_root, *filter(None, [environment.get("PYTHONPATH")])]
        )
        command = [sys.executable, "-m", "flameup_analytics", "relay", "--dir", str(self.directory)]
        command += ["--exit-when-idle", str(AUTO_RELAY_IDLE_EXIT), "--ordering", self._ordering]
        rotate_log(self.directory / LOG_NAME)
        try:
            with open(self.directory / LOG_NAME, "ab") as log:
                child = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    env=environment,
                    start_new_session=True,
                    close_fds=True,
                )
        except OSError as exc:
            logger.warning("cannot start a relay for %s (%s); retrying", self.directory, exc)
            return
        self._children.append(child)
        self.relays_started += 1
        logger.info("started a relay (pid %d) for %s", child.pid, self.directory)

    # --- flush, stats, close -----------------------------------------------------------------

    def check_directory(self) -> None:
        """Move off the open segment now if its directory was removed (as the periodic check
        does): what it rescues goes to a new segment, or to the fallback."""
        with self._lock:
            self._check_reachable()

    def flush(self, timeout: float) -> bool:
        """Wait until the relay's acks cover every record this process wrote before the call
        (delivered or rejected by the API); False at the deadline."""
        deadline = time.monotonic() + timeout
        self.check_directory()
        with self._lock:
            current, current_path = self._fd, self._path
            segments = list(self._segments)
        targets: list[tuple[Path, int]] = []
        for path in segments:
            try:
                size = os.fstat(current).st_size if path == current_path else path.stat().st_size
            except OSError:
                continue  # deleted: every record in it is final
            targets.append((path, size))
        wait = 0.002
        while True:
            # One ack read per poll while the oldest waits, not one per segment: a long flush
            # polled tens of acks a hundred times a second.
            while targets and _final_up_to(*targets[0]):
                targets.pop(0)
            if not targets:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(wait, left))
            # An ack is a small file read: polling it often keeps flush() close to the relay.
            wait = min(wait * 2, 0.01)

    def stats(self) -> RelayStats:
        return RelayStats.of(self.written, self.fallbacks, self.relays_started, self.directory)

    def close(self) -> None:
        """Seal every segment now (the relay delivers them; this process does not wait)."""
        self._stop.set()
        with self._lock:
            for _, fd, rescue in self._retired:
                if rescue is not None:
                    self._rescue(fd, rescue)
            self._check_reachable()
            self._retire()
            retired, self._retired = self._retired, []
        for _, fd, _ in retired:
            _seal(fd, durable=self._fsync != "never")
        if self._fsync != "never":
            self._sync_directory()

    def after_fork_in_child(self) -> None:
        """The child writes its own segments: forget the parent's without touching them (its
        copies of the descriptors are closed; the parent's locks hold through its own)."""
        self._lock = threading.Lock()
        for fd in [*(fd for _, fd, _ in self._retired), *([self._fd] if self._fd >= 0 else [])]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fd, self._path, self._retired, self._segments = -1, None, [], []
        self._writer, self._number = os.urandom(4).hex(), 0
        self._children = []
        self.written = self.fallbacks = self.relays_started = self._synced = 0
        self._unsynced_segment = False
        self._stop = threading.Event()
        self._checker = None


# --- what anyone may ask about a directory's relay -------------------------------------------------


def rotate_log(path: Path) -> None:
    """Move ``path`` to ``<path>.1`` if it is larger than :data:`LOG_MAX_BYTES` (best effort)."""
    with contextlib.suppress(OSError):
        if path.stat().st_size > LOG_MAX_BYTES:
            os.replace(path, path.with_name(path.name + ".1"))


def relay_pid(directory: Path) -> int | None:
    """The pid of the relay that holds ``directory``'s election lock, or None if none does."""
    try:
        fd = os.open(directory / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        # A shared lock for a moment: a relay being elected retries its exclusive one meanwhile.
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        # An empty file (IndexError): the relay truncated it and has not written its pid yet.
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int(os.pread(fd, 32, 0).split()[0])
        return 0  # held, pid not written yet
    except OSError:
        return None
    finally:
        os.close(fd)
    return None


def read_status(directory: Path) -> dict[str, Any] | None:
    """The relay's last status (``relay.json``), or None when there is none or it is unreadable."""
    try:
        with open(directory / STATUS_NAME, "rb") as file:
            status = json.loads(file.read())
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


def _final_up_to(path: Path, size: int) -> bool:
    """Whether every record of ``path`` before offset ``size`` is final: acked that far, or gone."""
    try:
        with open(ack_path(path), "rb") as file:
            ack = decode_ack(file.read(64))
    except FileNotFoundError:
        return not path.exists() or size == 0
    except OSError:
        return False
    # A finished segment is deleted before its ack: an old ack next to no segment is final too.
    return (ack is not None and ack >= size) or not path.exists()


def _read_from(fd: int, start: int) -> bytes:
    """What ``fd`` holds from ``start`` to its end (read whatever its file's name now is)."""
    chunks = []
    with contextlib.suppress(OSError):
        while chunk := os.pread(fd, 1 << 20, start):
            chunks.append(chunk)
            start += len(chunk)
    return b"".join(chunks)


def _seal(fd: int, *, durable: bool = False) -> None:
    with contextlib.suppress(OSError):
        if durable:
            os.fsync(fd)
        os.close(fd)
