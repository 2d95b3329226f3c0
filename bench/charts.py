"""Charts for bench_delivery.py's results (PNG). Needs matplotlib: run it with bench/.peers-venv.

    bench/.peers-venv/bin/python bench/charts.py bench/results/delivery.json bench/results

Writes delivered_vs_latency.png, cpu_per_event.png, track_latency.png and (when the run had one)
storm.png into the output directory.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLOURS = {"flameup": "#d9480f", "baseline": "#868e96", "segment": "#1c7ed6", "posthog": "#2b8a3e"}


def labels(results: dict[str, Any]) -> dict[str, str]:
    return {name: entry["label"] for name, entry in results["contenders"].items()}


def footer(fig: Any, results: dict[str, Any]) -> None:
    m = results["machine"]
    fig.text(
        0.01,
        0.01,
        f"medians of {results['config']['rounds']} rounds; {m['cpus']} CPUs, shared; load average "
        f"{m['load_average_at_start'][0]} at start, {m['load_average_at_end'][0]} at end"
        + ("; --quick" if results["quick"] else ""),
        fontsize=7,
        color="#555",
    )


def save(fig: Any, results: dict[str, Any], out: str, name: str) -> None:
    footer(fig, results)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(os.path.join(out, name), dpi=110)
    plt.close(fig)


def delivered_vs_latency(results: dict[str, Any], out: str) -> None:
    fig, ax = plt.subplots(figsize=(8, 5))
    names = labels(results)
    for suffix, style in (("", "-"), ("_tls", "--")):
        series = results.get("throughput" + suffix)
        if not series:
            continue
        delays = sorted(series, key=float)
        for name, label in names.items():
            points = [(float(d), series[d]["median"][name]["events_per_s"]) for d in delays]
            ax.plot(
                *zip(*points, strict=True),
                style,
                marker="o",
                color=COLOURS.get(name),
                label=label + (" (TLS)" if suffix else ""),
            )
    hot = results.get("hot_user")
    if hot:
        for name in names:
            ax.plot(50, hot["median"][name]["events_per_s"], "x", color=COLOURS.get(name), markersize=9)
        ax.plot([], [], "x", color="#333", label="50 ms, half of the events from one user")
    ax.set_yscale("log")
    ax.set_xlabel("per-request delay of the local API (ms)")
    ax.set_ylabel("delivered events/s (log)")
    ax.set_title("Delivered events/s vs API latency (default options)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, results, out, "delivered_vs_latency.png")


def cpu_per_event(results: dict[str, Any], out: str) -> None:
    series = results.get("throughput", {}).get("0")
    if not series:
        return
    names = labels(results)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    values = [series["median"][name]["client_cpu_us_per_event"] for name in names]
    bars = ax.bar(range(len(names)), values, color=[COLOURS.get(n) for n in names])
    ax.bar_label(bars, fmt="%.0f")
    ax.set_xticks(range(len(names)), [label.replace(" (", "\n(") for label in names.values()], fontsize=8)
    ax.set_ylabel("client CPU µs per delivered event")
    ax.set_title("Client CPU per delivered event, 0 ms API (track + delivery, whole process)")
    target = results["targets"]["client_cpu_us_per_event_0ms"]
    ax.axhline(target, color="#d9480f", ls=":", lw=1, label=f"issue 9 target for flameup: {target} µs")
    ax.legend(fontsize=8)
    save(fig, results, out, "cpu_per_event.png")


def track_latency(results: dict[str, Any], out: str) -> None:
    latency = results.get("latency")
    if not latency:
        return
    names = labels(results)
    percentiles = ("p50", "p99", "p99.9", "max")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), sharey=True)
    width = 0.8 / (len(names) + 1)
    for ax, (pacing, how) in zip(axes, (("sleep", "sleeping"), ("spin", "spinning")), strict=True):
        for i, name in enumerate(names):
            row = latency["median"][name]
            values = [row[f"{pacing}_{p}_us"] for p in percentiles]
            ax.bar(
                [x + i * width for x in range(4)], values, width, color=COLOURS.get(name), label=names[name]
            )
        reference = latency["median"][next(iter(names))]
        values = [reference[f"{pacing}_reference_{p}_us"] for p in percentiles]
        ax.bar(
            [x + len(names) * width for x in range(4)],
            values,
            width,
            color="#ced4da",
            label="json.dumps + deque.append (same loop)",
        )
        ax.set_xticks([x + len(names) * width / 2 for x in range(4)], percentiles)
        ax.set_yscale("log")
        ax.set_title(f"paced by {how}", fontsize=10)
        ax.grid(True, axis="y", which="both", alpha=0.3)
    axes[0].set_ylabel("µs per track() call (log)")
    axes[0].legend(fontsize=7)
    fig.suptitle("track() in the caller's thread, offering 1,000 events/s to an API 50 ms away")
    save(fig, results, out, "track_latency.png")


def storm(results: dict[str, Any], out: str) -> None:
    runs = results.get("storm")
    if not runs:
        return
    names = labels(results)
    fig, axes = plt.subplots(len(runs), 1, figsize=(9, 3.2 * len(runs)), sharex=True, squeeze=False)
    for ax, (name, run) in zip(axes[:, 0], runs.items(), strict=True):
        series = run["series"]
        ax.axvspan(*series["storm"], color="#ffe3e3", label="429 + Retry-After: 1")
        if series["in_flight"]:
            ax.step(
                *zip(*series["in_flight"], strict=True),
                where="post",
                color=COLOURS.get(name),
                label="requests in flight (peak per 100 ms)",
            )
        limits = [(t, v) for t, v in series["limit"] if v is not None]
        if limits:
            ax.plot(*zip(*limits, strict=True), color="#000", lw=1, label="concurrency limit in stats()")
        rate = ax.twinx()
        end = max(series["accepted"] + [series["storm"][1] + 1])
        edges = [i * 0.25 for i in range(int(end / 0.25) + 2)]
        rate.hist(
            series["accepted"],
            bins=edges,
            weights=[4] * len(series["accepted"]),
            histtype="step",
            color="#495057",
            label="accepted events/s",
        )
        rate.set_ylabel("accepted events/s", fontsize=8)
        # Head room for the legend above the curves.
        ax.set_ylim(0, max([v for _, v in series["in_flight"]] + [1]) * 1.7)
        rate.set_ylim(0, rate.get_ylim()[1] * 1.7)
        ax.set_ylabel("in flight", fontsize=8)
        ax.set_title(f"{names[name]}: lost {run['lost']}, 429s {run['refused_429']}", fontsize=9)
        handles = ax.get_legend_handles_labels()[0] + rate.get_legend_handles_labels()[0]
        ax.legend(handles=handles, fontsize=7, loc="upper right", ncol=2)
    axes[-1, 0].set_xlabel("seconds from the start of the offered load")
    fig.suptitle("429 storm at 50 ms per request", fontsize=11)
    save(fig, results, out, "storm.png")


def main() -> None:
    path, out = sys.argv[1], sys.argv[2]
    with open(path) as file:
        results = json.load(file)
    for chart in (delivered_vs_latency, cpu_per_event, track_latency, storm):
        if chart is not delivered_vs_latency or results.get("throughput"):
            chart(results, out)


if __name__ == "__main__":
    main()
