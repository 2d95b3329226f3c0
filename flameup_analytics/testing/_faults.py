"""Internal. Fault injection: failures the local server applies to matching requests.

A :class:`Fault` answers an error status, hangs, or drops the connection, ahead of the key and
the body being checked, like an overloaded API in front of a working one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, get_args

from ._routes import KINDS, Reply, RequestKind, error

FaultAction = Literal["respond", "hang", "drop"]
"""What a :class:`Fault` does: ``respond`` with its error status, ``hang`` (never answer, until the
server stops or :meth:`~flameup_analytics.testing.LocalServer.release_hung`), or ``drop`` the
connection without an answer."""

_ACTIONS: frozenset[str] = frozenset(get_args(FaultAction))


@dataclass(eq=False)
class Fault:
    """A failure to inject into matching requests, ahead of auth and validation.

    Faults are tried in the order they were added; the first one whose ``kind``
    matches and that has uses left applies. ``hits`` counts the requests it has
    applied to so far.
    """

    status: int = 503
    retry_after: str | None = None
    times: int | None = 1
    kind: RequestKind | None = None
    action: FaultAction = "respond"
    message: str = "injected"
    hits: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.action not in _ACTIONS:
            raise ValueError(f"unknown fault action {self.action!r}")
        # A 2xx fault would count as accepted without having been processed.
        if self.action == "respond" and not 300 <= self.status <= 599:
            raise ValueError(f"fault status must be 300-599, not {self.status}")
        if self.times is not None and self.times < 1:
            raise ValueError("fault times must be at least 1, or None for forever")
        if self.kind is not None and self.kind not in KINDS:
            raise ValueError(f"unknown request kind {self.kind!r}")
        if self.retry_after is not None and not (
            self.retry_after.isascii() and self.retry_after.isprintable()
        ):
            raise ValueError("retry_after must be printable ASCII")


def take(faults: Iterable[Fault], kind: RequestKind | None) -> Fault | None:
    """The first fault that applies to a request of ``kind``, its use counted; None if none does."""
    for fault in faults:
        if fault.times is not None and fault.hits >= fault.times:
            continue
        if fault.kind is None or fault.kind == kind:
            fault.hits += 1
            return fault
    return None


def reply(fault: Fault, release: threading.Event) -> Reply:
    """What ``fault`` does to the request it applies to; a hang lasts until ``release`` is set."""
    if fault.action == "hang":
        return Reply(0, release=release)
    if fault.action == "drop":
        return Reply(0)
    if fault.retry_after is None:
        return error(fault.status, fault.message)
    return error(fault.status, fault.message, ("Retry-After", fault.retry_after))
