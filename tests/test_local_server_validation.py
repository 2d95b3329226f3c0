"""LocalServer's request validation against openapi.yaml, and running with it off or unavailable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from flameup_analytics.testing import LocalServer
from flameup_analytics.testing import server as server_module

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
    WS,
    call,
    track_body,
)

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
        json.dumps(track_body(extra=1)).encode(),
        "Additional properties are not allowed ('extra' was unexpected)",
    ),
    (TRACK, json.dumps(track_body(event="")).encode(), "$.event: '' should be non-empty"),
    (TRACK, json.dumps(track_body(external_id=7)).encode(), "$.external_id: 7 is not of type 'string'"),
    (TRACK, json.dumps(track_body(parameters=[1])).encode(), "$.parameters: [1] is not of type 'object'"),
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
    (TRACK, json.dumps(track_body(timestamp=stamp)).encode(), "invalid request body: $.timestamp: ")
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
    assert call(server, "POST", TRACK, track_body(timestamp=stamp)).status == 200


@pytest.mark.parametrize("query", ["", "?external_id=", "?id=u1"])
def test_search_without_external_id_is_400(server: LocalServer, query: str) -> None:
    response = call(server, "GET", SEARCH + query, headers=AUTH)

    assert response.status == 400
    assert "external_id" in response.error


def test_rejections_record_the_error_they_answered(server: LocalServer) -> None:
    call(server, "POST", TRACK, track_body(extra=1))
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
        extra = call(server, "POST", TRACK, track_body(extra=1, timestamp="yesterday"))
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


def test_the_validated_description_is_the_one_shipped_and_in_docs() -> None:
    docs_copy = Path(__file__).parents[1] / "docs" / "openapi.yaml"

    assert server_module.SPEC_PATH.name == "openapi.yaml"
    assert docs_copy.is_symlink()
    assert docs_copy.resolve() == server_module.SPEC_PATH.resolve()


def test_validation_is_on_by_default_when_openapi_core_is_installed() -> None:
    with LocalServer(api_key=KEY, workspace_id=WS) as server:
        assert server.validates
        assert call(server, "POST", TRACK, track_body(color="red")).status == 400


# Run in a fresh interpreter where `import openapi_core` fails, as after a plain `pip install`.
WITHOUT_OPENAPI_CORE = """
import http.client, json, sys
sys.modules["openapi_core"] = None  # makes `import openapi_core` raise ImportError
from flameup_analytics.testing import LocalServer
try:
    LocalServer(validate=True)
    required = None
except ImportError as exc:
    required = str(exc)
with LocalServer(api_key="k", workspace_id="ws") as server:
    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    body = json.dumps({"external_id": "u", "event": "e", "color": "red"})
    headers = {"Authorization": "Bearer k", "Content-Type": "application/json"}
    connection.request("POST", "/api/v1/track", body, headers)
    status = connection.getresponse().status
    connection.close()
print(json.dumps({"required": required, "validates": server.validates, "status": status}))
"""


def test_without_openapi_core_it_serves_unvalidated_unless_validation_is_required() -> None:
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_OPENAPI_CORE], capture_output=True, text=True, timeout=60, check=False
    )

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["validates"] is False
    assert report["status"] == 200  # the undocumented key is not refused: nothing checks it
    assert "openapi-core" in report["required"]
    assert "pip install 'flameup-analytics[testing]'" in report["required"]
