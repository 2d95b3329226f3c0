"""A long-running service stopped by a signal (systemd, Kubernetes, ``docker stop``, Ctrl-C).

    FLAMEUP_API_KEY=... python examples/long_running_worker.py

WORKER_JOB_SECONDS sets how long a (simulated) job takes, WORKER_INTERVAL the pause between two
jobs. See docs/runtimes/scripts-and-services.md.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import flameup_analytics as fa


def main() -> int:
    stop = threading.Event()

    # Installed before the client: handle_signals=True then flushes first and chains to this
    # handler, which ends the loop once the current job is done. Without a handler of its own
    # the process would end with the signal, as it always did, but only after the SDK's shutdown.
    def request_stop(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    # handle_signals: Python's default SIGTERM kills the process without running atexit, and
    # what is still queued in memory would be lost. With it, delivery starts the moment the
    # signal arrives, even in the middle of a long job, so it is done before an orchestrator's
    # SIGKILL follows (Kubernetes waits 30 s by default).
    client = fa.Client(handle_signals=True)
    job_seconds = float(os.environ.get("WORKER_JOB_SECONDS", "1"))
    interval = float(os.environ.get("WORKER_INTERVAL", "5"))

    jobs = 0
    while not stop.is_set():
        print(f"job {jobs + 1} started", flush=True)
        time.sleep(job_seconds)  # stands in for the job's real work; a signal does not cut it short
        # After a signal the client is still open (the SDK flushed, it did not shut down): this
        # event is delivered too, at the latest when the program ends.
        client.track(f"user_{jobs % 3}", "report_generated", {"job": jobs})
        jobs += 1
        print(f"job {jobs} done", flush=True)
        stop.wait(interval)  # a stop request ends the wait at once

    print(f"stopped after {jobs} jobs", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
