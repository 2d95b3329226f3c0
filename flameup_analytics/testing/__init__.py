"""Test helpers for code that uses the SDK: a local, fault-injecting Flameup API."""

from flameup_analytics.testing.server import (
    Fault,
    FaultAction,
    LocalServer,
    ReceivedRequest,
    RequestKind,
)

__all__ = ["Fault", "FaultAction", "LocalServer", "ReceivedRequest", "RequestKind"]
