"""Requests to a :class:`LocalServer` over raw ``http.client``, for the tests of its modules.

The ``server`` fixture (``tests/conftest.py``) serves :data:`KEY` and :data:`WS`.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from flameup_analytics.testing import LocalServer

from .conftest import API_KEY, WORKSPACE

KEY = API_KEY
WS = WORKSPACE
AUTH = {"Authorization": f"Bearer {KEY}"}
JSON_HEADERS = {**AUTH, "Content-Type": "application/json"}
TRACK = "/api/v1/track"
PEOPLE = f"/api/v1/workspaces/{WS}/people"
SEARCH = f"{PEOPLE}/search"
SEND = f"/api/v1/workspaces/{WS}/transactional/send"

TRACK_BODY = {
    "external_id": "user_1",
    "event": "page_viewed",
    "parameters": {"page": "/pricing"},
    "timestamp": "2026-11-26T03:20:20.123Z",
}
SEND_BODY = {"user_id": "user_1", "template_id": "welcome", "channel": "email", "variables": {"n": 1}}


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> str:
        message = self.json["error"]["message"]
        assert isinstance(message, str)
        return message


def connect(server: LocalServer, timeout: float = 2.0) -> http.client.HTTPConnection:
    url = urlsplit(server.url)
    assert url.hostname is not None
    return http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)


def send(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    body: bytes | Iterable[bytes] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    conn.request(method, path, body=body, headers=JSON_HEADERS if headers is None else headers)
    response = conn.getresponse()
    data = response.read()
    return Response(response.status, {k.lower(): v for k, v in response.getheaders()}, data)


def call(
    server: LocalServer,
    method: str,
    path: str,
    payload: object = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """One request on a fresh connection; ``payload`` is sent as JSON unless ``raw`` is given."""
    body = raw if raw is not None else None if payload is None else json.dumps(payload).encode()
    conn = connect(server)
    try:
        return send(conn, method, path, body, headers)
    finally:
        conn.close()


def track_body(**changes: object) -> dict[str, object]:
    """The smallest valid track body, with ``changes``."""
    body: dict[str, object] = {"external_id": "u", "event": "e"}
    body.update(changes)
    return body
