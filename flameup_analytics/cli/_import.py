"""Internal. ``flameup-analytics import FILE...``: backfill tracks and identifies from JSON Lines or CSV.

Every line goes through a normal :class:`Client` (validation, retries, the disk spool), with an
idempotency key derived from the line's content, so an import that is run again (after a crash,
a failed line fixed, or by mistake) is processed by the API once. A bad line is reported with its
number and reason and never stops the import.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as dt
import hashlib
import io
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from ..client import Client
from ..errors import ValidationError
from ..ledger import MessageOutcome
from ._common import EXIT_INCOMPLETE, EXIT_OK, UsageError, add_connection_options, client_options
from ._send import _sdk_log_muted

#: The fields a JSON line may have; anything else is a typo worth reporting.
_TRACK_FIELDS = frozenset({"type", "user_id", "event", "parameters", "timestamp", "idempotency_key"})
_IDENTIFY_FIELDS = frozenset({"type", "user_id", "traits", "timestamp", "idempotency_key"})
#: Invalid lines and rejections shown in the text summary (--json lists them all).
_SHOWN = 20
#: Lines read between looks at the memory queue: the reader waits while it is this full, so an
#: import never pushes the queue into the spool just by reading faster than the API answers.
_CHECK_EVERY = 500


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = commands.add_parser(
        "import",
        help="backfill tracks and identifies from JSON Lines or CSV files",
        description="Send every line of FILE... through the SDK (validation, retries, the disk spool), "
        "each with an idempotency key derived from its content, so running the same import again "
        "sends nothing twice. Bad lines are reported by number and never stop the import.",
    )
    command.add_argument("files", nargs="+", type=Path, metavar="FILE")
    command.add_argument(
        "--format",
        choices=("jsonl", "csv"),
        help="the files' format (default: csv for a .csv file, else jsonl)",
    )
    mapping = command.add_argument_group("CSV columns (a header row names them)")
    mapping.add_argument("--kind", choices=("track", "identify"), default="track", help="what each row is")
    mapping.add_argument("--user-column", default="user_id", metavar="NAME", help="the user id (%(default)s)")
    mapping.add_argument(
        "--event-column", default="event", metavar="NAME", help="the event name (%(default)s)"
    )
    mapping.add_argument(
        "--timestamp-column", default="timestamp", metavar="NAME", help="the ISO 8601 time (%(default)s)"
    )
    mapping.add_argument(
        "--param-columns",
        metavar="A,B",
        help="the columns sent as parameters (traits for identify); default: every other column",
    )
    command.add_argument("--dry-run", action="store_true", help="validate every line, send nothing")
    command.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds to wait for delivery once every line is read (default: %(default)s)",
    )
    command.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_connection_options(command)
    command.set_defaults(run=_run)


# --- reading lines -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Line:
    """One call to make: where it came from and its arguments."""

    file: str
    number: int
    kind: str
    user_id: Any
    key: str
    event: Any = None
    properties: Any = None
    timestamp: dt.datetime | None = None


class BadLine(Exception):
    """A line that cannot become a call; its text is the reason."""


def line_key(text: bytes) -> str:
    """The idempotency key of a line: its content's hash, so a re-run sends the same keys."""
    return "import-" + hashlib.sha256(text).hexdigest()[:40]


def _timestamp(value: Any, required: bool) -> dt.datetime | None:
    if value is None or value == "":
        if required:
            raise BadLine("timestamp is required (ISO 8601, e.g. 2026-11-26T03:20:20Z)")
        return None
    if not isinstance(value, str):
        raise BadLine(f"timestamp must be an ISO 8601 string, not {type(value).__name__}")
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadLine(f"timestamp {value!r} is not ISO 8601 (e.g. 2026-11-26T03:20:20Z)") from None


def read_jsonl(path: Path) -> Iterator[Line | tuple[str, int, str]]:
    """Each line of a JSON Lines file as a :class:`Line`, or ``(file, number, reason)``."""
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, 1):
            text = raw.rstrip(b"\r\n")
            if not text.strip():
                continue
            try:
                yield _json_line(str(path), number, text)
            except BadLine as exc:
                yield str(path), number, str(exc)


def _json_line(file: str, number: int, text: bytes) -> Line:
    try:
        document = json.loads(text)
    except ValueError as exc:  # UnicodeDecodeError included
        raise BadLine(f"not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise BadLine(f"not a JSON object but {type(document).__name__}")
    kind = document.get("type")
    if kind not in ("track", "identify"):
        raise BadLine(f"type must be 'track' or 'identify', not {kind!r}")
    unknown = set(document) - (_TRACK_FIELDS if kind == "track" else _IDENTIFY_FIELDS)
    if unknown:
        raise BadLine(f"unknown field(s) for a {kind}: {', '.join(sorted(unknown))}")
    key = document.get("idempotency_key") or line_key(text)
    timestamp = _timestamp(document.get("timestamp"), required=kind == "track")
    if kind == "track":
        return Line(
            file,
            number,
            kind,
            document.get("user_id"),
            key,
            document.get("event"),
            document.get("parameters"),
            timestamp,
        )
    return Line(file, number, kind, document.get("user_id"), key, properties=document.get("traits"))


def read_csv(path: Path, args: argparse.Namespace) -> Iterator[Line | tuple[str, int, str]]:
    """Each row of a CSV file as a :class:`Line` by the column mapping, or ``(file, number, reason)``.

    Raises :class:`UsageError` when the header lacks a mapped column: no row could be read."""
    # surrogateescape: an undecodable byte fails its own row (as a lone surrogate), not the file.
    with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
        rows = csv.reader(handle)
        header = next(rows, None)
        if header is None:
            return
        columns = _columns(path, header, args)
        fingerprint = "\x1f".join(header)
        end = rows.line_num
        for row in rows:
            number, end = end + 1, rows.line_num
            if not any(cell.strip() for cell in row):
                continue
            try:
                yield _csv_row(str(path), number, row, header, columns, fingerprint, args.kind)
            except BadLine as exc:
                yield str(path), number, str(exc)


@dataclasses.dataclass(frozen=True)
class _Columns:
    user: int
    event: int | None
    timestamp: int | None
    properties: list[tuple[str, int]]


def _columns(path: Path, header: list[str], args: argparse.Namespace) -> _Columns:
    def index(name: str, required: bool) -> int | None:
        if name in header:
            return header.index(name)
        if required:
            raise UsageError(f"{path}: no column {name!r} in the header ({', '.join(header)})")
        return None

    track = args.kind == "track"
    user = index(args.user_column, True)
    event = index(args.event_column, track)
    timestamp = index(args.timestamp_column, track)
    assert user is not None
    mapped = {user, event, timestamp}
    if args.param_columns:
        wanted = [name.strip() for name in args.param_columns.split(",") if name.strip()]
        properties = [(name, index(name, True)) for name in wanted]
        return _Columns(user, event, timestamp, [(name, at) for name, at in properties if at is not None])
    others = [(name, at) for at, name in enumerate(header) if at not in mapped]
    return _Columns(user, event, timestamp, others)


def _cell_value(text: str) -> Any:
    """A cell read as JSON when it parses (42, true, [1]), else as text, as ``send --param`` does."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _csv_row(
    file: str, number: int, row: list[str], header: list[str], columns: _Columns, fingerprint: str, kind: str
) -> Line:
    if len(row) != len(header):
        raise BadLine(f"{len(row)} cells where the header has {len(header)}")
    properties = {name: _cell_value(row[at]) for name, at in columns.properties if row[at] != ""}
    key = line_key(("\x1e".join([fingerprint, *row])).encode("utf-8", "surrogateescape"))
    if kind == "track":
        assert columns.event is not None and columns.timestamp is not None
        timestamp = _timestamp(row[columns.timestamp], required=True)
        return Line(file, number, kind, row[columns.user], key, row[columns.event], properties, timestamp)
    return Line(file, number, kind, row[columns.user], key, properties=properties)


def _count_lines(paths: Sequence[Path]) -> int:
    """The lines of all files, counted fast, for the progress bar's ETA."""
    total = 0
    for path in paths:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                total += block.count(b"\n")
    return total


# --- progress ----------------------------------------------------------------------------------


class Progress:
    """A bar with rate and ETA redrawn in place on a terminal; elsewhere a plain line every 10 %."""

    def __init__(self, total: int, stream: TextIO, quiet: bool) -> None:
        self._total = max(total, 1)
        self._stream = stream
        self._quiet = quiet
        self._terminal = stream.isatty()
        self._started = time.monotonic()
        self._last_drawn = 0.0
        self._next_tenth = 1

    def show(self, done: int, final: bool = False) -> None:
        if self._quiet:
            return
        now = time.monotonic()
        elapsed = max(now - self._started, 1e-9)
        rate = done / elapsed
        left = max(self._total - done, 0)
        eta = f"ETA {left / rate:.0f} s" if rate > 0 and not final else f"{elapsed:.1f} s"
        if self._terminal:
            if not final and now - self._last_drawn < 0.2:
                return
            self._last_drawn = now
            width = 30
            filled = min(width, width * done // self._total)
            bar = "#" * filled + " " * (width - filled)
            end = "\n" if final else ""
            print(
                f"\r[{bar}] {done:,}/{self._total:,} lines  {rate:,.0f}/s  {eta}   ",
                end=end,
                file=self._stream,
                flush=True,
            )
        elif final or done * 10 >= self._next_tenth * self._total:
            self._next_tenth = done * 10 // self._total + 1
            print(
                f"import: {done:,}/{self._total:,} lines ({100 * done // self._total}%), "
                f"{rate:,.0f}/s, {eta}",
                file=self._stream,
                flush=True,
            )


# --- the import ----------------------------------------------------------------------------------


class _Tally:
    """Where each of the import's messages ended, by key: its last outcome, from ``on_outcome``
    (the worker's thread). A message spooled, then replayed and delivered by this run, ends
    delivered; identical lines share a key, so they are one message."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.origin: dict[str, tuple[str, int]] = {}
        self._ended: dict[str, MessageOutcome] = {}
        self.settled = 0

    def expect(self, line: Line) -> None:
        with self.lock:
            self.origin.setdefault(line.key, (line.file, line.number))

    def forget(self, line: Line) -> None:
        """A line the client refused: no outcome will come for it."""
        with self.lock:
            self.origin.pop(line.key, None)

    def record(self, outcome: MessageOutcome) -> None:
        key = outcome.message.key
        with self.lock:
            if key not in self.origin:
                return  # replayed from the spool of another run or client: not this import's
            if self._ended.setdefault(key, outcome) is not outcome:
                self._ended[key] = outcome
            else:
                self.settled += 1

    def ended(self, result: str) -> list[dict[str, Any]]:
        """The messages whose last outcome is ``result``, with their file, line and error."""
        with self.lock:
            found = [
                (self.origin[key], outcome)
                for key, outcome in self._ended.items()
                if outcome.result == result
            ]
        found.sort(key=lambda item: item[0])
        return [{"file": file, "line": line, "error": str(outcome.error)} for (file, line), outcome in found]


def _lines(args: argparse.Namespace) -> Iterator[Line | tuple[str, int, str]]:
    for path in args.files:
        kind = args.format or ("csv" if path.suffix.lower() == ".csv" else "jsonl")
        yield from read_csv(path, args) if kind == "csv" else read_jsonl(path)


def _call(client: Client, line: Line) -> None:
    if line.kind == "track":
        client.track(
            line.user_id, line.event, line.properties, timestamp=line.timestamp, idempotency_key=line.key
        )
    else:
        client.identify(line.user_id, line.properties, idempotency_key=line.key)


def _run(args: argparse.Namespace) -> int:
    missing = [str(path) for path in args.files if not path.is_file()]
    if missing:
        raise UsageError(f"no such file: {', '.join(missing)}")
    progress = Progress(_count_lines(args.files), sys.stderr, quiet=args.json)
    tally = _Tally()
    invalid: list[dict[str, Any]] = []
    with _sdk_log_muted():
        if args.dry_run:
            client = Client(disabled=True)
        else:
            client = Client(on_outcome=tally.record, **client_options(args))
        try:
            read = _read_all(args, client, tally, invalid, progress)
            if not args.dry_run:
                _wait_for_delivery(client, tally, args.timeout, progress)
        finally:
            client.shutdown()
    return _report(args, read, invalid, tally)


def _read_all(
    args: argparse.Namespace, client: Client, tally: _Tally, invalid: list[dict[str, Any]], progress: Progress
) -> int:
    """Make one call per line; returns how many lines were read (blank ones aside)."""
    read = 0
    limit = client.max_queue_size // 2
    for item in _lines(args):
        read += 1
        if isinstance(item, tuple):
            file, number, reason = item
            invalid.append({"file": file, "line": number, "reason": reason})
            continue
        if not args.dry_run:
            tally.expect(item)
        try:
            _call(client, item)
        except ValidationError as exc:
            tally.forget(item)
            invalid.append({"file": item.file, "line": item.number, "reason": str(exc)})
        if read % _CHECK_EVERY == 0:
            _wait_while(lambda: client.stats().queued > limit)
            progress.show(len(invalid) + (read if args.dry_run else tally.settled))
    return read


def _wait_while(condition: Callable[[], bool]) -> None:
    pause = threading.Event()
    while condition():
        pause.wait(0.01)


def _wait_for_delivery(client: Client, tally: _Tally, timeout: float, progress: Progress) -> None:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        client.flush(timeout=max(0.0, min(0.5, left)))  # the wait; its verdict is read from stats()
        progress.show(tally.settled)
        if client.stats().queued == 0 or left <= 0:
            return


def _report(args: argparse.Namespace, read: int, invalid: list[dict[str, Any]], tally: _Tally) -> int:
    invalid.sort(key=lambda entry: (entry["file"], entry["line"]))
    valid = read - len(invalid)
    if args.dry_run:
        summary: dict[str, Any] = {"lines": read, "valid": valid, "invalid": invalid}
        complete = not invalid
    else:
        messages = len(tally.origin)
        delivered = len(tally.ended("delivered"))
        summary = {
            "lines": read,
            "messages": messages,
            "duplicates": valid - messages,
            "delivered": delivered,
            "rejected": tally.ended("rejected"),
            "invalid": invalid,
            "spooled": len(tally.ended("spooled")),
            "dropped": tally.ended("dropped"),
            "unsettled": messages - tally.settled,
        }
        complete = delivered == messages and not invalid
    summary["complete"] = complete
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary, args.dry_run)
    return EXIT_OK if complete else EXIT_INCOMPLETE


def _print_summary(summary: dict[str, Any], dry_run: bool) -> None:
    out = io.StringIO()
    if dry_run:
        print(
            f"checked {summary['lines']:,} line(s): {summary['valid']:,} valid, "
            f"{len(summary['invalid']):,} invalid (dry run: nothing sent)",
            file=out,
        )
    else:
        print(
            f"imported {summary['lines']:,} line(s): {summary['delivered']:,} delivered, "
            f"{len(summary['rejected']):,} rejected, {len(summary['invalid']):,} invalid, "
            f"{summary['spooled']:,} in the disk spool, {len(summary['dropped']):,} dropped, "
            f"{summary['unsettled']:,} not settled in time",
            file=out,
        )
        if summary["duplicates"]:
            print(f"{summary['duplicates']:,} line(s) repeat an earlier line exactly: sent once", file=out)
        if summary["spooled"] or summary["unsettled"]:
            print(
                "the spooled messages are delivered by the next client or `flameup-analytics spool "
                "replay`; running the same import again sends nothing twice",
                file=out,
            )
    for title, entries, field in (
        ("rejected by the API", summary.get("rejected", []), "error"),
        ("dropped", summary.get("dropped", []), "error"),
        ("invalid", summary["invalid"], "reason"),
    ):
        if entries:
            print(f"{title}:", file=out)
            for entry in entries[:_SHOWN]:
                print(f"  {entry['file']}:{entry['line']}: {entry[field]}", file=out)
            if len(entries) > _SHOWN:
                print(f"  ... and {len(entries) - _SHOWN:,} more (--json lists them all)", file=out)
    sys.stdout.write(out.getvalue())
