"""A local stand-in for the Flameup REST API.

It speaks real HTTP/1.1 on 127.0.0.1, so the SDK's tests, benchmarks and demo go
through the same sockets, keep-alive and status handling as in production, and it
can inject failures (error statuses, hung requests, dropped connections) on demand.

Requests are validated against ``openapi.yaml`` beside this file (also
``docs/openapi.yaml``) with openapi-core, so the server accepts exactly what that
description documents; ``LocalServer(validate=False)`` skips it.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import re
import selectors
import socket
import socketserver
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple, get_args
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

if TYPE_CHECKING:
    from openapi_core import OpenAPI
    from openapi_core.datatypes import RequestParameters

RequestKind = Literal["track", "identify", "transactional", "get_person"]
FaultAction = Literal["respond", "hang", "drop"]

#: The OpenAPI description the server validates requests against.
SPEC_PATH: Final = Path(__file__).with_name("openapi.yaml")

_KINDS: frozenset[str] = frozenset(get_args(RequestKind))
_ACTIONS: frozenset[str] = frozenset(get_args(FaultAction))

_DEFAULT_HOST = "127.0.0.1"
# The server stands in for the documented API, so requests are checked as if they
# had been addressed to its documented base, whatever address the server listens on.
_API_ORIGIN = "https://api.flameup.ai"
# Bodies beyond this are refused unread: the SDK caps messages far below it, and
# reading a hostile Content-Length would allocate that much memory up front.
_MAX_BODY = 16 * 1024 * 1024
_MAX_LINE = 65536
# Validator messages quote the offending value, which can be as large as the body.
_MAX_REASON = 1000

_TRACK_PATH = "/api/v1/track"
_WORKSPACE_PREFIX = "/api/v1/workspaces/"
_WORKSPACE_ROUTES: dict[str, RequestKind] = {
    "people": "identify",
    "people/search": "get_person",
    "transactional/send": "transactional",
}
_METHODS: dict[RequestKind, str] = {
    "track": "POST",
    "identify": "POST",
    "transactional": "POST",
    "get_person": "GET",
}
_REASONS: dict[int, str] = {status.value: status.phrase for status in HTTPStatus}
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    """One request as the server received it, and the status it answered.

    ``status`` is 0 when a fault hung or dropped the request. ``kind`` names the
    endpoint the path addresses (even if the request was then rejected), or is
    None when the path matches no endpoint. ``error`` is the message of an error
    answer (``{"error": {"message": ...}}``), None for a 2xx or no answer.
    """

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    json: Any
    status: int
    kind: RequestKind | None
    idempotency_key: str | None
    received_at: float
    error: str | None = None

    @property
    def accepted(self) -> bool:
        """Whether the server answered 2xx, i.e. processed the request."""
        return 200 <= self.status < 300


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
        if self.kind is not None and self.kind not in _KINDS:
            raise ValueError(f"unknown request kind {self.kind!r}")
        if self.retry_after is not None and not (
            self.retry_after.isascii() and self.retry_after.isprintable()
        ):
            raise ValueError("retry_after must be printable ASCII")


class _Reply(NamedTuple):
    """What to do with a request: status 0 means close without answering."""

    status: int
    payload: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    # Set for a hung request: the event that ends the hang.
    release: threading.Event | None = None
    error: str | None = None


class _FramingError(Exception):
    """The request body cannot be read, so the connection cannot be reused."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _ok(document: object) -> _Reply:
    return _Reply(200, json.dumps(document).encode())


def _error(status: int, message: str, *headers: tuple[str, str]) -> _Reply:
    payload = json.dumps({"error": {"message": message}}).encode()
    return _Reply(status, payload, headers, error=message)


_TRACK_OK = _ok({"success": True})


def _reject_constant(name: str) -> object:
    # Python's json accepts NaN and Infinity, which the real API's parser would not.
    raise ValueError(f"{name} is not valid JSON")


def _load_json(body: bytes, **parameters: str) -> Any:
    """Strict JSON: UTF-8 only (json.loads would guess UTF-16/32) and no NaN/Infinity."""
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except RecursionError:
        # openapi-core reports ValueErrors as an undecodable body; a RecursionError would escape it.
        raise ValueError("nested too deeply") from None


def _parse_json(body: bytes) -> Any:
    if not body:
        return None
    try:
        return _load_json(body)
    except ValueError:
        return None


# --- validation against openapi.yaml ---------------------------------------------------------


class _Spec:
    """openapi-core over openapi.yaml: loaded once per process, shared by every server.

    openapi-core is imported only here, on first use: it takes about half a second to
    import, which code that merely imports this package should not pay.
    """

    _lock = threading.Lock()
    _loaded: _Spec | None = None

    def __init__(self) -> None:
        try:
            from openapi_core import Config, OpenAPI
            from openapi_core.datatypes import RequestParameters
            from werkzeug.datastructures import Headers, ImmutableMultiDict
        except ImportError as exc:
            raise ImportError(
                "LocalServer validates requests against openapi.yaml with openapi-core: "
                "pip install 'flameup-analytics[testing]', or pass validate=False"
            ) from exc
        config = Config(
            # tests/test_openapi.py checks the file; checking it again costs every process 0.2 s.
            spec_validator_cls=None,
            extra_media_type_deserializers={"application/json": _load_json},
        )
        self.openapi: OpenAPI = OpenAPI.from_file_path(str(SPEC_PATH), config=config)
        self._parameters = RequestParameters
        self._headers = Headers
        self._multidict = ImmutableMultiDict
        # The validator's schema lookups share caches that were not written for
        # concurrent use; validation is CPU-bound, so serializing it costs no throughput.
        self._validate_lock = threading.Lock()

    @classmethod
    def get(cls) -> _Spec:
        with cls._lock:
            if cls._loaded is None:
                cls._loaded = cls()
            return cls._loaded

    @classmethod
    def _after_fork_in_child(cls) -> None:
        # A lock held by another thread at fork() would stay locked forever in the child.
        cls._lock = threading.Lock()
        if cls._loaded is not None:
            cls._loaded._validate_lock = threading.Lock()

    def check(
        self, method: str, path: str, query: str, headers: dict[str, str], body: bytes
    ) -> _Reply | None:
        """The error reply for a request that does not conform, else None."""
        request = _SpecRequest(
            method=method.lower(),
            path=path,
            body=body,
            content_type=headers.get("content-type", "").lower(),
            parameters=self._parameters(
                query=self._multidict(parse_qsl(query, keep_blank_values=True)),
                header=self._headers(headers),
            ),
        )
        with self._validate_lock:
            error = next(iter(self.openapi.iter_request_errors(request)), None)
        return None if error is None else _explain(error)


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_Spec._after_fork_in_child)


@dataclass(slots=True)
class _SpecRequest:
    """A request as openapi-core's Request protocol wants it."""

    method: str
    path: str
    body: bytes
    content_type: str
    parameters: RequestParameters
    host_url: str = _API_ORIGIN


def _explain(error: Exception) -> _Reply:
    """The reply to a request openapi-core refused: its reason, naming the field at fault."""
    from openapi_core.deserializing.media_types.exceptions import MediaTypeDeserializeError
    from openapi_core.templating.media_types.exceptions import MediaTypeNotFound
    from openapi_core.templating.paths.exceptions import OperationNotFound, PathError
    from openapi_core.validation.request.exceptions import (
        MissingParameterError,
        MissingRequestBodyError,
        ParameterValidationError,
        RequestBodyValidationError,
        SecurityValidationError,
    )

    cause = error.__cause__
    # The server routes, authenticates and checks the media type itself before asking
    # the validator, so these first few only answer if the two ever disagree.
    if isinstance(error, SecurityValidationError):
        return _error(401, "missing or invalid API key", ("WWW-Authenticate", "Bearer"))
    if isinstance(error, OperationNotFound):
        return _error(405, f"not in the API description: {_text(error)}")
    if isinstance(error, PathError):
        return _error(404, f"not in the API description: {_text(error)}")
    if isinstance(cause, MediaTypeNotFound):
        return _error(415, f"Content-Type must be one of {', '.join(cause.availableMimetypes)}")
    if isinstance(error, MissingRequestBodyError):
        return _error(400, "the request body is missing: it must be a JSON object")
    if isinstance(error, MissingParameterError):
        return _error(400, f"missing required {error.location} parameter {error.name!r}")
    if isinstance(error, ParameterValidationError):
        subject = f"{error.location} parameter {error.name!r}"
    elif isinstance(error, RequestBodyValidationError):
        subject = "request body"
    else:
        return _error(400, _text(error))
    schema_errors = getattr(cause, "schema_errors", None)
    if schema_errors:
        detail = "; ".join(_schema_error_text(schema_error) for schema_error in schema_errors)
    elif isinstance(cause, MediaTypeDeserializeError):
        # Its own text would decode the raw body, which fails for invalid UTF-8.
        detail = f"not valid JSON ({_text(cause.__cause__ or cause.__context__)})"
    else:
        detail = _text(cause) if cause is not None else _text(error)
    return _error(400, _shorten(f"invalid {subject}: {detail}"))


def _schema_error_text(error: Any) -> str:  # a jsonschema ValidationError (untyped)
    # jsonschema's message names the value; json_path names where it is ("$" is the whole document).
    message = str(error.message)
    path = str(error.json_path)
    return message if path == "$" else f"{path}: {message}"


def _text(error: BaseException | None) -> str:
    if error is None:
        return "unknown reason"
    try:
        return str(error) or type(error).__name__
    except Exception:  # some validator errors fail to print themselves
        return type(error).__name__


def _shorten(message: str) -> str:
    return message if len(message) <= _MAX_REASON else message[: _MAX_REASON - 1] + "…"


def _is_json_content_type(value: str | None) -> bool:
    if value is None:
        return False
    media_type, *params = value.split(";")
    if media_type.strip().lower() != "application/json":
        return False
    for param in params:
        name, _, argument = param.partition("=")
        if name.strip().lower() == "charset" and argument.strip().strip('"').lower() != "utf-8":
            return False
    return True


def _route(path: str) -> tuple[RequestKind | None, str | None]:
    """Return the endpoint kind a path addresses, and its workspace id if any."""
    if path == _TRACK_PATH:
        return "track", None
    if path.startswith(_WORKSPACE_PREFIX):
        workspace, _, rest = path[len(_WORKSPACE_PREFIX) :].partition("/")
        kind = _WORKSPACE_ROUTES.get(rest)
        if kind is not None and workspace:
            return kind, unquote(workspace)
    return None, None


def _shutdown_quietly(connection: socket.socket) -> None:
    # The client or the handler may have closed it already.
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Replies go out in one write, but a 100-continue interim reply does not, and
    # Nagle's algorithm would then hold the final reply until a delayed ACK.
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.owner._track_connection(self.connection)

    def finish(self) -> None:
        self.server.owner._forget_connection(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Stay silent: benchmarks push thousands of requests per second."""

    def _serve(self) -> None:
        owner = self.server.owner
        received_at = time.monotonic()
        headers = {name.lower(): value for name, value in self.headers.items()}
        framing_error: _Reply | None = None
        try:
            body = self._read_body(headers)
        except _FramingError as exc:
            body = b""
            framing_error = _error(exc.status, str(exc))
            # Unread body bytes would be parsed as the next request.
            self.close_connection = True
        latency = owner.latency
        if latency > 0:
            time.sleep(latency)
        reply = owner._handle(self.command, self.path, headers, body, received_at, framing_error)
        if reply.release is not None:
            reply.release.wait()
        if reply.status == 0:
            self.close_connection = True
            return
        self._write(reply)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve

    def _read_body(self, headers: dict[str, str]) -> bytes:
        transfer_encoding = headers.get("transfer-encoding")
        if transfer_encoding is not None:
            if transfer_encoding.strip().lower() != "chunked":
                raise _FramingError(501, "only chunked Transfer-Encoding is supported")
            return self._read_chunked()
        declared = headers.get("content-length")
        if declared is None:
            return b""
        declared = declared.strip()
        # int() alone would accept "+5", "1_0" and non-ASCII digits.
        if not (declared.isascii() and declared.isdigit()):
            raise _FramingError(400, "invalid Content-Length")
        length = int(declared)
        if length > _MAX_BODY:
            raise _FramingError(413, "request body too large")
        return self._read_exactly(length)

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            size_field = self.rfile.readline(_MAX_LINE).split(b";", 1)[0].strip()
            if _CHUNK_SIZE.fullmatch(size_field) is None:
                raise _FramingError(400, "malformed chunk size")
            size = int(size_field, 16)
            if size == 0:
                break
            total += size
            if total > _MAX_BODY:
                raise _FramingError(413, "request body too large")
            chunks.append(self._read_exactly(size))
            if self.rfile.readline(_MAX_LINE) not in (b"\r\n", b"\n"):
                raise _FramingError(400, "malformed chunk terminator")
        while self.rfile.readline(_MAX_LINE) not in (b"\r\n", b"\n", b""):
            pass  # Trailer fields carry nothing this API uses.
        return b"".join(chunks)

    def _read_exactly(self, length: int) -> bytes:
        data = self.rfile.read(length)
        if len(data) < length:
            raise ConnectionResetError("client closed the connection mid-body")
        return data

    def _write(self, reply: _Reply) -> None:
        lines = [
            f"{self.protocol_version} {reply.status} {_REASONS.get(reply.status, '')}",
            "Content-Type: application/json",
            f"Content-Length: {len(reply.payload)}",
        ]
        lines.extend(f"{name}: {value}" for name, value in reply.headers)
        if self.close_connection:
            lines.append("Connection: close")
        head = "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n"
        # One write per reply: a separate body write costs a syscall and a packet.
        self.wfile.write(head if self.command == "HEAD" else head + reply.payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    # With the default backlog of 5, a burst of new connections makes the kernel
    # drop SYNs, and clients then wait a full second before retrying.
    request_queue_size = 1024

    def __init__(self, owner: LocalServer, host: str, port: int) -> None:
        self.owner = owner
        self.host = host
        if ":" in host:
            self.address_family = socket.AF_INET6
        # Made first: a failed bind calls server_close(), which closes these too.
        self._wake_reader, self._wake_writer = socket.socketpair()
        super().__init__((host, port), _Handler)

    def serve_until_woken(self) -> None:
        """Accept connections, each served in its own thread, until ``wake()``.

        serve_forever() only notices shutdown() between polls, which would make
        stop() either slow or the idle server busy; a wake-up socket avoids both.
        """
        with selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            selector.register(self._wake_reader, selectors.EVENT_READ)
            while True:
                ready = selector.select()
                if any(key.fileobj is self._wake_reader for key, _ in ready):
                    return
                try:
                    request, client_address = self.get_request()
                except OSError:
                    continue  # The client gave up before we accepted it.
                try:
                    self.process_request(request, client_address)
                except Exception:
                    # e.g. no thread could be started: drop this connection, keep serving.
                    self.handle_error(request, client_address)
                    self.shutdown_request(request)

    def wake(self) -> None:
        self._wake_writer.send(b"\0")

    def server_close(self) -> None:
        super().server_close()
        self._wake_reader.close()
        self._wake_writer.close()

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn), which can take
        # seconds on some machines, only to fill in server_name.
        socketserver.TCPServer.server_bind(self)
        self.server_name = self.host
        self.server_port = self.socket.getsockname()[1]

    def handle_error(
        self,
        request: socket.socket | tuple[bytes, socket.socket],
        client_address: Any,
    ) -> None:
        # Clients vanishing mid-request, and stop() shutting sockets, are routine.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class LocalServer:
    """An in-process Flameup API on 127.0.0.1 that records every request.

    Use ``start()``/``stop()`` or a ``with`` block, and point the SDK's ``host``
    option at ``url``. ``port=0`` picks a free ephemeral port. A server cannot be
    restarted once stopped; to bring the API "back up", create a new one on the
    same port.

    With ``validate=True`` (the default) every authenticated request to an endpoint
    is checked against ``openapi.yaml`` with openapi-core (the ``testing`` extra),
    and one that does not conform is answered 400 with the validator's reason. That
    costs about a millisecond per request: throughput benchmarks pass ``validate=False``.

    ``on_request`` is called with each :class:`ReceivedRequest` once it is recorded,
    before it is answered, in the thread serving it; what it raises is logged and
    otherwise ignored.
    """

    def __init__(
        self,
        api_key: str = "test_key",
        workspace_id: str = "ws_test",
        *,
        port: int = 0,
        host: str = _DEFAULT_HOST,
        latency: float = 0.0,
        validate: bool = True,
        on_request: Callable[[ReceivedRequest], None] | None = None,
    ) -> None:
        # Read on every request, so changing them simulates key or workspace changes.
        self.api_key = api_key
        self.workspace_id = workspace_id
        self._host = host
        self._port = port
        # Loaded here so a missing openapi-core fails at construction, not in a handler thread.
        self._spec = _Spec.get() if validate else None
        self.on_request = on_request
        self._latency = 0.0
        self.latency = latency
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._requests: list[ReceivedRequest] = []
        self._accepted: list[ReceivedRequest] = []
        # Counts kept alongside the lists so wait_for's predicate stays O(1).
        self._received_by_kind: Counter[RequestKind | None] = Counter()
        self._accepted_by_kind: Counter[RequestKind | None] = Counter()
        self._people: dict[str, dict[str, Any]] = {}
        self._faults: list[Fault] = []
        self._release = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> LocalServer:
        """Bind and serve in a daemon thread; returns self."""
        with self._lock:
            if self._server is not None:
                raise RuntimeError("a LocalServer can only be started once")
            server = self._server = _Server(self, self._host, self._port)
        self._thread = threading.Thread(
            target=server.serve_until_woken,
            name=f"flameup-local-server-{server.server_port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and close every connection, hung ones included.

        Idempotent, and prompt: it never waits for a request handler to finish.
        """
        with self._lock:
            server = self._server
            if server is None or self._stopped:
                return
            self._stopped = True
            self._release.set()
            connections = list(self._connections)
        server.wake()
        if self._thread is not None:
            self._thread.join()
        server.server_close()
        # Idle keep-alive connections would otherwise go on being served.
        for connection in connections:
            _shutdown_quietly(connection)

    @property
    def url(self) -> str:
        """The SDK's ``host`` value for this server, e.g. ``http://127.0.0.1:8123``."""
        if self._server is None:
            raise RuntimeError("the server has not been started")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._server.server_port}"

    @property
    def validates(self) -> bool:
        """Whether requests are checked against openapi.yaml."""
        return self._spec is not None

    @property
    def latency(self) -> float:
        """Seconds to wait before answering each request; settable at any time."""
        return self._latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        if not 0 <= seconds < float("inf"):
            raise ValueError(f"latency must be a finite number >= 0, not {seconds}")
        self._latency = seconds

    @property
    def requests(self) -> list[ReceivedRequest]:
        """Every request received, in the order they were handled."""
        with self._lock:
            return list(self._requests)

    @property
    def accepted(self) -> list[ReceivedRequest]:
        """The requests answered 2xx, in order."""
        with self._lock:
            return list(self._accepted)

    def tracks(self) -> list[ReceivedRequest]:
        """Accepted track requests."""
        return self._accepted_of("track")

    def identifies(self) -> list[ReceivedRequest]:
        """Accepted identify requests."""
        return self._accepted_of("identify")

    def transactionals(self) -> list[ReceivedRequest]:
        """Accepted transactional send requests."""
        return self._accepted_of("transactional")

    @property
    def people(self) -> dict[str, dict[str, Any]]:
        """external_id -> traits merged from accepted identify calls (a copy)."""
        with self._lock:
            return copy.deepcopy(self._people)

    def wait_for(
        self,
        count: int,
        timeout: float,
        *,
        kind: RequestKind | None = None,
        accepted: bool = True,
    ) -> bool:
        """Block until ``count`` accepted requests (of ``kind``, if given) exist.

        With ``accepted=False`` every received request counts, including rejected,
        faulted, hung and dropped ones. Returns whether the count was reached
        before ``timeout`` seconds passed.
        """
        if kind is not None and kind not in _KINDS:
            raise ValueError(f"unknown request kind {kind!r}")
        with self._cond:
            return self._cond.wait_for(lambda: self._count(kind, accepted) >= count, timeout)

    def add_fault(self, fault: Fault) -> Fault:
        """Inject ``fault`` into upcoming requests; returns it to read ``hits``."""
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Remove every fault; requests already hung stay hung."""
        with self._lock:
            self._faults.clear()

    def release_hung(self) -> None:
        """End every currently hung request by closing it without a response.

        Requests hung by faults after this call hang again.
        """
        with self._lock:
            self._release.set()
            # After stop() the set event must stay, so that late hangs end at once.
            if not self._stopped:
                self._release = threading.Event()

    def _accepted_of(self, kind: RequestKind) -> list[ReceivedRequest]:
        with self._lock:
            return [request for request in self._accepted if request.kind == kind]

    def _count(self, kind: RequestKind | None, accepted: bool) -> int:
        if kind is None:
            return len(self._accepted if accepted else self._requests)
        return (self._accepted_by_kind if accepted else self._received_by_kind)[kind]

    def _track_connection(self, connection: socket.socket) -> None:
        with self._lock:
            if not self._stopped:
                self._connections.add(connection)
                return
        # Accepted just as stop() ran: it missed this one.
        _shutdown_quietly(connection)

    def _forget_connection(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)

    def _handle(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes,
        received_at: float,
        framing_error: _Reply | None,
    ) -> _Reply:
        """Decide the reply to a request, apply its effects and record it."""
        split = urlsplit(target)
        query = dict(parse_qsl(split.query))
        kind, workspace = _route(split.path)
        document = _parse_json(body)
        # Validation is pure, so it runs outside the lock; a fault may override it.
        verdict = framing_error or self._validate(method, split, kind, workspace, headers, body)
        with self._lock:
            # A request whose body could not be read is not a complete request for a
            # fault to act on, and its connection must be closed regardless.
            fault = None if framing_error else self._take_fault(kind)
            if fault is not None:
                reply = self._fault_reply(fault)
            elif isinstance(verdict, _Reply):
                reply = verdict
            else:
                reply = self._accept(verdict, document, query)
            request = ReceivedRequest(
                method=method,
                path=split.path,
                query=query,
                headers=headers,
                body=body,
                json=document,
                status=reply.status,
                kind=kind,
                idempotency_key=headers.get("idempotency-key"),
                received_at=received_at,
                error=reply.error,
            )
            self._requests.append(request)
            self._received_by_kind[kind] += 1
            if request.accepted:
                self._accepted.append(request)
                self._accepted_by_kind[kind] += 1
            self._cond.notify_all()
        callback = self.on_request
        if callback is not None:
            try:
                callback(request)
            except Exception:
                _log.exception("LocalServer on_request callback failed")
        return reply

    def _validate(
        self,
        method: str,
        target: SplitResult,
        kind: RequestKind | None,
        workspace: str | None,
        headers: dict[str, str],
        body: bytes,
    ) -> _Reply | RequestKind:
        """Return the error reply for an invalid request, else the endpoint to apply.

        Key, route, method and media type are the server's to check, with the statuses
        an HTTP API gives them; parameters and body are the API description's.
        """
        if headers.get("authorization") != f"Bearer {self.api_key}":
            return _error(401, "missing or invalid API key", ("WWW-Authenticate", "Bearer"))
        if kind is None:
            return _error(404, f"no endpoint at {target.path}")
        if workspace is not None and workspace != self.workspace_id:
            return _error(404, f"unknown workspace {workspace!r}")
        allowed = _METHODS[kind]
        if method != allowed:
            return _error(405, f"use {allowed}, not {method}", ("Allow", allowed))
        if method == "POST" and not _is_json_content_type(headers.get("content-type")):
            return _error(415, "Content-Type must be application/json")
        if self._spec is not None:
            problem = self._spec.check(method, target.path, target.query, headers, body)
            if problem is not None:
                return problem
        return kind

    def _take_fault(self, kind: RequestKind | None) -> Fault | None:
        for fault in self._faults:
            if fault.times is not None and fault.hits >= fault.times:
                continue
            if fault.kind is None or fault.kind == kind:
                fault.hits += 1
                return fault
        return None

    def _fault_reply(self, fault: Fault) -> _Reply:
        if fault.action == "hang":
            return _Reply(0, release=self._release)
        if fault.action == "drop":
            return _Reply(0)
        if fault.retry_after is None:
            return _error(fault.status, fault.message)
        return _error(fault.status, fault.message, ("Retry-After", fault.retry_after))

    def _accept(self, kind: RequestKind, document: Any, query: dict[str, str]) -> _Reply:
        if kind == "track":
            return _TRACK_OK
        if kind == "transactional":
            return _ok({"id": uuid.uuid4().hex, "status": "queued"})
        if kind == "identify":
            # Unchecked when validation is off: then a body without a usable userId and traits
            # is refused here rather than failing in the handler.
            fields = document if isinstance(document, dict) else {}
            external_id = fields.get("userId")
            new_traits = fields.get("traits", {})
            if not (isinstance(external_id, str) and isinstance(new_traits, dict)):
                return _error(400, "not an identify body (and validation is off)")
            traits = self._people.setdefault(external_id, {})
            traits.update(new_traits)
            return _ok({"person": {"external_id": external_id, "traits": traits}})
        external_id = query.get("external_id", "")
        found = self._people.get(external_id)
        people = [] if found is None else [{"external_id": external_id, "traits": found}]
        return _ok({"people": people})
