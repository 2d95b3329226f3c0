"""A real gunicorn, configured by examples/gunicorn.conf.py (preload_app = True), with sync workers
forked from a master that created the client at import: every event arrives exactly once."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from flameup_analytics.testing import LocalServer

from .conftest import API_KEY, WORKSPACE

CONFIG = Path(__file__).resolve().parent.parent / "examples" / "gunicorn.conf.py"
WORKERS = 3
REQUESTS = 60

APP = """
import os
import time

from flask import Flask, request

import flameup_analytics as fa

analytics = fa.Client()  # at import: in gunicorn's master, before the workers are forked
created_in = os.getpid()
app = Flask(__name__)


@app.get("/hit")
def hit():
    # Stands in for a request's real work, so that concurrent requests spread over the workers.
    time.sleep(0.005)
    analytics.track("load_test", "hit", {"request_id": request.args["id"], "pid": os.getpid()})
    return {"pid": os.getpid(), "client_created_in": created_in}
"""


def _no_control_socket() -> list[str]:
    # Recent gunicorn opens a control socket under the home directory by default: keep the test to its
    # own temporary directory, and two runs at once from fighting over it.
    from gunicorn.config import KNOWN_SETTINGS

    return ["--no-control-socket"] if any(s.name == "control_socket_disable" for s in KNOWN_SETTINGS) else []


NO_CONTROL_SOCKET = _no_control_socket()


def wait_for_log(
    log: Path, pattern: str, count: int, process: subprocess.Popen[str], timeout: float
) -> list[str]:
    """Poll gunicorn's log until ``pattern`` matched ``count`` times; fail at the deadline or if
    gunicorn exited."""
    deadline = time.monotonic() + timeout
    while True:
        found = re.findall(pattern, log.read_text() if log.exists() else "")
        if len(found) >= count:
            return found
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"gunicorn not ready (exit code {process.poll()}):\n{log.read_text()}")
        time.sleep(0.02)


def wait_for_port(port: int, process: subprocess.Popen[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"nothing listens on 127.0.0.1:{port} (gunicorn exit code {process.poll()})")
            time.sleep(0.02)


def get(port: int, path: str) -> dict[str, int]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        assert response.status == 200, body
        answer: dict[str, int] = json.loads(body)
        return answer
    finally:
        connection.close()


@pytest.mark.parametrize(
    "max_requests",
    [
        pytest.param(0, id="workers-stopped-by-sigterm"),
        # Each worker exits after 7 requests and the master forks a new one mid-run.
        pytest.param(7, id="workers-recycled-by-max-requests"),
    ],
)
def test_preloaded_client_in_gunicorn_sync_workers_delivers_every_event_exactly_once(
    server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_requests: int
) -> None:
    monkeypatch.setenv("FLAMEUP_API_KEY", API_KEY)
    monkeypatch.setenv("FLAMEUP_WORKSPACE_ID", WORKSPACE)
    monkeypatch.setenv("FLAMEUP_HOST", server.url)
    (tmp_path / "gunicorn_test_app.py").write_text(APP)
    log = tmp_path / "gunicorn.log"
    gunicorn = subprocess.Popen(
        [
            sys.executable, "-m", "gunicorn",
            "--config", str(CONFIG),  # the example: preload_app = True
            "--bind", "127.0.0.1:0",  # an ephemeral port, read back from the log: no race for it
            "--workers", str(WORKERS),
            "--worker-class", "sync",
            "--max-requests", str(max_requests),
            "--chdir", str(tmp_path),
            "--error-logfile", str(log),
            "--log-level", "info",
            *NO_CONTROL_SOCKET,
            "gunicorn_test_app:app",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        (port,) = wait_for_log(log, r"Listening at: http://127\.0\.0\.1:(\d+)", 1, gunicorn, timeout=30)
        wait_for_port(int(port), gunicorn, timeout=30)
        wait_for_log(log, r"Booting worker with pid", WORKERS, gunicorn, timeout=30)

        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda n: get(int(port), f"/hit?id=r{n}"), range(REQUESTS)))

        gunicorn.send_signal(signal.SIGTERM)  # graceful: each worker finishes, then exits
        gunicorn.wait(timeout=30)
        assert gunicorn.returncode == 0, log.read_text()
    finally:
        if gunicorn.poll() is None:
            gunicorn.kill()
            gunicorn.wait()

    master = gunicorn.pid
    assert {answer["client_created_in"] for answer in answers} == {master}  # created before the fork
    served_by = {answer["pid"] for answer in answers}
    assert master not in served_by
    assert len(served_by) >= (2 if max_requests == 0 else REQUESTS // max_requests), served_by

    # No waiting: the workers delivered before they exited, and the master exited after them.
    tracks = server.tracks()
    keys = Counter(request.idempotency_key for request in tracks)
    assert len(keys) == REQUESTS and set(keys.values()) == {1}  # no key twice: nothing re-sent
    request_ids = Counter(request.json["parameters"]["request_id"] for request in tracks)
    assert request_ids == Counter(f"r{n}" for n in range(REQUESTS))  # every request, exactly once
    assert len(server.requests) == REQUESTS  # and no failed attempt either
    sent_by = {request.json["parameters"]["pid"] for request in tracks}
    assert sent_by == served_by and len(sent_by) >= 2
    assert os.getpid() not in sent_by
