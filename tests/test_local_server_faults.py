"""LocalServer's fault injection: error statuses, Retry-After, hung and dropped requests."""

from __future__ import annotations

import http.client
import json
import threading
from typing import Any

import pytest

from flameup_analytics.testing import Fault, LocalServer, ReceivedRequest

from .local_server_support import (
    JSON_HEADERS,
    PEOPLE,
    TRACK,
    TRACK_BODY,
    call,
    connect,
)


@pytest.mark.parametrize("retry_after", ["2", "Wed, 21 Oct 2015 07:28:00 GMT"])
def test_respond_fault_sends_status_retry_after_and_message_once(
    server: LocalServer, retry_after: str
) -> None:
    fault = server.add_fault(Fault(status=503, retry_after=retry_after))

    faulted = call(server, "POST", TRACK, TRACK_BODY)
    normal = call(server, "POST", TRACK, TRACK_BODY)

    assert faulted.status == 503
    assert faulted.headers["retry-after"] == retry_after
    assert faulted.error == "injected"
    assert normal.status == 200
    assert "retry-after" not in normal.headers
    assert fault.hits == 1
    assert [r.status for r in server.requests] == [503, 200]
    assert server.accepted == server.requests[1:]


def test_respond_fault_without_retry_after_uses_its_message(server: LocalServer) -> None:
    server.add_fault(Fault(status=429, message="slow down"))

    response = call(server, "POST", TRACK, TRACK_BODY)

    assert response.status == 429
    assert response.error == "slow down"
    assert "retry-after" not in response.headers


def test_fault_applies_times_then_is_exhausted(server: LocalServer) -> None:
    fault = server.add_fault(Fault(status=500, times=2))

    statuses = [call(server, "POST", TRACK, TRACK_BODY).status for _ in range(3)]

    assert statuses == [500, 500, 200]
    assert fault.hits == 2


def test_fault_with_times_none_applies_forever(server: LocalServer) -> None:
    fault = server.add_fault(Fault(status=502, times=None))

    statuses = [call(server, "POST", TRACK, TRACK_BODY).status for _ in range(5)]

    assert statuses == [502] * 5
    assert fault.hits == 5


def test_fault_kind_filter_only_hits_that_endpoint(server: LocalServer) -> None:
    fault = server.add_fault(Fault(status=503, times=None, kind="identify"))

    track = call(server, "POST", TRACK, TRACK_BODY)
    identify = call(server, "POST", PEOPLE, {"userId": "u1", "traits": {"a": 1}})

    assert (track.status, identify.status) == (200, 503)
    assert fault.hits == 1
    assert server.people == {}
    assert [r.kind for r in server.requests] == ["track", "identify"]
    assert server.identifies() == []


def test_faults_apply_before_auth_and_validation(server: LocalServer) -> None:
    server.add_fault(Fault(status=500, times=2))

    bad_key = call(server, "POST", TRACK, TRACK_BODY, headers={"Content-Type": "application/json"})
    bad_path = call(server, "POST", "/nowhere", TRACK_BODY)

    assert (bad_key.status, bad_path.status) == (500, 500)
    assert [(r.status, r.kind) for r in server.requests] == [(500, "track"), (500, None)]


def test_first_matching_fault_with_uses_left_wins(server: LocalServer) -> None:
    identify_fault = server.add_fault(Fault(status=502, kind="identify"))
    any_fault = server.add_fault(Fault(status=503))

    track = call(server, "POST", TRACK, TRACK_BODY)
    identify = call(server, "POST", PEOPLE, {"userId": "u1"})
    again = call(server, "POST", PEOPLE, {"userId": "u1"})

    assert [track.status, identify.status, again.status] == [503, 502, 200]
    assert (identify_fault.hits, any_fault.hits) == (1, 1)


def test_clear_faults_removes_them(server: LocalServer) -> None:
    fault = server.add_fault(Fault(status=503, times=None))
    server.clear_faults()

    assert call(server, "POST", TRACK, TRACK_BODY).status == 200
    assert fault.hits == 0


def test_drop_fault_closes_the_connection_without_a_response(server: LocalServer) -> None:
    fault = server.add_fault(Fault(action="drop", kind="track"))

    with pytest.raises(ConnectionError):
        call(server, "POST", TRACK, TRACK_BODY)
    after = call(server, "POST", TRACK, TRACK_BODY)

    assert after.status == 200
    assert fault.hits == 1
    assert [(r.status, r.kind) for r in server.requests] == [(0, "track"), (200, "track")]
    assert server.accepted == server.requests[1:]


def post_track(server: LocalServer, timeout: float = 2.0) -> http.client.HTTPConnection:
    """A track request sent on a connection of its own, its answer not read yet."""
    conn = connect(server, timeout=timeout)
    conn.request("POST", TRACK, body=json.dumps(TRACK_BODY).encode(), headers=JSON_HEADERS)
    return conn


def test_hang_fault_times_the_client_out(server: LocalServer) -> None:
    server.add_fault(Fault(action="hang"))
    conn = post_track(server, timeout=0.2)
    try:
        with pytest.raises(TimeoutError):
            conn.getresponse()
    finally:
        conn.close()

    assert server.wait_for(1, 1.0, accepted=False)
    assert [r.status for r in server.requests] == [0]


def test_release_hung_closes_hung_requests_and_later_hangs_hang_again(server: LocalServer) -> None:
    server.add_fault(Fault(action="hang", times=2))
    conn = post_track(server)
    try:
        assert server.wait_for(1, 2.0, accepted=False)
        server.release_hung()
        with pytest.raises(ConnectionError):
            conn.getresponse()
    finally:
        conn.close()

    second = post_track(server, timeout=0.2)
    try:
        with pytest.raises(TimeoutError):
            second.getresponse()
    finally:
        second.close()
    assert call(server, "POST", TRACK, TRACK_BODY).status == 200
    assert [r.status for r in server.requests] == [0, 0, 200]


def test_stop_ends_a_hung_request(server: LocalServer) -> None:
    server.add_fault(Fault(action="hang"))
    conn = post_track(server)
    try:
        assert server.wait_for(1, 2.0, accepted=False)
        server.stop()
        with pytest.raises(ConnectionError):
            conn.getresponse()
    finally:
        conn.close()


def test_stop_does_not_wait_for_a_request_still_being_handled(server: LocalServer) -> None:
    inside, leave, left = threading.Event(), threading.Event(), threading.Event()

    def linger(request: ReceivedRequest) -> None:
        inside.set()
        leave.wait(10)
        left.set()

    server.on_request = linger
    conn = post_track(server)
    try:
        assert inside.wait(5)
        server.stop()
        # Had stop() waited for the handler, the handler would have left (after its 10 s) by now.
        assert not left.is_set()
    finally:
        leave.set()
        conn.close()


@pytest.mark.parametrize(
    "make",
    [
        lambda: Fault(action="explode"),  # type: ignore[arg-type]
        lambda: Fault(status=200),
        lambda: Fault(status=600),
        lambda: Fault(times=0),
        lambda: Fault(kind="tracks"),  # type: ignore[arg-type]
        lambda: Fault(retry_after="2\r\nX-Injected: 1"),
    ],
)
def test_invalid_faults_are_refused(make: Any) -> None:
    with pytest.raises(ValueError):
        make()
