"""Hung and lost dependencies under the real ``celery-chatops run`` (issue 11, findings 5, 8).

A dependency is hung the way a real one hangs: its ``redis-server`` process is stopped with
SIGSTOP (connections stay open, nothing answers) and resumed with SIGCONT. Every test resumes
what it stopped, whatever happens.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import redis

from chatbot.approvals import APPROVE_ACTION_ID
from chatbot.demo.embedded import EmbeddedRedis
from chatbot.store.redis import RedisFleetStore, StoreUnavailable, connect
from chatbot.store.redis.connection import connect_for_requests
from tests.fleet_app import ADD, HANG, make_app
from tests.support import wait_until
from tests.support.bot import (
    APPROVER,
    Bot,
    HttpAnswer,
    knows_task,
    running_bot,
    stopped,
)
from tests.support.slack_api import MockSlackAPI
from tests.support.task_events import run_task


def _answer_text(answer: Any) -> str:
    return json.dumps(answer.json()) if answer.body else ""


def _button(blocks: list[dict[str, Any]], action_id: str) -> str:
    for block in blocks:
        for element in block.get("elements") or ():
            if element.get("action_id") == action_id:
                return str(element["value"])
    raise AssertionError(f"no {action_id} button in {blocks}")


def _knows(bot: Bot, task_id: str, name: str) -> bool:
    return knows_task(bot, task_id, name)


def test_a_hung_state_redis_is_told_not_waited_on_and_loses_no_events(
    redis_url_factory: Callable[[], str],
    embedded_redis: Callable[..., EmbeddedRedis],
    celery_worker: Any,
) -> None:
    broker = redis_url_factory()
    state = embedded_redis()
    celery_worker(broker, concurrency=2)
    fleet = make_app(broker)
    broker_client = redis.Redis.from_url(broker, socket_timeout=5)
    with (
        MockSlackAPI() as slack,
        running_bot(broker, slack, CHATOPS_STATE_URL=state.url_for(1)) as bot,
    ):
        hanging = fleet.send_task(HANG, args=(300,)).id
        wait_until(lambda: _knows(bot, hanging, "seen"), timeout=60, what="the task in the store")
        # An approval card to click during the outage.
        slack.clear()
        assert bot.command(f"revoke {hanging}", "revoke").status == 200
        card = slack.wait_for("chat.postMessage", count=1, timeout=30)[-1]
        # Its place is recorded before the asker is told (so before the outage begins).
        wait_until(
            lambda: (
                "Posted in this channel" in json.dumps(slack.responses("revoke")[-1].params)
                if slack.responses("revoke")
                else None
            ),
            timeout=30,
            what="the asker told where the card is",
        )
        approval_id = _button(card.params["blocks"], APPROVE_ACTION_ID)
        done_before = fleet.send_task(ADD, args=(1, 2)).id
        wait_until(lambda: _knows(bot, done_before, "seen2"), timeout=60, what="a done task")

        with stopped(state):
            # A command that reads the store says the store is unavailable.
            answer = bot.command(f"task {hanging}", "during", timeout=60)
            assert answer.status == 200
            assert "state store is unavailable" in _answer_text(answer).lower()
            # /healthz keeps answering (a hang shows as status 0), and turns 503 with the reason.
            answers: list[HttpAnswer] = []

            def unhealthy() -> bool:
                answers.append(bot.health(timeout=5))
                return answers[-1].status == 503

            wait_until(unhealthy, timeout=30, interval=0.2, what="/healthz 503")
            assert [a for a in answers if a.status not in (200, 503)] == []
            assert "state store is unavailable" in answers[-1].json()["reason"]
            # An Approve click is acknowledged and the clicker is told nothing was done.
            click = bot.click_body(
                APPROVE_ACTION_ID,
                approval_id,
                "approve",
                user_id=APPROVER,
                message_ts=str(card.response["ts"]),
            )
            assert bot.post(click, timeout=60).status == 200
            told = slack.wait_for_response("approve", count=1, timeout=60)[-1]
            assert "unavailable" in json.dumps(told.params).lower()
            # Tasks run meanwhile: their events arrive while the store cannot be written.
            during = [fleet.send_task(ADD, args=(i, i)).id for i in range(10)]
            wait_until(
                lambda: broker_client.llen("celery") == 0, timeout=60, what="the tasks taken"
            )
            time.sleep(2)  # their events reach the bot while the store is still hung

        # Resumed: one replica kept the lease, so what it applied meanwhile is written.
        wait_until(
            lambda: all(_knows(bot, t, "after") for t in during),
            timeout=90,
            interval=1,
            what="the tasks run during the outage shown",
        )
        assert bot.health(timeout=30).json()["event_loss_detected"] == 0
        wait_until(lambda: bot.health().status == 200, timeout=60, what="healthy again")


def test_a_writer_that_hands_over_during_an_outage_counts_what_it_could_not_write(
    embedded_redis: Callable[..., EmbeddedRedis],
) -> None:
    state = embedded_redis()
    url = state.url_for(1)
    store = RedisFleetStore(
        connect_for_requests(url), "handover", writer_client=connect(url, socket_timeout=1.0)
    )
    store.start_writer(wait=True, timeout=30)
    before = run_task(store, time.time())
    assert store.flush(timeout=30)
    with stopped(state):
        during = [run_task(store, time.time()) for _ in range(10)]
        # The lease moved to another replica meanwhile: this one stops without writing.
        store.stop_writer(flush=False)
    # The loss happened while Redis was hung; the old writer records it once Redis answers
    # (its service reads health every second), and meanwhile counts it in its own health.
    wait_until(lambda: _answers(store), timeout=30, what="Redis answering again")
    assert store.health().changes_lost >= 10
    successor = RedisFleetStore(connect_for_requests(url), "handover")
    try:
        health = successor.health()
        assert health.changes_lost >= 10  # every replica sees the loss
        assert successor.get_task(before) is not None
        assert all(successor.get_task(t) is None for t in during)
    finally:
        successor.close()
        store.close()


def test_a_hung_state_redis_fails_reads_fast_and_recovers(
    embedded_redis: Callable[..., EmbeddedRedis],
) -> None:
    state = embedded_redis()
    store = RedisFleetStore(connect_for_requests(state.url_for(2)), "hung")
    stats = redis.Redis(host=state.host, port=state.port, socket_timeout=5)
    try:
        assert store.health().events_total == 0
        connections_before = stats.info("stats")["total_connections_received"]
        with stopped(state):
            errors = []
            for _ in range(5):
                try:
                    store.health()
                except StoreUnavailable as exc:
                    errors.append(str(exc))
            assert len(errors) == 5 and "Timeout" in errors[0]
        # The first read timed out (its connection is dropped and a new one made); the other
        # four were refused by the breaker without reaching Redis: without it, each would
        # have opened a connection of its own, which Redis, resumed, counts.
        connections = stats.info("stats")["total_connections_received"] - connections_before
        assert connections <= 1, connections
        wait_until(lambda: _answers(store), timeout=30, what="reads answered again")
    finally:
        stats.close()
        store.close()


def _answers(store: RedisFleetStore) -> bool:
    try:
        store.health()
    except StoreUnavailable:
        return False
    return True


def test_alert_posts_waiting_out_429s_show_in_healthz(
    redis_url_factory: Callable[[], str], celery_worker: Any
) -> None:
    broker = redis_url_factory()
    celery_worker(broker, concurrency=1)
    alerts = "C0ALERTS01"
    with MockSlackAPI() as slack:
        slack.set_channel(alerts, is_member=True)
        slack.rate_limit_next("chat.postMessage", retry_after=1, count=2)
        with running_bot(
            broker,
            slack,
            CHATOPS_ALERT_CHANNEL=alerts,
            CHATOPS_CHECK_INTERVAL="1",
            CHATOPS_STUCK_AFTER="2",
        ) as bot:
            task_id = make_app(broker).send_task(HANG, args=(300,)).id

            def alert_posted() -> bool:
                return any(
                    c.params.get("channel") == alerts
                    and task_id in json.dumps(c.params)
                    and c.status == 200
                    for c in slack.calls("chat.postMessage")
                )

            wait_until(alert_posted, timeout=90, what="the stuck alert posted after the 429s")
            sender = bot.health().json()["alerts"]["sender"]
            assert sender["rate_limited"] == 2 and sender["retries"] >= 2, sender
            assert sender["sent"] >= 1 and sender["failed"] == 0, sender


def test_after_a_broker_outage_status_does_not_say_the_consumer_fell_behind(
    embedded_redis: Callable[..., EmbeddedRedis],
) -> None:
    broker = embedded_redis()
    with MockSlackAPI() as slack, running_bot(broker.url_for(1), slack) as bot:
        broker.restart(down_for=2.0)  # an outage: the subscription is closed under the bot
        wait_until(
            lambda: bot.health().json().get("reconnects", 0) >= 1,
            timeout=60,
            what="the consumer reconnected",
        )
        assert bot.command("status", "status").status == 200
        (answer,) = slack.wait_for_response("status", count=1, timeout=60)
        text = json.dumps(answer.params)
        assert "Events were lost" in text  # the loss is told...
        assert "fell behind" not in text  # ...without a cause the bot cannot know


def test_an_approve_click_during_a_hung_broker_says_the_broker_is_unreachable(
    embedded_redis: Callable[..., EmbeddedRedis], celery_worker: Any
) -> None:
    broker = embedded_redis()
    broker_url = broker.url_for(1)
    celery_worker(broker_url, concurrency=1)
    with MockSlackAPI() as slack, running_bot(broker_url, slack) as bot:
        hanging = make_app(broker_url).send_task(HANG, args=(300,)).id
        wait_until(lambda: _knows(bot, hanging, "seen"), timeout=60, what="the task in the store")
        assert bot.command(f"revoke {hanging}", "revoke").status == 200
        card = slack.wait_for("chat.postMessage", count=1, timeout=30)[-1]
        approval_id = _button(card.params["blocks"], APPROVE_ACTION_ID)
        with stopped(broker):
            click = bot.click_body(
                APPROVE_ACTION_ID,
                approval_id,
                "approve",
                user_id=APPROVER,
                message_ts=str(card.response["ts"]),
            )
            assert bot.post(click, timeout=60).status == 200

            # The revoke cannot be published: the card says so instead of the click hanging.
            def told() -> bool:
                return any(
                    "unreachable" in json.dumps(u.params).lower()
                    for u in slack.calls("chat.update") + slack.responses("approve")
                )

            wait_until(told, timeout=60, what="the clicker told the broker is unreachable")


def test_two_replicas_through_a_state_outage_past_the_lease_keep_or_count_every_event(
    redis_url_factory: Callable[[], str],
    embedded_redis: Callable[..., EmbeddedRedis],
    celery_worker: Any,
) -> None:
    # Issue 11, finding 5: the lease moved during the outage, and the old writer's pending
    # changes vanished while event_loss_detected stayed 0. Whichever replica ends up the
    # writer, every task run meanwhile is now shown, or the loss is counted.
    broker = redis_url_factory()
    state = embedded_redis()
    celery_worker(broker, concurrency=2)
    fleet = make_app(broker)
    broker_client = redis.Redis.from_url(broker, socket_timeout=5)
    url = state.url_for(1)
    with (
        MockSlackAPI() as slack,
        running_bot(broker, slack, CHATOPS_STATE_URL=url) as first,
        running_bot(broker, slack, CHATOPS_STATE_URL=url) as second,
    ):
        known = fleet.send_task(ADD, args=(1, 1)).id
        wait_until(lambda: _knows(first, known, "known"), timeout=60, what="ingest running")
        with stopped(state):
            during = [fleet.send_task(ADD, args=(i, i)).id for i in range(10)]
            wait_until(
                lambda: broker_client.llen("celery") == 0, timeout=60, what="the tasks taken"
            )
            time.sleep(12)  # past the 10 s ingest lease: either replica may write next
        for bot in (first, second):

            def settled(bot: Bot = bot) -> bool:
                report = bot.health(timeout=30)
                if report.status != 200:
                    return False
                shown = sum(_knows(bot, t, "after") for t in during)
                return shown == len(during) or int(report.json()["event_loss_detected"]) > 0

            wait_until(settled, timeout=120, interval=1, what="events shown or counted lost")


def test_a_slow_slack_fails_a_group_lookup_in_the_ack_instead_of_holding_it(
    redis_url_factory: Callable[[], str],
) -> None:
    # An operator check may look a user group up while the command is acked (mute is
    # answered in the ack). Slack answering after 8 s must not be waited for.
    group = "S0OPSGROUP"
    with MockSlackAPI() as slack:
        slack.set_channel("C0ALERTS01", is_member=True)

        def slow_members(params: dict[str, Any]) -> dict[str, Any]:
            time.sleep(8)
            return {"ok": True, "users": ["U0OPERATOR1"]}

        with running_bot(
            redis_url_factory(),
            slack,
            CHATOPS_ALERT_CHANNEL="C0ALERTS01",
            CHATOPS_OPERATORS=group,
        ) as bot:
            slack.set_handler("usergroups.users.list", slow_members)
            answer = bot.command("mute backlog:celery 1h", "mute", timeout=60)
            assert answer.status == 200
            text = _answer_text(answer)
            assert "could not be checked" in text and "Muted" not in text, text
