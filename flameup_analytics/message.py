"""Building, validating and encoding API messages.

Everything here runs in the caller's thread, so the common path is one pass of the C JSON encoder
over the message; the slow Python walk that pinpoints a bad value runs only after the encoder failed.
"""

from __future__ import annotations

import datetime as dt
import enum
import itertools
import json
import json.encoder
import math
import secrets
import time
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Final, Literal, NamedTuple

from .errors import ValidationError

Kind = Literal["track", "identify"]
TRACK: Final = "track"
IDENTIFY: Final = "identify"
CHANNELS: Final = ("email", "sms", "push")


class Message(NamedTuple):
    """A message as the SDK shows it to you (``on_error``, ``on_outcome``): its endpoint, its
    ordering key (the user id), its encoded JSON body and its idempotency key."""

    kind: Kind
    user_id: str
    body: bytes
    key: str


#: A message as queued: an exact tuple ``(kind, user_id, body, key)``, encoded once in the caller.
#: ``key`` is the idempotency key, or, for a message made by this process, the number it is
#: made from (40 bytes less per queued message than its text). Exact tuples of strings, bytes and
#: ints are dropped from the garbage collector's watch, so a long queue costs no GC pauses.
#: A :class:`Message` is such a tuple too.
Queued = tuple[Kind, str, bytes, "int | str"]
USER_ID: Final = 1


def key_of(message: Queued) -> str:
    key = message[3]
    return key if isinstance(key, str) else keys.text(key)


def public(message: Queued) -> Message:
    kind, user_id, body, _ = message
    return Message(kind, user_id, body, key_of(message))


class _KeyGenerator:
    """Idempotency keys: a random per-process prefix and a counter.

    Cheaper than a uuid4 per call (no syscall) and still unique across processes; a forked child
    must call :meth:`reseed` so it does not repeat its parent's keys.
    """

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        self._prefix = secrets.token_hex(8) + "-"
        self._counter = itertools.count(1)

    def next_number(self) -> int:
        # next() on itertools.count is atomic under the GIL: no lock on the hot path.
        return next(self._counter)

    def text(self, number: int) -> str:
        return self._prefix + format(number, "x")

    def new(self) -> str:
        return self.text(self.next_number())


keys: Final = _KeyGenerator()


# --- timestamps ------------------------------------------------------------------------------

_last_stamp: tuple[int, str] = (-1, "")


def now_timestamp() -> str:
    """The current time as the API wants it: ISO 8601, UTC, milliseconds, ``Z``."""
    global _last_stamp
    millis = int(time.time() * 1000)
    last_millis, stamp = _last_stamp
    if millis != last_millis:
        # Formatting costs more than the rest of track(); calls in the same millisecond share it.
        # The tuple is swapped in whole, so threads never see a torn cache.
        second, fraction = divmod(millis, 1000)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)) + f".{fraction:03d}Z"
        _last_stamp = (millis, stamp)
    return stamp


def format_datetime(value: dt.datetime) -> str:
    """ISO 8601 UTC with milliseconds and ``Z``; a naive datetime is taken to be UTC already.

    Raises ValueError for an aware datetime whose UTC time falls outside the years 1-9999."""
    if value.tzinfo is not None:
        try:
            value = value.astimezone(dt.timezone.utc)
        except OverflowError:
            raise ValueError(f"{value.isoformat()} is outside the years 1-9999 in UTC") from None
    # Formatted by hand: strftime("%Y") does not pad years before 1000 on every platform.
    return (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}T"
        f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}.{value.microsecond // 1000:03d}Z"
    )


# --- JSON ------------------------------------------------------------------------------------


def _to_json(value: Any) -> Any:
    """Conversions for values with one obvious JSON form; anything else is an error."""
    if isinstance(value, dt.datetime):
        return format_datetime(value)
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{value} is not a finite number")
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        try:
            return sorted(value)
        except TypeError:
            return list(value)
    raise TypeError(f"{type(value).__name__} has no JSON form")


_encoder: Final = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_to_json
)
# The C encoder, made once: JSONEncoder.encode() builds a new one per call, which doubles the cost.
# No circular-reference markers: a shared dict would be unsafe across threads, and a cycle is
# still caught, as a RecursionError, then located by _find_problem.
_make_c_encoder: Any = getattr(json.encoder, "c_make_encoder", None)  # untyped C accelerator
_c_encoder: Final = (
    None
    if _make_c_encoder is None
    else _make_c_encoder(None, _to_json, json.encoder.encode_basestring, None, ":", ",", False, False, False)
)


def encode(payload: dict[str, Any], arguments: Mapping[str, str]) -> bytes:
    """Encode ``payload``; on failure, raise a ValidationError naming the argument at fault.

    ``arguments`` maps each body key to the name of the argument it came from.
    """
    try:
        if _c_encoder is None:  # pragma: no cover - interpreters without the C accelerator
            return _encoder.encode(payload).encode("utf-8")
        return "".join(_c_encoder(payload, 0)).encode("utf-8")
    except (TypeError, ValueError, RecursionError, UnicodeEncodeError) as exc:
        raise _explain(payload, arguments, exc) from None


def _explain(payload: dict[str, Any], arguments: Mapping[str, str], exc: Exception) -> ValidationError:
    for key, argument in arguments.items():
        found = _find_problem(payload[key], argument, set())
        if found is not None:
            path, reason = found
            return ValidationError(f"{path} {reason}", argument=argument, path=path)
    argument = next(iter(arguments.values()))  # pragma: no cover - the walk finds all the encoder refuses
    return ValidationError(f"cannot be encoded as JSON: {exc}", argument=argument)  # pragma: no cover


def _find_problem(value: Any, path: str, active: set[int]) -> tuple[str, str] | None:
    """Depth-first search for the first value the encoder refused, with its path and the reason."""
    if value is None or isinstance(value, (bool, int)):
        return None
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path, "is a string with lone surrogates (not valid UTF-8)"
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, f"is {value!r}, which JSON cannot represent")
    if len(active) > 100:
        return path, "is nested more than 100 levels deep"
    if isinstance(value, (Mapping, list, tuple)):
        if id(value) in active:
            return path, "contains itself (a reference cycle)"
        active.add(id(value))
        try:
            if isinstance(value, Mapping):
                for key, item in value.items():
                    if not isinstance(key, (str, int, float, bool)):
                        return (
                            path,
                            f"has a key of type {type(key).__name__}: keys must be str, int, float or bool",
                        )
                    if isinstance(key, float) and not math.isfinite(key):
                        return path, f"has the key {key!r}, which JSON cannot represent"
                    found = _find_problem(item, f"{path}[{key!r}]", active)
                    if found:
                        return found
            else:
                for index, item in enumerate(value):
                    found = _find_problem(item, f"{path}[{index}]", active)
                    if found:
                        return found
        finally:
            active.discard(id(value))
        return None
    try:
        converted = _to_json(value)
    except (TypeError, ValueError) as exc:
        return path, f"is not JSON-serializable ({exc}: convert it to str, int, float, bool, list or dict)"
    return _find_problem(converted, path, active)


# --- validation ------------------------------------------------------------------------------


def require_id(value: Any, argument: str) -> str:
    if type(value) is str and value:
        return value
    if isinstance(value, str) and value:
        return str(value)
    if value is None or value == "":
        raise ValidationError(f"{argument} is required and must be a non-empty string", argument=argument)
    raise ValidationError(
        f"{argument} must be a non-empty string, not {type(value).__name__}", argument=argument
    )


def require_mapping(value: Any, argument: str) -> dict[Any, Any]:
    if value is None:
        return {}
    if type(value) is dict:
        return value
    if isinstance(value, Mapping):
        return dict(value)
    raise ValidationError(
        f"{argument} must be a mapping (dict), not {type(value).__name__}", argument=argument
    )


def check_size(body: bytes, limit: int, argument: str) -> bytes:
    if len(body) > limit:
        raise ValidationError(
            f"the encoded message is {len(body)} bytes, over max_message_bytes={limit}: "
            f"make {argument} smaller",
            argument=argument,
        )
    return body


_TRACK_ARGUMENTS: Final = {"external_id": "external_id", "event": "event", "parameters": "parameters"}
_IDENTIFY_ARGUMENTS: Final = {"userId": "user_id", "traits": "traits"}
_TRANSACTIONAL_ARGUMENTS: Final = {
    "user_id": "user_id",
    "template_id": "template_id",
    "variables": "variables",
}


def track_body(
    external_id: Any, event: Any, parameters: Any, timestamp: Any, max_bytes: int
) -> tuple[str, bytes]:
    """Validate a track() call; return its ordering key and its encoded body."""
    external_id = require_id(external_id, "external_id")
    event = require_id(event, "event")
    parameters = require_mapping(parameters, "parameters")
    if timestamp is None:
        stamp = now_timestamp()
    elif isinstance(timestamp, dt.datetime):
        try:
            stamp = format_datetime(timestamp)
        except ValueError as exc:
            raise ValidationError(f"timestamp {exc}", argument="timestamp") from None
    else:
        raise ValidationError(
            f"timestamp must be a datetime.datetime, not {type(timestamp).__name__}", argument="timestamp"
        )
    payload = {"external_id": external_id, "event": event, "parameters": parameters, "timestamp": stamp}
    return external_id, check_size(encode(payload, _TRACK_ARGUMENTS), max_bytes, "parameters")


def identify_body(user_id: Any, traits: Any, max_bytes: int) -> tuple[str, bytes]:
    """Validate an identify() call; return its ordering key and its encoded body."""
    user_id = require_id(user_id, "user_id")
    traits = require_mapping(traits, "traits")
    body = encode({"userId": user_id, "traits": traits}, _IDENTIFY_ARGUMENTS)
    return user_id, check_size(body, max_bytes, "traits")


def transactional_body(user_id: Any, template_id: Any, channel: Any, variables: Any, max_bytes: int) -> bytes:
    user_id = require_id(user_id, "user_id")
    template_id = require_id(template_id, "template_id")
    if channel not in CHANNELS:
        raise ValidationError(
            f"channel must be one of {', '.join(CHANNELS)}, not {channel!r}", argument="channel"
        )
    variables = require_mapping(variables, "variables")
    payload = {"user_id": user_id, "template_id": template_id, "channel": channel, "variables": variables}
    return check_size(encode(payload, _TRANSACTIONAL_ARGUMENTS), max_bytes, "variables")
