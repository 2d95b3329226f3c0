"""One benchmark scenario with one SDK, in a fresh process: the client side of bench_delivery.py.

    python bench/sdk_runner.py '{"sdk": "flameup", "url": "http://127.0.0.1:PORT", "scenario": ...}'

Run by the interpreter that has the SDK: the project's .venv for flameup (with ``PYTHONPATH`` set
to a snapshot to measure another version), ``bench/.peers-venv`` for ``segment`` and ``posthog``.
Standard library plus that SDK only; every SDK with its default options (flameup's spool goes to a
throwaway directory instead of the user's). Prints one JSON object on stdout. The process ends with
``os._exit`` once it has printed, so no SDK's exit hook (which may wait for the API) runs into the
next measurement.

Times are ``time.monotonic()`` (system-wide on Linux): the harness matches them with the times at
which the API server accepted each request.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

EVENT = "page_viewed"
PROPERTIES = {"page": "/pricing", "plan": "pro", "amount": 19.9}
USERS = [f"user_{i}" for i in range(1000)]
HOT_USER = "user_hot"
WARMUP_EVENTS = 20
#: Names under which a future ``stats()`` may show the adaptive concurrency limit.
LIMIT_NAMES = ("concurrency_limit", "concurrency", "in_flight_limit", "limit")


# --- one adapter per SDK: track(user, event, properties), flush(timeout) -> bool, stats(), close() --


class Flameup:
    def __init__(self, url: str, disabled: bool = False) -> None:
        import flameup_analytics

        self.version = flameup_analytics.__version__
        self.path = os.path.dirname(flameup_analytics.__file__)
        self._spool = tempfile.mkdtemp(prefix="flameup-bench-spool-")
        self.client = flameup_analytics.Client(
            "bench_key", "ws_bench", host=url, spool_dir=self._spool, disabled=disabled
        )
        self.track = self.client.track

    def flush(self, timeout: float) -> bool:
        return bool(self.client.flush(timeout=max(0.0, timeout)))

    def stats(self) -> dict[str, Any]:
        stats = self.client.stats()
        found = {name: getattr(stats, name) for name in dir(stats) if not name.startswith("_")}
        return {name: value for name, value in found.items() if isinstance(value, (int, float))}

    def close(self) -> None:
        self.client.shutdown(timeout=0)
        shutil.rmtree(self._spool, ignore_errors=True)


class Segment:
    """``segment-analytics-python``: batches of 100 to ``POST /v1/batch``, one consumer thread."""

    def __init__(self, url: str, disabled: bool = False) -> None:
        from segment.analytics import Client
        from segment.analytics.version import VERSION

        logging.getLogger("segment").setLevel(logging.CRITICAL)
        self.version = VERSION
        self.path = os.path.dirname(sys.modules["segment.analytics"].__file__ or "")
        self.client = Client("bench_write_key", host=url, send=not disabled)
        self.track = self.client.track

    def flush(self, timeout: float) -> bool:
        # Its flush() waits for the queue without a time limit.
        waiter = threading.Thread(target=self.client.flush, daemon=True)
        waiter.start()
        waiter.join(max(0.0, timeout))
        return not waiter.is_alive()

    def stats(self) -> dict[str, Any]:
        return {"queued": self.client.queue.qsize()}

    def close(self) -> None:
        pass


class PostHog:
    """``posthog``: batches of up to 100 to ``POST /batch/`` (the default capture mode, V0)."""

    def __init__(self, url: str, disabled: bool = False) -> None:
        import posthog
        from posthog import Posthog

        logging.getLogger("posthog").setLevel(logging.CRITICAL)
        self.version = posthog.VERSION
        self.path = os.path.dirname(posthog.__file__)
        self.client = Posthog("phc_bench_key", host=url, disabled=disabled)
        capture = self.client.capture

        def track(user: str, event: str, properties: dict[str, Any]) -> None:
            capture(event, distinct_id=user, properties=properties)

        self.track = track

    def flush(self, timeout: float) -> bool:
        started = time.monotonic()
        self.client.flush(timeout_seconds=max(0.001, timeout))
        # It returns on its timeout as well; what is left is in its queues.
        return time.monotonic() - started < timeout

    def stats(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


ADAPTERS: dict[str, Any] = {"flameup": Flameup, "segment": Segment, "posthog": PostHog}


def user_of(i: int, pattern: str) -> str:
    """``uniform``: 1,000 users in turn; ``hot``: every other event from one user."""
    if pattern == "hot":
        return HOT_USER if i % 2 == 0 else USERS[(i // 2) % 1000]
    return USERS[i % 1000]


def warm_up(sdk: Any) -> None:
    """Start the SDK's threads and connections, so the measurement sees the steady state."""
    for i in range(WARMUP_EVENTS):
        sdk.track(USERS[i % 1000], EVENT, PROPERTIES)
    sdk.flush(10.0)
    gc.collect()


def sleep_until(when: float) -> None:
    delay = when - time.monotonic()
    if delay > 0:
        time.sleep(delay)


# --- scenarios -------------------------------------------------------------------------------------


def throughput(sdk: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """Enqueue ``events`` as fast as possible, then flush, at most ``cap`` seconds from the start."""
    events, cap, pattern = spec["events"], spec["cap"], spec.get("users", "uniform")
    users = [user_of(i, pattern) for i in range(events)]
    track = sdk.track
    warm_up(sdk)
    cpu = time.process_time()
    started = time.monotonic()
    for user in users:
        track(user, EVENT, PROPERTIES)
    enqueued = time.monotonic()
    flushed = sdk.flush(started + cap - enqueued)
    ended = time.monotonic()
    return {
        "t0": started,
        "t1": ended,
        "offered": events,
        "enqueue_s": enqueued - started,
        "flushed": flushed,
        "cpu_s": time.process_time() - cpu,
    }


def bursts(sdk: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """``size`` events at once every second, ``count`` times; then flush until ``cap`` after the last."""
    size, count, cap = spec["size"], spec["count"], spec["cap"]
    track = sdk.track
    warm_up(sdk)
    cpu = time.process_time()
    started = time.monotonic()
    for burst in range(count):
        sleep_until(started + burst)
        for i in range(size):
            track(USERS[(burst * size + i) % 1000], EVENT, PROPERTIES)
    last = time.monotonic()
    flushed = sdk.flush(last + cap - time.monotonic())
    ended = time.monotonic()
    return {
        "t0": started,
        "t1": ended,
        "last_burst": last,
        "offered": size * count,
        "flushed": flushed,
        "cpu_s": time.process_time() - cpu,
    }


def busy_work(iterations: int) -> int:
    """Pure Python that never releases the GIL on its own (~1 ms for the calibrated count)."""
    total = 0
    for i in range(iterations):
        total += i * i % 7
    return total


def host(sdk: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """A host thread that works ~1 ms per event and never sleeps, for ``seconds``."""
    iterations, seconds = spec["work_iterations"], spec["seconds"]
    track = sdk.track
    warm_up(sdk)
    clock = time.monotonic
    cpu = time.process_time()
    thread_cpu = time.thread_time()
    started = clock()
    deadline = started + seconds
    done = 0
    while True:
        busy_work(iterations)
        track(USERS[done % 1000], EVENT, PROPERTIES)
        done += 1
        if clock() >= deadline:
            break
    ended = clock()
    return {
        "t0": started,
        "t1": ended,
        "offered": done,
        "loop_us_per_event": (ended - started) / done * 1e6,
        "loop_cpu_us_per_event": (time.thread_time() - thread_cpu) / done * 1e6,
        "cpu_s": time.process_time() - cpu,
        "stats_at_end": sdk.stats(),
    }


def storm(sdk: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """Offer ``rate`` events/s from ``start`` (a monotonic time) for ``seconds``, then flush until
    ``cap``; the harness has armed the server's 429 window. Samples ``stats()`` every 100 ms."""
    rate, seconds, cap, start = spec["rate"], spec["seconds"], spec["cap"], spec["start"]
    track = sdk.track
    warm_up(sdk)
    samples: list[dict[str, Any]] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.1):
            stats = sdk.stats()
            limit = next((stats[name] for name in LIMIT_NAMES if name in stats), None)
            samples.append({"t": time.monotonic(), "limit": limit, "queued": stats.get("queued")})

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    sleep_until(start)
    step = 0.01  # events go out in small groups every 10 ms
    per_step = max(1, round(rate * step))
    offered = 0
    for slot in range(round(seconds / step)):
        sleep_until(start + slot * step)
        for _ in range(per_step):
            track(USERS[offered % 1000], EVENT, PROPERTIES)
            offered += 1
    flushed = sdk.flush(start + cap - time.monotonic())
    ended = time.monotonic()
    sampling.set()
    sampler.join()
    return {
        "t0": start,
        "t1": ended,
        "offered": offered,
        "flushed": flushed,
        "samples": samples,
        "stats_at_end": sdk.stats(),
    }


def pace(pacing: str, when: float) -> None:
    """Wait for ``when``: ``sleep`` releases the GIL (a host waiting on I/O), ``spin`` keeps the
    thread busy (a host computing between events; caches stay warm)."""
    if pacing == "sleep":
        sleep_until(when)
        return
    clock = time.monotonic
    while clock() < when:
        pass


def timed_calls(call: Any, rate: float, seconds: float, pacing: str) -> tuple[dict[str, float], float, float]:
    """Call ``call(i)`` ``rate`` times a second for ``seconds``, timing each call; nearest-rank
    percentiles in microseconds, and the start and end (monotonic)."""
    calls = round(rate * seconds)
    clock = time.perf_counter_ns
    samples = [0] * calls
    started = time.monotonic()
    for i in range(calls):
        pace(pacing, started + i / rate)
        before = clock()
        call(i)
        samples[i] = clock() - before
    ended = time.monotonic()
    samples.sort()
    percentiles = {
        name: samples[min(calls - 1, max(0, math.ceil(q * calls) - 1))] / 1000
        for name, q in (("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999), ("max", 1.0))
    }
    return percentiles, started, ended


def latency(sdk: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """Time each ``track()`` while offering ``rate`` events/s for ``seconds``, once paced by sleeping
    and once by spinning; before each, the same loop timing the least any SDK must do (encode the
    event, append it to a deque) for ``reference_seconds``, while the SDK is idle."""
    rate, seconds, reference_seconds = spec["rate"], spec["seconds"], spec["reference_seconds"]
    track = sdk.track
    warm_up(sdk)
    dumps = json.dumps
    append = deque[str]().append

    def reference(i: int) -> None:
        append(dumps({"external_id": USERS[i % 1000], "event": EVENT, "parameters": PROPERTIES}))

    def tracked(i: int) -> None:
        track(USERS[i % 1000], EVENT, PROPERTIES)

    out: dict[str, Any] = {"windows": []}
    offered = 0
    for pacing in ("sleep", "spin"):
        out[f"reference_{pacing}_us"] = timed_calls(reference, rate, reference_seconds, pacing)[0]
        out[f"track_{pacing}_us"], started, ended = timed_calls(tracked, rate, seconds, pacing)
        out["windows"].append([started, ended])
        offered += round(rate * seconds)
    out.update(t0=out["windows"][0][0], t1=out["windows"][-1][1], offered=offered)
    return out


def floor(_: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """No SDK: one thread posting the same track body ``requests`` times over one keep-alive
    connection, with ``http.client`` or with a raw socket and a prebuilt request; its CPU per request."""
    import http.client
    import socket
    import urllib.parse

    url = urllib.parse.urlsplit(spec["url"])
    host, port = url.hostname or "127.0.0.1", url.port or 80
    body = json.dumps({"external_id": USERS[0], "event": EVENT, "parameters": PROPERTIES}).encode()
    headers = {
        "Authorization": "Bearer bench_key",
        "Content-Type": "application/json",
        "Accept": "application/json",
    }
    count = spec["requests"]
    post: Callable[[int], None]
    if spec["method"] == "http.client":
        connection = http.client.HTTPConnection(host, port, timeout=10)
        close = connection.close

        def post_http_client(i: int) -> None:
            connection.request("POST", "/api/v1/track", body, {**headers, "Idempotency-Key": f"floor-{i}"})
            connection.getresponse().read()

        post = post_http_client
    else:
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        prebuilt = (
            f"POST /api/v1/track HTTP/1.1\r\nHost: {url.netloc}\r\n{lines}Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        sock = socket.create_connection((host, port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        close = sock.close

        def post_raw(_: int) -> None:
            sock.sendall(prebuilt)
            answer = b""
            while True:
                answer += sock.recv(65536)
                head_end = answer.find(b"\r\n\r\n")
                if head_end >= 0:
                    length = int(answer.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
                    if len(answer) >= head_end + 4 + length:
                        return

        post = post_raw

    cpu = time.process_time()
    started = time.monotonic()
    for i in range(count):
        post(i)
    ended = time.monotonic()
    cpu_s = time.process_time() - cpu
    close()
    return {"t0": started, "t1": ended, "offered": count, "cpu_s": cpu_s}


SCENARIOS = {
    "throughput": throughput,
    "bursts": bursts,
    "host": host,
    "storm": storm,
    "latency": latency,
    "floor": floor,
}


def main() -> None:
    spec = json.loads(sys.argv[1])
    if spec["sdk"] == "none":
        result = SCENARIOS[spec["scenario"]](None, spec)
    else:
        sdk = ADAPTERS[spec["sdk"]](spec["url"], disabled=spec.get("disabled", False))
        try:
            result = SCENARIOS[spec["scenario"]](sdk, spec)
            result["sdk_stats"] = sdk.stats()
            result["sdk_version"] = sdk.version
            result["sdk_path"] = sdk.path
            result["threads"] = threading.active_count()
        finally:
            sdk.close()
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
