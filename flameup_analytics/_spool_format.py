"""Internal. The bytes and names of a spool directory: records, acks and segment names (no I/O).

- A record is ``MAGIC (2 bytes) | payload length (u32) | crc32 of payload (u32) | payload``, the
  payload being msgpack ``[kind, user id, key, body, spooled-at]``. A torn write or garbage fails
  the length or CRC check; the reader then skips ahead to the next MAGIC, so one bad record never
  hides the good ones after it.
- An ack is the offset up to which every record of a segment is final, as a fixed-width decimal
  (so it can be overwritten in place, without new blocks, when the disk is full). It is only
  believed when it is 0 or the end of an intact record.
- A segment is named ``<sequence>-<writer>-<n>.seg``: the sequence orders segments in a directory
  without the wall clock. The previous release named them ``<created ns>-<writer>-<n>.seg``; those
  are older than any sequence-named segment and replay first.
"""

from __future__ import annotations

import functools
import re
import struct
import zlib
from collections.abc import Callable
from typing import Any, NamedTuple

from .message import Message, Queued, key_of

MAGIC = b"\xf1\x5e"
_HEADER = struct.Struct(">2sII")
#: Largest payload a reader accepts; anything larger is a corrupt length field.
MAX_RECORD_BYTES = 16 * 1024 * 1024
SEGMENT_SUFFIX = ".seg"
_SEQUENCE_WIDTH = 12
_SEQUENCED = re.compile(rf"(\d{{{_SEQUENCE_WIDTH}}})-")
_ACK_WIDTH = 20


@functools.cache
def _msgpack() -> Any:
    """msgpack, imported when a record is first written or read: most processes never spool."""
    import msgpack

    return msgpack


#: One packer for every thread, made by the first record: a third of ``packb``'s cost (relay mode
#: encodes in the caller's thread). Safe under the GIL: packing str, bytes and float runs no
#: Python code, so no other thread can enter it midway.
_pack: Callable[[object], bytes] | None = None


def encode_record(message: Queued, created: float) -> bytes:
    global _pack
    if _pack is None:
        _pack = _msgpack().Packer(use_bin_type=True).pack
    kind, user_id, body, _ = message
    payload = _pack([kind, user_id, key_of(message), body, created])
    return _HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


class Record(NamedTuple):
    """One record read back (a tuple: thousands are decoded at once when a relay reads a segment)."""

    message: Message
    #: When the message was spooled (``time.time()``; shown by ``spool inspect``, never used to order).
    created: float
    #: The offset just past this record: an ack up to here makes it final.
    end: int


def decode_records(data: bytes, start: int = 0) -> tuple[list[Record], int]:
    """Every intact record of ``data`` from ``start`` on, and how many damaged places were skipped."""
    records, damage = _scan(data, start)
    return records, len(damage)


def unacknowledged(data: bytes, ack: int | None) -> tuple[list[Record], int]:
    """The records of a segment after its ack, and the damaged places among them.

    ``ack`` (None: the ack file did not hold a number) is believed only when it is 0 or the end of
    an intact record; any other value is one more damaged place and acknowledges nothing, so the
    whole segment is sent again (the idempotency keys make the duplicates harmless).
    """
    records, damage, believed = _after_ack(data, ack)
    return records, len(damage) + (0 if believed else 1)


def appended(
    data: bytes, ack: int | None, *, trusted: bool = False, base: int = 0
) -> tuple[list[Record], int]:
    """The records of a segment whose writer may still append to it, after ``ack``, and the
    damaged places among them, as :func:`unacknowledged` says, except that a damaged stretch after
    the last intact record is not counted: it may be a record being written (read it next time).

    ``trusted``: ``ack`` was written by the caller itself, so reading starts there, without
    checking it from the segment's start (a segment read again and again stays cheap). ``base``:
    where ``data`` begins in the segment (what the caller read is what follows its last read);
    the records' ends are offsets in the segment."""
    if trusted and ack is not None:
        records, damage = _scan(data, ack, base)
        believed = True
    else:
        records, damage, believed = _after_ack(data, ack)
    last = records[-1].end if records else -1
    return records, sum(1 for at in damage if at < last) + (0 if believed else 1)


def _after_ack(data: bytes, ack: int | None) -> tuple[list[Record], list[int], bool]:
    """The records after ``ack``, where the damaged stretches among them begin, and whether the
    ack was believed (else everything is read)."""
    if ack is not None and _believed(data, ack):
        records, damage = _scan(data, ack)
        return records, damage, True
    records, damage = _scan(data, 0)
    return records, damage, False


def _believed(data: bytes, ack: int) -> bool:
    """Whether ``ack`` is 0 or where an intact record of the segment ``data`` ends, walking it
    from its start as :func:`_scan` does. The records before an ack are final: their headers and
    CRCs are checked, they are not decoded (a quarter of the cost: a long segment acked near its
    end is read, or deleted, without stalling the replay)."""
    if ack == 0:
        return True
    offset = 0
    while offset < ack:
        end = _intact_end(data, offset)
        if end < 0:
            offset = data.find(MAGIC, offset + 1)
            if offset < 0:
                return False
        elif end == ack:
            return True
        else:
            offset = end
    return False


def backlog_of(data: bytes, start: int) -> tuple[int, float | None]:
    """How many records follow ``start``, counted by their headers alone (cheap enough for a status
    every second; a damaged stretch is skipped to the next MAGIC, nothing is checked), and when the
    first intact one of them was spooled."""
    count = 0
    offset = start
    size = len(data)
    while offset + _HEADER.size <= size:
        magic, length, _ = _HEADER.unpack_from(data, offset)
        end = offset + _HEADER.size + length
        if magic == MAGIC and length <= MAX_RECORD_BYTES and end <= size:
            count += 1
            offset = end
            continue
        found = data.find(MAGIC, offset + 1)
        if found < 0:
            break
        offset = found
    first = _decode_at(data, start) if count else None
    return count, None if first is None else first.created


def _scan(data: bytes, start: int, base: int = 0) -> tuple[list[Record], list[int]]:
    """The intact records from ``start`` on, and where each damaged stretch begins (``base``
    added to the offsets of both: where ``data`` begins in its segment)."""
    records: list[Record] = []
    damage: list[int] = []
    offset = start
    size = len(data)
    damaged = False  # one damaged stretch counts once, however many false starts it holds
    while offset < size:
        record = _decode_at(data, offset, base)
        if record is not None:
            records.append(record)
            offset = record.end - base
            damaged = False
            continue
        if not damaged:
            damage.append(offset + base)
            damaged = True
        found = data.find(MAGIC, offset + 1)
        if found < 0:
            break
        offset = found
    return records, damage


def _intact_end(data: bytes, offset: int) -> int:
    """Where the record at ``offset`` ends when its header and CRC are intact, else -1."""
    if offset + _HEADER.size > len(data):
        return -1
    magic, length, crc = _HEADER.unpack_from(data, offset)
    end = offset + _HEADER.size + length
    if magic != MAGIC or length > MAX_RECORD_BYTES or end > len(data):
        return -1
    return end if zlib.crc32(data[end - length : end]) == crc else -1


def _decode_at(data: bytes, offset: int, base: int = 0) -> Record | None:
    end = _intact_end(data, offset)
    if end < 0:
        return None
    msgpack = _msgpack()
    try:
        kind, user_id, key, body, created = msgpack.unpackb(data[offset + _HEADER.size : end], raw=False)
    except (ValueError, TypeError, msgpack.UnpackException):
        return None
    if kind not in ("track", "identify") or not isinstance(body, bytes):
        return None
    return Record(Message(kind, str(user_id), body, str(key)), float(created), base + end)


def encode_ack(end: int) -> bytes:
    return b"%0*d\n" % (_ACK_WIDTH, end)


def decode_ack(text: bytes) -> int | None:
    """The offset an ack file holds; None when it holds anything but a plain decimal number."""
    digits = text.strip()
    return int(digits) if digits.isdigit() else None


def segment_name(sequence: int, writer: str, number: int) -> str:
    return f"{sequence:0{_SEQUENCE_WIDTH}d}-{writer}-{number:06d}{SEGMENT_SUFFIX}"


def sequence_of(name: str) -> int | None:
    """The sequence number of a segment named by this release; None for any other name."""
    match = _SEQUENCED.match(name)
    return int(match.group(1)) if match else None


def replay_order(name: str) -> tuple[int, int, str]:
    """Sort key of segment names, oldest first. Names of the previous release (and any other
    ``.seg`` name) come first, in name order (their fixed-width creation time); then this
    release's, by sequence."""
    sequence = sequence_of(name)
    return (0, 0, name) if sequence is None else (1, sequence, name)
