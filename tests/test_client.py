"""The client against a real local server: shapes, headers, batching, retries, flush, shutdown."""

from __future__ import annotations

import datetime as dt
import json
import logging
import platform
import re
import threading
import time
from typing import Any

import pytest

import flameup_analytics as fa
from flameup_analytics import _log as fa_log
from flameup_analytics.testing import Fault, LocalServer

from .conftest import API_KEY, WORKSPACE, ClientFactory, settled_short_of_the_api


def test_track_and_identify_reach_their_endpoints_with_exact_bodies(
    server: LocalServer, make_client: ClientFactory
) -> None:
    client = make_client()
    client.track("user_1", "page_viewed", {"page": "/pricing"})
    client.identify("user_1", {"email": "jane@example.com"})
    assert client.flush(timeout=5)
    (track,) = server.tracks()
    (identify,) = server.identifies()
    assert track.path == "/api/v1/track"
    assert set(track.json) == {"external_id", "event", "parameters", "timestamp"}
    assert track.json["parameters"] == {"page": "/pricing"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", track.json["timestamp"])
    assert identify.path == f"/api/v1/workspaces/{WORKSPACE}/people"
    assert identify.json == {"userId": "user_1", "traits": {"email": "jane@example.com"}}
    assert server.people["user_1"] == {"email": "jane@example.com"}


def test_every_request_carries_auth_type_agent_and_a_unique_idempotency_key(
    server: LocalServer, make_client: ClientFactory
) -> None:
    client = make_client()
    for index in range(20):
        client.track(f"user_{index % 3}", "clicked")
    assert client.flush(timeout=5)
    received = server.tracks()
    assert len(received) == 20
    for request in received:
        assert request.headers["authorization"] == f"Bearer {API_KEY}"
        assert request.headers["content-type"] == "application/json"
        assert request.headers["user-agent"] == (
            f"flameup-analytics-python/{fa.__version__} "
            f"(python {platform.python_version()}; {platform.system().lower()})"
        )
    assert len({request.idempotency_key for request in received}) == 20


def test_the_idempotency_key_is_the_same_across_retries(
    server: LocalServer, make_client: ClientFactory
) -> None:
    server.add_fault(Fault(status=503, times=2))
    client = make_client()
    client.track("user_1", "clicked")
    assert client.flush(timeout=5)
    attempts = server.requests
    assert [request.status for request in attempts] == [503, 503, 200]
    assert len({request.idempotency_key for request in attempts}) == 1
    assert client.stats().retried == 2


def test_the_timestamp_is_the_time_of_the_call_not_of_sending(
    server: LocalServer, make_client: ClientFactory
) -> None:
    server.add_fault(Fault(status=503, times=1, retry_after="1"))
    client = make_client()
    client.track("user_1", "clicked")
    called = time.time()
    assert client.flush(timeout=5)
    (delivered,) = server.tracks()
    # Read as UTC whatever the local zone (and its DST) is: the stamp ends with Z.
    stamp = dt.datetime.fromisoformat(delivered.json["timestamp"].replace("Z", "+00:00"))
    assert abs(stamp.timestamp() - called) < 1.0
    assert delivered.received_at - server.requests[0].received_at >= 1.0


def test_a_batch_waits_for_flush_at_messages(server: LocalServer, make_client: ClientFactory) -> None:
    client = make_client(flush_at=5, flush_interval=3600)
    for index in range(4):
        client.track(f"user_{index}", "clicked")
    fifth_call = time.monotonic()
    client.track("user_4", "clicked")
    assert server.wait_for(5, timeout=5, kind="track")
    assert min(request.received_at for request in server.tracks()) >= fifth_call


def test_fewer_than_flush_at_messages_go_after_flush_interval(
    server: LocalServer, make_client: ClientFactory
) -> None:
    client = make_client(flush_at=1000, flush_interval=0.1)
    called = time.monotonic()
    client.track("user_1", "clicked")
    assert server.wait_for(1, timeout=5, kind="track")
    assert server.tracks()[0].received_at - called >= 0.09


def test_strict_ordering_delivers_each_users_messages_in_call_order(
    server: LocalServer, make_client: ClientFactory
) -> None:
    server.add_fault(Fault(status=503, times=3))
    client = make_client(flush_at=10, max_concurrency=4, ordering="strict")
    for step in range(30):
        for user in ("a", "b", "c"):
            client.track(user, "step", {"n": step})
    assert client.flush(timeout=10)
    for user in ("a", "b", "c"):
        steps = [r.json["parameters"]["n"] for r in server.tracks() if r.json["external_id"] == user]
        assert steps == list(range(30))


def test_an_identify_never_crosses_its_users_other_messages(
    server: LocalServer, make_client: ClientFactory
) -> None:
    server.latency = 0.01
    client = make_client(flush_at=200, max_concurrency=16)
    for step in range(40):
        client.track("a", "step", {"n": step})
        if step % 10 == 9:
            client.identify("a", {"step": step})
    assert client.flush(timeout=20)
    timeline = sorted(server.accepted, key=lambda r: r.received_at)
    seen_tracks: set[int] = set()
    for request in timeline:
        if request.kind == "identify":
            # Every track before it in call order was final before it was sent...
            last = request.json["traits"]["step"]
            assert seen_tracks >= set(range(last + 1))
            # ...and no later one was sent before it was final.
            assert max(seen_tracks) <= last
        else:
            seen_tracks.add(request.json["parameters"]["n"])
    assert server.people["a"] == {"step": 39}  # last writer wins, as called


def test_tracks_of_one_user_are_in_flight_together(server: LocalServer, make_client: ClientFactory) -> None:
    server.latency = 0.2
    client = make_client(flush_at=8, max_concurrency=8)
    for step in range(4):
        client.track("hot_user", "step", {"n": step})
    assert client.flush(timeout=5)
    arrivals = [request.received_at for request in server.tracks()]
    # One at a time would spread the arrivals over 4 x 200 ms.
    assert max(arrivals) - min(arrivals) < 0.2


def test_requests_of_a_batch_are_sent_concurrently(server: LocalServer, make_client: ClientFactory) -> None:
    server.latency = 0.2
    client = make_client(flush_at=8, max_concurrency=8)
    for index in range(8):
        client.track(f"user_{index}", "clicked")
    assert client.flush(timeout=5)
    arrivals = [request.received_at for request in server.tracks()]
    # Sequential sending would spread the arrivals over 8 x 200 ms.
    assert max(arrivals) - min(arrivals) < 0.2


def test_final_rejections_are_counted_and_reported(server: LocalServer, make_client: ClientFactory) -> None:
    server.add_fault(Fault(status=422, message="bad event", times=1))
    reported: list[tuple[fa.FlameupError, list[fa.Message]]] = []
    client = make_client(on_error=lambda error, messages: reported.append((error, messages)))
    client.track("user_1", "clicked")
    client.track("user_2", "clicked")
    assert client.flush(timeout=5)
    stats = client.stats()
    assert (stats.delivered, stats.rejected, stats.retried) == (1, 1, 0)
    ((error, messages),) = reported
    assert isinstance(error, fa.APIError) and error.status == 422 and error.message == "bad event"
    assert len(messages) == 1


def test_without_a_spool_exhausted_retries_drop_messages_in_order(
    server: LocalServer, make_client: ClientFactory
) -> None:
    server.add_fault(Fault(status=503, times=None, kind="track"))
    reported: list[tuple[fa.FlameupError, list[fa.Message]]] = []
    client = make_client(
        max_retries=2, spool_dir=False, ordering="strict", on_error=lambda e, m: reported.append((e, m))
    )
    for step in range(3):
        client.track("user_1", "step", {"n": step})
    assert settled_short_of_the_api(client, timeout=5)
    # The first message used its budget; the two behind it were handed on with it, untried.
    assert len(server.requests) == 3
    ((error, messages),) = reported
    assert isinstance(error, fa.DeliveryError) and error.reason == "retries_exhausted"
    assert [json.loads(m.body)["parameters"]["n"] for m in messages] == [0, 1, 2]
    stats = client.stats()
    assert (stats.dropped, stats.retried, stats.queued) == (3, 2, 0)


def test_a_refused_key_is_logged_once_and_messages_are_not_rejected(
    server: LocalServer, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server.api_key = "another key"
    client = make_client()
    for index in range(3):
        client.track(f"user_{index}", "clicked")
    with caplog.at_level(logging.ERROR, logger="flameup_analytics"):
        assert settled_short_of_the_api(client, timeout=5)
    assert len([r for r in caplog.records if "refused the API key" in r.message]) == 1
    stats = client.stats()
    assert (stats.rejected, stats.retried, stats.dropped, stats.spooled) == (0, 0, 0, 3)


def test_a_redirect_means_a_wrong_host_is_logged_once_and_messages_are_kept(
    server: LocalServer, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server.add_fault(Fault(status=301, times=None))  # as http:// redirected to https:// would
    reasons: list[str] = []
    client = make_client(on_outcome=lambda outcome: reasons.append(getattr(outcome.error, "reason", "")))
    for index in range(3):
        client.track(f"user_{index}", "clicked")
    with caplog.at_level(logging.ERROR, logger="flameup_analytics"):
        assert settled_short_of_the_api(client, timeout=5)
    assert len([r for r in caplog.records if "check FLAMEUP_HOST" in r.message]) == 1
    assert reasons == ["misdirected"] * 3
    stats = client.stats()
    assert (stats.rejected, stats.retried, stats.spooled) == (0, 0, 3)


def test_flush_returns_false_at_its_deadline_against_a_hanging_server(
    server: LocalServer, make_client: ClientFactory
) -> None:
    server.add_fault(Fault(action="hang", times=None))
    client = make_client(timeout=30)
    client.track("user_1", "clicked")
    started = time.monotonic()
    assert client.flush(timeout=0.3) is False
    assert time.monotonic() - started < 5  # generous: only "not hung for the 30 s timeout" matters
    server.release_hung()


def test_shutdown_honours_its_deadline_against_a_hanging_server(
    server: LocalServer, make_client: ClientFactory
) -> None:
    server.add_fault(Fault(action="hang", times=None))
    client = make_client(timeout=30)
    for index in range(5):
        client.track(f"user_{index}", "clicked")
    started = time.monotonic()
    client.shutdown(timeout=0.3)
    assert time.monotonic() - started < 5
    stats = client.stats()
    assert (stats.queued, stats.spooled, stats.dropped) == (0, 5, 0)
    server.release_hung()


def test_shutdown_delivers_what_is_queued_and_is_idempotent(
    server: LocalServer, make_client: ClientFactory
) -> None:
    client = make_client(flush_interval=3600, flush_at=1000)
    for index in range(50):
        client.track(f"user_{index}", "clicked")
    client.shutdown(timeout=5)
    client.shutdown(timeout=5)
    assert len(server.tracks()) == 50
    assert client.stats().delivered == 50


def test_calls_after_shutdown_are_handed_on_not_queued(
    server: LocalServer, make_client: ClientFactory
) -> None:
    reasons: list[str] = []
    client = make_client(spool_dir=False, on_error=lambda e, m: reasons.append(getattr(e, "reason", "")))
    client.shutdown()
    client.track("user_1", "clicked")
    assert reasons == ["closed"]
    assert client.stats().dropped == 1


def test_a_full_queue_never_blocks_and_counts_what_it_cannot_hold(
    server: LocalServer, make_client: ClientFactory
) -> None:
    server.add_fault(Fault(action="hang", times=None))
    reasons: list[str] = []
    client = make_client(
        max_queue_size=10,
        flush_at=1,
        max_concurrency=1,
        spool_dir=False,
        on_error=lambda e, m: reasons.append(e.reason),
    )
    for index in range(30):
        client.track("user_1", "clicked", {"n": index})
    stats = client.stats()
    assert stats.enqueued == 30
    assert stats.dropped >= 19 and set(reasons) == {"queue_full"}
    assert stats.queued + stats.dropped == 30
    server.release_hung()


def test_stats_add_up_under_many_producer_threads(server: LocalServer, make_client: ClientFactory) -> None:
    server.add_fault(Fault(status=500, times=40))
    server.add_fault(Fault(status=400, times=25))
    client = make_client(flush_at=50, max_concurrency=4, max_retries=41)
    barrier = threading.Barrier(8)

    def produce(thread: int) -> None:
        barrier.wait()
        for index in range(250):
            client.track(f"user_{thread}_{index % 7}", "clicked", {"i": index})

    threads = [threading.Thread(target=produce, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert client.flush(timeout=30)
    stats = client.stats()
    assert stats.enqueued == 2000
    assert stats.rejected == 25
    assert stats.delivered == 1975
    assert stats.delivered + stats.rejected + stats.dropped + stats.spooled + stats.queued == 2000
    assert len({r.idempotency_key for r in server.tracks()}) == 1975


def test_an_on_error_that_raises_never_stops_the_worker(
    server: LocalServer, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(error: fa.FlameupError, messages: list[fa.Message]) -> None:
        raise RuntimeError("callback bug")

    server.add_fault(Fault(status=400, times=1))
    client = make_client(on_error=explode)
    client.track("user_1", "clicked")
    assert client.flush(timeout=5)
    client.track("user_2", "clicked")
    assert client.flush(timeout=5)
    assert client.stats().delivered == 1
    assert "on_error raised" in caplog.text


def test_a_transport_that_raises_unexpectedly_is_counted_and_the_worker_survives() -> None:
    calls = 0

    def flaky(request: fa.Request) -> fa.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("bug in a custom transport")
        return fa.Response(200)

    transport = fa.MockTransport(flaky)
    with fa.Client(api_key="k", transport=transport, flush_interval=0.05, spool_dir=False) as client:
        client.track("user_1", "clicked")
        assert settled_short_of_the_api(client, timeout=5)
        client.track("user_2", "clicked")
        assert client.flush(timeout=5)
        stats = client.stats()
        assert (stats.internal_errors, stats.dropped, stats.delivered) == (1, 1, 1)


def sdk_threads() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.name.startswith("flameup-")}


def test_sync_mode_delivers_in_the_calling_thread(server: LocalServer, make_client: ClientFactory) -> None:
    threads_before = sdk_threads()
    client = make_client(sync_mode=True)
    client.track("user_1", "clicked")
    assert len(server.tracks()) == 1  # no flush, no waiting: it was sent before track() returned
    client.identify("user_1", {"plan": "pro"})
    assert server.people["user_1"] == {"plan": "pro"}
    assert sdk_threads() <= threads_before
    stats = client.stats()
    assert (stats.enqueued, stats.delivered) == (2, 2)


def test_sync_mode_retries_within_timeout(server: LocalServer, make_client: ClientFactory) -> None:
    server.add_fault(Fault(status=503, times=2))
    client = make_client(sync_mode=True)
    client.track("user_1", "clicked")
    assert [request.status for request in server.requests] == [503, 503, 200]


def test_disabled_validates_and_sends_nothing(server: LocalServer) -> None:
    client = fa.Client(disabled=True, host=server.url)
    client.track("user_1", "clicked")
    client.identify("user_1", {"plan": "pro"})  # no workspace needed: nothing is sent
    assert client.send_transactional("user_1", "welcome", "email") == {}
    assert client.get_person("user_1") is None
    with pytest.raises(fa.ValidationError):
        client.track("", "clicked")
    with pytest.raises(fa.ValidationError):
        client.send_transactional("user_1", "welcome", "fax")
    assert client.flush(timeout=1)
    client.shutdown()
    assert server.requests == []
    assert client.stats().enqueued == 0


def test_send_transactional_returns_the_answer_with_a_stable_key(
    server: LocalServer, make_client: ClientFactory
) -> None:
    server.add_fault(Fault(status=502, times=1, kind="transactional"))
    client = make_client()
    answer = client.send_transactional("user_1", "welcome", "email", {"name": "Jane"})
    assert answer["status"] == "queued"
    first, second = server.requests
    assert first.idempotency_key == second.idempotency_key is not None
    assert second.json == {
        "user_id": "user_1",
        "template_id": "welcome",
        "channel": "email",
        "variables": {"name": "Jane"},
    }


def test_synchronous_calls_raise_api_errors_with_the_api_message(
    server: LocalServer, make_client: ClientFactory
) -> None:
    server.add_fault(Fault(status=404, message="no such template", times=1))
    client = make_client()
    with pytest.raises(fa.APIError) as info:
        client.send_transactional("user_1", "missing", "sms")
    assert info.value.status == 404
    assert info.value.message == "no such template"


def test_synchronous_calls_give_up_within_timeout(server: LocalServer, make_client: ClientFactory) -> None:
    server.add_fault(Fault(action="hang", times=None))
    client = make_client(timeout=0.3)
    started = time.monotonic()
    with pytest.raises(fa.APIError, match="no answer"):
        client.get_person("user_1")
    assert time.monotonic() - started < 5
    server.release_hung()


def test_get_person_finds_identified_people(server: LocalServer, make_client: ClientFactory) -> None:
    client = make_client(sync_mode=True)
    assert client.get_person("user 1/x") is None
    client.identify("user 1/x", {"plan": "pro"})
    person = client.get_person("user 1/x")
    assert person is not None and person["traits"] == {"plan": "pro"}
    assert server.requests[-1].query == {"external_id": "user 1/x"}


def test_the_context_manager_shuts_down(server: LocalServer) -> None:
    with fa.Client(api_key=API_KEY, host=server.url, flush_interval=3600) as client:
        client.track("user_1", "clicked")
    assert len(server.tracks()) == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "FLAMEUP_API_KEY"),
        ({"api_key": "k", "host": "api.flameup.ai"}, "FLAMEUP_HOST"),
        ({"api_key": "k", "host": "ftp://api.flameup.ai"}, "FLAMEUP_HOST"),
        ({"api_key": "k", "host": "http://localhost:notaport"}, "FLAMEUP_HOST"),
        ({"api_key": "with space"}, "white space"),
        ({"api_key": "k", "flush_at": 0}, "flush_at"),
        ({"api_key": "k", "timeout": 0}, "timeout"),
        ({"api_key": "k", "max_retries": -1}, "max_retries"),
        ({"api_key": "k", "flush_at": "5"}, "flush_at must be an int, not str"),
        ({"api_key": "k", "flush_at": 2.5}, "flush_at must be an int, not float"),
        ({"api_key": "k", "max_queue_size": True}, "max_queue_size must be an int, not bool"),
        ({"api_key": 123}, "api_key must be a str, not int"),
        ({"api_key": "k", "workspace_id": 7}, "workspace_id must be a str"),
        ({"api_key": "k", "host": b"http://x"}, "host must be a str"),
        ({"api_key": "k", "timeout": float("inf")}, "timeout must be a finite number > 0, not inf"),
        ({"api_key": "k", "timeout": float("nan")}, "timeout must be a finite number"),
        ({"api_key": "k", "timeout": "10"}, "timeout must be a number of seconds, not str"),
        ({"api_key": "k", "flush_interval": 0}, "flush_interval must be a finite number > 0"),
        ({"api_key": "k", "shutdown_timeout": -1}, "shutdown_timeout must be a finite number >= 0"),
        ({"api_key": "k", "spool_dir": ""}, "spool_dir must not be empty"),
        ({"api_key": "k", "spool_dir": True}, "spool_dir must be a path, None or False, not bool"),
        ({"api_key": "k", "sync_mode": "yes"}, "sync_mode must be True or False"),
        ({"api_key": "k", "on_error": "log"}, "on_error must be callable"),
        ({"api_key": "k", "retry": {"max_retries": 1}}, "retry must be a RetryPolicy, not dict"),
        ({"api_key": "k", "transport": object()}, "transport must have send"),
        ({"api_key": "k", "max_spool_bytes": -1}, "max_spool_bytes must be >= 0"),
    ],
)
def test_unusable_configuration_fails_at_construction(options: dict[str, Any], message: str) -> None:
    with pytest.raises(fa.ConfigurationError, match=re.escape(message)) as raised:
        fa.Client(**options)
    # Each names its option, so a command line or a settings loader can point at it.
    assert raised.value.option == next((name for name in options if name != "api_key"), "api_key")


@pytest.mark.parametrize(
    "options",
    [{"max_retries": -1}, {"backoff_factor": -0.5}, {"max_backoff": float("inf")}, {"max_retries": 1.5}],
)
def test_a_bad_retry_policy_is_a_configuration_error_naming_the_field(options: dict[str, Any]) -> None:
    with pytest.raises(fa.ConfigurationError) as raised:
        fa.RetryPolicy(**options)
    assert raised.value.option == next(iter(options))
    assert isinstance(raised.value, ValueError)  # what code written for the old ValueError catches


def test_credentials_in_the_host_are_refused_without_echoing_the_password() -> None:
    with pytest.raises(fa.ConfigurationError) as raised:
        fa.Client(api_key="k", host="https://jane:hunter2@api.flameup.ai")
    assert "hunter2" not in str(raised.value)
    assert "jane:***@" in str(raised.value)
    with pytest.raises(fa.ConfigurationError) as raised:
        fa.Client(api_key="k", host="https://jane:hunter2@api.flameup.ai:notaport")
    assert "hunter2" not in str(raised.value)


def test_configuration_falls_back_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLAMEUP_API_KEY", "env_key")
    monkeypatch.setenv("FLAMEUP_WORKSPACE_ID", "ws_env")
    monkeypatch.setenv("FLAMEUP_HOST", "http://127.0.0.1:1/api/v1/")
    client = fa.Client()
    assert (client.api_key, client.workspace_id, client.host) == ("env_key", "ws_env", "http://127.0.0.1:1")
    client.shutdown()


def test_calls_that_need_a_workspace_say_so() -> None:
    client = fa.Client(api_key="k", host="http://127.0.0.1:1")
    with pytest.raises(fa.ConfigurationError, match="FLAMEUP_WORKSPACE_ID"):
        client.identify("user_1")
    with pytest.raises(fa.ConfigurationError, match="FLAMEUP_WORKSPACE_ID"):
        client.get_person("user_1")
    client.shutdown()


def test_debug_sets_the_level_and_adds_one_stderr_handler(
    server: LocalServer, make_client: ClientFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    sdk_logger = logging.getLogger("flameup_analytics")
    saved = (sdk_logger.level, list(sdk_logger.handlers))
    try:
        sdk_logger.handlers.clear()
        client = make_client(debug=True)
        make_client(debug=True)  # a second client keeps the handler the first one added
        assert sdk_logger.level == logging.DEBUG
        assert len(sdk_logger.handlers) == 1
        fa_log.logger.warning("a line from the SDK")
        assert "flameup_analytics WARNING a line from the SDK" in capsys.readouterr().err
        client.track("user_1", "clicked")
        assert client.flush(timeout=5)
    finally:
        sdk_logger.handlers[:] = saved[1]
