"""A lean local API for the delivery benchmarks: one asyncio process that answers quickly and counts.

It stands in for Flameup's API (``POST /api/v1/track``, ``POST /api/v1/workspaces/{ws}/people``: one
event per request) and for the peers' bulk endpoints (Segment's ``POST /v1/batch`` and PostHog's
``POST /batch/``: the length of the body's ``batch`` list, the body gzip-compressed or not), so every
SDK is measured against the same server. Standard library only.

- HTTP/1.1 keep-alive with a minimal parser (request line, ``Content-Length``, the few headers it
  needs); prebuilt answers. It runs in its own process so it does not take the client's GIL.
- A fixed per-request delay (``loop.call_later``: thousands of requests can wait at once), to play a
  network round trip plus the API's own time.
- Optional TLS (``--cert``: a PEM with the key and chain, e.g. from ``trustme``).
- A 429 storm: in a window of ``time.monotonic()`` (system-wide on Linux, so the harness and the
  clients can name the same instants), every request is answered 429 with ``Retry-After: 1``.
- What it saw since the last ``reset``: requests, events, 429s, duplicate ``Idempotency-Key``s, the
  time of each accepted request, the peak number of requests in flight at once per 100 ms, and its
  own CPU time.

Run it through :class:`ApiServer`, which starts it as a subprocess and talks to it over stdin/stdout,
one JSON object per line: ``configure`` (delay), ``storm`` (start, seconds), ``reset``, ``report``,
``stop``. The first line it prints is ``{"url": ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
from typing import Any

TRACK_PATH = b"/api/v1/track"
WORKSPACES_PREFIX = b"/api/v1/workspaces/"
PEOPLE_SUFFIX = b"/people"
#: The peers' bulk endpoints: Segment's, PostHog's (its default ``capture_mode`` V0).
BULK_PATHS = frozenset({b"/v1/batch", b"/batch/", b"/batch"})
#: Resolution of the in-flight series.
BUCKETS_PER_S = 10


def _answer(status: str, body: bytes, *headers: str) -> bytes:
    head = [f"HTTP/1.1 {status}", "Content-Type: application/json", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


OK = _answer("200 OK", b'{"success":true}')
RATE_LIMITED = _answer("429 Too Many Requests", b'{"error":{"message":"rate limited"}}', "Retry-After: 1")
NOT_FOUND = _answer("404 Not Found", b'{"error":{"message":"not found"}}')
BAD_REQUEST = _answer("400 Bad Request", b'{"error":{"message":"unreadable body"}}')
CLOSING = b"Connection: close\r\n"


class InFlight:
    """The number of requests received and not yet answered, with its peak per 1/10 s bucket."""

    def __init__(self) -> None:
        self.level = 0
        self.bucket = -1
        #: bucket -> the highest level seen in it; bucket -> the level when it was entered.
        self.peaks: dict[int, int] = {}
        self.entered: dict[int, int] = {}

    def change(self, delta: int, now: float) -> None:
        bucket = int(now * BUCKETS_PER_S)
        if bucket != self.bucket:
            self.bucket = bucket
            self.peaks[bucket] = self.entered[bucket] = self.level
        self.level += delta
        if self.level > self.peaks[bucket]:
            self.peaks[bucket] = self.level

    def series(self) -> list[tuple[float, int]]:
        """(bucket start, peak) for every bucket from the first change to the last, gaps filled with
        the level they kept."""
        if not self.peaks:
            return []
        buckets = sorted(self.peaks)
        out: list[tuple[float, int]] = []
        for this, following in zip(buckets, [*buckets[1:], buckets[-1] + 1], strict=True):
            out.append((this / BUCKETS_PER_S, self.peaks[this]))
            held = self.entered.get(following, self.level)
            out.extend((gap / BUCKETS_PER_S, held) for gap in range(this + 1, following))
        return out


class Recorder:
    """What the server saw since the last reset."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.since = time.monotonic()
        self.cpu = time.process_time()
        self.requests = 0
        self.events = 0
        self.refused = 0
        self.unknown = 0
        self.duplicates = 0
        self.keys: set[bytes] = set()
        self.accepted_at: list[float] = []
        self.accepted_events: list[int] = []
        self.refused_at: list[float] = []
        self.in_flight = InFlight()
        self.paths: dict[str, int] = {}

    def report(self) -> dict[str, Any]:
        cpu = time.process_time() - self.cpu
        return {
            "since": self.since,
            "seconds": time.monotonic() - self.since,
            "requests": self.requests,
            "events": self.events,
            "refused_429": self.refused,
            "unknown_paths": self.unknown,
            "distinct_keys": len(self.keys),
            "duplicate_keys": self.duplicates,
            "paths": self.paths,
            "cpu_s": cpu,
            "cpu_us_per_request": cpu / self.requests * 1e6 if self.requests else None,
            "accepted": list(zip(self.accepted_at, self.accepted_events, strict=True)),
            "refused_at": self.refused_at,
            "in_flight": self.in_flight.series(),
            "max_in_flight": max(self.in_flight.peaks.values(), default=0),
        }


class Server:
    """The behaviour shared by all connections: the delay, the storm window, the recorder."""

    def __init__(self) -> None:
        self.delay = 0.0
        self.storm = (0.0, 0.0)  # [start, end) in time.monotonic()
        self.seen = Recorder()

    def handle(self, method: bytes, target: bytes, headers: dict[bytes, bytes], body: bytes) -> bytes:
        seen = self.seen
        seen.requests += 1
        now = time.monotonic()
        path = target.split(b"?", 1)[0]
        if method != b"POST":
            return self.unknown(method + b" " + path)
        if path == TRACK_PATH or (path.startswith(WORKSPACES_PREFIX) and path.endswith(PEOPLE_SUFFIX)):
            events = 1
        elif path in BULK_PATHS:
            try:
                if headers.get(b"content-encoding", b"").strip().lower() == b"gzip":
                    body = gzip.decompress(body)
                events = len(json.loads(body)["batch"])
            except (ValueError, KeyError, TypeError, OSError, EOFError):
                return BAD_REQUEST
        else:
            return self.unknown(method + b" " + path)
        if self.storm[0] <= now < self.storm[1]:
            seen.refused += 1
            seen.refused_at.append(now)
            return RATE_LIMITED
        key = headers.get(b"idempotency-key")
        if key is not None:
            if key in seen.keys:
                seen.duplicates += 1
            else:
                seen.keys.add(key)
        seen.events += events
        seen.accepted_at.append(now)
        seen.accepted_events.append(events)
        return OK

    def unknown(self, request: bytes) -> bytes:
        seen = self.seen
        seen.unknown += 1
        name = request.decode("latin-1")
        seen.paths[name] = seen.paths.get(name, 0) + 1
        return NOT_FOUND


class Connection(asyncio.Protocol):
    """One client connection: requests are answered in order, each after the server's delay."""

    def __init__(self, server: Server, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self.loop = loop
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.waiting = False  # an answer is pending: later requests wait in the buffer (no pipelining)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.waiting:
            self.process()

    def process(self) -> None:
        buffer = self.buffer
        while self.transport is not None:
            head_end = buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            lines = bytes(buffer[:head_end]).split(b"\r\n")
            try:
                method, target, _ = lines[0].split(b" ", 2)
            except ValueError:
                self.transport.close()
                return
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            end = head_end + 4 + int(headers.get(b"content-length", b"0"))
            if len(buffer) < end:
                return
            body = bytes(buffer[head_end + 4 : end])
            del buffer[:end]
            answer = self.server.handle(method, target, headers, body)
            closing = headers.get(b"connection", b"").lower() == b"close"
            in_flight = self.server.seen.in_flight
            in_flight.change(1, time.monotonic())
            if self.server.delay > 0:
                self.waiting = True
                self.loop.call_later(self.server.delay, self.answer, answer, closing, in_flight)
                return
            self.answer(answer, closing, in_flight)
            if closing:
                return

    def answer(self, answer: bytes, closing: bool, in_flight: InFlight) -> None:
        in_flight.change(-1, time.monotonic())
        self.waiting = False
        if self.transport is None:
            return
        if closing:
            status_line, _, rest = answer.partition(b"\r\n")
            self.transport.write(status_line + b"\r\n" + CLOSING + rest)
            self.transport.close()
            return
        self.transport.write(answer)
        if self.buffer:
            self.process()


async def control(server: Server, stop: asyncio.Event) -> None:
    """Obey the JSON commands on stdin; EOF (the harness went away) stops the server."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while not stop.is_set():
        line = await reader.readline()
        if not line:
            break
        command = json.loads(line)
        op = command.pop("op")
        reply: dict[str, Any] = {"ok": True}
        if op == "configure":
            server.delay = float(command["delay"])
        elif op == "storm":
            server.storm = (float(command["start"]), float(command["start"]) + float(command["seconds"]))
        elif op == "reset":
            server.seen.reset()
            server.storm = (0.0, 0.0)
        elif op == "report":
            reply = server.seen.report()
        elif op == "stop":
            stop.set()
        else:
            reply = {"ok": False, "error": f"unknown op {op!r}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    stop.set()


async def serve(port: int, cert: str | None) -> None:
    loop = asyncio.get_running_loop()
    server = Server()
    tls = None
    if cert:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert)
    listener = await loop.create_server(
        lambda: Connection(server, loop), "127.0.0.1", port, ssl=tls, backlog=1024, reuse_address=True
    )
    bound = listener.sockets[0].getsockname()[1]
    sys.stdout.write(json.dumps({"url": f"{'https' if tls else 'http'}://127.0.0.1:{bound}"}) + "\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    try:
        await control(server, stop)
    finally:
        listener.close()


class ApiServer:
    """The server in a subprocess of its own (same interpreter), driven over its stdin/stdout.

    With ``tls=True`` a throwaway CA (``trustme``) signs a certificate for 127.0.0.1; ``ca_bundle``
    is the CA's PEM, for clients to trust (``REQUESTS_CA_BUNDLE``).
    """

    def __init__(self, tls: bool = False) -> None:
        self._files = tempfile.TemporaryDirectory(prefix="flameup-bench-")
        self.ca_bundle: str | None = None
        command = [sys.executable, os.path.abspath(__file__)]
        if tls:
            import trustme

            authority = trustme.CA()
            certificate = authority.issue_cert("127.0.0.1", "localhost")
            self.ca_bundle = os.path.join(self._files.name, "ca.pem")
            chain = os.path.join(self._files.name, "server.pem")
            authority.cert_pem.write_to_path(self.ca_bundle)
            certificate.private_key_and_cert_chain_pem.write_to_path(chain)
            command += ["--cert", chain]
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self._process.stdout is not None
        first = self._process.stdout.readline()
        if not first:
            self.stop()
            raise RuntimeError("the bench API server did not start (see its error above)")
        self.url: str = json.loads(first)["url"]

    def call(self, op: str, **arguments: Any) -> dict[str, Any]:
        process = self._process
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(json.dumps({"op": op, **arguments}) + "\n")
        process.stdin.flush()
        reply: dict[str, Any] = json.loads(process.stdout.readline())
        return reply

    def stop(self) -> None:
        process = self._process
        if process.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self.call("stop")
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()
        self._files.cleanup()

    def __enter__(self) -> ApiServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cert", help="PEM file with the private key and the certificate chain")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.cert))


if __name__ == "__main__":
    main()
