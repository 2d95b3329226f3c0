"""The disk spool: where messages go that cannot be held in memory or delivered in time.

Layout of a spool directory (see docs/spool.md for the guarantees):

- ``<created_ns>-<writer>-<n>.seg``: a segment, only ever appended to, by the one process (the
  "writer", a random token per process) that created it. It holds records:
  ``MAGIC (2 bytes) | payload length (u32) | crc32 of payload (u32) | payload (msgpack)``.
  A torn write or garbage fails the length or CRC check; the reader then skips ahead to the next
  MAGIC, so one bad record never hides the good ones after it.
- ``<segment>.ack``: how far into the segment every record is final, so a replay that was cut
  short resumes there instead of sending everything again.

A writer holds an exclusive ``flock`` on its open segment; a replayer takes the same lock on a
segment before reading it. So a segment is replayed by one process at a time, and never while its
writer still appends to it. A segment is deleted once every record in it is final.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import secrets
import struct
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import msgpack

try:
    import fcntl
except ImportError:  # Windows: no flock, so no spool shared safely between processes
    fcntl = None  # type: ignore[assignment]

from .message import Message, Queued, key_of

#: Whether this platform has what the spool needs (POSIX file locks).
AVAILABLE = fcntl is not None

logger = logging.getLogger("flameup_analytics")

MAGIC = b"\xf1\x5e"
_HEADER = struct.Struct(">2sII")
#: Largest payload a reader accepts; anything larger is a corrupt length field.
MAX_RECORD_BYTES = 16 * 1024 * 1024
SEGMENT_SUFFIX = ".seg"
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_SEGMENT_BYTES = 1024 * 1024
#: Disk trouble is logged at most this often.
WARNING_INTERVAL = 60.0


class Spool(Protocol):
    def store(self, messages: Sequence[Queued]) -> int:
        """Keep what it can of ``messages``, oldest first; return how many it kept."""
        ...


class NoSpool:
    """``spool_dir=False``: keeps nothing, so what is handed on is dropped and counted."""

    def store(self, messages: Sequence[Queued]) -> int:
        return 0


# --- the record format ------------------------------------------------------------------------


def encode_record(message: Queued, created: float) -> bytes:
    kind, user_id, body, _ = message
    payload: bytes = msgpack.packb([kind, user_id, key_of(message), body, created], use_bin_type=True)
    return _HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


@dataclass(frozen=True)
class Record:
    message: Message
    #: When the message was spooled (``time.time()``).
    created: float
    #: The offset just past this record: an ack up to here makes it final.
    end: int


def decode_records(data: bytes, start: int = 0) -> tuple[list[Record], int]:
    """Every intact record of ``data`` from ``start`` on, and how many damaged places were skipped."""
    records: list[Record] = []
    corrupt = 0
    offset = start
    size = len(data)
    damaged = False  # one damaged stretch counts once, however many false starts it holds
    while offset < size:
        record = _decode_at(data, offset)
        if record is not None:
            records.append(record)
            offset = record.end
            damaged = False
            continue
        if not damaged:
            corrupt += 1
            damaged = True
        found = data.find(MAGIC, offset + 1)
        if found < 0:
            break
        offset = found
    return records, corrupt


def _decode_at(data: bytes, offset: int) -> Record | None:
    if offset + _HEADER.size > len(data):
        return None
    magic, length, crc = _HEADER.unpack_from(data, offset)
    start = offset + _HEADER.size
    end = start + length
    if magic != MAGIC or length > MAX_RECORD_BYTES or end > len(data):
        return None
    payload = data[start:end]
    if zlib.crc32(payload) != crc:
        return None
    try:
        kind, user_id, key, body, created = msgpack.unpackb(payload, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException):
        return None
    if kind not in ("track", "identify") or not isinstance(body, bytes):
        return None
    return Record(Message(kind, str(user_id), body, str(key)), float(created), end)


# --- where the spool lives --------------------------------------------------------------------


def default_directories(host: str, workspace_id: str | None) -> tuple[Path, Path]:
    """Where a client's spool goes by default, in order of preference: ``$XDG_CACHE_HOME`` (or
    ``~/.cache``)/flameup-analytics/<hash of host and workspace>, then the same under the system
    temp directory, for where home is not writable (AWS Lambda). Nothing is created here."""
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
    directory. ``store`` may be called from any thread; replay runs on the worker thread."""

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
        self._writer_token = secrets.token_hex(4)
        self._segment_number = 0
        self._fd: int | None = None
        self._closed = False
        self._written = 0
        #: Bytes of all segments in the directory, as last counted plus our own appends since.
        self._used: int | None = None
        self._last_warning = {"cap": -WARNING_INTERVAL, "disk": -WARNING_INTERVAL}
        self.dropped_at_cap = 0
        self.corrupt = 0
        self._corrupt_seen: dict[str, int] = {}
        #: True when this process spooled something since it last looked for segments to replay.
        self.has_unreplayed = False

    # --- writing ---------------------------------------------------------------------------

    def store(self, messages: Sequence[Queued]) -> int:
        """Append ``messages`` with one write; return how many were kept (the oldest first).

        Never raises for disk trouble: it logs (at most once a minute) and keeps what it could.
        """
        now = time.time()
        frames = [encode_record(message, now) for message in messages]
        with self._lock:
            try:
                if self._used is None:
                    self._used = self._measure()
                room = self.max_bytes - self._used
                kept = 0
                size = 0
                for frame in frames:
                    if size + len(frame) > room:
                        break
                    size += len(frame)
                    kept += 1
                if kept < len(frames):
                    self.dropped_at_cap += len(frames) - kept
                    self._warn(
                        "cap",
                        "the spool is full (max_spool_bytes=%d): newest message(s) dropped",
                        self.max_bytes,
                    )
                if kept:
                    self._append(b"".join(frames[:kept]))
                    self.has_unreplayed = True
                    if self._closed:
                        self._seal()  # no shutdown will come to seal it: make it durable now
                return kept
            except OSError as exc:
                self._abandon_segment()
                self._warn(
                    "disk",
                    "cannot write the spool in %s (%s): messages are dropped until it works again",
                    self.directory,
                    exc,
                )
                return 0

    def _append(self, data: bytes) -> None:
        if self._fd is None:
            self._open_segment()
        assert self._fd is not None
        written = os.write(self._fd, data)
        if written != len(data):
            raise OSError(errno.ENOSPC, "short write to the spool")
        self._written += written
        assert self._used is not None
        self._used += written
        if self._written >= self.segment_bytes:
            self._seal()

    @property
    def directory(self) -> Path:
        """Where the spool is: the directory in use, else the first candidate that exists."""
        if self._directory is not None:
            return self._directory
        return next((candidate for candidate in self._candidates if candidate.is_dir()), self._candidates[0])

    def _make_directory(self) -> Path:
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
        directory = self._make_directory()
        self._segment_number += 1
        name = f"{time.time_ns():020d}-{self._writer_token}-{self._segment_number:06d}{SEGMENT_SUFFIX}"
        final = directory / name
        temporary = final.with_name(name + ".new")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            # Locked before it gets its real name, so no replayer ever sees it unlocked.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(temporary, final)
        except OSError:
            os.close(fd)
            raise
        self._fd, self._written = fd, 0

    def _seal(self) -> None:
        """Finish the open segment: fsync, unlock, close. It becomes replayable."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        # Other processes write here too: count the directory again before the next segment.
        self._used = None
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _abandon_segment(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        """Make everything this process spooled replayable and durable (fsync). Later stores
        (calls after shutdown) are sealed as they are written."""
        with self._lock:
            self._closed = True
            try:
                self._seal()
            except OSError as exc:
                self._warn("disk", "cannot finish the spool segment in %s (%s)", self.directory, exc)

    def after_fork_in_child(self) -> None:
        """The child must not append to its parent's segment: forget it without touching it
        (closing our copy of the descriptor leaves the parent's file and lock alone)."""
        self._lock = threading.Lock()
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = None
        self._writer_token = secrets.token_hex(4)
        self._segment_number = 0
        self._used = None

    def _measure(self) -> int:
        total = 0
        with contextlib.suppress(OSError):  # no directory (yet): nothing in it
            for entry in os.scandir(self.directory):
                if entry.name.endswith(SEGMENT_SUFFIX):
                    with contextlib.suppress(FileNotFoundError):
                        total += entry.stat().st_size
        return total

    def _warn(self, kind: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_warning[kind] >= WARNING_INTERVAL:
            self._last_warning[kind] = now
            logger.warning(message, *args)

    # --- replaying -------------------------------------------------------------------------

    def segments(self) -> list[Path]:
        """Every segment in the directory, oldest first."""
        try:
            names = sorted(
                entry.name for entry in os.scandir(self.directory) if entry.name.endswith(SEGMENT_SUFFIX)
            )
        except OSError:  # no directory (yet), or not one: nothing to replay
            return []
        return [self.directory / name for name in names]

    def claim(self) -> Iterator[SegmentReader]:
        """Lock and open, oldest first, each segment no other process (and no writer) holds.

        Our own open segment is sealed first when it has data, so it can be replayed too.
        """
        with self._lock:
            self.has_unreplayed = False
            if self._fd is not None and self._written:
                try:
                    self._seal()
                except OSError as exc:
                    self._warn("disk", "cannot finish the spool segment in %s (%s)", self.directory, exc)
        for path in self.segments():
            reader = SegmentReader.open(path)
            if reader is not None:
                if reader.corrupt:
                    # A segment claimed again (its replay was cut short) shows the same damage again.
                    seen = self._corrupt_seen.get(path.name, 0)
                    self.corrupt += max(0, reader.corrupt - seen)
                    self._corrupt_seen[path.name] = max(seen, reader.corrupt)
                yield reader

    def forget_bytes(self, count: int) -> None:
        with self._lock:
            if self._used is not None:
                self._used = max(0, self._used - count)


class SegmentReader:
    """A segment locked for replay: its records after the last ack, then ack or delete it."""

    def __init__(self, path: Path, fd: int, records: list[Record], corrupt: int, size: int) -> None:
        self.path = path
        self._fd = fd
        self.records = records
        self.corrupt = corrupt
        self.size = size

    @classmethod
    def open(cls, path: Path) -> SegmentReader | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Another replayer may have finished and deleted it between our open and our lock.
            if os.fstat(fd).st_ino != os.stat(path).st_ino:
                raise FileNotFoundError(path)
            with os.fdopen(os.dup(fd), "rb") as file:
                data = file.read()
            records, corrupt = decode_records(data, _read_ack(path))
        except OSError:
            os.close(fd)
            return None
        return cls(path, fd, records, corrupt, len(data))

    def ack(self, end: int) -> None:
        """Every record up to offset ``end`` is final."""
        ack = _ack_path(self.path)
        temporary = ack.with_name(ack.name + ".new")
        temporary.write_text(str(end))
        os.replace(temporary, ack)

    def delete(self) -> None:
        """Every record is final: remove the segment (while still holding its lock)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_ack_path(self.path))
        self.release()

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _ack_path(segment: Path) -> Path:
    return segment.with_name(segment.name + ".ack")


def _read_ack(segment: Path) -> int:
    try:
        return max(0, int(_ack_path(segment).read_text().strip() or 0))
    except (OSError, ValueError):
        return 0


# --- what the command line shows --------------------------------------------------------------


@dataclass(frozen=True)
class SpoolSummary:
    directory: Path
    segments: int
    messages: int
    bytes: int
    corrupt: int
    oldest: float | None
    newest: float | None
    #: Segments locked by a live process (being written or replayed), not read.
    locked: int


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
        if reader is not None:
            reader.delete()
            deleted += 1
    return deleted
