"""Exit and fork, with real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import flameup_analytics as fa
from flameup_analytics.testing import Fault, LocalServer

from .conftest import API_KEY, WORKSPACE


def run_script(
    server: LocalServer, body: str, timeout: float = 60, shutdown_timeout: float = 1.0
) -> subprocess.CompletedProcess[str]:
    script = textwrap.dedent(
        f"""
        import flameup_analytics as fa
        client = fa.Client(api_key={API_KEY!r}, workspace_id={WORKSPACE!r}, host={server.url!r},
                           flush_interval=3600, flush_at=100_000,
                           shutdown_timeout={shutdown_timeout}, timeout=30)
        """
    ) + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_a_process_that_simply_ends_delivers_what_it_queued(server: LocalServer) -> None:
    result = run_script(
        server,
        """
        for index in range(200):
            client.track(f"user_{index % 10}", "clicked", {"n": index})
        client.identify("user_1", {"plan": "pro"})
        """,
        # The deadline is not what this test is about: room for a loaded machine.
        shutdown_timeout=20,
    )
    assert result.returncode == 0, result.stderr
    assert len(server.tracks()) == 200
    assert len(server.identifies()) == 1


def test_exit_never_hangs_on_a_hanging_api(server: LocalServer) -> None:
    server.add_fault(Fault(action="hang", times=None))
    started = time.monotonic()
    result = run_script(
        server,
        """
        for index in range(50):
            client.track(f"user_{index}", "clicked")
        """,
    )
    elapsed = time.monotonic() - started
    server.release_hung()
    assert result.returncode == 0, result.stderr
    # shutdown_timeout is 1 s and the request timeout 30 s: exiting well before 30 s proves that
    # exit waited for the deadline, not for the hung requests.
    assert elapsed < 20
    assert "shutdown deadline reached with 50 message(s) undelivered" in result.stderr


def test_module_level_calls_use_a_default_client_from_the_environment(server: LocalServer) -> None:
    env = dict(os.environ, FLAMEUP_API_KEY=API_KEY, FLAMEUP_WORKSPACE_ID=WORKSPACE, FLAMEUP_HOST=server.url)
    script = textwrap.dedent(
        """
        import flameup_analytics as fa
        fa.track("user_1", "signed_up", {"plan": "pro"})
        fa.identify("user_1", {"email": "jane@example.com"})
        assert fa.flush(timeout=10)
        assert fa.stats().delivered == 2
        assert fa.get_person("user_1")["traits"] == {"email": "jane@example.com"}
        fa.send_transactional("user_1", "welcome", "email")
        fa.shutdown()
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert [r.kind for r in server.accepted] == ["track", "identify", "get_person", "transactional"]


def test_init_replaces_the_default_client(server: LocalServer) -> None:
    first = fa.init(api_key=API_KEY, host=server.url, flush_interval=3600)
    try:
        fa.track("user_1", "clicked")
        second = fa.init(api_key=API_KEY, host=server.url)
        assert fa.get_client() is second is not first
        assert len(server.tracks()) == 1  # the replaced client was shut down, delivering its queue
    finally:
        fa.shutdown()
    assert fa.flush() is True


def test_a_forked_child_gets_a_fresh_client_and_the_parent_keeps_its_queue(server: LocalServer) -> None:
    client = fa.Client(api_key=API_KEY, host=server.url, flush_interval=3600, flush_at=1000)
    try:
        client.track("parent", "before_fork")
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, which reports through its exit code
            ok = client.stats().queued == 0
            client.track("child", "in_child")
            ok = ok and client.flush(timeout=10)
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert client.flush(timeout=10)
    finally:
        client.shutdown()
    events = sorted((r.json["external_id"], r.json["event"]) for r in server.tracks())
    assert events == [("child", "in_child"), ("parent", "before_fork")]
    assert len({r.idempotency_key for r in server.tracks()}) == 2
