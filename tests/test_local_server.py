"""LocalServer itself: lifecycle, recording, wait_for, latency, on_request."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from flameup_analytics.testing import Fault, LocalServer, ReceivedRequest

from .local_server_support import (
    JSON_HEADERS,
    KEY,
    PEOPLE,
    TRACK,
    TRACK_BODY,
    WS,
    call,
)


def test_latency_delays_every_answer(server: LocalServer) -> None:
    server.latency = 0.1
    started = time.monotonic()
    slow = call(server, "POST", TRACK, TRACK_BODY)
    elapsed = time.monotonic() - started

    assert slow.status == 200
    assert elapsed >= 0.1
    assert server.latency == 0.1


@pytest.mark.parametrize("latency", [-0.1, float("inf"), float("nan")])
def test_latency_must_be_finite_and_non_negative(latency: float) -> None:
    with pytest.raises(ValueError):
        LocalServer(latency=latency)


def test_wait_for_returns_true_once_requests_arrive(server: LocalServer) -> None:
    def produce() -> None:
        for _ in range(3):
            call(server, "POST", TRACK, TRACK_BODY)
        call(server, "POST", PEOPLE, {"userId": "u1"})

    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(produce)
        assert server.wait_for(3, 2.0, kind="track")
        assert server.wait_for(1, 2.0, kind="identify")
        assert server.wait_for(4, 2.0)
        future.result()


def test_wait_for_returns_false_on_timeout(server: LocalServer) -> None:
    started = time.monotonic()
    assert not server.wait_for(1, 0.05)
    assert time.monotonic() - started >= 0.05

    call(server, "POST", TRACK, TRACK_BODY)
    assert not server.wait_for(1, 0.05, kind="identify")

    call(server, "POST", TRACK, TRACK_BODY, headers={})  # rejected: 401
    assert not server.wait_for(2, 0.05)
    assert server.wait_for(2, 0.05, accepted=False)
    assert server.wait_for(2, 0.05, kind="track", accepted=False)


def test_wait_for_rejects_unknown_kind(server: LocalServer) -> None:
    with pytest.raises(ValueError, match="tracks"):
        server.wait_for(1, 0.01, kind="tracks")  # type: ignore[arg-type]


def test_lifecycle_start_url_and_idempotent_stop() -> None:
    server = LocalServer(api_key=KEY, workspace_id=WS)
    with pytest.raises(RuntimeError):
        _ = server.url
    server.stop()  # before start: nothing to do

    assert server.start() is server
    try:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", server.url)
        with pytest.raises(RuntimeError):
            server.start()
        assert call(server, "POST", TRACK, TRACK_BODY).status == 200
    finally:
        server.stop()
    server.stop()
    with pytest.raises(RuntimeError):
        server.start()


def test_on_request_sees_each_request_once_recorded_before_the_answer(server: LocalServer) -> None:
    seen: list[tuple[ReceivedRequest, int]] = []
    server.on_request = lambda request: seen.append((request, len(server.requests)))

    call(server, "POST", TRACK, TRACK_BODY, headers={**JSON_HEADERS, "Idempotency-Key": "k-1"})
    # The hook has run by the time the client has its answer.
    call(server, "POST", TRACK, {"event": "e"})

    assert [(request.status, count) for request, count in seen] == [(200, 1), (400, 2)]
    assert [request for request, _ in seen] == server.requests
    assert seen[0][0].idempotency_key == "k-1"


def test_on_request_also_sees_faulted_requests(server: LocalServer) -> None:
    seen: list[int] = []
    server.on_request = lambda request: seen.append(request.status)
    server.add_fault(Fault(action="drop"))

    with pytest.raises(ConnectionError):
        call(server, "POST", TRACK, TRACK_BODY)
    call(server, "POST", TRACK, TRACK_BODY)

    assert seen == [0, 200]


def test_an_exception_in_on_request_is_logged_and_the_server_carries_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def explode(request: ReceivedRequest) -> None:
        raise RuntimeError("hook bug")

    with LocalServer(api_key=KEY, workspace_id=WS, on_request=explode) as server:
        statuses = [call(server, "POST", TRACK, TRACK_BODY).status for _ in range(2)]

    assert statuses == [200, 200]
    assert len(server.tracks()) == 2
    failures = [record for record in caplog.records if record.exc_info is not None]
    assert len(failures) == 2
    assert "on_request" in failures[0].getMessage()


def test_host_names_the_address_to_listen_on() -> None:
    with LocalServer(api_key=KEY, workspace_id=WS, host="localhost") as server:
        assert re.fullmatch(r"http://localhost:\d+", server.url)
        assert call(server, "POST", TRACK, TRACK_BODY).status == 200


def test_a_port_in_use_raises_on_start_and_leaves_nothing_open() -> None:
    with LocalServer() as first:
        port = int(first.url.rsplit(":", 1)[1])
        second = LocalServer(port=port, validate=False)
        with pytest.raises(OSError):
            second.start()
        second.stop()  # nothing to stop
