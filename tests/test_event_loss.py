"""Event loss is told, not hidden (issue 12, item 5): the rule, /healthz's report, `status`.

The end-to-end case (a real Redis cut-off ending in an alert posted to the Slack stand-in)
is at the bottom.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import pytest
import redis
from celery import Celery
from slack_sdk import WebClient

from chatbot.alerts.manager import AlertManager
from chatbot.alerts.rules import (
    CRITICAL,
    EVENT_LOSS_KEY,
    LOSS,
    LOSS_QUIET_AFTER,
    FleetFacts,
    evaluate,
    loss_condition,
    loss_report,
    significant_change,
)
from chatbot.alerts.scheduler import AlertScheduler
from chatbot.alerts.sender import SlackSender
from chatbot.commands import CommandContext, Dispatcher, build_registry
from chatbot.config import Settings
from chatbot.console_text import to_text
from chatbot.consumer import EventConsumer
from chatbot.demo.embedded import EmbeddedRedis
from chatbot.eventwire import encode_message, publish_topic
from chatbot.model import StreamHealth
from chatbot.render import Renderer
from chatbot.store.memory import MemoryStore
from chatbot.store.records import MemoryRecordStore
from tests.support.slack_api import MockSlackAPI

NOW = 1_800_000_000.0
CHANNEL = "C0ALERTS"
DEADLINE = 60.0


def lossy(**changes: Any) -> StreamHealth:
    values: dict[str, Any] = {
        "broker": "redis://broker:6379/0",
        "connected": True,
        "last_event_at": NOW - 1,
        "disconnects_by_server": 2,
        "last_loss_at": NOW - 30,
    }
    values.update(changes)
    return StreamHealth(**values)


def test_a_recent_cut_off_is_a_critical_loss_condition_with_its_count_and_time() -> None:
    condition = loss_condition(lossy(events_dropped=7, lag_events=12), now=NOW)
    assert condition is not None
    assert (condition.key, condition.kind, condition.severity) == (EVENT_LOSS_KEY, LOSS, CRITICAL)
    figures = condition.figures_dict()
    assert figures["cutoffs"] == 2 and figures["dropped"] == 7
    assert figures["last_loss_at"] == NOW - 30 and figures["lag_events"] == 12


def test_no_loss_or_an_old_one_is_no_condition_and_an_open_alert_resolves() -> None:
    assert loss_condition(StreamHealth(broker="redis://b/0", connected=True), now=NOW) is None
    old = lossy(last_loss_at=NOW - LOSS_QUIET_AFTER - 1)
    assert loss_condition(old, now=NOW) is None
    evaluation = evaluate(
        FleetFacts(now=NOW, health=old), Settings(), {EVENT_LOSS_KEY: NOW - 2000}
    )
    assert EVENT_LOSS_KEY not in evaluation.conditions
    assert "no events lost" in evaluation.notes[EVENT_LOSS_KEY]
    fresh = evaluate(FleetFacts(now=NOW, health=lossy()), Settings(), {})
    assert EVENT_LOSS_KEY in fresh.conditions


def test_a_further_loss_is_worth_a_thread_reply_the_same_count_is_not() -> None:
    before = {"cutoffs": 1, "dropped": 0}
    assert significant_change(LOSS, before, {"cutoffs": 2, "dropped": 0}) == "more"
    assert significant_change(LOSS, before, {"cutoffs": 1, "dropped": 5}) == "more"
    assert significant_change(LOSS, before, dict(before)) is None


def test_healthz_report_is_degraded_while_a_loss_is_recent_with_count_and_time() -> None:
    report = loss_report(lossy(events_dropped=3), NOW)
    assert report["degraded"] is True
    assert report["event_loss"] == {
        "cutoffs": 2, "dropped": 3, "last_at": NOW - 30, "last_age": 30.0,
    }  # fmt: skip
    assert "closed the event subscription 2 time(s)" in report["degraded_reason"]
    later = loss_report(lossy(), NOW + LOSS_QUIET_AFTER)
    assert later["degraded"] is False and "degraded_reason" not in later
    assert later["event_loss"]["cutoffs"] == 2  # the history stays visible
    assert loss_report(StreamHealth(), NOW)["degraded"] is False


def test_status_names_the_cut_offs_the_drops_and_the_time_of_the_latest() -> None:
    store = MemoryStore(clock=lambda: NOW)
    renderer = Renderer()
    ctx = CommandContext(
        store=store,
        renderer=renderer,
        settings=Settings(),
        user_id="U1",
        channel_id="C1",
        clock=lambda: NOW,
        health=lambda: lossy(events_dropped=40),
    )
    text = to_text(Dispatcher(build_registry(), renderer).run("status", ctx))
    assert "Events were lost: the broker closed the event subscription 2 times" in text
    assert "Events were lost: 40 received messages dropped" in text
    assert text.count("the latest at") == 2


# -- a real cut-off, end to end ------------------------------------------------------------------
class HeldStore(MemoryStore):
    """A MemoryStore whose ``apply`` can be held up, as a long GC pause or a slow lock would."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.released = threading.Event()
        self.released.set()

    def apply(self, events: Iterable[Mapping[str, Any]]) -> int:
        self.released.wait()
        return super().apply(events)


@pytest.fixture
def slack_api() -> Iterator[MockSlackAPI]:
    api = MockSlackAPI().start()
    yield api
    api.stop()


@pytest.mark.parametrize("reader", ["process", "process-raw", "thread"])
def test_a_real_redis_cut_off_raises_the_loss_alert_in_the_alert_channel(
    embedded_redis: Callable[..., EmbeddedRedis], slack_api: MockSlackAPI, reader: str
) -> None:
    server = embedded_redis()
    admin = redis.Redis(host=server.host, port=server.port, db=0)
    # The production limit, shrunk: a subscriber more than 256 KB behind is closed at once.
    admin.config_set("client-output-buffer-limit", "pubsub 262144 0 0")
    url = server.url_for(1)
    store = HeldStore()
    # Small local buffers, so that holding the store up backs up to Redis within this test.
    consumer = EventConsumer(
        url,
        store,
        heartbeat=lambda: None,
        enable_events=lambda: None,
        buffer_bytes=256 * 1024,
        reader=reader,
    )
    settings = Settings(broker_url=url, alert_channel=CHANNEL, check_interval=0.5)
    sender = SlackSender(
        WebClient(token="xoxb-test", base_url=slack_api.url, retry_handlers=[]),
        min_interval=0.05,
        default_retry_after=0.2,
    )
    manager = AlertManager(MemoryRecordStore(), sender, Renderer(), settings)
    scheduler = AlertScheduler(
        manager, store, settings, health=lambda: consumer.health_into(store.health())
    )
    consumer.start()
    try:
        assert consumer.wait_connected(30)
        assert scheduler.check_now().evaluation.conditions == {}  # nothing lost yet

        store.released.clear()
        channel = publish_topic("worker.heartbeat", db=1)
        body = encode_message(
            {"type": "worker-heartbeat", "hostname": "w1@loss", "timestamp": time.time(),
             "utcoffset": 0, "pid": 1, "clock": 1, "freq": 2.0, "padding": "p" * 800},
            "worker.heartbeat",
        )  # fmt: skip
        published = 0
        deadline = time.monotonic() + DEADLINE
        # Redis closes the subscription while the reader is held up; the reader notices when
        # it reads again, so the broker's own count of pattern subscribers is watched here.
        while int(admin.execute_command("PUBSUB", "NUMPAT")) > 0:
            assert time.monotonic() < deadline, "Redis never cut the subscriber off"
            with admin.pipeline(transaction=False) as pipe:
                for _ in range(1000):
                    pipe.publish(channel, body)
                pipe.execute()
            published += 1000
        store.released.set()
        wait_for(lambda: consumer.health_into(StreamHealth()).disconnects_by_server > 0)

        health = consumer.health_into(store.health())
        assert health.disconnects_by_server >= 1 and health.last_loss_at is not None
        scheduler.check_now()
        assert sender.flush(30), "the Slack queue did not drain"
        posted = [
            c for c in slack_api.calls("chat.postMessage")
            if c.response.get("ok") and EVENT_LOSS_KEY in json.dumps(c.params["blocks"])
        ]  # fmt: skip
        assert len(posted) == 1
        call = posted[0]
        assert call.params["channel"] == CHANNEL
        shown = json.dumps(call.params["blocks"])
        assert "the broker closed the event subscription" in shown
        assert "Events lost" in call.params["text"]
        record = manager.get_alert(EVENT_LOSS_KEY)
        assert record is not None and record["figures"]["cutoffs"] >= 1
        # The stream goes on after the reconnect: the bot lost events, not the stream.
        assert wait_for(lambda: consumer.connected)
        assert published > 0
    finally:
        store.released.set()
        scheduler.stop()
        sender.stop()
        consumer.stop()
        admin.close()


def test_a_reader_process_killed_holding_messages_counts_them_dropped_and_is_replaced(
    redis_url: str,
) -> None:
    store = HeldStore()
    consumer = EventConsumer(
        redis_url, store, heartbeat=lambda: None, enable_events=lambda: None,
        buffer_bytes=64 * 1024,
    )  # fmt: skip
    consumer.start()
    try:
        assert consumer.wait_connected(30)
        first = consumer.reader_pid
        assert first is not None and first != os.getpid()
        store.released.clear()
        client = redis.Redis.from_url(redis_url)
        channel = publish_topic("worker.heartbeat", db=int(redis_url.rsplit("/", 1)[1]))
        body = encode_message(
            {"type": "worker-heartbeat", "hostname": "w1@drop", "timestamp": time.time(),
             "utcoffset": 0, "pid": 1, "clock": 1, "freq": 2.0},
            "worker.heartbeat",
        )  # fmt: skip
        with client.pipeline(transaction=False) as pipe:
            for _ in range(5000):
                pipe.publish(channel, body)
            pipe.execute()
        wait_for(lambda: consumer.reader_backlog > 0)
        os.kill(first, signal.SIGKILL)
        # The consumer notices once it reads the pipe again, i.e. when the store moves on.
        store.released.set()
        wait_for(lambda: consumer.reader_pid not in (None, first))
        wait_for(lambda: consumer.connected)
        health = consumer.health_into(store.health())
        assert health.events_dropped > 0 and health.last_loss_at is not None
        assert health.disconnects_by_server == 0  # the broker did not cut it: we dropped them
        assert loss_condition(health, now=time.time()) is not None
        client.close()
    finally:
        store.released.set()
        consumer.stop()


@pytest.mark.amqp
def test_amqp_events_that_wait_past_celerys_5s_ttl_behind_a_busy_consumer_are_not_lost(
    amqp_url: str,
) -> None:
    store = HeldStore(max_tasks=50_000)
    app = Celery("loss-test", broker=amqp_url, set_as_current=False)
    consumer = EventConsumer(
        amqp_url, store, app=app, heartbeat=lambda: None, enable_events=lambda: None,
        buffer_bytes=8 * 1024,
    )  # fmt: skip
    consumer.start()
    hostname = f"w-{uuid.uuid4().hex[:8]}@loss"
    ids = [str(uuid.uuid4()) for _ in range(5_000)]  # 20 MB: more than the sockets hold
    try:
        assert consumer.wait_connected(30)
        store.released.clear()  # busy: the events wait in RabbitMQ's queue, not in ours
        with app.connection_for_write() as conn:
            dispatcher = app.events.Dispatcher(conn, hostname=hostname, enabled=True)
            for task_id in ids:
                dispatcher.send(
                    "task-received", uuid=task_id, name="loss.task", args="()",
                    kwargs="{}", padding="p" * 4000,
                )  # fmt: skip
            dispatcher.close()
        time.sleep(app.conf.event_queue_ttl + 3)  # past Celery's own TTL (5 s)
        store.released.set()
        # With Celery's 5 s TTL, RabbitMQ expired most of them unseen: this wait times out.
        wait_for(lambda: all(store.get_task(t) is not None for t in ids[-100:]))
        missing = [t for t in ids if store.get_task(t) is None]
        assert missing == []
    finally:
        store.released.set()
        consumer.stop()
        app.close()


def wait_for(predicate: Callable[[], Any], timeout: float = DEADLINE) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {predicate}")
