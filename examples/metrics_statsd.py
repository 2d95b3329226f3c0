"""StatsD metrics for the SDK: a counter per final outcome (from ``on_outcome``) and gauges from
``stats()``.

    python examples/metrics_statsd.py

Uses the ``statsd`` package when it is installed, else the few lines of :class:`UDPStatsd` (StatsD
is one UDP datagram per metric, fire and forget). To run anywhere, the example sends events to the
bundled local server, some of which it makes fail, and its metrics to a UDP listener of its own on
127.0.0.1, which prints what a StatsD daemon would receive.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from typing import Any, Protocol

import flameup_analytics as fa
from flameup_analytics.testing import Fault, LocalServer

try:
    import statsd
except ImportError:
    statsd = None


class StatsdClient(Protocol):
    def incr(self, stat: str, count: int = 1) -> Any: ...

    def gauge(self, stat: str, value: float) -> Any: ...


class UDPStatsd:
    """What the example needs of ``statsd.StatsClient``, over a plain UDP socket."""

    def __init__(self, host: str, port: int, prefix: str) -> None:
        self._address = (host, port)
        self._prefix = prefix
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def incr(self, stat: str, count: int = 1) -> None:
        self._send(f"{stat}:{count}|c")

    def gauge(self, stat: str, value: float) -> None:
        self._send(f"{stat}:{value}|g")

    def _send(self, line: str) -> None:
        # Metrics must never break the app, and StatsD never promised delivery anyway.
        with contextlib.suppress(OSError):
            self._socket.sendto(f"{self._prefix}.{line}".encode(), self._address)


class StatsdMetrics:
    """The SDK's metrics, sent to a StatsD client."""

    def __init__(self, client: StatsdClient) -> None:
        self._statsd = client
        #: Datagrams sent, so the demo knows how many to read back (the hook runs on several threads).
        self.sent = 0
        self._sent_lock = threading.Lock()

    def on_outcome(self, outcome: fa.MessageOutcome) -> None:
        # On the SDK's worker thread, for every message: one or two UDP sends, no waiting.
        self._statsd.incr(f"messages.{outcome.kind}.{outcome.result}")
        if outcome.attempts:
            self._statsd.incr(f"requests.{outcome.kind}", outcome.attempts)
        self._count(2 if outcome.attempts else 1)

    def report_stats(self, stats: fa.Stats) -> None:
        """Call it every few seconds (a timer, your scheduler): stats() is a cheap snapshot."""
        for field in ("queued", "enqueued", "retried", "replayed", "internal_errors", "corrupt"):
            self._statsd.gauge(f"stats.{field}", getattr(stats, field))
            self._count(1)

    def _count(self, datagrams: int) -> None:
        with self._sent_lock:
            self.sent += datagrams


def main() -> int:
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # stands in for the StatsD daemon
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(5)
    host, port = listener.getsockname()
    if statsd is None:
        metrics = StatsdMetrics(UDPStatsd(host, port, prefix="flameup"))
    else:
        metrics = StatsdMetrics(statsd.StatsClient(host, port, prefix="flameup"))

    with LocalServer(api_key="demo_key", workspace_id="ws_demo") as server:
        server.add_fault(Fault(status=422, kind="track", times=2, message="invalid event"))  # rejected
        server.add_fault(Fault(status=503, kind="identify", times=None))  # retries run out: dropped
        client = fa.Client(
            api_key="demo_key",
            workspace_id="ws_demo",
            host=server.url,
            on_outcome=metrics.on_outcome,
            retry=fa.RetryPolicy(max_retries=2, backoff_factor=0.01),
            spool_dir=False,  # a real app keeps the spool: its failures then end "spooled", not lost
        )
        for index in range(10):
            client.track(f"user_{index}", "app_opened", {"build": 42})
        client.identify("user_1", {"plan": "pro"})
        # False here by design: some messages are made to fail. What matters is that every one
        # reached its final state, so that the figures below are complete.
        client.flush(timeout=10)
        settled = client.stats().queued == 0
        metrics.report_stats(client.stats())
        client.shutdown()

    received = [listener.recv(65536).decode() for _ in range(metrics.sent)]
    listener.close()
    for line in sorted(set(received)):
        print(f"{line}  (x{received.count(line)})" if received.count(line) > 1 else line)
    print(f"# using {'statsd' if statsd else 'a plain UDP socket'}", file=sys.stderr)
    return 0 if settled else 1


if __name__ == "__main__":
    sys.exit(main())
