"""`flameup-analytics devserver`, run as the installed console script, on loopback ports."""

from __future__ import annotations

import http.client
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import pytest

import flameup_analytics as fa

SCRIPT = Path(sys.executable).with_name("flameup-analytics")
TIMEOUT = 15.0  # generous: only reached when something is broken


class DevServer:
    """The command in a subprocess, its stdout read line by line as it comes."""

    def __init__(self, *options: str, env: dict[str, str] | None = None, program: Sequence[str] = ()) -> None:
        self.process = subprocess.Popen(
            [*(program or [str(SCRIPT)]), "devserver", *options],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        assert self.process.stdout is not None
        threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def line(self) -> str:
        """The next line printed, waiting for it."""
        try:
            line = self._lines.get(timeout=TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"no output from devserver within {TIMEOUT} s") from None
        if line is None:
            raise AssertionError(f"devserver ended: {self.finish()}")
        return line

    def lines_until(self, marker: str) -> list[str]:
        lines = [self.line()]
        while marker not in lines[-1]:
            lines.append(self.line())
        return lines

    def stop(self, signum: int = signal.SIGINT) -> int:
        self.process.send_signal(signum)
        return self.process.wait(timeout=TIMEOUT)

    def remaining_stderr(self) -> str:
        """What it wrote to stderr, once it has ended."""
        assert self.process.stderr is not None and self.process.poll() is not None
        return self.process.stderr.read()

    def finish(self) -> str:
        if self.process.poll() is None:
            self.process.kill()
        _, stderr = self.process.communicate(timeout=TIMEOUT)
        return f"exit {self.process.returncode}, stderr: {stderr}"


@pytest.fixture
def devservers() -> Iterator[list[DevServer]]:
    started: list[DevServer] = []
    yield started
    for server in started:
        if server.process.poll() is None:
            server.process.kill()
        server.process.wait(timeout=TIMEOUT)
        for stream in (server.process.stdout, server.process.stderr):
            if stream is not None:
                stream.close()


def start(
    devservers: list[DevServer], *options: str, env: dict[str, str] | None = None, program: Sequence[str] = ()
) -> DevServer:
    server = DevServer("--port", "0", *options, env=env, program=program)
    devservers.append(server)
    return server


def sdk_client(url: str, api_key: str = "dev_key", workspace_id: str = "ws_dev", **options: Any) -> fa.Client:
    return fa.Client(
        api_key=api_key,
        workspace_id=workspace_id,
        host=url,
        sync_mode=True,
        spool_dir=False,
        timeout=5.0,
        retry=fa.RetryPolicy(backoff_factor=0.01, max_backoff=0.05),
        **options,
    )


def test_help_lists_the_options() -> None:
    result = subprocess.run(
        [str(SCRIPT), "devserver", "--help"], capture_output=True, text=True, timeout=TIMEOUT
    )

    assert result.returncode == 0
    for option in ("--port", "--host", "--api-key", "--workspace-id", "--latency", "--fail-status"):
        assert option in result.stdout
    for option in ("--fail-times", "--retry-after", "--hang", "--drop", "--json", "--no-validate"):
        assert option in result.stdout


def test_it_prints_where_it_listens_then_each_request_live_and_exits_0_on_sigint(
    devservers: list[DevServer],
) -> None:
    server = start(devservers)
    banner = server.lines_until("Ctrl-C")
    match = re.search(r"listening on (http://127\.0\.0\.1:\d+)$", banner[0])
    assert match, banner
    url = match.group(1)
    assert "Requests are validated against the API description (docs/openapi.yaml)." in banner
    assert f"  export FLAMEUP_HOST={url}" in banner
    assert "  export FLAMEUP_API_KEY=dev_key" in banner
    assert "  export FLAMEUP_WORKSPACE_ID=ws_dev" in banner

    outcomes: list[fa.MessageOutcome] = []
    client = sdk_client(url, on_outcome=outcomes.append)
    try:
        client.track("user_1", "clicked_buy", {"plan": "pro"})
        line = server.line()
    finally:
        client.shutdown()
    assert [(outcome.result, outcome.attempts) for outcome in outcomes] == [("delivered", 1)]
    assert re.search(r"\bPOST {2}/api/v1/track {2}200 {2}key=\S+", line), line
    assert '"external_id":"user_1","event":"clicked_buy","parameters":{"plan":"pro"}' in line

    # A request the API description does not allow is answered 400, and the line says why.
    assert post_track(url, {"external_id": "u", "event": "e", "color": "red"}) == 400
    rejected = server.line()
    assert "  400  " in rejected
    assert (
        "-> invalid request body: Additional properties are not allowed ('color' was unexpected)" in rejected
    )

    assert server.stop(signal.SIGINT) == 0
    assert server.line() == "stopped after 2 request(s), 1 accepted"


def test_json_lines_env_defaults_and_sigterm(devservers: list[DevServer]) -> None:
    env = {**os.environ, "FLAMEUP_API_KEY": "ws_live_env_key.secret", "FLAMEUP_WORKSPACE_ID": "ws_env"}
    server = start(devservers, "--json", env=env)
    first = server.line()
    listening = json.loads(first)
    url = listening["url"]
    assert listening["event"] == "listening"
    assert listening["env"] == {
        "FLAMEUP_HOST": url,
        "FLAMEUP_API_KEY": "ws_live_env_***",  # the server expects the real one; it is never printed
        "FLAMEUP_WORKSPACE_ID": "ws_env",
    }
    assert (listening["api_key_from"], listening["validates"]) == ("environment", True)
    assert "secret" not in first

    client = sdk_client(url, api_key="ws_live_env_key.secret", workspace_id="ws_env")
    try:
        client.identify("user_2", {"email": "zoë@example.com"})
        identify = json.loads(server.line())
        assert client.get_person("user_2") == {
            "external_id": "user_2",
            "traits": {"email": "zoë@example.com"},
        }
        search = json.loads(server.line())
    finally:
        client.shutdown()

    assert identify["event"] == "request"
    assert (identify["method"], identify["path"], identify["status"]) == (
        "POST",
        "/api/v1/workspaces/ws_env/people",
        200,
    )
    assert identify["kind"] == "identify"
    assert isinstance(identify["idempotency_key"], str)
    assert identify["body"] == {"userId": "user_2", "traits": {"email": "zoë@example.com"}}
    assert identify["error"] is None
    assert (search["method"], search["query"], search["body"]) == ("GET", {"external_id": "user_2"}, None)

    assert server.stop(signal.SIGTERM) == 0
    assert json.loads(server.line()) == {"event": "stopped", "requests": 2, "accepted": 2}


def test_fail_status_fails_the_first_requests_and_the_sdk_retries(devservers: list[DevServer]) -> None:
    server = start(devservers, "--fail-status", "503", "--fail-times", "1", "--retry-after", "0", "--json")
    listening: dict[str, Any] = json.loads(server.line())
    assert listening["fault"] == "the first 1 request(s): answer 503 (Retry-After: 0)"

    outcomes: list[fa.MessageOutcome] = []
    client = sdk_client(listening["url"], on_outcome=outcomes.append)
    try:
        client.track("user_3", "signed_up")
    finally:
        client.shutdown()
    first, second = json.loads(server.line()), json.loads(server.line())

    assert [(outcome.result, outcome.attempts) for outcome in outcomes] == [("delivered", 2)]

    assert (first["status"], first["error"]) == (503, "injected")
    assert (second["status"], second["error"]) == (200, None)
    assert first["idempotency_key"] == second["idempotency_key"]  # the same message, retried
    assert server.stop() == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--retry-after", "2"], "--retry-after goes with --fail-status"),
        (["--fail-status", "200"], "fault status must be 300-599"),
        (["--fail-times", "0"], "expected a number >= 1 or 'all'"),
        (["--hang", "--drop"], "not allowed with argument"),
        (["--latency", "-1"], "latency must be a finite number >= 0"),
    ],
)
def test_bad_options_exit_2_with_a_reason(options: list[str], message: str) -> None:
    result = subprocess.run(
        [str(SCRIPT), "devserver", "--port", "0", *options], capture_output=True, text=True, timeout=TIMEOUT
    )

    assert result.returncode == 2
    assert message in result.stderr


def test_a_port_in_use_exits_2_naming_it() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [str(SCRIPT), "devserver", "--port", str(port)], capture_output=True, text=True, timeout=TIMEOUT
        )

    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


@pytest.mark.parametrize(
    ("options", "environment", "source"),
    [
        ((), {"FLAMEUP_API_KEY": "ws_live_abc12345_abc123.very_secret"}, "from your environment"),
        (("--api-key", "ws_live_abc12345_abc123.very_secret"), {}, "given with --api-key"),
    ],
)
def test_a_real_key_is_never_printed(
    devservers: list[DevServer], options: tuple[str, ...], environment: dict[str, str], source: str
) -> None:
    server = start(devservers, *options, env={**os.environ, **environment})
    banner = server.lines_until("Ctrl-C")
    url = banner[0].rsplit(" ", 1)[-1]

    assert not any("very_secret" in line for line in banner), banner
    # Commented out, so that pasting the lines cannot replace the real key with the masked one.
    assert f"  # export FLAMEUP_API_KEY=ws_live_abc1***  (the key {source}, not shown)" in banner
    client = sdk_client(url, api_key="ws_live_abc12345_abc123.very_secret")
    try:
        client.track("user_1", "signed_up")
    finally:
        client.shutdown()
    assert "  200  " in server.line()  # the server expects that key
    assert server.stop() == 0


def test_no_validate_accepts_what_the_description_does_not(devservers: list[DevServer]) -> None:
    server = start(devservers, "--no-validate")
    banner = server.lines_until("Ctrl-C")
    url = banner[0].rsplit(" ", 1)[-1]
    assert "Requests are not validated against the API description (--no-validate)." in banner

    assert post_track(url, {"external_id": "u", "event": "e", "color": "red"}) == 200
    assert "  200  " in server.line()
    assert server.stop() == 0


# A fresh interpreter where `import openapi_core` fails, as after a plain `pip install`.
WITHOUT_OPENAPI_CORE = (
    sys.executable,
    "-c",
    "import sys; sys.modules['openapi_core'] = None; from flameup_analytics.cli import main; "
    "sys.exit(main(sys.argv[1:]))",
)
NOT_VALIDATED = (
    "Requests are not validated against the API description: openapi-core is not installed "
    "(pip install 'flameup-analytics[testing]')."
)


def test_without_openapi_core_it_starts_and_says_so_once(devservers: list[DevServer]) -> None:
    server = start(devservers, program=WITHOUT_OPENAPI_CORE)
    banner = server.lines_until("Ctrl-C")
    url = banner[0].rsplit(" ", 1)[-1]

    assert [line for line in banner if "validated" in line] == [NOT_VALIDATED]
    assert post_track(url, {"external_id": "u", "event": "e", "color": "red"}) == 200
    assert "  200  " in server.line()
    assert server.stop() == 0
    assert server.remaining_stderr() == ""


def test_without_openapi_core_json_lines_stay_json_and_the_note_goes_to_stderr(
    devservers: list[DevServer],
) -> None:
    server = start(devservers, "--json", program=WITHOUT_OPENAPI_CORE)
    listening = json.loads(server.line())

    assert listening["validates"] is False
    assert server.stop() == 0
    assert json.loads(server.line())["event"] == "stopped"
    assert server.remaining_stderr() == f"flameup-analytics: {NOT_VALIDATED}\n"


def post_track(url: str, body: dict[str, Any]) -> int:
    address = urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname or "", address.port, timeout=TIMEOUT)
    try:
        headers = {"Authorization": "Bearer dev_key", "Content-Type": "application/json"}
        connection.request("POST", "/api/v1/track", json.dumps(body), headers)
        return connection.getresponse().status
    finally:
        connection.close()
