"""Internal. The API the local server stands in for: its endpoints, its answers, its memory.

Which endpoint a path addresses, the checks an HTTP API makes itself (key, workspace, method,
media type) with the statuses it gives them, and the answers of an accepted request, including
the people that ``identify`` stores and the search finds. Everything here is pure or works on
state the caller guards; the request bodies' shape is :mod:`._validation`'s.
"""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any, Literal, NamedTuple, get_args
from urllib.parse import SplitResult, unquote

RequestKind = Literal["track", "identify", "transactional", "get_person"]
"""The endpoint a request addresses: ``track``, ``identify`` (create or update a person),
``transactional`` (send a transactional message) or ``get_person`` (the person search)."""

KINDS: frozenset[str] = frozenset(get_args(RequestKind))

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


class Reply(NamedTuple):
    """What to do with a request: status 0 means close without answering."""

    status: int
    payload: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    # Set for a hung request: the event that ends the hang.
    release: threading.Event | None = None
    error: str | None = None


def ok(document: object) -> Reply:
    return Reply(200, json.dumps(document).encode())


def error(status: int, message: str, *headers: tuple[str, str]) -> Reply:
    """An error answer in the API's shape, ``{"error": {"message": ...}}``."""
    payload = json.dumps({"error": {"message": message}}).encode()
    return Reply(status, payload, headers, error=message)


_TRACK_OK = ok({"success": True})


def _reject_constant(name: str) -> object:
    # Python's json accepts NaN and Infinity, which the real API's parser would not.
    raise ValueError(f"{name} is not valid JSON")


def load_json(body: bytes, **parameters: str) -> Any:
    """Strict JSON: UTF-8 only (json.loads would guess UTF-16/32) and no NaN/Infinity."""
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except RecursionError:
        # openapi-core reports ValueErrors as an undecodable body; a RecursionError would escape it.
        raise ValueError("nested too deeply") from None


def parse_json(body: bytes) -> Any:
    """The body as JSON, or None when it is empty or not strict JSON."""
    if not body:
        return None
    try:
        return load_json(body)
    except ValueError:
        return None


def route(path: str) -> tuple[RequestKind | None, str | None]:
    """Return the endpoint kind a path addresses, and its workspace id if any."""
    if path == _TRACK_PATH:
        return "track", None
    if path.startswith(_WORKSPACE_PREFIX):
        workspace, _, rest = path[len(_WORKSPACE_PREFIX) :].partition("/")
        kind = _WORKSPACE_ROUTES.get(rest)
        if kind is not None and workspace:
            return kind, unquote(workspace)
    return None, None


def admit(
    method: str,
    target: SplitResult,
    kind: RequestKind | None,
    workspace: str | None,
    headers: dict[str, str],
    *,
    api_key: str,
    workspace_id: str,
) -> Reply | RequestKind:
    """The error answer for a request the API itself refuses (key, path, method, media type).

    Else the endpoint the request is for, still to be validated against the API description.
    """
    if headers.get("authorization") != f"Bearer {api_key}":
        return error(401, "missing or invalid API key", ("WWW-Authenticate", "Bearer"))
    if kind is None:
        return error(404, f"no endpoint at {target.path}")
    if workspace is not None and workspace != workspace_id:
        return error(404, f"unknown workspace {workspace!r}")
    allowed = _METHODS[kind]
    if method != allowed:
        return error(405, f"use {allowed}, not {method}", ("Allow", allowed))
    if method == "POST" and not _is_json_content_type(headers.get("content-type")):
        return error(415, "Content-Type must be application/json")
    return kind


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


class People:
    """The people ``identify`` has stored: external_id -> merged traits.

    Not thread-safe: the server calls it under its own lock.
    """

    def __init__(self) -> None:
        self.traits: dict[str, dict[str, Any]] = {}

    def answer(self, kind: RequestKind, document: Any, query: dict[str, str]) -> Reply:
        """Apply an accepted request of ``kind`` and return the API's answer to it."""
        if kind == "track":
            return _TRACK_OK
        if kind == "transactional":
            return ok({"id": uuid.uuid4().hex, "status": "queued"})
        if kind == "identify":
            # Unchecked when validation is off: then a body without a usable userId and traits
            # is refused here rather than failing in the handler.
            fields = document if isinstance(document, dict) else {}
            external_id = fields.get("userId")
            new_traits = fields.get("traits", {})
            if not (isinstance(external_id, str) and isinstance(new_traits, dict)):
                return error(400, "not an identify body (and validation is off)")
            traits = self.traits.setdefault(external_id, {})
            traits.update(new_traits)
            return ok({"person": {"external_id": external_id, "traits": traits}})
        external_id = query.get("external_id", "")
        found = self.traits.get(external_id)
        people = [] if found is None else [{"external_id": external_id, "traits": found}]
        return ok({"people": people})
