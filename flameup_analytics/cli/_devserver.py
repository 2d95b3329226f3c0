"""Internal. ``flameup-analytics devserver``: the local Flameup API in the foreground, printing each request.

It is :class:`~flameup_analytics.testing.LocalServer` with a printer attached. It never prints a
real API key: only the development default, ``dev_key``, is shown whole.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import signal
import socket
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlencode

from .._redact import redact_key
from ..errors import ConfigurationError
from ._common import EXIT_OK, EXIT_USAGE

if TYPE_CHECKING:
    from types import FrameType

    from ..testing import Fault, FaultAction, LocalServer, ReceivedRequest

# dev_key is no secret: the one key the devserver prints whole.
_DEV_KEY, _DEV_WORKSPACE, _DEV_PORT = "dev_key", "ws_dev", 8787
KeySource = Literal["default", "environment", "--api-key"]
_KEY_SOURCES: dict[KeySource, str] = {
    "environment": "from your environment",
    "--api-key": "given with --api-key",
}
# Long bodies are cut in the text output, which is one line per request for a person to read.
_BODY_PREVIEW = 300


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    devserver = commands.add_parser(
        "devserver",
        help="run a local Flameup API and print every request as it arrives",
        description="Run the SDK's local Flameup-compatible API in the foreground, to try the SDK "
        "without an account. It checks the key, and validates every request against the API "
        "description (docs/openapi.yaml) when openapi-core is installed (the testing extra); it "
        "prints one line per request until Ctrl-C or SIGTERM.",
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
        "--no-validate",
        dest="validate",
        action="store_false",
        help="do not check requests against the API description (only the key, path, method and media type)",
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
    devserver.set_defaults(run=_run)


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


def _run(args: argparse.Namespace) -> int:
    # Imported here: the other commands should not pay for loading the server.
    from ..testing import LocalServer

    fault = _fault(args)
    api_key, key_source = _api_key(args)
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
            api_key,
            workspace_id,
            port=args.port,
            host=args.host,
            latency=args.latency,
            # Unset: validate when openapi-core is installed, run without it otherwise.
            validate=None if args.validate else False,
            on_request=show,
        )
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
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
        _announce(server, args, fault, (api_key, key_source), workspace_id, emit)
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


def _announce(
    server: LocalServer,
    args: argparse.Namespace,
    fault: Fault | None,
    key: tuple[str, KeySource],
    workspace_id: str,
    emit: Callable[[str], None],
) -> None:
    """Say where the server listens, how to point the SDK at it, and how it will answer."""
    api_key, key_source = key
    shown_key = api_key if key_source == "default" else redact_key(api_key)
    env = {"FLAMEUP_HOST": server.url, "FLAMEUP_API_KEY": shown_key, "FLAMEUP_WORKSPACE_ID": workspace_id}
    validation = _validation_text(args.validate, server.validates)
    if args.json:
        if not server.validates and args.validate:
            # Standard output carries only JSON lines.
            print(f"flameup-analytics: {validation}", file=sys.stderr, flush=True)
        listening = {
            "event": "listening",
            "url": server.url,
            "env": env,
            "api_key_from": key_source,
            "validates": server.validates,
            "fault": _fault_text(fault),
        }
        emit(json.dumps(listening))
        return
    emit(f"Flameup local API listening on {server.url}")
    emit(validation)
    emit("Point the SDK at it (the client reads these):")
    for name, value in env.items():
        if name == "FLAMEUP_API_KEY" and key_source != "default":
            # Commented out: pasting it would replace the real key with the masked one.
            emit(f"  # export {name}={value}  (the key {_KEY_SOURCES[key_source]}, not shown)")
        else:
            emit(f"  export {name}={shlex.quote(value)}")
    if fault is not None:
        emit(f"Fault: {_fault_text(fault)}")
    if args.latency:
        emit(f"Latency: {args.latency:g} s before every answer")
    emit("Ctrl-C stops it.")


def _api_key(args: argparse.Namespace) -> tuple[str, KeySource]:
    """The key the server expects, and where it came from."""
    if args.api_key:
        return args.api_key, "--api-key"
    from_environment = os.environ.get("FLAMEUP_API_KEY", "").strip()
    if from_environment:
        return from_environment, "environment"
    return _DEV_KEY, "default"


def _validation_text(wanted: bool, validating: bool) -> str:
    from ..testing._validation import EXTRA_HINT

    if validating:
        return "Requests are validated against the API description (docs/openapi.yaml)."
    if not wanted:
        return "Requests are not validated against the API description (--no-validate)."
    return (
        "Requests are not validated against the API description: openapi-core is not installed "
        f"({EXTRA_HINT})."
    )


def _fault(args: argparse.Namespace) -> Fault | None:
    from ..testing import Fault

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
