"""HTTPS, as the real API is reached: certificate verification, a custom CA bundle, a CONNECT
proxy, and `check`'s TLS step. A local CA (trustme) signs a certificate for 127.0.0.1."""

from __future__ import annotations

import base64
import http.server
import json
import select
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

import flameup_analytics as fa
from flameup_analytics import diagnosis


class _Api(http.server.BaseHTTPRequestHandler):
    """Just enough of the API over TLS: POST /api/v1/track answers 200 and is recorded."""

    protocol_version = "HTTP/1.1"
    received: list[dict[str, object]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append(json.loads(body))
        answer = b'{"success": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def https_api(ca: trustme.CA) -> Iterator[tuple[str, list[dict[str, object]]]]:
    received: list[dict[str, object]] = []
    handler = type("Api", (_Api,), {"received": received})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{httpd.server_port}", received
    httpd.shutdown()
    httpd.server_close()


def track(url: str) -> fa.Request:
    body = b'{"external_id":"u","event":"e"}'
    return fa.Request("POST", url + "/api/v1/track", {"Content-Type": "application/json"}, body)


def test_https_with_the_ca_bundle_from_the_environment(
    https_api: tuple[str, list[dict[str, object]]], ca_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, received = https_api
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca_file))
    transport = fa.HTTPTransport()
    assert transport.send(track(url), timeout=5).status == 200
    assert transport.send(track(url), timeout=5).status == 200  # over the kept-alive connection
    assert len(received) == 2


def test_an_untrusted_certificate_is_refused(
    https_api: tuple[str, list[dict[str, object]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, received = https_api
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    with pytest.raises(fa.TransportError, match="CERTIFICATE_VERIFY_FAILED"):
        fa.HTTPTransport().send(track(url), timeout=5)
    assert received == []


class _ConnectProxy(http.server.BaseHTTPRequestHandler):
    """A CONNECT proxy: checks nothing, records the tunnels asked for, pipes bytes both ways."""

    tunnels: list[tuple[str, str | None]]

    def do_CONNECT(self) -> None:
        self.tunnels.append((self.path, self.headers.get("Proxy-Authorization")))
        host, port = self.path.rsplit(":", 1)
        upstream = socket.create_connection((host, int(port)))
        self.send_response(200, "Connection established")
        self.end_headers()
        sockets = [self.connection, upstream]
        while True:
            readable, _, _ = select.select(sockets, [], [], 5)
            if not readable:
                break
            for source in readable:
                data = source.recv(65536)
                if not data:
                    upstream.close()
                    return
                (upstream if source is self.connection else self.connection).sendall(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_https_through_a_connect_proxy_with_credentials(
    https_api: tuple[str, list[dict[str, object]]], ca_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, received = https_api
    tunnels: list[tuple[str, str | None]] = []
    handler = type("Proxy", (_ConnectProxy,), {"tunnels": tunnels})
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HTTPS_PROXY", f"http://user:secret@127.0.0.1:{proxy.server_port}")
        monkeypatch.setenv("NO_PROXY", "")
        monkeypatch.setenv("no_proxy", "")
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca_file))
        assert fa.HTTPTransport().send(track(url), timeout=5).status == 200
    finally:
        proxy.shutdown()
        proxy.server_close()
    ((target, authorization),) = tunnels
    assert target == url.removeprefix("https://")
    assert authorization == "Basic " + base64.b64encode(b"user:secret").decode()
    assert len(received) == 1  # the body went through the tunnel, end to end encrypted


def test_check_reports_the_tls_handshake(
    https_api: tuple[str, list[dict[str, object]]], ca_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = https_api

    def tls_step() -> diagnosis.Finding:
        findings = diagnosis.diagnose("ws_test_abc12345_abc123.secret", "ws_test", url, "ua", timeout=5)
        return next(finding for finding in findings if finding.step == "tls")

    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    refused = tls_step()
    assert not refused.ok and "REQUESTS_CA_BUNDLE" in refused.hint
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca_file))
    trusted = tls_step()
    assert trusted.ok and "TLSv1" in trusted.detail
