"""Delivery at the edges (issue 8): replay against a failing API, the spool's cap, idle workers,
deadlines of sync mode and flush_after, the concurrency bound, exit with several clients, warnings.

Real local server, real files and processes; MockTransport where the behaviour is a count.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time

import flameup_analytics as fa
from flameup_analytics import lifecycle
from flameup_analytics.errors import DeliveryError
from flameup_analytics.ledger import Ledger
from flameup_analytics.message import Message, Queued
from flameup_analytics.spool import DiskSpool, NoSpool, summarize
from flameup_analytics.testing import Fault, LocalServer

from .conftest import API_KEY, WORKSPACE, ClientFactory, settled_short_of_the_api, wait_until


def track_body(user: str, n: int, timestamp: str = "2026-01-01T00:00:00.000Z") -> bytes:
    return json.dumps(
        {"external_id": user, "event": "e", "parameters": {"n": n}, "timestamp": timestamp}
    ).encode()


def fill_spool(directory: Path, count: int, users: int = 3, **options: Any) -> DiskSpool:
    """Leave ``count`` messages in a spool directory, as an earlier process would have."""
    spool = DiskSpool(directory, **options)
    for n in range(count):
        user = f"user_{n % users}"
        assert spool.store([Message("track", user, track_body(user, n), f"key-{n}")]) == 1
    spool.close()
    return spool


def numbers(server: LocalServer) -> list[int]:
    return [request.json["parameters"]["n"] for request in server.tracks()]


# --- replay against a failing API (items 1 and 7) -------------------------------------------------


def test_a_failing_replay_at_the_cap_keeps_everything_on_disk(
    server: LocalServer, make_client: ClientFactory, tmp_path: Path
) -> None:
    directory = tmp_path / "spool"
    # An earlier process filled the spool to its cap during an outage.
    first = make_client(spool_dir=directory, max_spool_bytes=4000, max_retries=0)
    server.add_fault(Fault(status=503, times=None))
    for n in range(60):
        first.track(f"user_{n % 3}", "clicked", {"n": n})
    assert settled_short_of_the_api(first)
    first.shutdown()
    kept = summarize(directory).messages
    assert first.stats().dropped > 0 and kept == first.stats().spooled > 10

    # The API is back but fails again during the replay: nothing on disk may be lost.
    second = make_client(spool_dir=directory, max_spool_bytes=4000, max_retries=0)
    assert second.replay_spool(timeout=5) is False
    stats = second.stats()
    assert stats.dropped == 0
    assert stats.replayed == stats.spooled  # every replayed one is still spooled: left in place
    assert summarize(directory).messages == kept

    server.clear_faults()
    assert second.replay_spool(timeout=10) is True
    delivered = set(numbers(server))
    assert len(delivered) == kept  # every one, after the failed replay as after none
    assert summarize(directory).messages == 0


@pytest.mark.parametrize("status", [503, 401])
def test_replay_against_a_failing_api_is_no_request_storm(
    server: LocalServer, make_client: ClientFactory, tmp_path: Path, status: int
) -> None:
    directory = tmp_path / "spool"
    fill_spool(directory, 4)
    server.add_fault(Fault(status=status, times=None))
    client = make_client(spool_dir=directory, max_retries=2)
    assert client.replay_spool(timeout=3) is False
    # At most each spooled message with its retry budget, once; the old replay looped passes
    # until its deadline, about 1,700 requests a second.
    assert len(server.requests) <= 4 * 3
    assert summarize(directory).messages == 4
    assert client.stats().dropped == 0


def test_replay_starts_when_the_api_recovers_not_at_the_next_timer(
    server: LocalServer, make_client: ClientFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "spool"
    fill_spool(directory, 5)
    # Waits at their ceiling, no jitter: after the failed start-up pass the next one is due in
    # 30 s (the replay interval caps the backoff), far beyond this test's deadline.
    monkeypatch.setattr("backoff.full_jitter", lambda value: value)
    outage = server.add_fault(Fault(status=503, times=1))
    client = make_client(
        spool_dir=directory, max_retries=0, retry=fa.RetryPolicy(max_retries=0, backoff_factor=60)
    )
    assert wait_until(lambda: outage.hits == 1)
    assert wait_until(lambda: client.stats().spooled >= 1)  # the start-up pass failed
    client.track("user_live", "clicked", {"n": 100})  # delivered: the API answers again
    # (Records delivered during the failed pass were not acked behind the failed one: they may
    # come twice, which their idempotency keys make harmless.)
    assert wait_until(lambda: set(numbers(server)) == {0, 1, 2, 3, 4, 100}, timeout=10)


def test_a_replay_cut_short_by_a_kill_resumes_after_its_ack(server: LocalServer, tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    fill_spool(directory, 60, users=60)
    server.latency = 0.02
    script = textwrap.dedent(
        f"""
        import sys
        import flameup_analytics as fa
        client = fa.Client(api_key={API_KEY!r}, workspace_id={WORKSPACE!r}, host={server.url!r},
                           spool_dir={str(directory)!r}, flush_at=10, max_concurrency=2)
        sys.stdin.read()
        """
    )
    replayer = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE)
    try:
        assert server.wait_for(11, timeout=30, kind="track")  # one chunk of 10 acked, at least
    finally:
        replayer.send_signal(signal.SIGKILL)
        replayer.wait(timeout=30)
    delivered_before = len(server.tracks())
    server.latency = 0.0
    resumed = fa.Client(api_key=API_KEY, host=server.url, spool_dir=directory, flush_at=10)
    try:
        assert resumed.replay_spool(timeout=20)
    finally:
        resumed.shutdown()
    assert set(numbers(server)) == set(range(60))
    duplicates = len(server.tracks()) - 60
    # Only the chunk in flight at the kill is sent again; without acks all of the first ones were.
    assert duplicates <= 10 < delivered_before


def test_the_worker_keeps_replaying_past_its_idle_timeout_while_the_spool_holds_messages(
    server: LocalServer, make_client: ClientFactory, tmp_path: Path
) -> None:
    directory = tmp_path / "spool"
    fill_spool(directory, 2)
    outage = server.add_fault(Fault(status=503, times=None))
    client = make_client(spool_dir=directory, max_retries=0, worker_idle_timeout=0.1)
    # Failed passes go on (each after a short backoff) well past the idle timeout...
    assert wait_until(lambda: outage.hits >= 10, timeout=20)
    server.clear_faults()
    # ...so when the API is back, the spool empties with no new call to start a worker.
    assert server.wait_for(2, timeout=10, kind="track")
    assert client._worker is not None


def test_timestamps_and_keys_survive_the_disk(
    server: LocalServer, make_client: ClientFactory, tmp_path: Path
) -> None:
    import datetime as dt

    directory = tmp_path / "spool"
    server.add_fault(Fault(status=503, times=None))
    first = make_client(spool_dir=directory, max_retries=0, ordering="strict")
    when = dt.datetime(2024, 2, 29, 12, 30, 15, 250000, tzinfo=dt.timezone.utc)
    first.track("user_1", "clicked", {"n": 1}, timestamp=when)
    first.track("user_1", "clicked", {"n": 2})
    assert settled_short_of_the_api(first)
    first.shutdown()
    (tried,) = server.requests  # the first was tried; the one behind it was spooled untried
    called_before = dt.datetime.now(dt.timezone.utc)
    server.clear_faults()
    second = make_client(spool_dir=directory)
    assert second.replay_spool(timeout=5)
    # By their parameters: one user's tracks may be replayed together (ordering="relaxed").
    first_replayed, second_replayed = sorted(server.tracks(), key=lambda r: r.json["parameters"]["n"])
    assert first_replayed.json["timestamp"] == "2024-02-29T12:30:15.250Z"
    assert first_replayed.idempotency_key == tried.idempotency_key
    stamped = dt.datetime.fromisoformat(second_replayed.json["timestamp"].replace("Z", "+00:00"))
    assert stamped <= called_before  # the time of the call, not of the replay


def test_live_traffic_goes_before_the_rest_of_a_replay(
    server: LocalServer, make_client: ClientFactory, tmp_path: Path
) -> None:
    directory = tmp_path / "spool"
    fill_spool(directory, 200, users=1)
    server.latency = 0.01
    client = make_client(spool_dir=directory, flush_at=10, max_concurrency=1)
    assert server.wait_for(5, timeout=10, kind="track")  # the start-up replay is under way
    for n in range(1000, 1010):
        client.track("user_live", "clicked", {"n": n})
    assert server.wait_for(210, timeout=30, kind="track")
    order = numbers(server)
    last_live = max(order.index(n) for n in range(1000, 1010))
    assert last_live < order.index(199)  # live messages did not wait for the whole replay


def test_the_worker_replays_every_interval_without_a_trigger(server: LocalServer, tmp_path: Path) -> None:
    import inspect

    from flameup_analytics.connections import carrier_for
    from flameup_analytics.queue import MessageQueue
    from flameup_analytics.worker import Worker

    assert inspect.signature(Worker).parameters["replay_interval"].default == 30.0
    directory = tmp_path / "spool"
    client = fa.Client(api_key=API_KEY, host=server.url, spool_dir=directory, flush_interval=0.05)
    queue = MessageQueue(100, 10)
    worker = Worker(
        queue,
        Ledger(NoSpool(), None),
        carrier_for(fa.HTTPTransport(), queue.wakeup, 2),
        client._templates,
        retry=fa.RetryPolicy(),
        timeout=2.0,
        batch_size=10,
        flush_interval=0.05,
        max_concurrency=2,
        spool=DiskSpool(directory),
        replay_interval=0.2,
    )
    worker.start()
    try:
        # Segments written by another process after the worker's first look at the directory.
        fill_spool(directory, 3)
        assert server.wait_for(3, timeout=10, kind="track")
    finally:
        worker.stop()
        worker.join(5)
        client.shutdown()


# --- deadlines ------------------------------------------------------------------------------------


def test_sync_mode_never_retries_past_its_timeout(server: LocalServer, make_client: ClientFactory) -> None:
    server.add_fault(Fault(status=503, times=None))
    attempts: list[int] = []
    client = make_client(
        sync_mode=True,
        timeout=0.5,
        spool_dir=False,
        retry=fa.RetryPolicy(max_retries=1000, backoff_factor=0.02, max_backoff=0.02),
        on_outcome=lambda outcome: attempts.append(outcome.attempts),
    )
    client.track("user_1", "clicked")
    (made,) = attempts
    assert 1 <= made < 1001  # the deadline ended the retries, not the budget
    assert client.stats().dropped == 1


def test_flush_after_waits_no_longer_than_its_own_timeout(make_client: ClientFactory) -> None:
    client = make_client()
    asked: list[float] = []
    flush = client.flush

    def recording_flush(timeout: float = 10.0) -> bool:
        asked.append(timeout)
        return flush(timeout)

    client.flush = recording_flush  # type: ignore[method-assign]
    with client.flush_after(timeout=0.25):
        client.track("user_1", "clicked")

    @client.flush_after(timeout=0.75)
    def handler() -> None:
        client.track("user_1", "clicked")

    handler()
    assert asked == [0.25, 0.75]


def test_several_clients_at_exit_share_one_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    # A clock that only moves when a client "spends" the time it was given: the deadline
    # arithmetic is checked exactly, whatever the machine's load.
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    given: dict[float, float] = {}
    clients = []
    for shutdown_timeout in (0.3, 0.6, 0.9):
        client = fa.Client(
            api_key=API_KEY,
            transport=fa.MockTransport(lambda request: fa.Response(200)),
            spool_dir=False,
            shutdown_timeout=shutdown_timeout,
        )

        def spending(timeout: float | None = None, own: float = shutdown_timeout) -> None:
            given[own] = timeout or 0.0
            clock[0] += timeout or 0.0

        monkeypatch.setattr(client, "shutdown", spending)
        clients.append(client)
    lifecycle.shutdown_all()
    assert set(given) == {0.3, 0.6, 0.9}
    assert all(timeout <= own for own, timeout in given.items())  # never more than its own
    assert sum(given.values()) == pytest.approx(0.9)  # all of them within the longest, in all
    monkeypatch.undo()
    for client in clients:
        client.shutdown()


# --- concurrency and batches ----------------------------------------------------------------------


class ConcurrencyProbe:
    """A transport handler that holds each request briefly and records how many overlapped."""

    def __init__(self, hold: float = 0.02) -> None:
        self._lock = threading.Lock()
        self._hold = threading.Event()
        self._seconds = hold
        self.in_flight = 0
        self.most = 0
        self.order: list[int] = []

    def __call__(self, request: fa.Request) -> fa.Response:
        with self._lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        self._hold.wait(self._seconds)
        with self._lock:
            self.in_flight -= 1
            self.order.append(json.loads(request.body or b"{}")["parameters"]["n"])
        return fa.Response(200)


def test_no_more_than_max_concurrency_requests_are_in_flight() -> None:
    probe = ConcurrencyProbe()
    client = fa.Client(
        api_key=API_KEY, transport=fa.MockTransport(probe), spool_dir=False, max_concurrency=3, flush_at=50
    )
    for n in range(60):
        client.track(f"user_{n}", "clicked", {"n": n})
    assert client.flush(timeout=10)
    client.shutdown()
    assert probe.most == 3  # reached, never exceeded


def test_a_message_waiting_to_be_retried_keeps_its_slot() -> None:
    requests: list[int] = []
    failed_once = threading.Event()

    def handler(request: fa.Request) -> fa.Response:
        n = json.loads(request.body or b"{}")["parameters"]["n"]
        requests.append(n)
        if n == 0 and not failed_once.is_set():
            failed_once.set()
            return fa.Response(503)
        return fa.Response(200)

    client = fa.Client(
        api_key=API_KEY,
        transport=fa.MockTransport(handler),
        spool_dir=False,
        max_concurrency=1,
        retry=fa.RetryPolicy(backoff_factor=0.2, max_backoff=0.2),
    )
    for n in range(3):
        client.track(f"user_{n}", "clicked", {"n": n})
    assert client.flush(timeout=10)
    client.shutdown()
    # A sick API slows delivery down: nothing else went while 0 waited for its retry.
    assert requests == [0, 0, 1, 2]


def two_segments(directory: Path) -> None:
    """Messages 0-2 in one segment, 3-5 in the next, each of its own user."""
    spool = DiskSpool(directory, segment_bytes=1)  # each store fills a segment of its own
    for first in (0, 3):
        users = [f"user_{n}" for n in range(first, first + 3)]
        assert (
            spool.store([Message("track", u, track_body(u, int(u[5:])), f"key-{u[5:]}") for u in users]) == 3
        )
    spool.close()
    assert len(spool.segments()) == 2


def holding_the_first_segments_last_answer(status: int) -> tuple[fa.MockTransport, list[bool], list[int]]:
    """A transport that answers message 2 (with ``status``) only once the next segment began."""
    second_began = threading.Event()
    held_until_it_began: list[bool] = []
    delivered: list[int] = []

    def handler(request: fa.Request) -> fa.Response:
        n = json.loads(request.body or b"{}")["parameters"]["n"]
        if n >= 3:
            second_began.set()
        if n == 2:
            held_until_it_began.append(second_began.wait(10))
            if status != 200:
                return fa.Response(status)
        delivered.append(n)
        return fa.Response(200)

    return fa.MockTransport(handler), held_until_it_began, delivered


def test_the_next_segment_is_replayed_while_the_last_answers_of_one_come_back(tmp_path: Path) -> None:
    # One segment after the other, the API would sit one round trip idle between segments.
    two_segments(tmp_path)
    transport, held_until_it_began, delivered = holding_the_first_segments_last_answer(200)
    client = fa.Client(api_key=API_KEY, transport=transport, spool_dir=tmp_path)
    try:
        assert client.replay_spool(timeout=30)
    finally:
        client.shutdown()
    assert held_until_it_began == [True]
    assert sorted(delivered) == list(range(6)) and not DiskSpool(tmp_path).segments()


def test_a_failure_in_a_segment_finishing_beside_the_next_keeps_only_what_failed(tmp_path: Path) -> None:
    two_segments(tmp_path)
    transport, held_until_it_began, delivered = holding_the_first_segments_last_answer(503)
    client = fa.Client(
        api_key=API_KEY, transport=transport, spool_dir=tmp_path, retry=fa.RetryPolicy(max_retries=0)
    )
    try:
        assert not client.replay_spool(timeout=30)
    finally:
        client.shutdown()
    # Held until the next segment began. A success of that segment answered after the failure
    # may start one more pass at once (the API looks back), which sends message 2 again.
    assert held_until_it_began[0] is True and len(held_until_it_began) <= 2
    assert sorted(delivered) == [0, 1, 3, 4, 5]
    # The second segment was final and is gone; the first keeps message 2 alone, sent once more.
    assert len(DiskSpool(tmp_path).segments()) == 1
    delivered_later: list[int] = []

    def deliver(request: fa.Request) -> fa.Response:
        delivered_later.append(json.loads(request.body or b"{}")["parameters"]["n"])
        return fa.Response(200)

    client = fa.Client(api_key=API_KEY, transport=fa.MockTransport(deliver), spool_dir=tmp_path)
    try:
        assert client.replay_spool(timeout=30)
    finally:
        client.shutdown()
    assert delivered_later == [2] and not DiskSpool(tmp_path).segments()


# --- warnings at most once a minute -------------------------------------------------------------


def test_drop_and_rejection_warnings_come_at_most_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    ledger = Ledger(NoSpool(), None)
    message: Queued = ("track", "user_1", b"{}", "key-1")
    rejected = fa.Outcome(fa.Result.REJECTED, 1, fa.Response(404, body=b'{"error":{"message":"nope"}}'))
    rejected = fa.Outcome(rejected.result, 1, rejected.response, fa.APIError("nope", status=404))
    with freeze_time("2026-01-01 00:00:00") as clock, caplog.at_level(logging.WARNING, "flameup_analytics"):
        for _ in range(5):
            ledger.hand_on([message], DeliveryError("queue_full", "full"))
            ledger.record(message, rejected)
        assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
            "dropped 1 message(s): full",
            "the Flameup API rejected 1 message(s) for good",
        ]
        caplog.clear()
        clock.tick(61)
        ledger.hand_on([message], DeliveryError("queue_full", "full"))
        ledger.record(message, rejected)
        texts = [record.getMessage() for record in caplog.records]
    assert texts[0].startswith("dropped 1 message(s)")
    assert texts[1].startswith("the Flameup API rejected 5 message(s) for good (HTTP 404: nope)")
    assert "FLAMEUP_WORKSPACE_ID" in texts[1]


def test_a_rejection_is_never_silent(
    server: LocalServer, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client(workspace_id="ws_wrong")
    with caplog.at_level(logging.WARNING, "flameup_analytics"):
        client.identify("user_1", {"plan": "pro"})
        assert client.flush(timeout=5)  # it reached the API, which refused it
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "HTTP 404" in warning and "unknown workspace" in warning and "FLAMEUP_WORKSPACE_ID" in warning
    assert client.stats().rejected == 1


def test_an_outage_is_announced_once_with_where_the_messages_go(
    server: LocalServer, make_client: ClientFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outage = server.add_fault(Fault(status=503, times=None))
    client = make_client(spool_dir=tmp_path / "spool", max_retries=0)
    with caplog.at_level(logging.WARNING, "flameup_analytics"):
        for n in range(5):
            client.track(f"user_{n}", "clicked")
        assert settled_short_of_the_api(client)
        server.clear_faults()
        client.track("user_9", "clicked")
        assert client.flush(timeout=5)
    texts = [record.getMessage() for record in caplog.records]
    assert outage.hits == 5
    announced = [text for text in texts if "unreachable or failing" in text]
    assert len(announced) == 1 and str(tmp_path / "spool") in announced[0]
    assert "answers again" in texts[-1]


def test_flush_is_false_when_a_message_went_to_the_spool_and_true_again_after(
    server: LocalServer, make_client: ClientFactory, tmp_path: Path
) -> None:
    server.add_fault(Fault(status=503, times=1))
    client = make_client(spool_dir=tmp_path / "spool", max_retries=0)
    client.track("user_1", "clicked")
    assert client.flush(timeout=5) is False  # settled, but spooled: not "delivered"
    assert client.stats().spooled == 1
    client.track("user_2", "clicked")
    assert client.flush(timeout=5) is True  # everything since the last flush reached the API


def test_the_shutdown_warning_says_where_the_messages_went(
    server: LocalServer, make_client: ClientFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server.add_fault(Fault(action="hang", times=None))
    client = make_client(spool_dir=tmp_path / "spool", timeout=30)
    client.track("user_1", "clicked")
    assert server.wait_for(1, timeout=5, accepted=False)
    with caplog.at_level(logging.WARNING, "flameup_analytics"):
        client.shutdown(timeout=0.2)
    server.release_hung()
    (warning,) = [r.getMessage() for r in caplog.records if "shutdown deadline" in r.getMessage()]
    assert f"1 spooled to {tmp_path / 'spool'}" in warning

    dropping = make_client(spool_dir=False, timeout=30)
    dropping.track("user_1", "clicked")
    assert server.wait_for(2, timeout=5, accepted=False)
    with caplog.at_level(logging.WARNING, "flameup_analytics"):
        dropping.shutdown(timeout=0.2)
    server.release_hung()
    warning = [r.getMessage() for r in caplog.records if "shutdown deadline" in r.getMessage()][-1]
    assert "1 dropped (the disk spool is off" in warning


def test_segments_filled_by_callers_are_sealed_by_the_worker(
    server: LocalServer, make_client: ClientFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced_in: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced_in.append(threading.current_thread().name)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    server.latency = 0.3  # slow answers: the queue of one fills at once; the worker turns between them
    # One request in flight at a time: the others stay in the queue of one, so the calls spill.
    client = make_client(
        spool_dir=tmp_path / "spool", max_queue_size=1, flush_at=1, max_concurrency=1, ordering="strict"
    )
    assert client._spool is not None
    client._spool.segment_bytes = 300  # a few records fill a segment
    for n in range(20):
        client.track("user_1", "clicked", {"n": n})  # the queue is full: spills in this thread
    assert client.stats().spooled >= 15
    assert threading.current_thread().name not in synced_in
    # The worker fsyncs and closes the full segments, which another process can then replay.
    assert wait_until(lambda: len(synced_in) >= 2)
    assert set(synced_in) == {"flameup-worker"}


def test_a_429_storm_shrinks_concurrency_to_one_loses_nothing_and_recovers() -> None:
    lock = threading.Lock()
    state = {"in_flight": 0, "answered_429": 0, "storm": 40}
    during_storm: list[int] = []  # in flight at each start, once the first wave of 429s is back
    release = threading.Event()

    def handler(request: fa.Request) -> fa.Response:
        with lock:
            state["in_flight"] += 1
            if state["answered_429"] >= 8 and state["storm"] > 0:
                during_storm.append(state["in_flight"])
        release.wait(0.005)
        with lock:
            state["in_flight"] -= 1
            if state["storm"] > 0:
                state["storm"] -= 1
                state["answered_429"] += 1
                return fa.Response(429, {"Retry-After": "0"})
        return fa.Response(200)

    client = fa.Client(
        api_key=API_KEY,
        transport=fa.MockTransport(handler),
        spool_dir=False,
        max_retries=100,
        retry=fa.RetryPolicy(max_retries=100, backoff_factor=0.01, max_backoff=0.01),
    )
    for n in range(400):
        client.track(f"user_{n}", "clicked", {"n": n})
    assert client.flush(timeout=30)
    stats = client.stats()
    assert stats.delivered == 400 and stats.dropped == 0  # nothing lost
    assert during_storm and max(during_storm) <= 2  # the storm brought it down to one at a time
    assert stats.concurrency > 2  # and it grew again while the rest of the backlog went out
    client.shutdown()
