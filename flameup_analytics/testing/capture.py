"""Record what the SDK would send, in the calling thread, so tests can assert on it.

::

    from flameup_analytics.testing import capture

    with capture() as captured:
        checkout(cart)  # any code that calls track() / identify() on any Client
    captured.assert_tracked("purchase_completed", user_id="u1", amount=10)

While a capture is active, every :class:`~flameup_analytics.Client` of the process (those alive
when it starts and those created during it, ``disabled`` ones included) hands its ``track`` and
``identify`` messages to it instead of queueing them, once validated; ``send_transactional`` and
``get_person`` answer from it instead of calling the API. Captures nest: the innermost active one
receives everything, and the one around it receives again once it ends.
"""

from __future__ import annotations

import contextlib
import copy
import json
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias, TypeVar

from .. import client as client_module
from .. import lifecycle
from ..message import IDENTIFY, Queued, key_of, keys

__all__ = [
    "Captured",
    "CapturedIdentify",
    "CapturedMessage",
    "CapturedTrack",
    "CapturedTransactional",
    "capture",
]


@dataclass(frozen=True)
class CapturedTrack:
    """One captured ``track()`` call."""

    kind: Literal["track"] = field(default="track", init=False)
    user_id: str
    event: str
    parameters: dict[str, Any]
    #: As it would be sent: ISO 8601, UTC, milliseconds, ``Z``.
    timestamp: str
    #: The idempotency key it would be sent with.
    key: str
    #: The decoded JSON body it would be sent with.
    body: dict[str, Any]


@dataclass(frozen=True)
class CapturedIdentify:
    """One captured ``identify()`` call."""

    kind: Literal["identify"] = field(default="identify", init=False)
    user_id: str
    traits: dict[str, Any]
    key: str
    body: dict[str, Any]


@dataclass(frozen=True)
class CapturedTransactional:
    """One captured ``send_transactional()`` call."""

    kind: Literal["transactional"] = field(default="transactional", init=False)
    user_id: str
    template_id: str
    channel: str
    variables: dict[str, Any]
    #: The ``id`` in the answer ``send_transactional()`` returned.
    id: str
    key: str
    body: dict[str, Any]


CapturedMessage: TypeAlias = CapturedTrack | CapturedIdentify | CapturedTransactional
"""Any captured message: a :class:`CapturedTrack`, :class:`CapturedIdentify` or
:class:`CapturedTransactional` (``Captured.messages`` holds them in call order)."""
_M = TypeVar("_M", CapturedTrack, CapturedIdentify)

_MISSING: Any = object()
#: Candidates listed in a failed assertion's message, closest first.
_SHOWN = 10


class Captured:
    """What the SDK's clients produced during a :func:`capture`. Thread-safe; stays readable after
    the capture ended."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._messages: list[CapturedMessage] = []
        self._people: dict[str, dict[str, Any]] = {}

    # --- reading ---------------------------------------------------------------------------------

    @property
    def messages(self) -> list[CapturedMessage]:
        """Every captured message, in the order the calls were made."""
        with self._lock:
            return list(self._messages)

    def tracks(
        self, event: str | None = None, user_id: str | None = None, **parameters: Any
    ) -> list[CapturedTrack]:
        """Captured ``track()`` calls, in order; filtered by ``event``, ``user_id`` and parameter
        values (a call matches when each parameter given here is present and equal)."""
        return [
            message
            for message in self.messages
            if isinstance(message, CapturedTrack)
            and not _track_differences(message, event, user_id, parameters)
        ]

    def identifies(self, user_id: str | None = None) -> list[CapturedIdentify]:
        """Captured ``identify()`` calls, in order, for ``user_id`` if given."""
        return [
            message
            for message in self.messages
            if isinstance(message, CapturedIdentify) and user_id in (None, message.user_id)
        ]

    def transactionals(
        self, template_id: str | None = None, channel: str | None = None, *, user_id: str | None = None
    ) -> list[CapturedTransactional]:
        """Captured ``send_transactional()`` calls, in order, filtered by what is given."""
        return [
            message
            for message in self.messages
            if isinstance(message, CapturedTransactional)
            and template_id in (None, message.template_id)
            and channel in (None, message.channel)
            and user_id in (None, message.user_id)
        ]

    def clear(self) -> None:
        """Forget every message captured so far, and the people ``get_person()`` knew."""
        with self._lock:
            self._messages.clear()
            self._people.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._messages)

    def __repr__(self) -> str:
        return f"<Captured {len(self)} message(s)>"

    # --- assertions ------------------------------------------------------------------------------

    def assert_tracked(self, event: str, user_id: str | None = None, **parameters: Any) -> CapturedTrack:
        """The first captured ``track()`` of ``event`` (by ``user_id``, with these parameter values,
        if given). Raises :class:`AssertionError` listing the captured tracks and how each differs."""
        __tracebackhide__ = True  # pytest shows the test's line, not this one
        tracks = [message for message in self.messages if isinstance(message, CapturedTrack)]
        explained: list[tuple[int, CapturedTrack, list[str]]] = []
        for index, track in enumerate(tracks):
            differences = _track_differences(track, event, user_id, parameters)
            if not differences:
                return track
            explained.append((index, track, differences))
        wanted = {"event": event, **({} if user_id is None else {"user_id": user_id}), **parameters}
        raise AssertionError(_failure("track", wanted, explained, _describe_track, len(self) - len(tracks)))

    def assert_identified(self, user_id: str, **traits: Any) -> CapturedIdentify:
        """The first captured ``identify()`` of ``user_id`` (with these trait values, if given).
        Raises :class:`AssertionError` listing the captured identifies and how each differs."""
        __tracebackhide__ = True
        identifies = [message for message in self.messages if isinstance(message, CapturedIdentify)]
        explained: list[tuple[int, CapturedIdentify, list[str]]] = []
        for index, identify in enumerate(identifies):
            differences = _differences({"user_id": identify.user_id}, {"user_id": user_id})
            differences += _differences(identify.traits, traits)
            if not differences:
                return identify
            explained.append((index, identify, differences))
        wanted = {"user_id": user_id, **traits}
        others = len(self) - len(identifies)
        raise AssertionError(_failure("identify", wanted, explained, _describe_identify, others))

    # --- what the clients call (see flameup_analytics.client._Recorder) ----------------------------

    def _record(self, message: Queued) -> None:
        kind, user_id, encoded, _ = message
        body = json.loads(encoded)
        item: CapturedMessage
        if kind == IDENTIFY:
            item = CapturedIdentify(user_id=user_id, traits=body["traits"], key=key_of(message), body=body)
        else:
            item = CapturedTrack(
                user_id=user_id,
                event=body["event"],
                parameters=body["parameters"],
                timestamp=body["timestamp"],
                key=key_of(message),
                body=body,
            )
        with self._lock:
            self._messages.append(item)
            if isinstance(item, CapturedIdentify):
                # A copy: the merged traits must not change a captured message's traits.
                self._people.setdefault(user_id, {}).update(copy.deepcopy(item.traits))

    def _send_transactional(self, encoded: bytes) -> dict[str, Any]:
        body = json.loads(encoded)
        answer = {"id": uuid.uuid4().hex, "status": "queued"}
        item = CapturedTransactional(
            user_id=body["user_id"],
            template_id=body["template_id"],
            channel=body["channel"],
            variables=body["variables"],
            id=answer["id"],
            key=keys.new(),
            body=body,
        )
        with self._lock:
            self._messages.append(item)
        return answer

    def _get_person(self, user_id: str) -> dict[str, Any] | None:
        with self._lock:
            traits = self._people.get(user_id)
            # The shape of the API's answer; a copy so the caller cannot alter what identify() said.
            return None if traits is None else {"external_id": user_id, "traits": copy.deepcopy(traits)}


# --- which capture is active -----------------------------------------------------------------------

_lock = threading.Lock()
#: Active captures, outermost first; the last one receives everything.
_active: list[Captured] = []


@contextlib.contextmanager
def capture() -> Iterator[Captured]:
    """Capture every message of every client of the process while the block runs.

    Nothing is queued or sent meanwhile; validation still runs and still raises. Messages queued
    before the block are delivered as usual. Captures may nest (the innermost active one receives)
    and may be entered and left from different threads in any order.
    """
    captured = Captured()
    with _lock:
        _active.append(captured)
        _install()
    try:
        yield captured
    finally:
        with _lock:
            _active.remove(captured)
            _install()


def _install() -> None:
    # The recorder is published before the live clients are rerouted, and a client created
    # meanwhile reads it once it is registered: either way no client is left queueing directly.
    client_module._recorder = _active[-1] if _active else None
    for client in lifecycle.live_clients():
        client._reroute()


# --- failure messages --------------------------------------------------------------------------------


def _differences(actual: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    found: list[str] = []
    for name, value in expected.items():
        present = actual.get(name, _MISSING)
        if present is _MISSING:
            found.append(f"{name}: missing, expected {value!r}")
        elif present != value:
            found.append(f"{name}: got {present!r}, expected {value!r}")
    return found


def _track_differences(
    track: CapturedTrack, event: str | None, user_id: str | None, parameters: Mapping[str, Any]
) -> list[str]:
    expected = {} if event is None else {"event": event}
    if user_id is not None:
        expected["user_id"] = user_id
    found = _differences({"event": track.event, "user_id": track.user_id}, expected)
    return found + _differences(track.parameters, parameters)


def _describe_track(track: CapturedTrack) -> str:
    return f"{track.event!r} user_id={track.user_id!r} parameters={track.parameters!r}"


def _describe_identify(identify: CapturedIdentify) -> str:
    return f"user_id={identify.user_id!r} traits={identify.traits!r}"


def _failure(
    kind: str,
    wanted: Mapping[str, Any],
    explained: list[tuple[int, _M, list[str]]],
    describe: Callable[[_M], str],
    others: int,
) -> str:
    criteria = ", ".join(f"{name}={value!r}" for name, value in wanted.items())
    lines = [f"no captured {kind} matches {criteria}"]
    if not explained:
        other_kinds = f" ({others} message(s) of other kinds)" if others else ""
        lines.append(f"captured no {kind} call at all{other_kinds}")
        return "\n".join(lines)
    lines.append(f"captured {len(explained)} {kind} call(s), closest first:")
    closest = sorted(explained, key=lambda entry: (len(entry[2]), entry[0]))
    for index, message, differences in closest[:_SHOWN]:
        lines.append(f"  [{index}] {describe(message)}")
        lines.extend(f"        {difference}" for difference in differences)
    if len(closest) > _SHOWN:
        lines.append(f"  ... and {len(closest) - _SHOWN} more")
    return "\n".join(lines)
