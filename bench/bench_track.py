"""Benchmarks for flameup_analytics: track() latency, memory per queued event, delivered throughput.

    .venv/bin/python bench/bench_track.py            # full run, about 1.5-2 minutes
    .venv/bin/python bench/bench_track.py --quick    # short run, under 30 s
    .venv/bin/python bench/bench_track.py --json     # machine-readable results on stdout

Standard library plus the SDK only. The local API (``flameup_analytics.testing.LocalServer``) always
runs in a separate process, so its CPU work does not compete for this process's GIL. See
docs/benchmarks.md for what each figure means and the results.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import multiprocessing
import os
import platform
import statistics
import sys
import threading
import time
import tracemalloc
import urllib.parse
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import flameup_analytics
from flameup_analytics import Client
from flameup_analytics.client import USER_AGENT

API_KEY = "bench_key"
WORKSPACE_ID = "ws_bench"
#: Nothing listens on the discard port: a client pointed here never delivers anything.
UNREACHABLE = "http://127.0.0.1:9"
#: Host work between two calls, as in PEERS.md's measurements.
HOST_WORK_NS = 20_000
USERS = [f"user_{i}" for i in range(1000)]
PERCENTILES = (("p50", 0.50), ("p99", 0.99), ("p99.9", 0.999), ("max", 1.0))

TARGETS = {"p50_us": 5, "p99.9_us": 100, "bytes_per_event": 300, "events_per_s": 3000}
PEERS = {
    "Segment 2.4": {"p50_us": 27, "p99.9_us": 324, "max_us": 11_000, "bytes_per_event": 1140},
    "PostHog 7.91": {"p50_us": 52, "p99.9_us": 221, "max_us": 4_600, "bytes_per_event": 1064},
}

FULL = {
    "latency_calls": 50_000,
    "latency_rounds": 5,
    "memory_events": 100_000,
    "memory_rounds": 3,
    "throughput_events": 20_000,
    "throughput_rounds": 3,
}
QUICK = {
    "latency_calls": 10_000,
    "latency_rounds": 3,
    "memory_events": 20_000,
    "memory_rounds": 3,
    "throughput_events": 3_000,
    "throughput_rounds": 1,
}
THROUGHPUT_CONFIGS = ((4, 100), (8, 100))  # (max_concurrency, flush_at)


# --- the local API in its own process ----------------------------------------------------------


def _serve(conn: Connection, api_key: str, workspace_id: str) -> None:
    """Child process: run a LocalServer until told to stop (or the parent goes away)."""
    from flameup_analytics.testing import LocalServer

    # Without OpenAPI validation (about 1 ms a request): the benchmark measures the SDK, and
    # the same server validates everything the test suite sends.
    server = LocalServer(api_key, workspace_id, validate=False).start()
    try:
        conn.send(server.url)
        conn.recv()
    except (EOFError, OSError):
        pass
    finally:
        server.stop()
    with contextlib.suppress(OSError):
        conn.send({"accepted": len(server.accepted), "server_cpu_s": time.process_time()})


class ServerProcess:
    """A LocalServer in a spawned process; ``stop()`` ends it and reports what it accepted."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process: Any = context.Process(
            target=_serve, args=(child, API_KEY, WORKSPACE_ID), name="flameup-bench-server", daemon=True
        )
        self._process.start()
        child.close()
        self.report: dict[str, Any] = {}
        try:
            if not self._conn.poll(60):
                raise EOFError
            self.url: str = self._conn.recv()
        except (EOFError, OSError):
            self.stop()
            raise RuntimeError("the local server process did not start (see its error above)") from None

    def stop(self) -> dict[str, Any]:
        process, self._process = self._process, None
        if process is None:
            return self.report
        try:
            self._conn.send("stop")
            if self._conn.poll(15):
                self.report = self._conn.recv()
        except (EOFError, OSError):
            pass
        process.join(10)
        if process.is_alive():
            process.terminate()
            process.join(5)
        if process.is_alive():
            process.kill()
            process.join()
        self._conn.close()
        return self.report

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- helpers -------------------------------------------------------------------------------------


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    """Nearest-rank percentiles, in microseconds."""
    ordered = sorted(samples_ns)
    n = len(ordered)
    return {name: ordered[min(n - 1, max(0, math.ceil(q * n) - 1))] / 1000 for name, q in PERCENTILES}


def median_of(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}


def wait_for_threads(count: int, timeout: float = 10.0) -> None:
    """Let a shut-down client's threads end, so they do not run into the next measurement."""
    deadline = time.monotonic() + timeout
    while threading.active_count() > count and time.monotonic() < deadline:
        time.sleep(0.01)


def shut(client: Client, thread_count: int) -> None:
    client.shutdown(timeout=0)  # whatever is still queued is dropped: it is not being measured
    wait_for_threads(thread_count)


# --- 1 + 2: latency in the caller's thread ------------------------------------------------------


def host_work() -> None:
    """What the application does between two calls: ~20 us of CPU, outside the timed part."""
    end = time.perf_counter_ns() + HOST_WORK_NS
    while time.perf_counter_ns() < end:
        pass


def time_track(client: Client, calls: int, warmup: int) -> list[int]:
    """The duration of each track() call, with ~20 us of host work between calls."""
    clock = time.perf_counter_ns
    track = client.track
    samples = [0] * calls
    for i in range(-warmup, calls):
        host_work()
        start = clock()
        track(f"user_{i % 1000}", "page_viewed", {"page": "/pricing", "plan": "pro", "amount": 19.9})
        stop = clock()
        if i >= 0:
            samples[i] = stop - start
    return samples


def time_baseline(calls: int, warmup: int) -> list[int]:
    """The same loop doing only what any SDK must minimally do: encode the event, append it."""
    clock = time.perf_counter_ns
    dumps = json.dumps
    append = deque[str]().append
    samples = [0] * calls
    for i in range(-warmup, calls):
        host_work()
        start = clock()
        append(
            dumps(
                {
                    "external_id": f"user_{i % 1000}",
                    "event": "page_viewed",
                    "parameters": {"page": "/pricing", "plan": "pro", "amount": 19.9},
                }
            )
        )
        stop = clock()
        if i >= 0:
            samples[i] = stop - start
    return samples


def latency_round(calls: int, warmup: int, order: int) -> dict[str, Any]:
    threads = threading.active_count()
    result: dict[str, Any] = {}

    def baseline() -> None:
        gc.collect()
        result["baseline"] = percentiles(time_baseline(calls, warmup))

    def idle() -> None:
        # The worker exists but has nothing to do: track()'s own cost, without GIL contention.
        client = Client(
            API_KEY,
            WORKSPACE_ID,
            host=UNREACHABLE,
            flush_at=calls + warmup + 10,
            flush_interval=3600,
            max_queue_size=calls + warmup + 10,
            spool_dir=False,  # what is left at the end is thrown away, not written to disk
        )
        try:
            gc.collect()
            result["idle"] = percentiles(time_track(client, calls, warmup))
        finally:
            shut(client, threads)

    def busy() -> None:
        # The queue is sized so no call is dropped: every call takes the normal path while the
        # worker delivers, flat out, to the server process.
        with ServerProcess() as server:
            client = Client(
                API_KEY, WORKSPACE_ID, host=server.url, max_queue_size=calls + warmup + 10, spool_dir=False
            )
            try:
                gc.collect()
                started = time.perf_counter()
                result["sdk"] = percentiles(time_track(client, calls, warmup))
                elapsed = time.perf_counter() - started
                stats = client.stats()
            finally:
                shut(client, threads)
        result["delivered_during_loop"] = stats.delivered
        result["delivered_per_s_during_loop"] = round(stats.delivered / elapsed)
        result["dropped_during_loop"] = stats.dropped

    steps: list[Callable[[], None]] = [baseline, idle, busy]
    steps = steps[order % 3 :] + steps[: order % 3]  # rotate, so no variant always runs first
    for step in steps:
        step()
    return result


# --- 3: memory per queued event --------------------------------------------------------------------


def memory_round(events: int) -> dict[str, float]:
    threads = threading.active_count()
    client = Client(
        API_KEY,
        WORKSPACE_ID,
        host=UNREACHABLE,
        flush_at=events + 10,
        flush_interval=3600,
        max_queue_size=events + 10,
        spool_dir=False,
    )
    try:
        # The first call starts the worker thread: a one-off cost, not a per-event one.
        client.track(USERS[0], "page_viewed", {"page": "/pricing", "plan": "pro", "amount": 19.9})
        track = client.track
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for i in range(events):
                track(USERS[i % 1000], "page_viewed", {"page": "/pricing", "plan": "pro", "amount": 19.9})
            gc.collect()
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        queued = client.stats().queued
    finally:
        shut(client, threads)
    if queued != events + 1:
        raise RuntimeError(f"expected {events + 1} queued events, found {queued}")
    return {"bytes_per_event": (after - before) / events}


# --- 4: delivered throughput ---------------------------------------------------------------------


def throughput_round(events: int, max_concurrency: int, flush_at: int) -> dict[str, Any]:
    threads = threading.active_count()
    with ServerProcess() as server:
        client = Client(
            API_KEY,
            WORKSPACE_ID,
            host=server.url,
            flush_at=flush_at,
            max_concurrency=max_concurrency,
            max_queue_size=events + 10,
            spool_dir=False,
        )
        try:
            track = client.track
            gc.collect()
            cpu = time.process_time()
            started = time.perf_counter()
            for i in range(events):
                track(USERS[i % 1000], "page_viewed", {"page": "/pricing", "plan": "pro", "amount": 19.9})
            enqueued = time.perf_counter()
            flushed = client.flush(timeout=120)
            finished = time.perf_counter()
            cpu = time.process_time() - cpu
            stats = client.stats()
        finally:
            shut(client, threads)
        report = server.stop()
    elapsed = finished - started
    return {
        "events_per_s": events / elapsed,
        "seconds": elapsed,
        "enqueue_seconds": enqueued - started,
        "flushed": flushed,
        "delivered": stats.delivered,
        "accepted_by_server": report.get("accepted"),
        "client_cpu_us_per_event": cpu / events * 1e6,
        "server_cpu_us_per_event": report.get("server_cpu_s", float("nan")) / events * 1e6,
    }


def raw_throughput_round(events: int) -> dict[str, Any]:
    """Baseline: one thread, one keep-alive ``http.client`` connection, one POST per event, no
    queue and no worker: roughly the most a stdlib Python client gets from this server here."""
    import http.client

    with ServerProcess() as server:
        url = urllib.parse.urlsplit(server.url)
        conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=10)
        headers = {
            "Authorization": f"Bearer {API_KEY}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        dumps = json.dumps
        failures = 0
        try:
            gc.collect()
            cpu = time.process_time()
            started = time.perf_counter()
            for i in range(events):
                body = dumps(
                    {
                        "external_id": USERS[i % 1000],
                        "event": "page_viewed",
                        "parameters": {"page": "/pricing", "plan": "pro", "amount": 19.9},
                    },
                    separators=(",", ":"),
                ).encode()
                conn.request("POST", "/api/v1/track", body, {**headers, "Idempotency-Key": f"bench-{i:x}"})
                response = conn.getresponse()
                response.read()
                failures += response.status != 200
            elapsed = time.perf_counter() - started
            cpu = time.process_time() - cpu
        finally:
            conn.close()
        report = server.stop()
    return {
        "events_per_s": events / elapsed,
        "seconds": elapsed,
        "failures": failures,
        "accepted_by_server": report.get("accepted"),
        "client_cpu_us_per_event": cpu / events * 1e6,
        "server_cpu_us_per_event": report.get("server_cpu_s", float("nan")) / events * 1e6,
    }


# --- running and reporting -------------------------------------------------------------------------


def run(config: dict[str, int], progress: Callable[[str], None]) -> dict[str, Any]:
    started = time.perf_counter()
    machine_info = machine()
    calls = config["latency_calls"]
    warmup = max(200, calls // 50)
    rounds = []
    for r in range(config["latency_rounds"]):
        progress(f"latency round {r + 1}/{config['latency_rounds']} ({calls:,} calls per variant)")
        rounds.append(latency_round(calls, warmup, r))
    latency: dict[str, Any] = {
        variant: {"median": median_of([r[variant] for r in rounds]), "rounds": [r[variant] for r in rounds]}
        for variant in ("sdk", "baseline", "idle")
    }
    latency["ratio_to_baseline"] = {
        key: latency["sdk"]["median"][key] / latency["baseline"]["median"][key] for key, _ in PERCENTILES
    }
    latency["idle_ratio_to_baseline"] = {
        key: latency["idle"]["median"][key] / latency["baseline"]["median"][key] for key, _ in PERCENTILES
    }
    latency["delivered_per_s_during_loop"] = [r["delivered_per_s_during_loop"] for r in rounds]
    latency["dropped_during_loop"] = sum(r["dropped_during_loop"] for r in rounds)

    memory_rounds = []
    for r in range(config["memory_rounds"]):
        progress(f"memory round {r + 1}/{config['memory_rounds']} ({config['memory_events']:,} events)")
        memory_rounds.append(memory_round(config["memory_events"])["bytes_per_event"])
    memory = {"bytes_per_event": statistics.median(memory_rounds), "rounds": memory_rounds}

    throughput = []
    for max_concurrency, flush_at in THROUGHPUT_CONFIGS:
        tp_rounds = []
        for r in range(config["throughput_rounds"]):
            progress(
                f"throughput max_concurrency={max_concurrency} flush_at={flush_at} "
                f"round {r + 1}/{config['throughput_rounds']} ({config['throughput_events']:,} events)"
            )
            tp_rounds.append(throughput_round(config["throughput_events"], max_concurrency, flush_at))
        throughput.append(
            {
                "max_concurrency": max_concurrency,
                "flush_at": flush_at,
                "events_per_s": statistics.median(r["events_per_s"] for r in tp_rounds),
                "client_cpu_us_per_event": statistics.median(r["client_cpu_us_per_event"] for r in tp_rounds),
                "server_cpu_us_per_event": statistics.median(r["server_cpu_us_per_event"] for r in tp_rounds),
                "all_delivered": all(
                    r["flushed"] and r["delivered"] == config["throughput_events"] for r in tp_rounds
                ),
                "rounds": tp_rounds,
            }
        )
    raw_rounds = []
    for r in range(config["throughput_rounds"]):
        progress(
            f"throughput baseline (http.client, one connection) round {r + 1}/{config['throughput_rounds']}"
        )
        raw_rounds.append(raw_throughput_round(config["throughput_events"]))
    raw = {
        "events_per_s": statistics.median(r["events_per_s"] for r in raw_rounds),
        "client_cpu_us_per_event": statistics.median(r["client_cpu_us_per_event"] for r in raw_rounds),
        "server_cpu_us_per_event": statistics.median(r["server_cpu_us_per_event"] for r in raw_rounds),
        "all_delivered": all(
            r["failures"] == 0 and r["accepted_by_server"] == config["throughput_events"] for r in raw_rounds
        ),
        "rounds": raw_rounds,
    }
    for row in throughput:
        row["ratio_to_baseline"] = row["events_per_s"] / raw["events_per_s"]
    machine_info["load_average_at_end"] = [round(x, 2) for x in _load()]
    return {
        "sdk_version": flameup_analytics.__version__,
        "sdk_path": os.path.dirname(flameup_analytics.__file__),
        "machine": machine_info,
        "config": {**config, "latency_warmup_calls": warmup, "host_work_ns": HOST_WORK_NS},
        "latency_us": latency,
        "memory": memory,
        "throughput": throughput,
        "throughput_baseline": raw,
        "targets": TARGETS,
        "peers": PEERS,
        "wall_seconds": time.perf_counter() - started,
    }


def _load() -> tuple[float, ...]:
    try:
        return os.getloadavg()
    except OSError:  # pragma: no cover - platforms without it
        return (float("nan"),) * 3


def machine() -> dict[str, Any]:
    load = _load()
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "switch_interval_s": sys.getswitchinterval(),
        "load_average_at_start": [round(x, 2) for x in load],
    }


def table(results: dict[str, Any]) -> str:
    lat = results["latency_us"]
    m = results["machine"]
    c = results["config"]
    seg, ph = PEERS["Segment 2.4"], PEERS["PostHog 7.91"]
    lines = [
        f"flameup_analytics {results['sdk_version']}: Python {m['python']}, {m['cpus']} CPUs, "
        f"1-min load average {m['load_average_at_start'][0]} at start, "
        f"{m['load_average_at_end'][0]} at end, {results['wall_seconds']:.0f} s",
        f"SDK imported from {results['sdk_path']}",
        "",
        f"track() in the caller's thread, us (median of {c['latency_rounds']} rounds x "
        f"{c['latency_calls']:,} calls, ~{c['host_work_ns'] // 1000} us host work between calls)",
        f"{'':7}{'busy':>9}{'baseline':>10}{'ratio':>8}{'idle':>9}{'ratio':>8}"
        f"{'target':>9}{'Segment':>9}{'PostHog':>9}",
    ]
    targets = {"p50": TARGETS["p50_us"], "p99.9": TARGETS["p99.9_us"]}
    for key, _ in PERCENTILES:
        peer_key = f"{key}_us"
        target = f"<= {targets[key]}" if key in targets else "-"
        lines.append(
            f"{key:7}{lat['sdk']['median'][key]:9.1f}{lat['baseline']['median'][key]:10.1f}"
            f"{lat['ratio_to_baseline'][key]:7.1f}x{lat['idle']['median'][key]:9.1f}"
            f"{lat['idle_ratio_to_baseline'][key]:7.1f}x{target:>9}"
            f"{seg.get(peer_key, '-'):>9}{ph.get(peer_key, '-'):>9}"
        )
    lines += [
        "busy: worker delivering to the local server process; idle: worker has nothing to send;",
        "baseline: json.dumps(event) + deque.append in the same loop.",
        "per-round busy p50:   " + ", ".join(f"{r['p50']:.1f}" for r in lat["sdk"]["rounds"]),
        "per-round busy p99.9: " + ", ".join(f"{r['p99.9']:.1f}" for r in lat["sdk"]["rounds"]),
        "worker delivered during the busy loops: "
        + ", ".join(f"{x:,}" for x in lat["delivered_per_s_during_loop"])
        + " events/s",
        "",
        f"memory per queued event (median of {c['memory_rounds']} x {c['memory_events']:,} events): "
        f"{results['memory']['bytes_per_event']:.0f} B   (target <= {TARGETS['bytes_per_event']}; "
        f"Segment {seg['bytes_per_event']:,}, PostHog {ph['bytes_per_event']:,})",
        "",
        f"delivered throughput (median of {c['throughput_rounds']} x {c['throughput_events']:,} events, "
        f"target >= {TARGETS['events_per_s']:,}/s):",
    ]
    raw = results["throughput_baseline"]
    rows = [
        (f"max_concurrency={row['max_concurrency']} flush_at={row['flush_at']}", row)
        for row in results["throughput"]
    ]
    rows.append(("baseline: http.client, 1 connection", raw))
    for label, row in rows:
        ratio = f"{row['ratio_to_baseline']:.2f}x" if "ratio_to_baseline" in row else ""
        lines.append(
            f"  {label:38}{row['events_per_s']:7,.0f} events/s {ratio:>6}  "
            f"(client CPU {row['client_cpu_us_per_event']:.0f} us/event, "
            f"server CPU {row['server_cpu_us_per_event']:.0f} us/event"
            + ("" if row["all_delivered"] else ", NOT ALL DELIVERED")
            + ")"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a short run (fewer calls and rounds)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    # Warnings about the events deliberately dropped at the end of each round are noise here.
    logging.getLogger("flameup_analytics").setLevel(logging.ERROR)
    config = dict(QUICK if args.quick else FULL)

    def progress(message: str) -> None:
        print(f"... {message}", file=sys.stderr, flush=True)

    results = run(config, progress)
    results["quick"] = args.quick
    print(json.dumps(results, indent=2) if args.json else table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
