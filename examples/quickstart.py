"""Quickstart: identify a person, track a few events, flush, and show what arrived.

Runs against the bundled local Flameup-compatible server, or against the real API when
FLAMEUP_API_KEY (and FLAMEUP_WORKSPACE_ID) are set in the environment.

    python examples/quickstart.py
"""

from __future__ import annotations

import os
import sys

import flameup_analytics as fa
from flameup_analytics.testing import LocalServer


def run(client: fa.Client) -> fa.Stats:
    client.identify("user_123", {"email": "jane@example.com", "first_name": "Jane"})
    client.track("user_123", "page_viewed", {"page": "/pricing"})
    client.track("user_123", "purchase_completed", {"amount": 99.99, "currency": "USD"})
    for index in range(20):
        client.track(f"user_{index}", "app_opened", {"build": 42})
    client.flush(timeout=10)
    stats = client.stats()
    print(summary(stats))
    return stats


def summary(stats: fa.Stats) -> str:
    """What happened to the messages, from stats(): flush() alone says only whether all reached the API."""
    if stats.delivered == stats.enqueued:
        return f"flush(): everything delivered ({stats.delivered} message(s))"
    parts = [
        f"{count} {what}"
        for count, what in [
            (stats.delivered, "delivered"),
            (stats.rejected, "rejected by the API (see the log above)"),
            (stats.spooled, "spooled to disk: the next run sends them (`flameup-analytics spool inspect`)"),
            (stats.dropped, "dropped (see the log above)"),
            (stats.queued, "still queued when flush() gave up"),
        ]
        if count
    ]
    return (
        f"flush(): NOT everything delivered, of {stats.enqueued} message(s): "
        + "; ".join(parts)
        + ("\n  `flameup-analytics check` tells what is wrong with the setup")
    )


def main() -> int:
    if os.environ.get("FLAMEUP_API_KEY"):
        print(f"Sending to {os.environ.get('FLAMEUP_HOST', fa.client.DEFAULT_HOST)} (FLAMEUP_API_KEY is set)")
        with fa.Client() as client:
            stats = run(client)
    else:
        with LocalServer(api_key="demo_key", workspace_id="ws_demo") as server:
            print(f"No FLAMEUP_API_KEY: sending to the bundled local server at {server.url}")
            with fa.Client(api_key="demo_key", workspace_id="ws_demo", host=server.url) as client:
                stats = run(client)
            for request in server.accepted[:3]:
                print(f"  server got {request.method} {request.path}: {request.body.decode()}")
            print(f"  ... {len(server.accepted)} requests accepted in all")
    print(f"stats(): {stats}")
    return 0 if stats.delivered == stats.enqueued else 1


if __name__ == "__main__":
    sys.exit(main())
