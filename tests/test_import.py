"""``flameup-analytics import``: JSON Lines and CSV through the SDK's pipeline, against the real local
server: everything delivered, keys derived from the lines (a re-run sends no new key), bad lines
reported by number without stopping the import, --dry-run sends nothing."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flameup_analytics.cli import main
from flameup_analytics.cli._import import Progress
from flameup_analytics.testing import Fault, LocalServer, ReceivedRequest

from .conftest import API_KEY, WORKSPACE

STAMP = "2026-11-26T03:20:20Z"


@pytest.fixture
def fast_server() -> Iterator[LocalServer]:
    with LocalServer(api_key=API_KEY, workspace_id=WORKSPACE, validate=False) as running:
        yield running


def run_import(server: LocalServer, *args: str) -> int:
    return main(["import", *args, "--api-key", API_KEY, "--workspace-id", WORKSPACE, "--host", server.url])


def summary_of(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    summary: dict[str, Any] = json.loads(capsys.readouterr().out)
    return summary


def track_line(number: int) -> str:
    return json.dumps(
        {
            "type": "track",
            "user_id": f"user_{number % 997}",
            "event": "played",
            "parameters": {"n": number},
            "timestamp": STAMP,
        }
    )


BAD_LINES = {
    17: "{not json",
    4_242: json.dumps({"type": "track", "user_id": "u", "event": "e"}),  # no timestamp
    50_000: json.dumps({"type": "page", "user_id": "u"}),
    77_777: json.dumps({"type": "track", "user_id": "", "event": "e", "timestamp": STAMP}),
    99_999: json.dumps({"type": "identify", "user_id": "u", "trait": {}}),
}


# The suite's largest test: about a minute alone on a slow 2-core machine, twice that when the
# machine is shared; the default limit (120 s) is for tests that hang, not for this one.
@pytest.mark.timeout(300)
def test_a_100000_line_file_is_delivered_and_its_bad_lines_reported_by_number(
    fast_server: LocalServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "events.jsonl"
    lines = [BAD_LINES.get(number) or track_line(number) for number in range(1, 100_001)]
    path.write_text("\n".join(lines) + "\n")

    assert run_import(fast_server, str(path), "--json") == 1  # complete but for the bad lines
    summary = summary_of(capsys)
    good = 100_000 - len(BAD_LINES)
    assert (summary["lines"], summary["delivered"], summary["rejected"], summary["unsettled"]) == (
        100_000,
        good,
        [],
        0,
    )
    reasons = {entry["line"]: entry["reason"] for entry in summary["invalid"]}
    assert sorted(reasons) == sorted(BAD_LINES)
    assert reasons[17].startswith("not JSON")
    assert "timestamp is required" in reasons[4_242]
    assert "type must be 'track' or 'identify'" in reasons[50_000]
    assert "external_id is required" in reasons[77_777]
    assert "unknown field(s) for a identify: trait" in reasons[99_999]
    keys = {request.idempotency_key for request in fast_server.accepted}
    assert len(fast_server.accepted) == len(keys) == good
    assert {request.json["parameters"]["n"] for request in fast_server.tracks()} == set(
        range(1, 100_001)
    ) - set(BAD_LINES)


def test_a_re_run_sends_the_same_keys_and_nothing_new(
    fast_server: LocalServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("".join(track_line(number) + "\n" for number in range(10_000)))
    assert run_import(fast_server, str(path), "--json") == 0
    first_keys = {request.idempotency_key for request in fast_server.requests}
    assert len(first_keys) == 10_000
    capsys.readouterr()

    assert run_import(fast_server, str(path), "--json") == 0
    again = fast_server.requests[10_000:]
    assert len(again) == 10_000
    assert {request.idempotency_key for request in again} == first_keys


def test_a_re_run_after_an_outage_completes_with_one_key_per_line(
    fast_server: LocalServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("".join(track_line(number) + "\n" for number in range(5_000)))
    outage: list[Fault] = []

    def fail_for_good_after_2000(request: ReceivedRequest) -> None:
        if not outage and len(fast_server.accepted) >= 2_000:
            outage.append(fast_server.add_fault(Fault(status=503, times=None)))

    fast_server.on_request = fail_for_good_after_2000
    assert run_import(fast_server, str(path), "--json", "--timeout", "1") == 1
    first = summary_of(capsys)
    assert 2_000 <= first["delivered"] < 5_000 and not first["complete"]

    fast_server.on_request = None
    fast_server.clear_faults()
    assert run_import(fast_server, str(path), "--json") == 0
    assert summary_of(capsys)["complete"]
    assert len({request.idempotency_key for request in fast_server.requests}) == 5_000
    assert {request.json["parameters"]["n"] for request in fast_server.tracks()} == set(range(5_000))


def test_csv_rows_become_calls_by_the_column_mapping(
    fast_server: LocalServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "orders.csv"
    path.write_text(
        "id,name,ts,amount,coupon,ignored\n"
        f"u1,order_completed,{STAMP},99.5,,x\n"
        f'u2,order_completed,2026-01-02T00:00:00+01:00,12,"SUMMER, 10%",y\n'
        "u3,order_completed,yesterday,1,,z\n"
    )
    mapping = ["--user-column", "id", "--event-column", "name", "--timestamp-column", "ts"]
    code = run_import(fast_server, str(path), *mapping, "--param-columns", "amount,coupon", "--json")
    summary = summary_of(capsys)
    assert code == 1
    assert summary["delivered"] == 2
    assert [(entry["line"], entry["reason"]) for entry in summary["invalid"]] == [
        (4, "timestamp 'yesterday' is not ISO 8601 (e.g. 2026-11-26T03:20:20Z)")
    ]
    sent = {request.json["external_id"]: request.json for request in fast_server.tracks()}
    assert sent["u1"]["parameters"] == {"amount": 99.5}  # an empty cell is left out
    assert sent["u2"]["parameters"] == {"amount": 12, "coupon": "SUMMER, 10%"}
    assert sent["u2"]["timestamp"] == "2026-01-01T23:00:00.000Z"


def test_csv_identify_rows_send_every_other_column_as_traits(
    fast_server: LocalServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "people.csv"
    path.write_text("user_id,email,plan\nu1,jane@example.com,pro\n")
    assert run_import(fast_server, str(path), "--kind", "identify") == 0
    assert fast_server.identifies()[0].json == {
        "userId": "u1",
        "traits": {"email": "jane@example.com", "plan": "pro"},
    }
    assert "1 delivered" in capsys.readouterr().out


def test_a_missing_column_or_file_is_a_usage_error(
    fast_server: LocalServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "orders.csv"
    path.write_text("id,name\nu1,e\n")
    assert run_import(fast_server, str(path)) == 2
    assert "no column 'user_id' in the header (id, name)" in capsys.readouterr().err
    assert run_import(fast_server, str(tmp_path / "missing.jsonl")) == 2
    assert "no such file" in capsys.readouterr().err
    assert fast_server.requests == []


def test_dry_run_validates_every_line_and_sends_nothing(
    fast_server: LocalServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "events.jsonl"
    bad = json.dumps(
        {"type": "track", "user_id": "u", "event": "e", "parameters": {"x": 1e999}, "timestamp": STAMP}
    )
    path.write_text(track_line(1) + "\n\n" + bad + "\n" + track_line(2) + "\n")
    assert main(["import", str(path), "--dry-run"]) == 1  # no key needed
    out = capsys.readouterr().out
    assert "checked 3 line(s): 2 valid, 1 invalid (dry run: nothing sent)" in out
    assert f"{path}:3: parameters['x'] is inf, which JSON cannot represent" in out
    assert fast_server.requests == []


def test_rejections_are_reported_with_their_line_numbers(
    fast_server: LocalServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("".join(track_line(number) + "\n" for number in range(1, 4)))
    fast_server.add_fault(Fault(status=422, times=None, message="unknown event"))
    assert run_import(fast_server, str(path)) == 1
    out = capsys.readouterr().out
    assert "0 delivered, 3 rejected" in out
    for number in (1, 2, 3):
        assert f"{path}:{number}: HTTP 422: unknown event" in out


def test_progress_is_plain_lines_when_not_on_a_terminal(
    fast_server: LocalServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("".join(track_line(number) + "\n" for number in range(2_000)))
    assert run_import(fast_server, str(path)) == 0
    progress = capsys.readouterr().err.splitlines()
    assert progress[-1].startswith("import: 2,000/2,000 lines (100%)")
    assert all(line.startswith("import: ") and "\r" not in line for line in progress)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_progress_is_one_bar_redrawn_with_rate_and_eta() -> None:
    terminal = _Terminal()
    progress = Progress(total=1_000, stream=terminal, quiet=False)
    progress.show(250)
    progress.show(1_000, final=True)
    drawn = terminal.getvalue()
    assert drawn.startswith("\r[#######") and "250/1,000 lines" in drawn and "/s  ETA " in drawn
    assert drawn.count("\n") == 1 and drawn.endswith("\n")
    assert "\r[##############################] 1,000/1,000 lines" in drawn
