"""The retry policy and the single-request delivery loop, at the unit level (``responses``)."""

from __future__ import annotations

import itertools
import threading
import time

import pytest
import requests
import responses
from freezegun import freeze_time

import flameup_analytics as fa
from flameup_analytics.delivery import Result, deliver
from flameup_analytics.retry import RetryPolicy, parse_retry_after
from flameup_analytics.transport import Request, RequestsTransport

URL = "http://127.0.0.1:9/api/v1/track"


class RecordingAbort(threading.Event):
    """An abort event whose waits return at once and are recorded, so no test sleeps."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None
        self.waits.append(timeout)
        return self.is_set()


def send(policy: RetryPolicy, abort: threading.Event | None = None) -> fa.Outcome:
    request = Request("POST", URL, {"Content-Type": "application/json"}, b"{}")
    return deliver(RequestsTransport(), request, policy, timeout=1.0, abort=abort or RecordingAbort())


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504, 599])
def test_transient_statuses_are_retryable(status: int) -> None:
    assert RetryPolicy.is_retryable(status)


@pytest.mark.parametrize("status", [400, 404, 409, 413, 422, 501, 505])
def test_other_failures_are_final(status: int) -> None:
    assert not RetryPolicy.is_retryable(status)


def test_waits_grow_exponentially_with_full_jitter_and_a_cap() -> None:
    policy = RetryPolicy(backoff_factor=0.5, max_backoff=3.0)
    ceilings = [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    for _ in range(200):
        waits = list(itertools.islice(policy.waits(), len(ceilings)))
        assert all(0 <= wait <= ceiling for wait, ceiling in zip(waits, ceilings, strict=True))
    # Full jitter spreads the waits over the whole range, not just near the ceiling.
    samples = [next(policy.waits()) for _ in range(500)]
    assert min(samples) < 0.1 and max(samples) > 0.4


def test_retry_after_is_a_minimum_and_too_long_ends_retries() -> None:
    policy = RetryPolicy(backoff_factor=0.5, max_retry_after=30)
    assert policy.delay(policy.waits(), 7.0) == 7.0
    assert policy.delay(policy.waits(), 31.0) is None
    assert 0 <= (policy.delay(policy.waits(), None) or 0) <= 0.5


def test_invalid_policies_are_refused() -> None:
    with pytest.raises(ValueError, match="max_retries"):
        RetryPolicy(max_retries=-1)
    with pytest.raises(ValueError, match="backoff_factor"):
        RetryPolicy(backoff_factor=-1)


@freeze_time("2026-11-26T10:00:00Z")
def test_retry_after_parses_seconds_and_http_dates() -> None:
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after(" 12 ") == 12.0
    assert parse_retry_after("Thu, 26 Nov 2026 10:00:30 GMT") == 30.0
    assert parse_retry_after("Thu, 26 Nov 2026 09:00:00 GMT") == 0.0  # in the past: no extra wait
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("-3") is None


@responses.activate
def test_a_transient_failure_is_retried_then_delivered() -> None:
    responses.post(URL, status=503, json={"error": {"message": "busy"}})
    responses.post(URL, status=200, json={"success": True})
    abort = RecordingAbort()
    outcome = send(RetryPolicy(), abort)
    assert outcome.result is Result.DELIVERED
    assert outcome.attempts == 2
    assert len(abort.waits) == 1


@responses.activate
def test_retry_after_sets_the_wait() -> None:
    responses.post(URL, status=429, headers={"Retry-After": "3"}, json={"error": {"message": "slow"}})
    responses.post(URL, status=200)
    abort = RecordingAbort()
    outcome = send(RetryPolicy(backoff_factor=0.01), abort)
    assert outcome.result is Result.DELIVERED
    assert abort.waits == [3.0]


@responses.activate
def test_a_final_rejection_is_not_retried_and_keeps_the_api_message() -> None:
    responses.post(URL, status=422, json={"error": {"message": "event name too long"}})
    outcome = send(RetryPolicy())
    assert outcome.result is Result.REJECTED
    assert outcome.attempts == 1
    assert isinstance(outcome.error, fa.APIError)
    assert outcome.error.status == 422
    assert outcome.error.message == "event name too long"
    assert len(responses.calls) == 1


@pytest.mark.parametrize("status", [401, 403])
@responses.activate
def test_auth_failures_are_not_retried_and_not_rejections(status: int) -> None:
    responses.post(URL, status=status, json={"error": {"message": "bad key"}})
    outcome = send(RetryPolicy())
    assert outcome.result is Result.UNAUTHORIZED
    assert len(responses.calls) == 1


@responses.activate
def test_network_errors_are_retried_until_the_budget_runs_out() -> None:
    responses.post(URL, body=requests.ConnectionError("refused"))
    abort = RecordingAbort()
    outcome = send(RetryPolicy(max_retries=3), abort)
    assert outcome.result is Result.EXHAUSTED
    assert outcome.attempts == 4
    assert len(responses.calls) == 4
    assert len(abort.waits) == 3
    assert isinstance(outcome.error, fa.TransportError)


@responses.activate
def test_a_long_retry_after_ends_the_retries_at_once() -> None:
    responses.post(URL, status=503, headers={"Retry-After": "3600"})
    outcome = send(RetryPolicy(max_retry_after=60))
    assert outcome.result is Result.EXHAUSTED
    assert len(responses.calls) == 1


@responses.activate
def test_an_abort_during_a_wait_ends_delivery() -> None:
    responses.post(URL, status=503)
    abort = RecordingAbort()
    abort.set()
    outcome = send(RetryPolicy(), abort)
    assert outcome.result is Result.ABORTED
    assert len(responses.calls) == 1


@responses.activate
def test_the_deadline_bounds_the_retries() -> None:
    responses.post(URL, status=503, headers={"Retry-After": "5"})
    request = Request("POST", URL, {}, b"{}")
    outcome = deliver(
        RequestsTransport(),
        request,
        RetryPolicy(),
        timeout=1.0,
        abort=RecordingAbort(),
        deadline=time.monotonic() + 2.0,
    )
    assert outcome.result is Result.EXHAUSTED
    assert len(responses.calls) == 1
