"""asend_transactional and aget_person: the synchronous calls in a thread, so the event loop keeps
serving other tasks; same answers, retries, errors and timeouts (against the real local server)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest

import flameup_analytics as fa
from flameup_analytics.testing import Fault, LocalServer, ReceivedRequest

from .conftest import ClientFactory

T = TypeVar("T")


def held_until_the_loop_answers(server: LocalServer) -> Callable[[Awaitable[T]], Coroutine[Any, Any, T]]:
    """A wrapper that awaits a call while the server holds its request until a task on the same
    loop has seen it arrive: the call can only succeed if the loop kept running other tasks."""
    arrived, release = threading.Event(), threading.Event()

    def hold(request: ReceivedRequest) -> None:
        arrived.set()
        release.wait(10)  # longer than the client's timeout (5 s): a blocked loop fails the call

    server.on_request = hold

    async def run(call: Awaitable[T]) -> T:
        released_by_the_loop = False

        async def watcher() -> None:
            nonlocal released_by_the_loop
            while not arrived.is_set():
                await asyncio.sleep(0.001)
            release.set()
            released_by_the_loop = True

        watching = asyncio.create_task(watcher())
        try:
            answer = await call
            # Only the watcher, a task on this loop, could have let the server answer in time.
            assert released_by_the_loop
        finally:
            release.set()
        await watching
        return answer

    return run


def test_asend_transactional_lets_the_loop_run_meanwhile(
    server: LocalServer, make_client: ClientFactory
) -> None:
    client = make_client(timeout=5.0)  # room for a loaded machine; still under the server's hold
    run = held_until_the_loop_answers(server)
    answer = asyncio.run(run(client.asend_transactional("user_1", "welcome", "email", {"name": "Jane"})))
    assert answer["status"] == "queued"
    (sent,) = server.transactionals()
    assert sent.json["variables"] == {"name": "Jane"}


def test_aget_person_lets_the_loop_run_meanwhile(server: LocalServer, make_client: ClientFactory) -> None:
    client = make_client(sync_mode=True, timeout=5.0)
    client.identify("user_1", {"plan": "pro"})
    run = held_until_the_loop_answers(server)
    person = asyncio.run(run(client.aget_person("user_1")))
    assert person is not None and person["external_id"] == "user_1"


def test_the_async_calls_retry_like_the_synchronous_ones(
    server: LocalServer, make_client: ClientFactory
) -> None:
    server.add_fault(Fault(status=503, times=1, kind="transactional"))
    server.add_fault(Fault(status=503, times=1, kind="get_person"))
    client = make_client()

    async def both() -> tuple[dict[str, Any], dict[str, Any] | None]:
        sent = await client.asend_transactional("user_1", "t", "sms", idempotency_key="task-5")
        return sent, await client.aget_person("nobody")

    sent, person = asyncio.run(both())
    assert sent["status"] == "queued" and person is None
    keys = [request.idempotency_key for request in server.requests if request.kind == "transactional"]
    assert keys == ["task-5", "task-5"]


def test_the_async_calls_raise_what_the_synchronous_ones_raise(
    server: LocalServer, make_client: ClientFactory
) -> None:
    server.add_fault(Fault(status=400, times=None, kind="transactional", message="unknown template"))
    client = make_client()
    with pytest.raises(fa.APIError, match="unknown template") as refused:
        asyncio.run(client.asend_transactional("user_1", "nope", "email"))
    assert refused.value.status == 400
    with pytest.raises(fa.ValidationError, match="channel"):
        asyncio.run(client.asend_transactional("user_1", "t", "fax"))
    with pytest.raises(fa.ValidationError, match="user_id"):
        asyncio.run(client.aget_person(""))


def test_the_async_calls_are_bounded_by_the_clients_timeout(
    server: LocalServer, make_client: ClientFactory
) -> None:
    server.add_fault(Fault(action="hang", times=None, kind="get_person"))
    client = make_client(timeout=0.3)
    with pytest.raises(fa.APIError, match="no answer from the API"):
        asyncio.run(client.aget_person("user_1"))
    server.release_hung()
