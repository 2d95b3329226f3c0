"""The command line, run for real: the installed console script and ``python -m``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import flameup_analytics as fa
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
    assert sorted(r.idempotency_key for r in server.tracks()) == sorted(f"cli-{n}" for n in range(25))
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


def test_replay_without_a_key_explains_what_to_set(tmp_path: Path) -> None:
    result = cli("spool", "replay", "--dir", str(tmp_path))
    assert result.returncode == 2
    assert "FLAMEUP_API_KEY" in result.stderr


def test_purge_asks_first_and_deletes_with_yes(tmp_path: Path) -> None:
    fill(tmp_path, 4)
    refused = cli("spool", "purge", "--dir", str(tmp_path))
    assert refused.returncode == 1 and "--yes" in refused.stderr
    assert summarize(tmp_path).messages == 4
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


def test_check_passes_against_a_working_api(server: LocalServer) -> None:
    result = cli("check", "--json", env=api_env(server))
    assert result.returncode == 0, result.stdout
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert [f["step"] for f in report["findings"]][:4] == ["configuration", "dns", "tcp", "auth"]


def test_check_names_a_refused_key(server: LocalServer) -> None:
    result = cli("check", env={**api_env(server), "FLAMEUP_API_KEY": "ws_live_abc12345_abc123.wrong"})
    assert result.returncode == 1
    assert "FAIL auth" in result.stdout and "check FLAMEUP_API_KEY" in result.stdout


def test_check_names_an_unknown_workspace(server: LocalServer) -> None:
    result = cli("check", env={**api_env(server), "FLAMEUP_WORKSPACE_ID": "ws_other"})
    assert result.returncode == 1
    assert "FLAMEUP_WORKSPACE_ID" in result.stdout


def test_check_names_an_unreachable_host() -> None:
    with LocalServer() as gone:
        url = gone.url
    result = cli(
        "check", env={"FLAMEUP_API_KEY": API_KEY, "FLAMEUP_WORKSPACE_ID": WORKSPACE, "FLAMEUP_HOST": url}
    )
    assert result.returncode == 1
    assert "FAIL tcp" in result.stdout


def test_dns_failures_and_clock_skew_are_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    from flameup_analytics import diagnosis

    def no_dns(*args: object, **kwargs: object) -> None:
        raise diagnosis.socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(diagnosis.socket, "getaddrinfo", no_dns)
    (configuration, dns) = diagnosis.diagnose(API_KEY, WORKSPACE, "https://api.example.invalid", "ua")
    assert configuration.ok and not dns.ok and "FLAMEUP_HOST" in dns.hint
    skewed = diagnosis.clock_skew("Thu, 26 Nov 2026 10:00:00 GMT", 1795687200.0 + 300)
    assert not skewed.ok and "+300 s" in skewed.detail
    assert diagnosis.clock_skew("Thu, 26 Nov 2026 10:00:00 GMT", 1795687200.0 + 2).ok
