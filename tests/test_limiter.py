"""The adaptive concurrency limit, answer by answer, with explicit clocks (no threads, no sleeps)."""

from __future__ import annotations

import itertools

import pytest

from flameup_analytics.limiter import INITIAL, ConcurrencyLimit

RTT = 0.05  # a WAN round trip


def settled(maximum: int = 128) -> ConcurrencyLimit:
    """A limit past its slow start (ended by a 429, as in real life), at 32, with a 50 ms history."""
    limit = ConcurrencyLimit(maximum)
    now = 0.0
    for _ in range(600):  # the long-run average learns 50 ms
        limit.answered(RTT, backlog=False, now=now)
        now += RTT
    limit.limit = 64.0
    limit.overloaded()
    assert limit.slots == 32
    return limit


def test_a_new_limit_starts_small_and_within_the_maximum() -> None:
    assert ConcurrencyLimit(128).slots == INITIAL
    assert ConcurrencyLimit(3).slots == 3


def test_without_a_backlog_the_limit_never_grows() -> None:
    limit = ConcurrencyLimit(128)
    for n in range(1000):
        limit.answered(RTT, backlog=False, now=n * RTT / 8)
    assert limit.slots == INITIAL


def test_slow_start_doubles_the_limit_each_round_trip_up_to_the_maximum() -> None:
    limit = ConcurrencyLimit(128)
    now = 0.0
    for _ in range(INITIAL):  # one round trip's answers, all with messages waiting
        limit.answered(RTT, backlog=True, now=now)
    assert limit.slots == 2 * INITIAL
    for _ in range(500):
        now += RTT / 16
        limit.answered(RTT, backlog=True, now=now)
    assert limit.slots == 128


def test_an_overload_halves_the_limit_down_to_one_and_ends_the_slow_start() -> None:
    limit = ConcurrencyLimit(128)
    limit.overloaded()
    assert limit.slots == INITIAL // 2
    for _ in range(10):
        limit.overloaded()
    assert limit.slots == 1
    # After the storm, growth is about sqrt(limit) per round trip, not one per answer.
    now = 0.0
    for _ in range(20):  # one round trip's answers
        limit.answered(RTT, backlog=True, now=now)
    assert limit.slots == 2
    for _ in range(10):
        now += RTT
        for _ in range(limit.slots):
            limit.answered(RTT, backlog=True, now=now)
    assert 10 <= limit.slots <= 40


def test_a_burst_of_slow_answers_within_one_round_trip_moves_the_limit_once() -> None:
    # A host thread holding the GIL delays every answer of a round trip by the same few
    # milliseconds: one signal. Taken answer by answer it used to collapse 32 towards 1.
    limit = settled()
    now = 1000.0
    for _ in range(100):
        limit.answered(4 * RTT, backlog=True, now=now)
    assert limit.slots >= 28


def test_round_trips_that_stay_much_slower_shrink_the_limit_gently() -> None:
    limit = settled()
    now = 1000.0
    slots = [limit.slots]
    for _ in range(8):  # 8 round trips, each answer five times slower than usual
        for _ in range(limit.slots):
            limit.answered(5 * RTT, backlog=True, now=now)
        now += 5 * RTT
        slots.append(limit.slots)
    assert slots[-1] <= 24
    assert all(after >= 0.88 * before for before, after in itertools.pairwise(slots))


def test_steady_answers_with_a_backlog_grow_by_about_a_square_root_per_round_trip() -> None:
    limit = settled()
    now = 1000.0
    for _ in range(3):
        for _ in range(limit.slots):
            limit.answered(RTT, backlog=True, now=now)
        now += RTT
    assert 32 + 3 * 5 <= limit.slots <= 32 + 3 * 8


@pytest.mark.parametrize("until", [5.0, 10.0])
def test_a_pause_holds_every_new_attempt_until_it_ends(until: float) -> None:
    limit = ConcurrencyLimit(8)
    limit.pause(until)
    limit.pause(1.0)  # an earlier end never shortens a pause
    assert not limit.has_room(0, until - 0.001)
    assert limit.has_room(0, until)
    assert not limit.has_room(8, until)
