"""flameup-analytics: the Python SDK for the Flameup API.

>>> import flameup_analytics as fa
>>> client = fa.Client(api_key="...", workspace_id="ws_abc123")   # doctest: +SKIP
>>> client.track("user_123", "page_viewed", {"page": "/pricing"})  # doctest: +SKIP

The module-level functions use one default client, made by :func:`init` or, on first use, from the
``FLAMEUP_API_KEY`` / ``FLAMEUP_WORKSPACE_ID`` / ``FLAMEUP_HOST`` environment variables.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .client import Client
from .delivery import Outcome, Result
from .errors import (
    APIError,
    ConfigurationError,
    DeliveryError,
    FlameupError,
    TransportError,
    ValidationError,
)
from .ledger import MessageOutcome, Stats
from .message import Event, Message
from .relay import RelayStats
from .retry import RetryPolicy
from .transport import HTTPTransport, MockTransport, Request, Response, Transport

if TYPE_CHECKING:
    from .requests_transport import RequestsTransport

__all__ = [
    "APIError",
    "Client",
    "ConfigurationError",
    "DeliveryError",
    "Event",
    "FlameupError",
    "HTTPTransport",
    "Message",
    "MessageOutcome",
    "MockTransport",
    "Outcome",
    "RelayStats",
    "Request",
    "RequestsTransport",
    "Response",
    "Result",
    "RetryPolicy",
    "Stats",
    "Transport",
    "TransportError",
    "ValidationError",
    "__version__",
    "flush",
    "get_client",
    "get_person",
    "identify",
    "init",
    "send_transactional",
    "shutdown",
    "stats",
    "track",
]


def __getattr__(name: str) -> Any:
    # RequestsTransport on first use: its module imports requests and urllib3, which cost more
    # than the rest of the package, and the default transport does without them.
    if name == "RequestsTransport":
        from .requests_transport import RequestsTransport

        return RequestsTransport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_default: Client | None = None
_default_lock = threading.Lock()


def init(**options: Any) -> Client:
    """Create the default client with ``options`` (those of :class:`Client`) and return it.

    A default client made earlier is shut down first.
    """
    global _default
    client = Client(**options)
    with _default_lock:
        previous, _default = _default, client
    if previous is not None:
        previous.shutdown()
    return client


def get_client() -> Client:
    """The default client, created from the environment on first use."""
    global _default
    client = _default
    if client is None:
        with _default_lock:
            if _default is None:
                _default = Client()
            client = _default
    return client


def track(
    external_id: str,
    event: str,
    parameters: Mapping[str, Any] | None = None,
    *,
    timestamp: Any = None,
    idempotency_key: str | None = None,
) -> None:
    """Queue a track on the default client; see :meth:`Client.track`."""
    get_client().track(external_id, event, parameters, timestamp=timestamp, idempotency_key=idempotency_key)


def identify(
    user_id: str, traits: Mapping[str, Any] | None = None, *, idempotency_key: str | None = None
) -> None:
    """Queue an identify on the default client; see :meth:`Client.identify`."""
    get_client().identify(user_id, traits, idempotency_key=idempotency_key)


def send_transactional(
    user_id: str,
    template_id: str,
    channel: str,
    variables: Mapping[str, Any] | None = None,
    *,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    """Send a transactional message now, with the default client; see :meth:`Client.send_transactional`."""
    return get_client().send_transactional(
        user_id, template_id, channel, variables, idempotency_key=idempotency_key
    )


def get_person(user_id: str) -> dict[str, Any] | None:
    """Fetch a person with the default client; see :meth:`Client.get_person`."""
    return get_client().get_person(user_id)


def flush(timeout: float = 10.0) -> bool:
    """Flush the default client; True at once when none was created."""
    client = _default
    return True if client is None else client.flush(timeout)


def stats() -> Stats:
    """The default client's counters; see :meth:`Client.stats`."""
    return get_client().stats()


def shutdown(timeout: float | None = None) -> None:
    """Shut the default client down (if one exists) and forget it."""
    global _default
    with _default_lock:
        client, _default = _default, None
    if client is not None:
        client.shutdown(timeout)
