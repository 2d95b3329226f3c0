"""Process lifecycle: deliver (or spool) what is left at interpreter exit or on SIGTERM/SIGINT,
start afresh in a forked child, and flush at the end of each serverless invocation.

Clients register themselves here when they are created and leave when shut down.
"""

from __future__ import annotations

import atexit
import functools
import os
import sys
import threading
import time
import types
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ._log import logger
from .message import keys

if TYPE_CHECKING:
    from .client import Client


_clients: weakref.WeakSet[Client] = weakref.WeakSet()
_lock = threading.Lock()
_warned_duplicates: set[tuple[str, str]] = set()


def register(client: Client) -> None:
    _hook_multiprocessing()
    _hook_celery()
    identity = (client.api_key, client.host)
    with _lock:
        duplicate = any((other.api_key, other.host) == identity for other in _clients)
        _clients.add(client)
        warn = duplicate and identity not in _warned_duplicates and not client.disabled
        if warn:
            _warned_duplicates.add(identity)
    if warn:
        logger.warning(
            "another live flameup_analytics.Client uses the same API key and host: create one "
            "client per process and share it (each client has its own queue and threads). "
            "Logged once per key and host."
        )


def unregister(client: Client) -> None:
    with _lock:
        _clients.discard(client)


def live_clients() -> list[Client]:
    with _lock:
        return list(_clients)


def shutdown_all() -> None:
    """Shut every live client down, within the longest of their ``shutdown_timeout``s in all."""
    _within_one_deadline(lambda client, remaining: client.shutdown(timeout=remaining))


def flush_all() -> None:
    """Flush every live client, within the longest of their ``shutdown_timeout``s in all."""
    _within_one_deadline(lambda client, remaining: client.flush(timeout=remaining))


def _within_one_deadline(action: Callable[[Client, float], object]) -> None:
    clients = live_clients()
    if not clients:
        return
    deadline = time.monotonic() + max(client.shutdown_timeout for client in clients)
    for client in clients:
        action(client, max(0.0, min(client.shutdown_timeout, deadline - time.monotonic())))


# multiprocessing's children end with os._exit(), which skips atexit: they run multiprocessing's
# own finalizers instead, after clearing those inherited from the parent (or registered while a
# spawned child imported its modules). So the finalizer is registered again from multiprocessing's
# after-fork callbacks, which run after that clearing, in every child, fork or spawn.
_multiprocessing_finalizer: Any = None
_multiprocessing_hooked_in: int | None = None


def _ensure_multiprocessing_exit_hook(_: object = None) -> None:
    global _multiprocessing_finalizer
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is None:
        return
    if _multiprocessing_finalizer is None or not _multiprocessing_finalizer.still_active():
        _multiprocessing_finalizer = mp_util.Finalize(None, shutdown_all, exitpriority=100)


class _AfterForkToken:
    """multiprocessing keeps its after-fork callbacks in a weak mapping: this keeps ours alive."""


_after_fork_token = _AfterForkToken()


def _hook_multiprocessing() -> None:
    global _multiprocessing_hooked_in
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is None or _multiprocessing_hooked_in == os.getpid():
        return
    _multiprocessing_hooked_in = os.getpid()
    mp_util.register_after_fork(_after_fork_token, _ensure_multiprocessing_exit_hook)
    _ensure_multiprocessing_exit_hook()


# Celery's prefork children (billiard processes) end with os._exit() without even running
# multiprocessing's finalizers; Celery announces each one's end with worker_process_shutdown.
CELERY_HOOK_ID = "flameup_analytics.shutdown_all"


def _hook_celery() -> None:
    signals = sys.modules.get("celery.signals")
    if signals is not None:
        signals.worker_process_shutdown.connect(
            _on_celery_process_shutdown, weak=False, dispatch_uid=CELERY_HOOK_ID
        )


def _on_celery_process_shutdown(**_: object) -> None:
    shutdown_all()


def _after_fork_in_child() -> None:
    # The parent's threads did not survive the fork, and any lock one of them held stays held
    # forever in the child: every lock, queue and thread is made anew, none is reused.
    global _lock
    _lock = threading.Lock()
    keys.reseed()
    for client in list(_clients):
        client._after_fork_in_child()
    _hook_multiprocessing()


# --- signals ------------------------------------------------------------------------------------

_installed: dict[int, Any] = {}


def install_signal_handlers() -> bool:
    """Make SIGTERM and SIGINT deliver what every client holds, within the deadline, before the
    signal does what it did before: the handler the application installed (after a flush, since
    the application may go on tracking while it stops), or the default action (after a shutdown:
    the process ends with that signal, as it would have).

    Only the main thread can install signal handlers; elsewhere this logs a warning and returns
    False. Installing twice is harmless.
    """
    import signal  # here: only ``handle_signals=True`` needs it (0.5 ms at the package's import)

    if threading.current_thread() is not threading.main_thread():
        logger.warning("handle_signals needs the client to be created in the main thread; not installed")
        return False
    for signum in (signal.SIGTERM, signal.SIGINT):
        if signum in _installed:
            continue
        _installed[signum] = signal.getsignal(signum)
        signal.signal(signum, _on_signal)
    return True


def _on_signal(signum: int, frame: types.FrameType | None) -> None:
    import signal  # loaded by install_signal_handlers

    previous = _installed.get(signum, signal.SIG_DFL)
    ending = previous == signal.SIG_DFL
    _in_helper_thread(shutdown_all if ending else flush_all)
    if callable(previous):
        previous(signum, frame)
    elif ending:
        if os.getpid() == 1:
            # The kernel ignores a signal's default action for PID 1 (a container's init):
            # re-raising it would leave the process running with its clients shut down.
            raise SystemExit(128 + signum)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    # SIG_IGN: the process had chosen to ignore it; having flushed, carry on as it wished.


def _in_helper_thread(work: Callable[[], None]) -> None:
    # A signal handler runs in the main thread between two bytecodes, possibly while that thread
    # holds one of the SDK's locks: waiting on it here could last forever. A helper thread does the
    # work; the wait for it is bounded, so a stuck lock costs the deadline, not a hang.
    clients = live_clients()
    if clients:
        helper = threading.Thread(target=work, name="flameup-signal", daemon=True)
        helper.start()
        helper.join(max(client.shutdown_timeout for client in clients) + 1.0)


# --- serverless --------------------------------------------------------------------------------

F = TypeVar("F", bound=Callable[..., Any])


class FlushAfter:
    """Flush a client when a block or a decorated function (sync or async) ends, within a deadline.

    Built by :meth:`Client.flush_after`. The flush runs whether the block ended normally or with
    an exception, and never raises: an invocation's own outcome is never changed by analytics.
    """

    def __init__(self, client: Client, timeout: float) -> None:
        self._client = client
        self._timeout = timeout

    def __enter__(self) -> FlushAfter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._client.flush(self._timeout)

    async def __aenter__(self) -> FlushAfter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._client.aflush(self._timeout)

    def __call__(self, function: F) -> F:
        import inspect  # here, when a handler is decorated: it costs 6 ms at the package's import

        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def flushing_coroutine(*args: Any, **kwargs: Any) -> Any:
                async with self:
                    return await function(*args, **kwargs)

            return flushing_coroutine  # type: ignore[return-value]

        @functools.wraps(function)
        def flushing(*args: Any, **kwargs: Any) -> Any:
            with self:
                return function(*args, **kwargs)

        return flushing  # type: ignore[return-value]


atexit.register(shutdown_all)
_hook_multiprocessing()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
