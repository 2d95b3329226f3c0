"""Caller-chosen idempotency keys, json_default and default_parameters, against the real local server."""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import flameup_analytics as fa
from flameup_analytics.testing import Fault, LocalServer

from .conftest import ClientFactory

# --- idempotency_key -----------------------------------------------------------------------------


def test_a_callers_key_is_sent_instead_of_the_generated_one(
    server: LocalServer, make_client: ClientFactory
) -> None:
    client = make_client()
    client.track("user_1", "order_completed", idempotency_key="order-8812")
    client.identify("user_1", {"plan": "pro"}, idempotency_key="plan-5521")
    client.track("user_1", "generated")
    assert client.flush(timeout=5)
    keys = {request.json.get("event", "identify"): request.idempotency_key for request in server.accepted}
    assert keys["order_completed"] == "order-8812"
    assert keys["identify"] == "plan-5521"
    assert keys["generated"] not in ("order-8812", "plan-5521")


def test_a_callers_key_is_kept_across_retries(server: LocalServer, make_client: ClientFactory) -> None:
    server.add_fault(Fault(status=503, times=2))
    client = make_client()
    client.track("user_1", "e", idempotency_key="task-1")
    assert client.flush(timeout=5)
    assert [request.idempotency_key for request in server.requests] == ["task-1"] * 3


def test_a_callers_key_is_kept_by_the_spool_across_a_restart(
    server: LocalServer, make_client: ClientFactory, tmp_path: Path
) -> None:
    server.add_fault(Fault(status=503, times=None))
    first = make_client(spool_dir=tmp_path / "spool", max_retries=0)
    first.track("user_1", "e", idempotency_key="order-77")
    first.identify("user_1", {"a": 1}, idempotency_key="person-77")
    first.flush(timeout=5)
    first.shutdown()
    assert first.stats().spooled == 2

    server.clear_faults()
    second = make_client(spool_dir=tmp_path / "spool")
    assert second.replay_spool(timeout=10)
    assert sorted(request.idempotency_key or "" for request in server.accepted) == ["order-77", "person-77"]


def test_send_transactional_keeps_a_callers_key_across_its_retries(
    server: LocalServer, make_client: ClientFactory
) -> None:
    server.add_fault(Fault(status=503, times=1, kind="transactional"))
    client = make_client()
    client.send_transactional("user_1", "receipt", "email", {"n": 1}, idempotency_key="receipt-9")
    client.send_transactional("user_1", "receipt", "email", {"n": 2})
    keys = [request.idempotency_key for request in server.requests if request.kind == "transactional"]
    assert keys[:2] == ["receipt-9", "receipt-9"]
    assert keys[2] not in (None, "receipt-9")


def test_a_key_of_255_visible_ascii_characters_is_accepted(
    server: LocalServer, make_client: ClientFactory
) -> None:
    key = "".join(chr(code) for code in range(0x21, 0x7F)) * 3
    client = make_client()
    client.track("user_1", "e", idempotency_key=key[:255])
    assert client.flush(timeout=5)
    assert server.tracks()[0].idempotency_key == key[:255]


@pytest.mark.parametrize(
    "key",
    ["", "x" * 256, "order 1", "tab\there", "line\n", "caf\u00e9", 42, b"bytes"],
    ids=["empty", "256 characters", "a space", "a tab", "a newline", "non-ASCII", "an int", "bytes"],
)
def test_an_unusable_key_is_refused_naming_it(key: Any, make_client: ClientFactory) -> None:
    client = make_client()
    calls: list[Callable[[], object]] = [
        lambda: client.track("user_1", "e", idempotency_key=key),
        lambda: client.identify("user_1", idempotency_key=key),
        lambda: client.send_transactional("user_1", "t", "email", idempotency_key=key),
    ]
    for call in calls:
        with pytest.raises(fa.ValidationError, match="idempotency_key") as caught:
            call()
        assert caught.value.argument == "idempotency_key"
    assert client.stats().enqueued == 0


# --- json_default ----------------------------------------------------------------------------------


class Money:
    def __init__(self, cents: int) -> None:
        self.cents = cents


class Opaque:
    pass


def money_to_json(value: object) -> object:
    if isinstance(value, Money):
        return {"cents": value.cents, "at": dt.datetime(2026, 1, 1)}
    raise TypeError(f"{type(value).__name__} is not supported")


def test_json_default_converts_what_the_sdk_does_not_and_its_result_is_converted_as_usual(
    server: LocalServer, make_client: ClientFactory
) -> None:
    seen: list[type] = []

    def convert(value: object) -> object:
        seen.append(type(value))
        return money_to_json(value)

    client = make_client(json_default=convert)
    client.track(
        "user_1", "paid", {"price": Money(995), "when": dt.date(2026, 2, 3), "d": decimal.Decimal(2)}
    )
    client.identify("user_1", {"balance": Money(5)})
    client.send_transactional("user_1", "receipt", "email", {"total": Money(1)})
    assert client.flush(timeout=5)
    assert server.tracks()[0].json["parameters"] == {
        "price": {"cents": 995, "at": "2026-01-01T00:00:00.000Z"},
        "when": "2026-02-03",
        "d": 2,
    }
    assert server.identifies()[0].json["traits"] == {
        "balance": {"cents": 5, "at": "2026-01-01T00:00:00.000Z"}
    }
    assert server.transactionals()[0].json["variables"] == {
        "total": {"cents": 1, "at": "2026-01-01T00:00:00.000Z"}
    }
    assert seen == [Money, Money, Money]  # never called for the types the SDK converts itself


@pytest.mark.parametrize(
    ("json_default", "reason"),
    [
        pytest.param(
            money_to_json, r"is not JSON-serializable \(Opaque is not supported", id="raises TypeError"
        ),
        pytest.param(lambda value: {"a": 1}["missing"], "json_default raised KeyError", id="raises KeyError"),
        pytest.param(lambda value: value, "json_default returned the Opaque unchanged", id="returns it"),
        pytest.param(lambda value: float("nan"), "is nan, which JSON cannot represent", id="returns NaN"),
        pytest.param(lambda value: Opaque(), "was converted 100 times", id="never ends"),
    ],
)
def test_a_value_json_default_cannot_convert_is_refused_naming_its_path(
    json_default: Any, reason: str, make_client: ClientFactory
) -> None:
    client = make_client(json_default=json_default)
    with pytest.raises(fa.ValidationError, match=reason) as caught:
        client.track("user_1", "e", {"ok": 1, "deep": [Opaque()]})
    assert (caught.value.argument, caught.value.path) == ("parameters", "parameters['deep'][0]")


def test_without_json_default_an_unknown_type_is_still_refused(make_client: ClientFactory) -> None:
    with pytest.raises(fa.ValidationError, match="is not JSON-serializable"):
        make_client().track("user_1", "e", {"price": Money(1)})


def test_json_default_must_be_callable(make_client: ClientFactory) -> None:
    with pytest.raises(fa.ConfigurationError) as caught:
        make_client(json_default={"Money": str})
    assert caught.value.option == "json_default"


# --- default_parameters ----------------------------------------------------------------------------


def test_default_parameters_are_merged_into_every_track_and_the_calls_keys_win(
    server: LocalServer, make_client: ClientFactory
) -> None:
    defaults = {"app_version": "4.2.0", "region": "eu"}
    client = make_client(default_parameters=defaults)
    defaults["region"] = "changed after construction"
    client.track("user_1", "a")
    client.track("user_1", "b", {"region": "us", "plan": "pro"})
    client.identify("user_1", {"name": "Jane"})
    assert client.flush(timeout=5)
    by_event = sorted(server.tracks(), key=lambda request: request.json["event"])
    assert [request.json["parameters"] for request in by_event] == [
        {"app_version": "4.2.0", "region": "eu"},
        {"app_version": "4.2.0", "region": "us", "plan": "pro"},
    ]
    assert server.identifies()[0].json["traits"] == {"name": "Jane"}


def test_default_parameters_are_what_before_send_sees(
    server: LocalServer, make_client: ClientFactory
) -> None:
    seen: list[dict[Any, Any]] = []

    def record(event: fa.Event) -> fa.Event:
        seen.append(event.properties)
        return event

    client = make_client(default_parameters={"env": "prod"}, before_send=record)
    client.track("user_1", "a", {"n": 1})
    assert seen == [{"env": "prod", "n": 1}]


def test_default_parameters_are_read_only(make_client: ClientFactory) -> None:
    client = make_client(default_parameters={"env": "prod"})
    assert client.default_parameters == {"env": "prod"}
    with pytest.raises(TypeError):
        client.default_parameters["env"] = "dev"  # type: ignore[index]


def test_default_parameters_may_use_json_default(server: LocalServer, make_client: ClientFactory) -> None:
    client = make_client(default_parameters={"fee": Money(3)}, json_default=money_to_json)
    client.track("user_1", "a")
    assert client.flush(timeout=5)
    assert server.tracks()[0].json["parameters"]["fee"]["cents"] == 3


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        pytest.param(["env", "prod"], "must be a mapping", id="a list"),
        pytest.param({"score": float("nan")}, r"default_parameters\['score'\] is nan", id="NaN"),
        pytest.param(
            {"price": Money(1)}, r"default_parameters\['price'\] is not JSON-serializable", id="no JSON form"
        ),
    ],
)
def test_unusable_default_parameters_are_refused_at_construction(
    value: Any, reason: str, make_client: ClientFactory
) -> None:
    with pytest.raises(fa.ConfigurationError, match=reason) as caught:
        make_client(default_parameters=value)
    assert caught.value.option == "default_parameters"
