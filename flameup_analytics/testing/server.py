"""A local stand-in for the Flameup REST API: :class:`LocalServer`.

It speaks real HTTP/1.1 on 127.0.0.1, so the SDK's tests, benchmarks and demo go
through the same sockets, keep-alive and status handling as in production, and it
can inject failures (error statuses, hung requests, dropped connections) on demand.

This module records requests and decides each answer; the pieces it puts together are
:mod:`._routes` (the endpoints, the API's own checks, the people it stores), :mod:`._faults`
(fault injection), :mod:`._validation` (requests checked against ``openapi.yaml`` with
openapi-core, when the ``testing`` extra is installed) and :mod:`._http` (sockets and framing).
"""

from __future__ import annotations

import copy
import logging
import socket
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import SplitResult, parse_qsl, urlsplit

from . import _faults
from ._faults import Fault, FaultAction
from ._http import HTTPServer, shutdown_quietly
from ._routes import KINDS, People, Reply, RequestKind, admit, parse_json, route
from ._validation import SPEC_PATH, load_validator

__all__ = ["SPEC_PATH", "Fault", "FaultAction", "LocalServer", "ReceivedRequest", "RequestKind"]

_DEFAULT_HOST = "127.0.0.1"

logger = logging.getLogger(__name__)


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


class LocalServer:
    """An in-process Flameup API on 127.0.0.1 that records every request.

    Use ``start()``/``stop()`` or a ``with`` block, and point the SDK's ``host``
    option at ``url``. ``port=0`` picks a free ephemeral port. A server cannot be
    restarted once stopped; to bring the API "back up", create a new one on the
    same port.

    While validating, every authenticated request to an endpoint is checked against
    ``openapi.yaml`` with openapi-core, and one that does not conform is answered 400
    with the validator's reason. ``validate=None`` (the default) validates when
    openapi-core is installed (the ``testing`` extra) and skips it otherwise; ``True``
    requires it and raises :class:`ImportError` naming the extra without it; ``False``
    never validates. ``validates`` says which applies. Validation costs about a
    millisecond per request: throughput benchmarks pass ``validate=False``.

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
        validate: bool | None = None,
        on_request: Callable[[ReceivedRequest], None] | None = None,
    ) -> None:
        # Read on every request, so changing them simulates key or workspace changes.
        self.api_key = api_key
        self.workspace_id = workspace_id
        self._host = host
        self._port = port
        # Loaded here so a missing openapi-core fails at construction, not in a handler thread.
        self._validator = load_validator(validate)
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
        self._people = People()
        self._faults: list[Fault] = []
        self._release = threading.Event()
        self._connections: set[socket.socket] = set()
        self._server: HTTPServer | None = None
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
            server = self._server = HTTPServer(self, self._host, self._port)
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
            shutdown_quietly(connection)

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
        return self._validator is not None

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
            return copy.deepcopy(self._people.traits)

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
        if kind is not None and kind not in KINDS:
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
        shutdown_quietly(connection)

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
        framing_error: Reply | None,
    ) -> Reply:
        """Decide the reply to a request, apply its effects and record it."""
        split = urlsplit(target)
        query = dict(parse_qsl(split.query))
        kind, workspace = route(split.path)
        document = parse_json(body)
        # Validation is pure, so it runs outside the lock; a fault may override it.
        verdict = framing_error or self._validate(method, split, kind, workspace, headers, body)
        with self._lock:
            # A request whose body could not be read is not a complete request for a
            # fault to act on, and its connection must be closed regardless.
            fault = None if framing_error else _faults.take(self._faults, kind)
            if fault is not None:
                reply = _faults.reply(fault, self._release)
            elif isinstance(verdict, Reply):
                reply = verdict
            else:
                reply = self._people.answer(verdict, document, query)
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
                logger.exception("LocalServer on_request callback failed")
        return reply

    def _validate(
        self,
        method: str,
        target: SplitResult,
        kind: RequestKind | None,
        workspace: str | None,
        headers: dict[str, str],
        body: bytes,
    ) -> Reply | RequestKind:
        """Return the error reply for an invalid request, else the endpoint to apply.

        Key, route, method and media type are the server's to check, with the statuses
        an HTTP API gives them; parameters and body are the API description's.
        """
        verdict = admit(
            method, target, kind, workspace, headers, api_key=self.api_key, workspace_id=self.workspace_id
        )
        if isinstance(verdict, Reply) or self._validator is None:
            return verdict
        return self._validator.check(method, target.path, target.query, headers, body) or verdict
