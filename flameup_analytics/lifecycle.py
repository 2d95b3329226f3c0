"""Process lifecycle: deliver (or hand on) what is left at interpreter exit, and start afresh in a
forked child.

Clients register themselves here when they are created and leave when shut down.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING

from .message import new_key

if TYPE_CHECKING:
    from .client import Client

_clients: weakref.WeakSet[Client] = weakref.WeakSet()
_lock = threading.Lock()


def register(client: Client) -> None:
    with _lock:
        _clients.add(client)


def unregister(client: Client) -> None:
    with _lock:
        _clients.discard(client)


def live_clients() -> list[Client]:
    with _lock:
        return list(_clients)


def shutdown_all() -> None:
    """Shut every live client down, within the longest of their ``shutdown_timeout``s in all."""
    clients = live_clients()
    if not clients:
        return
    deadline = time.monotonic() + max(client.shutdown_timeout for client in clients)
    for client in clients:
        client.shutdown(timeout=min(client.shutdown_timeout, deadline - time.monotonic()))


def _after_fork_in_child() -> None:
    # The parent's threads did not survive the fork, and any lock one of them held stays held
    # forever in the child: every lock, queue and thread is made anew, none is reused.
    global _lock
    _lock = threading.Lock()
    new_key.reseed()
    for client in list(_clients):
        client._after_fork_in_child()


atexit.register(shutdown_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
