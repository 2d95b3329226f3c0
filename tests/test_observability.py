"""on_outcome: each message's final outcome, for metrics, against the real local server."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

import flameup_analytics as fa
from flameup_analytics.testing import Fault, LocalServer

from .conftest import ClientFactory, settled_short_of_the_api


class Outcomes:
    """An on_outcome hook that keeps what it was told, and on which thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.received: list[fa.MessageOutcome] = []
        self.threads: set[str] = set()

    def __call__(self, outcome: fa.MessageOutcome) -> None:
        with self._lock:
            self.received.append(outcome)
            self.threads.add(threading.current_thread().name)

    def results(self) -> list[str]:
        return [outcome.result for outcome in self.received]


def event_of(outcome: fa.MessageOutcome) -> str:
    event = json.loads(outcome.message.body)["event"]
    assert isinstance(event, str)
    return event


def test_a_delivered_message_reports_status_and_attempts_on_the_worker_thread(
    server: LocalServer, make_client: ClientFactory
) -> None:
    outcomes = Outcomes()
    client = make_client(on_outcome=outcomes)
    client.track("u1", "clicked", {"button": "buy"})
    client.identify("u1", {"plan": "pro"})
    # flush() returning True means the hook has already run for those messages.
    assert client.flush(timeout=5)
    track, identify = sorted(outcomes.received, key=lambda outcome: outcome.kind, reverse=True)
    assert (track.result, track.status, track.attempts, track.error) == ("delivered", 200, 1, None)
    assert (track.kind, track.message.kind, track.message.user_id) == ("track", "track", "u1")
    assert json.loads(track.message.body)["parameters"] == {"button": "buy"}
    assert track.message.key == server.tracks()[0].idempotency_key
    assert (identify.kind, identify.result, identify.status) == ("identify", "delivered", 200)
    assert threading.current_thread().name not in outcomes.threads


def test_attempts_count_the_retries_of_a_delivered_message(
    server: LocalServer, make_client: ClientFactory
) -> None:
    server.add_fault(Fault(status=503, times=2))
    outcomes = Outcomes()
    client = make_client(on_outcome=outcomes)
    client.track("u1", "clicked")
    assert client.flush(timeout=5)
    ((outcome,),) = [outcomes.received]
    assert (outcome.result, outcome.status, outcome.attempts) == ("delivered", 200, 3)
    assert client.stats().retried == 2


def test_a_final_4xx_is_rejected_with_the_apis_error(server: LocalServer, make_client: ClientFactory) -> None:
    server.add_fault(Fault(status=422, message="bad event", kind="track"))
    outcomes = Outcomes()
    errors: list[fa.FlameupError] = []
    client = make_client(on_outcome=outcomes, on_error=lambda error, messages: errors.append(error))
    client.track("u1", "clicked")
    assert client.flush(timeout=5)
    (outcome,) = outcomes.received
    assert (outcome.result, outcome.status, outcome.attempts) == ("rejected", 422, 1)
    assert isinstance(outcome.error, fa.APIError)
    assert (outcome.error.status, outcome.error.message) == (422, "bad event")
    assert errors == [outcome.error]  # on_error is still told
    assert client.stats().rejected == 1


def test_exhausted_retries_with_a_spool_end_spooled(
    server: LocalServer, make_client: ClientFactory, tmp_path: Path
) -> None:
    server.add_fault(Fault(status=503, times=None))
    outcomes = Outcomes()
    errors: list[fa.FlameupError] = []
    client = make_client(
        on_outcome=outcomes,
        on_error=lambda error, messages: errors.append(error),
        max_retries=2,
        spool_dir=tmp_path / "spool",
    )
    client.track("u1", "clicked")
    assert settled_short_of_the_api(client, timeout=5)
    (outcome,) = outcomes.received
    assert (outcome.result, outcome.status, outcome.attempts) == ("spooled", 503, 3)
    assert isinstance(outcome.error, fa.DeliveryError) and outcome.error.reason == "retries_exhausted"
    assert isinstance(outcome.error.cause, fa.APIError) and outcome.error.cause.status == 503
    assert errors == []  # spooled is not lost: on_error is not called
    assert client.stats().spooled == 1


def test_a_refused_key_ends_spooled_with_its_status(
    server: LocalServer, make_client: ClientFactory, tmp_path: Path
) -> None:
    server.api_key = "revoked"
    outcomes = Outcomes()
    client = make_client(on_outcome=outcomes, spool_dir=tmp_path / "spool")
    client.track("u1", "clicked")
    assert settled_short_of_the_api(client, timeout=5)
    (outcome,) = outcomes.received
    assert (outcome.result, outcome.status, outcome.attempts) == ("spooled", 401, 1)
    assert isinstance(outcome.error, fa.DeliveryError) and outcome.error.reason == "unauthorized"


def test_without_a_spool_exhausted_retries_end_dropped(
    server: LocalServer, make_client: ClientFactory
) -> None:
    server.add_fault(Fault(status=500, times=None))
    outcomes = Outcomes()
    dropped: list[fa.Message] = []
    client = make_client(
        on_outcome=outcomes,
        on_error=lambda error, messages: dropped.extend(messages),
        max_retries=1,
        spool_dir=False,
    )
    client.track("u1", "clicked")
    assert settled_short_of_the_api(client, timeout=5)
    (outcome,) = outcomes.received
    assert (outcome.result, outcome.status, outcome.attempts) == ("dropped", 500, 2)
    assert isinstance(outcome.error, fa.DeliveryError) and outcome.error.reason == "retries_exhausted"
    assert dropped == [outcome.message]
    assert client.stats().dropped == 1


def test_network_errors_end_with_no_status(server: LocalServer, make_client: ClientFactory) -> None:
    server.add_fault(Fault(action="drop", times=None))
    outcomes = Outcomes()
    client = make_client(on_outcome=outcomes, max_retries=1, spool_dir=False)
    client.track("u1", "clicked")
    assert settled_short_of_the_api(client, timeout=5)
    (outcome,) = outcomes.received
    assert (outcome.result, outcome.status) == ("dropped", None)
    assert outcome.attempts >= 2  # a reused keep-alive connection may add one transparent attempt
    assert isinstance(outcome.error, fa.DeliveryError)
    assert isinstance(outcome.error.cause, fa.TransportError)


def test_a_call_after_shutdown_is_dropped_in_the_callers_thread_without_attempts(
    make_client: ClientFactory,
) -> None:
    outcomes = Outcomes()
    client = make_client(on_outcome=outcomes, spool_dir=False)
    client.shutdown(timeout=1)
    client.track("u1", "late")
    (outcome,) = outcomes.received
    assert (outcome.result, outcome.status, outcome.attempts) == ("dropped", None, 0)
    assert isinstance(outcome.error, fa.DeliveryError) and outcome.error.reason == "closed"
    assert outcomes.threads == {threading.current_thread().name}


def test_sync_mode_reports_in_the_callers_thread(server: LocalServer, make_client: ClientFactory) -> None:
    outcomes = Outcomes()
    client = make_client(on_outcome=outcomes, sync_mode=True, spool_dir=False)
    client.track("u1", "clicked")
    assert outcomes.results() == ["delivered"]
    assert outcomes.threads == {threading.current_thread().name}


def spool_one_message(server: LocalServer, make_client: ClientFactory, tmp_path: Path) -> Path:
    """Leave one message in a spool directory, as a process that ended during an outage would."""
    spool = tmp_path / "spool"
    server.add_fault(Fault(status=503, times=None))
    first = make_client(max_retries=0, spool_dir=spool)
    first.track("u1", "clicked")
    assert settled_short_of_the_api(first)
    first.shutdown(timeout=1)
    server.clear_faults()
    return spool


def test_a_replayed_message_reports_its_delivery(
    server: LocalServer, make_client: ClientFactory, tmp_path: Path
) -> None:
    spool = spool_one_message(server, make_client, tmp_path)

    outcomes = Outcomes()
    second = make_client(on_outcome=outcomes, spool_dir=spool)
    assert second.replay_spool(timeout=5)
    (outcome,) = outcomes.received
    assert (outcome.result, outcome.status, outcome.attempts) == ("delivered", 200, 1)
    assert event_of(outcome) == "clicked"
    assert second.stats().replayed == 1


def test_outcomes_agree_with_stats(server: LocalServer, make_client: ClientFactory) -> None:
    server.add_fault(Fault(status=400, times=3, kind="track"))
    server.add_fault(Fault(status=503, times=None, kind="identify"))
    outcomes = Outcomes()
    client = make_client(on_outcome=outcomes, max_retries=0, spool_dir=False)
    for index in range(10):
        client.track(f"u{index}", "clicked")
    client.identify("u1", {"plan": "pro"})
    assert settled_short_of_the_api(client)
    counted = Counter(outcomes.results())
    stats = client.stats()
    assert counted == {"delivered": 7, "rejected": 3, "dropped": 1}
    assert (stats.delivered, stats.rejected, stats.dropped, stats.spooled) == (7, 3, 1, 0)
    assert len(outcomes.received) == stats.enqueued


def test_an_exception_in_the_hook_is_logged_and_never_stops_delivery(
    server: LocalServer, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def broken(outcome: fa.MessageOutcome) -> None:
        calls.append(outcome.result)
        raise RuntimeError("metrics backend down")

    client = make_client(on_outcome=broken, spool_dir=False)
    with caplog.at_level(logging.ERROR, logger="flameup_analytics"):
        for index in range(5):
            client.track(f"u{index}", "clicked")
        assert client.flush(timeout=5)
        client.track("u9", "after_the_failures")
        assert client.flush(timeout=5)
    assert calls == ["delivered"] * 6
    assert len(server.tracks()) == 6
    stats = client.stats()
    assert (stats.delivered, stats.dropped, stats.spooled, stats.internal_errors) == (6, 0, 0, 0)
    logged = [record for record in caplog.records if "on_outcome raised" in record.message]
    assert len(logged) == 6
    assert logged[0].exc_info is not None and "metrics backend down" in str(logged[0].exc_info[1])


# --- the examples of docs/observability.md ------------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_the_prometheus_example_exposes_outcomes_and_stats() -> None:
    lines = run_example("metrics_prometheus.py")
    # The same lines whether prometheus_client is installed or the example's fallback prints them.
    for expected in (
        'flameup_messages_total{kind="track",result="delivered"} 18.0',
        'flameup_messages_total{kind="track",result="rejected"} 2.0',
        'flameup_messages_total{kind="identify",result="dropped"} 1.0',
        'flameup_requests_total{kind="track"} 23.0',
        'flameup_requests_total{kind="identify"} 3.0',
        "# TYPE flameup_queued gauge",
        "flameup_queued 0.0",
        "flameup_enqueued_total 21.0",
        "flameup_retried_total 5.0",
    ):
        assert expected in lines


def test_the_statsd_example_sends_outcomes_and_stats_over_udp() -> None:
    assert run_example("metrics_statsd.py") == [
        "flameup.messages.identify.dropped:1|c",
        "flameup.messages.track.delivered:1|c  (x8)",
        "flameup.messages.track.rejected:1|c  (x2)",
        "flameup.requests.identify:3|c",
        "flameup.requests.track:1|c  (x10)",
        "flameup.stats.corrupt:0|g",
        "flameup.stats.enqueued:11|g",
        "flameup.stats.internal_errors:0|g",
        "flameup.stats.queued:0|g",
        "flameup.stats.replayed:0|g",
        "flameup.stats.retried:2|g",
    ]


# --- known problems: these describe what on_outcome should do and does not yet ---------------------


def test_messages_handed_on_behind_a_failed_one_report_no_attempt(
    server: LocalServer, make_client: ClientFactory
) -> None:
    server.add_fault(Fault(status=503, times=None))
    outcomes = Outcomes()
    # flush_at=2 with a long interval: both messages are in the same batch, so the same chain.
    client = make_client(
        on_outcome=outcomes, max_retries=1, spool_dir=False, flush_at=2, flush_interval=30, ordering="strict"
    )
    client.track("u1", "first")
    client.track("u1", "second")
    assert settled_short_of_the_api(client)
    assert len(server.requests) == 2  # both attempts were for "first"; "second" was never sent
    first, second = outcomes.received
    assert (event_of(first), first.attempts, first.status) == ("first", 2, 503)
    assert (event_of(second), second.attempts, second.status) == ("second", 0, None)


def test_replayed_messages_abandoned_at_shutdown_are_reported_spooled(
    server: LocalServer, make_client: ClientFactory, tmp_path: Path
) -> None:
    spool = spool_one_message(server, make_client, tmp_path)
    server.add_fault(Fault(action="hang", times=None))

    outcomes = Outcomes()
    second = make_client(on_outcome=outcomes, spool_dir=spool, timeout=30)  # replays at start
    assert server.wait_for(2, timeout=5, accepted=False)  # the replayed request hangs
    second.shutdown(timeout=0.2)
    server.release_hung()
    assert second.stats().spooled == 1
    assert outcomes.results() == ["spooled"]


def test_a_message_in_flight_at_the_shutdown_deadline_reports_its_attempt(
    server: LocalServer, make_client: ClientFactory, tmp_path: Path
) -> None:
    server.add_fault(Fault(action="hang", times=None))
    outcomes = Outcomes()
    client = make_client(on_outcome=outcomes, spool_dir=tmp_path / "spool", timeout=30)
    client.track("u1", "clicked")
    assert server.wait_for(1, timeout=5, accepted=False)
    client.shutdown(timeout=0.2)
    server.release_hung()
    (outcome,) = outcomes.received
    assert outcome.result == "spooled"
    assert outcome.attempts == 1  # the request was made; its answer never came
