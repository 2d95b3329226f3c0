"""Celery: a module-level client, shared by every task that runs in the process.

    export FLAMEUP_API_KEY=... FLAMEUP_WORKSPACE_ID=...   # and FLAMEUP_HOST for a local server
    export CELERY_BROKER_URL=redis://localhost:6379/0
    celery --workdir examples -A celery_worker worker --pool prefork --concurrency 4

See docs/runtimes/celery-rq.md.
"""

from __future__ import annotations

import os

from celery import Celery

import flameup_analytics as fa

app = Celery("celery_worker", broker=os.environ.get("CELERY_BROKER_URL", "memory://"))

# At module level, so in the main worker process, before the prefork pool forks its children.
# Other SDKs need a worker_process_init hook to make a client per child, and a shutdown hook per
# child; this one needs neither: the SDK's fork hook gives each child its own empty queue, thread
# and connections (the parent's queued messages are neither lost nor sent twice), and the SDK
# connects itself to Celery's worker_process_shutdown, so a child that ends (recycled by
# max_tasks_per_child, or stopped with the worker) delivers what it tracked first, although
# billiard ends it with os._exit().
analytics = fa.Client()


@app.task
def send_invoice(user_id: str, invoice_id: str, amount: float) -> str:
    # ... render and send the invoice ...
    analytics.track(user_id, "invoice_sent", {"invoice_id": invoice_id, "amount": amount})
    return invoice_id
