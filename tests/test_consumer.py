"""EventConsumer against real brokers, real workers and the real MemoryStore.

Nothing is timed: every wait polls with a generous deadline.
"""

from __future__ import annotations

import base64
import json
import pickle
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
import redis
from celery import Celery
from celery.events.receiver import EventReceiver

from chatbot.consumer import EventConsumer, redis_connection_kwargs
from chatbot.demo.embedded import EmbeddedRedis
from chatbot.eventwire import (
    Localizer,
    MalformedMessage,
    decode_body,
    encode_message,
    publish_topic,
    subscribe_topic,
)
from chatbot.model import FAILURE, SUCCESS, StreamHealth, Task
from chatbot.store.memory import MemoryStore
from tests.fleet_app import ADD, FAIL, FLAKY, make_app
from tests.support import wait_until

DEADLINE = 60.0


# The suite's one polling helper, with this file's deadline (it bounds a hang only).
wait_for: Callable[..., Any] = partial(wait_until, timeout=DEADLINE, interval=0.05)


def health(consumer: EventConsumer, store: MemoryStore) -> StreamHealth:
    return consumer.health_into(store.health())


def _db(url: str) -> int:
    return int(url.rsplit("/", 1)[1] or 0)


def publish_raw(url: str, routing_key: str, payload: bytes, prefix: str = "") -> int:
    """PUBLISH on the channel kombu would use for this routing key; returns subscribers."""
    client = redis.Redis.from_url(url)
    try:
        topic = publish_topic(routing_key, db=_db(url), global_keyprefix=prefix)
        return int(client.publish(topic, payload))
    finally:
        client.close()


def task_events(uuid: str, name: str, hostname: str, ts: float) -> list[dict[str, Any]]:
    base = {"hostname": hostname, "utcoffset": 0, "pid": 1, "uuid": uuid}
    return [
        {**base, "type": "task-received", "name": name, "args": "(1,)", "kwargs": "{}",
         "retries": 0, "timestamp": ts},
        {**base, "type": "task-started", "timestamp": ts + 0.001},
        {**base, "type": "task-succeeded", "result": "2", "runtime": 0.001,
         "timestamp": ts + 0.002},
    ]  # fmt: skip


def wait_task(store: MemoryStore, uuid: str, states: set[str]) -> Task:
    def done() -> Task | None:
        task = store.get_task(uuid)
        return task if task is not None and task.state in states else None

    result: Task = wait_for(done, what=f"task {uuid} in {states}")
    return result


# -- wire format (no broker) ------------------------------------------------------------------


def test_decoding_matches_what_celerys_receiver_hands_to_handlers() -> None:
    """Same timestamp localization, clock and local_received as EventReceiver, incl. lists."""
    app = Celery("wire", broker="memory://", set_as_current=False)
    receiver = EventReceiver(None, app=app)
    ts = 1_700_000_000.25
    events = [
        {"type": "task-received", "uuid": "a", "name": "n", "hostname": "w", "utcoffset": -2,
         "timestamp": ts, "clock": 7, "pid": 3},
        {"type": "task-started", "uuid": "a", "hostname": "w", "utcoffset": 5.5,
         "timestamp": ts + 1, "clock": 9, "pid": 3},
        {"type": "worker-heartbeat", "hostname": "w", "timestamp": ts, "freq": 2.0},
    ]  # fmt: skip
    message = encode_message(events, "task.multi")
    decoded = decode_body(message)
    assert isinstance(decoded, list) and len(decoded) == 3
    localizer = Localizer()
    for ours, raw in zip(decoded, json.loads(json.dumps(events)), strict=True):
        localizer.localize(ours, 123.0)
        _, theirs = receiver.event_from_message(raw, now=lambda: 123.0)
        assert ours["timestamp"] == pytest.approx(theirs["timestamp"], abs=1e-6)
        assert ours["local_received"] == theirs["local_received"] == 123.0
        assert {k: v for k, v in ours.items() if k not in {"timestamp", "clock"}} == {
            k: v for k, v in theirs.items() if k not in {"timestamp", "clock"}
        }


def test_decode_rejects_what_is_not_an_accepted_event_message() -> None:
    good = json.loads(encode_message({"type": "worker-heartbeat", "hostname": "w"}, "x"))
    pickled = dict(good, body=base64.b64encode(pickle.dumps({"type": "x"})).decode())
    pickled["content-type"] = "application/x-python-serialize"
    cases = [
        b"not json",
        b"[1, 2]",
        json.dumps(dict(good, body="!!!not base64!!!")).encode(),
        json.dumps(pickled).encode(),
        json.dumps(dict(good, body=base64.b64encode(b"{broken").decode())).encode(),
    ]
    for case in cases:
        with pytest.raises(MalformedMessage):
            decode_body(case)
    # A YAML body is decoded (a safe serializer) when the fleet's event_serializer is yaml.
    from chatbot.eventwire import accept_content

    yaml_body = dict(good, body=base64.b64encode(b"type: worker-heartbeat\n").decode())
    yaml_body["content-type"] = "application/x-yaml"
    assert decode_body(json.dumps(yaml_body).encode(), accept_content(["yaml"])) == {
        "type": "worker-heartbeat"
    }


def test_encoder_writes_byte_for_byte_what_kombu_publishes(redis_url: str) -> None:
    """Tests and the benchmark publish with encode_message: it must be the real wire format."""
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    pubsub.psubscribe(subscribe_topic(db=_db(redis_url))[0])
    try:
        assert wait_for(lambda: pubsub.get_message(timeout=0.1), what="psubscribe")
        app = Celery("wire", broker=redis_url, set_as_current=False)
        with app.connection_for_write() as conn:
            dispatcher = app.events.Dispatcher(conn, hostname="w@h", buffer_group=["task"])
            dispatcher.send("worker-heartbeat", freq=2.0, active=1, processed=5)
            dispatcher.send("task-started", uuid="u-1")
            dispatcher.flush()
            dispatcher.close()
        for routing_key in ("worker.heartbeat", "task.multi"):
            message = wait_for(lambda: pubsub.get_message(timeout=0.1), what=routing_key)
            raw: bytes = message["data"]
            assert message["channel"].decode().endswith("/" + routing_key)
            tag = json.loads(raw)["properties"]["delivery_tag"]
            ours = encode_message(decode_body(raw), routing_key, hostname="w@h", delivery_tag=tag)
            assert ours == raw
    finally:
        pubsub.close()
        client.close()


def test_topics_follow_kombu_with_prefixes_and_options() -> None:
    assert publish_topic("task.succeeded", db=3) == "/3.celeryev/task.succeeded"
    assert subscribe_topic(db=3, global_keyprefix="app[1]:") == ("app\\[1\\]:/3.celeryev/*", True)
    assert subscribe_topic(db=0, fanout_patterns=False) == ("/0.celeryev", False)
    assert publish_topic("x.y", db=2, fanout_prefix_option=False) == "celeryev/x.y"
    cls, kwargs = redis_connection_kwargs(
        "rediss://user:p%40ss@cache:6380/4?ssl_cert_reqs=CERT_NONE"
    )
    assert cls is redis.SSLConnection
    assert kwargs["password"] == "p@ss" and kwargs["db"] == 4
    assert kwargs["ssl_cert_reqs"] == "none" and kwargs["ssl_check_hostname"] is False


# -- Redis fast path with a real worker --------------------------------------------------------


def _check_fleet_tasks(store: MemoryStore, app: Celery, hostname: str) -> None:
    added = app.send_task(ADD, args=(2, 3))
    failed = app.send_task(FAIL, args=("kaboom",))
    flaky = app.send_task(FLAKY, kwargs={"attempts": 2})

    task = wait_task(store, added.id, {SUCCESS})
    assert task.name == ADD and task.args == "(2, 3)" and task.worker == hostname
    assert task.result == "5" and task.runtime is not None and task.runtime >= 0
    assert task.received is not None and task.started is not None

    task = wait_task(store, failed.id, {FAILURE})
    assert task.name == FAIL and task.worker == hostname and "kaboom" in (task.args or "")
    assert task.exception is not None and "ValueError" in task.exception
    assert task.traceback is not None and "_raise_value_error" in task.traceback
    assert task.runtime is not None

    task = wait_task(store, flaky.id, {SUCCESS})
    assert task.name == FLAKY and task.retries == 2 and task.result == "2"
    assert task.retried is not None


def test_redis_fast_path_brings_a_real_workers_tasks_into_the_store(
    redis_url: str,
    consumers: Callable[..., EventConsumer],
    celery_worker: Callable[..., Any],
) -> None:
    store = MemoryStore(max_tasks=1000)
    consumer = consumers(redis_url, store)
    worker = celery_worker(redis_url)
    app = make_app(redis_url)
    try:
        _check_fleet_tasks(store, app, worker.hostname)
    finally:
        app.close()
    wait_for(lambda: store.get_worker(worker.hostname), what="worker record")
    h = health(consumer, store)
    assert h.connected and h.malformed == 0 and h.reconnects == 0
    assert h.broker == redis_url and h.events_by_type.get("task-succeeded", 0) >= 2


@pytest.mark.amqp
def test_amqp_path_brings_a_real_workers_tasks_into_the_store(
    amqp_url: str,
    unique_name: Callable[[str], str],
    consumers: Callable[..., EventConsumer],
    celery_worker: Callable[..., Any],
) -> None:
    store = MemoryStore(max_tasks=1000)
    consumer = consumers(amqp_url, store)
    queue = unique_name("q")
    worker = celery_worker(amqp_url, queues=(queue,), hostname=f"{unique_name('w')}@chatops-test")
    app = make_app(amqp_url)
    app.conf.task_default_queue = queue
    try:
        _check_fleet_tasks(store, app, worker.hostname)
    finally:
        app.close()
    h = health(consumer, store)
    assert h.connected and h.broker == "amqp://guest:***@127.0.0.1:5672//"


def test_global_keyprefix_and_broadcasts_on_connect(
    redis_url: str, consumers: Callable[..., EventConsumer]
) -> None:
    calls: list[str] = []
    lock = threading.Lock()

    def record(name: str) -> Callable[[], None]:
        def call() -> None:
            with lock:
                calls.append(name)

        return call

    options = {"global_keyprefix": "fleet:"}
    store = MemoryStore()
    consumers(
        redis_url,
        store,
        transport_options=options,
        heartbeat=record("heartbeat"),
        enable_events=record("enable_events"),
        enable_events_interval=0.2,
    )
    # A real dispatcher with the same transport options publishes under the prefix.
    app = Celery("pfx", broker=redis_url, set_as_current=False)
    app.conf.broker_transport_options = options
    with app.connection_for_write() as conn, app.events.Dispatcher(conn, hostname="d@h") as d:
        d.send("task-received", uuid="pfx-1", name="x.y", args="()", kwargs="{}")
        d.send("task-succeeded", uuid="pfx-1", result="1", runtime=0.5)
    assert wait_task(store, "pfx-1", {SUCCESS}).name == "x.y"
    wait_for(lambda: calls.count("enable_events") >= 3, what="periodic enable_events")
    assert calls[0] == "heartbeat"


def test_default_broadcasts_turn_on_task_events_of_a_worker_started_without_them(
    redis_url: str,
    consumers: Callable[..., EventConsumer],
    celery_worker: Callable[..., Any],
) -> None:
    worker = celery_worker(redis_url, events=False)
    store = MemoryStore()
    # No callables: the consumer broadcasts through an app of its own, as `run` would.
    consumers(redis_url, store, heartbeat=None, enable_events=None, enable_events_interval=1.0)
    app = make_app(redis_url)
    sent: list[str] = []

    def a_task_arrived() -> bool:
        sent.append(app.send_task(ADD, args=(1, 1)).id)
        time.sleep(0.3)
        return any(
            (task := store.get_task(uuid)) is not None and task.state == SUCCESS for uuid in sent
        )

    try:
        wait_for(a_task_arrived, what="task events from a worker started without -E")
    finally:
        app.close()
    assert store.get_worker(worker.hostname) is not None


# -- robustness --------------------------------------------------------------------------------


def test_flood_of_ten_times_the_cap_stays_within_it(
    redis_url: str, consumers: Callable[..., EventConsumer]
) -> None:
    cap = 300
    store = MemoryStore(max_tasks=cap)
    consumer = consumers(redis_url, store, batch_max=500)
    client = redis.Redis.from_url(redis_url)
    topic = publish_topic("task.multi", db=_db(redis_url))
    ts = time.time()
    sent = 0
    try:
        pipe = client.pipeline(transaction=False)
        for i in range(cap * 10):
            events = task_events(f"flood-{i}", f"flood.t{i % 7}", "w@flood", ts + i * 0.01)
            # Half single messages, half worker-style .multi lists.
            if i % 2:
                pipe.publish(topic, encode_message(events, "task.multi"))
            else:
                for event in events:
                    key = event["type"].replace("-", ".")
                    pipe.publish(publish_topic(key, db=_db(redis_url)), encode_message(event, key))
            sent += 3
            if i % 200 == 199:
                pipe.execute()
        pipe.execute()
    finally:
        client.close()
    wait_for(lambda: store.health().events_total >= sent, what="all flood events applied")
    assert len(store) == cap
    h = health(consumer, store)
    assert h.connected and h.tasks_evicted == cap * 9
    assert h.lag_events == 0 and h.malformed == 0
    assert store.get_task(f"flood-{cap * 10 - 1}") is not None


def test_malformed_messages_are_counted_not_raised(
    redis_url: str, consumers: Callable[..., EventConsumer]
) -> None:
    store = MemoryStore()
    consumer = consumers(redis_url, store)
    good = json.loads(encode_message({"type": "worker-heartbeat", "hostname": "w"}, "x"))
    pickled = dict(good, body=base64.b64encode(pickle.dumps({"type": "x"})).decode())
    pickled["content-type"] = "application/x-python-serialize"
    bad_messages = [
        b"{garbage",
        json.dumps(pickled).encode(),  # wrong (unsafe) content type
        encode_message({"hostname": "w", "uuid": "no-type"}, "task.x"),  # event without type
        encode_message([{"type": "task-started"}, 42], "task.multi"),  # a non-event in a list
        b"[]",
    ]
    for message in bad_messages:
        assert publish_raw(redis_url, "task.x", message) == 1
    # A task event without a uuid is refused before the store sees it, and counted.
    publish_raw(redis_url, "task.started", encode_message({"type": "task-started"}, "task.x"))
    good_events = task_events("ok-1", "n", "w", time.time())
    publish_raw(redis_url, "task.multi", encode_message(good_events, "m"))
    wait_task(store, "ok-1", {SUCCESS})
    h = health(consumer, store)
    # garbage, pickle, no type, the 42, "[]" + two uuid-less task-started, all by the consumer
    assert h.malformed == 7, h
    assert h.malformed_by_reason == {
        "not-json": 1,
        "content-type": 1,
        "type": 1,
        "not-an-event": 1,
        "envelope": 1,
        "missing-uuid": 2,
    }
    assert store.health().malformed == 0  # nothing invalid reached the store
    assert h.connected and h.intake_restarts == 0 and h.intake_problem is None


def test_broker_restart_is_survived_and_counted(
    embedded_redis: Callable[..., EmbeddedRedis], consumers: Callable[..., EventConsumer]
) -> None:
    server = embedded_redis()
    url = server.url_for(0)
    store = MemoryStore()
    consumer = consumers(url, store)
    before = task_events("before", "n", "w", time.time())
    publish_raw(url, "task.multi", encode_message(before, "m"))
    wait_task(store, "before", {SUCCESS})

    server.restart(down_for=1.5)
    wait_for(lambda: consumer.health_into(StreamHealth()).reconnects >= 1, what="a reconnect")
    assert consumer.wait_connected(30)
    # Published by a real dispatcher on a fresh connection after the restart.
    app = Celery("after", broker=url, set_as_current=False)
    with app.connection_for_write() as conn, app.events.Dispatcher(conn, hostname="d@h") as d:
        d.send("task-received", uuid="after", name="n2", args="()", kwargs="{}")
        d.send("task-succeeded", uuid="after", result="1", runtime=0.1)
    assert wait_task(store, "after", {SUCCESS}).name == "n2"
    assert store.get_task("before") is not None  # the picture survived the outage
    h = health(consumer, store)
    assert h.reconnects >= 1 and h.connected and h.last_error


def test_server_side_kill_is_counted_as_event_loss(
    embedded_redis: Callable[..., EmbeddedRedis],
    consumers: Callable[..., EventConsumer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = embedded_redis()
    url = server.url_for(0)
    store = MemoryStore()
    consumer = consumers(url, store)
    client = redis.Redis.from_url(url)
    try:
        with caplog.at_level("WARNING", logger="chatbot.consumer"):
            assert client.execute_command("CLIENT", "KILL", "TYPE", "pubsub") >= 1
            wait_for(lambda: health(consumer, store).disconnects_by_server == 1, what="loss")
            wait_for(lambda: consumer.health_into(StreamHealth()).reconnects == 1, what="rejoin")
        assert sum("Event loss detected" in r.getMessage() for r in caplog.records) == 1
        assert consumer.wait_connected(30)
        events = task_events("k", "n", "w", time.time())
        publish_raw(url, "task.multi", encode_message(events, "m"))
        wait_task(store, "k", {SUCCESS})
    finally:
        client.close()


class SlowStore:
    """A store whose writer is stuck (say, behind a long query) for a while."""

    def __init__(self, inner: MemoryStore, stall: threading.Event) -> None:
        self.inner = inner
        self.stall = stall

    def apply(self, events: Any) -> int:
        self.stall.wait(60)
        return self.inner.apply(events)

    def health(self) -> StreamHealth:
        return self.inner.health()


def test_a_subscriber_cut_off_at_the_output_buffer_limit_is_detected(
    embedded_redis: Callable[..., EmbeddedRedis], consumers: Callable[..., EventConsumer]
) -> None:
    """Redis's real slow-subscriber cut-off (a tiny limit here instead of 32 MB)."""
    server = embedded_redis(config={"client-output-buffer-limit": "pubsub 256kb 128kb 1"})
    url = server.url_for(0)
    release = threading.Event()
    store = MemoryStore()
    # A tiny local buffer, so back-pressure reaches Redis quickly.
    consumer = consumers(url, SlowStore(store, release), buffer_bytes=16 * 1024)
    client = redis.Redis.from_url(url)
    try:
        payload = encode_message(task_events("slow", "n", "w", time.time()), "task.multi")
        topic = publish_topic("task.multi", db=0)

        def cut_off() -> bool:
            pipe = client.pipeline(transaction=False)
            for _ in range(200):
                pipe.publish(topic, payload)
            pipe.execute()
            return client.pubsub_numpat() == 0  # Redis dropped the subscriber

        wait_for(cut_off, what="Redis to close the slow subscriber")
        # The reader is held by back-pressure; once the store moves it reads the EOF.
        release.set()
        wait_for(lambda: health(consumer, store).disconnects_by_server >= 1, what="detection")
        assert consumer.wait_connected(30)
        wait_task(store, "slow", {SUCCESS})
    finally:
        release.set()
        client.close()


def test_unreachable_broker_keeps_retrying_without_crashing() -> None:
    store = MemoryStore()
    # Port 1 on loopback: connection refused at once.
    consumer = EventConsumer(
        "redis://127.0.0.1:1/0", store, heartbeat=lambda: None, enable_events=lambda: None
    )
    consumer.start()
    try:
        wait_for(lambda: consumer.health_into(StreamHealth()).last_error, what="an error")
        h = consumer.health_into(store.health())
        assert not h.connected and h.reconnects == 0 and "refused" in (h.last_error or "").lower()
    finally:
        consumer.stop(timeout=5)


def test_health_into_never_shows_the_password() -> None:
    consumer = EventConsumer("redis://:hunter2@127.0.0.1:1/0", MemoryStore())
    h = consumer.health_into(StreamHealth())
    assert "hunter2" not in h.broker and h.broker.startswith("redis://")
