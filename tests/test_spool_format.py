"""The spool's record format and bookkeeping, with real files (and hypothesis for the model)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flameup_analytics.message import Message
from flameup_analytics.spool import (
    SEGMENT_SUFFIX,
    DiskSpool,
    SegmentReader,
    decode_records,
    encode_record,
    purge,
    summarize,
)


def message(n: int, user: str = "user") -> Message:
    return Message("track", user, b'{"n":%d}' % n, f"key-{n}")


def keys(messages: list[Message]) -> list[str]:
    return [m.key for m in messages]


def replay_all(directory: Path) -> list[Message]:
    """Replay every segment to the end, deleting each, as the worker does when all goes well."""
    spool = DiskSpool(directory)
    replayed: list[Message] = []
    for reader in spool.claim():
        replayed += [record.message for record in reader.records]
        reader.delete()
    return replayed


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


# --- the model: any sequence of appends, torn writes, replays and restarts ----------------------

operations = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 5)),
        st.tuples(st.just("torn"), st.integers(1, 60)),
        st.tuples(st.just("crash"), st.just(0)),
        st.tuples(st.just("replay"), st.integers(0, 4)),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations)
def test_every_complete_record_is_replayed_exactly_once(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int]]
) -> None:
    directory = tmp_path_factory.mktemp("model")
    spool = DiskSpool(directory, segment_bytes=300)
    stored: list[str] = []
    replayed: list[str] = []
    counter = 0
    for op, arg in ops:
        if op == "append":
            batch = [message(counter + n) for n in range(arg)]
            counter += arg
            assert spool.store(batch) == arg
            stored += keys(batch)
        elif op == "torn":
            # A write cut short by a crash: part of a record at the end of the open segment.
            frame = encode_record(message(10_000 + counter), 0)
            counter += 1
            spool.store([])  # nothing, but makes sure a segment may exist
            if spool._fd is not None:
                os.write(spool._fd, frame[: min(arg, len(frame) - 1)])
        elif op == "crash":
            # The process dies: its lock goes, nothing is sealed, a new process takes over.
            spool._abandon_segment()
            spool = DiskSpool(directory, segment_bytes=300)
        else:
            # A replay that stops after `arg` acked records, as a process killed mid-replay would.
            for reader in spool.claim():
                done = reader.records[:arg]
                replayed += [r.message.key for r in done]
                if len(done) == len(reader.records):
                    reader.delete()
                else:
                    if done:
                        reader.ack(done[-1].end)
                    reader.release()
                break
    spool.close()
    replayed += keys(replay_all(directory))
    assert sorted(replayed) == sorted(stored)
    assert len(replayed) == len(set(replayed))
