"""The event loop that carries the default transport's attempts: deadlines, against a real local server."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

import flameup_analytics as fa
from flameup_analytics.connections import Exchange
from flameup_analytics.event_loop import LoopCarrier
from flameup_analytics.message import STANDARD, track_body
from flameup_analytics.queue import Wakeup
from flameup_analytics.testing import Fault, LocalServer

from .conftest import API_KEY, WORKSPACE, wait_until


@pytest.fixture
def carrier_and_exchange(server: LocalServer) -> Iterator[tuple[LoopCarrier, Exchange]]:
    client = fa.Client(API_KEY, WORKSPACE, host=server.url, spool_dir=False)
    _, body = track_body("user_1", "e", None, None, 32 * 1024, STANDARD)
    carrier = LoopCarrier(client._transport, Wakeup())  # type: ignore[arg-type]
    yield carrier, Exchange(client._templates["track"], "key-1", body)
    carrier.close()
    client.shutdown()


def _answered(carrier: LoopCarrier, within: float = 15.0) -> Exchange:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        done = carrier.poll(0.05)
        if done:
            (exchange,) = done
            return exchange
    raise AssertionError("the loop gave nothing back")


def test_an_attempt_tried_again_on_the_same_connection_keeps_its_own_deadline_not_the_last_ones(
    server: LocalServer, carrier_and_exchange: tuple[LoopCarrier, Exchange]
) -> None:
    carrier, exchange = carrier_and_exchange
    # An attempt that hangs, ahead of ours, keeps our first attempt's deadline entry in the loop
    # after that attempt is answered.
    fault = server.add_fault(Fault(action="hang"))
    hung = Exchange(exchange.template, "key-hung", exchange.body)
    carrier.start(hung, 0.5)
    assert wait_until(lambda: carrier.poll(0.01) == [] and fault.hits == 1)
    carrier.start(exchange, 2.0)
    assert _answered(carrier) is exchange and exchange.response.status == 200  # type: ignore[union-attr]
    # The same exchange again, on the connection kept alive: its answer comes after the first
    # attempt's deadline, well within its own.
    server.latency = 3.0
    carrier.start(exchange, 10.0)
    assert _answered(carrier) is hung and "timed out" in str(hung.error)
    assert _answered(carrier) is exchange
    assert exchange.error is None and exchange.response.status == 200  # type: ignore[union-attr]


def test_an_attempt_with_no_answer_by_its_deadline_ends_as_timed_out(
    server: LocalServer, carrier_and_exchange: tuple[LoopCarrier, Exchange]
) -> None:
    carrier, exchange = carrier_and_exchange
    server.latency = 5.0
    started = time.monotonic()
    carrier.start(exchange, 0.3)
    answered = _answered(carrier)
    assert answered.response is None and "timed out" in str(answered.error)
    assert time.monotonic() - started >= 0.3
