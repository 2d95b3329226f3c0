"""Flask: one client per process, created at import, one event per request.

    export FLAMEUP_API_KEY=... FLAMEUP_WORKSPACE_ID=...   # and FLAMEUP_HOST for a local server
    flask --app examples/flask_app.py run
    gunicorn -c examples/gunicorn.conf.py --pythonpath examples flask_app:app   # in production

See docs/runtimes/gunicorn-uwsgi.md.
"""

from __future__ import annotations

from flask import Flask, Response, request

import flameup_analytics as fa

# At import, so once per process. Under gunicorn with preload_app this runs in the master, before
# the workers are forked: the SDK's fork hook gives each worker its own empty queue, thread and
# connections, so no post_fork hook is needed. Configuration comes from FLAMEUP_API_KEY,
# FLAMEUP_WORKSPACE_ID and FLAMEUP_HOST.
analytics = fa.Client()

app = Flask(__name__)


@app.get("/products/<product_id>")
def view_product(product_id: str) -> dict[str, str]:
    return {"product": product_id}


@app.after_request
def track_page_view(response: Response) -> Response:
    # A real app would take the user from its session or auth token.
    user_id = request.args.get("user", "anonymous")
    # track() only validates and queues (a few microseconds): the response never waits for the
    # Flameup API, and an API outage never turns into a failed request.
    analytics.track(user_id, "page_viewed", {"path": request.path, "status": response.status_code})
    return response
