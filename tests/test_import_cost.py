"""What ``import flameup_analytics`` loads: nothing that only some programs need. Checked in a fresh
interpreter, by the modules it leaves out (structure, not timing: bench/bench_delivery.py times it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

#: Modules a program pays for only when it uses what needs them: ``requests`` and ``urllib3`` for
#: ``RequestsTransport`` and the default transport's proxy and CA bundle lookups, ``http.client`` for
#: its first connection (both on the worker's thread), ``asyncio`` for ``aflush()``, ``msgpack`` for
#: the spool's first record, ``ssl`` for the first https connection. The SDK itself never needs
#: ``datetime``, ``decimal`` and ``uuid`` (a value of theirs exists only once the app imported them), nor
#: ``platform``, nor ``dataclasses`` (8 ms with ``inspect``: the value types are plain classes).
#: ``inspect`` waits for a handler decorated with ``flush_after``, ``signal`` for ``handle_signals=True``,
#: ``logging`` (5 ms with ``traceback``) for the SDK's first warning or ``debug=True``.
DEFERRED = [
    "requests",
    "urllib3",
    "asyncio",
    "http.client",
    "msgpack",
    "ssl",
    "datetime",
    "decimal",
    "uuid",
    "platform",
    "dataclasses",
    "inspect",
    "signal",
    "logging",
    "traceback",
]


def loaded_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    # Not measured by coverage (./scripts/test measures child processes): coverage itself imports
    # some of these modules before the script runs.
    env = {name: value for name, value in os.environ.items() if not name.startswith("COVERAGE_")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_importing_the_package_loads_none_of_the_deferred_modules() -> None:
    loaded = loaded_after("import flameup_analytics")
    assert "flameup_analytics.client" in loaded  # the check is worth something only if this holds
    assert [name for name in DEFERRED if name in loaded] == []


def test_a_client_made_and_tracking_into_its_queue_loads_none_of_them_in_the_callers_thread() -> None:
    # The worker never sends (flush_at and flush_interval out of reach), so only the caller's
    # thread could have imported anything.
    loaded = loaded_after(
        "import flameup_analytics as fa\n"
        "client = fa.Client('key', 'ws', host='http://127.0.0.1:9', flush_at=1000, flush_interval=3600,"
        " spool_dir=False)\n"
        "client.track('user_1', 'played', {'n': 1})\n"
        "client.identify('user_1', {'plan': 'pro'})\n"
        "assert client.stats().queued == 2"
    )
    assert [name for name in DEFERRED if name in loaded] == []


@pytest.mark.parametrize("path", ["flameup_analytics", "flameup_analytics.transport"])
def test_requests_transport_is_still_importable_where_it_always_was(path: str) -> None:
    loaded = loaded_after(
        f"from {path} import RequestsTransport\n"
        "from flameup_analytics.requests_transport import RequestsTransport as moved\n"
        "assert RequestsTransport is moved"
    )
    assert "requests" in loaded
