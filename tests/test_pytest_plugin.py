"""The pytest plugin, run the way users run it: inner pytest sessions that only have the SDK installed."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

#: hypothesis's plugin (a dev dependency here) costs a second per inner session, and is unrelated.
QUIET = ("-p", "no:hypothesispytest")

APP = """
import flameup_analytics as fa

client = fa.Client(disabled=True, workspace_id="ws_app")  # made at import, before any fixture


def checkout(user_id, amount):
    client.identify(user_id, {"last_order": amount})
    client.track(user_id, "purchase_completed", {"amount": amount, "currency": "USD"})
"""


def test_the_plugin_is_loaded_through_its_entry_point(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_entry_point="""
        def test_fixture_is_there(flameup_captured):
            assert flameup_captured.messages == []
        """
    )
    # A separate process: only the installed entry point can bring the fixtures in.
    pytester.runpytest_subprocess(*QUIET).assert_outcomes(passed=1)
    disabled = pytester.runpytest_subprocess(*QUIET, "-p", "no:flameup_analytics")
    disabled.assert_outcomes(errors=1)
    disabled.stdout.fnmatch_lines(["*fixture 'flameup_captured' not found*"])


def test_flameup_captured_sees_what_the_code_under_test_did_and_explains_a_miss(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(app=APP)
    pytester.makepyfile(
        test_checkout="""
        from app import checkout

        def test_checkout_tracks_the_purchase(flameup_captured):
            checkout("u1", 12)
            flameup_captured.assert_tracked("purchase_completed", user_id="u1", amount=12)
            assert flameup_captured.identifies("u1")[0].traits == {"last_order": 12}

        def test_wrong_amount(flameup_captured):
            checkout("u1", 12)
            flameup_captured.assert_tracked("purchase_completed", user_id="u1", amount=10)
        """
    )
    result = pytester.runpytest(*QUIET)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            '>*flameup_captured.assert_tracked("purchase_completed", user_id="u1", amount=10)',
            "E*AssertionError: no captured track matches event='purchase_completed', user_id='u1', amount=10",
            "E*captured 1 track call(s), closest first:",
            "E*[[]0[]] 'purchase_completed' user_id='u1' parameters={'amount': 12, 'currency': 'USD'}",
            "E*amount: got 12, expected 10",
        ]
    )
    # The helper's own frame is hidden: the failure points at the test's line.
    result.stdout.no_fnmatch_line("*testing/capture.py*")


def test_the_capture_ends_with_its_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(app=APP)
    pytester.makepyfile(
        test_order="""
        from app import checkout

        def test_captured(flameup_captured):
            checkout("u1", 5)
            assert len(flameup_captured.messages) == 2

        def test_delivered_after(flameup_client, flameup_server):
            flameup_client.track("u1", "clicked")
            assert flameup_client.flush(timeout=5)
            assert len(flameup_server.tracks()) == 1
        """
    )
    pytester.runpytest(*QUIET).assert_outcomes(passed=2)


def test_flameup_client_delivers_to_flameup_server_and_both_end_with_the_test(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_server="""
        import socket
        import urllib.parse

        seen = {}

        def test_delivers(flameup_client, flameup_server):
            seen["client"], seen["server"] = flameup_client, flameup_server
            seen["address"] = urllib.parse.urlsplit(flameup_server.url).netloc
            assert flameup_client.host == flameup_server.url
            flameup_client.track("u1", "signed_up", {"plan": "pro"})
            flameup_client.identify("u1", {"plan": "pro"})
            assert flameup_client.flush(timeout=5)
            assert [r.json["event"] for r in flameup_server.tracks()] == ["signed_up"]
            assert flameup_server.people == {"u1": {"plan": "pro"}}
            assert flameup_client.get_person("u1") == {"external_id": "u1", "traits": {"plan": "pro"}}

        def test_then_both_are_gone():
            client = seen["client"]
            client.track("u1", "late")
            stats = client.stats()
            assert (stats.dropped, stats.spooled) == (1, 0)  # shut down, and no spool
            host, port = seen["address"].split(":")
            try:
                socket.create_connection((host, int(port)), timeout=2).close()
            except ConnectionRefusedError:
                pass
            else:
                raise AssertionError("the server still listens")
        """
    )
    pytester.runpytest(*QUIET).assert_outcomes(passed=2)


def test_fixtures_compose_a_captured_client_sends_nothing(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_compose="""
        def test_captured_client(flameup_client, flameup_server, flameup_captured):
            flameup_client.track("u1", "clicked")
            answer = flameup_client.send_transactional("u1", "welcome", "email")
            assert flameup_client.flush(timeout=5)
            assert flameup_server.requests == []
            flameup_captured.assert_tracked("clicked", user_id="u1")
            assert flameup_captured.transactionals("welcome")[0].id == answer["id"]
        """
    )
    pytester.runpytest(*QUIET).assert_outcomes(passed=1)
