"""Tests for flameup_analytics.testing.LocalServer, over real sockets on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import re
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from flameup_analytics.testing import Fault, LocalServer, ReceivedRequest, RequestKind
from flameup_analytics.testing import server as server_module

KEY = "test_key"
WS = "ws_test"
AUTH = {"Authorization": f"Bearer {KEY}"}
JSON_HEADERS = {**AUTH, "Content-Type": "application/json"}
TRACK = "/api/v1/track"
PEOPLE = f"/api/v1/workspaces/{WS}/people"
SEARCH = f"{PEOPLE}/search"
SEND = f"/api/v1/workspaces/{WS}/transactional/send"

TRACK_BODY = {
    "external_id": "user_1",
    "event": "page_viewed",
    "parameters": {"page": "/pricing"},
    "timestamp": "2026-11-26T03:20:20.123Z",
}
SEND_BODY = {"user_id": "user_1", "template_id": "welcome", "channel": "email", "variables": {"n": 1}}


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> str:
        message = self.json["error"]["message"]
        assert isinstance(message, str)
        return message


@pytest.fixture
def server() -> Iterator[LocalServer]:
    with LocalServer(api_key=KEY, workspace_id=WS) as srv:
        yield srv


def connect(server: LocalServer, timeout: float = 2.0) -> http.client.HTTPConnection:
    url = urlsplit(server.url)
    assert url.hostname is not None
    return http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)


def send(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    body: bytes | Iterable[bytes] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    conn.request(method, path, body=body, headers=JSON_HEADERS if headers is None else headers)
    response = conn.getresponse()
    data = response.read()
    return Response(response.status, {k.lower(): v for k, v in response.getheaders()}, data)


def call(
    server: LocalServer,
    method: str,
    path: str,
    payload: object = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """One request on a fresh connection; ``payload`` is sent as JSON unless ``raw`` is given."""
    body = raw if raw is not None else None if payload is None else json.dumps(payload).encode()
    conn = connect(server)
    try:
        return send(conn, method, path, body, headers)
    finally:
        conn.close()


# --- happy paths ---


def test_track_is_accepted_and_every_field_recorded(server: LocalServer) -> None:
    raw = json.dumps(TRACK_BODY).encode()
    before = time.monotonic()
    response = call(
        server, "POST", f"{TRACK}?trace=1", raw=raw, headers={**JSON_HEADERS, "Idempotency-Key": "msg-1"}
    )
    after = time.monotonic()

    assert response.status == 200
    assert response.json == {"success": True}
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["content-length"]) == len(response.body)
    [request] = server.requests
    assert request.method == "POST"
    assert request.path == TRACK
    assert request.query == {"trace": "1"}
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["idempotency-key"] == "msg-1"
    assert request.body == raw
    assert request.json == TRACK_BODY
    assert request.status == 200
    assert request.kind == "track"
    assert request.idempotency_key == "msg-1"
    assert before <= request.received_at <= after
    assert server.accepted == [request]
    assert server.tracks() == [request]
    assert server.identifies() == []
    assert server.transactionals() == []


def test_identify_stores_the_person_and_returns_it(server: LocalServer) -> None:
    response = call(server, "POST", PEOPLE, {"userId": "user_1", "traits": {"email": "j@example.com"}})

    assert response.status == 200
    assert response.json == {"person": {"external_id": "user_1", "traits": {"email": "j@example.com"}}}
    [request] = server.identifies()
    assert request.kind == "identify"
    assert request.idempotency_key is None
    assert server.people == {"user_1": {"email": "j@example.com"}}


def test_transactional_is_queued_with_a_fresh_uuid4_id(server: LocalServer) -> None:
    first = call(server, "POST", SEND, SEND_BODY)
    second = call(server, "POST", SEND, SEND_BODY)

    assert first.status == second.status == 200
    ids = [first.json["id"], second.json["id"]]
    assert ids[0] != ids[1]
    for message_id in ids:
        assert uuid.UUID(hex=message_id).version == 4
        assert message_id == uuid.UUID(hex=message_id).hex
    assert first.json["status"] == "queued"
    assert [r.json for r in server.transactionals()] == [SEND_BODY, SEND_BODY]


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        (TRACK, {"external_id": "u", "event": "e"}),
        (PEOPLE, {"userId": "u"}),
        (SEND, {"user_id": "u", "template_id": "t", "channel": "push"}),
    ],
)
def test_optional_keys_may_be_omitted(server: LocalServer, path: str, payload: dict[str, str]) -> None:
    assert call(server, "POST", path, payload).status == 200
    assert len(server.accepted) == 1


def test_identify_merges_traits_and_search_finds_the_person(server: LocalServer) -> None:
    call(server, "POST", PEOPLE, {"userId": "u1", "traits": {"a": 1, "b": 1}})
    merged = call(server, "POST", PEOPLE, {"userId": "u1", "traits": {"b": 2, "c": [3]}})
    call(server, "POST", PEOPLE, {"userId": "u2"})

    expected = {"a": 1, "b": 2, "c": [3]}
    assert merged.json == {"person": {"external_id": "u1", "traits": expected}}
    assert server.people == {"u1": expected, "u2": {}}

    found = call(server, "GET", f"{SEARCH}?external_id=u1", headers=AUTH)
    assert found.status == 200
    assert found.json == {"people": [{"external_id": "u1", "traits": expected}]}
    missing = call(server, "GET", f"{SEARCH}?external_id=nobody", headers=AUTH)
    assert missing.json == {"people": []}
    searches = [r for r in server.accepted if r.kind == "get_person"]
    assert [r.query for r in searches] == [{"external_id": "u1"}, {"external_id": "nobody"}]
    assert all(r.path == SEARCH for r in searches)


def test_people_and_requests_are_copies(server: LocalServer) -> None:
    call(server, "POST", PEOPLE, {"userId": "u1", "traits": {"plan": {"tier": "pro"}}})

    server.people["u1"]["plan"]["tier"] = "free"
    server.requests.clear()

    assert server.people == {"u1": {"plan": {"tier": "pro"}}}
    assert len(server.requests) == 1


@pytest.mark.parametrize("query", ["", "?external_id=", "?id=u1"])
def test_search_without_external_id_is_400(server: LocalServer, query: str) -> None:
    response = call(server, "GET", SEARCH + query, headers=AUTH)

    assert response.status == 400
    assert "external_id" in response.error


def test_keep_alive_serves_many_requests_over_one_connection(server: LocalServer) -> None:
    conn = connect(server)
    try:
        first = send(conn, "POST", TRACK, json.dumps(TRACK_BODY).encode())
        sock = conn.sock
        assert sock is not None
        rest = [
            send(conn, "POST", PEOPLE, b'{"userId": "u1"}'),
            send(conn, "POST", TRACK, b"{}", headers=AUTH),  # an error reply keeps the connection too
            send(conn, "GET", f"{SEARCH}?external_id=u1", headers=AUTH),
            send(conn, "POST", SEND, json.dumps(SEND_BODY).encode()),
        ]
        # http.client opens a new socket if the server closed the previous one.
        assert conn.sock is sock
    finally:
        conn.close()

    assert [r.status for r in [first, *rest]] == [200, 200, 415, 200, 200]
    assert all("connection" not in r.headers for r in [first, *rest])
    assert len(server.requests) == 5


# --- rejections ---


@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong", "bearer test_key", "test_key", "Bearer test_key "]
)
def test_wrong_or_missing_key_is_401(server: LocalServer, authorization: str | None) -> None:
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization

    response = call(server, "POST", TRACK, TRACK_BODY, headers=headers)

    assert response.status == 401
    assert response.error
    assert response.headers["www-authenticate"] == "Bearer"
    [request] = server.requests
    assert request.status == 401
    assert server.accepted == []


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/api/v1/nope", None),
        ("/api/v1/track/", None),
        ("/api/v2/track", None),
        ("/api/v1/workspaces//people", None),
        ("/api/v1/workspaces/ws_test/people/extra", None),
        ("/api/v1/workspaces/ws_other/people", "identify"),
        ("/api/v1/workspaces/ws_other/transactional/send", "transactional"),
    ],
)
def test_unknown_path_or_workspace_is_404(server: LocalServer, path: str, kind: RequestKind | None) -> None:
    response = call(server, "POST", path, {"userId": "u1"})

    assert response.status == 404
    assert response.error
    [request] = server.requests
    assert (request.status, request.kind) == (404, kind)
    assert server.people == {}


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [("GET", TRACK, "POST"), ("PUT", PEOPLE, "POST"), ("DELETE", SEND, "POST"), ("POST", SEARCH, "GET")],
)
def test_wrong_method_is_405(server: LocalServer, method: str, path: str, allowed: str) -> None:
    response = call(server, method, path, headers=AUTH)

    assert response.status == 405
    assert response.headers["allow"] == allowed
    assert response.error


def test_head_gets_405_headers_without_a_body(server: LocalServer) -> None:
    conn = connect(server)
    try:
        head = send(conn, "HEAD", TRACK, headers=AUTH)
        # The connection must still be in sync after a bodiless reply.
        after = send(conn, "POST", TRACK, json.dumps(TRACK_BODY).encode())
    finally:
        conn.close()

    assert head.status == 405
    assert head.body == b""
    assert int(head.headers["content-length"]) > 0
    assert after.status == 200


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/jsonx", "application/json; charset=latin-1"]
)
def test_post_without_json_content_type_is_415(server: LocalServer, content_type: str | None) -> None:
    headers = dict(AUTH) if content_type is None else {**AUTH, "Content-Type": content_type}

    response = call(server, "POST", TRACK, TRACK_BODY, headers=headers)

    assert response.status == 415
    assert "application/json" in response.error


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", 'Application/JSON;charset="UTF-8"']
)
def test_json_content_type_may_carry_utf8_charset(server: LocalServer, content_type: str) -> None:
    response = call(server, "POST", TRACK, TRACK_BODY, headers={**AUTH, "Content-Type": content_type})

    assert response.status == 200


def _track(**changes: object) -> dict[str, object]:
    body: dict[str, object] = {"external_id": "u", "event": "e"}
    body.update(changes)
    return body


# The messages are openapi-core's (via jsonschema): each names the key at fault.
BAD_BODIES: list[tuple[str, bytes, str]] = [
    (TRACK, b"not json", "invalid request body: not valid JSON"),
    (TRACK, b"", "the request body is missing: it must be a JSON object"),
    (TRACK, b"[1, 2]", "[1, 2] is not of type 'object'"),
    (TRACK, b"\xff\xfe{}", "not valid JSON ('utf-8' codec can't decode"),
    (TRACK, b'{"external_id": "u", "event": "e", "parameters": {"x": NaN}}', "NaN is not valid JSON"),
    (TRACK, b'{"external_id": "u", "event": "e"} {}', "not valid JSON (Extra data"),
    (TRACK, json.dumps({"event": "e"}).encode(), "'external_id' is a required property"),
    (
        TRACK,
        json.dumps(_track(extra=1)).encode(),
        "Additional properties are not allowed ('extra' was unexpected)",
    ),
    (TRACK, json.dumps(_track(event="")).encode(), "$.event: '' should be non-empty"),
    (TRACK, json.dumps(_track(external_id=7)).encode(), "$.external_id: 7 is not of type 'string'"),
    (TRACK, json.dumps(_track(parameters=[1])).encode(), "$.parameters: [1] is not of type 'object'"),
    (
        PEOPLE,
        json.dumps({"userId": "u", "email": "j@example.com"}).encode(),
        "Additional properties are not allowed ('email' was unexpected)",
    ),
    (PEOPLE, json.dumps({"userId": "u", "traits": None}).encode(), "$.traits: None is not of type 'object'"),
    (PEOPLE, json.dumps({"traits": {}}).encode(), "'userId' is a required property"),
    (
        SEND,
        json.dumps({**SEND_BODY, "channel": "fax"}).encode(),
        "$.channel: 'fax' is not one of ['email', 'sms', 'push']",
    ),
    (SEND, json.dumps({**SEND_BODY, "variables": "x"}).encode(), "$.variables: 'x' is not of type 'object'"),
    (SEND, json.dumps({"user_id": "u", "channel": "sms"}).encode(), "'template_id' is a required property"),
] + [
    (TRACK, json.dumps(_track(timestamp=stamp)).encode(), "invalid request body: $.timestamp: ")
    for stamp in [
        "2026-11-26T03:20:20.123",
        "2026-11-26T03:20:20+00:00",
        "2026-11-26 03:20:20Z",
        "2026-11-26t03:20:20z",
        "2026-13-26T03:20:20Z",
        "2026-02-30T03:20:20Z",
        "2026-11-26T24:00:00Z",
        "2026-11-26T03:20:60Z",
        "2026-11-26T03:20:20.1234567Z",
        "2026-11-26T03:20:20.Z",
        1764127220,
    ]
]


@pytest.mark.parametrize(("path", "raw", "message"), BAD_BODIES)
def test_invalid_body_is_400_naming_the_problem(
    server: LocalServer, path: str, raw: bytes, message: str
) -> None:
    response = call(server, "POST", path, raw=raw)

    assert response.status == 400
    assert message in response.error
    [request] = server.requests
    assert request.status == 400
    assert request.body == raw
    assert server.accepted == []
    assert server.people == {}


def test_unparsable_body_is_recorded_with_json_none(server: LocalServer) -> None:
    call(server, "POST", TRACK, raw=b'{"external_id": "u", "event": "e", "parameters": {"x": Infinity}}')

    [request] = server.requests
    assert request.json is None


@pytest.mark.parametrize(
    "stamp",
    ["2026-11-26T03:20:20Z", "2026-11-26T03:20:20.1Z", "2026-11-26T03:20:20.123456Z", "2024-02-29T23:59:59Z"],
)
def test_valid_timestamps_are_accepted(server: LocalServer, stamp: str) -> None:
    assert call(server, "POST", TRACK, _track(timestamp=stamp)).status == 200


# --- HTTP framing ---


def test_chunked_body_is_decoded_and_keeps_the_connection_in_sync(server: LocalServer) -> None:
    payload = json.dumps(TRACK_BODY).encode()
    conn = connect(server)
    try:
        # http.client chunk-encodes an iterable body of unknown length.
        chunked = send(conn, "POST", TRACK, iter([payload[:10], payload[10:]]))
        after = send(conn, "POST", PEOPLE, b'{"userId": "u1"}')
    finally:
        conn.close()

    assert (chunked.status, after.status) == (200, 200)
    assert server.requests[0].headers["transfer-encoding"] == "chunked"
    assert server.requests[0].body == payload


@pytest.mark.parametrize(
    ("header", "value", "body", "status"),
    [
        ("Content-Length", "abc", b"", 400),
        ("Content-Length", "+5", b"", 400),
        ("Content-Length", str(1 << 40), b"", 413),
        ("Transfer-Encoding", "gzip", b"", 501),
        ("Transfer-Encoding", "chunked", b"zz\r\n", 400),
        ("Transfer-Encoding", "chunked", b"2\r\n{}XX\r\n", 400),
    ],
)
def test_unreadable_body_is_rejected_and_the_connection_closed(
    server: LocalServer, header: str, value: str, body: bytes, status: int
) -> None:
    conn = connect(server)
    try:
        conn.putrequest("POST", TRACK)
        for name, header_value in [*JSON_HEADERS.items(), (header, value)]:
            conn.putheader(name, header_value)
        conn.endheaders(body)
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()

    assert response.status == status
    assert response.getheader("Connection") == "close"
    [request] = server.requests
    assert (request.status, request.kind, request.body) == (status, "track", b"")


# --- faults ---


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


def test_hang_fault_times_the_client_out_and_stop_stays_prompt(server: LocalServer) -> None:
    server.add_fault(Fault(action="hang"))
    conn = connect(server, timeout=0.2)
    try:
        conn.request("POST", TRACK, body=json.dumps(TRACK_BODY).encode(), headers=JSON_HEADERS)
        with pytest.raises(TimeoutError):
            conn.getresponse()
    finally:
        conn.close()

    assert server.wait_for(1, 1.0, accepted=False)
    assert [r.status for r in server.requests] == [0]
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 0.5


def test_release_hung_closes_hung_requests_and_later_hangs_hang_again(server: LocalServer) -> None:
    server.add_fault(Fault(action="hang", times=2))
    conn = connect(server)
    try:
        conn.request("POST", TRACK, body=json.dumps(TRACK_BODY).encode(), headers=JSON_HEADERS)
        assert server.wait_for(1, 2.0, accepted=False)
        server.release_hung()
        with pytest.raises(ConnectionError):
            conn.getresponse()
    finally:
        conn.close()

    second = connect(server, timeout=0.2)
    try:
        second.request("POST", TRACK, body=json.dumps(TRACK_BODY).encode(), headers=JSON_HEADERS)
        with pytest.raises(TimeoutError):
            second.getresponse()
    finally:
        second.close()
    assert call(server, "POST", TRACK, TRACK_BODY).status == 200
    assert [r.status for r in server.requests] == [0, 0, 200]


def test_stop_ends_a_hung_request_promptly(server: LocalServer) -> None:
    server.add_fault(Fault(action="hang"))
    conn = connect(server)
    try:
        conn.request("POST", TRACK, body=json.dumps(TRACK_BODY).encode(), headers=JSON_HEADERS)
        assert server.wait_for(1, 2.0, accepted=False)
        started = time.monotonic()
        server.stop()
        elapsed = time.monotonic() - started
        with pytest.raises(ConnectionError):
            conn.getresponse()
    finally:
        conn.close()

    assert elapsed < 0.5


# --- latency, wait_for, lifecycle ---


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


def test_lifecycle_start_url_and_idempotent_stop() -> None:
    server = LocalServer()
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


def test_stop_closes_idle_keep_alive_connections_and_the_port(server: LocalServer) -> None:
    conn = connect(server)
    try:
        assert send(conn, "POST", TRACK, json.dumps(TRACK_BODY).encode()).status == 200
        server.stop()
        with pytest.raises(OSError):
            send(conn, "POST", TRACK, json.dumps(TRACK_BODY).encode())
    finally:
        conn.close()

    with pytest.raises(ConnectionRefusedError):
        call(server, "POST", TRACK, TRACK_BODY)
    assert len(server.requests) == 1


def test_concurrent_clients_are_all_recorded(server: LocalServer) -> None:
    def client(worker: int) -> None:
        conn = connect(server)
        try:
            for n in range(25):
                headers = {**JSON_HEADERS, "Idempotency-Key": f"{worker}-{n}"}
                assert send(conn, "POST", TRACK, json.dumps(TRACK_BODY).encode(), headers).status == 200
        finally:
            conn.close()

    with ThreadPoolExecutor(max_workers=4) as pool:
        for future in [pool.submit(client, worker) for worker in range(4)]:
            future.result()

    assert server.wait_for(100, 1.0, kind="track")
    keys = {r.idempotency_key for r in server.tracks()}
    assert keys == {f"{w}-{n}" for w in range(4) for n in range(25)}


# --- validation switch, on_request, error, host ---


def test_rejections_record_the_error_they_answered(server: LocalServer) -> None:
    call(server, "POST", TRACK, _track(extra=1))
    call(server, "POST", TRACK, TRACK_BODY)

    rejected, accepted = server.requests
    assert rejected.error is not None
    assert "'extra' was unexpected" in rejected.error
    assert accepted.error is None


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"Idempotency-Key": ""}, "invalid header parameter 'Idempotency-Key'"),
        ({"Idempotency-Key": "k-1"}, None),
    ],
)
def test_the_idempotency_key_header_is_validated_too(
    server: LocalServer, headers: dict[str, str], message: str | None
) -> None:
    response = call(server, "POST", TRACK, TRACK_BODY, headers={**JSON_HEADERS, **headers})

    if message is None:
        assert response.status == 200
    else:
        assert response.status == 400
        assert message in response.error


def test_without_validation_documented_rules_are_not_enforced() -> None:
    with LocalServer(api_key=KEY, workspace_id=WS, validate=False) as server:
        assert not server.validates
        extra = call(server, "POST", TRACK, _track(extra=1, timestamp="yesterday"))
        # The server still needs a userId to store a person, and says so rather than fail.
        unusable = call(server, "POST", PEOPLE, {"traits": {"a": 1}})
        usable = call(server, "POST", PEOPLE, {"userId": "u1", "undocumented": True})
        search = call(server, "GET", SEARCH, headers=AUTH)
        unauthorized = call(server, "POST", TRACK, TRACK_BODY, headers={"Content-Type": "application/json"})

    assert extra.status == 200
    assert unusable.status == 400
    assert usable.status == 200
    assert search.json == {"people": []}
    assert unauthorized.status == 401
    assert server.people == {"u1": {}}


def test_a_missing_validator_package_is_named_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_module._Spec, "_loaded", None)
    monkeypatch.setitem(sys.modules, "openapi_core", None)  # makes `import openapi_core` fail

    with pytest.raises(ImportError, match=r"flameup-analytics\[testing\]"):
        LocalServer()
    LocalServer(validate=False)  # needs nothing more


def test_the_validated_description_is_the_one_shipped_and_in_docs() -> None:
    docs_copy = Path(__file__).parents[1] / "docs" / "openapi.yaml"

    assert server_module.SPEC_PATH.name == "openapi.yaml"
    assert docs_copy.is_symlink()
    assert docs_copy.resolve() == server_module.SPEC_PATH.resolve()


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
