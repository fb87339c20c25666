"""Alerts against a real broker and real Celery workers, posted to the local Web API double.

Each test has its own database on the session's private redis-server (broker), a real
EventConsumer feeding a MemoryStore, the real scheduler / manager / sender, and MockSlackAPI.
Checks are driven with ``check_now()`` (one test runs the APScheduler job itself); waits poll
real state with generous deadlines and nothing asserts how long anything took.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from celery import Celery
from slack_sdk import WebClient

from chatbot.alerts.actions import command_for_click
from chatbot.alerts.manager import (
    OPEN,
    RESOLVED,
    REVOKE_ACTION_ID,
    TERMINATE_ACTION_ID,
    AlertManager,
)
from chatbot.alerts.scheduler import JOB_ID, AlertScheduler, CheckResult
from chatbot.alerts.sender import SlackSender
from chatbot.approvals import ApprovalService
from chatbot.audit import AuditLog
from chatbot.auth import Authorizer
from chatbot.broker import BrokerReader
from chatbot.commands import CommandContext, Dispatcher, build_registry
from chatbot.commands.control import register_control_commands
from chatbot.config import Settings
from chatbot.consumer import EventConsumer
from chatbot.control import FleetControl
from chatbot.demo.worker import CeleryWorkerProcess
from chatbot.model import StreamHealth
from chatbot.periodic import EVERY, PeriodicJobs
from chatbot.render import Renderer
from chatbot.store import RecordStore
from chatbot.store.memory import MemoryStore
from chatbot.store.records import MemoryRecordStore
from chatbot.store.redis import RedisRecordStore
from tests.conftest import unique_hostname
from tests.fleet_app import ADD, FAIL, HANG, make_app
from tests.support import wait_until
from tests.support.cards import approve_button_value
from tests.support.slack_api import Call, MockSlackAPI

CHANNEL = "C0ALERTS"
OPERATOR = "U0OPERATOR"
APPROVER = "U0APPROVER"
DEADLINE = 60.0
HEARTBEAT = 2.0  # seconds between worker heartbeats (Celery's default): expiry after 2 missed
KILL_HEARTBEAT = 1.0  # shorter where the expiry is what the test waits for


@dataclass
class Rig:
    url: str
    api: MockSlackAPI
    settings: Settings
    store: MemoryStore
    records: RecordStore
    sender: SlackSender
    manager: AlertManager
    scheduler: AlertScheduler
    producer: Celery
    consumers: list[EventConsumer] = field(default_factory=list)

    def stream_health(self) -> StreamHealth:
        health = self.store.health()
        return self.consumers[-1].health_into(health) if self.consumers else health

    def start_consumer(self) -> EventConsumer:
        # No broadcasts: the workers here send events (-E) and heartbeats on their own.
        consumer = EventConsumer(
            self.url, self.store, heartbeat=lambda: None, enable_events=lambda: None
        )
        self.consumers.append(consumer)
        consumer.start()
        assert consumer.wait_connected(30), "the event consumer did not connect"
        return consumer

    def check(self) -> CheckResult:
        result = self.scheduler.check_now()
        assert self.sender.flush(30), "the Slack queue did not drain"
        return result

    def parents(self) -> list[Call]:
        return [
            c for c in self.api.calls("chat.postMessage")
            if c.response.get("ok") and not c.params.get("thread_ts")
        ]  # fmt: skip

    def parent(self, key: str) -> Call:
        found = [c for c in self.parents() if key in json.dumps(c.params["blocks"])]
        assert len(found) == 1, f"expected one parent message for {key}, got {len(found)}"
        return found[0]

    def replies(self, ts: str) -> list[Call]:
        return [c for c in self.api.calls("chat.postMessage") if c.params.get("thread_ts") == ts]

    def record(self, key: str) -> dict[str, Any]:
        record = self.manager.get_alert(key)
        assert record is not None, f"no alert record for {key}"
        return record


@pytest.fixture
def make_rig(redis_url: str) -> Iterator[Callable[..., Rig]]:
    rigs: list[Rig] = []
    servers: list[MockSlackAPI] = []

    def make(
        records: RecordStore | None = None, api: MockSlackAPI | None = None, **overrides: Any
    ) -> Rig:
        values: dict[str, Any] = {
            "broker_url": redis_url,
            "alert_channel": CHANNEL,
            "check_interval": 0.5,
            "silence_after": 60.0,
            "alert_cooldown": 300.0,
        }
        values.update(overrides)
        settings = Settings(**values)
        if api is None:
            api = MockSlackAPI().start()
            servers.append(api)
        store = MemoryStore()
        sender = SlackSender(
            WebClient(token="xoxb-test", base_url=api.url, retry_handlers=[]),
            min_interval=0.05,
            default_retry_after=0.2,
        )
        kept = records if records is not None else MemoryRecordStore()
        manager = AlertManager(kept, sender, Renderer(), settings)
        broker = BrokerReader(redis_url)
        rig: Rig
        scheduler = AlertScheduler(
            manager, store, settings, broker=broker, health=lambda: rig.stream_health()
        )
        rig = Rig(redis_url, api, settings, store, kept, sender, manager, scheduler,
                  make_app(redis_url))  # fmt: skip
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.scheduler.stop()
        rig.sender.stop()
        for consumer in rig.consumers:
            consumer.stop()
        rig.producer.close()
    for api in servers:
        api.stop()


def start_worker(
    celery_worker: Callable[..., CeleryWorkerProcess], rig: Rig, **options: Any
) -> CeleryWorkerProcess:
    options.setdefault("heartbeat_interval", HEARTBEAT)
    worker = celery_worker(rig.url, **options)
    wait_until(
        lambda: (
            (w := rig.store.get_worker(worker.hostname)) is not None
            and w.last_heartbeat is not None
        ),
        DEADLINE,
        what=f"{worker.hostname} heard on the event stream",
    )
    return worker


# -- backlog -------------------------------------------------------------------------------------
def test_backlog_raises_one_alert_updates_its_thread_and_resolves_when_drained(
    make_rig: Callable[..., Rig],
    celery_worker: Callable[..., CeleryWorkerProcess],
    unique_name: Callable[[str], str],
) -> None:
    queue = unique_name("backlog")
    rig = make_rig(queues=(queue,), backlog_threshold=5)
    rig.start_consumer()
    key = f"backlog:{queue}"

    for _ in range(6):
        rig.producer.send_task(ADD, (1, 2), queue=queue)
    rig.check()
    parent = rig.parent(key)
    assert f"{queue}` has *6* waiting" in parent.params["blocks"][0]["text"]["text"]
    ts = parent.response["ts"]

    rig.check()  # unchanged: nothing new in Slack
    assert rig.replies(ts) == [] and rig.api.calls("chat.update") == []

    for _ in range(10):
        rig.producer.send_task(ADD, (1, 2), queue=queue)
    time.sleep(1.1)  # a trend needs samples at least a second apart (checks are 30s in real life)
    rig.check()
    (grew,) = rig.replies(ts)
    assert "*16* waiting" in grew.params["text"]
    assert "growing" in grew.params["text"]  # a trend over the last checks
    assert "16" in json.dumps(rig.api.message(CHANNEL, ts))  # the parent edited in place

    start_worker(celery_worker, rig, queues=(queue,))
    wait_until(
        lambda: (
            rig.scheduler.broker is not None
            and rig.scheduler.broker.queue_lengths([queue])[0].messages == 0
        ),
        DEADLINE,
        what="the queue drained",
    )
    rig.check()
    replies = rig.replies(ts)
    assert "Resolved" in replies[-1].params["text"]
    assert rig.record(key)["status"] == RESOLVED
    assert "Resolved" in json.dumps(rig.api.message(CHANNEL, ts))
    assert [c for c in rig.parents() if "backlog" in json.dumps(c.params["blocks"])] == [parent]
    assert all(c.response.get("ok") for c in rig.api.calls()), "Slack rejected a message"


def test_a_muted_backlog_posts_nothing_and_a_429_delays_but_loses_no_notice(
    make_rig: Callable[..., Rig], unique_name: Callable[[str], str]
) -> None:
    queue = unique_name("muted")
    rig = make_rig(queues=(queue,), backlog_threshold=3)
    for _ in range(4):
        rig.producer.send_task(ADD, (1, 2), queue=queue)

    rig.manager.mute(f"backlog:{queue}", 3600, "U0OPERATOR")
    result = rig.check()
    assert f"backlog:{queue}" in result.evaluation.conditions
    assert result.reconciled.suppressed == [f"backlog:{queue}"]
    assert rig.api.calls() == []

    rig.manager.unmute(f"backlog:{queue}")
    rig.api.rate_limit_next("chat.postMessage", retry_after=1)
    rig.check()
    statuses = [c.status for c in rig.api.calls("chat.postMessage")]
    assert statuses == [429, 200]
    rig.parent(f"backlog:{queue}")
    assert rig.sender.health().rate_limited == 1


# -- failures ------------------------------------------------------------------------------------
def test_three_failures_raise_one_spike_alert_naming_the_exception(
    make_rig: Callable[..., Rig], celery_worker: Callable[..., CeleryWorkerProcess]
) -> None:
    rig = make_rig(failure_spike_threshold=3, failure_window=8.0)
    rig.start_consumer()
    start_worker(celery_worker, rig)
    ids = [rig.producer.send_task(FAIL, ("card declined",)).id for _ in range(3)]
    wait_until(
        lambda: rig.store.failure_counts(8.0, rig.scheduler.clock()).get(FAIL, 0) >= 3,
        DEADLINE,
        what="three failures in the store",
    )
    rig.check()
    rig.check()  # a second check changes nothing
    parent = rig.parent(f"failures:{FAIL}")
    body = json.dumps(parent.params["blocks"])
    assert "ValueError" in body and "card declined" in body
    assert any(task_id in body for task_id in ids)
    assert len(rig.parents()) == 1

    wait_until(
        lambda: not rig.store.failure_counts(8.0, rig.scheduler.clock()),
        DEADLINE,
        what="the failures to leave the window",
    )
    rig.check()
    assert rig.record(f"failures:{FAIL}")["status"] == RESOLVED
    assert "Resolved" in rig.replies(parent.response["ts"])[-1].params["text"]


# -- stuck tasks ---------------------------------------------------------------------------------
def test_a_hanging_task_raises_a_stuck_alert_whose_button_revokes_it(
    make_rig: Callable[..., Rig], celery_worker: Callable[..., CeleryWorkerProcess]
) -> None:
    rig = make_rig(stuck_after=1.0)
    rig.start_consumer()
    start_worker(celery_worker, rig)
    task_id = rig.producer.send_task(HANG, (60.0,)).id
    key = f"stuck:{task_id}"
    wait_until(
        lambda: key in rig.check().evaluation.conditions, DEADLINE, what="the task to be stuck"
    )
    parent = rig.parent(key)
    (actions,) = [b for b in parent.params["blocks"] if b["type"] == "actions"]
    revoke = next(e for e in actions["elements"] if e["action_id"] == REVOKE_ACTION_ID)
    assert revoke["value"] == task_id
    assert HANG in json.dumps(parent.params["blocks"])

    # The click, as the Slack layer handles it: the typed command, run as the clicking
    # operator, through the real approval flow; then an approver's decision.
    terminate = next(e for e in actions["elements"] if e["action_id"] == TERMINATE_ACTION_ID)
    line = command_for_click(TERMINATE_ACTION_ID, terminate["value"])
    assert line == f"revoke {task_id} --terminate"
    settings = Settings(operators=(OPERATOR, APPROVER), approvers=(APPROVER,))
    approvals = ApprovalService(
        MemoryRecordStore(),
        FleetControl(rig.producer, timeout=2.0),
        rig.store,
        Authorizer.from_settings(settings),
        AuditLog(),
        settings,
        confirm_timeout=30,
    )
    renderer = Renderer()
    dispatcher = Dispatcher(register_control_commands(build_registry(), approvals), renderer)
    ctx = CommandContext(store=rig.store, settings=settings, renderer=renderer,
                         user_id=OPERATOR, channel_id=CHANNEL)  # fmt: skip
    card = dispatcher.run(line, ctx)
    approval_id = approve_button_value(card)
    assert approval_id is not None, card
    outcome = approvals.decide(approval_id, APPROVER, approve=True)
    assert outcome.result == "approved"
    wait_until(
        lambda: (t := rig.store.get_task(task_id)) is not None and t.state == "REVOKED",
        DEADLINE,
        what="the hanging task to be revoked",
    )
    rig.check()
    assert rig.record(key)["note"] == "the task is now REVOKED"
    final = rig.api.message(CHANNEL, parent.response["ts"])
    assert final is not None and not [b for b in final["blocks"] if b["type"] == "actions"]


# -- workers -------------------------------------------------------------------------------------
def test_a_killed_worker_raises_worker_offline_and_its_restart_resolves_it(
    make_rig: Callable[..., Rig], celery_worker: Callable[..., CeleryWorkerProcess]
) -> None:
    rig = make_rig()
    rig.start_consumer()
    hostname = unique_hostname("killed")
    worker = start_worker(celery_worker, rig, hostname=hostname, heartbeat_interval=KILL_HEARTBEAT)
    key = f"worker:{hostname}"
    jobs = PeriodicJobs()  # the process's one APScheduler, as the service has it
    jobs.start()
    try:
        rig.scheduler.start(jobs, replicas=EVERY)  # the real periodic job, every 0.5s
        assert rig.scheduler.running

        worker.kill()

        def posted() -> dict[str, Any] | None:
            record = rig.manager.get_alert(key)
            return record if record is not None and record["status"] == OPEN else None

        opened = wait_until(posted, DEADLINE, what="the worker-offline alert")
        assert opened is not None
        last_heartbeat = rig.store.get_worker(hostname).last_heartbeat  # type: ignore[union-attr]
        assert last_heartbeat is not None
        expiry = 2 * KILL_HEARTBEAT
        # Judged by expiry (a SIGKILL sends no worker-offline): within two expiries of the last
        # heartbeat, the promise made to whoever is on call.
        assert opened["opened_at"] <= last_heartbeat + 2 * expiry

        start_worker(celery_worker, rig, hostname=hostname, heartbeat_interval=KILL_HEARTBEAT)
        wait_until(
            lambda: rig.record(key)["status"] == RESOLVED, DEADLINE, what="the worker to recover"
        )
        runs = jobs.health()[JOB_ID]
        assert runs.runs > 0 and runs.failures == 0 and runs.replicas == EVERY
        rig.scheduler.stop()
        assert not rig.scheduler.running and JOB_ID not in jobs.health()
    finally:
        jobs.shutdown()
    assert rig.sender.flush(30)
    parent = rig.parent(key)
    assert "Resolved" in rig.replies(parent.response["ts"])[-1].params["text"]
    assert rig.record(key)["note"] == "heartbeats again"
    assert rig.scheduler.health().checks > 0 and rig.scheduler.health().failures == 0


# -- restarts ------------------------------------------------------------------------------------
def test_a_restart_on_the_redis_record_store_does_not_repost_an_open_alert(
    make_rig: Callable[..., Rig],
    redis_url_factory: Callable[[], str],
    unique_name: Callable[[str], str],
) -> None:
    state_url = redis_url_factory()
    queue = unique_name("restart")
    first = make_rig(records=RedisRecordStore(state_url), queues=(queue,), backlog_threshold=2)
    for _ in range(3):
        first.producer.send_task(ADD, (1, 2), queue=queue)
    first.check()
    parent = first.parent(f"backlog:{queue}")
    first.sender.stop()

    # The new process: a new manager, sender and scheduler over the same records and Slack.
    second = make_rig(
        records=RedisRecordStore(state_url), api=first.api, queues=(queue,), backlog_threshold=2
    )
    second.check()
    assert first.parents() == [parent]  # not re-posted

    broker = redis.Redis.from_url(second.url)
    try:
        broker.delete(queue)
    finally:
        broker.close()
    wait_until(
        lambda: (
            second.scheduler.broker is not None
            and second.scheduler.broker.queue_lengths([queue])[0].messages == 0
        ),
        DEADLINE,
        what="the purge",
    )
    second.check()
    # Not forgotten either: resolved in the thread of the message the first process posted.
    (resolved,) = first.replies(parent.response["ts"])
    assert "Resolved" in resolved.params["text"]


# -- the event stream ----------------------------------------------------------------------------
def test_stream_silent_fires_when_events_stop_while_workers_were_known(
    make_rig: Callable[..., Rig], celery_worker: Callable[..., CeleryWorkerProcess]
) -> None:
    rig = make_rig(silence_after=2.0)
    consumer = rig.start_consumer()
    start_worker(celery_worker, rig)
    assert rig.check().evaluation.conditions == {}

    consumer.stop()  # the consumer lost the broker: the store stops changing
    last = rig.store.health().last_event_at
    assert last is not None
    wait_until(lambda: rig.scheduler.clock() - last > 2.5, DEADLINE, what="the silence to last")
    result = rig.check()
    assert result.evaluation.blind
    parent = rig.parent("stream:silent")
    assert "disconnected" in json.dumps(parent.params["blocks"])
    # Blind, the bot does not mistake its own deafness for dead workers.
    assert not [c for c in rig.parents() if "worker:" in json.dumps(c.params["blocks"])]

    rig.start_consumer()
    wait_until(
        lambda: (rig.store.health().last_event_at or 0) > last, DEADLINE, what="events again"
    )
    rig.check()
    assert rig.record("stream:silent")["status"] == RESOLVED
    assert "Resolved" in rig.replies(parent.response["ts"])[-1].params["text"]
