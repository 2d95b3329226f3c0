"""LocalServer's HTTP/1.1 plumbing, over real sockets: keep-alive, framing, HEAD, stopping."""

from __future__ import annotations

import email.utils
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from flameup_analytics.testing import LocalServer

from .local_server_support import (
    AUTH,
    JSON_HEADERS,
    PEOPLE,
    SEARCH,
    SEND,
    SEND_BODY,
    TRACK,
    TRACK_BODY,
    call,
    connect,
    send,
)


def test_keep_alive_serves_many_requests_over_one_connection(server: LocalServer) -> None:
    conn = connect(server)
    try:
        first = send(conn, "POST", TRACK, json.dumps(TRACK_BODY).encode())
        sock = conn.sock
        assert sock is not None
        rest = [
            send(conn, "POST", PEOPLE, b'{"userId": "u1"}'),
            send(conn, "POST", TRACK, b"{}", headers=AUTH),  # an error reply keeps the connection too
            send(conn, "GET", f"{SEARCH}?external_id=u1", headers=AUTH),
            send(conn, "POST", SEND, json.dumps(SEND_BODY).encode()),
        ]
        # http.client opens a new socket if the server closed the previous one.
        assert conn.sock is sock
    finally:
        conn.close()

    assert [r.status for r in [first, *rest]] == [200, 200, 415, 200, 200]
    assert all("connection" not in r.headers for r in [first, *rest])
    assert len(server.requests) == 5


def test_head_gets_405_headers_without_a_body(server: LocalServer) -> None:
    conn = connect(server)
    try:
        head = send(conn, "HEAD", TRACK, headers=AUTH)
        # The connection must still be in sync after a bodiless reply.
        after = send(conn, "POST", TRACK, json.dumps(TRACK_BODY).encode())
    finally:
        conn.close()

    assert head.status == 405
    assert head.body == b""
    assert int(head.headers["content-length"]) > 0
    assert after.status == 200


def test_chunked_body_is_decoded_and_keeps_the_connection_in_sync(server: LocalServer) -> None:
    payload = json.dumps(TRACK_BODY).encode()
    conn = connect(server)
    try:
        # http.client chunk-encodes an iterable body of unknown length.
        chunked = send(conn, "POST", TRACK, iter([payload[:10], payload[10:]]))
        after = send(conn, "POST", PEOPLE, b'{"userId": "u1"}')
    finally:
        conn.close()

    assert (chunked.status, after.status) == (200, 200)
    assert server.requests[0].headers["transfer-encoding"] == "chunked"
    assert server.requests[0].body == payload


@pytest.mark.parametrize(
    ("header", "value", "body", "status"),
    [
        ("Content-Length", "abc", b"", 400),
        ("Content-Length", "+5", b"", 400),
        ("Content-Length", str(1 << 40), b"", 413),
        ("Transfer-Encoding", "gzip", b"", 501),
        ("Transfer-Encoding", "chunked", b"zz\r\n", 400),
        ("Transfer-Encoding", "chunked", b"2\r\n{}XX\r\n", 400),
    ],
)
def test_unreadable_body_is_rejected_and_the_connection_closed(
    server: LocalServer, header: str, value: str, body: bytes, status: int
) -> None:
    conn = connect(server)
    try:
        conn.putrequest("POST", TRACK)
        for name, header_value in [*JSON_HEADERS.items(), (header, value)]:
            conn.putheader(name, header_value)
        conn.endheaders(body)
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()

    assert response.status == status
    assert response.getheader("Connection") == "close"
    [request] = server.requests
    assert (request.status, request.kind, request.body) == (status, "track", b"")


def test_stop_closes_idle_keep_alive_connections_and_the_port(server: LocalServer) -> None:
    conn = connect(server)
    try:
        assert send(conn, "POST", TRACK, json.dumps(TRACK_BODY).encode()).status == 200
        server.stop()
        with pytest.raises(OSError):
            send(conn, "POST", TRACK, json.dumps(TRACK_BODY).encode())
    finally:
        conn.close()

    with pytest.raises(ConnectionRefusedError):
        call(server, "POST", TRACK, TRACK_BODY)
    assert len(server.requests) == 1


def test_concurrent_clients_are_all_recorded(server: LocalServer) -> None:
    def client(worker: int) -> None:
        conn = connect(server)
        try:
            for n in range(25):
                headers = {**JSON_HEADERS, "Idempotency-Key": f"{worker}-{n}"}
                assert send(conn, "POST", TRACK, json.dumps(TRACK_BODY).encode(), headers).status == 200
        finally:
            conn.close()

    with ThreadPoolExecutor(max_workers=4) as pool:
        for future in [pool.submit(client, worker) for worker in range(4)]:
            future.result()

    assert server.wait_for(100, 1.0, kind="track")
    keys = {r.idempotency_key for r in server.tracks()}
    assert keys == {f"{w}-{n}" for w in range(4) for n in range(25)}


def test_every_answer_carries_a_date_header_like_the_real_api(server: LocalServer) -> None:
    accepted = call(server, "POST", TRACK, TRACK_BODY)
    refused = call(server, "POST", TRACK, TRACK_BODY, headers={})

    for response in (accepted, refused):
        stamped = email.utils.parsedate_to_datetime(response.headers["date"])
        # `flameup-analytics check` reads it to compare clocks; the same machine's clock here.
        assert abs(stamped.timestamp() - time.time()) < 60
