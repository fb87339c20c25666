"""Socket Mode end to end: the same app over a local WebSocket, against a real worker.

``MockSocketModeServer`` plays Slack's Socket Mode service (``apps.connections.open`` on
``MockSlackAPI`` hands out its URL); envelopes carry slash commands shaped as Slack sends
them, and the app's acks come back on the socket. Slow answers go to the response_url.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from chatbot.config import Settings
from chatbot.slack import (
    HttpServer,
    SlackMetrics,
    SocketModeRunner,
    build_app,
    make_executor,
    make_server,
    make_web_client,
)
from tests.support import wait_until
from tests.support.slack_api import Call, MockSlackAPI, validate_blocks
from tests.support.slack_payloads import (
    FORM,
    app_home_opened_event,
    event_callback_payload,
    post_signed,
    slash_command,
    slash_command_fields,
)
from tests.support.socket_mode import MockSocketModeServer
from tests.test_e2e_readonly import Fleet, running_fleet, wait_running_for

BOT_TOKEN = "xoxb-socket-test"
APP_TOKEN = "xapp-1-A0CHATOPS1-1-socket-test"
USER = "U0ONCALL02"
CHANNEL = "C0INCIDENT"
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Stack:
    fleet: Fleet
    api: MockSlackAPI
    sm: MockSocketModeServer
    runner: SocketModeRunner

    def command(self, text: str, name: str) -> dict[str, Any]:
        """Deliver ``/celery text`` as a Socket Mode envelope; returns the ack's payload."""
        fields = slash_command_fields(
            text, user_id=USER, channel_id=CHANNEL, response_url=self.api.response_url(name)
        )
        envelope_id = self.sm.send_envelope("slash_commands", fields)
        ack = self.sm.wait_for_ack(envelope_id, timeout=60)
        payload: dict[str, Any] = ack["payload"]
        assert payload["text"]
        assert validate_blocks(payload.get("blocks", [])) == []
        return payload

    def later(self, name: str) -> Call:
        (post,) = self.api.wait_for_response(name, timeout=60)
        assert post.status == 200, post.response
        return post


@pytest.fixture(scope="module")
def stack(
    redis_url_factory: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with (
        running_fleet(redis_url_factory(), tmp_path_factory.mktemp("slack-sm")) as fleet,
        MockSocketModeServer() as sm,
        MockSlackAPI(socket_mode=sm) as api,
    ):
        executor = make_executor(8)
        app = build_app(
            fleet.service,
            client=make_web_client(BOT_TOKEN, api.url),
            signing_secret=None,
            executor=executor,
        )
        runner = SocketModeRunner(app, fleet.service, APP_TOKEN, "127.0.0.1", 0).start()
        try:
            sm.wait_connected(timeout=60)
            wait_running_for(fleet, 1.5)
            yield Stack(fleet, api, sm, runner)
        finally:
            # Closed before the servers stop, or the client would try to reconnect to them.
            runner.stop()
            executor.shutdown(wait=True)


def shown(message: dict[str, Any]) -> str:
    return message["text"] + "\n" + json.dumps(message.get("blocks", []), ensure_ascii=False)


def test_the_connection_is_opened_with_the_app_token(stack: Stack) -> None:
    opened = stack.api.calls("apps.connections.open")
    assert opened
    assert opened[0].token == APP_TOKEN
    assert stack.runner.connected


def test_fast_commands_are_answered_in_the_ack(stack: Stack) -> None:
    fleet = stack.fleet
    assert "/celery commands" in shown(stack.command("help", "help"))
    assert fleet.hanging_id in shown(stack.command("tasks", "tasks"))

    failed = stack.command("failed", "failed")
    assert failed["response_type"] == "ephemeral"
    assert fleet.failed_id in shown(failed)
    assert "<!channel>" not in shown(failed)
    assert "&lt;!channel&gt;" in shown(failed)

    assert fleet.hanging_id in shown(stack.command("active", "active"))
    assert fleet.hanging_id in shown(stack.command("stuck --over 1s", "stuck"))
    task = shown(stack.command(f"task {fleet.succeeded_id[:8]}", "task"))
    assert fleet.succeeded_id in task
    assert "(2, 3)" in task
    for name in ("help", "tasks", "failed", "active", "stuck", "task"):
        assert stack.api.responses(name) == []  # answered in the ack: no response_url used


@pytest.mark.parametrize(
    ("command", "expected"),
    [("status", "Celery status"), ("workers", "prefork"), ("queues", "waiting")],
)
def test_slow_commands_are_acked_then_answered_through_the_response_url(
    stack: Stack, command: str, expected: str
) -> None:
    ack = stack.command(command, f"slow-{command}")
    assert "blocks" not in ack
    answer = stack.later(f"slow-{command}").params
    assert answer["replace_original"] is True
    assert answer["response_type"] == "ephemeral"
    assert expected in shown(answer)


def test_share(stack: Stack) -> None:
    assert stack.command("failed --share", "share-fast")["response_type"] == "in_channel"
    assert stack.command("queues --share", "share-slow")["response_type"] == "in_channel"
    assert stack.later("share-slow").params["response_type"] == "in_channel"


def test_usage_error(stack: Stack) -> None:
    ack = stack.command("stuck --over forever", "usage")
    assert ack["response_type"] == "ephemeral"
    assert "Usage" in shown(ack)
    assert "Traceback" not in shown(ack)


def test_app_home_over_socket_mode(stack: Stack) -> None:
    envelope_id = stack.sm.send_envelope(
        "events_api", event_callback_payload(app_home_opened_event(USER))
    )
    assert "payload" not in stack.sm.wait_for_ack(envelope_id, timeout=60)
    (publish,) = stack.api.wait_for("views.publish", timeout=60)
    assert publish.status == 200 and publish.response["ok"], publish.response
    assert publish.params["user_id"] == USER


def get(url: str) -> tuple[int, bytes]:
    try:
        with _opener.open(url, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_health_and_metrics_are_served_and_events_are_not(stack: Stack) -> None:
    base = f"http://127.0.0.1:{stack.runner.port}"
    status, body = get(base + "/healthz")
    assert status == 200
    report = json.loads(body)
    assert report["ok"] is True
    assert report["socket_mode"]["connected"] is True
    status, body = get(base + "/metrics")
    assert status == 200
    assert b"flower_events_total" in body
    # Nothing Slack-shaped is accepted on this port in Socket Mode, signed or not.
    body_ = slash_command("help", user_id=USER, channel_id=CHANNEL, response_url="x")
    resp = post_signed(base + "/slack/events", body_, signing_secret="any", content_type=FORM)
    assert resp.status == 404


def test_reconnects_when_slack_asks_and_keeps_answering(stack: Stack) -> None:
    before = stack.sm.total_connections
    stack.sm.send_disconnect()
    stack.sm.wait_connected(timeout=60, total=before + 1)
    assert stack.fleet.failed_id in shown(stack.command("failed", "after-reconnect"))
    wait_until(lambda: stack.runner.connected, timeout=60, what="connected again")


def test_health_turns_503_after_a_long_disconnect(stack: Stack) -> None:
    now = [1000.0]
    runner = SocketModeRunner(
        stack.runner.app,
        stack.fleet.service,
        APP_TOKEN,
        "127.0.0.1",
        0,
        disconnected_grace=60.0,
        clock=lambda: now[0],
    )  # never started: its client is not connected
    assert runner.health()["ok"] is True  # within the grace period
    now[0] += 61
    report = runner.health()
    assert report["ok"] is False
    assert "Socket Mode disconnected" in report["reason"]
    assert report["socket_mode"] == {"connected": False, "disconnected_for": 61.0}


def test_make_server_picks_the_mode_from_the_settings(stack: Stack) -> None:
    app = stack.runner.app
    service = stack.fleet.service
    socket = make_server(app, service, Settings(slack_app_token=APP_TOKEN, port=0))
    assert isinstance(socket, SocketModeRunner)
    http = make_server(
        app, service, Settings(port=0, slack_signing_secret="s3cret"), metrics=SlackMetrics()
    )
    assert isinstance(http, HttpServer)
    with pytest.raises(ValueError, match="SLACK_SIGNING_SECRET"):  # HTTP verifies every request
        make_server(app, service, Settings(port=0))


def test_malformed_payloads_are_acked_and_dropped_without_a_traceback(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    envelopes: list[tuple[str, dict[str, Any]]] = [
        ("interactive", {"type": "block_actions", "user": "U1", "actions": []}),
        ("interactive", {"type": "view_submission", "user": {"id": "U1"}}),
        ("events_api", {"type": "event_callback", "event": "x"}),
    ]
    for kind, payload in envelopes:
        ack = stack.sm.wait_for_ack(stack.sm.send_envelope(kind, payload), timeout=30)
        assert not ack.get("payload")
    assert [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []
    assert sum("Socket Mode request refused" in r.getMessage() for r in caplog.records) == 3
    assert "/celery commands" in shown(stack.command("help", "after-malformed"))
