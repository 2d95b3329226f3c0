"""LocalServer's endpoints and the checks the API makes itself: key (401), path and workspace (404),
method (405), media type (415); the answers of accepted requests and the people it keeps."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from flameup_analytics.testing import LocalServer, RequestKind

from .local_server_support import (
    AUTH,
    JSON_HEADERS,
    KEY,
    PEOPLE,
    SEARCH,
    SEND,
    SEND_BODY,
    TRACK,
    TRACK_BODY,
    call,
)


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


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"bearer {KEY}", KEY, f"Bearer {KEY} "])
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
