"""Internal. ``flameup-analytics relay [status]``: run the relay of a spool directory, or ask about it."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
import types
from pathlib import Path
from typing import Any

from .. import _config
from ..relay import read_status, relay_pid
from ._common import EXIT_INCOMPLETE, EXIT_OK, add_connection_options, client_options
from ._spool import _directory, _iso


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    relay = commands.add_parser(
        "relay",
        help="deliver what relay-mode clients write to a spool directory (foreground; SIGTERM drains)",
    )
    _directory_option(relay)
    add_connection_options(relay)
    relay.add_argument("--max-concurrency", type=int, default=128, help="most requests in flight")
    relay.add_argument(
        "--ordering",
        choices=("relaxed", "strict"),
        default="relaxed",
        help="per-user order, as the client option (strict: one message at a time per user)",
    )
    relay.add_argument(
        "--drain-timeout", type=float, default=10.0, help="seconds SIGTERM/SIGINT spends delivering"
    )
    relay.add_argument(
        "--exit-when-idle",
        type=float,
        metavar="SECONDS",
        help="exit once nothing was left to deliver, and no writer, for this long (default: never)",
    )
    relay.set_defaults(run=_run)
    status_commands = relay.add_subparsers(title="relay commands", metavar="RELAY_COMMAND")
    status = status_commands.add_parser("status", help="is a relay running, its backlog, rate and errors")
    _directory_option(status)
    status.add_argument("--json", action="store_true", help="print machine-readable JSON")
    add_connection_options(status, api_key=False)
    status.set_defaults(run=_status)


def _directory_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        type=Path,
        help="the spool directory (default: the one the client uses for the host and workspace)",
    )


def _run(args: argparse.Namespace) -> int:
    from ..relay_process import Relay  # here: it builds a client; `relay status` needs none of it

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    relay = Relay(
        _directory(args),
        max_concurrency=_config.count("max_concurrency", args.max_concurrency, 1),
        ordering=args.ordering,
        drain_timeout=_config.seconds("drain_timeout", args.drain_timeout, zero_allowed=True),
        exit_when_idle=None
        if args.exit_when_idle is None
        else _config.seconds("exit_when_idle", args.exit_when_idle),
        **client_options(args),
    )

    def on_signal(signum: int, frame: types.FrameType | None) -> None:
        logging.getLogger("flameup_analytics").info("%s: draining", signal.Signals(signum).name)
        relay.stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    if not relay.run():
        print(f"flameup-analytics: a relay already serves {relay.directory}", file=sys.stderr)
        return EXIT_INCOMPLETE
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    directory = _directory(args)
    pid = relay_pid(directory)
    status = read_status(directory) or {}
    report: dict[str, Any] = {
        "directory": str(directory),
        "running": pid is not None,
        "pid": pid,
        "backlog": status.get("backlog"),
        "delivery_rate": status.get("delivery_rate"),
        "concurrency": status.get("concurrency"),
        "delivered": status.get("delivered"),
        "rejected": status.get("rejected"),
        "last_error": status.get("last_error"),
        "last_error_at": _iso(status.get("last_error_at")),
        "updated": _iso(status.get("updated")),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_describe(report, status))
    return EXIT_OK if pid is not None else EXIT_INCOMPLETE


def _describe(report: dict[str, Any], status: dict[str, Any]) -> str:
    lines = [f"directory      {report['directory']}"]
    if report["running"]:
        lines.append(f"relay          running, pid {report['pid']}")
    else:
        lines.append("relay          not running")
    backlog = report["backlog"]
    if backlog is not None:
        age = "" if backlog["oldest"] is None else f", oldest {time.time() - backlog['oldest']:.0f} s old"
        lines.append(
            f"backlog        {backlog['records']} record(s), {backlog['bytes']} bytes "
            f"in {backlog['segments']} segment(s){age}"
        )
    if status:
        lines.append(f"delivery rate  {report['delivery_rate']}/s ({report['delivered']} delivered in all)")
        lines.append(f"concurrency    {report['concurrency']}")
        error = "-" if report["last_error"] is None else f"{report['last_error']} ({report['last_error_at']})"
        lines.append(f"last error     {error}")
        lines.append(f"status of      {report['updated']}")
    return "\n".join(lines)
