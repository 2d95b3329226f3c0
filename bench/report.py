"""Markdown tables from bench_delivery.py's results, for docs/benchmarks.md.

    .venv/bin/python bench/report.py bench/results/delivery.json > /tmp/tables.md

Standard library only. Every figure is the median across rounds; a delivery figure marked with *
did not finish within the round's cap (it is what arrived by then / the cap).
"""

from __future__ import annotations

import json
import sys
from typing import Any


def number(value: Any, spec: str = ",.0f") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    return format(value, spec)


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def rate(row: dict[str, Any], key: str = "events_per_s") -> str:
    return number(row.get(key)) + ("" if row.get("complete", True) else "*")


def ratio(value: float | None, reference: float | None) -> str:
    return f"{value / reference:.2f}x" if value and reference else "-"


def delivered(results: dict[str, Any], names: list[str], labels: dict[str, str], tls: bool) -> str:
    series = results.get("throughput_tls" if tls else "throughput")
    if not series:
        return ""
    ours = "baseline" if "baseline" in names else None
    header = ["per-request delay", *(labels[n] for n in names)]
    if ours:
        header.append("flameup / baseline")
    rows = []
    lines = [(f"{delay} ms", series[delay]) for delay in sorted(series, key=float)]
    if not tls and "hot_user" in results:
        lines.append(("50 ms, half of the events from one user", results["hot_user"]))
    for title, summary in lines:
        medians = summary["median"]
        row = [title, *(rate(medians[n]) for n in names)]
        if ours:
            row.append(ratio(medians["flameup"]["events_per_s"], medians["baseline"]["events_per_s"]))
        rows.append(row)
    return table(header, rows)


def cpu(results: dict[str, Any], names: list[str], labels: dict[str, str]) -> str:
    rows = []
    for key, title in (("throughput", "plain HTTP"), ("throughput_tls", "TLS")):
        summary = results.get(key, {}).get("0")
        if summary:
            medians = summary["median"]
            rows.append(
                [f"client CPU µs per delivered event, {title}"]
                + [number(medians[n]["client_cpu_us_per_event"]) for n in names]
            )
            rows.append(
                [f"server CPU µs per request, {title}"]
                + [number(medians[n]["server_cpu_us_per_request"]) for n in names]
            )
    return table(["0 ms API, 4,000 events", *(labels[n] for n in names)], rows) if rows else ""


def ours_table(summary: dict[str, Any], labels: dict[str, str], fields: list[tuple[str, str, str]]) -> str:
    rows = [
        [labels[name], *(number(row.get(key), spec) for _, key, spec in fields)]
        for name, row in summary["median"].items()
    ]
    return table(["", *(title for title, _, _ in fields)], rows)


def latency(results: dict[str, Any], names: list[str], labels: dict[str, str]) -> str:
    summary = results.get("latency")
    if not summary:
        return ""
    rows = []
    for pacing in ("sleep", "spin"):
        for name in names:
            row = summary["median"][name]
            rows.append(
                [
                    f"{labels[name]}, {pacing}",
                    *(number(row[f"{pacing}_{p}_us"], ",.1f") for p in ("p50", "p99", "p99.9", "max")),
                    f"{number(row[f'{pacing}_reference_p50_us'], '.1f')} / "
                    f"{number(row[f'{pacing}_reference_p99.9_us'], '.0f')}",
                    number(row[f"{pacing}_delivered_per_s"]),
                ]
            )
    header = ["SDK, pacing", "p50 µs", "p99 µs", "p99.9 µs", "max µs", "ref p50 / p99.9 µs", "delivered/s"]
    return table(header, rows)


def storm(results: dict[str, Any], labels: dict[str, str]) -> str:
    runs = results.get("storm")
    if not runs:
        return ""
    fields = [
        ("offered", "offered"),
        ("lost", "lost"),
        ("429s sent", "refused_429"),
        ("in flight before", "in_flight_peak_before"),
        ("1st second", "in_flight_peak_first_second"),
        ("after 1 s", "in_flight_peak_after_first_second"),
        ("after the storm", "in_flight_peak_after_storm"),
        ("last event at (s)", "all_delivered_at_s"),
        ("limit in stats()", "limit_reported"),
    ]
    rows = [
        [
            labels[name],
            *(number(run[key], ".1f" if key == "all_delivered_at_s" else ",.0f") for _, key in fields),
        ]
        for name, run in runs.items()
    ]
    return table(["", *(title for title, _ in fields)], rows)


def imports(results: dict[str, Any], labels: dict[str, str]) -> str:
    found = results.get("imports")
    if not found:
        return ""
    rows = []
    for name, row in found.items():
        heavy = row["heaviest_imports_ms"].get("outside_cumulative", {})
        rows.append(
            [
                labels[name],
                number(row["median_ms"], ".0f"),
                number(row["min_ms"], ".0f"),
                ", ".join(f"`{k}` {v:.0f}" for k, v in list(heavy.items())[:4]),
            ]
        )
    return table(["", "median ms", "min ms", "heaviest outside imports (one -X importtime run, ms)"], rows)


def floors(results: dict[str, Any]) -> str:
    found = results.get("floors")
    if not found:
        return ""
    rows = [
        [
            method,
            number(row["client_cpu_us_per_request"], ".1f"),
            number(row["requests_per_s"]),
            number(row["server_cpu_us_per_request"], ".1f"),
        ]
        for method, row in found.items()
    ]
    return table(
        [
            "one thread, one connection, no SDK",
            "client CPU µs/request",
            "requests/s",
            "server CPU µs/request",
        ],
        rows,
    )


def short(label: str) -> str:
    """Peers' labels without the endpoint note (the page says it once)."""
    return label.split(" (")[0] + (" (bulk)" if "bulk" in label else "")


def targets(results: dict[str, Any], names: list[str], labels: dict[str, str]) -> str:
    """Issue 9's targets against the SDK (and the baseline, when the run has one)."""
    ours = [name for name in ("flameup", "baseline") if name in names]
    goal = results["targets"]

    def median(scenario: str, key: str, sub: str | None = None) -> dict[str, Any]:
        found = results.get(scenario)
        if found is None:
            return {}
        summary = found[sub] if sub else found
        return {name: summary["median"][name].get(key) for name in ours}

    def storm_peak(name: str) -> Any:
        return results.get("storm", {}).get(name, {}).get("in_flight_peak_after_first_second")

    def imports(name: str) -> Any:
        return results.get("imports", {}).get(name, {}).get("median_ms")

    checks: list[tuple[str, float, str, dict[str, Any], str]] = [
        (
            "delivered events/s, 50 ms, uniform",
            goal["events_per_s_50ms_uniform"],
            ">=",
            median("throughput", "events_per_s", "50"),
            ",.0f",
        ),
        (
            "delivered events/s, 50 ms, half from one user",
            goal["events_per_s_50ms_hot_user"],
            ">=",
            median("hot_user", "events_per_s"),
            ",.0f",
        ),
        (
            "delivered events/s, 0 ms",
            goal["events_per_s_0ms"],
            ">=",
            median("throughput", "events_per_s", "0"),
            ",.0f",
        ),
        (
            "client CPU µs per event, 0 ms",
            goal["client_cpu_us_per_event_0ms"],
            "<=",
            median("throughput", "client_cpu_us_per_event", "0"),
            ",.0f",
        ),
        (
            "CPU-bound host: delivered/s",
            goal["host_delivered_per_s"],
            ">=",
            median("host", "delivered_per_s"),
            ",.0f",
        ),
        (
            "CPU-bound host: slowdown %",
            goal["host_slowdown_pct"],
            "<=",
            median("host", "slowdown_pct"),
            ".1f",
        ),
        (
            "track() p50 µs (sleep pacing)",
            goal["track_p50_us"],
            "<=",
            median("latency", "sleep_p50_us"),
            ".1f",
        ),
        ("track() p50 µs (spin pacing)", goal["track_p50_us"], "<=", median("latency", "spin_p50_us"), ".1f"),
        (
            "track() p99.9 µs (sleep pacing)",
            goal["track_p99.9_us"],
            "<=",
            median("latency", "sleep_p99.9_us"),
            ".0f",
        ),
        (
            "track() p99.9 µs (spin pacing)",
            goal["track_p99.9_us"],
            "<=",
            median("latency", "spin_p99.9_us"),
            ".0f",
        ),
        ("import ms", goal["import_ms"], "<=", {name: imports(name) for name in ours}, ".0f"),
        (
            "429 storm: in flight after its first second",
            goal["storm_in_flight_after_1s"],
            "<=",
            {name: storm_peak(name) for name in ours},
            ".0f",
        ),
    ]
    rows = []
    for title, target, sense, found, spec in checks:
        cells = []
        for name in ours:
            value = found.get(name)
            met = value is not None and (value >= target if sense == ">=" else value <= target)
            cells.append(number(value, spec) + ("" if value is None else (" ✓" if met else " ✗")))
        rows.append([title, f"{sense} {target:,}", *cells])
    return table(["issue 9 target", "target", *(labels[name] for name in ours)], rows)


def render(results: dict[str, Any]) -> str:
    names = list(results["contenders"])
    labels = {name: short(entry["label"]) for name, entry in results["contenders"].items()}
    m = results["machine"]
    parts = [
        f"Python {m['python']}, {m['cpus']} CPUs (shared); 1-min load average "
        f"{m['load_average_at_start'][0]} at the start, {m['load_average_at_end'][0]} at the end; "
        f"{results['wall_seconds']:.0f} s; "
        f"medians of {results['config']['rounds']} rounds. * = not all delivered within the round's cap. "
        "(bulk): Segment and PostHog send 100 events per request to their bulk endpoints; flameup sends "
        "one request per event (the API has no bulk endpoint).",
        "### Against issue 9's targets\n\n" + targets(results, names, labels),
        "### Delivered events/s vs the API's per-request delay\n\n"
        + delivered(results, names, labels, False),
    ]
    if results.get("throughput_tls"):
        parts.append("### The same over TLS\n\n" + delivered(results, names, labels, True))
    parts.append("### CPU per event at 0 ms\n\n" + cpu(results, names, labels))
    if "bursts" in results:
        parts.append(
            "### Bursts at 50 ms\n\n"
            + ours_table(
                results["bursts"],
                labels,
                [
                    ("events/s", "events_per_s", ",.0f"),
                    ("all delivered", "complete", ""),
                    ("drain after last burst (s)", "drain_after_last_burst_s", ".1f"),
                    ("queued at the end", "queued", ",.0f"),
                    ("spooled", "spooled", ",.0f"),
                    ("dropped", "dropped", ",.0f"),
                ],
            )
        )
    if "host" in results:
        parts.append(
            "### CPU-bound host thread, 0 ms\n\n"
            + ours_table(
                results["host"],
                labels,
                [
                    ("offered/s", "offered_per_s", ",.0f"),
                    ("delivered/s", "delivered_per_s", ",.0f"),
                    ("backlog at the end", "backlog_at_end", ",.0f"),
                    ("slowdown %", "slowdown_pct", ".1f"),
                    ("loop µs/event, SDK", "loop_us_per_event", ",.0f"),
                    ("loop µs/event, disabled", "disabled_loop_us_per_event", ",.0f"),
                ],
            )
        )
    parts += [
        "### track() in the caller, offering 1,000 events/s at 50 ms\n\n" + latency(results, names, labels),
        "### 429 storm at 50 ms\n\n" + storm(results, labels),
        "### Floors\n\n" + floors(results),
        "### Import time\n\n" + imports(results, labels),
    ]
    return "\n\n".join(part for part in parts if not part.endswith("\n\n")) + "\n"


def main() -> None:
    with open(sys.argv[1]) as file:
        sys.stdout.write(render(json.load(file)))


if __name__ == "__main__":
    main()
