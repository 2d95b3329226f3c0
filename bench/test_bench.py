"""Checks of the benchmark's own parts: the API server (a real subprocess, real connections) and the
harness's arithmetic. Not part of the suite (``testpaths`` is ``tests``); run them with

    .venv/bin/python -m pytest bench/test_bench.py -q
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import ssl
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from api_server import ApiServer
from bench_delivery import delivery, heaviest_imports


@pytest.fixture(scope="module")
def server() -> Iterator[ApiServer]:
    with ApiServer() as running:
        yield running


@pytest.fixture(autouse=True)
def fresh(server: ApiServer) -> None:
    server.call("configure", delay=0)
    server.call("reset")


def connect(url: str, ca_bundle: str | None = None) -> http.client.HTTPConnection:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        context = ssl.create_default_context(cafile=ca_bundle)
        return http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=10, context=context)
    return http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)


def post(
    connection: http.client.HTTPConnection, path: str, body: bytes, **headers: str
) -> http.client.HTTPResponse:
    connection.request("POST", path, body, {key.replace("_", "-"): value for key, value in headers.items()})
    response = connection.getresponse()
    response.read()
    return response


def test_flameup_requests_count_one_event_each_over_one_keep_alive_connection(server: ApiServer) -> None:
    connection = connect(server.url)
    for i in range(5):
        assert post(connection, "/api/v1/track", b'{"event":"e"}', Idempotency_Key=f"k{i}").status == 200
    assert post(connection, "/api/v1/workspaces/ws_bench/people", b"{}", Idempotency_Key="k0").status == 200
    sock = connection.sock
    assert sock is not None  # still the same open connection: keep-alive held
    report = server.call("report")
    assert (report["requests"], report["events"]) == (6, 6)
    assert (report["distinct_keys"], report["duplicate_keys"]) == (5, 1)


def test_peer_batches_count_their_length_gzip_or_not(server: ApiServer) -> None:
    connection = connect(server.url)
    segment = gzip.compress(json.dumps({"batch": [{"event": "e"}] * 100, "writeKey": "w"}).encode())
    assert post(connection, "/v1/batch", segment, Content_Encoding="gzip").status == 200
    assert post(connection, "/batch/", json.dumps({"batch": [{}] * 7, "api_key": "k"}).encode()).status == 200
    assert post(connection, "/batch/", b"not json").status == 400
    report = server.call("report")
    assert report["events"] == 107


def test_unknown_paths_are_404_and_listed(server: ApiServer) -> None:
    connection = connect(server.url)
    connection.request("GET", "/flags/?v=4")
    response = connection.getresponse()
    response.read()
    assert response.status == 404
    assert server.call("report")["paths"] == {"GET /flags/": 1}


def test_a_storm_answers_429_with_retry_after_then_recovers(server: ApiServer) -> None:
    connection = connect(server.url)
    start = time.monotonic()
    server.call("storm", start=start, seconds=0.3)
    refused = post(connection, "/api/v1/track", b"{}")
    assert (refused.status, refused.getheader("Retry-After")) == (429, "1")
    while time.monotonic() < start + 0.3:
        time.sleep(0.01)
    assert post(connection, "/api/v1/track", b"{}").status == 200
    report = server.call("report")
    assert (report["refused_429"], report["events"]) == (1, 1)


def test_the_delay_holds_requests_at_once_and_the_in_flight_peak_counts_them(server: ApiServer) -> None:
    server.call("configure", delay=0.3)
    statuses: list[int] = []

    def one() -> None:
        statuses.append(post(connect(server.url), "/api/v1/track", b"{}").status)

    started = time.monotonic()
    threads = [threading.Thread(target=one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    elapsed = time.monotonic() - started
    assert statuses == [200] * 6
    assert elapsed < 6 * 0.3  # they waited together, not one after another
    report = server.call("report")
    assert report["max_in_flight"] == 6
    assert report["in_flight"][-1][1] >= 0


def test_connection_close_is_honoured(server: ApiServer) -> None:
    connection = connect(server.url)
    response = post(connection, "/api/v1/track", b"{}", Connection="close")
    assert response.getheader("Connection") == "close"
    assert response.will_close


def test_tls_with_a_throwaway_ca() -> None:
    with ApiServer(tls=True) as tls:
        assert tls.url.startswith("https://") and tls.ca_bundle
        assert post(connect(tls.url, tls.ca_bundle), "/api/v1/track", b"{}").status == 200
        with pytest.raises(ssl.SSLCertVerificationError):
            post(connect(tls.url, None), "/api/v1/track", b"{}")


def test_delivery_rate_ends_when_the_last_offered_event_arrives_or_at_the_cap() -> None:
    result = {"t0": 100.0, "t1": 105.0, "offered": 300, "cpu_s": 0.03}
    warm_up = [(99.0, 20)]
    report = {
        "accepted": [*warm_up, (100.5, 100), (101.0, 100), (102.0, 100)],
        "cpu_us_per_request": 10.0,
        "requests": 4,
        "duplicate_keys": 0,
        "unknown_paths": 0,
    }
    row = delivery(result, report, cap=5.0)
    assert (row["complete"], row["delivered"], row["events_per_s"]) == (True, 300, 150.0)
    assert row["client_cpu_us_per_event"] == pytest.approx(100.0)
    capped = delivery(result, report, cap=1.5)
    assert (capped["complete"], capped["delivered"]) == (False, 200)
    assert capped["events_per_s"] == pytest.approx(200 / 1.5)


def test_heaviest_imports_lists_the_first_outside_import_on_each_path() -> None:
    importtime = "\n".join(
        [
            "import time: self [us] | cumulative | imported package",
            "import time:       100 |        100 | site",
            "import time:       500 |        500 |       urllib3.util",
            "import time:      1000 |       2000 |     requests",
            "import time:      3000 |       3000 |     json",
            "import time:      4000 |       9000 |   pkg.client",
            "import time:       200 |       9200 | pkg",
        ]
    )
    found = heaviest_imports(importtime, "pkg")
    assert found["outside_cumulative"] == {"json": 3.0, "requests": 2.0}
    assert found["own_self"] == {"pkg.client": 4.0, "pkg": 0.2}
