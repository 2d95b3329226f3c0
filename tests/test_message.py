"""Message building and validation: what reaches the queue, and the errors the caller sees."""

from __future__ import annotations

import datetime as dt
import enum
import json
import sys
import types
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
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


@pytest.mark.parametrize(
    ("external_id", "event", "parameters"),
    [
        ("user_1", "page_viewed", {"page": "/pricing", "amount": 19.9, "n": None, "ok": True}),
        ('quote"and\\backslash', "tab\tnew\nline", {"nested": {"list": [1, "ü", {"x": []}]}}),
        ("ünïcødé 🔥", "\x00\x1f", {1: "int key", "é": "\u2028"}),
        ("u", "e", {}),
    ],
)
def test_the_track_envelope_written_as_text_is_exactly_what_the_encoder_makes_of_the_payload(
    external_id: str, event: str, parameters: dict[Any, Any]
) -> None:
    codec = message.Codec(message.with_json_default(str))
    payload = {"external_id": external_id, "event": event, "parameters": parameters, "timestamp": "T"}
    body = codec.encode_track(external_id, event, parameters, "T")
    assert body == codec.encode(payload, {})
    assert json.loads(body) == json.loads(json.dumps(payload))
    assert message.unpack(body)[:3] == (message.TRACK, external_id, body)


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
    with pytest.raises(fa.ValidationError, match=r"cannot be sent: .* is outside the years 1-9999") as nested:
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
        ("u", 123, "event"),
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
        ({"price": Decimal("NaN")}, "parameters['price']", "cannot be sent: Decimal('NaN') is not a finite"),
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


# --- numbers no JSON number can carry (issue 8, item 9) --------------------------------------

_INT64_MAX = 2**63 - 1


@pytest.mark.parametrize(
    ("value", "sent"),
    [
        (Decimal("3.000"), 3),
        (Decimal("-0"), 0),
        (Decimal("1E+2"), 100),
        (Decimal(_INT64_MAX), _INT64_MAX),
        (Decimal(-_INT64_MAX - 1), -_INT64_MAX - 1),
        (Decimal(_INT64_MAX + 1), float(_INT64_MAX + 1)),
        (Decimal("1E+300"), 1e300),
        (Decimal("12.50"), 12.5),
        (Decimal("1E-400"), 0.0),
    ],
)
def test_a_decimal_is_an_int_within_64_bits_otherwise_the_nearest_float(value: Decimal, sent: Any) -> None:
    received = track({"x": value})["parameters"]["x"]
    assert received == sent
    assert type(received) is type(sent)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (Decimal("1E+999999"), "a Decimal of about 1e+999999 is beyond the range of a JSON number (a float)"),
        (Decimal("-1E+5000"), "a Decimal of about -1e+5000 is beyond the range of a JSON number (a float)"),
        (Decimal("123456789E+400"), "a Decimal of about 1.23457e+408 is beyond the range of a JSON number"),
        (Decimal("NaN"), "Decimal('NaN') is not a finite number"),
        (Decimal("-sNaN"), "Decimal('-sNaN') is not a finite number"),
        (Decimal("Infinity"), "Decimal('Infinity') is not a finite number"),
    ],
)
def test_a_decimal_beyond_every_json_number_is_refused_without_being_expanded(
    value: Decimal, reason: str
) -> None:
    with pytest.raises(fa.ValidationError) as info:
        track({"cart": [{"total": value}]})
    assert info.value.argument == "parameters"
    assert info.value.path == "parameters['cart'][0]['total']"
    assert str(info.value).startswith(f"parameters['cart'][0]['total'] cannot be sent: {reason}")


@pytest.fixture
def int_digit_limit() -> Iterator[None]:
    """Python's default limit on the digits of an int written as text, whatever the environment set."""
    if not hasattr(sys, "set_int_max_str_digits"):
        pytest.skip("this Python (before 3.10.7) writes integers of any length")
    before = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(4300)
    yield
    sys.set_int_max_str_digits(before)


@pytest.mark.usefixtures("int_digit_limit")
def test_an_integer_too_long_for_the_encoder_is_refused_naming_its_path() -> None:
    huge = 10**5000
    with pytest.raises(fa.ValidationError, match="is an integer of more than 4300 digits") as info:
        track({"ok": 1, "counts": [1, huge]})
    assert (info.value.argument, info.value.path) == ("parameters", "parameters['counts'][1]")
    with pytest.raises(fa.ValidationError, match="has an integer key of more than 4300 digits") as key:
        message.identify_body("u", {"by_id": {huge: "x"}}, 1024)
    assert (key.value.argument, key.value.path) == ("traits", "traits['by_id']")
    with pytest.raises(fa.ValidationError) as variable:
        message.transactional_body("u", "welcome", "email", {"n": -huge}, 1024)
    assert (variable.value.argument, variable.value.path) == ("variables", "variables['n']")


# --- every refusal names its argument and path (issue 8, item 11) -----------------------------


@pytest.mark.parametrize(
    ("parameters", "path", "reason"),
    [
        ({"\ud800": 1}, "parameters", "has the key '\\ud800', a string with lone surrogates"),
        ({"ok": {"x\udc00": 1}}, "parameters['ok']", "has the key 'x\\udc00', a string with lone surrogates"),
        ({"deep": {float("nan"): 1}}, "parameters['deep']", "has the key nan, which JSON cannot represent"),
        ({"deep": {float("inf"): 1}}, "parameters['deep']", "has the key inf, which JSON cannot represent"),
        ({"deep": [{float("-inf"): 1}]}, "parameters['deep'][0]", "has the key -inf, which JSON cannot"),
        ({"deep": {(1, 2): 1}}, "parameters['deep']", "has a key of type tuple: keys must be str, int"),
    ],
)
def test_a_bad_key_names_the_object_that_holds_it(parameters: Any, path: str, reason: str) -> None:
    with pytest.raises(fa.ValidationError) as info:
        track(parameters)
    assert (info.value.argument, info.value.path) == ("parameters", path)
    assert str(info.value).startswith(f"{path} {reason}")
    with pytest.raises(fa.ValidationError) as traits:
        message.identify_body("u", parameters, 1024)
    assert traits.value.argument == "traits"
    assert traits.value.path == path.replace("parameters", "traits", 1)


class _Hostile(str):
    """A str subclass whose every overridable method fails: none may run while sending it."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ ran")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ ran")

    def __len__(self) -> int:
        raise RuntimeError("__len__ ran")

    def __hash__(self) -> int:
        return str.__hash__(self)

    def __eq__(self, other: object) -> bool:
        return str.__eq__(self, other)

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        raise RuntimeError("encode ran")


def test_str_subclass_values_and_keys_are_sent_as_their_characters_without_running_their_code() -> None:
    assert track({_Hostile("key"): _Hostile("value")})["parameters"] == {"key": "value"}
    with pytest.raises(fa.ValidationError, match="lone surrogates") as value:
        track({"text": _Hostile("bad\ud800")})
    assert value.value.path == "parameters['text']"
    with pytest.raises(fa.ValidationError, match="lone surrogates") as key:
        track({"nested": {_Hostile("bad\ud800"): 1}})
    assert key.value.path == "parameters['nested']"


def test_a_none_key_is_sent_as_null_like_json_dumps_does() -> None:
    parameters = {None: "none", 1.5: "float", 7: "int", False: "bool"}
    assert track(parameters)["parameters"] == json.loads(json.dumps(parameters))
    assert track(parameters)["parameters"] == {"null": "none", "1.5": "float", "7": "int", "false": "bool"}


# --- a str subclass as an id is sent as its own characters ------------------------------------


class PlanName(str, enum.Enum):
    PRO = "pro"


class Translated(str):
    """Like a lazy translation string: __str__ answers something other than its characters."""

    def __str__(self) -> str:
        return "None"


_STRING_SUBCLASS_IDS: list[Any] = [PlanName.PRO, Translated("pro"), _Hostile("pro")]
if hasattr(enum, "StrEnum"):  # Python 3.11+
    _STRING_SUBCLASS_IDS.append(enum.StrEnum("Plans", {"PRO": "pro"}).PRO)


@pytest.mark.parametrize("value", _STRING_SUBCLASS_IDS, ids=lambda value: type(value).__name__)
def test_a_str_subclass_id_is_sent_as_its_own_characters(value: str) -> None:
    user_id, body = message.track_body(value, value, None, None, 1024)
    assert type(user_id) is str
    assert user_id == "pro"
    decoded = json.loads(body)
    assert (decoded["external_id"], decoded["event"]) == ("pro", "pro")
    user_id, body = message.identify_body(value, None, 1024)
    assert (type(user_id), user_id, json.loads(body)["userId"]) == (str, "pro", "pro")
    body = message.transactional_body(value, value, "email", None, 1024)
    assert (json.loads(body)["user_id"], json.loads(body)["template_id"]) == ("pro", "pro")
    assert message.require_id(value, "user_id") == "pro"


def test_an_empty_str_subclass_id_is_refused_as_empty() -> None:
    with pytest.raises(fa.ValidationError, match="user_id is required") as info:
        message.identify_body(_Hostile(""), None, 1024)
    assert info.value.argument == "user_id"


# --- accepted shapes and limits ---------------------------------------------------------------


class _ReadOnlyMapping(Mapping[str, Any]):
    def __init__(self, **items: Any) -> None:
        self._items = items

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


@pytest.mark.parametrize(
    "make",
    [OrderedDict, lambda **items: types.MappingProxyType(items), _ReadOnlyMapping],
    ids=["OrderedDict", "MappingProxyType", "custom Mapping"],
)
def test_any_mapping_is_accepted_as_a_json_object_at_the_top_and_inside(make: Callable[..., Any]) -> None:
    outer = make(plan="pro", inner=make(seats=3))
    expected = {"plan": "pro", "inner": {"seats": 3}}
    assert track(outer)["parameters"] == expected
    assert json.loads(message.identify_body("u", outer, 1024)[1])["traits"] == expected
    body = message.transactional_body("u", "welcome", "sms", outer, 1024)
    assert json.loads(body)["variables"] == expected


def test_max_message_bytes_counts_utf8_bytes_and_allows_exactly_the_limit() -> None:
    parameters = {"city": "Zürich", "who": "ユーザー"}
    _, body = message.track_body("u", "e", parameters, dt.datetime(2026, 1, 1), 32 * 1024)
    assert len(body) > len(body.decode())  # the limit is in bytes, not characters
    exact = message.track_body("u", "e", parameters, dt.datetime(2026, 1, 1), len(body))
    assert exact == ("u", body)
    with pytest.raises(
        fa.ValidationError, match=f"is {len(body)} bytes, over max_message_bytes={len(body) - 1}"
    ):
        message.track_body("u", "e", parameters, dt.datetime(2026, 1, 1), len(body) - 1)


def test_one_object_referenced_twice_is_not_a_cycle() -> None:
    shared = {"sku": "a-1"}
    listed = [shared]
    parameters = {"first": shared, "second": shared, "items": [listed, listed], "bad": object()}
    with pytest.raises(fa.ValidationError) as info:
        track(parameters)
    assert info.value.path == "parameters['bad']"  # found past the shared objects, none taken for a cycle
    del parameters["bad"]
    assert track(parameters)["parameters"] == {
        "first": shared,
        "second": shared,
        "items": [[shared], [shared]],
    }


def test_cycles_through_lists_and_converted_mappings_are_refused_with_their_path() -> None:
    looped: list[Any] = [1]
    looped.append(looped)
    with pytest.raises(fa.ValidationError, match="reference cycle") as through_list:
        track({"a": looped})
    assert through_list.value.path == "parameters['a'][1]"
    items: dict[str, Any] = {}
    mapping = _ReadOnlyMapping(items=items)
    items["back"] = mapping
    with pytest.raises(fa.ValidationError, match="reference cycle") as through_mapping:
        track({"m": mapping})
    assert through_mapping.value.path == "parameters['m']['items']['back']"


def _nested(levels: int) -> dict[str, Any]:
    """``levels`` objects, each the only value of the one around it."""
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def _refusal(levels: int) -> fa.ValidationError | None:
    """Encode ``levels`` nested objects; always from the same stack depth, which the limit depends on."""
    try:
        message.track_body("u", "e", _nested(levels), None, 10**9)
    except fa.ValidationError as refused:
        return refused
    return None


def test_nesting_is_accepted_up_to_the_encoders_limit_and_refused_one_level_beyond() -> None:
    low, high = 100, 100_000  # accepted, refused
    assert _refusal(low) is None
    assert _refusal(high) is not None
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if _refusal(middle) is None else (low, middle)
    refused = _refusal(high)
    assert refused is not None
    path = "parameters" + "['a']" * (high - 1)
    assert (refused.argument, refused.path) == ("parameters", path)
    assert str(refused).startswith(f"{path} is nested {high} levels deep: more than the JSON encoder can go")


def test_too_deep_a_value_is_a_validation_error_even_from_a_deep_calling_stack() -> None:
    def call_at_depth(frames_left: int) -> None:
        if frames_left:
            call_at_depth(frames_left - 1)
        else:
            message.track_body("u", "e", _nested(50_000), None, 10**9)

    depth = 0
    frame = sys._getframe()
    while frame.f_back is not None:
        frame, depth = frame.f_back, depth + 1
    with pytest.raises(fa.ValidationError, match="levels deep") as info:
        call_at_depth(sys.getrecursionlimit() - depth - 30)
    assert info.value.argument == "parameters"
