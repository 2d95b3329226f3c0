"""The transports against servers that misbehave: answers that drip, answers too large to hold, and
proxies whose URLs carry a password (issue 8, items 5, 6 and 12).

No timing assertions: a drip would take minutes, so a call that returns at all (under the suite's
pytest-timeout) proves the deadline; memory is measured with tracemalloc around the call.
"""

from __future__ import annotations

import socket
import threading
import traceback
import tracemalloc
from collections.abc import Callable

import pytest

import flameup_analytics as fa

from . import misbehaving
from .conftest import API_KEY, WORKSPACE
from .misbehaving import MisbehavingServer

TransportClass = type[fa.HTTPTransport] | type[fa.RequestsTransport]
BOTH = pytest.mark.parametrize("transport_class", [fa.HTTPTransport, fa.RequestsTransport])

BODY = b'{"external_id":"u","event":"e"}'
HEADERS = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
#: What a test may hold in memory while refusing an oversized answer: the 1 MiB cap, and change.
MEMORY_BOUND = 4 * 1024 * 1024
PASSWORD = "s3cr3t-Pa55"
DEADLINE_PASSED = r"timed out: no complete answer within the 0\.5 s timeout"


def track_request(url: str) -> fa.Request:
    return fa.Request("POST", url + "/api/v1/track", HEADERS, BODY)


def make_client(host: str, **options: object) -> fa.Client:
    settings: dict[str, object] = {
        "api_key": API_KEY,
        "workspace_id": WORKSPACE,
        "host": host,
        "timeout": 0.5,
        "flush_interval": 0.05,
        "retry": fa.RetryPolicy(max_retries=0),
    }
    settings.update(options)
    return fa.Client(**settings)  # type: ignore[arg-type]


# --- item 5: the timeout bounds the whole attempt -------------------------------------------------

DRIPS = pytest.mark.parametrize(
    "drip",
    [misbehaving.drip_status_line, misbehaving.drip_headers, misbehaving.drip_body],
    ids=["status-line", "headers", "body"],
)


@BOTH
@DRIPS
def test_an_answer_dripping_a_byte_at_a_time_ends_at_the_timeout(
    transport_class: TransportClass, drip: Callable[[], misbehaving.Answer]
) -> None:
    transport = transport_class()
    with MisbehavingServer(drip()) as server:
        with pytest.raises(fa.TransportError, match=DEADLINE_PASSED):
            transport.send(track_request(server.url), timeout=0.5)
        assert server.client_hung_up.wait(10), "the connection was kept open"
    transport.close()


@BOTH
def test_a_dripping_proxy_tunnel_ends_at_the_timeout(
    transport_class: TransportClass, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The proxy answers the CONNECT one byte at a time: the deadline covers the tunnel too.
    with MisbehavingServer(misbehaving.drip(b"", b"HTTP/1.1 200 " + b"O" * 10_000 + b"\r\n\r\n")) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "")
        with pytest.raises(fa.TransportError, match="timed out"):
            transport_class().send(track_request("https://127.0.0.1:9"), timeout=0.5)


@BOTH
def test_a_dripping_tls_handshake_ends_at_the_timeout(transport_class: TransportClass) -> None:
    # Bytes that never complete a ServerHello, one at a time.
    with MisbehavingServer(misbehaving.drip(b"", b"\x16\x03\x03" + b"\x00" * 10_000)) as server:
        https_url = server.url.replace("http://", "https://")
        with pytest.raises(fa.TransportError, match="timed out"):
            transport_class().send(track_request(https_url), timeout=0.5)


def test_get_person_against_a_dripping_server_fails_at_its_timeout() -> None:
    with MisbehavingServer(misbehaving.drip_body()) as server:
        client = make_client(server.url)
        try:
            with pytest.raises(fa.APIError, match="timed out"):
                client.get_person("user_1")
        finally:
            client.shutdown(timeout=0)


def test_the_worker_against_a_dripping_server_settles_the_message() -> None:
    # Without a spool the message must end dropped and reported (a spool would replay it, which
    # is the worker's business, not the transport's).
    reported: list[fa.FlameupError] = []
    with MisbehavingServer(misbehaving.drip_headers()) as server:
        client = make_client(server.url, spool_dir=False, on_error=lambda error, _: reported.append(error))
        try:
            client.track("user_1", "clicked")
            assert not client.flush(timeout=30)  # returns once the message is settled: not delivered
            stats = client.stats()
            assert (stats.queued, stats.delivered, stats.dropped) == (0, 0, 1), "still in flight"
            (error,) = reported
            assert "timed out" in str(error)
        finally:
            client.shutdown(timeout=0)


# --- item 6: answers are capped -----------------------------------------------------------------


def peak_memory_of(call: Callable[[], object]) -> tuple[Exception | None, int]:
    """What ``call`` raised, and the most memory Python held at once meanwhile."""
    tracemalloc.start()
    try:
        call()
    except Exception as exc:
        return exc, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return None, 0


OVERSIZED = pytest.mark.parametrize(
    ("answer", "refusal"),
    [
        (misbehaving.huge_body, "answer larger than 1 MiB"),
        (misbehaving.endless_chunks, "answer larger than 1 MiB"),
        (misbehaving.endless_header_section, "answer's header section larger than 64 KiB"),
    ],
    ids=["100-MB-body", "endless-chunked-body", "endless-header-section"],
)


@BOTH
@OVERSIZED
def test_an_oversized_answer_is_refused_in_bounded_memory_and_its_connection_closed(
    transport_class: TransportClass, answer: Callable[[], misbehaving.Answer], refusal: str
) -> None:
    transport = transport_class()
    with MisbehavingServer(answer()) as server:
        error, peak = peak_memory_of(lambda: transport.send(track_request(server.url), timeout=30))
        assert isinstance(error, fa.TransportError) and refusal in str(error)
        assert peak < MEMORY_BOUND, f"{peak / 2**20:.1f} MiB held while refusing the answer"
        assert server.client_hung_up.wait(10), "the connection was kept open"
    transport.close()


@BOTH
def test_an_answer_of_exactly_1_mib_is_read_whole(transport_class: TransportClass) -> None:
    body = b"b" * fa.transport.MAX_RESPONSE_BYTES
    answer = misbehaving.STATUS_LINE + b"Content-Length: %d\r\n\r\n" % len(body) + body

    def exact(connection: socket.socket, stopped: threading.Event) -> None:
        connection.sendall(answer)

    transport = transport_class()
    with MisbehavingServer(exact) as server:
        assert transport.send(track_request(server.url), timeout=10).body == body
    transport.close()


# --- item 12: proxies and secrets -----------------------------------------------------------------


def shows_password(error: BaseException) -> bool:
    """Whether the password appears anywhere a user could see: the text, or a printed traceback."""
    return PASSWORD in str(error) or PASSWORD in "".join(traceback.format_exception(error))


@pytest.fixture
def refusing_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again: connections to it are refused


@BOTH
def test_a_refusing_proxy_with_a_password_is_a_transport_error_without_it(
    transport_class: TransportClass, refusing_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://user:{PASSWORD}@127.0.0.1:{refusing_port}")
    monkeypatch.setenv("NO_PROXY", "")
    with pytest.raises(fa.TransportError) as raised:
        transport_class().send(track_request("http://127.0.0.1:9"), timeout=2)
    assert not shows_password(raised.value)


def test_on_error_never_sees_the_proxy_password(refusing_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://user:{PASSWORD}@127.0.0.1:{refusing_port}")
    monkeypatch.setenv("NO_PROXY", "")
    errors: list[fa.FlameupError] = []
    reported = threading.Event()

    def on_error(error: fa.FlameupError, messages: object) -> None:
        errors.append(error)
        reported.set()

    client = make_client("http://127.0.0.1:9", spool_dir=False, on_error=on_error)
    try:
        client.track("user_1", "clicked")
        assert reported.wait(10)
    finally:
        client.shutdown(timeout=0)
    (error,) = errors
    assert "ConnectionRefusedError" in str(error)
    assert not shows_password(error)


UNUSABLE_PROXIES = pytest.mark.parametrize(
    "proxy",
    [
        f"https://user:{PASSWORD}@127.0.0.1:3128",
        f"socks5://user:{PASSWORD}@127.0.0.1:1080",
        f"http://user:{PASSWORD}@:3128",
        f"http://user:{PASSWORD[:4]}/{PASSWORD[4:]}@127.0.0.1:3128",  # "/" unencoded: no port
    ],
    ids=["https", "socks5", "no-host", "unencoded-slash"],
)


@BOTH
@UNUSABLE_PROXIES
def test_an_unusable_proxy_is_a_configuration_error_from_check_url_and_send(
    transport_class: TransportClass, proxy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy)
    monkeypatch.setenv("NO_PROXY", "")
    url = "https://127.0.0.1:9/api/v1/track"
    transport = transport_class()
    with pytest.raises(fa.ConfigurationError) as eagerly:
        transport.check_url(url)
    with pytest.raises(fa.ConfigurationError) as sending:
        transport.send(fa.Request("POST", url, HEADERS, BODY), timeout=2)
    for raised in (eagerly.value, sending.value):
        assert (raised.option, raised.env) == ("proxies", "HTTPS_PROXY")
        assert "only http://[user:password@]host:port proxies" in str(raised)
        assert PASSWORD[:4] not in str(raised) and not shows_password(raised)


def test_check_url_accepts_a_plain_proxy_and_no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", f"http://user:{PASSWORD}@127.0.0.1:3128")
    monkeypatch.setenv("NO_PROXY", "")
    fa.HTTPTransport().check_url("https://api.flameup.ai/api/v1/track")
    monkeypatch.setenv("HTTPS_PROXY", "socks5://127.0.0.1:1080")
    monkeypatch.setenv("NO_PROXY", "api.flameup.ai")
    fa.HTTPTransport().check_url("https://api.flameup.ai/api/v1/track")


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1/x", "http:///x", f"http://user:{PASSWORD}@127.0.0.1:port/x"]
)
def test_an_unusable_url_is_a_configuration_error_without_its_password(url: str) -> None:
    with pytest.raises(fa.ConfigurationError) as raised:
        fa.HTTPTransport().check_url(url)
    assert raised.value.option == "host" and not shows_password(raised.value)
