"""The public client."""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
import types
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol

from . import _config, _log, lifecycle, spool
from ._log import logger
from ._version import __version__
from .connections import RequestTemplate, carrier_for
from .delivery import Outcome, Result, api_error, deliver
from .errors import APIError, ConfigurationError, DeliveryError
from .lanes import Ordering
from .ledger import ErrorCallback, Ledger, OutcomeCallback, Stats
from .message import (
    IDENTIFY,
    STANDARD,
    TRACK,
    BeforeSend,
    Codec,
    Convert,
    Event,
    Hook,
    Kind,
    Queued,
    identify_body,
    identify_event,
    key_of,
    keys,
    require_id,
    require_key,
    require_mapping,
    track_body,
    track_event,
    transactional_body,
    with_json_default,
)
from .queue import MessageQueue
from .relay import Fsync, RelayWriter
from .retry import RetryPolicy
from .spool import DEFAULT_MAX_BYTES, DiskSpool, NoSpool, default_directories
from .transport import HTTPTransport, Request, Transport
from .worker import Worker

DEFAULT_HOST = _config.DEFAULT_HOST
USER_AGENT = (
    f"flameup-analytics-python/{__version__} "
    # What platform.python_version() and platform.system() answer, without importing platform.
    f"(python {sys.version.split()[0]}; {os.uname().sysname.lower() if hasattr(os, 'uname') else 'windows'})"
)
_UNSET: Any = object()


class _Recorder(Protocol):
    """What ``flameup_analytics.testing.capture()`` installs: it takes the messages of every client
    instead of their queues and the API."""

    def _record(self, message: Queued) -> None: ...

    def _send_transactional(self, body: bytes) -> dict[str, Any]: ...

    def _get_person(self, user_id: str) -> dict[str, Any] | None: ...


#: The active capture, if any. Set only by ``flameup_analytics.testing.capture``, which also has
#: every live client recompute its hot path's flags (``_route``) so their messages reach
#: ``_enqueue_slowly``.
_recorder: _Recorder | None = None


class Client:
    """A Flameup client: non-blocking ``track``/``identify`` plus the synchronous API calls.

    Safe to share between threads; create one per process and reuse it. The main options (every
    one is listed in the configuration guide):

    - ``api_key``, ``workspace_id``, ``host``: default to ``$FLAMEUP_API_KEY``,
      ``$FLAMEUP_WORKSPACE_ID`` and ``$FLAMEUP_HOST`` (else ``https://api.flameup.ai``).
    - ``flush_at`` (100) and ``flush_interval`` (0.5 s): delivery starts when this many messages
      wait, or after this long.
    - ``max_queue_size`` (10,000): messages held in memory; beyond it they go to the disk spool.
    - ``max_concurrency`` (128): the most requests in flight; the adaptive limit stays below it.
    - ``timeout`` (10 s): one attempt in all (connect, send, the complete answer).
    - ``max_retries`` (6) or ``retry``: the :class:`RetryPolicy`.
    - ``shutdown_timeout`` (2 s): how long exit and :meth:`shutdown` spend delivering.
    - ``spool_dir`` and ``max_spool_bytes`` (64 MiB): the disk spool; ``spool_dir=False`` turns
      it off.
    - ``ordering`` (``"relaxed"``): an identify never crosses its user's other messages, tracks
      go together; ``"strict"`` sends one message at a time per user.
    - ``on_error``, ``on_outcome``: callbacks, run on the worker's thread.
    - ``before_send``: sees every ``track``/``identify`` as an :class:`Event` in the caller's
      thread; returns it (changed or not) or None to drop it (``stats().filtered``).
    - ``default_parameters``: merged into every ``track``'s parameters (the call's keys win).
    - ``json_default``: converts values the SDK has no JSON form for (like ``json.dumps``).
    - ``delivery`` (``"in_process"``): ``"relay"`` appends each message to this process's segment
      in the spool directory, for a relay process to deliver (docs/relay.md); ``fsync``
      (``"never"``, ``"interval"``, ``"always"``): when those appends reach the disk.
    - ``proxies`` (``{"https": "http://proxy:3128"}``, replacing the environment's) and ``verify``
      (True, False, or a CA bundle's path): the default transport's, for every call.
    - ``sync_mode``, ``disabled``, ``debug``, ``handle_signals``, ``transport``,
      ``worker_idle_timeout``, ``max_message_bytes``.

    Raises :class:`ConfigurationError` naming the option for any unusable value.
    """

    def __init__(
        self,
        api_key: str | None = None,
        workspace_id: str | None = None,
        *,
        host: str | None = None,
        flush_at: int = 100,
        flush_interval: float = 0.5,
        max_queue_size: int = 10_000,
        max_concurrency: int = 128,
        timeout: float = 10.0,
        max_retries: int = _UNSET,
        max_message_bytes: int = 32 * 1024,
        shutdown_timeout: float = 2.0,
        sync_mode: bool = False,
        disabled: bool = False,
        on_error: ErrorCallback | None = None,
        debug: bool = False,
        retry: RetryPolicy | None = None,
        transport: Transport | None = None,
        spool_dir: str | os.PathLike[str] | Literal[False] | None = None,
        max_spool_bytes: int = DEFAULT_MAX_BYTES,
        handle_signals: bool = False,
        worker_idle_timeout: float = 60.0,
        on_outcome: OutcomeCallback | None = None,
        ordering: Ordering = "relaxed",
        before_send: BeforeSend | None = None,
        default_parameters: Mapping[str, Any] | None = None,
        json_default: Convert | None = None,
        delivery: Literal["in_process", "relay"] = "in_process",
        fsync: Fsync = "never",
        proxies: Mapping[str, str | None] | None = None,
        verify: bool | str | os.PathLike[str] = True,
    ) -> None:
        self.disabled = _config.flag("disabled", disabled)
        self.api_key = _config.api_key(api_key, self.disabled)
        self.workspace_id = _config.workspace_id(workspace_id)
        self.host = _config.host(host)
        self.flush_at = _config.count("flush_at", flush_at, 1)
        self.flush_interval = _config.seconds("flush_interval", flush_interval)
        self.max_queue_size = _config.count("max_queue_size", max_queue_size, 1)
        self.max_concurrency = _config.count("max_concurrency", max_concurrency, 1)
        self.timeout = _config.seconds("timeout", timeout)
        self.max_message_bytes = _config.count("max_message_bytes", max_message_bytes, 64)
        self.shutdown_timeout = _config.seconds("shutdown_timeout", shutdown_timeout, zero_allowed=True)
        self.sync_mode = _config.flag("sync_mode", sync_mode)
        self.on_error = _config.optional_callable("on_error", on_error)
        self.on_outcome = _config.optional_callable("on_outcome", on_outcome)
        self.worker_idle_timeout = _config.seconds("worker_idle_timeout", worker_idle_timeout)
        self.ordering: Ordering = _config.choice("ordering", ordering, ("relaxed", "strict"))
        self.before_send: BeforeSend | None = _config.optional_callable("before_send", before_send)
        self.json_default: Convert | None = _config.optional_callable("json_default", json_default)
        self._codec = STANDARD if json_default is None else Codec(with_json_default(json_default))
        self.default_parameters = _config.default_parameters(default_parameters, self._codec)
        self._hook = None if before_send is None else Hook(before_send)
        #: One flag for track(): anything to merge or a hook to run takes the slower branch.
        self._shapes_track = self._hook is not None or bool(self.default_parameters)
        max_spool_bytes = _config.count("max_spool_bytes", max_spool_bytes, 0)
        spool_dir = _config.spool_dir(spool_dir)
        transport = _config.transport(transport)
        if transport is not None and (proxies is not None or verify is not True):
            option = "proxies" if proxies is not None else "verify"
            raise ConfigurationError(
                f"{option} configures the default transport: with transport=..., give it to your "
                f"transport (fa.HTTPTransport({option}=...))",
                option=option,
            )
        handle_signals = _config.flag("handle_signals", handle_signals)
        debug = _config.flag("debug", debug)
        retry = _config.instance("retry", retry, RetryPolicy, RetryPolicy)
        if max_retries is not _UNSET:
            retry = retry.replace(max_retries=_config.count("max_retries", max_retries, 0))
        self.retry: RetryPolicy = retry
        if debug:
            _log.enable_debug()

        self._own_transport = transport is None
        #: How the default transport is made, here and again in a forked child.
        self._make_transport = functools.partial(
            HTTPTransport, pool_size=max_concurrency, proxies=proxies, verify=verify
        )
        self._transport: Transport = transport or self._make_transport()
        base = self.host + "/api/v1"
        workspace = urllib.parse.quote(self.workspace_id or "", safe="")
        self._urls = {TRACK: base + "/track", IDENTIFY: f"{base}/workspaces/{workspace}/people"}
        self._workspace_base = f"{base}/workspaces/{workspace}"
        self._headers = {
            "Authorization": f"Bearer {self.api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        self._templates = {
            kind: RequestTemplate("POST", url, self._headers) for kind, url in self._urls.items()
        }
        self._spool: DiskSpool | None = None
        if spool_dir is not False and not disabled and spool.AVAILABLE:
            directory = default_directories(self.host, self.workspace_id) if spool_dir is None else spool_dir
            self._spool = DiskSpool(directory, max_bytes=max_spool_bytes)
        self.delivery = _config.choice("delivery", delivery, ("in_process", "relay"))
        self.fsync: Fsync = _config.fsync(fsync, self.delivery)
        #: Relay mode's writer (docs/relay.md); None in the in-process mode.
        self.relay: RelayWriter | None = None
        if self.delivery == "relay" and not disabled:
            self.relay = self._relay_writer(spool_dir)
        self._closed = False
        self._reset_runtime()
        lifecycle.register(self)
        self._reroute()  # a capture that began after _reset_runtime() may have missed this client
        if handle_signals:
            lifecycle.install_signal_handlers()
        if self._spool is not None and self._queue_directly:
            self._start_worker()  # replays what an earlier process left, in the background

    def _reset_runtime(self) -> None:
        """(Re)create what belongs to one process: queue, worker, locks, counters."""
        self._queue = MessageQueue(self.max_queue_size, self.flush_at)
        self._ledger = Ledger(self._spool or NoSpool(), self.on_error, self.on_outcome)
        self._worker: Worker | None = None
        self._worker_lock = threading.Lock()
        self._shutdown_lock = threading.Lock()
        #: Accepted messages that never entered the queue (queue full, sync mode, closed).
        self._bypassed = 0
        #: The ledger's count of messages that did not reach the API, when flush() last returned.
        self._flush_baseline = 0
        self._route()

    def _route(self) -> None:
        """Set the hot path's two flags: anything but "queue it" or "relay it" takes the slow branch."""
        self._queue_directly = (
            not (self.disabled or self.sync_mode or self._closed or self.relay) and _recorder is None
        )
        self._relay_directly = self.relay if not self._closed and _recorder is None else None

    def _relay_writer(self, spool_dir: object) -> RelayWriter:
        _config.require(not self.sync_mode, "delivery='relay' cannot be combined with sync_mode", "delivery")
        _config.require(spool_dir is not False, "delivery='relay' needs a spool directory", "spool_dir")
        _config.require(self._spool is not None, "delivery='relay' needs POSIX file locks", "delivery")
        assert self._spool is not None
        environment = {"FLAMEUP_API_KEY": self.api_key, "FLAMEUP_HOST": self.host}
        if self.workspace_id is not None:
            environment["FLAMEUP_WORKSPACE_ID"] = self.workspace_id
        return RelayWriter(
            self._spool, environment, fsync=self.fsync, ordering=self.ordering, fallback=self._take_over
        )

    def _reroute(self) -> None:
        """Recompute the hot path's flags, as a capture begins or ends."""
        with self._shutdown_lock:  # so a concurrent shutdown() is never undone
            self._route()

    def _after_fork_in_child(self) -> None:
        """Start empty in a forked child: the parent still owns, and delivers, what it had queued.
        The parent's pooled connections are left alone (sharing a socket would mix up replies)."""
        if self._own_transport:
            self._transport = self._make_transport()
        if self._spool is not None:
            self._spool.after_fork_in_child()
        if self.relay is not None:
            self.relay.after_fork_in_child()
        self._reset_runtime()

    # --- the hot path -------------------------------------------------------------------------

    def track(
        self,
        external_id: str,
        event: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        timestamp: Any = None,
        idempotency_key: str | None = None,
    ) -> None:
        """Record that ``external_id`` did ``event``. Returns at once; delivery is in the background.

        Raises :class:`ValidationError` for arguments that cannot make a valid message.
        ``timestamp`` (a ``datetime``; naive means UTC) defaults to now. ``idempotency_key`` (your
        own id for this event, e.g. an order id) replaces the generated one, on every retry and
        after a restart: the API processes a key once.
        """
        key = None if idempotency_key is None else require_key(idempotency_key)
        if self._shapes_track:
            encoded = self._track_shaped(external_id, event, parameters, timestamp)
            if encoded is None:
                return
            user_id, body = encoded
        else:
            user_id, body = track_body(
                external_id, event, parameters, timestamp, self.max_message_bytes, self._codec
            )
        self._enqueue(TRACK, user_id, body, key)

    def identify(
        self, user_id: str, traits: Mapping[str, Any] | None = None, *, idempotency_key: str | None = None
    ) -> None:
        """Create or update the person ``user_id`` with ``traits``. Returns at once.

        ``idempotency_key``: as for :meth:`track`.
        """
        if self.workspace_id is None and not self.disabled:
            raise _missing_workspace("identify()")
        key = None if idempotency_key is None else require_key(idempotency_key)
        if self._hook is not None:
            shaped = self._run_hook(identify_event(user_id, traits))
            if shaped is None:
                return
            user_id, traits = shaped.user_id, shaped.properties
        user_id, body = identify_body(user_id, traits, self.max_message_bytes, self._codec)
        self._enqueue(IDENTIFY, user_id, body, key)

    def _track_shaped(
        self, external_id: Any, event: Any, parameters: Any, timestamp: Any
    ) -> tuple[str, bytes] | None:
        """A track() with ``default_parameters`` merged in, then ``before_send`` run: its ordering
        key and body, or None when the hook dropped it."""
        defaults = self.default_parameters
        if self._hook is None:
            assert defaults  # else _shapes_track would be False
            merged = {**defaults, **require_mapping(parameters, "parameters")}
            return track_body(external_id, event, merged, timestamp, self.max_message_bytes, self._codec)
        shaped = self._run_hook(track_event(external_id, event, parameters, timestamp, defaults))
        if shaped is None:
            return None
        return track_body(
            shaped.user_id,
            shaped.name,
            shaped.properties,
            shaped.timestamp,
            self.max_message_bytes,
            self._codec,
        )

    def _run_hook(self, event: Event) -> Event | None:
        """``before_send``: the event to encode, or None (counted as filtered)."""
        assert self._hook is not None
        shaped = self._hook(event)
        if shaped is None and not self.disabled:
            self._ledger.count_filtered()
        return shaped

    def _enqueue(self, kind: Kind, user_id: str, body: bytes, key: str | None) -> None:
        # Queued as its body alone when the SDK makes the key: the key is made as the worker takes it.
        if self._queue_directly and self._queue.put(body if key is None else (kind, user_id, body, key)):
            if self._worker is None:
                self._start_worker()
            return
        message = (kind, user_id, body, keys.next_number() if key is None else key)
        relay = self._relay_directly
        if relay is not None and (relay.append(message) or self._queue_in_process(message)):
            return  # in relay mode's segment, else (the directory full or unwritable) in the memory queue
        self._enqueue_slowly(message)

    def _enqueue_slowly(self, message: Queued) -> None:
        recorder = _recorder
        if recorder is not None:
            recorder._record(message)
            return
        if self.disabled:
            return
        with self._shutdown_lock:
            self._bypassed += 1
        if self.sync_mode and not self._closed:
            self._ledger.record(message, self._deliver_message(message, None))
        elif self._closed:
            self._ledger.hand_on([message], DeliveryError("closed", "the client was shut down"))
        else:
            self._hand_on_full(message)

    def _hand_on_full(self, message: Queued) -> None:
        full = f"the memory queue is full (max_queue_size={self.max_queue_size})"
        self._ledger.hand_on([message], DeliveryError("queue_full", full))

    def _queue_in_process(self, message: Queued) -> bool:
        if not self._queue.put(message):
            return False
        if self._worker is None:
            self._start_worker()
        return True

    def _take_over(self, message: Queued) -> None:
        """A record the relay writer rescued from a removed directory and could not write again:
        the in-process worker delivers it (or, its queue full, it is spooled or dropped)."""
        if not self._queue_in_process(message):
            with self._shutdown_lock:
                self._bypassed += 1
            self._hand_on_full(message)

    def _start_worker(self) -> None:
        with self._worker_lock:
            if self._worker is not None:
                return
            worker = Worker(
                self._queue,
                self._ledger,
                carrier_for(self._transport, self._queue.wakeup, self.max_concurrency),
                self._templates,
                retry=self.retry,
                timeout=self.timeout,
                batch_size=self.flush_at,
                flush_interval=self.flush_interval,
                max_concurrency=self.max_concurrency,
                ordering=self.ordering,
                spool=self._spool,
                idle_timeout=self.worker_idle_timeout,
                may_retire=self._retire_worker,
            )
            worker.start()
            self._worker = worker

    def _retire_worker(self, worker: Worker) -> bool:
        """An idle worker asks to end its thread; refused if a message arrived meanwhile.

        Callers append before they look at ``_worker``: either the worker sees their message
        here, or they see ``None`` and start a new worker."""
        with self._worker_lock:
            if self._worker is not worker:
                return True
            self._worker = None
            if len(self._queue):
                self._worker = worker
                return False
            return True

    # --- delivery ------------------------------------------------------------------------------

    def _deliver_message(
        self, message: Queued, abort: threading.Event | None, on_attempt: Callable[[], None] | None = None
    ) -> Outcome:
        """Deliver one queued message; bounded by the retry budget (worker) or by ``timeout`` (sync)."""
        kind, _, body, _ = message
        headers = dict(self._headers)
        headers["Idempotency-Key"] = key_of(message)
        request = Request("POST", self._urls[kind], headers, body)
        return deliver(
            self._transport,
            request,
            self.retry,
            timeout=self.timeout,
            abort=abort or threading.Event(),
            deadline=None if abort else time.monotonic() + self.timeout,
            on_retry=self._ledger.count_retry,
            on_attempt=on_attempt,
        )

    def _call(self, method: str, path: str, body: bytes | None = None, key: str | None = None) -> Any:
        """A synchronous API call with retries, bounded by ``timeout``; the decoded JSON answer.

        A body is sent with ``key`` (else a new one) as its idempotency key, the same on each retry."""
        headers = dict(self._headers)
        if body is not None:
            headers["Idempotency-Key"] = key or keys.new()
        request = Request(method, self._workspace_base + path, headers, body)
        outcome = deliver(
            self._transport,
            request,
            self.retry,
            timeout=self.timeout,
            abort=threading.Event(),
            deadline=time.monotonic() + self.timeout,
        )
        if outcome.result is Result.DELIVERED:
            assert outcome.response is not None
            try:
                return outcome.response.json()
            except ValueError as exc:
                raise APIError(f"the API answered with invalid JSON: {exc}", status=outcome.status) from exc
        if outcome.result is Result.MISCONFIGURED:
            assert outcome.error is not None
            raise outcome.error
        if outcome.response is not None:
            raise api_error(outcome.response)
        raise APIError(f"no answer from the API after {outcome.attempts} attempt(s): {outcome.error}")

    # --- synchronous calls ---------------------------------------------------------------------

    def send_transactional(
        self,
        user_id: str,
        template_id: str,
        channel: str,
        variables: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Send a transactional message now; return the API's answer. Raises :class:`APIError`.

        ``idempotency_key`` (e.g. your task's id) makes a repeated call, a retry of your own after
        a timeout, one message for the API; without it each call is a new message.
        """
        if self.workspace_id is None and not self.disabled:
            raise _missing_workspace("send_transactional()")
        key = None if idempotency_key is None else require_key(idempotency_key)
        body = transactional_body(
            user_id, template_id, channel, variables, self.max_message_bytes, self._codec
        )
        recorder = _recorder
        if recorder is not None:
            return recorder._send_transactional(body)
        if self.disabled:
            return {}
        answer = self._call("POST", "/transactional/send", body, key)
        return answer if isinstance(answer, dict) else {}

    def get_person(self, user_id: str) -> dict[str, Any] | None:
        """The person whose external id is ``user_id``, or None. Raises :class:`APIError`."""
        if self.workspace_id is None and not self.disabled:
            raise _missing_workspace("get_person()")
        user_id = require_id(user_id, "user_id")
        recorder = _recorder
        if recorder is not None:
            return recorder._get_person(user_id)
        if self.disabled:
            return None
        answer = self._call("GET", "/people/search?" + urllib.parse.urlencode({"external_id": user_id}))
        people = answer.get("people") if isinstance(answer, dict) else None
        if not people:
            return None
        person = people[0]
        return person if isinstance(person, dict) else None

    async def asend_transactional(
        self,
        user_id: str,
        template_id: str,
        channel: str,
        variables: Mapping[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """:meth:`send_transactional` for asyncio code: the call runs in a thread
        (``asyncio.to_thread``), so the event loop serves other tasks meanwhile. Same retries,
        ``timeout`` and errors. Cancelling the await does not stop the call already running."""
        import asyncio  # here: most programs never need it, and it costs 20 ms to import

        return await asyncio.to_thread(
            self.send_transactional, user_id, template_id, channel, variables, idempotency_key=idempotency_key
        )

    async def aget_person(self, user_id: str) -> dict[str, Any] | None:
        """:meth:`get_person` for asyncio code, in a thread like :meth:`asend_transactional`."""
        import asyncio

        return await asyncio.to_thread(self.get_person, user_id)

    # --- flush, shutdown, stats ------------------------------------------------------------------

    def flush(self, timeout: float = 10.0) -> bool:
        """Deliver what was enqueued before this call, waiting at most ``timeout`` seconds.

        True only when every such message reached the API (delivered, or rejected by it) and no
        message was spooled or dropped since the previous ``flush()`` returned; False when the
        deadline passed first, or when something went to the spool (replayed later) or was
        dropped: ``stats()`` and ``on_error`` say which. Never raises, never waits longer.
        """
        started = time.monotonic()
        try:
            baseline = self._flush_baseline
            if self.relay is not None:
                # First: records the relay writer must hand to the in-process worker (its
                # directory removed, and not made again) are then part of what this call awaits.
                self.relay.check_directory()
            worker = self._worker
            if worker is None:
                settled = len(self._queue) == 0
            else:
                settled = worker.wait_settled(self._queue.mark(), max(0.0, timeout))
            if self.relay is not None:
                settled = self.relay.flush(max(0.0, timeout - (time.monotonic() - started))) and settled
            self._flush_baseline = unreached = self._ledger.unreached
            return settled and unreached == baseline
        except Exception:
            logger.exception("flush() failed")
            return False

    def replay_spool(self, timeout: float = 30.0) -> bool:
        """Deliver what the disk spool holds now, in the background worker, waiting at most
        ``timeout`` seconds. True once everything this process could claim was delivered (or
        rejected); False on timeout, without a spool, or as soon as a replayed message could not
        be delivered (the API is failing: the rest stays on disk, in order, and no new pass is
        forced, so a failing API never sees a storm).

        Replay also happens by itself (at start, when the API answers again after a failure,
        after a failed pass's backoff, every 30 s); this is for the command line and for tests
        that need to know it is done."""
        if self._spool is None or not self._queue_directly:
            return False
        if self._worker is None:
            self._start_worker()
        assert self._worker is not None
        try:
            return self._worker.replay_spool(max(0.0, timeout))
        except Exception:
            logger.exception("replay_spool() failed")
            return False

    async def aflush(self, timeout: float = 10.0) -> bool:
        """:meth:`flush` for asyncio code: waits in a thread, never blocking the event loop."""
        import asyncio  # here: most programs never need it, and it costs 20 ms to import

        return await asyncio.to_thread(self.flush, timeout)

    async def ashutdown(self, timeout: float | None = None) -> None:
        """:meth:`shutdown` for asyncio code: waits in a thread, never blocking the event loop."""
        import asyncio

        await asyncio.to_thread(self.shutdown, timeout)

    def flush_after(self, timeout: float = 2.0) -> lifecycle.FlushAfter:
        """Flush when the block or the decorated function (sync or async) ends, waiting at most
        ``timeout`` seconds. For serverless handlers, whose process may be frozen between
        invocations::

            @client.flush_after(timeout=2)
            def handler(event, context): ...
        """
        return lifecycle.FlushAfter(self, timeout)

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop intake, deliver what can be delivered within ``timeout`` (default
        ``shutdown_timeout``), and hand the rest to the spool. Idempotent; never raises."""
        deadline = time.monotonic() + (self.shutdown_timeout if timeout is None else max(0.0, timeout))
        with self._shutdown_lock:
            if self._closed:
                return
            self._closed = True
            self._route()
        lifecycle.unregister(self)
        try:
            worker = self._worker
            if worker is not None:
                worker.stop()
                if not worker.join(deadline - time.monotonic()):
                    leftovers, tried = worker.take_unsettled()
                    if leftovers:
                        error = DeliveryError("shutdown", "the shutdown deadline passed")
                        kept = self._ledger.hand_on(leftovers, error, tried)
                        logger.warning(
                            "shutdown deadline reached with %d message(s) undelivered: %s",
                            len(leftovers),
                            self._where_left(kept, len(leftovers) - kept),
                        )
            if self.relay is not None:
                self.relay.close()
            if self._spool is not None:
                self._spool.close()
            if self._own_transport:
                self._transport.close()
        except Exception:
            logger.exception("shutdown() failed")

    def _where_left(self, spooled: int, dropped: int) -> str:
        where = []
        if spooled:
            assert self._spool is not None
            where.append(
                f"{spooled} spooled to {self._spool.directory} (delivered by the next process that uses it)"
            )
        if dropped:
            why = "the disk spool is off" if self._spool is None else "the disk spool is full or failing"
            where.append(f"{dropped} dropped ({why}; see on_error and stats().dropped)")
        return ", ".join(where)

    def stats(self) -> Stats:
        """A snapshot of this client's counters (see :class:`Stats`)."""
        worker = self._worker
        queued = worker.unsettled_count() if worker else len(self._queue)
        enqueued = self._queue.mark() + self._bypassed + self._ledger.filtered
        corrupt = self._spool.corrupt if self._spool is not None else 0
        concurrency = worker.concurrency_limit if worker else 0
        return self._ledger.snapshot(
            queued=queued,
            enqueued=enqueued,
            corrupt=corrupt,
            concurrency=concurrency,
            relay=None if self.relay is None else self.relay.stats(),
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"<flameup_analytics.Client host={self.host!r} workspace_id={self.workspace_id!r}>"


# --- configuration -------------------------------------------------------------------------------


def _missing_workspace(call: str) -> ConfigurationError:
    return ConfigurationError(
        f"{call} needs a workspace id: pass workspace_id=... or set FLAMEUP_WORKSPACE_ID",
        option="workspace_id",
        env="FLAMEUP_WORKSPACE_ID",
    )
