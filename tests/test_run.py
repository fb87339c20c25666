"""``celery-chatops run`` end to end: the process wiring, through Slack's wire format.

Everything is real except Slack (``MockSlackAPI``): the runner builds the Service, the Bolt app
and the waitress listener itself; a real worker runs a hanging task; an operator asks for
``/celery revoke --terminate`` with a signed slash command; the approval card is posted in the
channel as the app; another user's signed Approve click terminates the task on the worker, and
the card is updated in place.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from chatbot.approvals import APPROVE_ACTION_ID
from chatbot.config import load_settings
from chatbot.control import FleetControl
from chatbot.runner import run
from tests.fleet_app import HANG, make_app
from tests.support import wait_until
from tests.support.slack_api import MockSlackAPI
from tests.support.slack_payloads import FORM, block_action, post_signed, slash_command

SECRET = "run-test-signing-secret"
OPERATOR = "U0OPERATOR1"
APPROVER = "U0APPROVER1"
CHANNEL = "C0INCIDENT1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def slack() -> Iterator[MockSlackAPI]:
    with MockSlackAPI() as api:
        yield api


def button_value(blocks: list[dict[str, Any]], action_id: str) -> str:
    for block in blocks:
        for element in block.get("elements") or ():
            if element.get("action_id") == action_id:
                return str(element["value"])
    raise AssertionError(f"no {action_id} button in {blocks}")


def test_run_serves_slack_and_an_approved_terminate_reaches_the_worker(
    redis_url: str, celery_worker: Any, slack: MockSlackAPI
) -> None:
    worker = celery_worker(redis_url, concurrency=1)
    port = free_port()
    settings = load_settings(
        environ={
            "CELERY_BROKER_URL": redis_url,
            "SLACK_BOT_TOKEN": "xoxb-run-test",
            "SLACK_SIGNING_SECRET": SECRET,
            "SLACK_API_URL": slack.url,
            "CHATOPS_HOST": "127.0.0.1",
            "CHATOPS_PORT": str(port),
            "CHATOPS_OPERATORS": f"{OPERATOR},{APPROVER}",
            "CHATOPS_ENABLE_EVENTS_INTERVAL": "0",
        }
    )
    stop = threading.Event()
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(run(settings, stop=stop)))
    runner.start()
    fleet = make_app(redis_url)
    control = FleetControl(fleet, timeout=2.0)
    try:
        events_url = f"http://127.0.0.1:{port}/slack/events"
        health = f"http://127.0.0.1:{port}/healthz"
        wait_until(lambda: _status(health) == 200, timeout=30, what="/healthz 200")
        task_id = fleet.send_task(HANG, args=(300,)).id

        def running() -> bool:
            reply = control.inspect("active", worker.hostname).replies[worker.hostname]
            assert reply.status == "ok", reply
            return any(task["id"] == task_id for task in reply.value)

        wait_until(running, timeout=30, what="the hanging task running")

        def ask() -> bool:
            slack.clear()
            body = slash_command(
                f"revoke {task_id[:12]} --terminate",
                user_id=OPERATOR,
                channel_id=CHANNEL,
                response_url=slack.response_url("revoke"),
            )
            sent = post_signed(events_url, body, signing_secret=SECRET, content_type=FORM)
            assert sent.status == 200
            answers = slack.wait_for_response("revoke", count=1, timeout=15)
            return "Posted in this channel" in str(answers[-1].params)

        # The store may not have seen the task yet: the first ask can be "unknown task id".
        wait_until(lambda: ask() or None, timeout=40, what="the approval card posted")
        posted = slack.wait_for("chat.postMessage", count=1, timeout=10)[-1]
        assert posted.params["channel"] == CHANNEL
        card_ts = str(posted.response["ts"])
        approval_id = button_value(posted.params["blocks"], APPROVE_ACTION_ID)
        assert running(), "nothing may reach the worker before the approval"

        # The requester may not approve their own request (CHATOPS_SELF_APPROVAL is off).
        own = block_action(
            APPROVE_ACTION_ID, approval_id, user_id=OPERATOR, channel_id=CHANNEL,
            message_ts=card_ts, response_url=slack.response_url("self"),
            message_blocks=posted.params["blocks"],
        )
        sent = post_signed(events_url, own, signing_secret=SECRET, content_type=FORM)
        assert sent.status == 200
        refusal = slack.wait_for_response("self", timeout=15)[-1]
        assert "another approver" in str(refusal.params)
        assert running()

        click = block_action(
            APPROVE_ACTION_ID, approval_id, user_id=APPROVER, channel_id=CHANNEL,
            message_ts=card_ts, response_url=slack.response_url("approve"),
            message_blocks=posted.params["blocks"],
        )
        sent = post_signed(events_url, click, signing_secret=SECRET, content_type=FORM)
        assert sent.status == 200
        wait_until(lambda: not running(), timeout=30, what="the task terminated on the worker")
        updates = slack.wait_for("chat.update", count=1, timeout=15)
        assert all(u.params["ts"] == card_ts for u in updates)
        assert APPROVER in str(updates[0].params["blocks"])

        # The revoke is confirmed by the task-revoked event: the card is updated again.
        def confirmed() -> bool:
            return any("onfirmed" in str(u.params["blocks"]) for u in slack.calls("chat.update"))

        wait_until(confirmed, timeout=30, what="the revoke confirmed on the card")
    finally:
        stop.set()
        runner.join(30)
    assert result == [0]


def _status(url: str) -> int:
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def test_run_with_a_token_slack_refuses_stops_in_one_line(
    redis_url: str, slack: MockSlackAPI
) -> None:
    slack.revoke_token("xoxb-revoked")
    env = {
        "PATH": "/usr/bin:/bin",
        "CELERY_BROKER_URL": redis_url,
        "SLACK_BOT_TOKEN": "xoxb-revoked",
        "SLACK_SIGNING_SECRET": SECRET,
        "SLACK_API_URL": slack.url,
        "CHATOPS_PORT": str(free_port()),
    }
    done = subprocess.run(
        [sys.executable, "-m", "chatbot", "run"], env=env, capture_output=True, text=True,
        timeout=60,
    )
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if '"level": "error"' in line]
    assert len(errors) == 1 and "SLACK_BOT_TOKEN" in errors[0] and "invalid_auth" in errors[0]
    assert "xoxb-revoked" not in done.stderr


def test_run_without_required_settings_names_the_first_missing_one() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "chatbot", "run"], env={"PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "celery-chatops: configuration error: CELERY_BROKER_URL: required but not set"
    )


def test_run_posts_a_stuck_alert_whose_button_opens_an_approval(
    redis_url: str, celery_worker: Any, slack: MockSlackAPI
) -> None:
    from chatbot.alerts import TERMINATE_ACTION_ID

    alert_channel = "C0ALERTS01"
    slack.set_channel(alert_channel, is_member=True)
    worker = celery_worker(redis_url, concurrency=1)
    port = free_port()
    settings = load_settings(
        environ={
            "CELERY_BROKER_URL": redis_url,
            "SLACK_BOT_TOKEN": "xoxb-run-test",
            "SLACK_SIGNING_SECRET": SECRET,
            "SLACK_API_URL": slack.url,
            "CHATOPS_HOST": "127.0.0.1",
            "CHATOPS_PORT": str(port),
            "CHATOPS_OPERATORS": OPERATOR,
            "CHATOPS_ALERT_CHANNEL": alert_channel,
            "CHATOPS_CHECK_INTERVAL": "1",
            "CHATOPS_STUCK_AFTER": "3",
            "CHATOPS_ENABLE_EVENTS_INTERVAL": "0",
        }
    )
    stop = threading.Event()
    runner = threading.Thread(target=run, args=(settings,), kwargs={"stop": stop})
    runner.start()
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: _status(base + "/healthz") == 200, timeout=30, what="/healthz 200")
        task_id = make_app(redis_url).send_task(HANG, args=(300,)).id

        def stuck_alert() -> Any:
            for call in slack.calls("chat.postMessage"):
                if call.params.get("channel") == alert_channel and task_id in str(call.params):
                    return call
            return None

        alert = wait_until(stuck_alert, timeout=60, what="a stuck-task alert in the channel")
        assert worker.hostname in str(alert.params["blocks"])
        value = button_value(alert.params["blocks"], TERMINATE_ACTION_ID)
        assert value == task_id
        slack.clear()
        click = block_action(
            TERMINATE_ACTION_ID, value, user_id=OPERATOR, channel_id=alert_channel,
            message_ts=str(alert.response["ts"]), response_url=slack.response_url("alert"),
            message_blocks=alert.params["blocks"],
        )
        sent = post_signed(base + "/slack/events", click, signing_secret=SECRET, content_type=FORM)
        assert sent.status == 200
        card = slack.wait_for("chat.postMessage", count=1, timeout=20)[-1]
        assert card.params["channel"] == alert_channel
        assert button_value(card.params["blocks"], APPROVE_ACTION_ID)
        assert "terminate" in str(card.params["blocks"]).lower()
        health = json.loads(_body(base + "/healthz"))
        assert health["alerts"]["sender"]["ok"] is True
        assert health["alerts"]["scheduler"]["checks"] >= 1
    finally:
        stop.set()
        runner.join(30)


def _body(url: str) -> str:
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as response:
        return str(response.read().decode())


def test_run_in_socket_mode_answers_over_the_socket_and_serves_health(
    redis_url: str, celery_worker: Any
) -> None:
    from tests.support.slack_payloads import slash_command_fields
    from tests.support.socket_mode import MockSocketModeServer

    celery_worker(redis_url, concurrency=1)
    port = free_port()
    with MockSocketModeServer() as sm, MockSlackAPI(socket_mode=sm) as api:
        settings = load_settings(
            environ={
                "CELERY_BROKER_URL": redis_url,
                "SLACK_BOT_TOKEN": "xoxb-run-test",
                "SLACK_APP_TOKEN": "xapp-1-A0RUN-1-secret",
                "SLACK_API_URL": api.url,
                "CHATOPS_HOST": "127.0.0.1",
                "CHATOPS_PORT": str(port),
                "CHATOPS_ENABLE_EVENTS_INTERVAL": "0",
            }
        )
        stop = threading.Event()
        result: list[int] = []
        runner = threading.Thread(target=lambda: result.append(run(settings, stop=stop)))
        runner.start()
        try:
            sm.wait_connected(timeout=30)
            base = f"http://127.0.0.1:{port}"
            wait_until(lambda: _status(base + "/healthz") == 200, timeout=30, what="healthy")
            assert _status(base + "/slack/events") == 404  # Socket Mode takes no HTTP events
            fields = slash_command_fields(
                "help", user_id=OPERATOR, channel_id=CHANNEL,
                response_url=api.response_url("socket"),
            )
            ack = sm.wait_for_ack(sm.send_envelope("slash_commands", fields), timeout=30)
            assert "/celery failed" in json.dumps(ack.get("payload"))
            assert [c.token for c in api.calls("apps.connections.open")] == [
                "xapp-1-A0RUN-1-secret"
            ]
        finally:
            stop.set()
            runner.join(30)
    assert result == [0]
