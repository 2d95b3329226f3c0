"""proxies= and verify=: the client's explicit network options, for the worker's connections and the
synchronous calls alike, against real local servers (a forward proxy, a TLS API signed by a local CA)."""

from __future__ import annotations

import http.client
import http.server
import logging
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import flameup_analytics as fa
from flameup_analytics.testing import LocalServer

from . import test_tls
from .conftest import API_KEY, WORKSPACE, ClientFactory

# The TLS tests' fixtures: a local CA, its bundle on disk, and an HTTPS API whose certificate it signed.
ca, ca_file, https_api = test_tls.ca, test_tls.ca_file, test_tls.https_api

HttpsApi = tuple[str, list[dict[str, object]]]


class _ForwardProxy(http.server.BaseHTTPRequestHandler):
    """A plain HTTP proxy: takes absolute URLs, forwards each request, records what it forwarded."""

    protocol_version = "HTTP/1.1"
    forwarded: list[str]

    def _forward(self) -> None:
        self.forwarded.append(self.path)
        target = urllib.parse.urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {name: value for name, value in self.headers.items() if name.lower() != "proxy-connection"}
        upstream = http.client.HTTPConnection(target.hostname or "", target.port or 80, timeout=5)
        try:
            upstream.request(
                self.command, target.path + (f"?{target.query}" if target.query else ""), body, headers
            )
            answer = upstream.getresponse()
            content = answer.read()
        finally:
            upstream.close()
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    do_GET = do_POST = _forward

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def proxy() -> Iterator[tuple[str, list[str]]]:
    forwarded: list[str] = []
    handler = type("Proxy", (_ForwardProxy,), {"forwarded": forwarded})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}", forwarded
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def dead_proxy_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """An environment whose proxy refuses connections: a client that read it could send nothing."""
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "")


@pytest.mark.usefixtures("dead_proxy_in_the_environment")
def test_proxies_carry_the_workers_and_the_synchronous_calls_instead_of_the_environments(
    server: LocalServer, make_client: ClientFactory, proxy: tuple[str, list[str]]
) -> None:
    proxy_url, forwarded = proxy
    client = make_client(proxies={"http": proxy_url})
    client.track("user_1", "through_the_proxy")
    client.identify("user_1", {"a": 1})
    assert client.flush(timeout=5)
    client.send_transactional("user_1", "welcome", "email")
    assert client.get_person("user_1") is not None
    assert len(server.accepted) == 4
    endpoints = sorted(urllib.parse.urlsplit(path).path.rsplit("/", 1)[-1] for path in forwarded)
    assert endpoints == ["people", "search", "send", "track"]
    assert all(path.startswith(server.url) for path in forwarded)  # absolute URLs: through a proxy


@pytest.mark.usefixtures("dead_proxy_in_the_environment")
def test_an_empty_proxies_dict_goes_direct_whatever_the_environment_says(
    server: LocalServer, make_client: ClientFactory
) -> None:
    client = make_client(proxies={})
    client.track("user_1", "direct")
    assert client.flush(timeout=5)
    assert client.send_transactional("user_1", "welcome", "email")["status"] == "queued"
    assert len(server.accepted) == 2


@pytest.mark.usefixtures("dead_proxy_in_the_environment")
def test_a_host_mapped_to_none_goes_direct(server: LocalServer, make_client: ClientFactory) -> None:
    client = make_client(proxies={"all": "http://127.0.0.1:9", "http://127.0.0.1": None})
    client.track("user_1", "direct")
    assert client.flush(timeout=5)
    assert len(server.accepted) == 1


def test_verify_with_a_ca_bundle_path_trusts_that_ca_for_the_worker_and_sync_mode(
    https_api: HttpsApi, ca_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, received = https_api
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    options: dict[str, Any] = {"api_key": API_KEY, "workspace_id": WORKSPACE, "host": url, "spool_dir": False}
    with fa.Client(verify=ca_file, **options) as background:
        background.track("user_1", "verified")
        assert background.flush(timeout=5)
    outcomes: list[fa.MessageOutcome] = []
    with fa.Client(verify=str(ca_file), sync_mode=True, on_outcome=outcomes.append, **options) as synchronous:
        synchronous.track("user_1", "verified_too")
    assert [outcome.result for outcome in outcomes] == ["delivered"]
    assert [message["event"] for message in received] == ["verified", "verified_too"]


def test_requests_transport_takes_verify_and_proxies_too(
    https_api: HttpsApi, ca_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, received = https_api
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    transport = fa.RequestsTransport(verify=ca_file, proxies={})
    body = b'{"external_id":"u","event":"e"}'
    request = fa.Request("POST", url + "/api/v1/track", {"Content-Type": "application/json"}, body)
    assert transport.send(request, timeout=5).status == 200
    transport.close()
    with pytest.raises(fa.TransportError, match="CERTIFICATE_VERIFY_FAILED"):
        fa.RequestsTransport(proxies={}).send(request, timeout=5)
    assert len(received) == 1


def test_verify_false_accepts_any_certificate_and_says_so_loudly_once(
    https_api: HttpsApi, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    url, received = https_api
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    with caplog.at_level(logging.WARNING, logger="flameup_analytics"):
        client = fa.Client(API_KEY, WORKSPACE, host=url, spool_dir=False, verify=False)
        client.track("user_1", "unverified")
        client.track("user_1", "unverified_again")
        assert client.flush(timeout=5)
        client.shutdown()
    assert len(received) == 2
    warnings = [record for record in caplog.records if "NOT verified" in record.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING


@pytest.mark.parametrize(
    ("options", "option", "reason"),
    [
        pytest.param({"proxies": ["http://proxy:3128"]}, "proxies", "must be a dict", id="proxies a list"),
        pytest.param({"proxies": {"ftp": "http://proxy:3128"}}, "proxies", "not 'ftp'", id="a bad key"),
        pytest.param(
            {"proxies": {"https": "https://proxy:3128"}}, "proxies", "only http://", id="an https proxy"
        ),
        pytest.param({"proxies": {"https": "socks5://proxy:1080"}}, "proxies", "only http://", id="socks"),
        pytest.param(
            {"proxies": {"https": "http://proxy:99999"}}, "proxies", "cannot use the proxy given", id="port"
        ),
        pytest.param({"proxies": {"https": 3128}}, "proxies", "must be a proxy URL or None", id="not a str"),
        pytest.param(
            {"verify": "/no/such/ca.pem"}, "verify", "no CA bundle at '/no/such/ca.pem'", id="no file"
        ),
        pytest.param({"verify": 1}, "verify", "must be True, False or the path", id="verify an int"),
        pytest.param(
            {"verify": False, "transport": fa.MockTransport(lambda r: fa.Response(200))},
            "verify",
            "give it to your transport",
            id="with a transport",
        ),
    ],
)
def test_unusable_network_options_are_refused_naming_them(
    options: dict[str, Any], option: str, reason: str, make_client: ClientFactory
) -> None:
    with pytest.raises(fa.ConfigurationError, match=reason) as caught:
        make_client(**options)
    assert caught.value.option == option


def test_no_proxy_password_appears_in_the_error(make_client: ClientFactory) -> None:
    with pytest.raises(fa.ConfigurationError) as caught:
        make_client(proxies={"https": "https://user:hunter2@proxy:3128"})
    assert "hunter2" not in str(caught.value)
