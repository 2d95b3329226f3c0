"""Timestamps are UTC whatever the machine's local zone: these tests run under zones with daylight
saving time, on both sides of their transitions and on the transitions themselves."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from zoneinfo import ZoneInfo

import pytest

from flameup_analytics import message

SYDNEY = ZoneInfo("Australia/Sydney")
NEW_YORK = ZoneInfo("America/New_York")
UTC = dt.timezone.utc


@pytest.fixture(params=["Australia/Sydney", "America/New_York"], autouse=True)
def local_zone(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The process's local zone (``TZ``) for the test, restored after it."""
    zone: str = request.param
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    assert time.timezone != 0 and time.daylight  # the zone really is in effect, with DST
    yield zone
    monkeypatch.undo()
    time.tzset()


def _utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, microsecond: int = 0
) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, microsecond, tzinfo=UTC)


#: Instants around each zone's 2026 transitions (the UTC instant of the change itself, a
#: millisecond before, half a second after), and in the middle of summer and winter.
_INSTANTS = [
    _utc(2026, 1, 15, 12, 0, 0),
    _utc(2026, 7, 15, 12, 0, 0),
    *(
        transition + shift
        for transition in (
            _utc(2026, 4, 4, 16, 0, 0),  # Sydney: 03:00 AEDT becomes 02:00 AEST
            _utc(2026, 10, 3, 16, 0, 0),  # Sydney: 02:00 AEST becomes 03:00 AEDT
            _utc(2026, 3, 8, 7, 0, 0),  # New York: 02:00 EST becomes 03:00 EDT
            _utc(2026, 11, 1, 6, 0, 0),  # New York: 02:00 EDT becomes 01:00 EST
        )
        for shift in (dt.timedelta(milliseconds=-1), dt.timedelta(0), dt.timedelta(milliseconds=500))
    ),
]


def _stamp(instant: dt.datetime) -> str:
    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{instant.microsecond // 1000:03d}Z"


def _millis(stamp: str) -> int:
    parsed = dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return round(parsed.timestamp() * 1000)


def test_now_timestamp_is_the_current_utc_time() -> None:
    before = int(time.time() * 1000)
    stamp = message.now_timestamp()
    after = int(time.time() * 1000)
    assert before <= _millis(stamp) <= after


@pytest.mark.parametrize("instant", _INSTANTS, ids=lambda instant: instant.isoformat())
def test_now_timestamp_is_utc_on_both_sides_of_each_transition(
    instant: dt.datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(time, "time", instant.timestamp)
    assert message.now_timestamp() == _stamp(instant)
    _, body = message.track_body("u", "e", None, None, 1024)
    assert json.loads(body)["timestamp"] == _stamp(instant)


@pytest.mark.parametrize(
    "naive",
    [
        dt.datetime(2026, 4, 5, 2, 30, 0, 123000),  # twice in Sydney
        dt.datetime(2026, 4, 5, 2, 30, 0, 123000, fold=1),
        dt.datetime(2026, 10, 4, 2, 30, 0, 123000),  # never in Sydney
        dt.datetime(2026, 3, 8, 2, 30, 0, 123000),  # never in New York
        dt.datetime(2026, 11, 1, 1, 30, 0, 123000, fold=1),  # twice in New York
        dt.datetime(2026, 7, 15, 12, 0, 0, 123000),
    ],
)
def test_a_naive_datetime_is_utc_not_local_time(naive: dt.datetime) -> None:
    _, body = message.track_body("u", "e", {"at": naive}, naive, 1024)
    decoded = json.loads(body)
    assert decoded["timestamp"] == decoded["parameters"]["at"] == naive.strftime("%Y-%m-%dT%H:%M:%S.123Z")


@pytest.mark.parametrize(
    ("aware", "sent"),
    [
        # The wall time that happens twice: fold=0 is the first (summer) one, fold=1 the second.
        (dt.datetime(2026, 4, 5, 2, 30, tzinfo=SYDNEY), "2026-04-04T15:30:00.000Z"),
        (dt.datetime(2026, 4, 5, 2, 30, fold=1, tzinfo=SYDNEY), "2026-04-04T16:30:00.000Z"),
        (dt.datetime(2026, 11, 1, 1, 30, tzinfo=NEW_YORK), "2026-11-01T05:30:00.000Z"),
        (dt.datetime(2026, 11, 1, 1, 30, fold=1, tzinfo=NEW_YORK), "2026-11-01T06:30:00.000Z"),
        # The wall time that never happens: read with the offset in force before the change.
        (dt.datetime(2026, 10, 4, 2, 30, tzinfo=SYDNEY), "2026-10-03T16:30:00.000Z"),
        (dt.datetime(2026, 3, 8, 2, 30, tzinfo=NEW_YORK), "2026-03-08T07:30:00.000Z"),
        (dt.datetime(2026, 7, 15, 22, 0, 0, 999999, tzinfo=SYDNEY), "2026-07-15T12:00:00.999Z"),
        (dt.datetime(2026, 7, 15, 8, 0, tzinfo=NEW_YORK), "2026-07-15T12:00:00.000Z"),
    ],
)
def test_an_aware_datetime_is_converted_to_utc_on_and_around_transitions(
    aware: dt.datetime, sent: str
) -> None:
    _, body = message.track_body("u", "e", {"at": aware}, aware, 1024)
    decoded = json.loads(body)
    assert decoded["timestamp"] == decoded["parameters"]["at"] == sent


@pytest.mark.parametrize("instant", _INSTANTS, ids=lambda instant: instant.isoformat())
def test_a_datetime_in_the_machines_own_zone_is_sent_as_its_utc_instant(instant: dt.datetime) -> None:
    # What datetime.now().astimezone() gives: local wall time with the local offset, fold included.
    local = dt.datetime.fromtimestamp(instant.timestamp()).astimezone()
    assert local.utcoffset() != dt.timedelta(0)
    _, body = message.track_body("u", "e", None, local, 1024)
    assert json.loads(body)["timestamp"] == _stamp(instant)
