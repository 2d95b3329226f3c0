"""The spool in use: real files, a real server, real processes (killed ones included)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

import flameup_analytics as fa
from flameup_analytics.message import Message
from flameup_analytics.spool import DiskSpool, default_directories, summarize
from flameup_analytics.testing import Fault, LocalServer

from .conftest import API_KEY, WORKSPACE, ClientFactory, settled_short_of_the_api


def numbers(server: LocalServer) -> list[int]:
    return sorted(r.json["parameters"]["n"] for r in server.tracks())


def spawn(server: LocalServer, spool: Path, body: str) -> subprocess.Popen[str]:
    script = textwrap.dedent(
        f"""
        import sys
        import flameup_analytics as fa
        client = fa.Client(api_key={API_KEY!r}, workspace_id={WORKSPACE!r}, host={server.url!r},
                           spool_dir={str(spool)!r}, flush_interval=0.05, shutdown_timeout=0.5,
                           retry=fa.RetryPolicy(max_retries=1, backoff_factor=0.01))
        """
    ) + textwrap.dedent(body)
    return subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> str:
    """End a spawned process by closing its stdin (the scripts wait on it) and check its exit."""
    stdout, stderr = process.communicate(input="", timeout=60)
    assert process.returncode == 0, stderr
    return stdout


def test_a_full_queue_spills_to_disk_and_is_replayed(
    server: LocalServer, make_client: ClientFactory, tmp_path: Path
) -> None:
    server.latency = 0.3
    client = make_client(max_queue_size=5, flush_at=5, max_concurrency=2, spool_dir=tmp_path / "spool")
    for n in range(40):
        client.track("user_1", "clicked", {"n": n})
    # Five wait in memory, at most two are in flight: the rest spilled to disk in this thread.
    assert client.stats().spooled >= 40 - 5 - 2
    server.latency = 0.0
    assert server.wait_for(40, timeout=30, kind="track")
    assert numbers(server) == list(range(40))
    assert settled_short_of_the_api(client)
    stats = client.stats()
    assert stats.replayed == stats.spooled >= 40 - 5 - 2
    assert stats.enqueued + stats.replayed == stats.delivered + stats.spooled + stats.queued


def test_an_outage_longer_than_the_retry_budget_is_recovered(
    server: LocalServer, make_client: ClientFactory, tmp_path: Path
) -> None:
    outage = server.add_fault(Fault(status=503, times=None))
    client = make_client(max_retries=1, spool_dir=tmp_path / "spool", ordering="strict")
    for n in range(10):
        client.track(f"user_{n % 3}", "clicked", {"n": n})
    assert settled_short_of_the_api(client, timeout=10)
    # Each user's first message used its budget; those behind it were spooled with it, untried.
    assert client.stats().spooled == 10 and outage.hits == 3 * 2
    server.clear_faults()
    client.track("user_9", "clicked", {"n": 10})  # the API answers again: replay follows
    assert server.wait_for(11, timeout=30, kind="track")
    assert numbers(server) == list(range(11))
    replayed = [r for r in server.tracks() if r.json["parameters"]["n"] < 10]
    for user in ("user_0", "user_1", "user_2"):
        mine = [r.json["parameters"]["n"] for r in replayed if r.json["external_id"] == user]
        assert mine == sorted(mine)  # replay keeps each user's order
    # The original timestamps and idempotency keys survive the disk.
    assert len({r.idempotency_key for r in server.requests}) == 11


def test_exit_during_an_outage_then_the_next_process_delivers_everything(
    server: LocalServer, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    server.add_fault(Fault(status=503, times=None))
    first = spawn(
        server,
        spool,
        """
        for n in range(30):
            client.track(f"user_{n % 4}", "clicked", {"n": n})
        """,
    )
    finish(first)
    keys_seen_in_outage = {r.idempotency_key for r in server.requests}
    assert summarize(spool).messages == 30
    server.clear_faults()
    second = spawn(server, spool, "sys.stdin.read()\n")  # replays on start, in the background
    try:
        assert server.wait_for(30, timeout=30, kind="track")
    finally:
        finish(second)
    assert numbers(server) == list(range(30))
    # A message tried during the outage arrives with the key it had then, across disk and process.
    assert keys_seen_in_outage <= {r.idempotency_key for r in server.tracks()}
    assert summarize(spool).messages == 0


def test_messages_spilled_before_a_sigkill_are_recovered(server: LocalServer, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    server.add_fault(Fault(action="hang", times=None))
    doomed = spawn(
        server,
        spool,
        """
        client.max_queue_size = 1
        client._queue._max_size = 1
        for n in range(50):
            client.track("user_1", "clicked", {"n": n})
        print(client.stats().spooled, flush=True)
        sys.stdin.read()
        """,
    )
    assert doomed.stdout is not None
    spooled = int(doomed.stdout.readline())
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(timeout=30)
    assert spooled >= 45
    server.clear_faults()
    server.release_hung()
    client = fa.Client(api_key=API_KEY, host=server.url, spool_dir=spool, flush_interval=0.05)
    try:
        assert server.wait_for(spooled, timeout=30, kind="track")
    finally:
        client.shutdown()
    assert len(set(numbers(server))) == len(numbers(server)) >= spooled
    assert client.stats().replayed >= spooled


def test_two_processes_on_one_directory_send_nothing_twice(server: LocalServer, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    writer = DiskSpool(spool_dir, segment_bytes=2000)
    for n in range(400):
        body = json.dumps(
            {
                "external_id": f"user_{n % 9}",
                "event": "e",
                "parameters": {"n": n},
                "timestamp": "2026-01-01T00:00:00.000Z",
            }
        ).encode()
        writer.store([Message("track", f"user_{n % 9}", body, f"key-{n}")])
    writer.close()
    assert len(writer.segments()) > 10
    processes = [spawn(server, spool_dir, "sys.stdin.read()\n") for _ in range(2)]
    try:
        assert server.wait_for(400, timeout=60, kind="track")
    finally:
        for process in processes:
            finish(process)
    assert numbers(server) == list(range(400))
    assert len({r.idempotency_key for r in server.tracks()}) == 400


def test_corrupt_records_are_skipped_and_counted(
    server: LocalServer, make_client: ClientFactory, tmp_path: Path
) -> None:
    spool_dir = tmp_path / "spool"
    writer = DiskSpool(spool_dir)
    good = [
        Message("track", "u", b'{"external_id":"u","event":"e","parameters":{"n":%d}}' % n, f"k{n}")
        for n in range(3)
    ]
    writer.store(good)
    writer.close()
    (segment,) = writer.segments()
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a bit flip in the middle record
    segment.write_bytes(bytes(data) + b"\xf1\x5e\x00")  # and a torn tail
    (spool_dir / "0000-garbage.seg").write_bytes(b"\x00" * 100)
    client = make_client(spool_dir=spool_dir)
    assert client.replay_spool(timeout=30)
    assert numbers(server) == [0, 2]
    assert client.stats().corrupt == 3
    assert summarize(spool_dir).segments == 0


def test_the_cap_drops_the_newest_with_one_warning(
    server: LocalServer, make_client: ClientFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.add_fault(Fault(action="hang", times=None))
    client = make_client(
        max_queue_size=1, flush_at=1, max_concurrency=1, spool_dir=tmp_path / "spool", max_spool_bytes=2000
    )
    with caplog.at_level(logging.WARNING, logger="flameup_analytics"):
        for n in range(100):
            client.track("user_1", "clicked", {"n": n})
    stats = client.stats()
    assert stats.spooled > 5 and stats.dropped > 50
    assert stats.spooled + stats.dropped + stats.queued == 100
    assert len([r for r in caplog.records if "the spool is full" in r.message]) == 1
    server.release_hung()


def test_disk_errors_never_reach_the_caller(
    server: LocalServer, make_client: ClientFactory, tmp_path: Path
) -> None:
    server.add_fault(Fault(action="hang", times=None))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    client = make_client(max_queue_size=1, flush_at=1, max_concurrency=1, spool_dir=blocker / "spool")
    client.track("user_1", "clicked", {"n": 0})
    assert server.wait_for(1, timeout=10, accepted=False)  # the worker is stuck on it
    for n in range(1, 10):
        client.track("user_1", "clicked", {"n": n})  # one fills the queue, eight cannot spill
    assert client.stats().dropped == 8
    os.unlink(blocker)  # the fault clears: spilling resumes
    client.track("user_1", "clicked", {"n": 10})
    assert client.stats().spooled == 1
    server.release_hung()


def test_spool_dir_false_turns_the_spool_off(make_client: ClientFactory, tmp_path: Path) -> None:
    client = make_client(spool_dir=False)
    client.shutdown()
    client.track("user_1", "clicked")
    assert client.stats().dropped == 1
    assert not (tmp_path / "cache").exists()


def test_the_default_directory_is_under_the_user_cache(make_client: ClientFactory, tmp_path: Path) -> None:
    client = make_client()
    client.track("user_1", "delivered")
    assert client.flush(timeout=5)
    assert not (tmp_path / "cache").exists()  # nothing is made on disk until something is spooled
    client.shutdown()
    client.track("user_1", "clicked")  # after shutdown: straight to the spool
    (directory,) = (tmp_path / "cache" / "flameup-analytics").iterdir()
    assert len(directory.name) == 12
    assert summarize(directory).messages == 1


def test_where_home_is_not_writable_the_spool_falls_back_to_the_temp_directory(
    make_client: ClientFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    read_only_home = tmp_path / "home-is-a-file"
    read_only_home.write_text("as on AWS Lambda, the cache directory cannot be made")
    monkeypatch.setenv("XDG_CACHE_HOME", str(read_only_home / "cache"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    client = make_client()
    client.shutdown()
    client.track("user_1", "clicked")
    assert client.stats().spooled == 1
    (directory,) = (tmp_path / "tmp" / "flameup-analytics").iterdir()
    assert summarize(directory).messages == 1
    # The next process finds it there, though the cache directory still cannot be made.
    assert DiskSpool(default_directories(client.host, client.workspace_id)).directory == directory
