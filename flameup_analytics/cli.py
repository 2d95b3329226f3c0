"""The ``flameup-analytics`` command line (also ``python -m flameup_analytics``).

Exit codes: 0 success, 1 the command ran but did not fully succeed (messages left, refused),
2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import json
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._version import __version__
from .client import DEFAULT_HOST, Client
from .errors import ConfigurationError
from .spool import default_directory, purge, summarize

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        return _usage(parser, args)
    try:
        code: int = args.run(args)
    except ConfigurationError as exc:
        print(f"flameup-analytics: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flameup-analytics",
        description="Tools for the Flameup Python SDK. Reads FLAMEUP_API_KEY, FLAMEUP_WORKSPACE_ID "
        "and FLAMEUP_HOST like the client does.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    spool = commands.add_parser("spool", help="inspect, replay or purge the disk spool")
    spool_commands = spool.add_subparsers(title="spool commands", metavar="SPOOL_COMMAND")
    spool.set_defaults(run=functools.partial(_usage, spool))

    inspect = spool_commands.add_parser("inspect", help="what the spool holds")
    _spool_options(inspect)
    inspect.set_defaults(run=_spool_inspect)

    replay = spool_commands.add_parser("replay", help="deliver what the spool holds, now")
    _spool_options(replay)
    replay.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds")
    replay.set_defaults(run=_spool_replay)

    purge_parser = spool_commands.add_parser("purge", help="delete what the spool holds")
    _spool_options(purge_parser)
    purge_parser.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    purge_parser.set_defaults(run=_spool_purge)
    return parser


def _usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def _spool_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        type=Path,
        help="the spool directory (default: the one the client uses for FLAMEUP_HOST and "
        "FLAMEUP_WORKSPACE_ID)",
    )
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def _spool_directory(args: argparse.Namespace) -> Path:
    if args.dir is not None:
        return Path(args.dir)
    host = (os.environ.get("FLAMEUP_HOST") or DEFAULT_HOST).rstrip("/")
    return default_directory(host, os.environ.get("FLAMEUP_WORKSPACE_ID") or None)


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).isoformat(timespec="seconds")


def _spool_inspect(args: argparse.Namespace) -> int:
    summary = summarize(_spool_directory(args))
    report: dict[str, Any] = dataclasses.asdict(summary)
    report.update(directory=str(summary.directory), oldest=_iso(summary.oldest), newest=_iso(summary.newest))
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    width = max(len(key) for key in report)
    for key, value in report.items():
        print(f"{key:<{width}}  {'-' if value is None else value}")
    if summary.locked:
        print(f"({summary.locked} segment(s) are in use by a running process and were not read)")
    return EXIT_OK


def _spool_replay(args: argparse.Namespace) -> int:
    directory = _spool_directory(args)
    total = summarize(directory).messages
    client = Client(spool_dir=directory, flush_interval=0.05)
    done = threading.Event()
    result: list[bool] = []

    def replay() -> None:
        result.append(client.replay_spool(timeout=args.timeout))
        done.set()

    threading.Thread(target=replay, name="flameup-cli-replay", daemon=True).start()
    show_progress = sys.stderr.isatty() and not args.json
    while not done.wait(0.2):
        if show_progress:
            _progress(client.stats().replayed, total)
    client.shutdown()
    stats = client.stats()
    left = summarize(directory).messages
    if show_progress:
        _progress(stats.replayed, total)
        print(file=sys.stderr)
    report = {
        "directory": str(directory),
        "replayed": stats.replayed,
        "delivered": stats.delivered,
        "rejected": stats.rejected,
        "spooled_again": stats.spooled,
        "dropped": stats.dropped,
        "left": left,
        "complete": bool(result and result[0]) and left == 0,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"replayed {stats.replayed}: {stats.delivered} delivered, {stats.rejected} rejected, "
            f"{stats.spooled} spooled again; {left} message(s) left in {directory}"
        )
    return EXIT_OK if report["complete"] else EXIT_INCOMPLETE


def _progress(done: int, total: int) -> None:
    width = 30
    filled = width if total == 0 else min(width, width * done // total)
    print(f"\r[{'#' * filled}{' ' * (width - filled)}] {done}/{total}", end="", file=sys.stderr, flush=True)


def _spool_purge(args: argparse.Namespace) -> int:
    directory = _spool_directory(args)
    summary = summarize(directory)
    if not args.yes:
        if not sys.stdin.isatty():
            print("refusing to purge without confirmation: pass --yes", file=sys.stderr)
            return EXIT_INCOMPLETE
        answer = input(f"Delete {summary.messages} message(s) in {directory}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return EXIT_INCOMPLETE
    deleted = purge(directory)
    if args.json:
        print(json.dumps({"directory": str(directory), "segments_deleted": deleted}))
    else:
        print(f"deleted {deleted} segment(s) from {directory}")
    return EXIT_OK
