"""The spool's record format, names and acks, and its bookkeeping with real files.

Faults (removed directory, full disk, kills, clock steps) are in test_spool_faults.py; the model of
interleaved writes, replays and faults in test_spool_model.py.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from flameup_analytics._spool_format import (
    SEGMENT_SUFFIX,
    decode_ack,
    decode_records,
    encode_ack,
    encode_record,
    replay_order,
    segment_name,
    unacknowledged,
)
from flameup_analytics.message import Message
from flameup_analytics.spool import DiskSpool, SegmentReader, default_directories, purge, summarize


def message(n: int, user: str = "user") -> Message:
    return Message("track", user, b'{"n":%d}' % n, f"key-{n}")


def keys(messages: list[Message]) -> list[str]:
    return [m.key for m in messages]


def replay_all(where: Path | DiskSpool) -> list[Message]:
    """Replay every segment to the end, deleting each, as the worker does when all goes well
    (with a new spool on a directory: as another process would)."""
    spool = DiskSpool(where) if isinstance(where, Path) else where
    replayed: list[Message] = []
    for reader in spool.claim():
        replayed += [record.message for record in reader.records]
        reader.delete()
    return replayed


def kill(spool: DiskSpool) -> None:
    """What SIGKILL does to a spool's process: its descriptors close (locks go), nothing is sealed."""
    for fd in [*spool._detached, *([spool._fd] if spool._fd is not None else [])]:
        os.close(fd)
    spool._fd, spool._detached = None, []


def test_records_round_trip() -> None:
    original = Message("identify", "ユーザー", b'{"userId":"x","traits":{}}', "abc-1")
    records, corrupt = decode_records(encode_record(original, 1700000000.5))
    assert corrupt == 0
    (record,) = records
    assert (record.message.kind, record.message.user_id, record.message.body, record.message.key) == (
        "identify",
        "ユーザー",
        original.body,
        "abc-1",
    )
    assert record.created == 1700000000.5


def test_a_torn_tail_is_skipped_and_counted() -> None:
    data = encode_record(message(1), 0) + encode_record(message(2), 0)
    torn = data + encode_record(message(3), 0)[:-5]
    records, corrupt = decode_records(torn)
    assert [r.message.key for r in records] == ["key-1", "key-2"]
    assert corrupt == 1


@pytest.mark.parametrize("position", [0, 3, 9, 12, 20])
def test_a_bit_flip_loses_only_the_record_it_hits(position: int) -> None:
    frames = [encode_record(message(n), 0) for n in range(3)]
    data = bytearray(b"".join(frames))
    data[len(frames[0]) + position] ^= 0x10  # inside the second record
    records, corrupt = decode_records(bytes(data))
    assert [r.message.key for r in records] == ["key-0", "key-2"]
    assert corrupt == 1


def test_garbage_yields_nothing_and_one_corrupt_count() -> None:
    records, corrupt = decode_records(os.urandom(4096).replace(b"\xf1\x5e", b"xx"))
    assert records == [] and corrupt == 1


def test_store_writes_segments_that_replay_in_order(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path, segment_bytes=200)
    assert spool.store([message(n) for n in range(10)]) == 10
    assert spool.store([message(n) for n in range(10, 20)]) == 10
    spool.close()
    assert len(spool.segments()) >= 2  # it rotated
    assert keys(replay_all(tmp_path)) == [f"key-{n}" for n in range(20)]
    assert spool.segments() == []


def test_a_segment_being_written_is_not_replayed_by_another_process(tmp_path: Path) -> None:
    writer = DiskSpool(tmp_path)
    writer.store([message(1)])
    (segment,) = writer.segments()
    assert SegmentReader.open(segment) is None  # the writer's lock holds
    writer.close()
    reader = SegmentReader.open(segment)
    assert reader is not None and keys([r.message for r in reader.records]) == ["key-1"]
    assert SegmentReader.open(segment) is None  # and now the replayer's lock holds
    reader.release()


def test_a_deleted_segment_is_not_replayed_by_a_late_opener(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path)
    spool.store([message(1)])
    spool.close()
    (segment,) = spool.segments()
    first = SegmentReader.open(segment)
    assert first is not None
    late_fd = os.open(segment, os.O_RDONLY)  # opened before the delete, locked after it
    first.delete()
    os.close(late_fd)
    assert SegmentReader.open(segment) is None


def test_acks_make_a_resumed_replay_start_where_it_stopped(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path)
    spool.store([message(n) for n in range(6)])
    spool.close()
    (segment,) = spool.segments()
    reader = SegmentReader.open(segment)
    assert reader is not None
    reader.ack(reader.records[2].end)  # the first three are final
    reader.release()  # the process stops here
    assert keys(replay_all(tmp_path)) == ["key-3", "key-4", "key-5"]


def test_damage_is_counted_once_though_a_segment_is_claimed_again(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path)
    spool.store([message(n) for n in range(4)])
    spool.close()
    with open(spool.segments()[0], "ab") as segment:
        segment.write(b"\xf1\x5e torn")
    for _ in range(3):  # three replays, each cut short before the end
        (reader,) = spool.claim()
        reader.release()
    assert spool.corrupt == 1


def test_the_cap_drops_the_newest(tmp_path: Path) -> None:
    frame = len(encode_record(message(0), 1.5))  # store() stamps a float time, as here
    spool = DiskSpool(tmp_path, max_bytes=frame * 3)
    assert spool.store([message(n) for n in range(5)]) == 3
    assert spool.store([message(9)]) == 0
    assert spool.dropped_at_cap == 3
    spool.close()
    assert keys(replay_all(tmp_path)) == ["key-0", "key-1", "key-2"]


def test_disk_errors_never_raise_and_spilling_resumes_when_they_clear(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the spool directory should be")
    spool = DiskSpool(blocker / "spool")
    assert spool.store([message(1)]) == 0
    blocker.unlink()
    assert spool.store([message(2)]) == 1
    spool.close()
    assert keys(replay_all(blocker / "spool")) == ["key-2"]


def test_foreign_files_are_left_alone_and_garbage_segments_do_not_stop_replay(tmp_path: Path) -> None:
    (tmp_path / "README.txt").write_text("not ours")
    (tmp_path / f"00000000000000000001-garbage-000001{SEGMENT_SUFFIX}").write_bytes(os.urandom(300))
    spool = DiskSpool(tmp_path)
    spool.store([message(7)])
    spool.close()
    assert keys(replay_all(tmp_path)) == ["key-7"]
    assert spool.segments() == []
    assert (tmp_path / "README.txt").exists()


def test_summarize_and_purge(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path)
    spool.store([message(n) for n in range(4)])
    spool.close()
    with open(spool.segments()[0], "ab") as segment:
        segment.write(b"\xf1\x5e torn")
    summary = summarize(tmp_path)
    assert (summary.segments, summary.messages, summary.corrupt, summary.locked) == (1, 4, 1, 0)
    assert summary.oldest is not None and summary.oldest == summary.newest
    assert purge(tmp_path) == 1
    assert summarize(tmp_path).messages == 0


# --- acks and names ---------------------------------------------------------------------------


def test_an_ack_is_believed_only_at_the_end_of_an_intact_record() -> None:
    data = b"".join(encode_record(message(n), 0) for n in range(3))
    ends = [record.end for record in decode_records(data)[0]]
    assert unacknowledged(data, 0) == (decode_records(data)[0], 0)
    records, corrupt = unacknowledged(data, ends[0])
    assert (keys([r.message for r in records]), corrupt) == (["key-1", "key-2"], 0)
    for bad in (ends[0] + 1, len(data) + 1000, None):
        records, corrupt = unacknowledged(data, bad)
        assert (len(records), corrupt) == (3, 1), bad


def test_damage_before_the_ack_is_not_counted_again() -> None:
    first, second = encode_record(message(1), 0), encode_record(message(2), 0)
    data = b"\xf1\x5e torn" + first + second
    assert unacknowledged(data, 0)[1] == 1
    assert unacknowledged(data, len(b"\xf1\x5e torn" + first)) == (decode_records(data)[0][1:], 0)


def test_acks_have_a_fixed_width_and_older_acks_still_read() -> None:
    assert len(encode_ack(7)) == len(encode_ack(1_000_000)) == 21
    assert decode_ack(encode_ack(1234)) == 1234
    assert decode_ack(b"1234") == 1234  # as the previous release wrote them
    for damaged in (b"", b"-5", b"12ab", b"\x00\x00"):
        assert decode_ack(damaged) is None


def test_segments_replay_by_sequence_after_those_of_the_previous_release() -> None:
    names = [
        segment_name(10, "aaaa", 2),
        "17000000000000000000-bbbb-000001.seg",  # the previous release: created ns
        segment_name(2, "cccc", 1),
        "0000-garbage.seg",
        "16000000000000000000-dddd-000001.seg",
    ]
    assert sorted(names, key=replay_order) == [
        "0000-garbage.seg",
        "16000000000000000000-dddd-000001.seg",
        "17000000000000000000-bbbb-000001.seg",
        segment_name(2, "cccc", 1),
        segment_name(10, "aaaa", 2),
    ]


# --- promises of docs/spool.md ----------------------------------------------------------------


def test_summarize_reports_locked_segments_and_purge_leaves_them(tmp_path: Path) -> None:
    finished = DiskSpool(tmp_path)
    finished.store([message(1)])
    finished.close()
    live = DiskSpool(tmp_path)  # another process, still appending to its segment
    live.store([message(2)])
    summary = summarize(tmp_path)
    assert (summary.segments, summary.messages, summary.locked) == (2, 1, 1)
    assert purge(tmp_path) == 1
    assert len(live.segments()) == 1
    live.close()
    assert keys(replay_all(tmp_path)) == ["key-2"]


def test_different_hosts_or_workspaces_get_different_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = default_directories("https://api.flameup.com", "ws_a")
    assert default_directories("https://api.flameup.com", "ws_a") == first
    others = [
        default_directories("https://api.flameup.com", "ws_b"),
        default_directories("https://eu.api.flameup.com", "ws_a"),
        default_directories("https://api.flameup.com", None),
    ]
    every = {first[0], first[1]} | {directory for pair in others for directory in pair}
    assert len(every) == 8
    assert all(d.parent == tmp_path / "flameup-analytics" for d in (first[0], *(o[0] for o in others)))


def test_the_body_and_its_timestamp_survive_the_disk(tmp_path: Path) -> None:
    body = b'{"userId":"u","event":"clicked","timestamp":"2026-03-29T01:30:00.123456+11:00"}'
    original = Message("track", "u", body, "key-ts")
    spool = DiskSpool(tmp_path)
    spool.store([original])
    spool.close()
    (reader,) = DiskSpool(tmp_path).claim()
    (record,) = reader.records
    assert record.message == original  # byte for byte: the timestamp is the one track() stamped
    reader.release()


def test_disk_and_cap_warnings_are_logged_at_most_once_a_minute(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    now = [1000.0]
    blocker = tmp_path / "a-file"
    blocker.write_text("where the spool directory should be")
    broken = DiskSpool(blocker / "spool")
    full = DiskSpool(tmp_path / "full", max_bytes=0)
    for spool in (broken, full):
        spool.warnings.clock = lambda: now[0]
    with caplog.at_level(logging.WARNING, logger="flameup_analytics"):
        for seconds in (0, 1, 59, 60, 61, 119):
            now[0] = 1000.0 + seconds
            assert broken.store([message(seconds)]) == 0
            assert full.store([message(seconds)]) == 0
    logged = [r.getMessage() for r in caplog.records]
    assert len([m for m in logged if "cannot write the spool" in m]) == 2  # at 0 s and 60 s
    assert len([m for m in logged if "the spool is full" in m]) == 2
