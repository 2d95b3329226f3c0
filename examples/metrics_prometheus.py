"""Prometheus metrics for the SDK: a counter per final outcome (from ``on_outcome``) and the client's
own counters read from ``stats()`` at each scrape.

    python examples/metrics_prometheus.py

With ``prometheus_client`` installed the metrics live in its registry (serve them with
``prometheus_client.start_http_server(8000)`` as usual); without it, a few lines below stand in
for it, so the example runs anywhere. Either way it ends by printing what a scrape would return,
after sending events to the bundled local server, some of which it makes fail.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import flameup_analytics as fa
from flameup_analytics.testing import Fault, LocalServer

OUTCOMES = "flameup_messages"  # exposed as flameup_messages_total
OUTCOMES_HELP = "Messages of the Flameup SDK by final outcome (delivered, rejected, dropped, spooled)."
REQUESTS = "flameup_requests"
REQUESTS_HELP = "HTTP requests made to deliver messages, retries included."
#: stats() fields exposed as they are; ``queued`` goes up and down, the rest only go up.
STATS_GAUGES = ("queued",)
STATS_COUNTERS = ("enqueued", "retried", "replayed", "internal_errors", "corrupt")
Hook = Callable[[fa.MessageOutcome], None]


def stats_help(field: str) -> str:
    return f"Client.stats().{field} of the Flameup SDK."


try:
    import prometheus_client
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
except ImportError:
    prometheus_client = None


def with_prometheus_client(client_stats: Callable[[], fa.Stats]) -> tuple[Hook, Callable[[], str]]:
    """The hook and a scrape function, with prometheus_client."""
    registry = prometheus_client.CollectorRegistry()  # your app would use the default REGISTRY
    outcomes = prometheus_client.Counter(OUTCOMES, OUTCOMES_HELP, ["kind", "result"], registry=registry)
    requests = prometheus_client.Counter(REQUESTS, REQUESTS_HELP, ["kind"], registry=registry)

    def on_outcome(outcome: fa.MessageOutcome) -> None:
        # Runs on the SDK's worker thread for every message: a counter increment is all it does.
        outcomes.labels(kind=outcome.kind, result=outcome.result).inc()
        requests.labels(kind=outcome.kind).inc(outcome.attempts)

    class StatsCollector:
        """Reads stats() at scrape time, so nothing polls in between."""

        def collect(self) -> Iterator[Any]:
            stats = client_stats()
            for field in STATS_GAUGES:
                yield GaugeMetricFamily(f"flameup_{field}", stats_help(field), value=getattr(stats, field))
            for field in STATS_COUNTERS:
                yield CounterMetricFamily(f"flameup_{field}", stats_help(field), value=getattr(stats, field))

    registry.register(StatsCollector())
    return on_outcome, lambda: prometheus_client.generate_latest(registry).decode()


def without_prometheus_client(client_stats: Callable[[], fa.Stats]) -> tuple[Hook, Callable[[], str]]:
    """The same metrics in the Prometheus text format, with a lock and a Counter."""
    lock = threading.Lock()
    outcomes: Counter[tuple[str, str]] = Counter()
    requests: Counter[str] = Counter()

    def on_outcome(outcome: fa.MessageOutcome) -> None:
        with lock:
            outcomes[outcome.kind, outcome.result] += 1
            requests[outcome.kind] += outcome.attempts

    def scrape() -> str:
        with lock:
            counted, sent = dict(outcomes), dict(requests)
        stats = client_stats()
        lines = [f"# HELP {OUTCOMES}_total {OUTCOMES_HELP}", f"# TYPE {OUTCOMES}_total counter"]
        lines += [
            f'{OUTCOMES}_total{{kind="{k}",result="{r}"}} {n}.0' for (k, r), n in sorted(counted.items())
        ]
        lines += [f"# HELP {REQUESTS}_total {REQUESTS_HELP}", f"# TYPE {REQUESTS}_total counter"]
        lines += [f'{REQUESTS}_total{{kind="{kind}"}} {n}.0' for kind, n in sorted(sent.items())]
        for field in STATS_GAUGES:
            lines += [f"# HELP flameup_{field} {stats_help(field)}", f"# TYPE flameup_{field} gauge"]
            lines.append(f"flameup_{field} {getattr(stats, field)}.0")
        for field in STATS_COUNTERS:
            lines += [
                f"# HELP flameup_{field}_total {stats_help(field)}",
                f"# TYPE flameup_{field}_total counter",
            ]
            lines.append(f"flameup_{field}_total {getattr(stats, field)}.0")
        return "\n".join(lines) + "\n"

    return on_outcome, scrape


def main() -> int:
    client: fa.Client | None = None

    def client_stats() -> fa.Stats:
        assert client is not None
        return client.stats()

    make = without_prometheus_client if prometheus_client is None else with_prometheus_client
    on_outcome, scrape = make(client_stats)
    with LocalServer(api_key="demo_key", workspace_id="ws_demo") as server:
        server.add_fault(Fault(status=422, kind="track", times=2, message="invalid event"))  # rejected
        server.add_fault(Fault(status=503, kind="track", times=3))  # retried, then delivered
        server.add_fault(Fault(status=503, kind="identify", times=None))  # retries run out: dropped
        client = fa.Client(
            api_key="demo_key",
            workspace_id="ws_demo",
            host=server.url,
            on_outcome=on_outcome,
            retry=fa.RetryPolicy(max_retries=2, backoff_factor=0.01),
            spool_dir=False,  # a real app keeps the spool: its failures then end "spooled", not lost
        )
        for index in range(20):
            client.track(f"user_{index}", "app_opened", {"build": 42})
        client.identify("user_1", {"plan": "pro"})
        # False here by design: some messages are made to fail. What matters is that every one
        # reached its final state, so that the figures below are complete.
        client.flush(timeout=10)
        settled = client.stats().queued == 0
        print(scrape(), end="")
        client.shutdown()
    print(f"# using {'prometheus_client' if prometheus_client else 'the built-in fallback'}", file=sys.stderr)
    return 0 if settled else 1


if __name__ == "__main__":
    sys.exit(main())
