"""One request to the API, retried under a :class:`RetryPolicy` until it reaches a final outcome.

Shared by the background worker (one call per message) and the synchronous calls.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable

from ._value import Value, set_field
from .errors import APIError, ConfigurationError, FlameupError, TransportError
from .retry import AUTH_STATUSES, RetryPolicy, parse_retry_after
from .transport import Request, Response, Transport


class Result(enum.Enum):
    """How the attempts to send one message ended (the ``result`` of an :class:`Outcome`)."""

    #: A 2xx: the API took it.
    DELIVERED = "delivered"
    #: A 4xx other than 401/403: the message itself is wrong and no retry can help.
    REJECTED = "rejected"
    #: 401/403: the key is wrong; the message is kept for when it is fixed.
    UNAUTHORIZED = "unauthorized"
    #: 3xx: the host is wrong (say, http:// redirected to https://); kept for when it is fixed.
    MISDIRECTED = "misdirected"
    #: The transport cannot send as configured (say, a proxy it cannot use); kept for when it is fixed.
    MISCONFIGURED = "misconfigured"
    #: The retry budget, the deadline or a too-long ``Retry-After`` ended the retries.
    EXHAUSTED = "exhausted"
    #: Shutdown interrupted a wait between attempts.
    ABORTED = "aborted"


class Outcome(Value):
    """Where the attempts to send one message ended: the result, how many requests were made,
    the last answer (None when none came) and the error behind a failure."""

    __slots__ = ("result", "attempts", "response", "error")
    result: Result
    attempts: int
    response: Response | None
    error: FlameupError | None

    def __init__(
        self,
        result: Result,
        attempts: int,
        response: Response | None = None,
        error: FlameupError | None = None,
    ) -> None:
        set_field(self, "result", result)
        set_field(self, "attempts", attempts)
        set_field(self, "response", response)
        set_field(self, "error", error)

    @property
    def status(self) -> int | None:
        """The last HTTP status received, or None when no answer came."""
        return None if self.response is None else self.response.status

    @property
    def tried(self) -> tuple[int, int | None]:
        """``(attempts, status)``: what was tried, as ``on_outcome`` reports it."""
        return self.attempts, self.status


def api_error(response: Response) -> APIError:
    return APIError(response.error_message(), status=response.status, body=response.body)


def judge(response: Response | None, error: FlameupError | None, policy: RetryPolicy) -> Verdict:
    """What one attempt's answer (or the lack of one) means: a final result, or worth a retry."""
    if response is None:
        assert error is not None
        if isinstance(error, ConfigurationError):
            return Verdict(Result.MISCONFIGURED, error)
        return Verdict(None, error, overload=True)
    status = response.status
    if 200 <= status < 300:
        return _DELIVERED
    failure = api_error(response)
    if status in AUTH_STATUSES:
        return Verdict(Result.UNAUTHORIZED, failure)
    if 300 <= status < 400:
        return Verdict(Result.MISDIRECTED, failure)
    if not policy.is_retryable(status):
        return Verdict(Result.REJECTED, failure)
    retry_after = parse_retry_after(response.header("Retry-After"))
    return Verdict(None, failure, retry_after, overload=status in OVERLOAD_STATUSES)


class Verdict(Value):
    """:func:`judge`'s answer: ``result`` is None when the attempt is worth retrying."""

    __slots__ = ("result", "error", "retry_after", "overload")
    result: Result | None
    error: FlameupError | None
    retry_after: float | None
    #: Whether it says the API (or the way to it) is overloaded: the concurrency limit shrinks.
    overload: bool

    def __init__(
        self,
        result: Result | None,
        error: FlameupError | None,
        retry_after: float | None = None,
        overload: bool = False,
    ) -> None:
        self._set(result, error, retry_after, overload)


_DELIVERED = Verdict(Result.DELIVERED, None)

#: Answers that mean "too much": fewer requests in flight, not only a later retry.
OVERLOAD_STATUSES = frozenset({429, 502, 503, 504})


def deliver(
    transport: Transport,
    request: Request,
    policy: RetryPolicy,
    *,
    timeout: float,
    abort: threading.Event,
    deadline: float | None = None,
    on_retry: Callable[[], None] | None = None,
    on_attempt: Callable[[], None] | None = None,
) -> Outcome:
    """Send ``request`` until it succeeds, fails for good, runs out of retries or is aborted.

    Blocking, in the calling thread: for the synchronous calls and ``sync_mode``.
    ``deadline`` (a ``time.monotonic()`` value) bounds the whole call, waits and attempts included.
    Waits between attempts end early when ``abort`` is set, so shutdown deadlines hold.
    """
    waits = policy.waits()
    attempts = 0
    while True:
        attempts += 1
        attempt_timeout = timeout if deadline is None else min(timeout, deadline - time.monotonic())
        if attempt_timeout <= 0:
            return Outcome(Result.EXHAUSTED, attempts - 1, error=TransportError("deadline passed"))
        response: Response | None = None
        error: FlameupError | None = None
        if on_attempt is not None:
            on_attempt()
        try:
            response = transport.send(request, attempt_timeout)
        except (TransportError, ConfigurationError) as exc:
            error = exc
        verdict = judge(response, error, policy)
        if verdict.result is not None:
            return Outcome(verdict.result, attempts, response, verdict.error)
        delay = None if attempts > policy.max_retries else policy.delay(waits, verdict.retry_after)
        if delay is None or (deadline is not None and time.monotonic() + delay >= deadline):
            return Outcome(Result.EXHAUSTED, attempts, response, verdict.error)
        if on_retry is not None:
            on_retry()
        if abort.wait(delay):
            return Outcome(Result.ABORTED, attempts, response, verdict.error)
