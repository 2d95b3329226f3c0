"""Message building and validation: what reaches the queue, and the errors the caller sees."""

from __future__ import annotations

import datetime as dt
import enum
import json
import uuid
from collections import OrderedDict
from decimal import Decimal
from typing import Any

import pytest
from freezegun import freeze_time

import flameup_analytics as fa
from flameup_analytics import message


def track(parameters: Any = None, **kwargs: Any) -> dict[str, Any]:
    _, body = message.track_body(
        kwargs.get("external_id", "user_1"),
        kwargs.get("event", "page_viewed"),
        parameters,
        kwargs.get("timestamp"),
        kwargs.get("max_bytes", 32 * 1024),
    )
    decoded: dict[str, Any] = json.loads(body)
    return decoded


@freeze_time("2026-11-26T03:20:20.123456Z")
def test_track_body_has_exactly_the_documented_keys_and_the_call_time() -> None:
    assert track({"page": "/pricing"}) == {
        "external_id": "user_1",
        "event": "page_viewed",
        "parameters": {"page": "/pricing"},
        "timestamp": "2026-11-26T03:20:20.123Z",
    }


def test_identify_body_has_exactly_the_documented_keys() -> None:
    user_id, body = message.identify_body("user_9", {"email": "jane@example.com"}, 32 * 1024)
    assert user_id == "user_9"
    assert json.loads(body) == {"userId": "user_9", "traits": {"email": "jane@example.com"}}


def test_missing_parameters_and_traits_become_empty_objects() -> None:
    assert track(None)["parameters"] == {}
    assert json.loads(message.identify_body("u", None, 1024)[1])["traits"] == {}


def test_timestamp_argument_naive_means_utc_and_aware_is_converted() -> None:
    naive = dt.datetime(2026, 1, 2, 3, 4, 5, 678900)
    aware = dt.datetime(2026, 1, 2, 5, 4, 5, 678900, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert track(timestamp=naive)["timestamp"] == "2026-01-02T03:04:05.678Z"
    assert track(timestamp=aware)["timestamp"] == "2026-01-02T03:04:05.678Z"


def test_early_years_are_padded_and_out_of_range_utc_times_are_refused() -> None:
    assert track(timestamp=dt.datetime(999, 1, 2, 3, 4, 5))["timestamp"] == "0999-01-02T03:04:05.000Z"
    plus_one = dt.timezone(dt.timedelta(hours=1))
    with pytest.raises(fa.ValidationError, match="outside the years 1-9999") as info:
        track(timestamp=dt.datetime(1, 1, 1, tzinfo=plus_one))
    assert info.value.argument == "timestamp"
    with pytest.raises(fa.ValidationError, match="not JSON-serializable") as nested:
        track({"when": dt.datetime(1, 1, 1, tzinfo=plus_one)})
    assert nested.value.path == "parameters['when']"


def test_timestamp_must_be_a_datetime() -> None:
    with pytest.raises(fa.ValidationError, match="timestamp must be a datetime") as info:
        track(timestamp="2026-01-01")
    assert info.value.argument == "timestamp"


def test_now_timestamp_follows_the_clock_within_one_millisecond() -> None:
    with freeze_time("2026-11-26T10:00:00.001Z") as frozen:
        first = message.now_timestamp()
        frozen.tick(dt.timedelta(microseconds=500))
        same_millisecond = message.now_timestamp()
        frozen.tick(dt.timedelta(seconds=61, microseconds=500))
        later = message.now_timestamp()
    assert first == same_millisecond == "2026-11-26T10:00:00.001Z"
    assert later == "2026-11-26T10:01:01.002Z"


class Plan(enum.Enum):
    PRO = "pro"


@freeze_time("2026-11-26T03:20:20Z")
def test_values_with_an_obvious_json_form_are_converted() -> None:
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    parameters = {
        "at": dt.datetime(2026, 5, 1, 12, 0, 0, tzinfo=dt.timezone.utc),
        "day": dt.date(2026, 5, 1),
        "price": Decimal("19.90"),
        "count": Decimal("3"),
        "id": ident,
        "plan": Plan.PRO,
        "pair": (1, 2),
        "tags": {"b", "a"},
        "frozen": frozenset({3}),
        "ordered": OrderedDict([("x", 1)]),
        2: "int key",
        True: "bool key",
    }
    assert track(parameters)["parameters"] == {
        "at": "2026-05-01T12:00:00.000Z",
        "day": "2026-05-01",
        "price": 19.9,
        "count": 3,
        "id": str(ident),
        "plan": "pro",
        "pair": [1, 2],
        "tags": ["a", "b"],
        "frozen": [3],
        "ordered": {"x": 1},
        "2": "int key",
        "true": "bool key",
    }


def test_non_ascii_text_is_sent_as_utf8() -> None:
    _, body = message.track_body("ユーザー", "café", {"città": "Zürich"}, None, 1024)
    assert "Zürich".encode() in body
    assert json.loads(body)["external_id"] == "ユーザー"


@pytest.mark.parametrize(
    ("external_id", "event", "argument"),
    [
        (None, "e", "external_id"),
        ("", "e", "external_id"),
        (123, "e", "external_id"),
        ("u", None, "event"),
        ("u", "", "event"),
        ("u", b"bytes", "event"),
    ],
)
def test_ids_and_event_names_must_be_non_empty_strings(external_id: Any, event: Any, argument: str) -> None:
    with pytest.raises(fa.ValidationError, match=argument) as info:
        message.track_body(external_id, event, None, None, 1024)
    assert info.value.argument == argument
    assert isinstance(info.value, ValueError)


def test_identify_user_id_must_be_a_non_empty_string() -> None:
    with pytest.raises(fa.ValidationError, match="user_id is required"):
        message.identify_body("", {}, 1024)


@pytest.mark.parametrize("bad", [[1, 2], "text", 5])
def test_parameters_and_traits_must_be_mappings(bad: Any) -> None:
    with pytest.raises(fa.ValidationError, match="parameters must be a mapping") as info:
        track(bad)
    assert info.value.argument == "parameters"
    with pytest.raises(fa.ValidationError, match="traits must be a mapping"):
        message.identify_body("u", bad, 1024)


@pytest.mark.parametrize(
    ("parameters", "path", "reason"),
    [
        ({"cart": [1, 2, object()]}, "parameters['cart'][2]", "not JSON-serializable"),
        ({"score": float("nan")}, "parameters['score']", "nan"),
        ({"score": float("inf")}, "parameters['score']", "inf"),
        ({"price": Decimal("NaN")}, "parameters['price']", "not JSON-serializable"),
        ({"deep": {(1, 2): "tuple key"}}, "parameters['deep']", "key of type tuple"),
        ({"raw": b"bytes"}, "parameters['raw']", "bytes has no JSON form"),
        ({"text": "\ud800"}, "parameters['text']", "lone surrogates"),
    ],
)
def test_unencodable_values_name_their_path(parameters: Any, path: str, reason: str) -> None:
    with pytest.raises(fa.ValidationError) as info:
        track(parameters)
    assert info.value.path == path
    assert info.value.argument == "parameters"
    assert reason in str(info.value)
    assert str(info.value).startswith(path)


def test_cycles_are_reported_with_their_path() -> None:
    inner: dict[str, Any] = {}
    inner["again"] = inner
    with pytest.raises(fa.ValidationError, match="reference cycle") as info:
        track({"items": [inner]})
    assert info.value.path == "parameters['items'][0]['again']"


def test_a_bad_value_in_an_id_names_that_argument() -> None:
    with pytest.raises(fa.ValidationError) as info:
        message.track_body("bad\udc00id", "e", None, None, 1024)
    assert info.value.argument == "external_id"


def test_messages_over_max_message_bytes_are_refused() -> None:
    with pytest.raises(fa.ValidationError, match="over max_message_bytes=200") as info:
        track({"blob": "x" * 200}, max_bytes=200)
    assert info.value.argument == "parameters"
    assert track({"blob": "x" * 10}, max_bytes=200)["parameters"] == {"blob": "x" * 10}


def test_transactional_body_and_channel_check() -> None:
    body = message.transactional_body("u", "welcome", "email", {"name": "Jane"}, 1024)
    assert json.loads(body) == {
        "user_id": "u",
        "template_id": "welcome",
        "channel": "email",
        "variables": {"name": "Jane"},
    }
    with pytest.raises(fa.ValidationError, match="channel must be one of email, sms, push"):
        message.transactional_body("u", "welcome", "fax", None, 1024)


def test_idempotency_keys_are_unique_and_change_after_reseed() -> None:
    generated = {message.keys.new() for _ in range(1000)}
    assert len(generated) == 1000
    before = message.keys.new()
    message.keys.reseed()
    after = message.keys.new()
    assert before.split("-")[0] != after.split("-")[0]


def test_a_queued_message_is_an_exact_tuple_and_shows_its_key_as_text() -> None:
    number = message.keys.next_number()
    queued: message.Queued = ("track", "user_1", b"{}", number)
    assert type(queued) is tuple  # what lets the garbage collector stop tracking queued messages
    shown = message.public(queued)
    assert shown == message.Message("track", "user_1", b"{}", message.keys.text(number))
    assert message.key_of(("identify", "u", b"{}", "from-the-spool")) == "from-the-spool"
