"""The spool under faults, with real files and processes: a directory removed under it, a full disk,
damaged acks, a clock step, a writer killed with SIGKILL.

A full disk is a real, small tmpfs where mounting one is permitted; elsewhere the same fault is
injected through the ``os`` module as spool.py sees it (never skipped).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import flameup_analytics.spool as spool_module
from flameup_analytics._spool_format import encode_record
from flameup_analytics.spool import DiskSpool, SegmentReader

from .conftest import ClientFactory
from .test_spool_format import keys, message, replay_all


class FaultyOs:
    """The ``os`` module as spool.py sees it, with some calls replaced: a narrow seam for faults
    real files cannot produce on demand."""

    def __init__(self, **replacements: Callable[..., Any]) -> None:
        self._replacements = replacements

    def __getattr__(self, name: str) -> Any:
        return self._replacements.get(name) or getattr(os, name)


def failing(code: int) -> Callable[..., Any]:
    def fail(*args: Any) -> Any:
        raise OSError(code, os.strerror(code))

    return fail


def logged(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return len([record for record in caplog.records if text in record.getMessage()])


# --- a full disk ------------------------------------------------------------------------------


class SmallDisk:
    """A directory on a disk that can be filled up, leaving ``leave`` bytes, and freed again."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        self._monkeypatch = monkeypatch
        self.mounted = _mount_tmpfs(root)
        self._budget: int | None = None

    def fill(self, leave: int = 0) -> None:
        if self.mounted:
            fd = os.open(self.root / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            try:
                for size in (4096, 1):
                    with contextlib.suppress(OSError):
                        while True:
                            os.write(fd, b"\0" * size)
                if leave:
                    os.ftruncate(fd, os.fstat(fd).st_size - leave)
            finally:
                os.close(fd)
        else:
            self._budget = leave
            self._monkeypatch.setattr(spool_module, "os", FaultyOs(write=self._write))

    def free(self) -> None:
        if self.mounted:
            (self.root / "filler").unlink()
        else:
            self._monkeypatch.setattr(spool_module, "os", os)

    def _write(self, fd: int, data: bytes) -> int:
        assert self._budget is not None
        if not self._budget:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = os.write(fd, bytes(data[: self._budget]))
        self._budget -= written
        return written

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.root)], check=True)


def _mount_tmpfs(root: Path) -> bool:
    try:
        mount = ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(root)]
        return subprocess.run(mount, capture_output=True, timeout=30).returncode == 0
    except OSError:  # no mount command
        return False


@pytest.fixture
def small_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SmallDisk]:
    root = tmp_path / "disk"
    root.mkdir()
    disk = SmallDisk(root, monkeypatch)
    yield disk
    disk.unmount()


def spooled(directory: Path, count: int) -> DiskSpool:
    spool = DiskSpool(directory)
    assert spool.store([message(n) for n in range(count)]) == count
    spool.close()
    return spool


# --- item 1: the cap limits new writes only ---------------------------------------------------


def test_at_the_cap_a_replay_cut_short_keeps_the_rest_in_its_segment_in_order(tmp_path: Path) -> None:
    frame = len(encode_record(message(0), 1.5))
    spool = DiskSpool(tmp_path, max_bytes=frame * 5)
    assert spool.store([message(n) for n in range(5)]) == 5
    (reader,) = spool.claim()
    # Two are final; the third failed again: the segment is acked up to the second, nothing is
    # written again, and the cap has nothing to drop.
    assert reader.ack(reader.records[1].end)
    reader.release()
    assert spool.store([message(9)]) == 0  # new writes still meet the cap
    assert spool.dropped_at_cap == 1
    assert keys(replay_all(tmp_path)) == ["key-2", "key-3", "key-4"]


# --- item 2: the spool directory removed while the process runs -------------------------------


def test_a_directory_removed_under_an_open_segment_is_made_again(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path / "spool")
    assert spool.store([message(1)]) == 1
    shutil.rmtree(tmp_path / "spool")  # a tmp cleaner, an operator's rm -rf
    assert spool.store([message(2), message(3)]) == 2
    spool.close()
    assert keys(replay_all(tmp_path / "spool")) == ["key-2", "key-3"]


def test_a_directory_removed_before_a_filled_segment_is_sealed_is_made_again(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path / "spool", segment_bytes=1)  # every store fills its segment
    assert spool.store([message(1)]) == 1
    shutil.rmtree(tmp_path / "spool")
    spool.seal_pending()  # never raises, though what it seals is gone
    assert spool.store([message(2)]) == 1
    spool.close()
    assert keys(replay_all(tmp_path / "spool")) == ["key-2"]


def test_a_removal_that_races_the_write_is_written_again_to_a_new_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "spool"
    spool = DiskSpool(directory)
    assert spool.store([message(1)]) == 1

    def write_after_removal(fd: int, data: bytes) -> int:
        monkeypatch.setattr(spool_module, "os", os)  # once
        shutil.rmtree(directory)  # between the check before the write and the write
        return os.write(fd, data)

    monkeypatch.setattr(spool_module, "os", FaultyOs(write=write_after_removal))
    assert spool.store([message(2)]) == 1
    spool.close()
    assert keys(replay_all(directory)) == ["key-2"]


def test_when_the_directory_cannot_be_made_again_nothing_is_counted_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "spool"
    spool = DiskSpool(directory)
    assert spool.store([message(1)]) == 1
    shutil.rmtree(directory)
    directory.write_text("a file where the directory was")
    with caplog.at_level(logging.WARNING, logger="flameup_analytics"):
        assert spool.store([message(2), message(3)]) == 0
        assert spool.store([message(4)]) == 0
    assert logged(caplog, "cannot write the spool") == 1
    directory.unlink()
    assert spool.store([message(5)]) == 1  # and it resumes when it can
    spool.close()
    assert keys(replay_all(directory)) == ["key-5"]


def test_a_store_that_fills_the_disk_counts_only_the_whole_records_it_wrote(
    small_disk: SmallDisk, caplog: pytest.LogCaptureFixture
) -> None:
    spool = DiskSpool(small_disk.root / "spool")
    assert spool.store([message(0)]) == 1
    spool.close()  # the next store starts a segment of its own
    small_disk.fill(leave=4096)
    with caplog.at_level(logging.WARNING, logger="flameup_analytics"):
        kept = spool.store([message(n) for n in range(1, 200)])
    assert 0 < kept < 199
    assert logged(caplog, "cannot write the spool") == 1
    spool.close()
    small_disk.free()
    later = DiskSpool(small_disk.root / "spool")
    assert keys(replay_all(later)) == [f"key-{n}" for n in range(kept + 1)]
    assert later.corrupt <= 1  # at most the torn record after the last whole one


def test_a_full_disk_does_not_leave_a_segment_per_failed_store(small_disk: SmallDisk) -> None:
    spool = DiskSpool(small_disk.root / "spool")
    small_disk.fill()
    for n in range(20):
        assert spool.store([message(n)]) == 0
    assert len(spool.segments()) <= 1
    small_disk.free()
    assert spool.store([message(20)]) == 1
    spool.close()
    assert keys(replay_all(small_disk.root / "spool")) == ["key-20"]


# --- item 3: a full disk while replaying ------------------------------------------------------


def test_an_ack_on_a_full_disk_returns_false_and_the_finished_segment_is_still_deleted(
    small_disk: SmallDisk, caplog: pytest.LogCaptureFixture
) -> None:
    spool = spooled(small_disk.root / "spool", 6)
    small_disk.fill()
    (reader,) = spool.claim()
    with caplog.at_level(logging.WARNING, logger="flameup_analytics"):
        assert reader.ack(reader.records[1].end) is False  # no raise: the replay goes on
        assert reader.ack(reader.records[3].end) is False
    assert logged(caplog, "cannot record replay progress") == 1
    assert reader.delete()  # unlink needs no space
    assert spool.segments() == []


def test_on_a_full_disk_an_existing_ack_is_overwritten_in_place(small_disk: SmallDisk) -> None:
    spool = spooled(small_disk.root / "spool", 6)
    (reader,) = spool.claim()
    assert reader.ack(reader.records[0].end)
    small_disk.fill()
    assert reader.ack(reader.records[3].end)
    reader.release()  # the process stops here
    assert keys(replay_all(small_disk.root / "spool")) == ["key-4", "key-5"]


def test_a_segment_that_cannot_be_deleted_is_released_without_raising(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    spool = spooled(tmp_path, 2)
    (reader,) = spool.claim()
    monkeypatch.setattr(spool_module, "os", FaultyOs(unlink=failing(errno.EROFS)))
    with caplog.at_level(logging.WARNING, logger="flameup_analytics"):
        assert reader.delete() is False
    assert logged(caplog, "cannot delete the replayed segment") == 1
    monkeypatch.setattr(spool_module, "os", os)
    assert keys(replay_all(tmp_path)) == ["key-0", "key-1"]  # released: claimed again


# --- item 4: damaged acks ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda size, first_end: str(size + 1000), id="beyond-the-segment"),
        pytest.param(lambda size, first_end: str(first_end + 3), id="not-at-a-record-end"),
        pytest.param(lambda size, first_end: "garbage", id="not-a-number"),
        pytest.param(lambda size, first_end: "-5", id="negative"),
        pytest.param(lambda size, first_end: "", id="empty"),
    ],
)
def test_a_damaged_ack_is_counted_corrupt_and_acknowledges_nothing(
    tmp_path: Path, damage: Callable[[int, int], str]
) -> None:
    spool = spooled(tmp_path, 4)
    (segment,) = spool.segments()
    first_end = len(encode_record(message(0), time.time()))
    Path(f"{segment}.ack").write_text(damage(segment.stat().st_size, first_end))
    replaying = DiskSpool(tmp_path)
    (reader,) = replaying.claim()
    assert keys([r.message for r in reader.records]) == ["key-0", "key-1", "key-2", "key-3"]
    assert reader.corrupt == replaying.corrupt == 1
    reader.release()


# --- item 8: no fsync in the caller's thread --------------------------------------------------


def test_store_never_fsyncs_and_a_filled_segment_is_sealed_by_seal_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []

    def fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        os.fsync(fd)

    monkeypatch.setattr(spool_module, "os", FaultyOs(fsync=fsync))
    spool = DiskSpool(tmp_path, segment_bytes=1)
    for n in range(0, 12, 3):
        assert spool.store([message(n), message(n + 1), message(n + 2)]) == 3  # fills a segment
    assert synced == []
    filled = spool.segments()
    assert len(filled) == 4
    assert all(SegmentReader.open(path) is None for path in filled)  # locked until sealed
    spool.seal_pending()
    assert sorted(synced) == sorted(path.stat().st_ino for path in filled)
    assert keys(replay_all(tmp_path)) == [f"key-{n}" for n in range(12)]


def test_close_seals_the_open_and_the_filled_segments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []

    def fsync(fd: int) -> None:
        synced.append(fd)
        os.fsync(fd)

    monkeypatch.setattr(spool_module, "os", FaultyOs(fsync=fsync))
    spool = DiskSpool(tmp_path, segment_bytes=2 * len(encode_record(message(0), 1.5)))
    spool.store([message(n) for n in range(3)])  # fills one
    spool.store([message(3)])  # and opens another
    spool.close()
    assert len(synced) == 2
    assert keys(replay_all(tmp_path)) == [f"key-{n}" for n in range(4)]


def test_claim_seals_what_store_filled_before_reading(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path, segment_bytes=2 * len(encode_record(message(0), 1.5)))
    spool.store([message(n) for n in range(3)])
    spool.store([message(3)])
    replayed = []
    for reader in spool.claim():
        replayed += [r.message for r in reader.records]
        reader.delete()
    assert keys(replayed) == [f"key-{n}" for n in range(4)]


def test_seal_pending_never_raises_and_still_releases_the_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    spool = DiskSpool(tmp_path, segment_bytes=1)
    spool.store([message(1)])
    spool.store([message(2)])
    monkeypatch.setattr(spool_module, "os", FaultyOs(fsync=failing(errno.EIO)))
    with caplog.at_level(logging.WARNING, logger="flameup_analytics"):
        spool.seal_pending()
    assert logged(caplog, "cannot make the spool durable") == 1
    monkeypatch.setattr(spool_module, "os", os)
    assert keys(replay_all(tmp_path)) == ["key-1", "key-2"]


# --- item 10: order without the wall clock ----------------------------------------------------


def test_a_clock_step_back_does_not_change_the_replay_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = DiskSpool(tmp_path, segment_bytes=1)  # a segment per store
    clock = [2_000_000_000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    monkeypatch.setattr(time, "time_ns", lambda: int(clock[0] * 1e9))
    for n in range(4):
        assert spool.store([message(n)]) == 1
        clock[0] -= 3600  # NTP steps the clock an hour back
    spool.close()
    later = DiskSpool(tmp_path, segment_bytes=1)  # another process, after yet another step
    assert later.store([message(4)]) == 1
    later.close()
    assert keys(replay_all(tmp_path)) == [f"key-{n}" for n in range(5)]


def test_segments_of_the_previous_release_replay_before_new_ones(tmp_path: Path) -> None:
    legacy = tmp_path / f"{time.time_ns() + 10**15:020d}-0a1b2c3d-000001.seg"  # a clock in the future
    legacy.write_bytes(b"".join(encode_record(message(n), 0.0) for n in range(2)))
    spool = DiskSpool(tmp_path)
    spool.store([message(2)])
    spool.close()
    assert keys(replay_all(tmp_path)) == ["key-0", "key-1", "key-2"]


def test_a_new_writer_numbers_its_segments_after_every_existing_one(tmp_path: Path) -> None:
    first = DiskSpool(tmp_path, segment_bytes=1)
    second = DiskSpool(tmp_path, segment_bytes=1)  # two processes on one directory, interleaved
    for n in range(0, 6, 2):
        first.store([message(n)])
        second.store([message(n + 1)])
    first.close()
    second.close()
    names = [path.name for path in first.segments()]
    assert len({name.split("-")[0] for name in names}) == 6  # no two share a number
    assert keys(replay_all(tmp_path)) == [f"key-{n}" for n in range(6)]


# --- SIGKILL ----------------------------------------------------------------------------------


def test_what_a_sigkilled_writer_stored_is_replayed_in_order(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from flameup_analytics.message import Message
        from flameup_analytics.spool import DiskSpool

        spool = DiskSpool({str(tmp_path)!r}, segment_bytes=300)
        for n in range(0, 40, 4):  # fills segments that no worker seals, and leaves one open
            batch = [Message("track", "user", b'{{"n":%d}}' % i, f"key-{{i}}") for i in range(n, n + 4)]
            assert spool.store(batch) == 4
        print("stored", flush=True)
        sys.stdin.read()
        """
    )
    writer = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "stored\n"
        assert replay_all(tmp_path) == []  # every segment is still locked by its writer
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    assert keys(replay_all(tmp_path)) == [f"key-{n}" for n in range(40)]


def test_a_forked_child_leaves_its_parents_unsealed_segments_alone(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path, segment_bytes=2 * len(encode_record(message(0), 1.5)))
    spool.store([message(n) for n in range(3)])  # a filled segment, not yet sealed
    spool.store([message(3)])  # and an open one
    pid = os.fork()
    if pid == 0:  # the child: what the SDK's at-fork hook does, then a spill of its own
        try:
            spool.after_fork_in_child()
            spool.store([message(100)])
            spool.close()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    readers = [SegmentReader.open(path) for path in spool.segments()]
    # The parent's two are still locked: the child neither sealed nor unlocked them.
    assert [reader is None for reader in readers] == [True, True, False]
    for reader in readers:
        if reader is not None:
            reader.release()
    spool.close()
    assert sorted(keys(replay_all(tmp_path))) == sorted(f"key-{n}" for n in (0, 1, 2, 3, 100))


def test_a_spool_that_cannot_be_read_ends_the_replay_pass_as_failed_not_drained(
    tmp_path: Path,
    make_client: ClientFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def claim(self: DiskSpool) -> Iterator[SegmentReader]:
        raise RuntimeError("a failure no reader catches")
        yield  # a generator, as claim() is

    monkeypatch.setattr(DiskSpool, "claim", claim)
    client = make_client(spool_dir=tmp_path / "spool")
    assert client.replay_spool(timeout=10) is False, "a pass that could not read the spool drained nothing"
    assert client.stats().internal_errors >= 1
    assert logged(caplog, "the spool could not be read; the replay pass stops") >= 1
