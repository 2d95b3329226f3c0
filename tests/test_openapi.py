"""docs/openapi.yaml: valid, exactly the documented API, and every request the SDK can produce conforms.

The SDK's requests are captured with MockTransport and checked with openapi-core, independently
of the local server (which validates with the same file, through its own adapter).
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from openapi_core import OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIRequest, RequestsOpenAPIResponse
from openapi_spec_validator import validate
from openapi_spec_validator.readers import read_from_filename

import flameup_analytics as fa
from flameup_analytics.testing import LocalServer
from flameup_analytics.testing.server import SPEC_PATH

DOCS_SPEC = Path(__file__).parents[1] / "docs" / "openapi.yaml"
API_KEY = "ws_test_abc12345_abc123.secret"
WORKSPACE = "ws_test"

# Deterministic: the same examples on every run and machine.
examples = settings(derandomize=True, deadline=None, max_examples=150)


@pytest.fixture(scope="module")
def openapi() -> OpenAPI:
    return OpenAPI.from_file_path(str(SPEC_PATH))


def problems(openapi: OpenAPI, request: fa.Request) -> list[str]:
    """What openapi-core finds wrong with a request exactly as the SDK would send it: the names
    of its errors and their causes, and the schema violations among them."""
    prepared = requests.Request(request.method, request.url, headers=dict(request.headers), data=request.body)
    found: list[str] = []
    for error in openapi.iter_request_errors(RequestsOpenAPIRequest(prepared.prepare())):
        cause: BaseException | None = error
        while cause is not None:
            found.append(type(cause).__name__)
            found.extend(str(schema_error.message) for schema_error in getattr(cause, "schema_errors", ()))
            cause = cause.__cause__
    return found


def _answer(request: fa.Request) -> fa.Response:
    if "/people/search" in request.url:
        return fa.Response(200, body=b'{"people": []}')
    if request.url.endswith("/transactional/send"):
        return fa.Response(200, body=b'{"id": "m1", "status": "queued"}')
    return fa.Response(200, body=b'{"success": true}')


class Capture:
    """A synchronous client whose requests go nowhere but into ``requests``."""

    def __init__(self, workspace_id: str = WORKSPACE) -> None:
        self.transport = fa.MockTransport(_answer)
        self.client = fa.Client(
            api_key=API_KEY,
            workspace_id=workspace_id,
            transport=self.transport,
            sync_mode=True,
            spool_dir=False,
        )

    def take(self) -> list[fa.Request]:
        taken = list(self.transport.requests)
        self.transport.requests.clear()
        return taken


@pytest.fixture(scope="module")
def sdk() -> Iterator[Capture]:
    capture = Capture()
    yield capture
    capture.client.shutdown()


def assert_conforms(openapi: OpenAPI, sdk: Capture, count: int = 1) -> list[fa.Request]:
    sent = sdk.take()
    assert len(sent) == count
    for request in sent:
        assert problems(openapi, request) == [], request
    return sent


# --- the description itself ---


@pytest.mark.parametrize("path", [SPEC_PATH, DOCS_SPEC], ids=["package", "docs"])
def test_the_description_is_valid_openapi(path: Path) -> None:
    document, base_uri = read_from_filename(str(path))
    validate(document, base_uri=base_uri)  # raises on any violation of the OpenAPI schema
    assert str(document["openapi"]).startswith("3.1")


def test_it_describes_exactly_the_documented_endpoints_and_keys() -> None:
    document, _ = read_from_filename(str(SPEC_PATH))
    operations = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method != "parameters"
    }
    assert operations == {
        ("POST", "/track"),
        ("POST", "/workspaces/{workspace_id}/people"),
        ("GET", "/workspaces/{workspace_id}/people/search"),
        ("POST", "/workspaces/{workspace_id}/transactional/send"),
    }
    schemas = document["components"]["schemas"]
    bodies = {
        name: (set(schemas[name]["properties"]), set(schemas[name]["required"]))
        for name in ("TrackRequest", "IdentifyRequest", "TransactionalRequest")
    }
    assert bodies == {
        "TrackRequest": ({"external_id", "event", "parameters", "timestamp"}, {"external_id", "event"}),
        "IdentifyRequest": ({"userId", "traits"}, {"userId"}),
        "TransactionalRequest": (
            {"user_id", "template_id", "channel", "variables"},
            {"user_id", "template_id", "channel"},
        ),
    }
    assert all(schemas[name]["additionalProperties"] is False for name in bodies)
    assert schemas["TransactionalRequest"]["properties"]["channel"]["enum"] == ["email", "sms", "push"]
    assert document["servers"][0]["url"] == "https://api.flameup.ai/api/v1"
    bearer = document["components"]["securitySchemes"]["bearerAuth"]
    assert (bearer["type"], bearer["scheme"]) == ("http", "bearer")
    assert document["security"] == [{"bearerAuth": []}]


# --- every request the SDK can produce conforms ---

ids = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40)
keys = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
)
fixed_offsets = st.builds(
    dt.timezone, st.timedeltas(min_value=dt.timedelta(hours=-23), max_value=dt.timedelta(hours=23))
)
# One day of margin keeps a fixed offset from moving the time out of datetime's range (such
# timestamps are refused with a ValidationError, see tests/test_message.py).
EARLIEST, LATEST = dt.datetime(1, 1, 2), dt.datetime(9999, 12, 30)
datetimes = st.datetimes(EARLIEST, LATEST) | st.datetimes(EARLIEST, LATEST, timezones=fixed_offsets)


class Plan(enum.Enum):
    FREE = "free"
    PRO = 2


# Values the SDK converts (docs/validation.md) as well as plain JSON, nested in lists and dicts.
convertible = (
    json_scalars
    | datetimes
    | st.dates()
    | st.times()
    | st.decimals(allow_nan=False, allow_infinity=False)
    | st.uuids()
    | st.sampled_from(Plan)
    | st.frozensets(st.integers(), max_size=3)
    | st.sets(st.text(max_size=3), max_size=3)
)
values = st.recursive(
    convertible,
    lambda inner: st.lists(inner, max_size=3) | st.tuples(inner) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=12,
)
properties = st.dictionaries(keys | st.integers() | st.booleans(), values, max_size=5)


@examples
@given(user=ids, event=ids, parameters=st.none() | properties, timestamp=st.none() | datetimes)
def test_track_requests_conform(
    openapi: OpenAPI, sdk: Capture, user: str, event: str, parameters: Any, timestamp: Any
) -> None:
    sdk.client.track(user, event, parameters, timestamp=timestamp)

    (request,) = assert_conforms(openapi, sdk)
    body = json.loads(request.body or b"")
    assert body["external_id"] == user
    assert body["event"] == event


@examples
@given(user=ids, traits=st.none() | properties)
def test_identify_requests_conform(openapi: OpenAPI, sdk: Capture, user: str, traits: Any) -> None:
    sdk.client.identify(user, traits)

    assert_conforms(openapi, sdk)


@examples
@given(
    user=ids,
    template=ids,
    channel=st.sampled_from(["email", "sms", "push"]),
    variables=st.none() | properties,
)
def test_transactional_requests_conform(
    openapi: OpenAPI, sdk: Capture, user: str, template: str, channel: str, variables: Any
) -> None:
    assert sdk.client.send_transactional(user, template, channel, variables) == {
        "id": "m1",
        "status": "queued",
    }

    assert_conforms(openapi, sdk)


@examples
@given(user=ids)
def test_get_person_requests_conform_and_carry_the_id(openapi: OpenAPI, sdk: Capture, user: str) -> None:
    assert sdk.client.get_person(user) is None

    (request,) = assert_conforms(openapi, sdk)
    assert parse_qs(urlsplit(request.url).query) == {"external_id": [user]}


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.track(
            "user 1/ä?&=#", "événement ✓", {"amount": Decimal("99.99"), "at": dt.datetime(2026, 1, 1)}
        ),
        lambda c: c.track("u", "e", timestamp=dt.datetime(2026, 11, 26, 3, 20, 20, 123456, dt.timezone.utc)),
        lambda c: c.track(
            "u", "e", {"ids": {uuid.UUID(int=1)}, "nested": [{"a": [1, (2, 3)]}], "emoji": "🔥"}
        ),
        lambda c: c.identify("u", {"first_name": "Zoë", "tags": frozenset({"a", "b"})}),
        lambda c: c.send_transactional("u", "welcome", "push"),
        lambda c: c.get_person("a b&c=d/é#"),
    ],
    ids=["unicode-decimal-datetime", "timestamp", "uuid-set-nesting", "identify", "push", "quoted-search"],
)
def test_named_examples_conform(openapi: OpenAPI, sdk: Capture, call: Any) -> None:
    call(sdk.client)

    assert_conforms(openapi, sdk)


@pytest.mark.parametrize("workspace", ["ws_abc123", "ws with space", "ws/slash", "wś?#"])
def test_workspace_ids_needing_quoting_conform(openapi: OpenAPI, workspace: str) -> None:
    capture = Capture(workspace_id=workspace)
    try:
        capture.client.identify("u", {"a": 1})
        capture.client.send_transactional("u", "t", "sms", {"x": 1})
        capture.client.get_person("u")
        assert_conforms(openapi, capture, count=3)
    finally:
        capture.client.shutdown()


def test_a_timestamp_before_the_year_1000_conforms(openapi: OpenAPI, sdk: Capture) -> None:
    sdk.client.track("u", "e", timestamp=dt.datetime(999, 1, 1))

    assert_conforms(openapi, sdk)


# --- the check can fail ---

GOOD_TRACK = {"external_id": "u", "event": "e", "parameters": {}, "timestamp": "2026-11-26T03:20:20.123Z"}
BASE = "https://api.flameup.ai/api/v1"
HEADERS = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json", "Idempotency-Key": "k"}


def _post(path: str, body: dict[str, Any], headers: dict[str, str] = HEADERS) -> fa.Request:
    return fa.Request("POST", BASE + path, headers, json.dumps(body).encode())


PEOPLE = f"/workspaces/{WORKSPACE}/people"
SEND = f"/workspaces/{WORKSPACE}/transactional/send"
SEND_BODY = {"user_id": "u", "template_id": "t", "channel": "email", "variables": {}}


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        (_post("/track", {**GOOD_TRACK, "extra": 1}), "'extra' was unexpected"),
        (_post("/track", {**GOOD_TRACK, "timestamp": "2026-11-26T03:20:20.123+00:00"}), "does not match"),
        (_post("/track", {**GOOD_TRACK, "timestamp": "999-01-01T00:00:00.000Z"}), "is not a 'date-time'"),
        (_post("/track", {**GOOD_TRACK, "event": ""}), "should be non-empty"),
        (_post(SEND, {**SEND_BODY, "channel": "fax"}), "'fax' is not one of"),
        (_post(PEOPLE, {"traits": {}}), "'userId' is a required property"),
        (_post(PEOPLE, {"userId": "u", "email": "j@example.com"}), "'email' was unexpected"),
        (_post("/track", GOOD_TRACK, {"Content-Type": "application/json"}), "SecurityNotFound"),
        (fa.Request("GET", f"{BASE}{PEOPLE}/search", HEADERS), "MissingRequiredParameter"),
        (fa.Request("GET", BASE + "/track", HEADERS), "OperationNotFound"),
        (_post("/events", GOOD_TRACK), "PathNotFound"),
    ],
    ids=[
        "extra-key",
        "offset-timestamp",
        "three-digit-year",
        "empty-event",
        "wrong-channel",
        "missing-userId",
        "undocumented-email",
        "no-auth",
        "search-without-id",
        "wrong-method",
        "invented-endpoint",
    ],
)
def test_requests_violating_the_description_are_rejected(
    openapi: OpenAPI, request_: fa.Request, expected: str
) -> None:
    found = problems(openapi, request_)

    assert any(expected in problem for problem in found), found


@examples
@given(user=ids, event=ids, parameters=properties, key=st.text(min_size=1, max_size=10))
def test_any_undocumented_key_added_to_an_sdk_body_is_rejected(
    openapi: OpenAPI, sdk: Capture, user: str, event: str, parameters: Any, key: str
) -> None:
    sdk.client.track(user, event, parameters)
    (request,) = sdk.take()
    body = json.loads(request.body or b"")
    if key in body:
        return
    body[key] = None
    tampered = fa.Request(request.method, request.url, request.headers, json.dumps(body).encode())

    assert problems(openapi, tampered)


# --- what the local server answers is what the description says ---


def test_the_local_servers_answers_conform(openapi: OpenAPI) -> None:
    session = requests.Session()
    with LocalServer(api_key=API_KEY, workspace_id=WORKSPACE) as server:
        base = f"{server.url}/api/v1"
        good = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
        exchanges = [
            requests.Request("POST", f"{base}/track", headers=good, json=GOOD_TRACK),
            requests.Request(
                "POST", f"{base}{PEOPLE}", headers=good, json={"userId": "u", "traits": {"a": 1}}
            ),
            requests.Request("GET", f"{base}{PEOPLE}/search", headers=good, params={"external_id": "u"}),
            requests.Request("GET", f"{base}{PEOPLE}/search", headers=good, params={"external_id": "nobody"}),
            requests.Request("POST", f"{base}{SEND}", headers=good, json=SEND_BODY),
            requests.Request("POST", f"{base}/track", headers=good, json={"event": "e"}),
            requests.Request("POST", f"{base}/track", headers={"Content-Type": "application/json"}, json={}),
        ]
        statuses = []
        for exchange in exchanges:
            prepared = session.prepare_request(exchange)
            response = session.send(prepared, timeout=5)
            statuses.append(response.status_code)
            # Addressed to the local server's entry in `servers`, http://127.0.0.1:{port}/api/v1.
            openapi.validate_response(RequestsOpenAPIRequest(prepared), RequestsOpenAPIResponse(response))
    session.close()

    assert statuses == [200, 200, 200, 200, 200, 400, 401]
