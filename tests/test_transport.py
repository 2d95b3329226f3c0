"""The transports: keep-alive, connections closed by the server, proxies, errors."""

from __future__ import annotations

import base64
import http.client
import http.server
import socket
import threading
import urllib.parse
from collections.abc import Iterator

import pytest

import flameup_analytics as fa
from flameup_analytics.testing import Fault, LocalServer

from .conftest import API_KEY
from .misbehaving import MisbehavingServer

BODY = b'{"external_id":"u","event":"e"}'
HEADERS = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}


def track_request(server: LocalServer) -> fa.Request:
    return fa.Request("POST", server.url + "/api/v1/track", HEADERS, BODY)


@pytest.mark.parametrize("transport_class", [fa.HTTPTransport, fa.RequestsTransport])
def test_both_transports_send_and_map_answers(
    server: LocalServer, transport_class: type[fa.HTTPTransport] | type[fa.RequestsTransport]
) -> None:
    transport = transport_class(pool_size=2)
    try:
        answer = transport.send(track_request(server), timeout=5)
        assert answer.status == 200 and answer.json() == {"success": True}
        assert answer.header("content-type") == "application/json"
        server.add_fault(Fault(status=429, retry_after="7", message="slow down"))
        limited = transport.send(track_request(server), timeout=5)
        assert (limited.status, limited.header("Retry-After"), limited.error_message()) == (
            429,
            "7",
            "slow down",
        )
    finally:
        transport.close()


@pytest.mark.parametrize("transport_class", [fa.HTTPTransport, fa.RequestsTransport])
def test_no_answer_is_a_transport_error(
    transport_class: type[fa.HTTPTransport] | type[fa.RequestsTransport],
) -> None:
    with LocalServer() as gone:
        url = gone.url
    with pytest.raises(fa.TransportError):
        transport_class().send(fa.Request("POST", url + "/api/v1/track", HEADERS, BODY), timeout=2)


def test_a_connection_the_server_closed_while_idle_is_replaced_quietly() -> None:
    transport = fa.HTTPTransport()
    first = LocalServer(api_key=API_KEY).start()
    port = int(first.url.rsplit(":", 1)[1])
    assert transport.send(track_request(first), timeout=5).status == 200
    first.stop()  # closes the pooled keep-alive connection from the server's side
    with LocalServer(api_key=API_KEY, port=port) as second:
        assert transport.send(track_request(second), timeout=5).status == 200
        assert [r.status for r in second.requests] == [200]


def test_a_timeout_is_a_transport_error_and_not_retried_quietly(server: LocalServer) -> None:
    server.add_fault(Fault(action="hang", times=None))
    with pytest.raises(fa.TransportError, match="timed out"):
        fa.HTTPTransport().send(track_request(server), timeout=0.2)
    assert server.wait_for(1, timeout=5, accepted=False)
    assert len(server.requests) == 1
    server.release_hung()


class _Proxy(http.server.BaseHTTPRequestHandler):
    """A forwarding proxy for plain HTTP: absolute URLs in, the upstream answer out."""

    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, str | None]]

    def do_POST(self) -> None:
        self.seen.append((self.path, self.headers.get("Proxy-Authorization")))
        url = urllib.parse.urlsplit(self.path)
        upstream = http.client.HTTPConnection(url.hostname or "", url.port)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-authorization", "host")}
        upstream.request("POST", url.path, body, headers)
        answer = upstream.getresponse()
        data = answer.read()
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.getheader("Content-Type", "application/json"))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def proxy() -> Iterator[tuple[str, list[tuple[str, str | None]]]]:
    seen: list[tuple[str, str | None]] = []
    handler = type("Proxy", (_Proxy,), {"seen": seen})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{httpd.server_port}", seen
    httpd.shutdown()
    httpd.server_close()


def test_http_proxy_from_the_environment_with_credentials(
    server: LocalServer, proxy: tuple[str, list[tuple[str, str | None]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    address, seen = proxy
    monkeypatch.setenv("HTTP_PROXY", f"http://us%40er:p%3Ass@{address}")
    monkeypatch.setenv("NO_PROXY", "")
    monkeypatch.setenv("no_proxy", "")
    answer = fa.HTTPTransport().send(track_request(server), timeout=5)
    assert answer.status == 200
    ((path, authorization),) = seen
    assert path == server.url + "/api/v1/track"
    assert authorization == "Basic " + base64.b64encode(b"us@er:p:ss").decode()
    assert len(server.tracks()) == 1


def test_no_proxy_is_honoured(
    server: LocalServer, proxy: tuple[str, list[tuple[str, str | None]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    address, seen = proxy
    monkeypatch.setenv("HTTP_PROXY", f"http://{address}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert fa.HTTPTransport().send(track_request(server), timeout=5).status == 200
    assert seen == []


def test_mock_transport_records_requests() -> None:
    transport = fa.MockTransport(lambda request: fa.Response(201, {"X-Seen": request.url}, b"{}"))
    client = fa.Client(api_key="k", transport=transport, sync_mode=True, spool_dir=False)
    client.track("user_1", "clicked")
    (request,) = transport.requests
    assert request.url == "https://api.flameup.ai/api/v1/track"
    assert request.headers["Idempotency-Key"]
    assert client.stats().delivered == 1


def test_pooled_connections_have_nagle_turned_off(server: LocalServer) -> None:
    # http.client writes a request's head and body separately; with Nagle's algorithm on, a real
    # network would hold the body until the head's delayed ACK (tens of ms per request).
    transport = fa.HTTPTransport()
    assert transport.send(track_request(server), timeout=5).status == 200
    ((connection,),) = transport._idle.values()
    assert connection.sock is not None
    assert connection.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    transport.close()


ANSWERS = {
    "content-length": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("transport_class", [fa.HTTPTransport, fa.RequestsTransport])
@pytest.mark.parametrize("framing", sorted(ANSWERS))
def test_one_kept_alive_connection_carries_consecutive_requests(
    transport_class: type[fa.HTTPTransport] | type[fa.RequestsTransport], framing: str
) -> None:
    # Reading by a deadline and up to a cap must still read each answer to its end exactly.
    with MisbehavingServer(lambda connection, _: connection.sendall(ANSWERS[framing])) as server:
        transport = transport_class()
        for _ in range(3):
            assert (
                transport.send(fa.Request("POST", server.url + "/x", HEADERS, BODY), timeout=5).body == b"{}"
            )
        transport.close()
        assert server.connections == 1


@pytest.mark.parametrize("transport_class", [fa.HTTPTransport, fa.RequestsTransport])
def test_an_answer_that_closes_the_connection_is_read_whole(
    transport_class: type[fa.HTTPTransport] | type[fa.RequestsTransport],
) -> None:
    # http.client hands the socket over to such an answer before its body is read.
    body = b'{"success": true}' * 1000
    answer = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    with MisbehavingServer(lambda connection, _: connection.sendall(answer)) as server:
        transport = transport_class()
        for _ in range(2):
            assert (
                transport.send(fa.Request("POST", server.url + "/x", HEADERS, BODY), timeout=5).body == body
            )
        transport.close()


@pytest.mark.parametrize("transport_class", [fa.HTTPTransport, fa.RequestsTransport])
def test_a_body_cut_short_is_a_transport_error(
    transport_class: type[fa.HTTPTransport] | type[fa.RequestsTransport],
) -> None:
    def cut_short(connection: socket.socket, _: object) -> None:
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}")
        connection.shutdown(socket.SHUT_WR)

    with MisbehavingServer(cut_short) as server, pytest.raises(fa.TransportError):
        transport_class().send(fa.Request("POST", server.url + "/x", HEADERS, BODY), timeout=5)
