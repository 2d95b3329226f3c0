"""The disk spool: where messages go that cannot be held in memory or delivered in time.

Layout of a spool directory (record and name formats in ``_spool_format``; guarantees in
docs/spool.md):

- ``<sequence>-<writer>-<n>.seg``: a segment, only ever appended to, by the one process (the
  "writer", a random token per process) that created it. The sequence number orders segments
  without the wall clock: a new segment takes one more than the highest in the directory.
- ``<segment>.ack``: how far into the segment every record is final, so a replay that was cut
  short resumes there instead of sending everything again.

A writer holds an exclusive ``flock`` on its segment until it is sealed (fsynced and closed); a
replayer takes the same lock on a segment before reading it. So a segment is replayed by one
process at a time, and never while its writer still appends to it or has not made it durable. A
segment is deleted once every record in it is final.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

try:
    import fcntl
except ImportError:  # Windows: no flock, so no spool shared safely between processes
    fcntl = None  # type: ignore[assignment]

from ._log import logger
from ._spool_format import (
    SEGMENT_SUFFIX,
    Record,
    decode_ack,
    encode_ack,
    encode_record,
    replay_order,
    segment_name,
    sequence_of,
    unacknowledged,
)
from ._value import Value
from .message import Queued

#: Whether this platform has what the spool needs (POSIX file locks).
AVAILABLE = fcntl is not None


DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_SEGMENT_BYTES = 1024 * 1024
#: Disk trouble is logged at most this often.
WARNING_INTERVAL = 60.0
#: Names a new segment may try before giving up (other processes take the same numbers).
_NAME_ATTEMPTS = 100


class Spool(Protocol):
    def store(self, messages: Sequence[Queued]) -> int:
        """Keep what it can of ``messages``, oldest first; return how many it kept."""
        ...


class NoSpool:
    """``spool_dir=False``: keeps nothing, so what is handed on is dropped and counted."""

    def store(self, messages: Sequence[Queued]) -> int:
        return 0


class WarningThrottle:
    """Logs each kind of disk trouble at most once per ``WARNING_INTERVAL``: a full disk must not
    flood the log. Races between threads may let a second warning through, which is harmless."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._last: dict[str, float] = {}

    def warn(self, kind: str, message: str, *args: Any) -> None:
        now = self.clock()
        last = self._last.get(kind)
        if last is None or now - last >= WARNING_INTERVAL:
            self._last[kind] = now
            logger.warning(message, *args)


#: For readers opened outside a spool (``summarize``, ``purge``).
_shared_warnings = WarningThrottle()


# --- where the spool lives --------------------------------------------------------------------


def default_directories(host: str, workspace_id: str | None) -> tuple[Path, Path]:
    """Where a client's spool goes by default, in order of preference: ``$XDG_CACHE_HOME`` (or
    ``~/.cache``)/flameup-analytics/<hash of host and workspace>, then the same under the system
    temp directory, for where home is not writable (AWS Lambda). Nothing is created here."""
    import hashlib  # here, with tempfile: a client is made once, the package imported by every process
    import tempfile

    digest = hashlib.sha256(f"{host}\n{workspace_id or ''}".encode()).hexdigest()[:12]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return (
        Path(cache) / "flameup-analytics" / digest,
        Path(tempfile.gettempdir()) / "flameup-analytics" / digest,
    )


def default_directory(host: str, workspace_id: str | None) -> Path:
    """The default spool directory as it is now: the first of them that exists."""
    candidates = default_directories(host, workspace_id)
    return next((candidate for candidate in candidates if candidate.is_dir()), candidates[0])


# --- the spool --------------------------------------------------------------------------------


class DiskSpool:
    """Segmented, append-only, CRC-checked storage shared safely by the processes that use one
    directory. ``store`` may be called from any thread; replay and ``seal_pending`` run on the
    worker thread."""

    def __init__(
        self,
        directory: str | os.PathLike[str] | Sequence[Path],
        max_bytes: int = DEFAULT_MAX_BYTES,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    ) -> None:
        # Several candidates: the first that exists or can be made is used. Nothing is made
        # until something is written, so a client that never spools leaves no trace on disk.
        self._candidates = (
            [Path(directory)] if isinstance(directory, (str, os.PathLike)) else [Path(d) for d in directory]
        )
        self._directory: Path | None = None
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._writer_token = os.urandom(4).hex()
        self._segment_number = 0
        #: The highest segment sequence number this process has used.
        self._sequence = 0
        self._fd: int | None = None
        self._segment: Path | None = None
        self._written = 0
        #: Segments that are full (or whose directory vanished) but not yet sealed: their lock holds.
        self._detached: list[int] = []
        self._closed = False
        #: Bytes of all segments in the directory, as last counted plus our own appends since.
        self._used: int | None = None
        self.warnings = WarningThrottle()
        self.dropped_at_cap = 0
        self.corrupt = 0
        self._corrupt_seen: dict[str, int] = {}
        #: True when this process spooled something since it last looked for segments to replay.
        self.has_unreplayed = False

    # --- writing ---------------------------------------------------------------------------

    def store(self, messages: Sequence[Queued]) -> int:
        """Append ``messages`` with one buffered write, never an fsync; return how many were kept
        (the oldest first). A message counts as kept only once it is in a segment that a later
        process can find: if the directory was removed, the write goes again to a new segment in
        a new directory.

        Never raises for disk trouble: it logs (at most once a minute) and keeps what it could.
        """
        now = time.time()
        frames = [encode_record(message, now) for message in messages]
        with self._lock:
            frames = frames[: self._room_for(frames)]
            if not frames:
                return 0
            kept, error = self._append(frames)
            if kept:
                self.has_unreplayed = True
                if self._closed:
                    self._detach()  # no worker will seal it after shutdown: seal it below
        if error is not None:
            self.warnings.warn(
                "disk",
                "cannot write the spool in %s (%s): messages are dropped until it works again",
                self.directory,
                error,
            )
        if self._closed:
            self.seal_pending()
        return kept

    def _room_for(self, frames: list[bytes]) -> int:
        """How many of ``frames`` fit under the cap. The cap limits new writes only: what is
        already on disk is never dropped to make room."""
        if self._used is None:
            self._used = measure(self.directory)
        fitting = _frames_within(frames, self.max_bytes - self._used)
        if fitting < len(frames):
            self.dropped_at_cap += len(frames) - fitting
            self.warnings.warn(
                "cap", "the spool is full (max_spool_bytes=%d): newest message(s) dropped", self.max_bytes
            )
        return fitting

    def _append(self, frames: list[bytes]) -> tuple[int, OSError | None]:
        """Write ``frames`` to a segment that is still in the spool directory; return how many
        are there (fewer when the disk filled midway) and the error that stopped the rest."""
        data = b"".join(frames)
        error: OSError | None = None
        for _ in range(2):  # once more when the directory vanished under the first write
            try:
                if self._fd is not None and not self._reachable():
                    self._detach()
                if self._fd is None:
                    self._open_segment()
            except OSError as exc:
                return 0, exc
            assert self._fd is not None
            written, error = _write_fully(self._fd, data)
            # Checked after the write too: a removal that raced it left the data where no
            # process will ever look.
            if not self._reachable():
                self._detach()
                continue
            self._written += written
            if self._used is not None:  # else counted afresh, with this write, by the next store
                self._used += written
            if self._written >= self.segment_bytes:
                self._detach()
            # After a failed write the segment stays open (a new one per failure would litter a
            # full disk with empty files); a torn tail in it is skipped when it is read.
            return _frames_within(frames, written), error
        return 0, error or OSError(errno.ENOENT, "the spool directory was removed while it was written")

    def _reachable(self) -> bool:
        assert self._fd is not None and self._segment is not None
        return reachable(self._fd, self._segment)

    @property
    def directory(self) -> Path:
        """Where the spool is: the directory in use, else the first candidate that exists."""
        if self._directory is not None:
            return self._directory
        return next((candidate for candidate in self._candidates if candidate.is_dir()), self._candidates[0])

    def make_directory(self) -> Path:
        """The directory in use, made (with its parents) on first use: the first candidate that can be."""
        error: OSError | None = None
        for candidate in [self._directory] if self._directory else self._candidates:
            try:
                candidate.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                error = exc
                continue
            self._directory = candidate
            return candidate
        assert error is not None
        raise error

    def _open_segment(self) -> None:
        self._segment_number += 1
        self._fd, self._segment, self._sequence = open_segment(
            self.make_directory(), self._sequence, self._writer_token, self._segment_number, fcntl.LOCK_EX
        )
        self._written = 0

    def _detach(self) -> None:
        """Stop appending to the open segment; ``seal_pending`` makes it durable and replayable."""
        if self._fd is not None:
            self._detached.append(self._fd)
            self._fd = self._segment = None
            self._written = 0
        # Other processes write here too (or the directory went): count again before the next write.
        self._used = None

    def seal_pending(self) -> None:
        """fsync and close the segments ``store`` filled, releasing their locks so they can be
        replayed. The worker calls it on every turn (``store`` may run in the caller's thread,
        which must never wait for an fsync). Never raises: disk errors are logged once a minute."""
        with self._lock:
            pending, self._detached = self._detached, []
        for fd in pending:
            try:
                os.fsync(fd)
            except OSError as exc:
                self.warnings.warn("disk", "cannot make the spool durable in %s (%s)", self.directory, exc)
            finally:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def close(self) -> None:
        """Make everything this process spooled replayable and durable (fsync). Later stores
        (calls after shutdown) are sealed as they are written: no worker is left to do it."""
        with self._lock:
            self._closed = True
            self._detach()
        self.seal_pending()

    def after_fork_in_child(self) -> None:
        """The child must not append to its parent's segments: forget them without touching them
        (closing our copies of the descriptors leaves the parent's files and locks alone)."""
        self._lock = threading.Lock()
        for fd in [*self._detached, *([self._fd] if self._fd is not None else [])]:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fd = self._segment = None
        self._detached = []
        self._writer_token = os.urandom(4).hex()
        self._segment_number = 0
        self._used = None

    # --- replaying -------------------------------------------------------------------------

    def segments(self) -> list[Path]:
        """Every segment in the directory, oldest first (by sequence number, not by clock)."""
        try:
            names = [
                entry.name for entry in os.scandir(self.directory) if entry.name.endswith(SEGMENT_SUFFIX)
            ]
        except OSError:  # no directory (yet), or not one: nothing to replay
            return []
        return [self.directory / name for name in sorted(names, key=replay_order)]

    def claim(self) -> Iterator[SegmentReader]:
        """Lock and open, oldest first, each segment no other process (and no writer) holds.

        Everything this process wrote is sealed first (its open segment when it has data, and
        those ``store`` filled), so it can be replayed too.
        """
        with self._lock:
            self.has_unreplayed = False
            if self._written:
                self._detach()
        self.seal_pending()
        for path in self.segments():
            reader = SegmentReader.open(path, self.warnings)
            if reader is not None:
                self.count_corrupt(reader)
                yield reader

    def count_corrupt(self, reader: SegmentReader) -> None:
        """Count the damage a claimed segment shows, once: a segment claimed again (its replay
        was cut short, or its writer still appends) shows the same damage again."""
        if reader.corrupt:
            seen = self._corrupt_seen.get(reader.path.name, 0)
            self.corrupt += max(0, reader.corrupt - seen)
            self._corrupt_seen[reader.path.name] = max(seen, reader.corrupt)

    def forget_bytes(self, count: int) -> None:
        with self._lock:
            if self._used is not None:
                self._used = max(0, self._used - count)


def reachable(fd: int, path: Path) -> bool:
    """Whether the file open as ``fd`` is still at ``path``, where later processes look for it:
    not unlinked, nor its directory removed, moved or replaced."""
    try:
        opened = os.fstat(fd)
        named = os.stat(path)
    except OSError:
        return False
    return opened.st_nlink > 0 and (opened.st_dev, opened.st_ino) == (named.st_dev, named.st_ino)


def measure(directory: Path) -> int:
    """Bytes of all segments in ``directory`` (0 when there is none, or no directory)."""
    total = 0
    with contextlib.suppress(OSError):  # no directory (yet): nothing in it
        for entry in os.scandir(directory):
            if entry.name.endswith(SEGMENT_SUFFIX):
                with contextlib.suppress(FileNotFoundError):
                    total += entry.stat().st_size
    return total


def _write_fully(fd: int, data: bytes) -> tuple[int, OSError | None]:
    """Write all of ``data``; return how much was written and the error that stopped it."""
    view = memoryview(data)
    written = 0
    while written < len(data):
        try:
            written += os.write(fd, view[written:])
        except OSError as exc:
            return written, exc
    return written, None


def _frames_within(frames: list[bytes], size: int) -> int:
    """How many of ``frames``, one after the other, fit entirely in ``size`` bytes."""
    count = 0
    for frame in frames:
        size -= len(frame)
        if size < 0:
            break
        count += 1
    return count


def _highest_sequence(directory: Path) -> int:
    with contextlib.suppress(OSError):
        return max((sequence_of(entry.name) or 0 for entry in os.scandir(directory)), default=0)
    return 0


def open_segment(directory: Path, floor: int, writer: str, number: int, lock: int) -> tuple[int, Path, int]:
    """Create, lock (``lock``: ``LOCK_EX`` for a spilling writer, ``LOCK_SH`` for a relay writer)
    and verify a new segment named with the next sequence number above ``floor`` and the
    directory's highest; return its descriptor, path and sequence number."""
    sequence = max(floor, _highest_sequence(directory))
    for _ in range(_NAME_ATTEMPTS):
        sequence += 1
        path = directory / segment_name(sequence, writer, number)
        try:
            # O_EXCL: never take over an existing segment, whoever made it. O_RDWR: a relay writer
            # reads back what it appended after the directory was removed, to write it again.
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            continue
        # A replayer may lock the new, empty file before we do and delete it (nothing in it
        # is unfinished): then take the next name.
        try:
            fcntl.flock(fd, lock | fcntl.LOCK_NB)
            if reachable(fd, path):
                return fd, path, sequence
        except BlockingIOError:
            pass
        except OSError:
            os.close(fd)
            raise
        os.close(fd)
    raise OSError(errno.EEXIST, f"no free segment name in {directory}")


class SegmentReader:
    """A segment locked for replay: its records after the last valid ack, then ack or delete it.
    Neither ``ack`` nor ``delete`` raises: on a full or read-only disk the replay goes on."""

    def __init__(
        self,
        path: Path,
        fd: int,
        records: list[Record],
        corrupt: int,
        size: int,
        warnings: WarningThrottle = _shared_warnings,
    ) -> None:
        self.path = path
        self._fd = fd
        self.records = records
        #: Damaged places after the ack; a damaged ack counts as one.
        self.corrupt = corrupt
        self.size = size
        self._warnings = warnings

    @classmethod
    def open(cls, path: Path, warnings: WarningThrottle = _shared_warnings) -> SegmentReader | None:
        opened = read_locked(path, fcntl.LOCK_EX)
        if opened is None:
            return None
        fd, data = opened
        records, corrupt = unacknowledged(data, read_ack(path))
        return cls(path, fd, records, corrupt, len(data), warnings)

    def ack(self, end: int) -> bool:
        """Record that every record up to offset ``end`` is final; False when it cannot be written.

        A full disk cannot take a new ack file, so the ack is then overwritten in place (same
        size: no new blocks). When that fails too, the failure is logged at most once a minute and
        the replay may go on: the records are final in this process, and a later replay resends
        them from the last ack that was written (duplicates the idempotency keys absorb).
        """
        ack = ack_path(self.path)
        content = encode_ack(end)
        try:
            replace_file(ack, content)
            return True
        except OSError as exc:
            error = exc
        with contextlib.suppress(OSError):
            _overwrite_file(ack, content)
            return True
        self._warnings.warn("ack", "cannot record replay progress in %s (%s)", ack, error)
        return False

    def ack_records(self, count: int) -> bool:
        """The first ``count`` records are final: :meth:`ack` up to the end of the last of them."""
        return self.ack(self.records[count - 1].end)

    def delete(self) -> bool:
        """Every record is final: remove the segment (while still holding its lock), then its
        ack; True when it is gone. Never raises: a failure is logged once a minute."""
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(ack_path(self.path))
            return True
        except OSError as exc:
            self._warnings.warn("delete", "cannot delete the replayed segment %s (%s)", self.path, exc)
            return False
        finally:
            self.release()

    def release(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1


def read_locked(path: Path, lock: int, start: int = 0) -> tuple[int, bytes] | None:
    """Open ``path``, take ``lock`` (``LOCK_EX`` or ``LOCK_SH``) on it without waiting and read it
    from ``start`` to its end: the descriptor, which holds the lock, and the bytes. None when it is
    gone or locked against us."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, lock | fcntl.LOCK_NB)
        # Another replayer may have finished and deleted it between our open and our lock.
        if os.fstat(fd).st_ino != os.stat(path).st_ino:
            raise FileNotFoundError(path)
        with os.fdopen(os.dup(fd), "rb") as file:
            file.seek(start)
            return fd, file.read()
    except OSError:
        os.close(fd)
        return None


def ack_path(segment: Path) -> Path:
    return segment.with_name(segment.name + ".ack")


def read_ack(segment: Path) -> int | None:
    try:
        with open(ack_path(segment), "rb") as file:
            return decode_ack(file.read(64))
    except OSError:  # none yet (or unreadable): nothing acknowledged
        return 0


def replace_file(path: Path, content: bytes) -> None:
    """Write ``path`` atomically: a new file renamed over the old one."""
    temporary = path.with_name(path.name + ".new")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            _, error = _write_fully(fd, content)
        finally:
            os.close(fd)
        if error is not None:
            raise error
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _overwrite_file(path: Path, content: bytes) -> None:
    """Overwrite an existing file of (about) the same size in place: needs no new blocks."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        if os.pwrite(fd, content, 0) != len(content):
            raise OSError(errno.ENOSPC, "short write")
        os.ftruncate(fd, len(content))
    finally:
        os.close(fd)


# --- what the command line shows --------------------------------------------------------------


class SpoolSummary(Value):
    """What a spool directory holds (``flameup-analytics spool inspect``)."""

    __slots__ = ("directory", "segments", "messages", "bytes", "corrupt", "oldest", "newest", "locked")
    directory: Path
    segments: int
    messages: int
    bytes: int
    corrupt: int
    oldest: float | None
    newest: float | None
    #: Segments locked by a live process (being written or replayed), not read.
    locked: int

    def __init__(
        self,
        directory: Path,
        segments: int,
        messages: int,
        bytes: int,
        corrupt: int,
        oldest: float | None,
        newest: float | None,
        locked: int,
    ) -> None:
        self._set(directory, segments, messages, bytes, corrupt, oldest, newest, locked)


def summarize(directory: Path) -> SpoolSummary:
    """Count what a spool directory holds, without changing it."""
    segments = DiskSpool(directory).segments()
    messages = corrupt = total = locked = 0
    oldest: float | None = None
    newest: float | None = None
    for path in segments:
        try:
            total += path.stat().st_size
        except FileNotFoundError:
            continue
        reader = SegmentReader.open(path)
        if reader is None:
            locked += 1
            continue
        try:
            messages += len(reader.records)
            corrupt += reader.corrupt
            for record in reader.records:
                oldest = record.created if oldest is None else min(oldest, record.created)
                newest = record.created if newest is None else max(newest, record.created)
        finally:
            reader.release()
    return SpoolSummary(directory, len(segments), messages, total, corrupt, oldest, newest, locked)


def purge(directory: Path) -> int:
    """Delete every segment not locked by a live process; return how many were deleted."""
    deleted = 0
    for path in DiskSpool(directory).segments():
        reader = SegmentReader.open(path)
        if reader is not None and reader.delete():
            deleted += 1
    return deleted
