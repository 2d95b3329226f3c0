"""A model of the spool under interleaved writes, replays, kills, full disks, a removed directory and
damaged acks (hypothesis state machine, real files).

The invariant: every message ``store()`` said it kept is either acknowledged final or still readable
by a later claim, unless the directory was removed after it was kept (an explicit loss in the
model: nothing stored after the removal may be lost); and no message is read again once it was
acknowledged (duplicates only for records whose ack was lost or damaged).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import flameup_analytics.spool as spool_module
from flameup_analytics._spool_format import decode_records, encode_record
from flameup_analytics.spool import DiskSpool

from .test_spool_faults import FaultyOs, failing
from .test_spool_format import keys, kill, message, replay_all

#: Small segments, so that stores fill them and the model sees many.
SEGMENT_BYTES = 400


def number(key: str) -> int:
    return int(key.rsplit("-", 1)[1])


class SpoolModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="spool-model-"))
        self.directory = self.root / "spool"
        self.spool = DiskSpool(self.directory, segment_bytes=SEGMENT_BYTES)
        self.stored = 0
        #: Kept by store() and not yet final: a later claim must read each.
        self.unfinished: set[str] = set()
        #: Acknowledged final: never read again.
        self.final: set[str] = set()
        #: Segments whose ack is damaged, and those holding a torn write: where corrupt may be counted.
        self.damaged_acks: set[str] = set()
        self.torn: set[str] = set()
        self.disk_full = False

    @contextlib.contextmanager
    def disk(self) -> Iterator[bool]:
        """The next operation's disk: full (every write fails with ENOSPC) once after ``disk_full``."""
        full, self.disk_full = self.disk_full, False
        with pytest.MonkeyPatch.context() as patch:
            if full:
                enospc = failing(errno.ENOSPC)
                patch.setattr(spool_module, "os", FaultyOs(write=enospc, pwrite=enospc))
            yield full

    @rule(count=st.integers(1, 5))
    def store(self, count: int) -> None:
        batch = [message(self.stored + n) for n in range(count)]
        self.stored += count
        with self.disk() as full:
            kept = self.spool.store(batch)
        assert kept == (0 if full else count)
        self.unfinished |= set(keys(batch[:kept]))

    @rule()
    def fill_the_disk(self) -> None:
        self.disk_full = True

    @rule()
    def seal(self) -> None:
        self.spool.seal_pending()  # the worker's turn

    @precondition(lambda self: self.directory.exists())
    @rule(final=st.integers(0, 8))
    def replay(self, final: int) -> None:
        """A replay pass: the first ``final`` records read are delivered, then the pass stops."""
        read: list[int] = []
        stopped = False
        with self.disk():
            for reader in self.spool.claim():
                name = reader.path.name
                assert reader.corrupt == 0 or name in self.damaged_acks | self.torn
                batch = keys([record.message for record in reader.records])
                assert not set(batch) & self.final, "read again after it was acknowledged"
                assert set(batch) <= self.unfinished
                read += [number(key) for key in batch]
                done = reader.records[:final]
                final -= len(done)
                if len(done) == len(reader.records):
                    assert reader.delete()  # unlink works on a full disk
                    self.finish(batch)
                    continue
                if done and reader.ack(done[-1].end):
                    self.finish(batch[: len(done)])
                    self.damaged_acks.discard(name)  # a valid ack replaced it
                reader.release()
                stopped = True
                break
        assert read == sorted(read), "replayed out of order"
        if not stopped:  # a pass that was not cut short found everything (no other process holds any)
            assert {number(key) for key in self.unfinished} <= set(read)

    @invariant()
    def every_unfinished_message_is_in_the_directory(self) -> None:
        """Checked after every step: a later process listing the directory would find each one."""
        on_disk: set[str] = set()
        for segment in self.spool.segments():
            with contextlib.suppress(FileNotFoundError):
                on_disk |= set(keys([r.message for r in decode_records(segment.read_bytes())[0]]))
        assert self.unfinished <= on_disk

    def finish(self, batch: list[str]) -> None:
        self.unfinished -= set(batch)
        self.final |= set(batch)

    @rule(torn=st.integers(0, 20))
    def kill(self, torn: int) -> None:
        """SIGKILL, perhaps in the middle of a write (``torn`` bytes of a record written)."""
        fd = self.spool._fd
        if torn and fd is not None:
            os.write(fd, encode_record(message(10**6), 0.0)[:torn])
            assert self.spool._segment is not None
            self.torn.add(self.spool._segment.name)
        kill(self.spool)
        self.spool = DiskSpool(self.directory, segment_bytes=SEGMENT_BYTES)

    @precondition(lambda self: self.directory.exists())
    @rule()
    def remove_the_directory(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
        self.unfinished.clear()  # lost, explicitly; what is stored from now on must not be

    @precondition(lambda self: self.spool.segments())
    @rule(data=st.data(), damage=st.sampled_from(["beyond", "inside-a-record", "not-a-number"]))
    def damage_an_ack(self, data: st.DataObject, damage: str) -> None:
        segments = self.spool.segments()
        segment = data.draw(st.sampled_from(segments))
        content = segment.read_bytes()
        records, _ = decode_records(content)
        value = {
            "beyond": str(len(content) + 100),
            "inside-a-record": str(records[0].end - 1 if records else 7),
            "not-a-number": "x7",
        }[damage]
        Path(f"{segment}.ack").write_text(value)
        self.damaged_acks.add(segment.name)
        acked = set(keys([record.message for record in records])) & self.final
        self.final -= acked  # a damaged ack acknowledges nothing: they are read again
        self.unfinished |= acked

    def teardown(self) -> None:
        try:
            self.spool.close()
            remaining = keys(replay_all(self.directory))
            assert len(remaining) == len(set(remaining))
            assert set(remaining) == self.unfinished
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


TestSpoolModel = SpoolModel.TestCase
TestSpoolModel.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
