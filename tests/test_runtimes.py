"""Where Python apps run: fork with locks held, multiprocessing, signals, serverless, asyncio,
many clients. Real processes and a real server throughout."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

import flameup_analytics as fa
from flameup_analytics.testing import Fault, LocalServer

from .conftest import API_KEY, WORKSPACE, ClientFactory


def sdk_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(("flameup-worker", "flameup-sender"))]


# --- fork and multiprocessing --------------------------------------------------------------------


def test_fork_while_another_thread_holds_the_sdk_locks(
    server: LocalServer, make_client: ClientFactory
) -> None:
    client = make_client(flush_interval=3600, flush_at=1000)
    client.track("parent", "before_fork")
    spool = client._spool
    assert spool is not None
    held = [client._ledger._lock, client._queue._take_lock, client._worker_lock, spool._lock]
    for lock in held:
        lock.acquire()
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit code
            client.track("child", "in_child")
            os._exit(0 if client.flush(timeout=10) and client.stats().delivered == 1 else 1)
    finally:
        for lock in held:
            lock.release()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert client.flush(timeout=10)
    assert sorted(r.json["external_id"] for r in server.tracks()) == ["child", "parent"]


def _multiprocessing_task(host: str, n: int) -> int:
    client = fa.get_client() if fa._default is not None else fa.init(api_key=API_KEY, host=host)
    client.track(f"worker_{os.getpid()}", "task", {"n": n})
    return os.getpid()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessing_children_deliver_without_an_explicit_flush(server: LocalServer, method: str) -> None:
    # No flush in the task: multiprocessing's children end with os._exit(), skipping atexit,
    # so only the SDK's own multiprocessing exit hook can deliver these.
    context = multiprocessing.get_context(method)
    with context.Pool(2, maxtasksperchild=5) as pool:
        pids = pool.starmap(_multiprocessing_task, [(server.url, n) for n in range(10)])
        pool.close()
        pool.join()
    assert len(set(pids)) >= 2
    assert server.wait_for(10, timeout=30, kind="track")
    assert sorted(r.json["parameters"]["n"] for r in server.tracks()) == list(range(10))


def test_a_preforked_client_in_multiprocessing_children(server: LocalServer) -> None:
    client = fa.init(api_key=API_KEY, host=server.url, flush_interval=3600, flush_at=1000)
    try:
        client.track("parent", "queued_before_fork")
        context = multiprocessing.get_context("fork")
        processes = [context.Process(target=_multiprocessing_task, args=(server.url, n)) for n in range(3)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=30)
            assert process.exitcode == 0
        assert server.wait_for(3, timeout=30, kind="track")
        assert all(r.json["external_id"] != "parent" for r in server.tracks())  # not re-sent by children
    finally:
        fa.shutdown()
    events = [r.json["event"] for r in server.tracks()]
    assert sorted(events) == ["queued_before_fork", "task", "task", "task"]


# --- signals -------------------------------------------------------------------------------------


def spawn(server: LocalServer, prelude: str, options: str) -> subprocess.Popen[str]:
    script = textwrap.dedent(prelude) + textwrap.dedent(
        f"""
        import sys
        import flameup_analytics as fa
        client = fa.Client(api_key={API_KEY!r}, workspace_id={WORKSPACE!r}, host={server.url!r},
                           flush_interval=3600, flush_at=100_000, spool_dir=False, {options})
        for n in range(20):
            client.track("user_1", "clicked", {{"n": n}})
        try:
            print("ready", flush=True)  # inside the try: a SIGINT may follow at once
            sys.stdin.read()
        except KeyboardInterrupt:
            print("KeyboardInterrupt reached the app", flush=True)
            sys.exit(3)
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline() == "ready\n"
    return process


def test_handle_signals_delivers_on_sigterm_then_ends_as_sigterm_would(server: LocalServer) -> None:
    process = spawn(server, "", "handle_signals=True")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == -signal.SIGTERM, stderr
    assert len(server.tracks()) == 20


def test_handle_signals_chains_the_handler_already_installed(server: LocalServer) -> None:
    prelude = """
        import signal, sys
        def app_handler(signum, frame):
            # A graceful stop that still tracks: the SDK flushed, it did not shut down.
            client.track("user_1", "stopping")
            print("app handler ran", flush=True)
            sys.exit(0)
        signal.signal(signal.SIGTERM, app_handler)
    """
    # The flush before the app's handler gets the whole shutdown_timeout: room for a loaded machine
    # (with 2 s it could end short, and the rest went out together with "stopping").
    process = spawn(server, prelude, "handle_signals=True, shutdown_timeout=20")
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert "app handler ran" in stdout
    events = [r.json["event"] for r in server.tracks()]
    assert events.count("clicked") == 20 and events[-1] == "stopping"


def test_handle_signals_keeps_ctrl_c_a_keyboard_interrupt(server: LocalServer) -> None:
    # A process started by a shell's background job inherits SIGINT ignored, and Python then
    # leaves it ignored: make the app the one this test is about, where Ctrl+C raises.
    prelude = """
        import signal
        signal.signal(signal.SIGINT, signal.default_int_handler)
    """
    process = spawn(server, prelude, "handle_signals=True")
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 3, stderr
    assert "KeyboardInterrupt reached the app" in stdout
    assert len(server.tracks()) == 20


def test_as_pid_1_in_a_container_sigterm_still_ends_the_process(server: LocalServer) -> None:
    # The kernel ignores a default signal action for PID 1, so re-raising SIGTERM would not end
    # a container's init process: the SDK exits with 128 + SIGTERM instead.
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "--pid", "--fork", "true"], check=False).returncode != 0:
        pytest.skip("needs unshare(1) with the right to make a PID namespace (root), as in CI")
    script = textwrap.dedent(
        f"""
        import os, signal
        import flameup_analytics as fa
        assert os.getpid() == 1
        client = fa.Client(api_key={API_KEY!r}, host={server.url!r}, spool_dir=False,
                           handle_signals=True, flush_interval=3600, flush_at=1000)
        for n in range(5):
            client.track("user_1", "clicked", {{"n": n}})
        os.kill(os.getpid(), signal.SIGTERM)
        print("still running after SIGTERM", flush=True)
        """
    )
    result = subprocess.run(
        [unshare, "--pid", "--fork", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    assert "still running" not in result.stdout
    assert len(server.tracks()) == 5


def test_a_signal_while_the_main_thread_holds_an_sdk_lock_does_not_hang(server: LocalServer) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal
        import flameup_analytics as fa
        client = fa.Client(api_key={API_KEY!r}, host={server.url!r}, spool_dir=False,
                           handle_signals=True, shutdown_timeout=0.5)
        client.track("user_1", "clicked")
        with client._shutdown_lock:  # the handler runs right here, between two bytecodes
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10_000_000):
                pass
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == -signal.SIGTERM, result.stderr


def test_without_handle_signals_sigterm_loses_what_is_in_memory(server: LocalServer) -> None:
    # What docs/spool.md says happens by default: the process dies at once, atexit never runs.
    process = spawn(server, "", "handle_signals=False")
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=30)
    assert process.returncode == -signal.SIGTERM
    assert server.tracks() == []


# --- serverless ----------------------------------------------------------------------------------


def test_flush_after_as_a_decorator_delivers_before_returning(
    server: LocalServer, make_client: ClientFactory
) -> None:
    client = make_client(flush_interval=3600, flush_at=1000)

    @client.flush_after(timeout=5)
    def handler(event: dict[str, str], context: object) -> str:
        client.track(event["user"], "invoked")
        return "ok"

    assert handler({"user": "user_1"}, None) == "ok"
    assert handler.__name__ == "handler"
    assert len(server.tracks()) == 1  # delivered before handler() returned: no waiting here


def test_flush_after_flushes_even_when_the_block_raises(
    server: LocalServer, make_client: ClientFactory
) -> None:
    client = make_client(flush_interval=3600, flush_at=1000)
    with pytest.raises(KeyError), client.flush_after(timeout=5):
        client.track("user_1", "invoked")
        raise KeyError("handler bug")
    assert len(server.tracks()) == 1


def test_flush_after_on_a_coroutine_and_as_an_async_context_manager(
    server: LocalServer, make_client: ClientFactory
) -> None:
    client = make_client(flush_interval=3600, flush_at=1000)

    @client.flush_after(timeout=5)
    async def handler() -> str:
        client.track("user_1", "async_invoked")
        return "done"

    async def main() -> None:
        assert await handler() == "done"
        assert len(server.tracks()) == 1
        async with client.flush_after(timeout=5):
            client.track("user_2", "async_block")
        assert len(server.tracks()) == 2

    asyncio.run(main())


def test_flush_after_never_waits_past_its_timeout(server: LocalServer, make_client: ClientFactory) -> None:
    server.add_fault(Fault(action="hang", times=None))
    client = make_client(timeout=30)

    @client.flush_after(timeout=0.2)
    def handler() -> str:
        client.track("user_1", "invoked")
        return "still returns"

    assert handler() == "still returns"
    server.release_hung()


def test_a_connection_closed_by_the_server_is_retried_once_transparently(
    server: LocalServer, make_client: ClientFactory
) -> None:
    client = make_client()
    client.track("user_1", "first")  # opens the pooled keep-alive connection
    assert client.flush(timeout=5)
    server.add_fault(Fault(action="drop", times=1))  # as a thawed serverless runtime would find it
    client.track("user_1", "second")
    assert client.flush(timeout=5)
    assert [r.status for r in server.requests] == [200, 0, 200]
    stats = client.stats()
    assert (stats.delivered, stats.retried) == (2, 0)


# --- asyncio -------------------------------------------------------------------------------------


def test_aflush_and_ashutdown_do_not_block_the_event_loop(
    server: LocalServer, make_client: ClientFactory
) -> None:
    server.latency = 0.3
    client = make_client()

    async def main() -> int:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        client.track("user_1", "clicked")
        assert await client.aflush(timeout=5)
        client.track("user_1", "clicked")
        await client.ashutdown(timeout=5)
        stop.set()
        await task
        return ticks

    ticks = asyncio.run(main())
    assert len(server.tracks()) == 2
    assert ticks >= 10  # the loop kept running through two 300 ms waits


# --- many clients --------------------------------------------------------------------------------


def test_two_clients_with_one_key_and_host_warn_once(
    server: LocalServer, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="flameup_analytics"):
        make_client()
        make_client()
        make_client()
    assert len([r for r in caplog.records if "same API key and host" in r.message]) == 1


def test_idle_workers_end_their_threads_and_come_back_when_needed(
    server: LocalServer, make_client: ClientFactory
) -> None:
    before = set(sdk_threads())
    clients = [make_client(worker_idle_timeout=0.2, max_concurrency=2, spool_dir=False) for _ in range(10)]
    for index, client in enumerate(clients):
        for user in range(4):
            client.track(f"user_{user}", "clicked", {"client": index})
    for client in clients:
        assert client.flush(timeout=10)
    started = [t for t in sdk_threads() if t not in before]
    assert started
    for thread in started:
        thread.join(timeout=10)
        assert not thread.is_alive()
    clients[0].track("user_1", "after_idle")
    assert clients[0].flush(timeout=10)
    assert len(server.tracks()) == 41
