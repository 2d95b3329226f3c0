"""Internal. ``flameup-analytics check``: run the diagnosis and report each step and the verdict."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from typing import Literal

from ..client import USER_AGENT, Client
from ..diagnosis import Finding, diagnose
from ._common import EXIT_INCOMPLETE, EXIT_OK, add_connection_options, client_options

#: ``check`` only: nothing failed and the key was accepted, but a step warned or was skipped.
EXIT_WARNINGS = 3

Verdict = Literal["all good", "problems found", "key not verified", "passed with warnings"]

_EXIT_CODES: dict[Verdict, int] = {
    "all good": EXIT_OK,
    "problems found": EXIT_INCOMPLETE,
    "key not verified": EXIT_INCOMPLETE,
    "passed with warnings": EXIT_WARNINGS,
}
# As printed in the text report: a failure stands out.
_LABELS = {"ok": "ok  ", "warn": "warn", "skip": "skip", "fail": "FAIL"}


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    check = commands.add_parser(
        "check", help="check connectivity and credentials (DNS, TCP, TLS, proxy, key, clock)"
    )
    check.add_argument("--timeout", type=float, default=5.0, help="seconds for each network step")
    check.add_argument("--json", action="store_true", help="print machine-readable JSON")
    add_connection_options(check)
    check.set_defaults(run=_check)


def verdict(findings: Sequence[Finding]) -> Verdict:
    """The one-line conclusion: only a run where every step passed is ``all good``."""
    if any(finding.status == "fail" for finding in findings):
        return "problems found"
    if not any(finding.step == "auth" and finding.ok for finding in findings):
        return "key not verified"
    if all(finding.ok for finding in findings):
        return "all good"
    return "passed with warnings"


def _check(args: argparse.Namespace) -> int:
    settings = Client(spool_dir=False, **client_options(args))
    settings.shutdown()  # it only reads and checks the configuration; it sends nothing
    findings = diagnose(settings.api_key, settings.workspace_id, settings.host, USER_AGENT, args.timeout)
    conclusion = verdict(findings)
    if args.json:
        report = {
            "ok": conclusion == "all good",
            "verdict": conclusion,
            "host": settings.host,
            "findings": [dataclasses.asdict(finding) for finding in findings],
        }
        print(json.dumps(report, indent=2))
    else:
        print(f"checking {settings.host}")
        for finding in findings:
            print(f"  {_LABELS[finding.status]} {finding.step:<13} {finding.detail}")
            if finding.hint:
                print(f"       {'':<13} -> {finding.hint}")
        print(conclusion)
    return _EXIT_CODES[conclusion]
