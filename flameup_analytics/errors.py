"""Exceptions raised by the SDK. Every one derives from :class:`FlameupError`::

FlameupError
├── ConfigurationError (also a ValueError)   unusable options, at construction
├── ValidationError (also a ValueError)      a call's arguments, at the call site
├── APIError                                 a synchronous call failed for good
├── TransportError                           no HTTP answer came (inside the transports)
└── DeliveryError                            given to on_error with undelivered messages
"""

from __future__ import annotations


class FlameupError(Exception):
    """Base class of every exception this SDK raises."""


class ConfigurationError(FlameupError, ValueError):
    """The client cannot work with the options it was given (missing key, unusable host, ...).

    Raised at construction, never later from the background. ``option`` names the option at
    fault (``"api_key"``, ``"flush_at"``, ...) and ``env`` the environment variable that can set
    it, when there is one, so a command line can phrase its own advice.
    """

    def __init__(self, message: str, *, option: str | None = None, env: str | None = None) -> None:
        super().__init__(message)
        self.option = option
        self.env = env


class ValidationError(FlameupError, ValueError):
    """A call's arguments cannot become a valid API message.

    Raised synchronously at the call site so one bad call never reaches the queue.
    ``argument`` names the argument, ``path`` the place inside it (``parameters['cart'][2]``).
    """

    def __init__(self, message: str, *, argument: str, path: str | None = None) -> None:
        super().__init__(message)
        self.argument = argument
        self.path = path or argument


class APIError(FlameupError):
    """A synchronous call failed for good: the API's answer, or the last network error."""

    def __init__(self, message: str, *, status: int | None = None, body: bytes = b"") -> None:
        super().__init__(message if status is None else f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.body = body


class TransportError(FlameupError):
    """The request did not get an HTTP answer (connection refused or reset, timeout, DNS, TLS)."""


class DeliveryError(FlameupError):
    """Why queued messages could not be delivered; passed to ``on_error`` with the messages.

    ``reason`` is one of ``"queue_full"``, ``"retries_exhausted"``, ``"unauthorized"`` (401/403),
    ``"misdirected"`` (a 3xx: the host is wrong), ``"misconfigured"`` (the transport cannot send
    as configured, e.g. an unusable proxy), ``"shutdown"`` (the exit deadline passed) or
    ``"closed"`` (a call after ``shutdown()``).
    ``cause`` is the last API or network error, if there was one.
    """

    def __init__(self, reason: str, message: str, cause: FlameupError | None = None) -> None:
        super().__init__(message if cause is None else f"{message}: {cause}")
        self.reason = reason
        self.cause = cause
