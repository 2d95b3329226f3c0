"""Every example in examples/ runs here, configured only through the FLAMEUP_* environment
variables, and its events are checked at a real local server."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

from flameup_analytics.testing import LocalServer, ReceivedRequest

from .conftest import API_KEY, WORKSPACE

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

Loader = Callable[[str], ModuleType]


@pytest.fixture
def flameup_env(server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> LocalServer:
    """Point the examples (and the subprocesses they run in) at the local server."""
    monkeypatch.setenv("FLAMEUP_API_KEY", API_KEY)
    monkeypatch.setenv("FLAMEUP_WORKSPACE_ID", WORKSPACE)
    monkeypatch.setenv("FLAMEUP_HOST", server.url)
    return server


@pytest.fixture
def load_example(monkeypatch: pytest.MonkeyPatch) -> Iterator[Loader]:
    """Import an example afresh, as its own top-level module, and forget it afterwards (with every
    example module it imported): each test gets new clients, made from the environment it set."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    loaded: set[str] = set()

    def forget(names: set[str]) -> None:
        for module in [m for m in sys.modules if m.partition(".")[0] in names]:
            del sys.modules[module]

    def load(name: str) -> ModuleType:
        forget({name})
        loaded.add(name)
        return importlib.import_module(name)

    yield load
    examples = {m for m, module in list(sys.modules.items()) if _is_example(module)}
    forget(loaded | examples)


def _is_example(module: ModuleType | None) -> bool:
    path = getattr(module, "__file__", None)
    return path is not None and Path(path).resolve().is_relative_to(EXAMPLES)


def events(requests: list[ReceivedRequest]) -> list[tuple[str, str, dict[str, object]]]:
    return [(r.json["external_id"], r.json["event"], r.json.get("parameters", {})) for r in requests]


def wait_for_text(path: Path, text: str, count: int, timeout: float) -> bool:
    """Poll a log file until ``text`` occurs ``count`` times; False at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text(errors="replace").count(text) >= count:
            return True
        time.sleep(0.02)
    return False


# --- web frameworks ----------------------------------------------------------------------------


def test_flask_example_tracks_every_request(flameup_env: LocalServer, load_example: Loader) -> None:
    flask_app = load_example("flask_app")
    try:
        http = flask_app.app.test_client()
        first = http.get("/products/p_1?user=user_1")
        assert (first.status_code, first.json) == (200, {"product": "p_1"})
        assert http.get("/products/p_2").status_code == 200
        assert http.get("/no/such/page?user=user_2").status_code == 404
        # The requests returned before delivery: the worker thread delivers in the background.
        assert flameup_env.wait_for(3, timeout=10, kind="track")
    finally:
        flask_app.analytics.shutdown()
    assert sorted(events(flameup_env.tracks()), key=repr) == [
        ("anonymous", "page_viewed", {"path": "/products/p_2", "status": 200}),
        ("user_1", "page_viewed", {"path": "/products/p_1", "status": 200}),
        ("user_2", "page_viewed", {"path": "/no/such/page", "status": 404}),
    ]


def test_fastapi_example_delivers_in_the_lifespan_shutdown(
    flameup_env: LocalServer, load_example: Loader
) -> None:
    from fastapi.testclient import TestClient

    fastapi_app = load_example("fastapi_app")
    with TestClient(fastapi_app.app) as http:  # runs the lifespan: startup, then shutdown on exit
        client = fastapi_app.app.state.analytics
        for order in ("o_1", "o_2"):
            response = http.post(f"/orders/{order}/complete", params={"user": "user_1"})
            assert response.json() == {"order": order, "status": "completed"}
    # No waiting: the lifespan's `await ashutdown()` returned only once everything was delivered.
    # Sorted: one user's tracks may be in flight together (ordering="relaxed").
    assert sorted(events(flameup_env.tracks()), key=repr) == [
        ("user_1", "order_completed", {"order_id": "o_1"}),
        ("user_1", "order_completed", {"order_id": "o_2"}),
    ]
    assert client.stats().delivered == 2


def test_django_example_creates_one_client_in_ready_and_tracks_from_a_view(
    flameup_env: LocalServer, load_example: Loader, monkeypatch: pytest.MonkeyPatch
) -> None:
    import django
    from django.conf import settings
    from django.test import Client as DjangoClient
    from django.test.utils import setup_test_environment, teardown_test_environment

    if settings.configured:  # pragma: no cover - settings can be loaded once per process only
        pytest.skip("Django settings were already configured in this process")
    load_example("django_app")
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "django_app.settings")
    django.setup()  # loads the example's settings and runs AnalyticsConfig.ready()
    from django_app.apps import analytics

    client = analytics()
    setup_test_environment()  # lets the test client's "testserver" host through ALLOWED_HOSTS
    try:
        http = DjangoClient()
        response = http.post("/signup/", {"user_id": "user_1", "email": "jane@example.com"})
        assert (response.status_code, response.json()) == (201, {"user_id": "user_1"})
        assert http.get("/signup/").status_code == 405  # require_POST: nothing tracked
        assert analytics() is client  # one client for the process, whatever the view
        assert flameup_env.wait_for(1, timeout=10, kind="identify")
        assert flameup_env.wait_for(1, timeout=10, kind="track")
    finally:
        teardown_test_environment()
        client.shutdown()
    assert flameup_env.people == {"user_1": {"email": "jane@example.com", "plan": "free"}}
    assert events(flameup_env.tracks()) == [("user_1", "signed_up", {"plan": "free"})]


# --- Celery ------------------------------------------------------------------------------------


def test_celery_example_task_runs_and_tracks(flameup_env: LocalServer, load_example: Loader) -> None:
    # In this process (apply() runs the task as a worker would, without a broker); the real
    # prefork worker is the next test.
    celery_worker = load_example("celery_worker")
    try:
        result = celery_worker.send_invoice.apply(("user_1", "inv_1", 99.5))
        assert result.successful() and result.get() == "inv_1"
        assert flameup_env.wait_for(1, timeout=10, kind="track")
    finally:
        celery_worker.analytics.shutdown()
    assert events(flameup_env.tracks()) == [
        ("user_1", "invoice_sent", {"invoice_id": "inv_1", "amount": 99.5}),
    ]


# Runs in the real `celery worker` process: the example, with the filesystem broker (a directory
# both processes share, no broker server) and a client that never sends on its own, so what the
# server receives can only have been delivered by the SDK's own worker_process_shutdown hook.
CELERY_APP = """
import os

import celery_worker
import flameup_analytics as fa

folder = os.environ["TEST_BROKER_DIR"]
celery_worker.app.conf.broker_transport_options = {
    "data_folder_in": folder, "data_folder_out": folder, "polling_interval": 0.05,
    "control_folder": os.path.join(folder, "control"),  # not ./control, in the current directory
}
celery_worker.analytics.shutdown()
# Created here, in the worker's main process, before the prefork pool forks its children.
celery_worker.analytics = fa.Client(flush_interval=3600, flush_at=100_000)
if os.environ.get("TEST_WITHOUT_HOOK"):
    from celery.signals import worker_process_shutdown

    from flameup_analytics import lifecycle

    worker_process_shutdown.disconnect(dispatch_uid=lifecycle.CELERY_HOOK_ID)
app = celery_worker.app
"""


@pytest.mark.parametrize("hook", [True, False], ids=["with-the-hook", "without-the-hook"])
def test_celery_prefork_children_deliver_through_the_shutdown_hook(
    flameup_env: LocalServer,
    load_example: Loader,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    hook: bool,
) -> None:
    # Without the SDK's Celery hook the same run delivers nothing: the children's os._exit() skips
    # every other exit hook (which is why the SDK connects one to Celery by itself).
    if not hook:
        monkeypatch.setenv("TEST_WITHOUT_HOOK", "1")
    broker = tmp_path / "broker"
    broker.mkdir()
    (tmp_path / "celery_test_app.py").write_text(CELERY_APP)
    monkeypatch.setenv("CELERY_BROKER_URL", "filesystem://")
    monkeypatch.setenv("TEST_BROKER_DIR", str(broker))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(EXAMPLES), str(tmp_path)]))
    monkeypatch.syspath_prepend(str(tmp_path))
    log = tmp_path / "worker.log"
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_test_app", "worker", "--pool", "prefork",
         "--concurrency", "2", "--without-heartbeat", "--without-mingle", "--without-gossip",
         "--loglevel", "info", "--logfile", str(log)],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    sender = load_example("celery_test_app")  # this process only sends the tasks
    try:
        for n in range(10):
            sender.celery_worker.send_invoice.delay(f"user_{n % 3}", f"inv_{n}", float(n))
        assert wait_for_text(log, "succeeded", 10, timeout=30), log.read_text()
        assert flameup_env.tracks() == []  # executed, and still held by the children
        worker.send_signal(signal.SIGTERM)  # warm shutdown: the pool's children exit
        _, stderr = worker.communicate(timeout=30)
        assert worker.returncode == 0, stderr
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        sender.celery_worker.analytics.shutdown()
    ran = [line for line in log.read_text().splitlines() if "succeeded" in line]
    assert len(ran) == 10 and all("ForkPoolWorker-" in line for line in ran)  # in the pool's children
    # No waiting: the children delivered before they exited, and so before the worker did.
    tracks = flameup_env.tracks()
    if not hook:
        assert tracks == []
        return
    assert sorted(r.json["parameters"]["invoice_id"] for r in tracks) == sorted(f"inv_{n}" for n in range(10))
    assert len({r.idempotency_key for r in tracks}) == 10


# --- serverless --------------------------------------------------------------------------------


def test_lambda_handler_delivers_before_it_returns(flameup_env: LocalServer, load_example: Loader) -> None:
    lambda_handler = load_example("lambda_handler")
    try:
        for invocation in (1, 2):  # a cold start, then a warm invocation reusing the client
            context = SimpleNamespace(aws_request_id=f"req_{invocation}", function_name="reports")
            answer = lambda_handler.handler({"user_id": "user_1", "report": "monthly"}, context)
            assert answer == {"statusCode": 202, "body": "report queued for user_1"}
            # No waiting: the runtime could freeze the process right now.
            assert len(flameup_env.tracks()) == invocation
    finally:
        lambda_handler.client.shutdown()
    assert events(flameup_env.tracks()) == [
        ("user_1", "report_requested", {"report": "monthly", "request_id": "req_1"}),
        ("user_1", "report_requested", {"report": "monthly", "request_id": "req_2"}),
    ]


# --- a service stopped by SIGTERM --------------------------------------------------------------


def test_long_running_worker_on_sigterm_delivers_at_once_finishes_its_job_and_loses_nothing(
    flameup_env: LocalServer,
) -> None:
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "long_running_worker.py")],
        env={**os.environ, "WORKER_JOB_SECONDS": "1", "WORKER_INTERVAL": "0.01"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == "job 1 started\n"
        assert process.stdout.readline() == "job 1 done\n"  # its event was tracked just now
        assert process.stdout.readline() == "job 2 started\n"
        process.send_signal(signal.SIGTERM)  # in the middle of job 2, which has a second to go
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr  # the loop ended by itself; the process was not killed
    assert stdout == "job 2 done\nstopped after 2 jobs\n"  # the job in progress was finished
    # No waiting: job 1's event was delivered by the SDK's signal handler (a flush), and job 2's,
    # tracked after the signal while the job finished, when the program ended (atexit).
    tracks = flameup_env.tracks()
    assert [r.json["parameters"]["job"] for r in tracks] == [0, 1]
    assert len({r.idempotency_key for r in tracks}) == 2


def test_quickstart_runs_against_the_bundled_server(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FLAMEUP_API_KEY", "FLAMEUP_WORKSPACE_ID", "FLAMEUP_HOST"):
        monkeypatch.delenv(name, raising=False)
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "flush(): everything delivered" in result.stdout
    assert "23 requests accepted in all" in result.stdout
