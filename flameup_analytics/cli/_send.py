"""Internal. ``flameup-analytics send track|identify|transactional``: one call from the shell."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import json
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any

from ..client import Client
from ..errors import APIError, ValidationError
from ..ledger import MessageOutcome
from ._common import EXIT_INCOMPLETE, EXIT_OK, UsageError, add_connection_options, client_options, usage


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    send = commands.add_parser("send", help="send one call now, with the SDK's retries")
    calls = send.add_subparsers(title="calls", metavar="CALL")
    send.set_defaults(run=functools.partial(usage, send))
    track = calls.add_parser("track", help="track an event")
    track.add_argument("external_id")
    track.add_argument("event")
    _fields_option(track, "--param", "parameters")
    track.add_argument("--timestamp", help="ISO 8601 time of the event (default: now)")
    track.set_defaults(run=_track)
    identify = calls.add_parser("identify", help="create or update a person")
    identify.add_argument("user_id")
    _fields_option(identify, "--trait", "traits")
    identify.set_defaults(run=_identify)
    transactional = calls.add_parser("transactional", help="send a transactional message")
    transactional.add_argument("user_id")
    transactional.add_argument("template_id")
    transactional.add_argument("channel", choices=("email", "sms", "push"))
    _fields_option(transactional, "--var", "variables")
    transactional.set_defaults(run=_transactional)
    for call in (track, identify, transactional):
        call.add_argument("--timeout", type=float, default=10.0, help="give up after this many seconds")
        call.add_argument("--json", action="store_true", help="print machine-readable JSON")
        add_connection_options(call)


def _fields_option(parser: argparse.ArgumentParser, flag: str, name: str) -> None:
    parser.add_argument(
        flag,
        dest="fields",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"one of the {name}; VALUE is read as JSON when it parses (42, true, [1]), else as text",
    )
    parser.add_argument(
        f"--{name}", dest="fields_json", metavar="JSON", help=f"all the {name} as a JSON object"
    )


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if args.fields_json:
        try:
            loaded = json.loads(args.fields_json)
        except ValueError as exc:
            raise UsageError(f"not valid JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise UsageError("the JSON must be an object")
        fields.update(loaded)
    for item in args.fields:
        key, separator, text = item.partition("=")
        if not separator or not key:
            raise UsageError(f"expected KEY=VALUE, not {item!r}")
        try:
            fields[key] = json.loads(text)
        except ValueError:
            fields[key] = text
    return fields


@contextlib.contextmanager
def _sdk_log_muted() -> Iterator[None]:
    """Keep the SDK's own log lines off the terminal while the command reports the outcome itself.

    Without this one refused call prints twice: the SDK's warning, then the command's line.
    """
    sdk = logging.getLogger("flameup_analytics")
    sink = logging.NullHandler()
    propagate = sdk.propagate
    sdk.addHandler(sink)  # a handler of its own: Python's last-resort stderr handler stays out
    sdk.propagate = False
    try:
        yield
    finally:
        sdk.removeHandler(sink)
        sdk.propagate = propagate


def _send(args: argparse.Namespace, call: Callable[[Client], Any]) -> int:
    """Run one call on a synchronous client and report how it ended, in one line or one JSON."""
    outcomes: list[MessageOutcome] = []
    with _sdk_log_muted():
        client = Client(
            sync_mode=True,
            spool_dir=False,
            timeout=args.timeout,
            on_outcome=outcomes.append,
            **client_options(args),
        )
        try:
            answer = call(client)
        except ValidationError as exc:
            raise UsageError(str(exc)) from None
        except APIError as exc:
            report: dict[str, Any] = {"ok": False, "status": exc.status, "error": str(exc)}
        else:
            if outcomes:  # track and identify: the queued path, reported through on_outcome
                outcome = outcomes[-1]
                report = {
                    "ok": outcome.result == "delivered",
                    "status": outcome.status,
                    "attempts": outcome.attempts,
                }
                if outcome.error is not None:
                    report["error"] = str(outcome.error)
            else:
                report = {"ok": True, "answer": answer}
        finally:
            client.shutdown()
    if args.json:
        print(json.dumps(report, indent=2))
    elif report["ok"]:
        print(f"sent (HTTP {report.get('status', 200)})" + (f": {json.dumps(answer)}" if answer else ""))
    else:
        print(f"not sent: {report.get('error')}", file=sys.stderr)
    return EXIT_OK if report["ok"] else EXIT_INCOMPLETE


def _track(args: argparse.Namespace) -> int:
    def call(client: Client) -> None:
        timestamp = None
        if args.timestamp:
            try:
                timestamp = dt.datetime.fromisoformat(args.timestamp.replace("Z", "+00:00"))
            except ValueError as exc:
                raise UsageError(f"--timestamp: {exc}") from None
        client.track(args.external_id, args.event, _fields(args), timestamp=timestamp)

    return _send(args, call)


def _identify(args: argparse.Namespace) -> int:
    return _send(args, lambda client: client.identify(args.user_id, _fields(args)))


def _transactional(args: argparse.Namespace) -> int:
    return _send(
        args,
        lambda client: client.send_transactional(args.user_id, args.template_id, args.channel, _fields(args)),
    )
