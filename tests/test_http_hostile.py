"""Abusive HTTP against the real ``celery-chatops run`` (issue 11, findings 4, 6 and 7).

Everything is the product's own wiring (the runner, the Bolt app, the waitress listener) on a
private Redis broker; Slack is ``MockSlackAPI``. Requests are signed with the app's secret
where the finding is about what a signed request can do.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from chatbot.approvals import APPROVE_ACTION_ID, DENY_ACTION_ID
from chatbot.demo.embedded import EmbeddedRedis
from chatbot.slack.gate import RequestGate
from chatbot.store.redis import RedisRecordStore
from chatbot.store.redis.connection import connect_for_requests
from chatbot.task_actions import GROUP_ACTION_ID, TASK_MENU_ACTION_ID, WORKER_MENU_ACTION_ID
from tests.fleet_app import HANG, make_app
from tests.support import wait_until
from tests.support.bot import (
    APPROVER,
    CHANNEL,
    SECRET,
    Bot,
    Trickle,
    http_get,
    running_bot,
    stopped,
)
from tests.support.slack_api import MockSlackAPI
from tests.support.slack_payloads import (
    FORM,
    JSON,
    block_action_payload,
    event_callback,
    signed_headers,
    slash_command,
)


@pytest.fixture(scope="module")
def slack() -> Iterator[MockSlackAPI]:
    with MockSlackAPI() as api:
        yield api


@pytest.fixture(scope="module")
def bot(redis_url_factory: Callable[[], str], slack: MockSlackAPI) -> Iterator[Bot]:
    with running_bot(redis_url_factory(), slack) as running:
        yield running


def _problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Log records a hostile request must not cause: errors and tracebacks."""
    return [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.ERROR or r.exc_info
    ]


def _refused(bot: Bot, reason: str) -> float:
    text = http_get(bot.url + "/metrics").body.decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "chatops_slack_requests_refused_total"
        and sample.labels.get("reason") == reason
    )


def _payload(data: Any) -> bytes:
    return urlencode({"payload": json.dumps(data)}).encode()


def _click(slack: MockSlackAPI, **changes: Any) -> bytes:
    payload = block_action_payload(
        APPROVE_ACTION_ID,
        "no-such-approval",
        user_id=APPROVER,
        channel_id=CHANNEL,
        message_ts="1700000000.000100",
        response_url=slack.response_url("hostile"),
    )
    payload.update(changes)
    return _payload(payload)


# -- finding 6: 401/400, never 500 nor a traceback --------------------------------------------
def test_a_timestamp_that_is_not_a_number_is_401_without_a_traceback(
    bot: Bot, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    answer = bot.command("help", "ts", headers={"X-Slack-Request-Timestamp": "abc"})
    assert answer.status == 401
    answer = bot.command("help", "ts", headers={"X-Slack-Request-Timestamp": "1e9"})
    assert answer.status == 401
    answer = bot.command("help", "ts", headers={"X-Slack-Signature": "v0=zz"})
    assert answer.status == 401
    assert _problems(caplog) == []


def _malformed(slack: MockSlackAPI) -> dict[str, tuple[bytes, str]]:
    form = "application/x-www-form-urlencoded"
    view = {
        "type": "view_submission",
        "team": {"id": "T0CHATOPS1"},
        "user": {"id": APPROVER},
        "view": {"id": "V1", "callback_id": "cb", "state": {"values": {}}},
    }
    return {
        "payload not json": (b"payload={not json", form),
        "actions empty": (_click(slack, actions=[]), form),
        "actions not objects": (_click(slack, actions=["x"]), form),
        "action_id a number": (_click(slack, actions=[{"action_id": 5}]), form),
        "user a string": (_click(slack, user=APPROVER), form),
        "channel a number": (_click(slack, channel=3, container="x"), form),
        "payload a list": (_payload([1, 2, 3]), form),
        "payload a string": (_payload("x"), form),
        "view_submission": (_payload(view), form),
        "json a list": (b"[1,2,3]", JSON),
        "json event a string": (b'{"type":"event_callback","event":"x"}', JSON),
        "json unknown type": (b'{"type":"nonsense"}', JSON),
        "form without anything": (b"a=b", form),
    }


def test_signed_but_malformed_payloads_are_400_without_a_traceback(
    bot: Bot, slack: MockSlackAPI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    statuses = {
        name: bot.post(body, content_type=content_type).status
        for name, (body, content_type) in _malformed(slack).items()
    }
    assert statuses == {name: 400 for name in statuses}
    assert _problems(caplog) == []
    assert _refused(bot, "malformed") >= len(statuses)  # counted in /metrics
    # The listener still answers a good request afterwards.
    assert bot.command("help", "after-malformed").status == 200
    assert bot.post(event_callback({"type": "app_mention", "user": "U1"}), content_type=JSON)


def test_a_10_mb_body_gets_413_not_a_reset(bot: Bot) -> None:
    body = b"command=%2Fcelery&text=" + b"a" * (10 * 1024 * 1024)
    answer = bot.post(body)
    assert answer.status == 413


# -- finding 7: a replay is answered once ------------------------------------------------------
def test_a_replayed_signed_revoke_posts_one_card(
    redis_url_factory: Callable[[], str], celery_worker: Any
) -> None:
    broker = redis_url_factory()
    celery_worker(broker, concurrency=1)
    with MockSlackAPI() as slack, running_bot(broker, slack) as bot:
        task_id = make_app(broker).send_task(HANG, args=(300,)).id
        # The first ask may find the task unknown yet: ask until the card is posted.
        timestamp = 0
        body = b""

        def ask() -> bool:
            nonlocal timestamp, body
            slack.clear()
            timestamp = int(time.time())
            body = bot.command_body(f"revoke {task_id}", "revoke")
            assert bot.post(body, timestamp=timestamp).status == 200
            answers = slack.wait_for_response("revoke", count=1, timeout=15)
            return "Posted in this channel" in str(answers[-1].params)

        wait_until(ask, timeout=60, what="the approval card posted")
        cards = slack.wait_for("chat.postMessage", count=1, timeout=10)
        replays = [bot.post(body, timestamp=timestamp) for _ in range(5)]
        assert [r.status for r in replays] == [200] * 5
        assert all(r.body == b"" for r in replays)
        # A fresh, differently signed request for the same task still gets its answer.
        slack.clear()
        assert bot.command(f"revoke {task_id}", "again").status == 200
        slack.wait_for_response("again", count=1, timeout=15)
        assert len(slack.calls("chat.postMessage")) == 1
        assert [c.params["channel"] for c in cards] == [CHANNEL]
        assert bot.health().json()["http"]["replayed"] == 5


# -- finding 4: slow clients ---------------------------------------------------------------
def test_200_trickling_connections_do_not_stop_signed_commands_or_healthz(bot: Bot) -> None:
    trickle = Trickle(bot.port, 200)
    try:
        time.sleep(2)  # every connection has sent a few bytes and is waiting for more
        for round_ in range(3):
            assert bot.health(timeout=20).status == 200
            answer = bot.command("help", f"slow-{round_}", timeout=20)
            assert answer.status == 200 and answer.body
        # The server ends connections that take too long to send their headers.
        wait_until(
            lambda: len(trickle.closed_by_server) == 200,
            timeout=90,
            interval=0.5,
            what="every trickling connection closed by the server",
        )
    finally:
        trickle.close()


def test_the_replay_window_is_shared_by_replicas_and_holds_through_a_store_outage(
    embedded_redis: Callable[..., EmbeddedRedis],
) -> None:
    server = embedded_redis()
    url = server.url_for(1)
    replicas = [RequestGate(SECRET, RedisRecordStore(connect_for_requests(url))) for _ in range(2)]

    def check(gate: RequestGate, body: bytes, timestamp: int) -> int | None:
        headers = signed_headers(
            body, signing_secret=SECRET, content_type=FORM, timestamp=timestamp
        )
        verdict = gate.check(body.decode(), "", headers)
        return None if verdict.request is not None else verdict.status

    def command(text: str) -> bytes:
        return slash_command(text, user_id=APPROVER, channel_id=CHANNEL, response_url="http://x")

    now = int(time.time())
    first = command("revoke abc")
    assert check(replicas[0], first, now) is None  # goes to Bolt
    assert check(replicas[1], first, now) == 200  # the replay, on the other replica
    assert check(replicas[0], first, now + 1) is None  # a new signature is a new request
    with stopped(server):
        during = command("revoke def")
        assert check(replicas[0], during, now) is None
        assert check(replicas[0], during, now) == 200  # this replica's own window
    assert replicas[0].health()["replay_store_unavailable"] >= 1
    assert replicas[1].health()["replayed"] == 1


# -- property: whatever a signed body holds, the answer is never a 500 ------------------------
_KEYS = (
    "id", "type", "action_id", "value", "block_id", "user", "channel", "team", "enterprise",
    "message", "container", "channel_id", "message_ts", "ts", "tab", "event", "actions",
    "text", "subteam", "authorizations", "previous_message", "item", "selected_option",
)  # fmt: skip
# The app's own buttons and menus, so that clicks reach real listeners too.
_ACTION_IDS = (
    APPROVE_ACTION_ID, DENY_ACTION_ID, TASK_MENU_ACTION_ID, GROUP_ACTION_ID,
    WORKER_MENU_ACTION_ID,
)  # fmt: skip
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=4)
    | st.sampled_from(_KEYS)
    | st.sampled_from(_ACTION_IDS),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(_KEYS), inner, max_size=4)
    ),
    max_leaves=12,
)
_TYPES = ("block_actions", "event_callback", "url_verification", "view_submission", "shortcut")


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(kind=st.sampled_from(_TYPES), fields=st.dictionaries(st.sampled_from(_KEYS), _json))
def test_any_signed_payload_gets_an_answer_and_no_traceback(
    bot: Bot,
    slack: MockSlackAPI,
    caplog: pytest.LogCaptureFixture,
    kind: str,
    fields: dict[str, Any],
) -> None:
    caplog.clear()
    body: dict[str, Any] = {**fields, "type": kind, "response_url": slack.response_url("prop")}
    if kind in ("event_callback", "url_verification"):
        answer = bot.post(json.dumps(body).encode(), content_type=JSON, timeout=30)
    else:
        answer = bot.post(_payload(body), timeout=30)
    assert answer.status in (200, 400, 404), (answer.status, body)
    failures = [
        r.getMessage()
        for r in caplog.records
        if r.exc_info and r.name.startswith(("chatbot.slack.bolt", "chatbot.slack.http"))
    ]
    assert failures == [], body
