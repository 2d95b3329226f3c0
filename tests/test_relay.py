"""Relay mode: the client's segments, the relay delivering from a directory, and real processes killed."""

from __future__ import annotations

import collections
import functools
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import flameup_analytics as fa
from flameup_analytics._spool_format import appended, encode_ack, encode_record
from flameup_analytics.cli import main
from flameup_analytics.lanes import Ordering
from flameup_analytics.message import STANDARD, Message, track_body
from flameup_analytics.relay import (
    LOCK_NAME,
    LOG_MAX_BYTES,
    LOG_NAME,
    Fsync,
    RelayWriter,
    read_status,
    relay_pid,
    rotate_log,
)
from flameup_analytics.relay_process import (
    READ_AGAIN_AFTER,
    LiveBatch,
    LiveSegmentReader,
    Relay,
    RelaySpool,
    backlog,
)
from flameup_analytics.spool import DiskSpool, SegmentReader, ack_path, read_ack, replace_file
from flameup_analytics.testing import Fault, LocalServer, capture

from .conftest import API_KEY, WORKSPACE, wait_until

#: At most what one relay's death sends again: requests in flight (max_concurrency) and records
#: final but not yet acked (the relay acks every 100).
IN_FLIGHT_WINDOW = 128 + 100

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="relay mode needs POSIX file locks")


def _message(number: int, user: str = "u") -> Message:
    _, body = track_body(user, "e", {"n": number}, None, 32 * 1024, STANDARD)
    return Message("track", user, body, f"k{number}")


def _delivered_keys(server: LocalServer) -> collections.Counter[str]:
    return collections.Counter(r.idempotency_key or "" for r in server.requests if 200 <= r.status < 300)


def _writer(directory: Path) -> RelayWriter:
    """A writer that never starts a relay of its own: the test runs the relay."""
    return RelayWriter(DiskSpool(directory), {}, start_relay=False)


def _more_requests_than(server: LocalServer, count: int) -> bool:
    return len(server.requests) > count


def _relay_client(server: LocalServer, directory: Path) -> fa.Client:
    return fa.Client(API_KEY, WORKSPACE, host=server.url, spool_dir=directory, delivery="relay")


def _stop_relays(directory: Path) -> None:
    """SIGTERM the directory's relay, and any other a client started meanwhile (one waiting to be
    elected takes over when the first ends): done once none has held the lock for a second."""
    deadline = time.monotonic() + 20
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < 1.0 and time.monotonic() < deadline:
        pid = relay_pid(directory)
        if pid:
            os.kill(pid, signal.SIGTERM)
            wait_until(lambda stopped=pid: relay_pid(directory) != stopped, 15)  # type: ignore[misc]
            quiet_since = time.monotonic()
        threading.Event().wait(0.05)


@contextmanager
def _running_relay(
    server: LocalServer,
    directory: Path,
    ordering: Ordering = "relaxed",
    read_again_after: float = READ_AGAIN_AFTER,
) -> Iterator[Relay]:
    """A relay for ``directory`` in a thread of this process (so its pid is ours), stopped after."""
    relay = Relay(
        directory,
        api_key=API_KEY,
        workspace_id=WORKSPACE,
        host=server.url,
        ordering=ordering,
        rescan_interval=0.1,
        read_again_after=read_again_after,
    )
    thread = threading.Thread(target=relay.run, daemon=True)
    thread.start()
    assert wait_until(lambda: relay_pid(relay.directory) is not None)
    yield relay
    relay.stop()
    thread.join(15)
    assert not thread.is_alive()


@pytest.fixture
def relay_in_thread(server: LocalServer, tmp_path: Path) -> Iterator[Relay]:
    with _running_relay(server, tmp_path / "spool") as relay:
        yield relay


# --- the record format: a segment still being written ---------------------------------------------


def test_an_incomplete_last_record_is_not_damage_while_its_writer_may_still_write_it() -> None:
    whole = encode_record(_message(1), 0.0) + encode_record(_message(2), 0.0)
    torn = whole + encode_record(_message(3), 0.0)[:-5]
    records, damaged = appended(torn, 0)
    assert [r.message.key for r in records] == ["k1", "k2"] and damaged == 0
    records, damaged = appended(torn + b"\0" * 3 + encode_record(_message(4), 0.0), 0)
    assert [r.message.key for r in records] == ["k1", "k2", "k4"] and damaged == 1


def test_a_trusted_ack_is_read_from_without_checking_the_segment_before_it() -> None:
    first = encode_record(_message(1), 0.0)
    data = b"garbage!" + first + encode_record(_message(2), 0.0)
    records, damaged = appended(data, len(b"garbage!") + len(first), trusted=True)
    assert [r.message.key for r in records] == ["k2"] and damaged == 0


# --- the relay and a live writer ---------------------------------------------------------------------


def test_the_relay_delivers_while_the_writer_appends_and_deletes_the_segment_once_sealed(
    server: LocalServer, relay_in_thread: Relay
) -> None:
    writer = _writer(relay_in_thread.directory)
    for number in range(50):
        assert writer.append(_message(number, f"user{number % 5}"))
    assert writer.flush(timeout=20)
    assert set(_delivered_keys(server)) == {f"k{n}" for n in range(50)}
    segments = DiskSpool(relay_in_thread.directory).segments()
    assert len(segments) == 1, "a segment its writer still holds is kept"
    for number in range(50, 80):
        writer.append(_message(number))
    assert writer.flush(timeout=20)
    assert set(_delivered_keys(server)) == {f"k{n}" for n in range(80)}
    writer.close()
    assert wait_until(lambda: not DiskSpool(relay_in_thread.directory).segments(), 10)
    assert max(_delivered_keys(server).values()) == 1


def test_the_live_segments_of_all_writers_are_sent_as_one_batch_and_acked_each_in_its_own_terms(
    tmp_path: Path,
) -> None:
    first, second = _writer(tmp_path), _writer(tmp_path)
    for number in range(3):
        first.append(_message(number))
        second.append(_message(10 + number))
    (batch,) = RelaySpool(tmp_path).claim()
    assert [record.message.key for record in batch.records] == ["k0", "k1", "k2", "k10", "k11", "k12"]
    ends = {}  # each writer's segment and where its records end, by its first key
    for path in DiskSpool(tmp_path).segments():
        records = appended(path.read_bytes(), 0)[0]
        ends[records[0].message.key] = (path, [record.end for record in records])
    (mine, my_ends), (theirs, their_ends) = ends["k0"], ends["k10"]
    batch.ack_records(2)
    assert (read_ack(mine), read_ack(theirs)) == (my_ends[1], 0)
    batch.ack_records(4)  # the first writer's three records and the second's first are final
    assert (read_ack(mine), read_ack(theirs)) == (my_ends[2], their_ends[0])
    batch.ack_records(5)
    assert (read_ack(mine), read_ack(theirs)) == (my_ends[2], their_ends[1])
    batch.delete()  # all final: each acked to its end, and kept (their writers still hold them)
    assert (read_ack(mine), read_ack(theirs)) == (my_ends[2], their_ends[2])
    assert mine.exists() and theirs.exists()
    assert list(RelaySpool(tmp_path).claim()) == [], "nothing new to read"
    first.close()
    second.close()


def _keys(reader: SegmentReader) -> list[str]:
    return [record.message.key for record in reader.records]


def _ends(path: Path) -> list[int]:
    """Where each record of a segment ends."""
    return [record.end for record in appended(path.read_bytes(), 0)[0]]


def test_a_pass_reads_what_was_appended_while_its_last_batch_was_in_flight(tmp_path: Path) -> None:
    writer = _writer(tmp_path)
    for number in range(3):
        writer.append(_message(number))
    claims = RelaySpool(tmp_path, read_interval=0.0).claim()
    assert _keys(next(claims)) == ["k0", "k1", "k2"]
    writer.append(_message(3))
    writer.append(_message(4))
    # Asked for more before the first batch is final: only what follows it, not it again.
    assert _keys(next(claims)) == ["k3", "k4"]
    assert next(claims, None) is None, "nothing new: the pass ends"
    writer.close()


def test_a_segment_sealed_during_a_pass_is_claimed_and_deleted_in_that_pass(tmp_path: Path) -> None:
    writer = _writer(tmp_path)
    writer.append(_message(0))
    claims = RelaySpool(tmp_path, read_interval=0.0).claim()
    first = next(claims)
    writer.append(_message(1))
    second = next(claims)  # read while the first is in flight: its lock keeps the segment live
    assert _keys(second) == ["k1"]
    writer.close()  # sealed
    first.delete()
    second.delete()
    writer = _writer(tmp_path)  # a new segment keeps the pass going
    writer.append(_message(2))
    sealed = next(claims)
    assert not isinstance(sealed, LiveBatch) and _keys(sealed) == []
    assert sealed.delete() and len(DiskSpool(tmp_path).segments()) == 1
    assert _keys(next(claims)) == ["k2"]
    writer.close()


def test_a_segment_sealed_behind_one_read_live_waits_for_it_in_the_same_batch(tmp_path: Path) -> None:
    # The writer appended to its segment, filled it and sealed the next one while the pass had
    # records of the first in flight: the first is still read live (our lock keeps it), the second
    # could be claimed alone, but its records are newer and must not be sent before the first's.
    two_records = len(encode_record(_message(0), 0.0)) + 1  # k0 and k1 fit, k2 starts a segment
    writer = RelayWriter(DiskSpool(tmp_path), {}, start_relay=False, segment_bytes=two_records)
    writer.append(_message(0))
    claims = RelaySpool(tmp_path, read_interval=0.0).claim()
    first = next(claims)
    writer.append(_message(1))
    writer.append(_message(2))
    writer.close()  # both sealed
    second = next(claims)
    assert _keys(second) == ["k1", "k2"]
    assert next(claims, None) is None
    first.delete()
    second.delete()
    (kept,) = DiskSpool(tmp_path).segments()  # the sealed one is deleted; the one read live...
    (last,) = RelaySpool(tmp_path).claim()
    assert _keys(last) == [] and last.delete(), "...is acked to its end, and the next pass deletes it"
    assert not kept.exists()


def test_a_pass_does_not_read_a_live_segment_back_to_back(tmp_path: Path) -> None:
    writer = _writer(tmp_path)
    writer.append(_message(0))
    claims = RelaySpool(tmp_path, read_interval=60.0).claim()
    assert _keys(next(claims)) == ["k0"]
    writer.append(_message(1))
    assert next(claims, None) is None, "read again at once: the next pass will take it"
    writer.close()


def test_a_segment_first_met_with_an_ack_is_read_from_it(tmp_path: Path) -> None:
    # A relay that followed another (killed after its ack) does not send k0 and k1 again.
    writer = _writer(tmp_path)
    for number in range(4):
        writer.append(_message(number))
    (segment,) = DiskSpool(tmp_path).segments()
    replace_file(ack_path(segment), encode_ack(_ends(segment)[1]))
    (batch,) = RelaySpool(tmp_path).claim()
    assert _keys(batch) == ["k2", "k3"] and batch.corrupt == 0
    batch.release()
    writer.close()


def test_the_acks_of_a_later_read_wait_until_every_record_before_them_is_final(tmp_path: Path) -> None:
    writer = _writer(tmp_path)
    for number in range(3):
        writer.append(_message(number))
    claims = RelaySpool(tmp_path, read_interval=0.0).claim()
    first = next(claims)
    writer.append(_message(3))
    writer.append(_message(4))
    second = next(claims)
    (segment,) = DiskSpool(tmp_path).segments()
    ends = _ends(segment)
    second.delete()  # its records answered first
    assert read_ack(segment) == 0, "an ack past records still in flight would lose them in a crash"
    first.ack_records(2)
    assert read_ack(segment) == ends[1]
    first.delete()  # the last record before the second read is final: both acks go out
    assert read_ack(segment) == ends[4]
    writer.close()


def test_a_later_read_never_acks_past_a_record_the_pass_left_unfinal(tmp_path: Path) -> None:
    writer = _writer(tmp_path)
    for number in range(3):
        writer.append(_message(number))
    spool = RelaySpool(tmp_path, read_interval=0.0)
    claims = spool.claim()
    first = next(claims)
    writer.append(_message(3))
    second = next(claims)
    (segment,) = DiskSpool(tmp_path).segments()
    first.ack_records(2)
    second.delete()
    first.release()  # the pass failed with k2 in flight
    assert read_ack(segment) == _ends(segment)[1]
    # The next pass reads again from the ack: k2, and k3 whose delivery was never acked.
    (batch,) = list(spool.claim())
    assert _keys(batch) == ["k2", "k3"]
    batch.release()
    writer.close()


def test_a_relay_reading_on_within_its_passes_delivers_every_record_once_and_acks_them_all(
    server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.latency = 0.02  # so that a batch's last answers are still to come when the next is read
    read_behind_another: list[bool] = []
    made = LiveSegmentReader.__init__

    def spy(self: LiveSegmentReader, *args: Any, **kwargs: Any) -> None:
        made(self, *args, **kwargs)
        read_behind_another.append(self._before is not None)

    monkeypatch.setattr(LiveSegmentReader, "__init__", spy)
    with _running_relay(server, tmp_path / "spool", read_again_after=0.0) as relay:
        writer = _writer(relay.directory)
        for burst in range(6):
            for number in range(burst * 50, burst * 50 + 50):
                assert writer.append(_message(number, f"user{number % 7}"))
            sent = burst * 50
            assert wait_until(functools.partial(_more_requests_than, server, sent))
        assert writer.flush(timeout=30)
        (segment,) = DiskSpool(relay.directory).segments()
        assert read_ack(segment) == segment.stat().st_size
        writer.close()
    assert any(read_behind_another), "no batch was read while the one before it was in flight"
    assert _delivered_keys(server) == collections.Counter(f"k{n}" for n in range(300))


def test_flush_waits_for_every_segment_whichever_the_relay_finishes_first(tmp_path: Path) -> None:
    record = len(encode_record(_message(0), 0.0))
    writer = RelayWriter(DiskSpool(tmp_path), {}, start_relay=False, segment_bytes=2 * record)
    for number in range(6):
        assert writer.append(_message(number))
    oldest, *newer = DiskSpool(tmp_path).segments()
    assert len(newer) == 2
    for path in newer:  # the newer segments final first: flush() must still wait for the oldest
        replace_file(ack_path(path), encode_ack(path.stat().st_size))
    assert writer.flush(timeout=0.2) is False
    replace_file(ack_path(oldest), encode_ack(oldest.stat().st_size - record))
    assert writer.flush(timeout=0.2) is False, "the oldest segment's last record is not final"
    replace_file(ack_path(oldest), encode_ack(oldest.stat().st_size))
    assert writer.flush(timeout=5)
    writer.close()


def test_a_second_relay_for_the_same_directory_stands_down(
    relay_in_thread: Relay, server: LocalServer
) -> None:
    second = Relay(relay_in_thread.directory, api_key=API_KEY, workspace_id=WORKSPACE, host=server.url)
    assert second.run() is False


def test_the_relay_reports_its_status_and_the_command_line_shows_it(
    server: LocalServer, relay_in_thread: Relay, capsys: pytest.CaptureFixture[str]
) -> None:
    writer = _writer(relay_in_thread.directory)
    for number in range(20):
        writer.append(_message(number))
    assert writer.flush(timeout=20)
    assert wait_until(lambda: (read_status(relay_in_thread.directory) or {}).get("delivered") == 20)
    status = read_status(relay_in_thread.directory)
    assert status is not None and status["pid"] == os.getpid() and status["backlog"]["records"] == 0
    assert main(["relay", "status", "--dir", str(relay_in_thread.directory)]) == 0
    shown = capsys.readouterr().out
    assert f"running, pid {os.getpid()}" in shown and "backlog        0 record(s)" in shown


def test_the_backlog_counts_what_follows_each_ack_and_dates_the_oldest(tmp_path: Path) -> None:
    writer = _writer(tmp_path)
    for number in range(3):
        writer.append(_message(number))
    (segment,) = DiskSpool(tmp_path).segments()
    first, *_ = appended(segment.read_bytes(), 0)[0]
    assert backlog(tmp_path) == {
        "segments": 1,
        "records": 3,
        "bytes": segment.stat().st_size,
        "oldest": first.created,
    }
    (batch,) = RelaySpool(tmp_path).claim()
    batch.ack_records(1)
    waiting = backlog(tmp_path)
    assert waiting["records"] == 2 and waiting["bytes"] == segment.stat().st_size - first.end
    writer.close()


def test_relay_status_without_a_relay_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["relay", "status", "--dir", str(tmp_path)]) == 1
    assert "not running" in capsys.readouterr().out


def test_an_idle_relay_exits_once_nothing_is_left_and_no_writer_remains(
    server: LocalServer, tmp_path: Path
) -> None:
    directory = tmp_path / "spool"
    writer = _writer(directory)
    writer.append(_message(1))
    writer.close()
    relay = Relay(directory, api_key=API_KEY, workspace_id=WORKSPACE, host=server.url, exit_when_idle=0.2)
    assert relay.run() is True  # returns by itself
    assert set(_delivered_keys(server)) == {"k1"} and not DiskSpool(directory).segments()
    assert read_status(directory)["state"] == "stopped"  # type: ignore[index]


# --- the client in relay mode ---------------------------------------------------------------------------


def test_a_client_in_relay_mode_starts_a_detached_relay_and_flush_waits_for_its_acks(
    server: LocalServer, tmp_path: Path
) -> None:
    directory = tmp_path / "spool"
    client = _relay_client(server, directory)
    try:
        for number in range(100):
            client.track(f"user{number % 7}", "e", {"n": number}, idempotency_key=f"c{number}")
        client.identify("user1", {"plan": "pro"})
        assert client.flush(timeout=30)
        delivered = _delivered_keys(server)
        assert {f"c{n}" for n in range(100)} <= set(delivered) and len(delivered) == 101
        stats = client.relay.stats()  # type: ignore[union-attr]
        assert stats.written == 101 and stats.fallbacks == 0 and stats.relays_started == 1
        pid = relay_pid(directory)
        assert pid is not None and pid != os.getpid()
    finally:
        client.shutdown()
    # The relay outlives the client; it drains and exits on SIGTERM.
    os.kill(pid, signal.SIGTERM)
    assert wait_until(lambda: relay_pid(directory) is None, 15)
    assert read_status(directory)["state"] == "stopped"  # type: ignore[index]
    _stop_relays(directory)


def test_a_client_starting_a_relay_rotates_a_large_relay_log_and_keeps_a_small_one(
    server: LocalServer, tmp_path: Path
) -> None:
    directory = tmp_path / "spool"
    directory.mkdir()
    log, old = directory / LOG_NAME, directory / (LOG_NAME + ".1")
    log.write_bytes(b"x" * 100)
    rotate_log(log)
    assert log.stat().st_size == 100 and not old.exists()
    log.write_bytes(b"from relays long gone\n" * (LOG_MAX_BYTES // 20))
    large = log.stat().st_size
    client = _relay_client(server, directory)
    try:
        client.track("user_1", "e")
        assert client.flush(timeout=30)
    finally:
        client.shutdown()
        _stop_relays(directory)
    assert old.stat().st_size == large
    assert log.stat().st_size < LOG_MAX_BYTES and b"from relays long gone" not in log.read_bytes()


def _relay_client_delivering(server: LocalServer, directory: Path) -> tuple[fa.Client, int]:
    """A relay-mode client whose first event was delivered, and the relay it started for it."""
    client = _relay_client(server, directory)
    client.track("u", "e", idempotency_key="before")
    assert client.flush(timeout=30)
    pid = relay_pid(directory)
    assert pid
    return client, pid


def test_a_killed_relay_is_replaced_by_the_next_check_of_a_client(
    server: LocalServer, tmp_path: Path
) -> None:
    directory = tmp_path / "spool"
    client, first = _relay_client_delivering(server, directory)
    try:
        os.kill(first, signal.SIGKILL)
        assert wait_until(lambda: relay_pid(directory) not in (None, first), 15)
        client.track("u", "e", idempotency_key="after")
        assert client.flush(timeout=30)
        assert {"before", "after"} <= set(_delivered_keys(server))
    finally:
        client.shutdown()
        _stop_relays(directory)


def test_the_directory_removed_under_a_running_relay_loses_nothing_tracked_after_and_one_relay_serves_it(
    server: LocalServer, tmp_path: Path
) -> None:
    directory = tmp_path / "spool"
    client, relay = _relay_client_delivering(server, directory)
    try:
        shutil.rmtree(directory)
        # At once: these go to the removed segment, until the client's next check sees it gone.
        for number in range(20):
            client.track(f"u{number % 3}", "e", idempotency_key=f"raced{number}")
        assert wait_until(lambda: relay_pid(directory) is not None, 15)
        for number in range(20):
            client.track(f"u{number % 3}", "e", idempotency_key=f"after{number}")
        assert client.flush(timeout=30)
        delivered = set(_delivered_keys(server))
        assert {f"raced{n}" for n in range(20)} | {f"after{n}" for n in range(20)} <= delivered
        # The relay that ran took the new directory's lock again: no second relay delivers the
        # same live segments beside it (duplicates), and it did not go on serving a ghost.
        assert relay_pid(directory) == relay
        assert client.relay.stats().relays_started == 1  # type: ignore[union-attr]
    finally:
        client.shutdown()
        _stop_relays(directory)


def test_appends_to_a_removed_directory_that_cannot_be_made_again_are_delivered_in_process(
    server: LocalServer, tmp_path: Path
) -> None:
    directory = tmp_path / "spool"
    client, relay = _relay_client_delivering(server, directory)
    try:
        shutil.rmtree(directory)
        directory.write_text("a file where the directory was")
        for number in range(10):
            client.track("u", "e", idempotency_key=f"orphaned{number}")
        assert client.flush(timeout=30)
        assert {f"orphaned{n}" for n in range(10)} <= set(_delivered_keys(server))
        assert client.relay.stats().fallbacks >= 10  # type: ignore[union-attr]
    finally:
        client.shutdown()
        os.kill(relay, signal.SIGTERM)  # its directory is gone: no lock file says where it is


def test_a_relay_whose_directory_was_removed_is_elected_again_unless_another_relay_was_first(
    server: LocalServer, tmp_path: Path
) -> None:
    import fcntl  # here: the module is collected on Windows too, where it is skipped

    directory = tmp_path / "spool"
    relay = Relay(directory, api_key=API_KEY, workspace_id=WORKSPACE, host=server.url)
    try:
        assert relay._elect() and relay._still_elected()
        shutil.rmtree(directory)
        assert relay._still_elected() and relay_pid(directory) == os.getpid()  # made again, and won
        # Removed again, and back with another relay's lock held before this one looks.
        shutil.rmtree(directory)
        directory.mkdir()
        held = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(held, fcntl.LOCK_EX)
        assert not relay._still_elected()
        os.close(held)
    finally:
        os.close(relay._lock_fd)
        relay._client.shutdown()


def _keys_in(directory: Path) -> list[str]:
    return [
        record.message.key
        for segment in sorted(directory.glob("*.seg"))
        for record in appended(segment.read_bytes(), 0)[0]
    ]


def test_a_writer_whose_directory_was_removed_writes_what_followed_again_or_hands_it_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "spool"
    handed_over: list[int | str] = []
    writer = RelayWriter(
        DiskSpool(directory), {}, start_relay=False, fallback=lambda message: handed_over.append(message[3])
    )
    writer.append(_message(0))
    writer.check()  # finds the segment in place: what it holds went with the directory
    shutil.rmtree(directory)
    for number in (1, 2, 3):
        assert writer.append(_message(number))  # to the removed segment: track() returned
    old = writer._fd
    writer.check()
    assert _keys_in(directory) == ["k1", "k2", "k3"]
    # A caller's thread that read the old descriptor just before it was retired writes late:
    # the sealing of the old segment writes that record again too.
    os.write(old, encode_record(_message(4), 0.0))
    monkeypatch.setattr("flameup_analytics.relay._CLOSE_DELAY", 0.0)
    writer.check()
    assert _keys_in(directory) == ["k1", "k2", "k3", "k4"]
    with pytest.raises(OSError):
        os.fstat(old)  # sealed
    # The directory removed again, and a file in its place: no segment can be made there now.
    shutil.rmtree(directory)
    directory.write_text("not a directory")
    assert writer.append(_message(5))
    writer.check()
    assert handed_over == ["k5"] and writer.fallbacks == 1
    writer.close()


def test_a_segment_filled_after_its_directory_was_removed_is_rescued_before_the_next_one(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "spool"
    record = len(encode_record(_message(0), 0.0))
    writer = RelayWriter(DiskSpool(directory), {}, start_relay=False, segment_bytes=3 * record)
    writer.append(_message(0))
    writer.check()
    shutil.rmtree(directory)
    for number in range(1, 6):  # the removed segment fills at 3 and the next one is made at 4
        assert writer.append(_message(number))
    assert _keys_in(directory) == ["k1", "k2", "k3", "k4", "k5"]
    writer.close()


def test_an_unwritable_directory_falls_back_to_the_in_process_worker_and_says_so_once(
    server: LocalServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    client = fa.Client(
        API_KEY,
        WORKSPACE,
        host=server.url,
        spool_dir=blocker / "spool",
        delivery="relay",
        flush_interval=0.05,
    )
    try:
        with caplog.at_level(logging.WARNING, logger="flameup_analytics"):
            for number in range(5):
                client.track("u", "e", idempotency_key=f"f{number}")
            assert client.flush(timeout=10)
        assert set(_delivered_keys(server)) == {f"f{n}" for n in range(5)}
        assert client.relay.stats().fallbacks == 5  # type: ignore[union-attr]
        assert sum("relay mode cannot write" in r.getMessage() for r in caplog.records) == 1
    finally:
        client.shutdown()


def test_at_the_spool_cap_messages_go_to_the_in_process_worker_and_none_is_lost(
    server: LocalServer, tmp_path: Path
) -> None:
    directory = tmp_path / "spool"
    client = fa.Client(
        API_KEY, WORKSPACE, host=server.url, spool_dir=directory, delivery="relay", max_spool_bytes=600
    )
    try:
        for number in range(20):
            client.track("u", "e", idempotency_key=f"cap{number}")
        assert client.flush(timeout=30)
        assert {f"cap{n}" for n in range(20)} <= set(_delivered_keys(server))
        stats = client.relay.stats()  # type: ignore[union-attr]
        assert stats.written >= 1 and stats.fallbacks >= 1 and stats.written + stats.fallbacks == 20
    finally:
        client.shutdown()
        _stop_relays(directory)


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"delivery": "sidecar"}, "delivery"),
        ({"delivery": "relay", "sync_mode": True}, "delivery"),
        ({"delivery": "relay", "spool_dir": False}, "spool_dir"),
        ({"delivery": "relay", "fsync": "sometimes"}, "fsync"),
        ({"delivery": "relay", "fsync": True}, "fsync"),
        ({"fsync": "always"}, "fsync"),  # the in-process mode has no per-call append to sync
        ({"delivery": "in_process", "fsync": "interval"}, "fsync"),
    ],
)
def test_unusable_relay_options_are_refused_naming_the_option(
    options: dict[str, object], option: str
) -> None:
    with pytest.raises(fa.ConfigurationError) as raised:
        fa.Client(API_KEY, WORKSPACE, **options)  # type: ignore[arg-type]
    assert raised.value.option == option


# --- fsync ------------------------------------------------------------------------------------------------


class _Syncs:
    """``os.fsync``, observed: for each call, the calling thread and the inode and size synced."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[int, int, int]] = []
        real = os.fsync

        def fsync(fd: int) -> None:
            synced = os.fstat(fd)
            self.calls.append((threading.get_ident(), synced.st_ino, synced.st_size))
            real(fd)

        monkeypatch.setattr(os, "fsync", fsync)

    def of(self, path: Path, *, by_this_thread: bool | None = None) -> list[int]:
        """The sizes ``path`` had at each of its syncs (made by this thread, or by others)."""
        inode, me = path.stat().st_ino, threading.get_ident()
        return [
            size
            for thread, synced, size in self.calls
            if synced == inode and (by_this_thread is None or (thread == me) == by_this_thread)
        ]


def _only_segment(directory: Path) -> Path:
    (segment,) = DiskSpool(directory).segments()
    return segment


def test_fsync_always_syncs_each_append_in_the_callers_thread_and_a_new_segments_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    syncs = _Syncs(monkeypatch)
    writer = RelayWriter(DiskSpool(tmp_path), {}, fsync="always", start_relay=False)
    for number in range(5):
        writer.append(_message(number))
    segment = _only_segment(tmp_path)
    ends = [record.end for record in appended(segment.read_bytes(), 0)[0]]
    assert syncs.of(segment, by_this_thread=True) == ends, "one sync per append, each after its write"
    assert len(syncs.of(tmp_path, by_this_thread=True)) == 1
    writer.close()


def test_fsync_interval_syncs_off_the_callers_thread_and_only_what_was_written_since_the_last_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    syncs = _Syncs(monkeypatch)
    writer = RelayWriter(DiskSpool(tmp_path), {}, fsync="interval", start_relay=False)
    for number in range(200):
        writer.append(_message(number))
    segment = _only_segment(tmp_path)
    size = segment.stat().st_size
    # The checker thread syncs what was written, and the directory that got a new segment.
    assert wait_until(lambda: size in syncs.of(segment))
    assert syncs.of(tmp_path)
    assert syncs.of(segment, by_this_thread=True) == [], "never a sync in the caller's thread"

    def checks_sync_nothing_more() -> None:
        # A check claims the appends counted when it starts, and syncs what the file holds when
        # it gets there: one that overlapped the last appends leaves them to the next check.
        writer.check()
        synced = len(syncs.of(segment))
        writer.check()
        writer.check()
        assert len(syncs.of(segment)) == synced, "nothing written since: nothing synced"

    checks_sync_nothing_more()
    writer.append(_message(200))
    assert wait_until(lambda: segment.stat().st_size in syncs.of(segment)), "a later append is synced too"
    checks_sync_nothing_more()
    writer.close()


@pytest.mark.parametrize("fsync", ["never", "interval", "always"])
def test_closing_seals_the_segment_durably_unless_fsync_is_never(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsync: Fsync
) -> None:
    syncs = _Syncs(monkeypatch)
    writer = RelayWriter(DiskSpool(tmp_path), {}, fsync=fsync, start_relay=False)
    for number in range(3):
        writer.append(_message(number))
    segment = _only_segment(tmp_path)
    writer.close()
    if fsync == "never":
        assert syncs.calls == []
    else:
        assert syncs.of(segment)[-1] == segment.stat().st_size


def test_a_client_passes_fsync_to_its_relay_writer(
    server: LocalServer, relay_in_thread: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    syncs = _Syncs(monkeypatch)
    client = fa.Client(
        API_KEY,
        WORKSPACE,
        host=server.url,
        spool_dir=relay_in_thread.directory,
        delivery="relay",
        fsync="always",
    )
    try:
        for number in range(3):
            client.track("u", "e", idempotency_key=f"s{number}")
        segment = _only_segment(relay_in_thread.directory)
        assert len(syncs.of(segment, by_this_thread=True)) == 3
        assert client.flush(timeout=20)
    finally:
        client.shutdown()


# --- stats -----------------------------------------------------------------------------------------------


def test_stats_show_the_relays_counters_beside_the_process_own(
    server: LocalServer, relay_in_thread: Relay
) -> None:
    server.add_fault(Fault(status=422, times=2, kind="track"))
    client = _relay_client(server, relay_in_thread.directory)
    try:
        for number in range(20):
            client.track("u", "e", {"n": number}, idempotency_key=f"st{number}")
        assert client.flush(timeout=20)

        def relay_counted() -> bool:
            relay = client.stats().relay
            assert relay is not None
            return (relay.delivered, relay.rejected, relay.backlog_records) == (18, 2, 0)

        assert wait_until(relay_counted)  # the relay rewrites its status every second
        stats = client.stats()
        assert stats.relay is not None
        assert (stats.relay.written, stats.relay.fallbacks, stats.relay.relays_started) == (20, 0, 0)
        assert stats.relay.pid == os.getpid()  # the relay runs in a thread of this test
        assert stats.relay.concurrency >= 1 and stats.relay.updated is not None
        assert stats.relay.last_error is not None and "422" in stats.relay.last_error
        assert stats.relay.last_error_at is not None
        # The process's own counters keep their meaning: its worker handled nothing.
        assert (stats.enqueued, stats.delivered, stats.rejected) == (0, 0, 0)
    finally:
        client.shutdown()


def test_stats_without_a_relay_running_say_so_and_the_in_process_mode_has_none(tmp_path: Path) -> None:
    writer = _writer(tmp_path)
    writer.append(_message(1))
    stats = writer.stats()
    assert stats.written == 1 and stats.pid is None and stats.updated is None and stats.delivered == 0
    writer.close()
    client = fa.Client(API_KEY, WORKSPACE, spool_dir=tmp_path / "other")
    try:
        assert client.stats().relay is None
    finally:
        client.shutdown()


def test_a_capture_takes_a_relay_mode_clients_messages_and_a_shut_down_one_spools_them(
    server: LocalServer, tmp_path: Path
) -> None:
    directory = tmp_path / "spool"
    client = _relay_client(server, directory)
    with capture() as captured:
        client.track("u1", "captured")
    client.shutdown(timeout=1)
    client.track("u1", "after_shutdown")
    assert [track.event for track in captured.tracks()] == ["captured"]
    # Closed: not appended by the writer but handed to the spool, as in the in-process mode.
    assert client.relay.stats().written == 0  # type: ignore[union-attr]
    assert client.stats().spooled == 1


# --- real processes, killed -----------------------------------------------------------------------------

_HOST = textwrap.dedent(
    """
    import os, sys, time
    import flameup_analytics as fa
    directory, host, prefix, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    client = fa.Client({api_key!r}, {workspace!r}, host=host, spool_dir=directory, delivery="relay")
    count = int(sys.argv[5])
    pause = float(sys.argv[6])

    def track(thread):
        for number in range(count):
            key = f"{{prefix}}-{{thread}}-{{number}}"
            client.track(f"user{{number % 13}}", "e", {{"n": number}}, idempotency_key=key)
            os.write(1, key.encode() + b"\\n")  # after track() returned: it must be delivered
            if pause:
                time.sleep(pause)

    import threading
    workers = [threading.Thread(target=track, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    """
).format(api_key=API_KEY, workspace=WORKSPACE)


def _host(
    directory: Path,
    server: LocalServer,
    prefix: str,
    *,
    threads: int = 1,
    count: int = 300,
    pause: float = 0.0,
) -> subprocess.Popen[bytes]:
    """A process tracking ``count`` events per thread into ``directory`` in relay mode, printing
    each key once its track() returned."""
    command = [
        sys.executable,
        "-c",
        _HOST,
        str(directory),
        server.url,
        prefix,
        str(threads),
        str(count),
        str(pause),
    ]
    return subprocess.Popen(command, stdout=subprocess.PIPE)


def _returned_keys(output: bytes) -> set[str]:
    # The last line may be cut by the kill: only whole lines were returned by track() for sure.
    return {line.decode() for line in output.split(b"\n")[:-1]}


def test_a_host_sigkilled_at_random_moments_loses_no_event_whose_track_returned(
    server: LocalServer, relay_in_thread: Relay
) -> None:
    randomness = random.Random(12)
    returned: set[str] = set()
    for trial in range(6):
        host = _host(relay_in_thread.directory, server, f"t{trial}", count=400, pause=0.0005)
        assert host.stdout is not None
        # Kill it once it tracked a random number of events (reading its output as it goes).
        first = host.stdout.read1(1)  # type: ignore[attr-defined]
        threading.Event().wait(randomness.uniform(0.0, 0.3))
        host.kill()
        output = first + host.stdout.read()
        host.wait()
        returned |= _returned_keys(output)
    assert len(returned) > 6
    assert wait_until(lambda: returned <= set(_delivered_keys(server)), 30), returned - set(
        _delivered_keys(server)
    )
    assert wait_until(lambda: not DiskSpool(relay_in_thread.directory).segments(), 15)


def test_a_relay_sigkilled_at_random_moments_loses_nothing_and_duplicates_only_what_was_in_flight(
    server: LocalServer, tmp_path: Path
) -> None:
    directory = tmp_path / "spool"
    server.latency = 0.01  # so that requests are in flight when the relay dies
    relay_command = [sys.executable, "-m", "flameup_analytics", "relay", "--dir", str(directory)]
    relay_command += ["--api-key", API_KEY, "--workspace-id", WORKSPACE, "--host", server.url]
    first = subprocess.Popen(relay_command, stderr=subprocess.DEVNULL)
    assert wait_until(lambda: relay_pid(directory) == first.pid, 15)
    host = _host(directory, server, "r", threads=2, count=1000, pause=0.004)
    randomness = random.Random(7)
    kills = 0
    # Each relay killed is replaced by the host's client (its periodic check).
    while host.poll() is None:
        threading.Event().wait(randomness.uniform(0.05, 0.3))
        pid = relay_pid(directory)
        if pid:
            os.kill(pid, signal.SIGKILL)
            kills += 1
    first.wait()
    assert host.stdout is not None
    returned = _returned_keys(host.stdout.read())
    assert len(returned) == 2000 and kills >= 2
    last = subprocess.Popen(relay_command, stderr=subprocess.DEVNULL)  # stands down if one runs
    try:
        assert wait_until(lambda: returned <= set(_delivered_keys(server)), 60)
    finally:
        _stop_relays(directory)
        last.wait(15)
    # Sent again: what was in flight, or delivered but not yet acked, when a relay died.
    duplicated = sum(count - 1 for count in _delivered_keys(server).values())
    assert duplicated <= kills * (IN_FLIGHT_WINDOW)


def test_several_processes_and_threads_into_one_directory_with_one_relay_lose_nothing(
    server: LocalServer, relay_in_thread: Relay
) -> None:
    hosts = [_host(relay_in_thread.directory, server, f"p{p}", threads=3, count=100) for p in range(4)]
    returned: set[str] = set()
    for host in hosts:
        output, _ = host.communicate(timeout=60)
        assert host.returncode == 0
        returned |= _returned_keys(output)
    assert len(returned) == 4 * 3 * 100
    assert wait_until(lambda: returned <= set(_delivered_keys(server)), 60)
    assert relay_pid(relay_in_thread.directory) == os.getpid(), "no other relay was started"


def test_a_forked_child_writes_its_own_segments_and_both_flush(server: LocalServer, tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    client = _relay_client(server, directory)
    try:
        client.track("u", "e", idempotency_key="parent-before")
        child = os.fork()
        if child == 0:  # the child: what a pre-forked gunicorn worker does
            client.track("u", "e", idempotency_key="child")
            os._exit(0 if client.flush(timeout=30) else 1)
        client.track("u", "e", idempotency_key="parent-after")
        assert os.waitpid(child, 0)[1] == 0
        assert client.flush(timeout=30)
        assert {"parent-before", "child", "parent-after"} <= set(_delivered_keys(server))
        # The parent's segment (still held by it, so still there) has nothing of the child's.
        parents = [appended(path.read_bytes(), 0)[0] for path in DiskSpool(directory).segments()]
        keys = [{record.message.key for record in records} for records in parents]
        assert [found for found in keys if "parent-before" in found] == [{"parent-before", "parent-after"}]
    finally:
        client.shutdown()
        _stop_relays(directory)


_ORDERED_HOST = textwrap.dedent(
    """
    import sys, threading
    import flameup_analytics as fa
    directory, host, process, ordering = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    threads, count, users = int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
    client = fa.Client(
        {api_key!r}, {workspace!r}, host=host, spool_dir=directory, delivery="relay", ordering=ordering
    )

    def run(thread):
        # Each user's messages come from one thread, so their call order is defined; every
        # fifth message of a user is an identify.
        for number in range(count):
            user, sequence = f"p{{process}}-t{{thread}}-u{{number % users}}", number // users
            if sequence % 5 == 2:
                client.identify(user, {{"seq": sequence}})
            else:
                client.track(user, "e", {{"seq": sequence}})

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    client.shutdown()
    """
).format(api_key=API_KEY, workspace=WORKSPACE)


def _arrivals_by_user(server: LocalServer) -> dict[str, list[tuple[str, int]]]:
    """Each user's accepted messages as (kind, sequence), in the order the server received them."""
    arrivals: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
    for request in server.accepted:
        body = request.json
        if request.kind == "track":
            arrivals[body["external_id"]].append(("track", body["parameters"]["seq"]))
        else:
            arrivals[body["userId"]].append(("identify", body["traits"]["seq"]))
    return arrivals


def _in_relaxed_order(arrived: list[tuple[str, int]]) -> bool:
    """An identify never crosses its user's other messages: all those called before it arrived
    before it, all those called after it arrived after it (tracks between two may overlap)."""
    position = {sequence: index for index, (_, sequence) in enumerate(arrived)}
    return all(
        all(
            (position[other] < position[sequence]) == (other < sequence)
            for other in position
            if other != sequence
        )
        for kind, sequence in arrived
        if kind == "identify"
    )


@pytest.mark.parametrize("ordering", ["relaxed", "strict"])
def test_8_processes_of_4_threads_into_one_directory_with_one_relay_lose_nothing_and_keep_per_user_order(
    server: LocalServer, tmp_path: Path, ordering: Ordering
) -> None:
    processes, threads, count, users = 8, 4, 50, 5
    directory = tmp_path / "spool"
    with _running_relay(server, directory, ordering) as relay:
        sizes = [str(threads), str(count), str(users)]
        hosts = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _ORDERED_HOST,
                    str(directory),
                    server.url,
                    str(process),
                    ordering,
                    *sizes,
                ]
            )
            for process in range(processes)
        ]
        for host in hosts:
            assert host.wait(60) == 0
        total = processes * threads * count
        assert wait_until(lambda: len(server.accepted) >= total, 60), len(server.accepted)
        assert wait_until(lambda: not DiskSpool(directory).segments(), 10), "every segment delivered, deleted"
        assert relay_pid(relay.directory) == os.getpid(), "no other relay was started"
    assert len(server.accepted) == total and len(server.requests) == total, "each once, none refused"
    arrivals = _arrivals_by_user(server)
    assert len(arrivals) == processes * threads * users
    for user, arrived in arrivals.items():
        assert sorted(sequence for _, sequence in arrived) == list(range(count // users)), user
        if ordering == "strict":
            assert [sequence for _, sequence in arrived] == list(range(count // users)), user
        else:
            assert _in_relaxed_order(arrived), (user, arrived)
