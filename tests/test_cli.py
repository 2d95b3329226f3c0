"""The command line, run for real: the installed console script and ``python -m``."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import flameup_analytics as fa
from flameup_analytics._redact import redact_key
from flameup_analytics.message import Message
from flameup_analytics.spool import DiskSpool, summarize
from flameup_analytics.testing import Fault, LocalServer

from .conftest import API_KEY, WORKSPACE

SCRIPT = Path(sys.executable).with_name("flameup-analytics")


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        check=False,
    )


def fill(directory: Path, count: int) -> None:
    spool = DiskSpool(directory)
    for n in range(count):
        body = json.dumps({"external_id": "u", "event": "e", "parameters": {"n": n}}).encode()
        spool.store([Message("track", "u", body, f"cli-{n}")])
    spool.close()


def api_env(server: LocalServer) -> dict[str, str]:
    return {"FLAMEUP_API_KEY": API_KEY, "FLAMEUP_WORKSPACE_ID": WORKSPACE, "FLAMEUP_HOST": server.url}


def test_the_console_script_and_python_m_are_the_same_program() -> None:
    script = cli("--version")
    module = subprocess.run(
        [sys.executable, "-m", "flameup_analytics", "--version"], capture_output=True, text=True, check=False
    )
    assert script.returncode == module.returncode == 0
    assert script.stdout == module.stdout == f"flameup-analytics {fa.__version__}\n"


def test_without_a_command_it_prints_usage_and_exits_2() -> None:
    result = cli("spool")
    assert result.returncode == 2
    assert "inspect" in result.stderr and "replay" in result.stderr and "purge" in result.stderr


def test_inspect_reports_messages_corruption_and_times(tmp_path: Path) -> None:
    fill(tmp_path, 3)
    with open(DiskSpool(tmp_path).segments()[-1], "ab") as segment:
        segment.write(b"\xf1\x5e\x00\x00")
    result = cli("spool", "inspect", "--dir", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["messages"], report["corrupt"], report["segments"]) == (3, 1, 1)
    assert report["oldest"] <= report["newest"]
    text = cli("spool", "inspect", "--dir", str(tmp_path))
    assert "messages" in text.stdout and " 3" in text.stdout


def test_inspect_finds_the_default_directory_from_the_environment(tmp_path: Path) -> None:
    client = fa.Client(api_key="k", workspace_id="ws_x", host="http://127.0.0.1:9", spool_dir=None)
    client.shutdown(timeout=0)
    client.track("u", "e")  # after shutdown: written to the default spool directory
    env = {"FLAMEUP_HOST": "http://127.0.0.1:9", "FLAMEUP_WORKSPACE_ID": "ws_x"}
    report = json.loads(cli("spool", "inspect", "--json", env=env).stdout)
    assert report["messages"] == 1
    assert report["directory"].startswith(str(tmp_path / "cache"))


def test_replay_delivers_everything_and_summarizes(server: LocalServer, tmp_path: Path) -> None:
    fill(tmp_path, 25)
    result = cli("spool", "replay", "--dir", str(tmp_path), "--json", env=api_env(server))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["replayed"], report["delivered"], report["left"], report["complete"]) == (25, 25, 0, True)
    assert sorted(str(r.idempotency_key) for r in server.tracks()) == sorted(f"cli-{n}" for n in range(25))
    assert summarize(tmp_path).segments == 0


def test_replay_against_a_failing_api_exits_1_and_keeps_the_messages(
    server: LocalServer, tmp_path: Path
) -> None:
    server.add_fault(Fault(status=503, times=None))
    fill(tmp_path, 5)
    result = cli("spool", "replay", "--dir", str(tmp_path), "--timeout", "3", env=api_env(server))
    assert result.returncode == 1
    assert "left" in result.stdout
    assert summarize(tmp_path).messages == 5


@pytest.mark.parametrize(
    "arguments",
    [("spool", "replay", "--dir", "."), ("send", "track", "u", "e"), ("check",)],
)
def test_without_a_key_the_advice_is_for_the_shell(arguments: tuple[str, ...]) -> None:
    result = cli(*arguments)
    assert result.returncode == 2
    assert "FLAMEUP_API_KEY" in result.stderr and "--api-key" in result.stderr
    assert "api_key=" not in result.stderr  # Python advice, of no use on a command line
    assert len(result.stderr.splitlines()) == 1


def test_a_bad_host_is_explained_as_the_shell_spells_it() -> None:
    result = cli(
        "send", "track", "u", "e", env={"FLAMEUP_API_KEY": API_KEY, "FLAMEUP_HOST": "ftp://x.example"}
    )
    assert result.returncode == 2
    assert "unusable host 'ftp://x.example'" in result.stderr
    assert "--host" in result.stderr and "host=" not in result.stderr


def test_a_call_that_needs_a_workspace_says_how_to_give_one(server: LocalServer) -> None:
    env = api_env(server)
    del env["FLAMEUP_WORKSPACE_ID"]
    result = cli("send", "identify", "user_1", env=env)
    assert result.returncode == 2
    assert "needs a workspace id" in result.stderr
    assert "--workspace-id" in result.stderr and "workspace_id=" not in result.stderr
    assert server.requests == []


def test_replay_takes_the_connection_from_options(server: LocalServer, tmp_path: Path) -> None:
    fill(tmp_path, 3)
    options = ("--api-key", API_KEY, "--workspace-id", WORKSPACE, "--host", server.url)
    result = cli("spool", "replay", "--dir", str(tmp_path), "--json", *options)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["delivered"] == 3
    assert len(server.tracks()) == 3


def test_spool_commands_find_the_default_directory_of_host_and_workspace_options(tmp_path: Path) -> None:
    client = fa.Client(api_key="k", workspace_id="ws_x", host="http://127.0.0.1:9", spool_dir=None)
    client.shutdown(timeout=0)
    client.track("u", "e")  # after shutdown: written to the default spool directory
    options = ("--host", "http://127.0.0.1:9", "--workspace-id", "ws_x")
    report = json.loads(cli("spool", "inspect", "--json", *options).stdout)
    assert report["messages"] == 1
    purged = cli("spool", "purge", "--yes", "--json", *options)
    assert json.loads(purged.stdout)["directory"] == report["directory"]


def test_purge_without_yes_and_without_a_terminal_is_a_usage_error(tmp_path: Path) -> None:
    fill(tmp_path, 4)
    refused = cli("spool", "purge", "--dir", str(tmp_path))
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert summarize(tmp_path).messages == 4


def test_purge_with_yes_deletes(tmp_path: Path) -> None:
    fill(tmp_path, 4)
    done = cli("spool", "purge", "--dir", str(tmp_path), "--yes", "--json")
    assert done.returncode == 0
    assert json.loads(done.stdout)["segments_deleted"] == 1
    assert summarize(tmp_path).messages == 0


@pytest.mark.parametrize("answer", ["n\n", "\n"])
def test_purge_keeps_everything_unless_the_answer_is_yes(tmp_path: Path, answer: str) -> None:
    fill(tmp_path, 2)
    script = (
        "import sys; sys.stdin.isatty = lambda: True; from flameup_analytics.cli import main; "
        f"sys.exit(main(['spool', 'purge', '--dir', {str(tmp_path)!r}]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], input=answer, capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert "nothing deleted" in result.stdout
    assert summarize(tmp_path).messages == 2


# --- send -----------------------------------------------------------------------------------------


def test_send_track_parses_values_and_reports_attempts(server: LocalServer) -> None:
    server.add_fault(Fault(status=503, times=2))
    result = cli(
        "send", "track", "user_1", "purchase_completed",
        "--param", "amount=19.9", "--param", "plan=pro", "--param", "tags=[1, 2]", "--json",
        env=api_env(server),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"ok": True, "status": 200, "attempts": 3}
    (request,) = server.tracks()
    assert request.json["parameters"] == {"amount": 19.9, "plan": "pro", "tags": [1, 2]}


def test_send_identify_and_transactional(server: LocalServer) -> None:
    identify = cli("send", "identify", "user_1", "--traits", '{"plan": "pro"}', env=api_env(server))
    assert identify.returncode == 0, identify.stderr
    assert server.people["user_1"] == {"plan": "pro"}
    sent = cli(
        "send", "transactional", "user_1", "welcome", "email", "--var", "name=Jane", env=api_env(server)
    )
    assert sent.returncode == 0, sent.stderr
    assert '"status": "queued"' in sent.stdout
    assert server.transactionals()[0].json["variables"] == {"name": "Jane"}


def test_send_reports_a_rejection_with_exit_1(server: LocalServer) -> None:
    server.add_fault(Fault(status=422, message="event name not allowed"))
    result = cli("send", "track", "user_1", "bad", env=api_env(server))
    assert result.returncode == 1
    assert "event name not allowed" in result.stderr


@pytest.mark.parametrize(
    "call",
    [("track", "user_1", "clicked"), ("identify", "user_1"), ("transactional", "user_1", "t", "email")],
)
def test_one_refused_send_prints_one_line(server: LocalServer, call: tuple[str, ...]) -> None:
    result = cli("send", *call, env={**api_env(server), "FLAMEUP_API_KEY": "ws_test_abc12345_abc123.wrong"})
    assert result.returncode == 1
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("not sent: ") and "HTTP 401: missing or invalid API key" in line
    assert "HTTP 401: HTTP 401" not in line


def test_send_takes_the_connection_from_options(server: LocalServer) -> None:
    options = ("--api-key", API_KEY, "--workspace-id", WORKSPACE, "--host", server.url)
    result = cli("send", "identify", "user_1", "--trait", "plan=pro", *options)
    assert result.returncode == 0, result.stderr
    assert server.people == {"user_1": {"plan": "pro"}}


@pytest.mark.parametrize(
    "arguments",
    [
        ("send", "track", "user_1", "e", "--param", "novalue"),
        ("send", "track", "user_1", "e", "--parameters", "[1]"),
        ("send", "track", "", "e"),
        ("send", "transactional", "u", "t", "fax"),
    ],
)
def test_send_usage_errors_exit_2(server: LocalServer, arguments: tuple[str, ...]) -> None:
    result = cli(*arguments, env=api_env(server))
    assert result.returncode == 2
    assert result.stderr


# --- check ----------------------------------------------------------------------------------------


def check(*options: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """``check`` run twice, as text and as ``--json``: the text run, and the JSON report."""
    text = cli("check", *options, env=env)
    report = cli("check", "--json", *options, env=env)
    assert report.returncode == text.returncode
    parsed: dict[str, Any] = json.loads(report.stdout)
    return text, parsed


def statuses(report: dict[str, Any]) -> list[tuple[str, str]]:
    return [(finding["step"], finding["status"]) for finding in report["findings"]]


def test_check_passes_against_a_working_api(server: LocalServer) -> None:
    text, report = check(env=api_env(server))
    assert text.returncode == 0, text.stdout
    assert (report["ok"], report["verdict"]) == (True, "all good")
    assert statuses(report) == [(step, "ok") for step in ("configuration", "dns", "tcp", "auth", "clock")]
    assert text.stdout.splitlines()[-1] == "all good"
    # The key is shown masked, the same way everywhere.
    assert f"ok   configuration key {redact_key(API_KEY)}, workspace {WORKSPACE}" in text.stdout
    assert API_KEY not in text.stdout + json.dumps(report)


def test_check_takes_the_connection_from_options(server: LocalServer) -> None:
    result = cli("check", "--api-key", API_KEY, "--workspace-id", WORKSPACE, "--host", server.url)
    assert result.returncode == 0, result.stdout
    assert f"checking {server.url}" in result.stdout


def test_check_without_a_workspace_says_the_key_was_not_verified(server: LocalServer) -> None:
    env = api_env(server)
    del env["FLAMEUP_WORKSPACE_ID"]
    text, report = check(env=env)
    assert text.returncode == 1
    assert report["verdict"] == "key not verified" and report["ok"] is False
    assert ("configuration", "warn") in statuses(report)
    assert statuses(report)[-2:] == [("auth", "skip"), ("clock", "skip")]
    assert "  warn configuration no workspace id" in text.stdout
    assert "  skip auth" in text.stdout
    assert "all good" not in text.stdout
    assert text.stdout.splitlines()[-1] == "key not verified"
    assert server.requests == []  # nothing could be verified without a workspace


def test_check_with_only_warnings_exits_3() -> None:
    # The key does not have the documented shape, yet this API accepts it: worth a warning only.
    with LocalServer(api_key="dev_key", workspace_id="ws_dev") as server:
        env = {"FLAMEUP_API_KEY": "dev_key", "FLAMEUP_WORKSPACE_ID": "ws_dev", "FLAMEUP_HOST": server.url}
        text, report = check(env=env)
    assert text.returncode == 3
    assert report["verdict"] == "passed with warnings"
    assert statuses(report)[0] == ("configuration", "warn")
    assert ("auth", "ok") in statuses(report)
    assert text.stdout.splitlines()[-1] == "passed with warnings"


def test_check_names_a_refused_key_and_stops_there(server: LocalServer) -> None:
    text, report = check(env={**api_env(server), "FLAMEUP_API_KEY": "ws_live_abc12345_abc123.wrong"})
    assert text.returncode == 1
    assert "FAIL auth          HTTP 401: missing or invalid API key" in text.stdout
    assert "check FLAMEUP_API_KEY" in text.stdout
    assert statuses(report)[-1] == ("auth", "fail")  # no step after the first failure
    assert text.stdout.splitlines()[-1] == "problems found"


def test_check_names_an_unknown_workspace(server: LocalServer) -> None:
    result = cli("check", env={**api_env(server), "FLAMEUP_WORKSPACE_ID": "ws_other"})
    assert result.returncode == 1
    assert "FLAMEUP_WORKSPACE_ID" in result.stdout


class _BareStatus(http.server.BaseHTTPRequestHandler):
    """Answers every request with a status and an empty body, as a proxy or gateway may."""

    status = 401

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Stay quiet."""


def test_check_names_a_status_without_a_message_once() -> None:
    bare = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BareStatus)
    threading.Thread(target=bare.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{bare.server_port}"
        env = {"FLAMEUP_API_KEY": API_KEY, "FLAMEUP_WORKSPACE_ID": WORKSPACE, "FLAMEUP_HOST": url}
        result = cli("check", env=env)
    finally:
        bare.shutdown()
        bare.server_close()
    assert result.returncode == 1
    assert "FAIL auth          HTTP 401\n" in result.stdout
    assert "HTTP 401: HTTP 401" not in result.stdout


def test_check_names_an_unreachable_host() -> None:
    with LocalServer() as gone:
        url = gone.url
    result = cli(
        "check", env={"FLAMEUP_API_KEY": API_KEY, "FLAMEUP_WORKSPACE_ID": WORKSPACE, "FLAMEUP_HOST": url}
    )
    assert result.returncode == 1
    assert "FAIL tcp" in result.stdout


def test_check_refuses_a_proxy_the_sdk_cannot_use_and_masks_its_password() -> None:
    # No DNS or network step runs: the proxy step fails first (the host would never be reached).
    env = {
        "FLAMEUP_API_KEY": API_KEY,
        "FLAMEUP_WORKSPACE_ID": WORKSPACE,
        "FLAMEUP_HOST": "https://api.example.invalid",
    }
    result = cli("check", env={**env, "HTTPS_PROXY": "socks5://ops:hunter2@127.0.0.1:1080", "NO_PROXY": ""})
    assert result.returncode == 1
    assert "FAIL proxy" in result.stdout and "HTTPS_PROXY" in result.stdout
    assert "hunter2" not in result.stdout + result.stderr
    assert "dns" not in result.stdout


def test_dns_failures_and_clock_skew_are_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    from flameup_analytics import diagnosis

    def no_dns(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr("flameup_analytics.diagnosis.socket.getaddrinfo", no_dns)
    (configuration, dns) = diagnosis.diagnose(API_KEY, WORKSPACE, "https://api.example.invalid", "ua")
    assert configuration.ok and dns.status == "fail" and "FLAMEUP_HOST" in dns.hint
    skewed = diagnosis.clock_skew("Thu, 26 Nov 2026 10:00:00 GMT", 1795687200.0 + 300)
    assert skewed.status == "fail" and "+300 s" in skewed.detail
    assert diagnosis.clock_skew("Thu, 26 Nov 2026 10:00:00 GMT", 1795687200.0 + 2).ok
    assert diagnosis.clock_skew(None, 1795687200.0).status == "skip"
