"""pytest fixtures for code that uses the SDK.

Registered through the ``pytest11`` entry point, so installing ``flameup-analytics`` is all it
takes; disable with ``-p no:flameup_analytics``.

- ``flameup_captured``: a :func:`~flameup_analytics.testing.capture` around the test.
- ``flameup_server``: a started :class:`~flameup_analytics.testing.LocalServer`, stopped after.
- ``flameup_client``: a :class:`~flameup_analytics.Client` pointed at ``flameup_server``, with the
  spool off and short waits, shut down after the test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import flameup_analytics as fa
from flameup_analytics.testing import Captured, LocalServer, capture


@pytest.fixture
def flameup_captured() -> Iterator[Captured]:
    """Every message any client produces during the test, recorded instead of sent."""
    with capture() as captured:
        yield captured


@pytest.fixture
def flameup_server() -> Iterator[LocalServer]:
    """A local Flameup-compatible API on 127.0.0.1 (``api_key="test_key"``,
    ``workspace_id="ws_test"``), stopped after the test."""
    with LocalServer() as server:
        yield server


@pytest.fixture
def flameup_client(flameup_server: LocalServer) -> Iterator[fa.Client]:
    """A client of ``flameup_server``: spool off (a test leaves nothing on disk), and waits short
    enough that ``flush()`` and retries take milliseconds."""
    client = fa.Client(
        api_key=flameup_server.api_key,
        workspace_id=flameup_server.workspace_id,
        host=flameup_server.url,
        flush_interval=0.05,
        timeout=5.0,
        retry=fa.RetryPolicy(backoff_factor=0.01, max_backoff=0.05),
        spool_dir=False,
    )
    yield client
    client.shutdown(timeout=1.0)
