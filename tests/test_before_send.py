"""before_send: every track/identify passes through it in the caller's thread, against the real
local server; None filters (counted, never an error); a broken hook never loses a message."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

import flameup_analytics as fa
from flameup_analytics.testing import LocalServer

from .conftest import ClientFactory


def test_the_hook_sees_each_call_as_an_event_and_what_it_returns_is_sent(
    server: LocalServer, make_client: ClientFactory
) -> None:
    seen: list[tuple[fa.Event, int]] = []

    def scrub(event: fa.Event) -> fa.Event:
        seen.append((event, threading.get_ident()))
        properties = {key: value for key, value in event.properties.items() if key != "email"}
        return event.replace(properties=properties)

    client = make_client(before_send=scrub)
    client.track("user_1", "signed_up", {"plan": "pro", "email": "jane@example.com"})
    client.identify("user_1", {"name": "Jane", "email": "jane@example.com"})
    assert client.flush(timeout=5)

    assert [event for event, _ in seen] == [
        fa.Event("track", "user_1", {"plan": "pro", "email": "jane@example.com"}, "signed_up"),
        fa.Event("identify", "user_1", {"name": "Jane", "email": "jane@example.com"}),
    ]
    assert {thread for _, thread in seen} == {threading.get_ident()}  # the caller's thread
    (track,) = server.tracks()
    (identify,) = server.identifies()
    assert track.json["parameters"] == {"plan": "pro"}
    assert identify.json["traits"] == {"name": "Jane"}


def test_the_hook_may_rename_an_event_and_move_its_timestamp(
    server: LocalServer, make_client: ClientFactory
) -> None:
    import datetime as dt

    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    client = make_client(before_send=lambda event: event.replace(name="renamed", timestamp=when))
    client.track("user_1", "original")
    assert client.flush(timeout=5)
    (track,) = server.tracks()
    assert (track.json["event"], track.json["timestamp"]) == ("renamed", "2026-01-02T03:04:05.000Z")


def test_none_filters_the_message_counted_in_stats_and_never_an_error(
    server: LocalServer, make_client: ClientFactory
) -> None:
    errors: list[object] = []
    outcomes: list[fa.MessageOutcome] = []
    client = make_client(
        before_send=lambda event: None if event.properties.get("internal") else event,
        on_error=lambda error, messages: errors.append(error),
        on_outcome=outcomes.append,
    )
    for number in range(10):
        client.track("user_1", "clicked", {"n": number, "internal": number % 2 == 0})
    assert client.flush(timeout=5)

    stats = client.stats()
    assert sorted(request.json["parameters"]["n"] for request in server.tracks()) == [1, 3, 5, 7, 9]
    assert (stats.filtered, stats.delivered, stats.enqueued) == (5, 5, 10)
    assert stats.enqueued + stats.replayed == (
        stats.queued + stats.delivered + stats.rejected + stats.dropped + stats.spooled + stats.filtered
    )
    assert errors == []
    assert len(outcomes) == 5  # filtered messages never reach the pipeline


def test_a_hook_that_raises_leaves_the_message_unchanged_and_is_logged_once_a_minute(
    server: LocalServer, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: fa.Event) -> fa.Event:
        raise KeyError("oops")

    client = make_client(before_send=broken)
    with caplog.at_level(logging.ERROR, logger="flameup_analytics"):
        client.track("user_1", "first", {"a": 1})
        client.track("user_1", "second", {"a": 2})
    assert client.flush(timeout=5)
    # Sorted: one user's tracks may be in flight together (ordering="relaxed").
    assert sorted(request.json["event"] for request in server.tracks()) == ["first", "second"]
    complaints = [record for record in caplog.records if "before_send" in record.getMessage()]
    assert len(complaints) == 1
    assert "raised KeyError" in complaints[0].getMessage() and complaints[0].exc_info is not None
    assert client.stats().filtered == 0


@pytest.mark.parametrize(
    "returned",
    [
        pytest.param({"kind": "track"}, id="a dict"),
        pytest.param(fa.Event("identify", "user_1", {}), id="an event of another kind"),
    ],
)
def test_a_hook_that_returns_something_else_leaves_the_message_unchanged(
    returned: Any, server: LocalServer, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client(before_send=lambda event: returned)
    with caplog.at_level(logging.ERROR, logger="flameup_analytics"):
        client.track("user_1", "kept", {"a": 1})
    assert client.flush(timeout=5)
    (track,) = server.tracks()
    assert (track.json["event"], track.json["parameters"]) == ("kept", {"a": 1})
    assert any("expected an Event of its kind or None" in record.getMessage() for record in caplog.records)


def test_changing_the_properties_in_place_never_changes_the_callers_dict(
    server: LocalServer, make_client: ClientFactory
) -> None:
    def mutate(event: fa.Event) -> fa.Event:
        event.properties["added"] = True
        return event

    parameters = {"a": 1}
    client = make_client(before_send=mutate)
    client.track("user_1", "e", parameters)
    assert client.flush(timeout=5)
    assert parameters == {"a": 1}
    assert server.tracks()[0].json["parameters"] == {"a": 1, "added": True}


def test_what_the_hook_returns_is_validated_like_the_calls_own_arguments(make_client: ClientFactory) -> None:
    client = make_client(before_send=lambda event: event.replace(properties={"bad": float("nan")}))
    with pytest.raises(fa.ValidationError, match=r"parameters\['bad'\] is nan") as caught:
        client.track("user_1", "e")
    assert caught.value.argument == "parameters"


def test_the_calls_arguments_are_checked_before_the_hook_runs(make_client: ClientFactory) -> None:
    seen: list[fa.Event] = []

    def record(event: fa.Event) -> fa.Event:
        seen.append(event)
        return event

    client = make_client(before_send=record)
    with pytest.raises(fa.ValidationError, match="external_id"):
        client.track("", "e")
    with pytest.raises(fa.ValidationError, match="timestamp"):
        client.track("user_1", "e", timestamp="yesterday")
    assert seen == []


def test_before_send_must_be_callable(make_client: ClientFactory) -> None:
    with pytest.raises(fa.ConfigurationError) as caught:
        make_client(before_send="scrub")
    assert caught.value.option == "before_send"


def test_a_disabled_client_runs_the_hook_and_counts_nothing() -> None:
    seen: list[fa.Event] = []
    client = fa.Client(disabled=True, before_send=lambda event: seen.append(event))
    client.track("user_1", "e")
    assert len(seen) == 1
    assert client.stats().filtered == 0
