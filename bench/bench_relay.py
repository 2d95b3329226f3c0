"""Relay mode benchmarks (issue 12): track() latency and host CPU per event, and the host SIGKILL trials.

    .venv/bin/python bench/bench_relay.py            # latency, CPU, 50 kill trials: about a minute
    .venv/bin/python bench/bench_relay.py --quick    # fewer calls, 10 trials
    .venv/bin/python bench/bench_relay.py --json     # machine-readable results on stdout
    .venv/bin/python bench/bench_relay.py --fsync    # only track()'s cost per fsync mode
    .venv/bin/python bench/bench_relay.py --host     # only the CPU-bound host: slowdown per mode
    .venv/bin/python bench/bench_relay.py --read-cost REF  # only the relay's CPU to read, vs git REF

The local API runs in its own process (``bench_track.ServerProcess``, or one with an answer delay
for the throughput runs), the relay in its own (as in production, started by the client).
Throughput: one process tracks as fast as it can, then flushes; relay and in-process modes at 0
and 50 ms of API latency. Latency is measured as in ``bench_track.py`` (~20 us of host
work between calls); host CPU per event is this process's CPU time (all its threads) over a run of
calls, minus the same loop without the SDK. The CPU-bound host is a thread computing ~1 ms of pure
Python per event, never sleeping, tracking after each piece of work (as ``bench_delivery.py``'s
host scenario): its slowdown against the same loop with the SDK disabled, relay mode and
in-process, alternated, medians of rounds. The read cost is the relay's time to read what a writer
appended since its last read (a batch of 4,000 records), per record, this tree and a git ref
loaded side by side in one process, one after the other in each of 20 rounds: this machine's
speed drifts between rounds by more than the difference, so the ratio of each pair is what counts.
See docs/relay.md for the results.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Literal

from bench_delivery import calibrate_work, resolve, snapshot
from bench_track import API_KEY, WORKSPACE_ID, ServerProcess, host_work, percentiles, time_track
from sdk_runner import busy_work

from flameup_analytics import Client
from flameup_analytics.relay import relay_pid

TARGETS = {"p50_us": 5, "p99.9_us": 60, "loop_cpu_us_per_event": 10, "host_slowdown_pct": 1}
#: The CPU-bound host's variants, in the order of the first round (later rounds rotate it).
HOST_MODES = ("disabled", "relay", "in_process")
Delivery = Literal["relay", "in_process"]
DELIVERIES: tuple[Delivery, ...] = ("relay", "in_process")
Fsync = Literal["never", "interval", "always"]
FSYNC_MODES: tuple[Fsync, ...] = ("never", "interval", "always")

_KILLED_HOST = textwrap.dedent(
    """
    import os, sys
    import flameup_analytics as fa
    client = fa.Client({api_key!r}, {workspace!r}, host=sys.argv[2], spool_dir=sys.argv[1], delivery="relay")
    for number in range(10**9):
        key = f"{{sys.argv[3]}}-{{number}}"
        client.track(f"user{{number % 100}}", "e", {{"n": number}}, idempotency_key=key)
        os.write(1, key.encode() + b"\\n")
    """
).format(api_key=API_KEY, workspace=WORKSPACE_ID)


def latency_and_cpu(
    url: str, directory: Path, calls: int, delivery: Delivery, fsync: Fsync = "never"
) -> dict[str, Any]:
    # A queue that holds every call: in the in-process mode, the default (10,000) would spill the
    # rest of the timed calls to the spool, and time those writes instead of track().
    client = Client(
        API_KEY,
        WORKSPACE_ID,
        host=url,
        spool_dir=directory,
        delivery=delivery,
        fsync=fsync,
        max_queue_size=2 * calls + 1,
    )
    try:
        # Steady state: the relay (started by the first write) is up before anything is timed.
        client.track("warmup", "e")
        client.flush(timeout=30)
        samples = time_track(client, calls, warmup=min(2000, calls // 5))
        timed_flushed = client.flush(timeout=120)
        # CPU of this process (every thread) per event, until each one is final: in the
        # in-process mode that includes delivering them, in relay mode only the appends.
        track = client.track
        start_cpu = time.process_time()
        for i in range(calls):
            track(f"user_{i % 1000}", "page_viewed", {"page": "/pricing", "plan": "pro", "amount": 19.9})
        track_cpu = time.process_time() - start_cpu
        flushed = client.flush(timeout=120) and timed_flushed
        sdk_cpu = time.process_time() - start_cpu
        stats = client.stats()
    finally:
        client.shutdown()
    _stop_relay(directory)
    return {
        "track_us": percentiles(samples),
        "cpu_us_per_event": sdk_cpu / calls * 1e6,
        # The loop alone: relay mode's appends (issue 12's target), the in-process mode's
        # track() calls and whatever its worker delivered meanwhile.
        "loop_cpu_us_per_event": track_cpu / calls * 1e6,
        "flushed": flushed,
        "stats": {name: getattr(stats, name) for name in ("delivered", "dropped", "spooled", "replayed")},
    }


def fsync_costs(url: str, scratch: Path, calls: int) -> dict[str, Any]:
    """track()'s latency and this process's CPU per event in relay mode, for each fsync mode
    ("always" with at most 5,000 calls: each one waits for the disk)."""
    return {
        mode: latency_and_cpu(
            url, scratch / f"fsync-{mode}", min(calls, 5_000) if mode == "always" else calls, "relay", mode
        )
        for mode in FSYNC_MODES
    }


def cpu_bound_host(url: str, scratch: Path, seconds: float, rounds: int) -> dict[str, Any]:
    """The CPU-bound host's loop per mode, medians of ``rounds``: offered events/s, slowdown
    against the SDK disabled (same round), and whether a flush after it delivered everything."""
    iterations = calibrate_work()
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in HOST_MODES}
    for r in range(rounds):
        order = HOST_MODES[r % len(HOST_MODES) :] + HOST_MODES[: r % len(HOST_MODES)]
        for mode in order:
            runs[mode].append(_host_loop(url, scratch / f"host-{mode}-{r}", mode, iterations, seconds))
    results: dict[str, Any] = {"rounds": rounds, "seconds": seconds, "work_iterations": iterations}
    for mode in HOST_MODES:
        pairs = list(zip(runs[mode], runs["disabled"], strict=True))
        slowdowns = [(run["us_per_event"] / reference["us_per_event"] - 1) * 100 for run, reference in pairs]
        # The loop thread's own CPU time: what the SDK costs it, without the moments another
        # tenant of a shared machine held the CPU (which the wall clock counts).
        cpu_slowdowns = [
            (run["cpu_us_per_event"] / reference["cpu_us_per_event"] - 1) * 100 for run, reference in pairs
        ]
        results[mode] = {
            "offered_per_s": round(statistics.median(run["offered_per_s"] for run in runs[mode])),
            "slowdown_pct": round(statistics.median(slowdowns), 2),
            "slowdowns_pct": [round(value, 2) for value in slowdowns],
            "cpu_slowdown_pct": round(statistics.median(cpu_slowdowns), 2),
            "all_delivered": all(run["flushed"] for run in runs[mode]),
        }
    return results


def _host_loop(url: str, directory: Path, mode: str, iterations: int, seconds: float) -> dict[str, Any]:
    client = Client(
        API_KEY,
        WORKSPACE_ID,
        host=url,
        spool_dir=directory,
        delivery="relay" if mode == "relay" else "in_process",
        disabled=mode == "disabled",
    )
    try:
        client.track("warmup", "e")
        client.flush(timeout=30)  # in relay mode: the relay is up before the loop starts
        track, clock = client.track, time.monotonic
        done = 0
        cpu = time.thread_time()
        started = clock()
        deadline = started + seconds
        while True:
            busy_work(iterations)
            track(f"user_{done % 1000}", "page_viewed", {"page": "/pricing"})
            done += 1
            if clock() >= deadline:
                break
        elapsed = clock() - started
        cpu = time.thread_time() - cpu
        flushed = client.flush(timeout=120)
    finally:
        client.shutdown()
        _stop_relay(directory)
    return {
        "us_per_event": elapsed / done * 1e6,
        "cpu_us_per_event": cpu / done * 1e6,
        "offered_per_s": done / elapsed,
        "flushed": flushed,
    }


def host_work_cpu(calls: int) -> float:
    start = time.process_time()
    for _ in range(calls):
        host_work()
    return (time.process_time() - start) / calls * 1e6


def kill_trials(url: str, directory: Path, trials: int, seed: int = 1) -> dict[str, Any]:
    """Hosts SIGKILLed at random moments while tracking; then: was every returned track() delivered?"""
    randomness = random.Random(seed)
    returned: list[str] = []
    for trial in range(trials):
        host = subprocess.Popen(
            [sys.executable, "-c", _KILLED_HOST, str(directory), url, f"t{trial}"], stdout=subprocess.PIPE
        )
        assert host.stdout is not None
        first = host.stdout.read1(1)  # type: ignore[attr-defined]
        time.sleep(randomness.uniform(0.0, 0.5))
        host.kill()
        output = first + host.stdout.read()
        host.wait()
        returned += [line.decode() for line in output.split(b"\n")[:-1]]
    # A host killed before its first check started no relay: run one as a service would.
    service = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flameup_analytics",
            "relay",
            "--dir",
            str(directory),
            "--exit-when-idle",
            "1",
        ],
        env=dict(os.environ, FLAMEUP_API_KEY=API_KEY, FLAMEUP_WORKSPACE_ID=WORKSPACE_ID, FLAMEUP_HOST=url),
        stderr=subprocess.DEVNULL,
    )
    started = time.monotonic()
    deadline = started + 300
    while _segments(directory) and time.monotonic() < deadline:
        time.sleep(0.1)
    drained_in = time.monotonic() - started
    pid = relay_pid(directory)
    if pid:
        os.kill(pid, signal.SIGTERM)
    service.wait(30)
    return {
        "trials": trials,
        "drained_in_s": round(drained_in, 1),
        "returned": len(returned),
        "left_in_directory": _segments(directory),
    }


_SERVER_WITH_LATENCY = textwrap.dedent(
    """
    import sys
    from flameup_analytics.testing import LocalServer
    server = LocalServer({api_key!r}, {workspace!r}, validate=False, latency=float(sys.argv[1])).start()
    print(server.url, flush=True)
    sys.stdin.read()
    """
).format(api_key=API_KEY, workspace=WORKSPACE_ID)


def throughput(directory: Path, events: int, latency: float, delivery: Delivery) -> float:
    """Events per second from the first track() to a flush() that returned True, one process
    tracking as fast as it can, against a local API answering after ``latency`` seconds."""
    server = subprocess.Popen(
        [sys.executable, "-c", _SERVER_WITH_LATENCY, str(latency)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None and server.stdin is not None
    url = server.stdout.readline().strip()
    client = Client(
        API_KEY, WORKSPACE_ID, host=url, spool_dir=directory, delivery=delivery, max_queue_size=10 * events
    )
    try:
        client.track("warmup", "e")
        client.flush(timeout=30)
        started = time.monotonic()
        for i in range(events):
            client.track(f"user_{i % 1000}", "page_viewed", {"page": "/pricing"})
        flushed = client.flush(timeout=300)
        elapsed = time.monotonic() - started
    finally:
        client.shutdown()
        _stop_relay(directory)
        server.stdin.close()
        server.wait(30)
    return events / elapsed if flushed else 0.0


def read_cost(baseline: str, records: int = 4_000, rounds: int = 20) -> dict[str, Any]:
    """µs per record for a relay pass to read what a writer appended since its last read: this
    tree and ``baseline`` (a git ref, imported as ``flameup_baseline``), paired in each round."""
    import importlib

    with tempfile.TemporaryDirectory(prefix="flameup-read-cost-") as scratch:
        snapshot(baseline, scratch)
        os.rename(os.path.join(scratch, "flameup_analytics"), os.path.join(scratch, "flameup_baseline"))
        sys.path.insert(0, scratch)
        trees = {
            name: {
                part: importlib.import_module(f"{package}.{part}")
                for part in ("message", "relay", "relay_process", "spool")
            }
            for name, package in (("tree", "flameup_analytics"), ("baseline", "flameup_baseline"))
        }
        sys.path.remove(scratch)

    def once(modules: dict[str, Any]) -> float:
        message = modules["message"]
        appended = []
        for number in range(records):
            user = f"user_{number % 1000}"
            _, body = message.track_body(
                user, "page_viewed", {"page": "/pricing"}, None, 32 * 1024, message.STANDARD
            )
            appended.append(message.Message("track", user, body, f"key-{number}"))
        with tempfile.TemporaryDirectory() as directory:
            writer = modules["relay"].RelayWriter(
                modules["spool"].DiskSpool(Path(directory)), {}, start_relay=False
            )
            writer.append(appended[0])
            claims = modules["relay_process"].RelaySpool(Path(directory), read_interval=0.0).claim()
            first = next(claims)
            for queued in appended[1:]:
                writer.append(queued)
            started = time.perf_counter()
            batch = next(claims)
            elapsed = time.perf_counter() - started
            assert len(batch.records) == records - 1
            batch.release()
            first.release()
            writer.close()
        return elapsed / (records - 1) * 1e6

    pairs = [(once(trees["tree"]), once(trees["baseline"])) for _ in range(rounds)]
    ratios = [tree / base for tree, base in pairs]
    return {
        "baseline": resolve(baseline),
        "tree_us_per_record": round(statistics.median(tree for tree, _ in pairs), 2),
        "baseline_us_per_record": round(statistics.median(base for _, base in pairs), 2),
        "ratio_median": round(statistics.median(ratios), 2),
        "ratio_quartiles": [round(q, 2) for q in statistics.quantiles(ratios, n=4)[::2]],
    }


def _stop_relay(directory: Path) -> None:
    """SIGTERM the directory's relay and wait until it is gone (it writes its status as it ends:
    the directory must not be removed under it)."""
    pid = relay_pid(directory)
    if pid:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while relay_pid(directory) is not None and time.monotonic() < deadline:
        time.sleep(0.05)


def _segments(directory: Path) -> int:
    return sum(1 for name in os.listdir(directory) if name.endswith(".seg"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--fsync", action="store_true", help="only track()'s cost per fsync mode")
    parser.add_argument("--host", action="store_true", help="only the CPU-bound host")
    parser.add_argument("--read-cost", metavar="REF", help="only the relay's cost to read, beside git REF")
    args = parser.parse_args(argv)
    if args.read_cost:
        cost = read_cost(args.read_cost)
        print(
            json.dumps(cost, indent=2)
            if args.json
            else f"relay read, us per record: {cost['tree_us_per_record']} (this tree), "
            f"{cost['baseline_us_per_record']} ({args.read_cost}); ratio of pairs {cost['ratio_median']} "
            f"(quartiles {cost['ratio_quartiles'][0]}-{cost['ratio_quartiles'][1]})"
        )
        return 0
    calls, trials, events = (20_000, 10, 5_000) if args.quick else (100_000, 50, 20_000)
    host_seconds, host_rounds = (2.0, 1) if args.quick else (4.0, 7)
    if args.host:
        with ServerProcess() as server, tempfile.TemporaryDirectory() as scratch:
            host = cpu_bound_host(server.url, Path(scratch), host_seconds, host_rounds)
        print(json.dumps(host, indent=2) if args.json else _host_line(host))
        return 0
    if args.fsync:
        with ServerProcess() as server, tempfile.TemporaryDirectory() as scratch:
            costs = fsync_costs(server.url, Path(scratch), calls)
        if args.json:
            print(json.dumps(costs, indent=2))
            return 0
        for mode, cost in costs.items():
            track = cost["track_us"]
            print(
                f"fsync={mode}: track() p50 {track['p50']:.1f} us, p99 {track['p99']:.1f} us, "
                f"p99.9 {track['p99.9']:.1f} us; host CPU per event {cost['loop_cpu_us_per_event']:.1f} us "
                f"in the loop, {cost['cpu_us_per_event']:.1f} us until flushed"
            )
        return 0
    with ServerProcess() as server, tempfile.TemporaryDirectory() as scratch:
        results: dict[str, Any] = latency_and_cpu(server.url, Path(scratch) / "latency", calls, "relay")
        # The default mode, same loop and server, for comparison on this (shared) machine.
        results["in_process"] = latency_and_cpu(server.url, Path(scratch) / "in-process", calls, "in_process")
        results["kills"] = kill_trials(server.url, Path(scratch) / "kills", trials)
        results["host"] = cpu_bound_host(server.url, Path(scratch), host_seconds, host_rounds)
        results["throughput"] = {
            f"{mode} {latency * 1000:.0f} ms": round(
                throughput(Path(scratch) / f"t-{mode}-{latency}", events, latency, mode)
            )
            for latency in (0.0, 0.05)
            for mode in DELIVERIES
        }
        report = server.stop()
    results["server_accepted"] = report.get("accepted")
    results["targets"] = TARGETS
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    track = results["track_us"]
    print(
        f"track() in relay mode: p50 {track['p50']:.1f} us, p99.9 {track['p99.9']:.1f} us, "
        f"max {track['max']:.0f} us"
    )
    print(
        f"host CPU per event: {results['loop_cpu_us_per_event']:.1f} us in the loop, "
        f"{results['cpu_us_per_event']:.1f} us until flushed; flushed: {results['flushed']}"
    )
    default = results["in_process"]
    print(
        f"in-process mode, same run: p50 {default['track_us']['p50']:.1f} us, "
        f"p99.9 {default['track_us']['p99.9']:.1f} us, "
        f"host CPU per event {default['cpu_us_per_event']:.1f} us"
    )
    print(
        "delivered events/s (0 = flush failed): "
        + ", ".join(f"{name} {rate}" for name, rate in results["throughput"].items())
    )
    print(_host_line(results["host"]))
    kills = results["kills"]
    print(
        f"{kills['trials']} hosts SIGKILLed: {kills['returned']} track() returned; "
        f"segments left undelivered: {kills['left_in_directory']}"
    )
    return 0


def _host_line(host: dict[str, Any]) -> str:
    return "CPU-bound host (~1 ms of work per event), slowdown against the SDK disabled: " + ", ".join(
        f"{mode} {host[mode]['slowdown_pct']:.1f} % (its thread's CPU: "
        f"{host[mode]['cpu_slowdown_pct']:.1f} %) at {host[mode]['offered_per_s']} events/s"
        + ("" if host[mode]["all_delivered"] else " (not all delivered)")
        for mode in ("relay", "in_process")
    )


if __name__ == "__main__":
    sys.exit(main())
