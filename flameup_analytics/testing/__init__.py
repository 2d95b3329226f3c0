"""Test helpers for code that uses the SDK: a local, fault-injecting Flameup API, and
:func:`capture`, which records what the code under test would send.

The pytest fixtures (``flameup_captured``, ``flameup_server``, ``flameup_client``) live in
:mod:`flameup_analytics.testing.pytest_plugin`, which pytest loads by itself; this package does not
need pytest.
"""

from flameup_analytics.testing.capture import (
    Captured,
    CapturedIdentify,
    CapturedMessage,
    CapturedTrack,
    CapturedTransactional,
    capture,
)
from flameup_analytics.testing.server import (
    Fault,
    FaultAction,
    LocalServer,
    ReceivedRequest,
    RequestKind,
)

__all__ = [
    "Captured",
    "CapturedIdentify",
    "CapturedMessage",
    "CapturedTrack",
    "CapturedTransactional",
    "Fault",
    "FaultAction",
    "LocalServer",
    "ReceivedRequest",
    "RequestKind",
    "capture",
]
