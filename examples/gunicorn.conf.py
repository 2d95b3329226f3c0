"""gunicorn configuration for an app that creates its Flameup client at import.

    gunicorn -c examples/gunicorn.conf.py --pythonpath examples flask_app:app

See docs/runtimes/gunicorn-uwsgi.md.
"""

from __future__ import annotations

import multiprocessing
import os

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() * 2 + 1))

# The app, and the client it creates at import, are loaded once in the master; each worker is a
# fork of it. That is all the SDK needs: its fork hook gives every worker its own empty queue,
# thread and connection pool, and the master's queue stays the master's.
preload_app = True

# Nothing else is needed: no post_fork hook to recreate the client, and no worker_exit hook to
# flush it. A worker stopped by SIGTERM, SIGINT, SIGQUIT or max_requests ends with sys.exit(), so
# Python's atexit runs and the SDK delivers what the worker still holds (within shutdown_timeout,
# 2 s by default, well inside graceful_timeout) before the worker is gone; only a SIGKILL (after
# graceful_timeout, or for a worker stuck past its timeout) can cut that short.
# If you add a worker_exit hook anyway, act only when worker.pid == os.getpid(): gunicorn also
# runs worker_exit in the master for a worker that was already gone, and a client shut down there
# would be handed, closed, to every worker forked later.
graceful_timeout = 30
