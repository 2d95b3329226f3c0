from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import flameup_analytics as fa
from flameup_analytics.testing import LocalServer

API_KEY = "ws_test_abc12345_abc123.secret"
WORKSPACE = "ws_test"

ClientFactory = Callable[..., fa.Client]


@pytest.fixture
def server() -> Iterator[LocalServer]:
    with LocalServer(api_key=API_KEY, workspace_id=WORKSPACE) as running:
        yield running


@pytest.fixture
def make_client(server: LocalServer) -> Iterator[ClientFactory]:
    """Clients pointed at the local server, with short waits; all shut down after the test."""
    made: list[fa.Client] = []

    def factory(**options: Any) -> fa.Client:
        settings: dict[str, Any] = {
            "api_key": API_KEY,
            "workspace_id": WORKSPACE,
            "host": server.url,
            "flush_interval": 0.05,
            "timeout": 2.0,
            "retry": fa.RetryPolicy(backoff_factor=0.01, max_backoff=0.05),
        }
        settings.update(options)
        client = fa.Client(**settings)
        made.append(client)
        return client

    yield factory
    for client in made:
        client.shutdown(timeout=0.5)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("FLAMEUP_API_KEY", "FLAMEUP_WORKSPACE_ID", "FLAMEUP_HOST"):
        monkeypatch.delenv(name, raising=False)
    # Default spool directories (and those of subprocesses) land in this test's own folder.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` passes; whether it held."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def settled_short_of_the_api(client: fa.Client, timeout: float = 5.0) -> bool:
    """Flush a client whose messages are expected to end spooled or dropped: flush() then says
    False (not everything reached the API), yet every message is settled: nothing left in memory,
    replayed ones included (flush() does not wait for those)."""
    return client.flush(timeout=timeout) is False and wait_until(lambda: client.stats().queued == 0, timeout)
