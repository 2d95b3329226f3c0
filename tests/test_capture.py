"""capture(): every client's messages recorded in the calling thread, instead of queued or sent."""

from __future__ import annotations

import dataclasses
import datetime as dt
import subprocess
import sys
import textwrap
import threading

import pytest

import flameup_analytics as fa
from flameup_analytics.testing import (
    Captured,
    CapturedIdentify,
    CapturedTrack,
    CapturedTransactional,
    LocalServer,
    capture,
)

from .conftest import API_KEY, WORKSPACE, ClientFactory


def test_tracks_and_identifies_are_recorded_in_call_order_and_nothing_is_sent(
    server: LocalServer, make_client: ClientFactory
) -> None:
    client = make_client(spool_dir=False)
    with capture() as captured:
        client.track("u1", "page_viewed", {"page": "/pricing"})
        client.identify("u1", {"email": "jane@example.com"})
        client.track("u2", "purchase_completed", {"amount": 10}, timestamp=dt.datetime(2024, 5, 1, 12))
        # Recorded synchronously: visible before any thread could have run.
        assert [message.kind for message in captured.messages] == ["track", "identify", "track"]
    assert client.flush(timeout=5)
    assert server.requests == []
    assert client.stats().enqueued == 0

    view, identify, purchase = captured.messages
    assert isinstance(view, CapturedTrack) and isinstance(identify, CapturedIdentify)
    assert isinstance(purchase, CapturedTrack)
    assert (view.user_id, view.event, view.parameters) == ("u1", "page_viewed", {"page": "/pricing"})
    assert identify.traits == {"email": "jane@example.com"}
    assert identify.body == {"userId": "u1", "traits": {"email": "jane@example.com"}}
    assert purchase.timestamp == "2024-05-01T12:00:00.000Z"
    assert purchase.body == {
        "external_id": "u2",
        "event": "purchase_completed",
        "parameters": {"amount": 10},
        "timestamp": "2024-05-01T12:00:00.000Z",
    }
    assert len({view.key, identify.key, purchase.key}) == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        view.event = "changed"  # type: ignore[misc]


def test_invalid_calls_still_raise_and_are_not_recorded(make_client: ClientFactory) -> None:
    client = make_client(spool_dir=False)
    with capture() as captured:
        with pytest.raises(fa.ValidationError, match="external_id"):
            client.track("", "clicked")
        with pytest.raises(fa.ValidationError, match="parameters"):
            client.track("u1", "clicked", {"when": object()})
        with pytest.raises(fa.ValidationError, match="channel"):
            client.send_transactional("u1", "welcome", "fax")
        with pytest.raises(fa.ValidationError, match="user_id"):
            client.get_person("")
    assert captured.messages == []


def test_a_client_made_before_the_capture_is_captured_then_delivers_again(
    server: LocalServer, make_client: ClientFactory
) -> None:
    client = make_client(spool_dir=False)
    client.track("u1", "before")
    with capture() as captured:
        client.track("u1", "during")
        assert client.flush(timeout=5)  # what was queued before the capture is still delivered
    client.track("u1", "after")
    assert client.flush(timeout=5)
    assert [request.json["event"] for request in server.tracks()] == ["before", "after"]
    assert [track.event for track in captured.tracks()] == ["during"]


def test_the_module_level_default_client_is_captured(server: LocalServer) -> None:
    fa.init(api_key=API_KEY, workspace_id=WORKSPACE, host=server.url, spool_dir=False, flush_interval=0.05)
    try:
        with capture() as captured:
            fa.track("u1", "signed_up", {"plan": "pro"})
            fa.identify("u1", {"plan": "pro"})
        captured.assert_tracked("signed_up", user_id="u1", plan="pro")
        captured.assert_identified("u1", plan="pro")
        fa.track("u1", "after")
        assert fa.flush(timeout=5)
        assert [request.json["event"] for request in server.tracks()] == ["after"]
    finally:
        fa.shutdown()


def test_clients_made_during_the_capture_are_captured_then_deliver(
    server: LocalServer, make_client: ClientFactory
) -> None:
    with capture() as captured:
        client = make_client(spool_dir=False)
        client.track("u1", "during")
    client.track("u1", "after")
    assert client.flush(timeout=5)
    assert [track.event for track in captured.tracks()] == ["during"]
    assert [request.json["event"] for request in server.tracks()] == ["after"]


def test_disabled_and_sync_mode_clients_are_captured_and_keep_their_mode_after(
    server: LocalServer, make_client: ClientFactory
) -> None:
    disabled = fa.Client(disabled=True, workspace_id=WORKSPACE)
    synchronous = make_client(sync_mode=True, spool_dir=False)
    with capture() as captured:
        disabled.track("u1", "from_disabled")
        disabled.identify("u1", {"name": "Jane"})
        synchronous.track("u2", "from_sync")
    assert [message.user_id for message in captured.messages] == ["u1", "u1", "u2"]
    assert server.requests == []

    disabled.track("u1", "still_disabled")
    synchronous.track("u2", "sent_in_the_call")
    assert [request.json["event"] for request in server.tracks()] == ["sent_in_the_call"]
    assert len(captured) == 3


def test_send_transactional_and_get_person_answer_from_the_capture(
    server: LocalServer, make_client: ClientFactory
) -> None:
    client = make_client(spool_dir=False)
    with capture() as captured:
        answer = client.send_transactional("u1", "welcome_email", "email", {"first_name": "Jane"})
        assert client.get_person("u1") is None
        client.identify("u1", {"email": "jane@example.com", "plan": "free"})
        client.identify("u1", {"plan": "pro"})
        person = client.get_person("u1")
    assert server.requests == []
    assert answer["status"] == "queued" and isinstance(answer["id"], str) and answer["id"]
    assert person == {"external_id": "u1", "traits": {"email": "jane@example.com", "plan": "pro"}}
    (sent,) = captured.transactionals()
    assert isinstance(sent, CapturedTransactional)
    assert (sent.user_id, sent.template_id, sent.channel) == ("u1", "welcome_email", "email")
    assert sent.variables == {"first_name": "Jane"} and sent.id == answer["id"]
    # The answer is a copy: changing it changes neither the capture nor the next answer.
    assert person is not None
    person["traits"]["plan"] = "hacked"
    assert captured.identifies()[1].traits == {"plan": "pro"}


def test_filters_select_by_equality_on_what_is_given() -> None:
    client = fa.Client(disabled=True, workspace_id=WORKSPACE)
    with capture() as captured:
        client.track("u1", "purchase_completed", {"amount": 10, "currency": "USD"})
        client.track("u2", "purchase_completed", {"amount": 25, "currency": "USD"})
        client.track("u1", "page_viewed", {"page": "/"})
        client.identify("u1", {"plan": "pro"})
        client.identify("u2")
        client.send_transactional("u1", "receipt", "email")
        client.send_transactional("u2", "receipt", "sms")

    assert len(captured.tracks()) == 3
    assert [t.user_id for t in captured.tracks(event="purchase_completed")] == ["u1", "u2"]
    assert [t.event for t in captured.tracks(user_id="u1")] == ["purchase_completed", "page_viewed"]
    assert [t.user_id for t in captured.tracks(currency="USD", amount=25)] == ["u2"]
    assert captured.tracks(event="purchase_completed", coupon=None) == []  # absent is not None
    assert [i.user_id for i in captured.identifies()] == ["u1", "u2"]
    assert captured.identifies("u2")[0].traits == {}
    assert [t.channel for t in captured.transactionals(template_id="receipt")] == ["email", "sms"]
    assert [t.user_id for t in captured.transactionals(channel="sms")] == ["u2"]
    assert [t.channel for t in captured.transactionals(user_id="u1")] == ["email"]

    captured.clear()
    assert captured.messages == [] and len(captured) == 0


def test_assert_tracked_returns_the_match_or_explains_each_difference() -> None:
    client = fa.Client(disabled=True, workspace_id=WORKSPACE)
    with capture() as captured:
        client.track("u1", "page_viewed", {"page": "/pricing"})
        client.track("u1", "purchase_completed", {"amount": 12, "currency": "USD"})
        client.identify("u1", {"email": "jane@example.com"})

    match = captured.assert_tracked("purchase_completed", user_id="u1", currency="USD")
    assert match.parameters["amount"] == 12

    with pytest.raises(AssertionError) as failure:
        captured.assert_tracked("purchase_completed", user_id="u1", amount=10)
    assert str(failure.value) == textwrap.dedent(
        """\
        no captured track matches event='purchase_completed', user_id='u1', amount=10
        captured 2 track call(s), closest first:
          [1] 'purchase_completed' user_id='u1' parameters={'amount': 12, 'currency': 'USD'}
                amount: got 12, expected 10
          [0] 'page_viewed' user_id='u1' parameters={'page': '/pricing'}
                event: got 'page_viewed', expected 'purchase_completed'
                amount: missing, expected 10"""
    )

    explained = r"traits=\{'email': 'jane@example.com'\}\n +email: got 'jane@example.com', expected 'x'$"
    with pytest.raises(AssertionError, match=explained):
        captured.assert_identified("u1", email="x")


def test_assertion_messages_say_when_nothing_was_tracked_and_cut_long_lists() -> None:
    client = fa.Client(disabled=True, workspace_id=WORKSPACE)
    with capture() as captured:
        client.identify("u1")
    nothing = r"captured no track call at all \(1 message\(s\) of other kinds\)"
    with pytest.raises(AssertionError, match=nothing):
        captured.assert_tracked("signed_up")

    with capture() as captured:
        for index in range(15):
            client.track(f"u{index}", "clicked")
    with pytest.raises(AssertionError) as failure:
        captured.assert_tracked("clicked", user_id="nobody")
    lines = str(failure.value).splitlines()
    assert lines[1] == "captured 15 track call(s), closest first:"
    assert lines[2].startswith("  [0] 'clicked' user_id='u0'") and lines[-1] == "  ... and 5 more"


def test_many_threads_record_every_message_in_each_threads_order(make_client: ClientFactory) -> None:
    shared = make_client(spool_dir=False)
    threads, per_thread = 8, 250
    start = threading.Barrier(threads)

    def produce(thread: int) -> None:
        own = fa.Client(disabled=True) if thread % 2 else shared
        start.wait()
        for step in range(per_thread):
            own.track(f"user_{thread}", "step", {"thread": thread, "n": step})

    with capture() as captured:
        workers = [threading.Thread(target=produce, args=(thread,)) for thread in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

    assert len(captured) == threads * per_thread
    assert len({track.key for track in captured.tracks()}) == threads * per_thread
    for thread in range(threads):
        steps = [track.parameters["n"] for track in captured.tracks(thread=thread)]
        assert steps == list(range(per_thread))
    assert shared.stats().enqueued == 0


def test_nested_captures_innermost_receives_then_the_outer_one_again(
    server: LocalServer, make_client: ClientFactory
) -> None:
    client = make_client(spool_dir=False)
    with capture() as outer:
        client.track("u1", "first")
        with capture() as inner:
            client.track("u1", "second")
        client.track("u1", "third")
    assert [track.event for track in outer.tracks()] == ["first", "third"]
    assert [track.event for track in inner.tracks()] == ["second"]
    client.track("u1", "delivered")
    assert client.flush(timeout=5)
    assert [request.json["event"] for request in server.tracks()] == ["delivered"]


def test_captures_of_other_threads_may_end_in_any_order(
    server: LocalServer, make_client: ClientFactory
) -> None:
    client = make_client(spool_dir=False)
    entered, leave, left = threading.Event(), threading.Event(), threading.Event()
    in_thread: list[Captured] = []

    def capture_in_a_thread() -> None:
        with capture() as captured:
            in_thread.append(captured)
            entered.set()
            leave.wait()
        left.set()

    with capture() as mine:
        thread = threading.Thread(target=capture_in_a_thread)
        thread.start()
        assert entered.wait(5)
        client.track("u1", "while_both")  # captures are process-wide: the latest one receives
    client.track("u1", "after_mine_ended")  # the thread's capture is still active
    leave.set()
    assert left.wait(5)
    thread.join()
    client.track("u1", "after_both")
    assert client.flush(timeout=5)

    assert mine.tracks() == []
    assert [track.event for track in in_thread[0].tracks()] == ["while_both", "after_mine_ended"]
    assert [request.json["event"] for request in server.tracks()] == ["after_both"]


def test_an_exception_in_the_block_still_ends_the_capture(
    server: LocalServer, make_client: ClientFactory
) -> None:
    client = make_client(spool_dir=False)
    with pytest.raises(RuntimeError), capture():
        client.track("u1", "during")
        raise RuntimeError("the code under test failed")
    client.track("u1", "after")
    assert client.flush(timeout=5)
    assert [request.json["event"] for request in server.tracks()] == ["after"]


def test_the_hot_path_flag_is_off_only_during_a_capture_and_shutdown_is_never_undone(
    make_client: ClientFactory,
) -> None:
    running, closing = make_client(spool_dir=False), make_client(spool_dir=False)
    assert running._queue_directly and closing._queue_directly
    with capture() as captured:
        assert not running._queue_directly and not closing._queue_directly
        closing.shutdown(timeout=1)
        closing.track("u1", "after_shutdown")  # still recorded: the code under test made it
    assert running._queue_directly and not closing._queue_directly
    assert [track.event for track in captured.tracks()] == ["after_shutdown"]
    closing.track("u1", "closed")
    assert closing.stats().dropped == 1


def test_capture_works_without_pytest() -> None:
    script = textwrap.dedent(
        """
        import sys
        import flameup_analytics as fa
        from flameup_analytics.testing import capture

        client = fa.Client(api_key="key", host="http://127.0.0.1:9", spool_dir=False)
        with capture() as captured:
            client.track("u1", "purchase_completed", {"amount": 10})
        captured.assert_tracked("purchase_completed", user_id="u1", amount=10)
        assert "pytest" not in sys.modules, "flameup_analytics.testing imported pytest"
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
