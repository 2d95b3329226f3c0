"""Delivery benchmarks (issue 9): events/s against an API with latency, CPU per event, track() under
load, a CPU-bound host, bursts, a 429 storm, import time; the SDK, a baseline version of it and the
peers (Segment, PostHog) side by side against the same local server.

    .venv/bin/python bench/bench_delivery.py                 # full run, ~6.5 min with the baseline and peers
    .venv/bin/python bench/bench_delivery.py --quick         # ~1.5 min, one round of each, smaller counts
    .venv/bin/python bench/bench_delivery.py --json          # the results as JSON on stdout
    .venv/bin/python bench/bench_delivery.py --tls           # throughput vs delay over TLS as well

Every client runs in a fresh process (``sdk_runner.py``) against one ``api_server.py`` process; the
peers from ``bench/.peers-venv`` (created on first use: pip, never project dependencies), which also
holds matplotlib for the charts. Results and charts go to ``bench/results/`` (``--out``). See
bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import report  # noqa: E402
from api_server import ApiServer  # noqa: E402
from sdk_runner import WARMUP_EVENTS, busy_work  # noqa: E402

RUNNER = os.path.join(HERE, "sdk_runner.py")
CHARTS = os.path.join(HERE, "charts.py")
PEERS_VENV = os.path.join(HERE, ".peers-venv")
PEERS_PYTHON = os.path.join(PEERS_VENV, "bin", "python")
PEER_PACKAGES = ("segment-analytics-python==2.4.0", "posthog==7.91.1", "matplotlib>=3.8")
#: The SDK before issue 9's rewrite: the default baseline, measured side by side with the tree.
BASELINE_COMMIT = "4223506df0a5aa47fd2a070c450b5c005a1d0010"
IMPORTS = {"flameup": "flameup_analytics", "segment": "segment.analytics", "posthog": "posthog"}

#: Issue 9's targets (default options, 2-core machine, medians).
TARGETS = {
    "events_per_s_50ms_uniform": 2000,
    "events_per_s_50ms_hot_user": 1000,
    "events_per_s_0ms": 4000,
    "client_cpu_us_per_event_0ms": 45,
    "host_delivered_per_s": 950,
    "host_slowdown_pct": 5,
    "track_p50_us": 3,
    "track_p99.9_us": 100,
    "import_ms": 30,
    "storm_in_flight_after_1s": 2,
}

FULL: dict[str, Any] = {
    "rounds": 3,
    # per-request delay (s) -> events per round; a round ends when all are delivered or at the cap
    "delays": {0.0: 4000, 0.02: 4000, 0.05: 4000, 0.1: 2000},
    "cap_s": 5.0,
    "hot_events": 4000,
    "burst": {"size": 2000, "count": 4, "cap": 4.0},
    "host_seconds": 4.0,
    "storm": {"rate": 200, "seconds": 8.0, "storm_from": 2.0, "storm_for": 3.0, "cap": 20.0},
    "latency": {"rate": 1000, "seconds": 3.0, "reference_seconds": 1.0},
    "imports": 15,
    "floor_requests": 3000,
}
QUICK: dict[str, Any] = {
    "rounds": 1,
    "delays": {0.0: 2000, 0.02: 2000, 0.05: 2000, 0.1: 1000},
    "cap_s": 3.0,
    "hot_events": 2000,
    "burst": {"size": 2000, "count": 2, "cap": 3.0},
    "host_seconds": 2.0,
    "storm": {"rate": 200, "seconds": 7.0, "storm_from": 2.0, "storm_for": 3.0, "cap": 15.0},
    "latency": {"rate": 1000, "seconds": 2.0, "reference_seconds": 0.5},
    "imports": 5,
    "floor_requests": 1500,
}
SCENARIOS = ("throughput", "hot_user", "bursts", "host", "storm", "latency", "floors", "imports")


@dataclass(frozen=True)
class Contender:
    """One client under test: which adapter, which interpreter, which copy of the SDK."""

    name: str
    sdk: str
    label: str
    python: str
    pythonpath: str | None = None

    @property
    def is_peer(self) -> bool:
        return self.sdk != "flameup"

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        # Set on this machine: without cached bytecode every import compiles its modules again.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        if self.pythonpath:
            env["PYTHONPATH"] = self.pythonpath
        return env


Progress = Callable[[str], None]


class Bench:
    def __init__(self, config: dict[str, Any], contenders: list[Contender], progress: Progress) -> None:
        self.config = config
        self.contenders = contenders
        self.progress = progress
        self.scratch = tempfile.gettempdir()

    def ours(self) -> list[Contender]:
        return [c for c in self.contenders if not c.is_peer]

    def run(self, contender: Contender, server: ApiServer, spec: dict[str, Any]) -> dict[str, Any]:
        """One scenario in a fresh process of ``contender``; what it printed, parsed."""
        env = contender.environment()
        if server.ca_bundle:
            env["REQUESTS_CA_BUNDLE"] = server.ca_bundle
        spec = {"sdk": contender.sdk, "url": server.url, **spec}
        done = subprocess.run(
            [contender.python, RUNNER, json.dumps(spec)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"{contender.name} {spec['scenario']} failed:\n{done.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(lines[-1])
        if contender.pythonpath and not result.get("sdk_path", "").startswith(contender.pythonpath):
            raise RuntimeError(f"{contender.name} ran {result.get('sdk_path')}, not {contender.pythonpath}")
        return result

    def rounds(
        self, contenders: Sequence[Contender], measure: Callable[[Contender, int], dict[str, Any]]
    ) -> dict[str, list[dict[str, Any]]]:
        """``measure`` for each contender, ``rounds`` times, the order rotated each round."""
        found: dict[str, list[dict[str, Any]]] = {c.name: [] for c in contenders}
        for r in range(self.config["rounds"]):
            order = list(contenders[r % len(contenders) :]) + list(contenders[: r % len(contenders)])
            for contender in order:
                found[contender.name].append(measure(contender, r))
        return found


# --- what the server saw -------------------------------------------------------------------------


def delivery(result: dict[str, Any], report: dict[str, Any], cap: float | None = None) -> dict[str, Any]:
    """Events/s from the first track() (``t0``) until the last offered event was accepted, or, when
    not all were, the events accepted by ``t0 + cap`` (or ``t1``) over that time."""
    t0, offered = result["t0"], result["offered"]
    end = t0 + cap if cap is not None else result["t1"]
    total = 0
    reached_at = None
    for when, events in report["accepted"]:
        if when < t0:
            continue
        if when > end and reached_at is None:
            break
        total += events
        if total >= offered and reached_at is None:
            reached_at = when
            break
    complete = reached_at is not None
    seconds = (reached_at if complete else end) - t0
    delivered = min(total, offered)
    return {
        "events_per_s": delivered / seconds if seconds > 0 else float("nan"),
        "delivered": delivered,
        "offered": offered,
        "complete": complete,
        "seconds": seconds,
        "client_cpu_us_per_event": result["cpu_s"] / delivered * 1e6
        if delivered and "cpu_s" in result
        else None,
        "server_cpu_us_per_request": report["cpu_us_per_request"],
        "requests": report["requests"],
        "duplicate_keys": report["duplicate_keys"],
        "unknown_paths": report["unknown_paths"],
    }


def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each numeric field across rounds; booleans become "all rounds"."""
    out: dict[str, Any] = {}
    for key, first in rows[0].items():
        values = [row[key] for row in rows if row.get(key) is not None]
        if isinstance(first, bool):
            out[key] = all(values)
        elif isinstance(first, (int, float)) and values:
            out[key] = statistics.median(values)
    return out


def summarize(found: dict[str, list[dict[str, Any]]], key: str) -> dict[str, Any]:
    """Medians per contender, and each one's ratio (on ``key``) to the baseline and to the SDK."""
    medians = {name: median_row(rows) for name, rows in found.items()}
    out: dict[str, Any] = {"median": medians, "rounds": found}
    for reference in ("baseline", "flameup"):
        if reference in medians and key in medians[reference] and medians[reference][key]:
            out[f"ratio_to_{reference}"] = {
                name: row[key] / medians[reference][key] for name, row in medians.items() if key in row
            }
    return out


def in_window(series: list[list[float]], start: float, end: float) -> list[float]:
    return [value for when, value in series if start <= when < end]


# --- scenarios -----------------------------------------------------------------------------------


def throughput(bench: Bench, server: ApiServer, delays: dict[float, int], users: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cap = bench.config["cap_s"]
    contenders = bench.contenders
    for delay, events in delays.items():
        bench.progress(f"throughput, {users} users, {delay * 1000:.0f} ms per request, {events:,} events")

        def measure(
            contender: Contender, _: int, delay: float = delay, events: int = events
        ) -> dict[str, Any]:
            server.call("configure", delay=delay)
            server.call("reset")
            spec = {"scenario": "throughput", "events": events, "cap": cap, "users": users}
            result = bench.run(contender, server, spec)
            return delivery(result, server.call("report"), cap)

        out[f"{delay * 1000:.0f}"] = summarize(bench.rounds(contenders, measure), "events_per_s")
    return out


def bursts(bench: Bench, server: ApiServer) -> dict[str, Any]:
    spec = {"scenario": "bursts", **bench.config["burst"]}
    bench.progress(f"bursts of {spec['size']:,} events every second, {spec['count']} times, 50 ms")

    def measure(contender: Contender, _: int) -> dict[str, Any]:
        server.call("configure", delay=0.05)
        server.call("reset")
        result = bench.run(contender, server, spec)
        report = server.call("report")
        row = delivery(result, report)
        accepted = [when for when, _ in report["accepted"] if when >= result["t0"]]
        row["drain_after_last_burst_s"] = (
            accepted[-1] - result["last_burst"] if row["complete"] and accepted else None
        )
        for name in ("dropped", "spooled", "queued"):
            row[name] = result["sdk_stats"].get(name)
        return row

    return summarize(bench.rounds(bench.ours(), measure), "events_per_s")


def calibrate_work(target_s: float = 0.001) -> int:
    """How many ``busy_work`` iterations take ``target_s`` of this thread's CPU time (CPU time, not
    wall time: on a shared machine the wall clock also counts the moments another process ran)."""
    trial = 20_000
    samples = []
    for _ in range(15):
        started = time.thread_time()
        busy_work(trial)
        samples.append(time.thread_time() - started)
    return max(1, round(trial * target_s / statistics.median(samples)))


def host(bench: Bench, server: ApiServer, work_iterations: int) -> dict[str, Any]:
    seconds = bench.config["host_seconds"]
    bench.progress(f"CPU-bound host ({work_iterations:,} iterations ~ 1 ms per event), {seconds:.0f} s, 0 ms")
    spec = {"scenario": "host", "work_iterations": work_iterations, "seconds": seconds}

    def measure(contender: Contender, r: int) -> dict[str, Any]:
        server.call("configure", delay=0.0)
        loops = {}
        for disabled in (r % 2 == 0, r % 2 == 1):  # alternate which variant runs first
            server.call("reset")
            result = bench.run(contender, server, {**spec, "disabled": disabled})
            loops[disabled] = (result, server.call("report"))
        result, report = loops[False]
        reference = loops[True][0]
        row = delivery(result, report)
        row["delivered_per_s"] = row.pop("events_per_s")
        row["offered_per_s"] = result["offered"] / (result["t1"] - result["t0"])
        row["loop_us_per_event"] = result["loop_us_per_event"]
        row["disabled_loop_us_per_event"] = reference["loop_us_per_event"]
        # The host thread's own CPU per event: wall time above it is time spent waiting (GIL, other
        # processes on this shared machine).
        row["loop_cpu_us_per_event"] = result["loop_cpu_us_per_event"]
        row["disabled_loop_cpu_us_per_event"] = reference["loop_cpu_us_per_event"]
        row["slowdown_pct"] = (result["loop_us_per_event"] / reference["loop_us_per_event"] - 1) * 100
        row["backlog_at_end"] = result["offered"] - row["delivered"]
        for name in ("dropped", "spooled"):
            row[name] = result["stats_at_end"].get(name)
        return row

    return summarize(bench.rounds(bench.ours(), measure), "delivered_per_s")


def storm(bench: Bench, server: ApiServer) -> dict[str, Any]:
    plan = bench.config["storm"]
    bench.progress(
        f"429 storm: {plan['rate']} events/s for {plan['seconds']:.0f} s at 50 ms, "
        f"429 + Retry-After: 1 from {plan['storm_from']:.0f} s for {plan['storm_for']:.0f} s"
    )
    out: dict[str, Any] = {}
    for contender in bench.ours():
        server.call("configure", delay=0.05)
        server.call("reset")
        start = time.monotonic() + 2.0  # time for the runner to start and warm up
        storm_start = start + plan["storm_from"]
        storm_end = storm_start + plan["storm_for"]
        server.call("storm", start=storm_start, seconds=plan["storm_for"])
        spec = {"scenario": "storm", "rate": plan["rate"], "seconds": plan["seconds"], "cap": plan["cap"]}
        result = bench.run(contender, server, {**spec, "start": start})
        report = server.call("report")
        peaks = report["in_flight"]
        expected = result["offered"] + WARMUP_EVENTS
        stats = result["stats_at_end"]

        def peak(a: float, b: float, peaks: list[list[float]] = peaks) -> int | None:
            values = in_window(peaks, a, b)
            return int(max(values)) if values else None

        accepted = [when for when, _ in report["accepted"]]
        after = [when for when in accepted if when >= storm_end]
        out[contender.name] = {
            "offered": result["offered"],
            "distinct_delivered": report["distinct_keys"],
            "lost": expected - report["distinct_keys"],
            "duplicates": report["duplicate_keys"],
            "refused_429": report["refused_429"],
            "flushed": result["flushed"],
            "dropped": stats.get("dropped"),
            "spooled": stats.get("spooled"),
            "in_flight_peak_before": peak(start, storm_start),
            "in_flight_peak_first_second": peak(storm_start, storm_start + 1),
            "in_flight_peak_after_first_second": peak(storm_start + 1, storm_end),
            "in_flight_peak_after_storm": peak(storm_end, result["t1"]),
            "first_accept_after_storm_s": after[0] - storm_end if after else None,
            "all_delivered_at_s": (accepted[-1] - start) if accepted else None,
            "limit_reported": any(s["limit"] is not None for s in result["samples"]),
            # time series, relative to the start of the offered load
            "series": {
                "in_flight": [[when - start, value] for when, value in peaks if when >= start - 0.5],
                "accepted": [when - start for when in accepted if when >= start],
                "refused": [when - start for when in report["refused_at"]],
                "limit": [[s["t"] - start, s["limit"]] for s in result["samples"]],
                "queued": [[s["t"] - start, s["queued"]] for s in result["samples"]],
                "storm": [plan["storm_from"], plan["storm_from"] + plan["storm_for"]],
            },
        }
    return out


def latency(bench: Bench, server: ApiServer) -> dict[str, Any]:
    plan = bench.config["latency"]
    bench.progress(
        f"track() latency while offering {plan['rate']:,} events/s at 50 ms, {plan['seconds']:.0f} s "
        "paced by sleeping, then by spinning"
    )

    def measure(contender: Contender, _: int) -> dict[str, Any]:
        server.call("configure", delay=0.05)
        server.call("reset")
        result = bench.run(contender, server, {"scenario": "latency", **plan})
        report = server.call("report")
        row: dict[str, Any] = {}
        for pacing, (start, end) in zip(("sleep", "spin"), result["windows"], strict=True):
            for name, value in result[f"track_{pacing}_us"].items():
                row[f"{pacing}_{name}_us"] = value
            for name, value in result[f"reference_{pacing}_us"].items():
                row[f"{pacing}_reference_{name}_us"] = value
            delivered = sum(events for when, events in report["accepted"] if start <= when < end)
            row[f"{pacing}_delivered_per_s"] = delivered / (end - start)
        return row

    return summarize(bench.rounds(bench.contenders, measure), "sleep_p50_us")


def floors(bench: Bench, server: ApiServer) -> dict[str, Any]:
    """No SDK, 0 ms: the client CPU one request costs on one keep-alive connection (``http.client``;
    a raw socket with a prebuilt request), and what the server spends on it."""
    count = bench.config["floor_requests"]
    bench.progress(f"floors: {count:,} requests on one connection, http.client and a raw socket, 0 ms")
    plain = Contender("floor", "none", "no SDK", sys.executable)
    found: dict[str, list[dict[str, Any]]] = {"http.client": [], "raw socket": []}
    server.call("configure", delay=0.0)
    for _ in range(bench.config["rounds"]):
        for method, rows in found.items():
            server.call("reset")
            result = bench.run(plain, server, {"scenario": "floor", "method": method, "requests": count})
            report = server.call("report")
            rows.append(
                {
                    "client_cpu_us_per_request": result["cpu_s"] / count * 1e6,
                    "requests_per_s": count / (result["t1"] - result["t0"]),
                    "server_cpu_us_per_request": report["cpu_us_per_request"],
                }
            )
    return {method: median_row(rows) for method, rows in found.items()}


def import_time(bench: Bench) -> dict[str, Any]:
    count = bench.config["imports"]
    bench.progress(f"import time, {count} fresh interpreters each")
    bare = bare_python(bench.scratch)
    out: dict[str, Any] = {}
    for contender in bench.contenders:
        module = IMPORTS[contender.sdk]
        env = contender.environment()
        interpreter = contender.python
        if not contender.is_peer:
            # Not this project's venv: its site hooks (the editable install's finder) import
            # pathlib, re, enum and urllib.parse before the timer starts. The peers' venv has
            # none; neither has this one, which finds the SDK on PYTHONPATH.
            interpreter, env["PYTHONPATH"] = bare, contender.pythonpath or ROOT
        code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
        samples = []

        def python(
            *arguments: str, interpreter: str = interpreter, env: dict[str, str] = env
        ) -> subprocess.CompletedProcess[str]:
            # Run outside the repository: ``-c`` puts the working directory first on sys.path,
            # where the working tree's package would shadow a snapshot on PYTHONPATH.
            command = [interpreter, *arguments]
            return subprocess.run(
                command, capture_output=True, text=True, env=env, cwd=bench.scratch, check=True
            )

        python("-c", f"import {module}")  # writes the bytecode cache
        for _ in range(count):
            samples.append(float(python("-c", code).stdout.strip()) * 1000)
        out[contender.name] = {
            "median_ms": statistics.median(samples),
            "min_ms": min(samples),
            "samples_ms": samples,
            "module_file": python("-c", f"import {module}; print({module}.__file__)").stdout.strip(),
            "heaviest_imports_ms": heaviest_imports(
                python("-X", "importtime", "-c", f"import {module}").stderr, module
            ),
        }
    return out


def heaviest_imports(importtime: str, module: str, top: int = 6) -> dict[str, dict[str, float]]:
    """From ``-X importtime`` output: what ``module`` pulls in from outside its own package (the
    first outside import on each path, by cumulative ms), and its own modules by self ms."""
    entries = []
    for line in importtime.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, cumulative_us, name = line[len("import time:") :].split("|")
        entries.append(
            (len(name) - len(name.lstrip()), name.strip(), int(self_us) / 1000, int(cumulative_us) / 1000)
        )
    root = next((i for i in range(len(entries) - 1, -1, -1) if entries[i][1] == module), None)
    if root is None:
        return {}
    first = root
    while first > 0 and entries[first - 1][0] > entries[root][0]:
        first -= 1
    package = module.split(".")[0]

    def inside(name: str) -> bool:
        return name.split(".")[0] == package

    outside: list[tuple[str, float]] = []
    own: list[tuple[str, float]] = []
    for i in range(first, root + 1):
        indent, name, self_ms, cumulative_ms = entries[i]
        if inside(name):
            own.append((name, self_ms))
            continue
        parent = next((entries[j][1] for j in range(i + 1, root + 1) if entries[j][0] < indent), module)
        if inside(parent):
            outside.append((name, cumulative_ms))
    return {
        "outside_cumulative": {name: round(ms, 1) for name, ms in sorted(outside, key=lambda x: -x[1])[:top]},
        "own_self": {name: round(ms, 1) for name, ms in sorted(own, key=lambda x: -x[1])[:top]},
    }


# --- setup -----------------------------------------------------------------------------------------


def peers_python(progress: Progress) -> str:
    """The private venv with the peers and matplotlib, created on first use."""
    check = "import segment.analytics, posthog, matplotlib"
    if os.path.exists(PEERS_PYTHON) and subprocess.run([PEERS_PYTHON, "-c", check]).returncode == 0:
        return PEERS_PYTHON
    progress(f"creating {os.path.relpath(PEERS_VENV, ROOT)} with {', '.join(PEER_PACKAGES)} (once)")
    subprocess.run([sys.executable, "-m", "venv", PEERS_VENV], check=True)
    subprocess.run([PEERS_PYTHON, "-m", "pip", "install", "-q", *PEER_PACKAGES], check=True)
    return PEERS_PYTHON


def bare_python(scratch: str) -> str:
    """A venv with nothing installed (not even pip): a fresh interpreter as a plain deployment
    starts it, for timing imports. Made once per run."""
    venv = os.path.join(scratch, "bare-venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--clear", venv], check=True)
    return os.path.join(venv, "bin", "python")


def snapshot(ref: str, into: str) -> str:
    """``flameup_analytics`` as of git ``ref``, extracted under ``into``; returns the path to put first."""
    os.makedirs(into, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", ROOT, "archive", ref, "flameup_analytics"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
    return into


def resolve(ref: str) -> str:
    done = subprocess.run(["git", "-C", ROOT, "rev-parse", ref], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def peer_version(python: str, module: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({module!r}))"
    return subprocess.run([python, "-c", code], capture_output=True, text=True).stdout.strip()


def contenders_for(args: argparse.Namespace, scratch: str, progress: Progress) -> list[Contender]:
    found = []
    if args.sdk == "tree":
        found.append(Contender("flameup", "flameup", "flameup (working tree)", sys.executable))
        sdk_commit = None
    else:
        sdk_commit = resolve(args.sdk)
        path = snapshot(sdk_commit, os.path.join(scratch, "sdk"))
        found.append(Contender("flameup", "flameup", f"flameup @{sdk_commit[:7]}", sys.executable, path))
    if args.baseline != "none":
        baseline = resolve(args.baseline)
        if baseline != sdk_commit:
            path = snapshot(baseline, os.path.join(scratch, "baseline"))
            found.append(Contender("baseline", "flameup", f"baseline @{baseline[:7]}", sys.executable, path))
    if not args.no_peers:
        python = peers_python(progress)
        segment = peer_version(python, "segment-analytics-python")
        posthog = peer_version(python, "posthog")
        found.append(
            Contender("segment", "segment", f"Segment {segment} (bulk /v1/batch, 100/request)", python)
        )
        found.append(
            Contender("posthog", "posthog", f"PostHog {posthog} (bulk /batch/, 100/request)", python)
        )
    return found


# --- running and reporting -------------------------------------------------------------------------


def run(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    config = dict(QUICK if args.quick else FULL)
    only = set(args.only.split(",")) if args.only else set(SCENARIOS)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_at_start": load(),
        },
        "quick": args.quick,
        "config": {**config, "delays": {f"{k * 1000:.0f}": v for k, v in config["delays"].items()}},
        "targets": TARGETS,
        "load_average_by_scenario": {},
    }
    with tempfile.TemporaryDirectory(prefix="flameup-bench-") as scratch:
        contenders = contenders_for(args, scratch, progress)
        results["contenders"] = {c.name: {"label": c.label, "sdk": c.sdk} for c in contenders}
        bench = Bench(config, contenders, progress)
        bench.scratch = scratch

        def step(name: str, body: Callable[[], Any]) -> None:
            if name in only:
                results["load_average_by_scenario"][name] = load()
                results[name] = body()

        with ApiServer() as server:
            step("throughput", lambda: throughput(bench, server, config["delays"], "uniform"))
            step("hot_user", lambda: throughput(bench, server, {0.05: config["hot_events"]}, "hot")["50"])
            step("bursts", lambda: bursts(bench, server))
            step("host", lambda: host(bench, server, calibrate_work()))
            step("storm", lambda: storm(bench, server))
            step("latency", lambda: latency(bench, server))
            step("floors", lambda: floors(bench, server))
        step("imports", lambda: import_time(bench))
        if args.tls and "throughput" in only:
            with ApiServer(tls=True) as server:
                results["load_average_by_scenario"]["throughput_tls"] = load()
                results["throughput_tls"] = throughput(bench, server, config["delays"], "uniform")
    results["machine"]["load_average_at_end"] = load()
    results["wall_seconds"] = time.perf_counter() - started
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="one round, smaller counts (~1.5 min)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--tls", action="store_true", help="run throughput vs delay over TLS as well")
    parser.add_argument("--sdk", default="tree", help="the SDK to measure: 'tree' (default) or a git ref")
    parser.add_argument(
        "--baseline", default=BASELINE_COMMIT, help="a git ref measured side by side ('none' to skip)"
    )
    parser.add_argument("--no-peers", action="store_true", help="leave out Segment and PostHog")
    parser.add_argument("--only", help=f"a comma-separated subset of: {', '.join(SCENARIOS)}")
    parser.add_argument("--out", help="directory for the JSON and the charts (default bench/results)")
    parser.add_argument("--no-charts", action="store_true")
    args = parser.parse_args(argv)

    def progress(message: str) -> None:
        print(f"... [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    results = run(args, progress)
    out = args.out or os.path.join(HERE, "results", "quick" if args.quick else "")
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "delivery.json")
    with open(path, "w") as file:
        json.dump(results, file, indent=1)
    progress(f"results in {os.path.relpath(path)}")
    if not args.no_charts and os.path.exists(PEERS_PYTHON):
        subprocess.run([PEERS_PYTHON, CHARTS, path, out], check=False)
    print(json.dumps(results, indent=1) if args.json else report.render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
