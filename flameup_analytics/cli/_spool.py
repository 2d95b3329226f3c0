"""Internal. ``flameup-analytics spool inspect|replay|purge``: the disk spool from the shell."""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import sys
import threading
from pathlib import Path
from typing import Any

from .. import _config
from ..client import Client
from ..spool import default_directory, purge, summarize
from ._common import EXIT_INCOMPLETE, EXIT_OK, UsageError, add_connection_options, client_options, usage


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    spool = commands.add_parser("spool", help="inspect, replay or purge the disk spool")
    spool_commands = spool.add_subparsers(title="spool commands", metavar="SPOOL_COMMAND")
    spool.set_defaults(run=functools.partial(usage, spool))

    inspect = spool_commands.add_parser("inspect", help="what the spool holds")
    _spool_options(inspect)
    inspect.set_defaults(run=_inspect)

    replay = spool_commands.add_parser("replay", help="deliver what the spool holds, now")
    _spool_options(replay, api_key=True)
    replay.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds")
    replay.set_defaults(run=_replay)

    purge_parser = spool_commands.add_parser("purge", help="delete what the spool holds")
    _spool_options(purge_parser)
    purge_parser.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    purge_parser.set_defaults(run=_purge)


def _spool_options(parser: argparse.ArgumentParser, *, api_key: bool = False) -> None:
    parser.add_argument(
        "--dir",
        type=Path,
        help="the spool directory (default: the one the client uses for the host and workspace)",
    )
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    add_connection_options(parser, api_key=api_key)


def _directory(args: argparse.Namespace) -> Path:
    if args.dir is not None:
        return Path(args.dir)
    return default_directory(_config.host(args.host), _config.workspace_id(args.workspace_id))


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).isoformat(timespec="seconds")


def _inspect(args: argparse.Namespace) -> int:
    summary = summarize(_directory(args))
    report: dict[str, Any] = {name: getattr(summary, name) for name in summary.__slots__}
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


def _replay(args: argparse.Namespace) -> int:
    directory = _directory(args)
    total = summarize(directory).messages
    client = Client(spool_dir=directory, flush_interval=0.05, **client_options(args))
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


def _purge(args: argparse.Namespace) -> int:
    directory = _directory(args)
    summary = summarize(directory)
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError("refusing to purge without confirmation: pass --yes")
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
