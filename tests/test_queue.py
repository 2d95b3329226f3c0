"""The memory queue: what a waiting message holds, and how it gets its idempotency key."""

from __future__ import annotations

import sys
from typing import Literal

from hypothesis import given
from hypothesis import strategies as st

from flameup_analytics.message import identify_body, keys, track_body, unpack
from flameup_analytics.queue import MessageQueue
from flameup_analytics.testing import LocalServer

from .conftest import ClientFactory

#: Any id the SDK accepts: a non-empty string that UTF-8 can carry (no lone surrogates).
SURROGATES: tuple[Literal["Cs"]] = ("Cs",)
IDS = st.text(st.characters(exclude_categories=SURROGATES), min_size=1)


@given(user_id=IDS)
def test_a_body_gives_back_the_exact_kind_and_user_id_it_was_made_from(user_id: str) -> None:
    for kind, body in [
        ("track", track_body(user_id, "played", {"n": 1}, None, 1 << 20)[1]),
        ("identify", identify_body(user_id, {"plan": "pro"}, 1 << 20)[1]),
    ]:
        assert unpack(body)[:3] == (kind, user_id, body)


def test_each_message_gets_a_new_key_as_it_is_taken_and_a_callers_key_is_kept() -> None:
    queue = MessageQueue(max_size=10, flush_at=10)
    bodies = [track_body(f"user_{n}", "played", {}, None, 1 << 20)[1] for n in range(3)]
    for body in bodies:
        assert queue.put(body)
    assert queue.put(("identify", "user_0", b"{}", "order-17"))
    made_before = keys.next_number()
    first, taken = queue.take(10)
    assert first == 0
    assert [message[:3] for message in taken[:3]] == [("track", f"user_{n}", bodies[n]) for n in range(3)]
    generated = [message[3] for message in taken[:3]]
    assert all(isinstance(key, int) and key > made_before for key in generated)
    assert len(set(generated)) == 3
    assert taken[3] == ("identify", "user_0", b"{}", "order-17")


def test_a_queued_message_holds_no_reference_to_the_callers_user_id(
    server: LocalServer, make_client: ClientFactory
) -> None:
    # An app that builds the id on every call (str(user.pk)) must not pay for one copy per message.
    client = make_client(flush_at=1000, flush_interval=3600)
    user_id = "".join(["user_", "42"])
    references = sys.getrefcount(user_id)
    client.track(user_id, "played", {"n": 1})
    client.identify(user_id, {"plan": "pro"})
    assert client.stats().queued == 2
    assert sys.getrefcount(user_id) == references
    assert client.flush(timeout=10)
    assert [r.json["external_id"] for r in server.tracks()] == ["user_42"]
    assert [r.json["userId"] for r in server.identifies()] == ["user_42"]
