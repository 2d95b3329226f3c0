"""Building, validating and encoding API messages.

Everything here runs in the caller's thread, so the common path is one pass of the C JSON encoder
over the message; the slow Python walk that pinpoints a bad value runs only after the encoder failed.
"""

from __future__ import annotations

import enum
import itertools
import json
import json.encoder
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple

from ._log import logger
from ._value import Value, set_field
from .errors import ValidationError

if TYPE_CHECKING:
    import datetime as dt
    from decimal import Decimal


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


#: A message on its way: an exact tuple ``(kind, user_id, body, key)``, encoded once in the caller.
#: ``key`` is the idempotency key, or, for a message made by this process, the number it is
#: made from (40 bytes less per message than its text). Exact tuples of strings, bytes and
#: ints are dropped from the garbage collector's watch, so a long queue costs no GC pauses.
#: A :class:`Message` is such a tuple too.
Queued = tuple[Kind, str, bytes, "int | str"]
USER_ID: Final = 1

#: What the memory queue holds for each message: its body alone when the SDK makes its idempotency
#: key (the key is made as the worker takes it, by :func:`unpack`), else the whole :data:`Queued`
#: tuple. A body is all a queued message costs: no tuple, no key, and no hold on the caller's user
#: id string (an app that builds the id afresh on every call would keep one copy per message).
Pending = bytes | Queued

#: How track and identify bodies begin: the encoder writes the ordering key first, compactly.
_TRACK_START: Final = b'{"external_id":"'
_IDENTIFY_START: Final = b'{"userId":"'
#: Searched as ints: ``b"\\" in some_bytes`` costs ten times ``92 in some_bytes``.
_QUOTE: Final = ord('"')
_BACKSLASH: Final = ord("\\")


def unpack(body: bytes) -> Queued:
    """The message a queued body stands for, with a new idempotency key. Its kind and user id are
    read back from the body, where :func:`track_body` and :func:`identify_body` wrote them first."""
    kind: Kind
    if body.startswith(_TRACK_START):
        kind, field, start = TRACK, "external_id", len(_TRACK_START)
    else:
        kind, field, start = IDENTIFY, "userId", len(_IDENTIFY_START)
    user_id = body[start : body.index(_QUOTE, start)]
    # Without a backslash, the quote found closes the id and its bytes are the id's own UTF-8
    # (ensure_ascii=False); an escaped character, rare in an id, costs a full parse.
    text: str = json.loads(body)[field] if _BACKSLASH in user_id else user_id.decode()
    return kind, text, body, keys.next_number()


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
        # os.urandom is what secrets.token_hex reads, without importing secrets (hmac, hashlib, random).
        self._prefix = os.urandom(8).hex() + "-"
        self._counter = itertools.count(1)

    def next_number(self) -> int:
        # next() on itertools.count is atomic under the GIL: no lock on the hot path.
        return next(self._counter)

    def text(self, number: int) -> str:
        return f"{self._prefix}{number:x}"  # half the cost of prefix + format(number, "x")

    def new(self) -> str:
        return self.text(self.next_number())


keys: Final = _KeyGenerator()

#: The longest idempotency key a caller may choose.
MAX_KEY_LENGTH: Final = 255


def require_key(value: Any) -> str:
    """A caller's idempotency key, checked: visible ASCII (no white space, which proxies and servers
    may trim from a header) and 1 to :data:`MAX_KEY_LENGTH` characters. Its exact characters are
    sent in the ``Idempotency-Key`` header and kept by the spool."""
    if not isinstance(value, str):
        raise ValidationError(
            f"idempotency_key must be a str, not {type(value).__name__}", argument="idempotency_key"
        )
    key = str.__str__(value)
    if not 0 < len(key) <= MAX_KEY_LENGTH or not (key.isascii() and key.isprintable()) or " " in key:
        raise ValidationError(
            f"idempotency_key must be 1 to {MAX_KEY_LENGTH} visible ASCII characters (no spaces), "
            f"not {key[:40]!r}{'...' if len(key) > 40 else ''} ({len(key)} characters)",
            argument="idempotency_key",
        )
    return key


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


def is_datetime(value: object) -> bool:
    """Whether ``value`` is a ``datetime.datetime``. Like a Decimal or a UUID (see ``_to_json``),
    a datetime exists only once its module was imported: this package does not import it (1 ms)."""
    datetime = sys.modules.get("datetime")
    return datetime is not None and isinstance(value, datetime.datetime)


def format_datetime(value: dt.datetime) -> str:
    """ISO 8601 UTC with milliseconds and ``Z``; a naive datetime is taken to be UTC already.

    Raises ValueError for an aware datetime whose UTC time falls outside the years 1-9999."""
    if value.tzinfo is not None:
        import datetime  # loaded: ``value`` is one of its objects

        try:
            value = value.astimezone(datetime.timezone.utc)
        except OverflowError:
            raise ValueError(f"{value.isoformat()} is outside the years 1-9999 in UTC") from None
    # Formatted by hand: strftime("%Y") does not pad years before 1000 on every platform.
    return (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}T"
        f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}.{value.microsecond // 1000:03d}Z"
    )


# --- JSON ------------------------------------------------------------------------------------

_INT64: Final = range(-(2**63), 2**63)
#: A Decimal whose leading digit is at 10**19 or beyond is outside _INT64 whatever its digits.
_INT64_DIGITS: Final = 19


def _decimal_to_json(value: Decimal) -> int | float:
    """An int when ``value`` is integral and fits 64 bits, else the nearest float; refused when
    even a float cannot hold it. Never expands an exponent: ``Decimal("1e999999")`` costs what
    ``Decimal("1")`` costs."""
    if not value.is_finite():
        raise ValueError(f"{value!r} is not a finite number")
    # adjusted() is the exponent of the leading digit, read without computing anything.
    if value.adjusted() < _INT64_DIGITS and value == value.to_integral_value():
        integer = int(value)
        if integer in _INT64:
            return integer
    number = float(value)  # parses the Decimal's short text form: no exponent is expanded
    if not math.isfinite(number):
        raise ValueError(f"a Decimal of about {value:.6g} is beyond the range of a JSON number (a float)")
    return number


def _to_json(value: Any) -> Any:
    """Conversions for values with one obvious JSON form; anything else is an error."""
    # A datetime, a Decimal or a UUID exists only once its module was imported: no need to import
    # them here (which every program would pay for at import).
    datetime, decimal, uuid = sys.modules.get("datetime"), sys.modules.get("decimal"), sys.modules.get("uuid")
    if datetime is not None:
        if isinstance(value, datetime.datetime):
            return format_datetime(value)
        if isinstance(value, (datetime.date, datetime.time)):
            return value.isoformat()
    if decimal is not None and isinstance(value, decimal.Decimal):
        return _decimal_to_json(value)
    if uuid is not None and isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (set, frozenset)):
        try:
            return sorted(value)
        except TypeError:
            return list(value)
    raise TypeError(f"{type(value).__name__} has no JSON form")


#: A function that turns a value with no JSON form into one that has it (``json.dumps``' ``default``).
Convert = Callable[[Any], Any]


def with_json_default(json_default: Convert) -> Convert:
    """The SDK's conversions, then ``json_default`` for the types they leave (pydantic models, numpy
    scalars, attrs classes). What it returns is converted and checked like any other value; what it
    raises becomes a refusal of the value, naming its path."""

    def convert(value: Any) -> Any:
        try:
            return _to_json(value)
        except TypeError:
            pass  # a type the SDK has no rule for: the caller's function decides
        try:
            converted = json_default(value)
        except (TypeError, ValueError):
            raise
        except Exception as exc:
            raise TypeError(f"json_default raised {type(exc).__name__}: {exc}") from exc
        if converted is value:
            raise TypeError(f"json_default returned the {type(value).__name__} unchanged")
        return converted

    return convert


_make_c_encoder: Any = getattr(json.encoder, "c_make_encoder", None)  # untyped C accelerator
_quote: Final = json.encoder.encode_basestring
_ENCODING_ERRORS: Final = (TypeError, ValueError, RecursionError, UnicodeEncodeError)


class Codec:
    """Encodes bodies with one set of conversions: the SDK's own (:data:`STANDARD`) or those of a
    client's ``json_default``. Made once per client; safe to share between threads."""

    def __init__(self, convert: Convert = _to_json) -> None:
        self.convert = convert
        # The C encoder, made once: JSONEncoder.encode() builds a new one per call, which doubles
        # the cost. No circular-reference markers: a shared dict would be unsafe across threads,
        # and a cycle is still caught, as a RecursionError, then located by _Search.
        self._c_encoder = (
            None
            if _make_c_encoder is None
            else _make_c_encoder(None, convert, _quote, None, ":", ",", False, False, False)
        )
        self._encoder = json.JSONEncoder(
            ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=convert
        )

    def encode(self, payload: dict[str, Any], arguments: Mapping[str, str]) -> bytes:
        """Encode ``payload``; on failure, raise a ValidationError naming the argument at fault.

        ``arguments`` maps each body key to the name of the argument it came from.
        """
        try:
            if self._c_encoder is None:  # pragma: no cover - interpreters without the C accelerator
                return self._encoder.encode(payload).encode("utf-8")
            return "".join(self._c_encoder(payload, 0)).encode("utf-8")
        except _ENCODING_ERRORS as exc:
            raise _explain(payload, arguments, exc, self.convert) from None

    def encode_track(self, external_id: str, event: str, parameters: dict[Any, Any], stamp: str) -> bytes:
        """A track body: what :meth:`encode` makes of it, a third sooner. Only the values go
        through the encoder; the envelope's keys are written as text (the outer dict costs the C
        encoder 0.8 us, as much as a small ``parameters``)."""
        if self._c_encoder is not None:
            try:
                return (
                    f'{{"external_id":{_quote(external_id)},"event":{_quote(event)},'
                    f'"parameters":{"".join(self._c_encoder(parameters, 0))},"timestamp":"{stamp}"}}'
                ).encode()
            except _ENCODING_ERRORS:
                pass  # encode() fails the same way and names the argument at fault
        payload = {"external_id": external_id, "event": event, "parameters": parameters, "timestamp": stamp}
        return self.encode(payload, _TRACK_ARGUMENTS)


#: The SDK's own conversions only: what a client without ``json_default`` uses.
STANDARD: Final = Codec()


def encode(payload: dict[str, Any], arguments: Mapping[str, str]) -> bytes:
    """:meth:`Codec.encode` with the SDK's own conversions."""
    return STANDARD.encode(payload, arguments)


def _explain(
    payload: dict[str, Any], arguments: Mapping[str, str], exc: Exception, convert: Convert
) -> ValidationError:
    searches = [_Search(argument, payload[key], convert) for key, argument in arguments.items()]
    for search in searches:
        if search.problem is not None:
            path, reason = search.problem
            return ValidationError(f"{path} {reason}", argument=search.argument, path=path)
    deepest = max(searches, key=lambda search: search.depth)
    if isinstance(exc, RecursionError):
        # No cycle and every value encodable: the encoder ran out of stack, which the interpreter's
        # recursion limit bounds, less the depth of the code that called it.
        path = deepest.path_at_depth(deepest.depth)
        return ValidationError(
            f"{path} is nested {deepest.depth} levels deep: more than the JSON encoder can go here "
            f"(Python's recursion limit, sys.getrecursionlimit() = {sys.getrecursionlimit()}, "
            "less the depth of the calling code)",
            argument=deepest.argument,
            path=path,
        )
    # The search mirrors the encoder, so this is not reached; were it, the mapping (the last
    # argument) is the likely culprit: the ids are plain strings, whose one fault the search finds.
    argument = searches[-1].argument  # pragma: no cover
    return ValidationError(f"cannot be encoded as JSON: {exc}", argument=argument)  # pragma: no cover


class _Fault(Exception):
    """Why the encoder refuses a value (the search adds where)."""


_ANY_JSON_TYPE: Final = (str, int, float, list, tuple, dict, type(None))  # bool is an int


class _Search:
    """The first value of one argument that the encoder refuses, with its path and the reason.

    It runs only after the encoder failed, and visits the values as the C encoder does (``str``,
    ``int`` and ``float`` subclasses by their own value, so no user code runs for them; anything
    else through the codec's ``convert``). It is iterative, so neither deep nesting nor a deep calling stack
    can make it fail; and a path is only put together for the value it reports, so a search of a
    deep value takes time and memory in proportion to its size.
    """

    def __init__(self, argument: str, value: Any, convert: Convert) -> None:
        self.argument = argument
        self.value = value
        self._convert = convert
        self.problem: tuple[str, str] | None = None
        #: How many objects and arrays deep the value goes: a RecursionError with no problem found
        #: means the encoder could not go that deep.
        self.depth = max((depth for depth, _ in self._containers()), default=0)

    def path_at_depth(self, depth: int) -> str:
        """The path of the first object or array ``depth`` levels deep."""
        steps = next((steps for reached, steps in self._containers() if reached == depth), [])
        return self.argument + "".join(steps)

    def _containers(self) -> Iterator[tuple[int, list[str]]]:
        """Each object or array in encoding order, with its depth and the steps of its path; a
        value the encoder refuses sets ``problem`` and ends the walk."""
        steps: list[str] = []  # the path, one "[key]" per open container ("" for the argument)
        # Each frame: the ids of an open container (and of what it was converted from), and its
        # children. A container met again while still open is a cycle; met again after, merely shared.
        frames: list[tuple[tuple[int, ...], Iterator[tuple[str, Any]]]] = [((), iter([("", self.value)]))]
        open_ids: set[int] = set()
        while frames:
            owners, children = frames[-1]
            try:
                child = next(children, None)
            except _Fault as fault:  # a key of the open container
                self.problem = self.argument + "".join(steps), str(fault)
                return
            if child is None:
                frames.pop()
                open_ids.difference_update(owners)
                if frames:
                    steps.pop()
                continue
            step, value = child
            try:
                value, converted_from = _as_encoded(value, self._convert)
                if not isinstance(value, (list, tuple, dict)):
                    _check_scalar(value)
                    continue
                ids = (id(value), *converted_from)
                if not open_ids.isdisjoint(ids):
                    raise _Fault("contains itself (a reference cycle)")
            except _Fault as fault:
                self.problem = self.argument + "".join(steps) + step, str(fault)
                return
            open_ids.update(ids)
            steps.append(step)
            frames.append((ids, _items(value) if isinstance(value, dict) else _elements(value)))
            yield len(steps), steps


#: Conversions of one value in a row before it is refused: a ``json_default`` that keeps returning
#: new objects with no JSON form would otherwise never end (the encoder stops at its recursion limit).
_MAX_CONVERSIONS: Final = 100


def _as_encoded(value: Any, convert: Convert) -> tuple[Any, tuple[int, ...]]:
    """``value`` converted by ``convert`` until it is a JSON type, as the encoder does, with the ids
    of the objects it was converted from."""
    converted_from: tuple[int, ...] = ()
    while not isinstance(value, _ANY_JSON_TYPE):
        if len(converted_from) == _MAX_CONVERSIONS:
            raise _Fault(f"was converted {_MAX_CONVERSIONS} times without reaching a JSON type")
        converted_from += (id(value),)
        try:
            value = convert(value)
        except TypeError as exc:
            raise _Fault(
                f"is not JSON-serializable ({exc}: convert it to str, int, float, bool, list or dict)"
            ) from None
        except ValueError as exc:
            raise _Fault(f"cannot be sent: {exc}") from None
    return value, converted_from


def _check_scalar(value: str | int | float | None) -> None:
    if isinstance(value, str):
        if not _is_utf8(value):
            raise _Fault("is a string with lone surrogates (not valid UTF-8)")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _Fault(f"is {float.__repr__(value)}, which JSON cannot represent")
    elif isinstance(value, int) and not _writable(value):
        raise _Fault(f"is an integer of more than {sys.get_int_max_str_digits()} digits, {_TOO_LONG}")


_TOO_LONG: Final = "more than Python writes as text (sys.get_int_max_str_digits())"


def _elements(array: list[Any] | tuple[Any, ...]) -> Iterator[tuple[str, Any]]:
    for index, item in enumerate(array):
        yield f"[{index}]", item


def _items(mapping: dict[Any, Any]) -> Iterator[tuple[str, Any]]:
    """The children of an object, each key checked first, as the encoder checks it."""
    for key, item in mapping.items():
        if isinstance(key, str):
            shown = str.__repr__(key)
            if not _is_utf8(key):
                raise _Fault(f"has the key {shown}, a string with lone surrogates (not valid UTF-8)")
        elif isinstance(key, float):
            shown = float.__repr__(key)
            if not math.isfinite(key):
                raise _Fault(f"has the key {shown}, which JSON cannot represent")
        elif key is None or isinstance(key, bool):
            shown = repr(key)
        elif isinstance(key, int):
            if not _writable(key):
                raise _Fault(
                    f"has an integer key of more than {sys.get_int_max_str_digits()} digits, {_TOO_LONG}"
                )
            shown = int.__repr__(key)
        else:
            raise _Fault(
                f"has a key of type {type(key).__name__}: keys must be str, int, float, bool or None"
            )
        yield f"[{shown}]", item


def _is_utf8(text: str) -> bool:
    try:
        str.encode(text, "utf-8")  # str's own method: a subclass's override is not user code we run
    except UnicodeEncodeError:
        return False
    return True


def _writable(integer: int) -> bool:
    """Whether the encoder can write ``integer``: Python refuses integers longer than
    sys.get_int_max_str_digits() digits, and does so at once, without converting them. (Before
    3.10.7 there is no such limit, and no sys.get_int_max_str_digits either: every int is writable.)"""
    try:
        int.__repr__(integer)
    except ValueError:
        return False
    return True


# --- validation ------------------------------------------------------------------------------


def require_id(value: Any, argument: str) -> str:
    """``value`` as the exact ``str`` to send. A ``str`` subclass (``StrEnum``, ``class E(str,
    Enum)``, lazy or marked-safe strings) is sent as its own characters: its ``__str__``, which
    may answer a name, a repr or anything else, is not called."""
    if type(value) is str:
        text = value
    elif isinstance(value, str):
        text = str.__str__(value)  # an exact copy of the characters; runs no code of the subclass
    elif value is None:
        text = ""
    else:
        raise ValidationError(
            f"{argument} must be a non-empty string, not {type(value).__name__}", argument=argument
        )
    if not text:
        raise ValidationError(f"{argument} is required and must be a non-empty string", argument=argument)
    return text


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
    external_id: Any, event: Any, parameters: Any, timestamp: Any, max_bytes: int, codec: Codec = STANDARD
) -> tuple[str, bytes]:
    """Validate a track() call; return its ordering key and its encoded body."""
    external_id = require_id(external_id, "external_id")
    event = require_id(event, "event")
    parameters = require_mapping(parameters, "parameters")
    if timestamp is None:
        stamp = now_timestamp()
    elif is_datetime(timestamp):
        try:
            stamp = format_datetime(timestamp)
        except ValueError as exc:
            raise ValidationError(f"timestamp {exc}", argument="timestamp") from None
    else:
        raise _not_a_datetime(timestamp)
    return external_id, check_size(
        codec.encode_track(external_id, event, parameters, stamp), max_bytes, "parameters"
    )


def _not_a_datetime(timestamp: Any) -> ValidationError:
    return ValidationError(
        f"timestamp must be a datetime.datetime, not {type(timestamp).__name__}", argument="timestamp"
    )


def identify_body(user_id: Any, traits: Any, max_bytes: int, codec: Codec = STANDARD) -> tuple[str, bytes]:
    """Validate an identify() call; return its ordering key and its encoded body."""
    user_id = require_id(user_id, "user_id")
    traits = require_mapping(traits, "traits")
    body = codec.encode({"userId": user_id, "traits": traits}, _IDENTIFY_ARGUMENTS)
    return user_id, check_size(body, max_bytes, "traits")


def transactional_body(
    user_id: Any, template_id: Any, channel: Any, variables: Any, max_bytes: int, codec: Codec = STANDARD
) -> bytes:
    user_id = require_id(user_id, "user_id")
    template_id = require_id(template_id, "template_id")
    if channel not in CHANNELS:
        raise ValidationError(
            f"channel must be one of {', '.join(CHANNELS)}, not {channel!r}", argument="channel"
        )
    variables = require_mapping(variables, "variables")
    payload = {"user_id": user_id, "template_id": template_id, "channel": channel, "variables": variables}
    return check_size(codec.encode(payload, _TRANSACTIONAL_ARGUMENTS), max_bytes, "variables")


# --- before_send -----------------------------------------------------------------------------


class Event(Value):
    """A ``track`` or ``identify`` call as a client's ``before_send`` sees it, checked and not yet
    encoded. Frozen: return a changed copy, ``event.replace(properties={...})``.

    ``properties`` is the call's ``parameters`` (track, with ``default_parameters`` merged in) or
    ``traits`` (identify): a copy, so changing it in place never changes the caller's own dict.
    """

    __slots__ = ("kind", "user_id", "properties", "name", "timestamp")
    #: ``"track"`` or ``"identify"``; a returned event must keep it.
    kind: Kind
    #: ``external_id`` (track) or ``user_id`` (identify).
    user_id: str
    #: ``parameters`` or ``traits``.
    properties: dict[Any, Any]
    #: The event's name (track); None for identify.
    name: str | None
    #: track's ``timestamp=``; None means the time of the call (and always for identify).
    timestamp: dt.datetime | None

    def __init__(
        self,
        kind: Kind,
        user_id: str,
        properties: dict[Any, Any],
        name: str | None = None,
        timestamp: dt.datetime | None = None,
    ) -> None:
        set_field(self, "kind", kind)
        set_field(self, "user_id", user_id)
        set_field(self, "properties", properties)
        set_field(self, "name", name)
        set_field(self, "timestamp", timestamp)


#: ``before_send(event)``: the event to send (itself, or a changed copy), or None to drop it.
BeforeSend = Callable[[Event], "Event | None"]

#: A failing ``before_send`` is reported at most this often (seconds): it runs on every call.
HOOK_WARNING_INTERVAL: Final = 60.0


class Hook:
    """Runs a client's ``before_send`` in the caller's thread. A hook that raises, or returns
    something other than an :class:`Event` of the same kind or None, leaves the message unchanged
    (a broken scrubber must not lose data), and is logged at most once a minute."""

    def __init__(self, before_send: BeforeSend) -> None:
        self._before_send = before_send
        self._last_logged = -HOOK_WARNING_INTERVAL

    def __call__(self, event: Event) -> Event | None:
        try:
            result = self._before_send(event)
        except Exception as exc:
            self._complain(f"raised {type(exc).__name__}: {exc}", exc)
            return event
        if result is None or (type(result) is Event and result.kind == event.kind):
            return result
        shown = f"a {result.kind} event" if isinstance(result, Event) else type(result).__name__
        self._complain(f"returned {shown} for a {event.kind} event (expected an Event of its kind or None)")
        return event

    def _complain(self, what: str, exc: Exception | None = None) -> None:
        now = time.monotonic()
        if now - self._last_logged < HOOK_WARNING_INTERVAL:
            return
        # Unlocked: two threads failing at once may both log, which costs a line, not a lock per call.
        self._last_logged = now
        logger.error(
            "before_send %s; the message is sent unchanged. Logged at most once a minute.",
            what,
            exc_info=exc,
        )


def track_event(
    external_id: Any, event: Any, parameters: Any, timestamp: Any, defaults: Mapping[str, Any] | None = None
) -> Event:
    """A track() call as an :class:`Event`, its arguments checked (the body is checked in full
    later), ``defaults`` merged under its parameters."""
    if timestamp is not None and not is_datetime(timestamp):
        raise _not_a_datetime(timestamp)
    given = require_mapping(parameters, "parameters")
    properties = {**defaults, **given} if defaults else dict(given)
    return Event(
        TRACK, require_id(external_id, "external_id"), properties, require_id(event, "event"), timestamp
    )


def identify_event(user_id: Any, traits: Any) -> Event:
    """An identify() call as an :class:`Event`, its arguments checked."""
    return Event(IDENTIFY, require_id(user_id, "user_id"), dict(require_mapping(traits, "traits")))
