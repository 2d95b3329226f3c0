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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .client import DEFAULT_HOST, USER_AGENT, Client
from .diagnosis import diagnose
from .errors import APIError, ConfigurationError, ValidationError
from .ledger import MessageOutcome
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

    send = commands.add_parser("send", help="send one call now, with the SDK's retries")
    send_commands = send.add_subparsers(title="calls", metavar="CALL")
    send.set_defaults(run=functools.partial(_usage, send))
    send_track = send_commands.add_parser("track", help="track an event")
    send_track.add_argument("external_id")
    send_track.add_argument("event")
    _fields_option(send_track, "--param", "parameters")
    send_track.add_argument("--timestamp", help="ISO 8601 time of the event (default: now)")
    send_track.set_defaults(run=_send_track)
    send_identify = send_commands.add_parser("identify", help="create or update a person")
    send_identify.add_argument("user_id")
    _fields_option(send_identify, "--trait", "traits")
    send_identify.set_defaults(run=_send_identify)
    send_transactional = send_commands.add_parser("transactional", help="send a transactional message")
    send_transactional.add_argument("user_id")
    send_transactional.add_argument("template_id")
    send_transactional.add_argument("channel", choices=("email", "sms", "push"))
    _fields_option(send_transactional, "--var", "variables")
    send_transactional.set_defaults(run=_send_transactional)
    for call in (send_track, send_identify, send_transactional):
        call.add_argument("--timeout", type=float, default=10.0, help="give up after this many seconds")
        call.add_argument("--json", action="store_true", help="print machine-readable JSON")

    check = commands.add_parser(
        "check", help="check connectivity and credentials (DNS, TCP, TLS, proxy, key, clock)"
    )
    check.add_argument("--timeout", type=float, default=5.0, help="seconds for each network step")
    check.add_argument("--json", action="store_true", help="print machine-readable JSON")
    check.set_defaults(run=_check)

    _devserver_parser(commands)
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


# --- send ------------------------------------------------------------------------------------


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
            raise _UsageError(f"not valid JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise _UsageError("the JSON must be an object")
        fields.update(loaded)
    for item in args.fields:
        key, separator, text = item.partition("=")
        if not separator or not key:
            raise _UsageError(f"expected KEY=VALUE, not {item!r}")
        try:
            fields[key] = json.loads(text)
        except ValueError:
            fields[key] = text
    return fields


class _UsageError(Exception):
    pass


def _send(args: argparse.Namespace, call: Callable[[Client], Any]) -> int:
    """Run one call on a synchronous client and report how it ended."""
    outcomes: list[MessageOutcome] = []
    client = Client(sync_mode=True, spool_dir=False, timeout=args.timeout, on_outcome=outcomes.append)
    try:
        answer = call(client)
    except (_UsageError, ValidationError) as exc:
        print(f"flameup-analytics: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except APIError as exc:
        report: dict[str, Any] = {"ok": False, "status": exc.status, "error": exc.message}
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


def _send_track(args: argparse.Namespace) -> int:
    def call(client: Client) -> None:
        timestamp = None
        if args.timestamp:
            try:
                timestamp = dt.datetime.fromisoformat(args.timestamp.replace("Z", "+00:00"))
            except ValueError as exc:
                raise _UsageError(f"--timestamp: {exc}") from None
        client.track(args.external_id, args.event, _fields(args), timestamp=timestamp)

    return _send(args, call)


def _send_identify(args: argparse.Namespace) -> int:
    return _send(args, lambda client: client.identify(args.user_id, _fields(args)))


def _send_transactional(args: argparse.Namespace) -> int:
    return _send(
        args,
        lambda client: client.send_transactional(args.user_id, args.template_id, args.channel, _fields(args)),
    )


# --- check -----------------------------------------------------------------------------------


def _check(args: argparse.Namespace) -> int:
    settings = Client(spool_dir=False)  # reads and checks the configuration; sends nothing
    settings.shutdown()
    findings = diagnose(settings.api_key, settings.workspace_id, settings.host, USER_AGENT, args.timeout)
    ok = all(finding.ok for finding in findings)
    if args.json:
        print(
            json.dumps(
                {"ok": ok, "host": settings.host, "findings": [dataclasses.asdict(f) for f in findings]},
                indent=2,
            )
        )
    else:
        print(f"checking {settings.host}")
        for finding in findings:
            print(f"  {'ok  ' if finding.ok else 'FAIL'} {finding.step:<13} {finding.detail}")
            if finding.hint:
                print(f"       {'':<13} -> {finding.hint}")
        print("all good" if ok else "problems found")
    return EXIT_OK if ok else EXIT_INCOMPLETE


# --- devserver -------------------------------------------------------------------------------

if TYPE_CHECKING:
    from types import FrameType

    from .testing.server import Fault, FaultAction, ReceivedRequest

_DEV_KEY, _DEV_WORKSPACE, _DEV_PORT = "dev_key", "ws_dev", 8787
# Long bodies are cut in the text output, which is one line per request for a person to read.
_BODY_PREVIEW = 300


def _devserver_parser(commands: Any) -> None:
    devserver = commands.add_parser(
        "devserver",
        help="run a local Flameup API and print every request as it arrives",
        description="Run the SDK's local Flameup-compatible API in the foreground, to try the SDK "
        "without an account. It checks the key, and validates every request against the API "
        "description (docs/openapi.yaml); it prints one line per request until Ctrl-C or SIGTERM.",
    )
    devserver.add_argument(
        "--port",
        type=int,
        default=_DEV_PORT,
        help="port to listen on; 0 picks a free one (default: %(default)s)",
    )
    devserver.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    devserver.add_argument(
        "--api-key", help=f"the key clients must send (default: $FLAMEUP_API_KEY, else {_DEV_KEY})"
    )
    devserver.add_argument(
        "--workspace-id",
        help=f"the workspace it serves (default: $FLAMEUP_WORKSPACE_ID, else {_DEV_WORKSPACE})",
    )
    devserver.add_argument(
        "--latency", type=float, default=0.0, metavar="S", help="seconds to wait before every answer"
    )
    faults = devserver.add_argument_group("faults", "make the first requests fail, to see the SDK retry")
    action = faults.add_mutually_exclusive_group()
    action.add_argument("--fail-status", type=int, metavar="CODE", help="answer this status, e.g. 503 or 429")
    action.add_argument("--hang", action="store_true", help="never answer (until the server stops)")
    action.add_argument("--drop", action="store_true", help="close the connection without an answer")
    faults.add_argument(
        "--fail-times",
        type=_fault_times,
        default=1,
        metavar="N",
        help="how many requests fail, or 'all' (default: 1)",
    )
    faults.add_argument("--retry-after", metavar="S", help="send this Retry-After with --fail-status")
    faults.add_argument(
        "--fail-kind",
        choices=("track", "identify", "transactional", "get_person"),
        help="fail only requests to this endpoint",
    )
    devserver.add_argument("--json", action="store_true", help="print one JSON object per line")
    devserver.set_defaults(run=_devserver)


def _fault_times(value: str) -> int | None:
    if value == "all":
        return None
    try:
        times = int(value)
    except ValueError:
        times = 0
    if times < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1 or 'all', not {value!r}")
    return times


def _devserver(args: argparse.Namespace) -> int:
    import shlex
    import signal
    import socket

    from .testing.server import LocalServer

    fault = _devserver_fault(args)
    api_key = args.api_key or os.environ.get("FLAMEUP_API_KEY") or _DEV_KEY
    workspace_id = args.workspace_id or os.environ.get("FLAMEUP_WORKSPACE_ID") or _DEV_WORKSPACE
    output_lock = threading.Lock()

    def emit(line: str) -> None:
        # Handler threads print concurrently: one lock keeps each line whole.
        with output_lock:
            print(line, flush=True)

    def show(request: ReceivedRequest) -> None:
        emit(json.dumps(_request_record(request)) if args.json else _request_line(request))

    try:
        server = LocalServer(
            api_key, workspace_id, port=args.port, host=args.host, latency=args.latency, on_request=show
        )
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    except ImportError as exc:
        print(f"flameup-analytics: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if fault is not None:
        server.add_fault(fault)
    # A signal only writes a byte to this socket, which the main thread waits on: no lock or
    # output is touched in a signal handler, and Ctrl-C cannot land in the middle of a print.
    wake_reader, wake_writer = socket.socketpair()
    wake_writer.setblocking(False)
    previous_wakeup = signal.set_wakeup_fd(wake_writer.fileno(), warn_on_full_buffer=False)
    stop_signals = (signal.SIGINT, signal.SIGTERM)
    previous_handlers = {signum: signal.signal(signum, _ignore_signal) for signum in stop_signals}
    try:
        try:
            server.start()
        except OSError as exc:
            print(f"flameup-analytics: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
            return EXIT_USAGE
        env = {"FLAMEUP_HOST": server.url, "FLAMEUP_API_KEY": api_key, "FLAMEUP_WORKSPACE_ID": workspace_id}
        if args.json:
            emit(
                json.dumps({"event": "listening", "url": server.url, "env": env, "fault": _fault_text(fault)})
            )
        else:
            emit(f"Flameup local API listening on {server.url}")
            emit("Requests are validated against the API description (docs/openapi.yaml).")
            emit("Point the SDK at it (the client reads these):")
            for name, value in env.items():
                emit(f"  export {name}={shlex.quote(value)}")
            if fault is not None:
                emit(f"Fault: {_fault_text(fault)}")
            if args.latency:
                emit(f"Latency: {args.latency:g} s before every answer")
            emit("Ctrl-C stops it.")
        try:
            wake_reader.recv(1)
        finally:
            server.stop()
        requests, accepted = len(server.requests), len(server.accepted)
        if args.json:
            emit(json.dumps({"event": "stopped", "requests": requests, "accepted": accepted}))
        else:
            emit(f"stopped after {requests} request(s), {accepted} accepted")
        return EXIT_OK
    finally:
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
        signal.set_wakeup_fd(previous_wakeup)
        wake_reader.close()
        wake_writer.close()


def _ignore_signal(signum: int, frame: FrameType | None) -> None:
    """Installed so SIGINT/SIGTERM only wake the main thread (through the wakeup fd)."""


def _devserver_fault(args: argparse.Namespace) -> Fault | None:
    from .testing.server import Fault

    if args.retry_after is not None and args.fail_status is None:
        raise ConfigurationError("--retry-after goes with --fail-status")
    action: FaultAction = "hang" if args.hang else "drop" if args.drop else "respond"
    if action == "respond" and args.fail_status is None:
        return None
    status = 503 if args.fail_status is None else args.fail_status  # only read by "respond"
    try:
        return Fault(
            status=status,
            retry_after=args.retry_after,
            times=args.fail_times,
            kind=args.fail_kind,
            action=action,
        )
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None


def _fault_text(fault: Fault | None) -> str | None:
    if fault is None:
        return None
    what = {"hang": "never answer", "drop": "close the connection"}.get(
        fault.action,
        f"answer {fault.status}"
        + ("" if fault.retry_after is None else f" (Retry-After: {fault.retry_after})"),
    )
    which = "every request" if fault.times is None else f"the first {fault.times} request(s)"
    return f"{which}{'' if fault.kind is None else f' to {fault.kind}'}: {what}"


def _request_record(request: ReceivedRequest) -> dict[str, Any]:
    body: Any = request.json
    if body is None and request.body:
        body = request.body.decode("utf-8", "replace")
    return {
        "event": "request",
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
        "method": request.method,
        "path": request.path,
        "query": request.query,
        "status": request.status,
        "kind": request.kind,
        "idempotency_key": request.idempotency_key,
        "body": body,
        "error": request.error,
    }


def _request_line(request: ReceivedRequest) -> str:
    from urllib.parse import urlencode

    target = request.path + (f"?{urlencode(request.query)}" if request.query else "")
    status = str(request.status) if request.status else "---"  # hung or dropped by a fault
    parts = [dt.datetime.now().strftime("%H:%M:%S.%f")[:-3], request.method, target, status]
    if request.idempotency_key is not None:
        parts.append(f"key={request.idempotency_key}")
    if request.json is not None:
        body = json.dumps(request.json, ensure_ascii=False, separators=(",", ":"))
    else:
        body = request.body.decode("utf-8", "replace")
    if body:
        parts.append(body if len(body) <= _BODY_PREVIEW else body[: _BODY_PREVIEW - 1] + "…")
    if request.error is not None:
        parts.append(f"-> {request.error}")
    elif request.status == 0:
        parts.append("-> no answer (fault)")
    return "  ".join(parts)
