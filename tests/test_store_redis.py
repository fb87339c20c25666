"""The Redis backends against a real (private) Redis.

The first half runs the state machine's behaviour tests against BOTH backends (the ``backend``
fixture is parametrised over memory and redis): the Redis store must answer exactly as the
memory store does. The second half is about what only Redis has: restarts, replicas, caps in
Redis, key prefixes, outages, records decided once across processes, and the factory.
"""

from __future__ import annotations

import random
import threading
import uuid as uuid_module
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from chatbot.config import Settings
from chatbot.demo.embedded import EmbeddedRedis
from chatbot.model import FAILURE, PENDING, RECEIVED, RETRY, STARTED, SUCCESS, TASK_STATES
from chatbot.redaction import WITHHELD
from chatbot.store import FleetStore, RecordStore
from chatbot.store.factory import open_stores
from chatbot.store.memory import MemoryStore
from chatbot.store.redis import (
    RedisFleetStore,
    RedisRecordStore,
    RedisStore,
    StoreUnavailable,
)
from tests.support import wait_until
from tests.test_state import (
    T0,
    Clock,
    failed,
    new_id,
    received,
    started,
    succeeded,
)


class Backend:
    """A store plus ``apply`` that returns once the change is readable (Redis: flushed)."""

    def __init__(self, store: Any, kind: str) -> None:
        self.store = store
        self.kind = kind

    def settle(self) -> None:
        if isinstance(self.store, RedisFleetStore):
            assert self.store.flush(timeout=30), "the Redis writer did not flush"

    def apply(self, events: list[dict[str, Any]]) -> int:
        applied = int(self.store.apply(events))
        self.settle()
        return applied

    def update_worker_info(self, hostname: str, **info: Any) -> None:
        self.store.update_worker_info(hostname, **info)
        self.settle()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def __len__(self) -> int:
        return len(self.store)


MakeBackend = Callable[..., Backend]
T = TypeVar("T")


def must(value: T | None) -> T:
    assert value is not None
    return value


@pytest.fixture(params=["memory", "redis"])
def make_backend(request: pytest.FixtureRequest) -> Iterator[MakeBackend]:
    stores: list[RedisFleetStore] = []

    def make(**options: Any) -> Backend:
        if request.param == "memory":
            return Backend(MemoryStore(**options), "memory")
        url = request.getfixturevalue("redis_url")
        store = RedisFleetStore(url, **options)
        stores.append(store)
        assert store.start_writer(wait=True, timeout=30)
        return Backend(store, "redis")

    yield make
    for store in stores:
        store.close()


def run_task(store: Backend, ts: float, outcome: str = "ok", name: str = "proj.add") -> str:
    uuid = new_id()
    finish = succeeded(uuid, ts + 2) if outcome == "ok" else failed(uuid, ts + 2)
    store.apply([received(uuid, ts, name=name), started(uuid, ts + 1), finish])
    return uuid


def new_store(url: str, **options: Any) -> RedisFleetStore:
    return RedisFleetStore(url, **options)


# ---------------------------------------------------------------------------------------------
# The same behaviour from both backends
# ---------------------------------------------------------------------------------------------
def test_both_backends_satisfy_the_store_interface(make_backend: MakeBackend) -> None:
    assert isinstance(make_backend().store, FleetStore)


def test_a_task_lifecycle_keeps_every_field(make_backend: MakeBackend) -> None:
    store = make_backend(clock=Clock())
    uuid = new_id()
    store.apply(
        [
            {
                "type": "task-sent",
                "uuid": uuid,
                "name": "proj.add",
                "args": "(1, 2)",
                "kwargs": "{'x': 1}",
                "queue": "math",
                "routing_key": "math.add",
                "root_id": uuid,
                "parent_id": None,
                "retries": 0,
                "hostname": "client@host",
                "timestamp": T0,
            },
            received(uuid, T0 + 1),
            started(uuid, T0 + 2),
            succeeded(uuid, T0 + 5, runtime=2.9),
        ]
    )
    task = store.get_task(uuid)
    assert task is not None
    assert (task.name, task.state, task.worker) == ("proj.add", SUCCESS, "w1@host")
    assert (task.args, task.kwargs, task.result) == ("(1, 2)", "{'x': 1}", "3")
    assert (task.queue, task.routing_key, task.root_id) == ("math", "math.add", uuid)
    assert (task.sent, task.received, task.started, task.finished) == (T0, T0 + 1, T0 + 2, T0 + 5)
    assert task.runtime == 2.9
    assert store.tasks(worker="client@host") == []


def test_late_and_reversed_events_end_in_the_final_state(make_backend: MakeBackend) -> None:
    store = make_backend()
    late, reverse = new_id(), new_id()
    store.apply([received(late, T0), succeeded(late, T0 + 3), started(late, T0 + 1)])
    store.apply([failed(reverse, T0 + 3), started(reverse, T0 + 1), received(reverse, T0)])
    assert store.get_task(late).state == SUCCESS
    assert store.active() == []
    task = store.get_task(reverse)
    assert (task.state, task.name, task.exception_type) == (FAILURE, "proj.add", "ValueError")
    assert store.count_tasks(state=FAILURE, name="proj.add") == 1
    assert [t.uuid for t in store.tasks(state=FAILURE, name="proj.add")] == [reverse]


def test_a_failure_named_by_a_later_batch_moves_to_its_name(make_backend: MakeBackend) -> None:
    store = make_backend()
    uuid = new_id()
    store.apply([failed(uuid, T0 + 3)])  # task-failed carries no name
    store.apply([received(uuid, T0, name="proj.late")])
    assert [t.uuid for t in store.tasks(state=FAILURE, name="proj.late")] == [uuid]
    assert store.count_tasks(state=FAILURE, name="proj.late") == 1
    assert store.recent_failures("proj.late", 60, T0 + 10)[0].uuid == uuid


def test_duplicated_events_change_nothing(make_backend: MakeBackend) -> None:
    store = make_backend()
    uuid = new_id()
    batch = [received(uuid, T0), started(uuid, T0 + 1), succeeded(uuid, T0 + 2)]
    store.apply(batch)
    before = store.get_task(uuid)
    store.apply(batch)
    store.apply(batch[::-1])
    assert store.get_task(uuid) == before
    assert len(store) == 1
    assert store.runtime_stats("proj.add").count == 1
    assert store.counts_by_state() == {SUCCESS: 1}


def test_a_retry_moves_forward_but_a_stale_duplicate_does_not(make_backend: MakeBackend) -> None:
    store = make_backend()
    uuid = new_id()
    retried = {
        "type": "task-retried",
        "uuid": uuid,
        "exception": "ConnectionError('db')",
        "traceback": "tb",
        "hostname": "w1@host",
        "timestamp": T0 + 2,
    }
    store.apply([received(uuid, T0), started(uuid, T0 + 1), retried])
    assert store.get_task(uuid).state == RETRY
    store.apply([received(uuid, T0 + 5, retries=1), started(uuid, T0 + 6, hostname="w2@host")])
    task = store.get_task(uuid)
    assert (task.state, task.retries, task.worker) == (STARTED, 1, "w2@host")
    assert [t.uuid for t in store.tasks(worker="w2@host")] == [uuid]
    assert store.tasks(worker="w1@host") == []
    assert [t.uuid for t in store.active(worker="w2@host")] == [uuid]
    store.apply([received(uuid, T0)])
    assert store.get_task(uuid).state == STARTED


def test_a_requeued_rejection_is_waiting_again(make_backend: MakeBackend) -> None:
    store = make_backend()
    uuid = new_id()
    store.apply(
        [
            received(uuid, T0),
            {"type": "task-rejected", "uuid": uuid, "requeue": True, "timestamp": T0 + 1},
        ]
    )
    task = store.get_task(uuid)
    assert task.state == PENDING and task.finished is None
    assert store.count_tasks(state=PENDING) == 1


def test_malformed_events_are_counted_and_dropped(make_backend: MakeBackend) -> None:
    store = make_backend()
    good = new_id()
    applied = store.apply(
        [
            {"no": "type"},
            {"type": "task-started"},
            {"type": "task-started", "uuid": ""},
            {"type": "task-started", "uuid": new_id(), "timestamp": "yesterday"},
            {"type": "worker-heartbeat"},
            {"type": 42},
            received(good, T0),
        ]
    )
    health = store.health()
    assert applied == 1
    assert (health.malformed, health.events_total) == (6, 1)
    assert store.get_task(good) is not None


def test_cap_evicts_by_value_and_the_indexes_follow(make_backend: MakeBackend) -> None:
    store = make_backend(max_tasks=4)
    running = new_id()
    store.apply([received(running, T0), started(running, T0 + 1)])
    failure = run_task(store, T0 + 2, outcome="fail")
    queued = new_id()
    store.apply([received(queued, T0 + 3)])
    ok1 = run_task(store, T0 + 4)
    ok2 = run_task(store, T0 + 5)
    assert store.get_task(ok1) is None and store.get_task(ok2) is not None
    run_task(store, T0 + 6)
    assert store.get_task(ok2) is None
    store.apply([received(new_id(), T0 + 7)])
    store.apply([received(new_id(), T0 + 8)])
    assert store.get_task(queued) is None
    assert store.get_task(failure) is not None and store.get_task(running) is not None
    assert len(store) == 4
    assert store.health().tasks_evicted == 4
    assert store.find_task_ids(queued[:8]) == []
    assert queued not in {t.uuid for t in store.tasks(limit=100)}


def test_cap_holds_under_a_flood(make_backend: MakeBackend) -> None:
    store = make_backend(max_tasks=100)
    for i in range(1000):
        run_task(store, T0 + i, outcome="fail" if i % 7 == 0 else "ok", name=f"proj.t{i % 5}")
    assert len(store) == 100
    assert store.counts_by_state() == {FAILURE: 99, SUCCESS: 1}
    assert store.tasks(state=SUCCESS)[0].received == T0 + 999
    for name in ("proj.t0", "proj.t1"):
        listed = store.tasks(name=name, limit=1000)
        assert all(t.name == name for t in listed)
        assert store.count_tasks(name=name) == len(listed)
    # statistics outlive the evicted tasks, as in memory
    assert store.runtime_stats("proj.t1").count == sum(
        1 for i in range(1000) if i % 5 == 1 and i % 7 != 0
    )


def test_secrets_are_redacted_and_payloads_clipped_at_ingest(make_backend: MakeBackend) -> None:
    store = make_backend(redact_keys=("password", "token"))
    plain, cut, big = new_id(), new_id(), new_id()
    frames = "".join(f'  File "mod.py", line {i}, in f{i}\n' for i in range(2000))
    event = failed(big, T0 + 1)
    event["traceback"] = "Traceback (most recent call last):\n" + frames + "KeyError: 'last'"
    store.apply(
        [
            received(plain, T0, kwargs="{'user': 'bob', 'password': 'hunter2'}"),
            received(cut, T0, kwargs="{'db_password': 'hunter2', 'x': '...'"),
            received(big, T0, args="(" + "x" * 50_000 + ")"),
            event,
        ]
    )
    assert store.get_task(plain).kwargs == "{'user': 'bob', 'password': '[redacted]'}"
    assert store.get_task(cut).kwargs == WITHHELD
    task = store.get_task(big)
    assert len(task.args) <= 1024 and len(task.traceback) <= 4096
    assert task.traceback.endswith("KeyError: 'last'")


def test_queries_come_newest_first(make_backend: MakeBackend) -> None:
    store = make_backend()
    for i in range(10):
        run_task(store, T0 + 10 * i, outcome="fail" if i % 2 else "ok", name=f"proj.t{i % 3}")
    failures = store.tasks(state=FAILURE)
    assert [t.finished for t in failures] == [T0 + 92, T0 + 72, T0 + 52, T0 + 32, T0 + 12]
    assert {t.finished for t in store.tasks(state=FAILURE, since=T0 + 50)} == {
        T0 + 52,
        T0 + 72,
        T0 + 92,
    }
    assert len(store.tasks(limit=3)) == 3
    assert [t.finished for t in store.tasks(limit=2)] == [T0 + 92, T0 + 82]
    assert store.tasks(state=FAILURE, name="proj.t1", limit=50) == [
        t for t in failures if t.name == "proj.t1"
    ]
    assert store.count_tasks(state=SUCCESS, name="proj.t0") == 2
    assert store.count_tasks(state=SUCCESS, name="proj.t0", worker="w1@host") == 2
    assert store.count_tasks(worker="w1@host") == 10
    assert store.tasks(limit=0) == []


def test_active_is_longest_running_first(make_backend: MakeBackend) -> None:
    store = make_backend()
    ids = [new_id() for _ in range(3)]
    for offset, uuid in zip((5, 1, 3), ids, strict=True):
        store.apply([received(uuid, T0), started(uuid, T0 + offset)])
    assert [t.uuid for t in store.active()] == [ids[1], ids[2], ids[0]]
    assert store.active(worker="nobody@host") == []


def test_failure_window_and_runtime_percentiles(make_backend: MakeBackend) -> None:
    store = make_backend()
    for ts in (T0, T0 + 100, T0 + 250, T0 + 290):
        run_task(store, ts, outcome="fail", name="proj.flaky")
    run_task(store, T0 + 280, outcome="fail", name="proj.other")
    assert store.failure_counts(window=60, now=T0 + 300) == {"proj.flaky": 2, "proj.other": 1}
    recent = store.recent_failures("proj.flaky", window=60, now=T0 + 300)
    assert [t.finished for t in recent] == [T0 + 292, T0 + 252]
    # (memory lists these in the order they failed-as-applied, Redis by time: compare as sets)
    assert {t.finished for t in store.recent_failures(None, 30, T0 + 300)} == {T0 + 292, T0 + 282}
    for i in range(1, 101):
        uuid = new_id()
        store.apply(
            [
                received(uuid, T0 + i, name="proj.slow"),
                started(uuid, T0 + i),
                succeeded(uuid, T0 + i + 1, runtime=float(i)),
            ]
        )
    stats = store.runtime_stats("proj.slow")
    assert (stats.count, stats.p50, stats.p95, stats.p99, stats.max) == (100, 50, 95, 99, 100)
    assert store.runtime_stats("proj.never") is None
    assert store.task_names() == ["proj.flaky", "proj.other", "proj.slow"]


def test_workers_heartbeats_caps_and_inspect_info(make_backend: MakeBackend) -> None:
    store = make_backend(max_workers=3)
    store.apply(
        [
            {
                "type": "worker-online",
                "hostname": "w1@host",
                "freq": 2.0,
                "local_received": T0,
                "sw_ident": "py-celery",
                "sw_ver": "5.7.0",
                "sw_sys": "Linux",
                "timestamp": T0,
            },
            {
                "type": "worker-heartbeat",
                "hostname": "w1@host",
                "freq": 2.0,
                "active": 3,
                "processed": 40,
                "loadavg": [0.5, 0.4, 0.3],
                "local_received": T0 + 2,
            },
        ]
    )
    worker = store.get_worker("w1@host")
    assert (worker.active, worker.processed, worker.loadavg) == (3, 40, (0.5, 0.4, 0.3))
    assert worker.is_online(T0 + 5.9) and not worker.is_online(T0 + 6.1)
    store.apply([{"type": "worker-heartbeat", "hostname": "w1@host", "local_received": T0 + 1}])
    assert store.get_worker("w1@host").last_heartbeat == T0 + 2
    store.update_worker_info("w1@host", pool="prefork", concurrency=8, queues=["celery", "io"])
    worker = store.get_worker("w1@host")
    assert (worker.pool, worker.concurrency, worker.queues) == ("prefork", 8, ("celery", "io"))
    for i in range(2, 6):
        store.apply(
            [{"type": "worker-heartbeat", "hostname": f"w{i}@host", "local_received": T0 + 10 + i}]
        )
    assert [w.hostname for w in store.workers()] == ["w3@host", "w4@host", "w5@host"]
    assert store.get_worker("w1@host") is None
    assert store.health().workers_evicted == 2


def test_find_task_ids_by_prefix(make_backend: MakeBackend) -> None:
    store = make_backend()
    a = "abcdef01-1111-4000-8000-000000000000"
    b = "abcdef01-2222-4000-8000-000000000000"
    store.apply([received(a, T0), received(b, T0)])
    assert store.find_task_ids("abcdef01-1") == [a]
    assert sorted(store.find_task_ids("abcdef01")) == [a, b]
    assert len(store.find_task_ids("abcdef01", limit=1)) == 1
    assert store.find_task_ids(a) == [a]
    assert store.find_task_ids("ffffffff") == []


def test_snapshots_are_independent_of_the_store(make_backend: MakeBackend) -> None:
    store = make_backend()
    uuid = run_task(store, T0)
    snapshot = store.get_task(uuid)
    snapshot.state = RECEIVED
    assert store.get_task(uuid).state == SUCCESS


def _random_stream(seed: int, tasks: int) -> list[dict[str, Any]]:
    """Events of many tasks, shuffled a little, with duplicates and late arrivals."""
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    for i in range(tasks):
        uuid = f"{seed:04x}{i:04x}-0000-4000-8000-000000000000"
        ts = T0 + i * 0.5
        name = f"proj.t{rng.randrange(6)}"
        host = f"w{rng.randrange(4)}@host"
        life = [
            received(uuid, ts, name=name, hostname=host),
            started(uuid, ts + 0.1, hostname=host),
        ]
        roll = rng.random()
        if roll < 0.6:
            life.append(succeeded(uuid, ts + 0.2 + rng.random(), runtime=rng.random()))
        elif roll < 0.8:
            life.append(failed(uuid, ts + 0.3))
        elif roll < 0.9:
            life.append(
                {
                    "type": "task-revoked",
                    "uuid": uuid,
                    "terminated": True,
                    "signum": "15",
                    "timestamp": ts + 0.4,
                }
            )
        events.extend(life)
        if rng.random() < 0.1:
            events.append(rng.choice(life))  # a duplicate
        if i % 25 == 0:
            events.append(
                {
                    "type": "worker-heartbeat",
                    "hostname": host,
                    "active": i,
                    "local_received": ts,
                    "freq": 2.0,
                }
            )
    # late arrivals: swap some neighbours
    for _ in range(len(events) // 10):
        j = rng.randrange(len(events) - 1)
        events[j], events[j + 1] = events[j + 1], events[j]
    return events


def test_the_redis_store_answers_exactly_as_memory_on_a_random_stream(redis_url: str) -> None:
    events = _random_stream(seed=7, tasks=600)
    memory = MemoryStore(max_tasks=250, clock=Clock())
    store = RedisFleetStore(redis_url, max_tasks=250, clock=Clock())
    try:
        store.start_writer(wait=True, timeout=30)
        for start in range(0, len(events), 97):
            memory.apply(events[start : start + 97])
            store.apply(events[start : start + 97])
        assert store.flush(timeout=30)
        assert len(store) == len(memory) == 250
        assert store.counts_by_state() == memory.counts_by_state()
        ids = {t.uuid for t in memory.tasks(limit=1000)}
        assert {t.uuid for t in store.tasks(limit=1000)} == ids
        for uuid in ids:
            assert store.get_task(uuid) == memory.get_task(uuid)
        for state in TASK_STATES:
            expected = memory.tasks(state=state, limit=1000)
            got = store.tasks(state=state, limit=1000)
            assert sorted(t.uuid for t in got) == sorted(t.uuid for t in expected)
            assert [t.state_ts for t in got] == sorted((t.state_ts for t in got), reverse=True)
            for name in memory.task_names():
                assert store.count_tasks(state=state, name=name) == memory.count_tasks(
                    state=state, name=name
                )
        assert store.task_names() == memory.task_names()
        for name in memory.task_names():
            assert store.runtime_stats(name) == memory.runtime_stats(name)
            assert store.count_tasks(name=name) == memory.count_tasks(name=name)
        assert store.failure_counts(60, T0 + 320) == memory.failure_counts(60, T0 + 320)
        assert store.failure_counts(1e9, T0) == memory.failure_counts(1e9, T0)
        assert [t.uuid for t in store.active()] == [t.uuid for t in memory.active()]
        assert store.workers() == memory.workers()
        mem_health, redis_health = memory.health(), store.health()
        mem_health.last_event_at = redis_health.last_event_at = None  # each store's own clock
        assert redis_health == mem_health
        wait_until(lambda: store.fleet_counters() == memory.fleet_counters(), what="counters")
    finally:
        store.close()


# ---------------------------------------------------------------------------------------------
# Redis only: the keys themselves
# ---------------------------------------------------------------------------------------------
def _fleet_keys_consistent(client: redis.Redis, prefix: str, max_tasks: int) -> None:
    """Every index member has a record, every record is indexed once per index family."""
    records = set(client.hkeys(f"{prefix}:task"))
    assert len(records) <= max_tasks
    assert set(client.zrange(f"{prefix}:idx:ids", 0, -1)) == records
    assert set(client.zrange(f"{prefix}:idx:recent", 0, -1)) == records
    for family in ("state", "name", "worker", "failed"):
        seen: list[Any] = []
        for key in client.scan_iter(match=f"{prefix}:idx:{family}:*"):
            seen.extend(client.zrange(key, 0, -1))
        assert set(seen) <= records, family
        assert len(seen) == len(set(seen)), f"a task indexed twice in {family}"
        if family == "state":
            assert set(seen) == records


def test_caps_hold_in_redis_under_a_flood_of_ten_times_max_tasks(redis_url: str) -> None:
    store = RedisFleetStore(redis_url, max_tasks=200, max_workers=5)
    try:
        store.start_writer(wait=True, timeout=30)
        for i in range(2000):
            uuid = new_id()
            outcome = failed(uuid, T0 + i + 2) if i % 9 == 0 else succeeded(uuid, T0 + i + 2)
            host = f"w{i % 40}@host"
            store.apply(
                [
                    received(uuid, T0 + i, name=f"proj.t{i % 13}", hostname=host),
                    started(uuid, T0 + i + 1, hostname=host),
                    outcome,
                    {"type": "worker-heartbeat", "hostname": host, "local_received": T0 + i},
                ]
            )
        assert store.flush(timeout=30)
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        assert client.hlen("chatops:task") == 200
        assert client.hlen("chatops:worker") == 5
        _fleet_keys_consistent(client, "chatops", 200)
        assert sum(store.counts_by_state().values()) == 200
        client.close()
    finally:
        store.close()


def test_prefixes_isolate_bots_sharing_one_database(redis_url: str) -> None:
    a = RedisFleetStore(redis_url, prefix="bot-a")
    b = RedisFleetStore(redis_url, prefix="bot-b")
    ra, rb = RedisRecordStore(redis_url, "bot-a"), RedisRecordStore(redis_url, "bot-b")
    try:
        a.start_writer(wait=True, timeout=30)
        b.start_writer(wait=True, timeout=30)
        ua, ub = new_id(), new_id()
        a.apply([received(ua, T0, name="a.task")])
        b.apply([received(ub, T0, name="b.task"), started(ub, T0 + 1)])
        assert a.flush() and b.flush()
        assert [t.uuid for t in a.tasks()] == [ua] and [t.uuid for t in b.tasks()] == [ub]
        assert a.get_task(ub) is None and a.task_names() == ["a.task"]
        assert a.active() == [] and len(b.active()) == 1
        ra.put("approval", "x", {"status": "pending"})
        assert rb.get("approval", "x") is None and rb.list("approval") == []
    finally:
        a.close()
        b.close()


# ---------------------------------------------------------------------------------------------
# Restarts and replicas
# ---------------------------------------------------------------------------------------------
def test_history_survives_a_restart_and_the_new_writer_continues_it(redis_url: str) -> None:
    first = RedisFleetStore(redis_url)
    first.start_writer(wait=True, timeout=30)
    done, running = new_id(), new_id()
    first.apply(
        [
            received(done, T0),
            started(done, T0 + 1),
            succeeded(done, T0 + 2, runtime=1.5),
            received(running, T0 + 3, name="proj.long"),
            started(running, T0 + 4),
            {"type": "worker-heartbeat", "hostname": "w1@host", "local_received": T0 + 4},
        ]
    )
    assert first.flush()
    before = (first.tasks(limit=100), first.workers(), first.health())
    first.close()  # the deploy

    restarted = RedisFleetStore(redis_url)
    try:
        # Answers at once, before (and without) becoming the writer.
        assert not restarted.is_writer
        assert (restarted.tasks(limit=100), restarted.workers(), restarted.health()) == before
        assert [t.uuid for t in restarted.active()] == [running]
        assert must(restarted.runtime_stats("proj.add")).count == 1

        assert restarted.start_writer(wait=True, timeout=30)
        assert restarted.tasks_loaded == 2
        # Ordering and idempotence continue: a duplicate changes nothing, a late started does
        # not make the finished task active again, and the running task finishes normally.
        restarted.apply([succeeded(done, T0 + 2, runtime=1.5), started(done, T0 + 1)])
        restarted.apply([succeeded(running, T0 + 9, runtime=5.0)])
        assert restarted.flush()
        assert restarted.get_task(done) == before[0][1]
        assert must(restarted.runtime_stats("proj.add")).count == 1
        assert must(restarted.get_task(running)).state == SUCCESS
        assert restarted.active() == []
        assert restarted.health().events_total == before[2].events_total + 3
    finally:
        restarted.close()


def test_events_applied_while_the_writer_loads_are_applied_after_the_load(
    redis_url: str,
) -> None:
    seed = RedisFleetStore(redis_url)
    seed.start_writer(wait=True, timeout=30)
    uuids = [new_id() for _ in range(3000)]
    for i, uuid in enumerate(uuids):
        seed.apply([received(uuid, T0 + i), started(uuid, T0 + i + 1)])
    assert seed.flush()
    seed.close()

    store = RedisFleetStore(redis_url)
    try:
        store.start_writer()  # loads in the background
        store.apply([succeeded(uuid, T0 + 10_000) for uuid in uuids[:10]])
        assert store.wait_ready(timeout=30)
        assert store.flush()
        assert {must(store.get_task(u)).state for u in uuids[:10]} == {SUCCESS}
        assert store.count_tasks(state=STARTED) == 2990
    finally:
        store.close()


def test_two_replicas_answer_the_same(redis_url: str) -> None:
    writer = RedisFleetStore(redis_url, max_tasks=300)
    reader = RedisFleetStore(redis_url, max_tasks=300)
    try:
        writer.start_writer(wait=True, timeout=30)
        events = _random_stream(seed=11, tasks=400)
        for start in range(0, len(events), 200):
            writer.apply(events[start : start + 200])
        assert writer.flush()
        assert reader.apply(events[:10]) == 0  # not the writer: ignored, never double-applied
        for ask in (
            lambda s: s.tasks(limit=500),
            lambda s: s.tasks(state=FAILURE, name="proj.t1"),
            lambda s: s.active(),
            lambda s: s.counts_by_state(),
            lambda s: s.failure_counts(3600, T0 + 400),
            lambda s: s.workers(),
            lambda s: s.health(),
            lambda s: s.task_names(),
            lambda s: s.runtime_stats("proj.t2"),
            lambda s: len(s),
        ):
            assert ask(reader) == ask(writer)
    finally:
        writer.close()
        reader.close()


def test_a_standalone_redis_store_writes_before_apply_returns(redis_url: str) -> None:
    store = RedisStore(redis_url)
    reader = RedisFleetStore(redis_url)
    try:
        uuid = new_id()
        assert store.apply([received(uuid, T0), started(uuid, T0 + 1)]) == 2
        assert [t.uuid for t in reader.active()] == [uuid]  # no flush() needed
    finally:
        store.close()
        reader.close()


def test_a_writer_that_loses_its_turn_stops_writing(redis_url: str) -> None:
    store = RedisFleetStore(redis_url)
    store.start_writer(wait=True, timeout=30)
    store.stop_writer(flush=False)
    assert not store.is_writer
    assert store.apply([received(new_id(), T0)]) == 0
    assert len(store) == 0
    store.close()


# ---------------------------------------------------------------------------------------------
# Outages
# ---------------------------------------------------------------------------------------------
def _outage(server: EmbeddedRedis, store: RedisFleetStore, records: RedisRecordStore) -> list[str]:
    """Stop Redis, check reads fail clearly, apply a batch; returns its task ids."""
    server.stop()
    with pytest.raises(StoreUnavailable) as raised:
        store.tasks()
    message = str(raised.value)
    assert message.startswith("state store unavailable: Redis at redis://127.0.0.1:")
    assert "\n" not in message
    for read in (store.get_task, store.find_task_ids):
        with pytest.raises(StoreUnavailable):
            read("x")
    with pytest.raises(StoreUnavailable):
        store.health()
    with pytest.raises(StoreUnavailable):
        records.get("approval", "a1")
    during = [new_id() for _ in range(5)]
    applied = store.apply([received(u, T0 + 50 + i) for i, u in enumerate(during)])
    assert applied == 5  # ingest goes on in memory
    assert not store.flush(timeout=0.5)
    wait_until(lambda: not store.available, what="the writer to notice the outage")
    assert store.pending >= 5
    return during


@pytest.mark.parametrize(
    "persistent", [True, False], ids=["redis-kept-data", "redis-came-back-empty"]
)
def test_an_outage_gives_clear_errors_and_recovers_without_losing_pending_writes(
    embedded_redis: Callable[..., EmbeddedRedis], tmp_path: Path, persistent: bool
) -> None:
    # A dir of our own survives EmbeddedRedis.stop(); with appendonly the data survives too.
    config = {"appendonly": "yes", "dir": f'"{tmp_path}"'} if persistent else {}
    server = embedded_redis(config=config)
    url = server.url_for(1)
    store = RedisFleetStore(url)
    records = RedisRecordStore(url)
    try:
        store.start_writer(wait=True, timeout=30)
        before = [run_task(Backend(store, "redis"), T0 + i) for i in range(3)]
        records.put("approval", "a1", {"status": "pending"})

        during = _outage(server, store, records)
        server.start()  # same port: the same URL, the same store objects

        assert store.flush(timeout=30)
        assert store.available and store.pending == 0
        for uuid in before + during:
            assert store.get_task(uuid) is not None, uuid
        assert len(store) == 8
        assert store.count_tasks(state=RECEIVED) == 5
        assert must(store.runtime_stats("proj.add")).count == 3
        assert store.health().events_total == 14
        client = redis.Redis.from_url(url, decode_responses=True)
        _fleet_keys_consistent(client, "chatops", 10_000)
        client.close()
        if persistent:
            assert records.get("approval", "a1") == {"status": "pending"}
        # and it keeps going
        after = run_task(Backend(store, "redis"), T0 + 100)
        assert must(store.get_task(after)).state == SUCCESS
    finally:
        store.close()
        records.close()


# ---------------------------------------------------------------------------------------------
# Records: approvals, alerts, silences
# ---------------------------------------------------------------------------------------------
def test_redis_record_store_satisfies_the_interface(redis_url: str) -> None:
    assert isinstance(RedisRecordStore(redis_url), RecordStore)


def test_records_create_get_list_delete_and_survive_a_restart(redis_url: str) -> None:
    records = RedisRecordStore(redis_url)
    assert records.create("approval", "a1", {"status": "pending", "targets": ["x"]})
    assert not records.create("approval", "a1", {"status": "other"})
    records.put("approval", "a2", {"status": "pending"})
    records.put("alert", "backlog:celery", {"open": True})
    got = records.get("approval", "a1")
    assert got == {"status": "pending", "targets": ["x"]}
    got["targets"].append("y")
    records.close()

    restarted = RedisRecordStore(redis_url)
    assert restarted.get("approval", "a1") == {"status": "pending", "targets": ["x"]}
    assert restarted.list("approval") == [
        {"status": "pending", "targets": ["x"]},
        {"status": "pending"},
    ]
    assert restarted.list("alert") == [{"open": True}]
    assert restarted.delete("approval", "a1") and not restarted.delete("approval", "a1")
    assert restarted.list("approval") == [{"status": "pending"}]
    assert restarted.transition("approval", "missing", "status", "pending", {}) is None


def test_record_ttls_are_redis_expiries_and_a_transition_keeps_them(redis_url: str) -> None:
    records = RedisRecordStore(redis_url)
    records.put("silence", "backlog:celery", {"until": 1060}, ttl=0.5)
    records.create("approval", "short", {"status": "pending"}, ttl=0.5)
    records.put("approval", "kept", {"status": "pending"})
    assert records.transition("approval", "short", "status", "pending", {"status": "seen"})
    client = redis.Redis.from_url(redis_url)
    assert 0 < client.pttl("chatops:rec:approval:short") <= 500
    assert client.pttl("chatops:rec:approval:kept") == -1
    client.close()
    wait_until(lambda: records.get("silence", "backlog:celery") is None, what="expiry")
    wait_until(lambda: records.get("approval", "short") is None, what="expiry")
    assert records.list("silence") == []
    assert records.list("approval") == [{"status": "pending"}]
    # an expired approval cannot be approved, nor brought back by the attempt
    assert records.transition("approval", "short", "status", "seen", {"status": "x"}) is None
    assert records.get("approval", "short") is None


def _race(records_for: Callable[[int], RedisRecordStore], clicks: int) -> list[str]:
    winners: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clicks)

    def click(i: int) -> None:
        records = records_for(i)
        barrier.wait()
        result = records.transition(
            "approval", "a1", "status", "pending", {"status": "approved", "by": f"U{i}"}
        )
        if result is not None:
            assert result["by"] == f"U{i}"
            with lock:
                winners.append(f"U{i}")

    threads = [threading.Thread(target=click, args=(i,)) for i in range(clicks)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return winners


def test_an_approval_is_decided_once_among_threads_of_one_replica(redis_url: str) -> None:
    records = RedisRecordStore(redis_url)
    for round_ in range(5):
        records.put("approval", "a1", {"status": "pending", "round": round_})
        winners = _race(lambda _: records, clicks=16)
        assert len(winners) == 1
        assert records.get("approval", "a1") == {
            "status": "approved",
            "by": winners[0],
            "round": round_,
        }


def test_an_approval_is_decided_once_across_two_replicas(redis_url: str) -> None:
    replicas = [RedisRecordStore(redis_url), RedisRecordStore(redis_url)]
    for round_ in range(5):
        replicas[0].put("approval", "a1", {"status": "pending", "round": round_})
        winners = _race(lambda i: replicas[i % 2], clicks=16)
        assert len(winners) == 1
        assert replicas[1].get("approval", "a1")["by"] == winners[0]  # type: ignore[index]


def test_transition_compares_with_python_equality(redis_url: str) -> None:
    records = RedisRecordStore(redis_url)
    records.put("approval", "a1", {"status": "pending", "n": 1, "targets": ["a", "b"]})
    assert records.transition("approval", "a1", "targets", ["a"], {"x": 1}) is None
    assert records.transition("approval", "a1", "targets", ["a", "b"], {"x": 1}) is not None
    assert records.transition("approval", "a1", "absent", None, {"y": 2}) is not None
    assert records.get("approval", "a1") == {
        "status": "pending",
        "n": 1,
        "targets": ["a", "b"],
        "x": 1,
        "y": 2,
    }


# ---------------------------------------------------------------------------------------------
# The factory
# ---------------------------------------------------------------------------------------------
def test_open_stores_with_redis_runs_ingest_only_on_the_lease_holder(redis_url: str) -> None:
    prefix = f"f{uuid_module.uuid4().hex[:6]}"
    settings = Settings(state_url=redis_url, state_prefix=prefix, max_tasks=500)
    calls: list[str] = []
    first = open_stores(settings, lease_ttl=2.0, renew_every=0.1)
    second = open_stores(settings, lease_ttl=2.0, renew_every=0.1)
    try:
        assert first.backend == "redis"
        assert isinstance(first.fleet, RedisFleetStore)
        assert isinstance(first.records, RedisRecordStore)
        first.start(lambda: calls.append("first+"), lambda: calls.append("first-"))
        assert first.keeper is not None and first.keeper.wait_held(timeout=10)
        second.start(lambda: calls.append("second+"), lambda: calls.append("second-"))
        wait_until(lambda: first.ready, what="the first replica to load")
        uuid = new_id()
        first.fleet.apply([received(uuid, T0)])
        assert isinstance(first.fleet, RedisFleetStore) and first.fleet.flush()
        assert second.fleet.get_task(uuid) is not None
        assert not second.is_leader and second.ready
        first.records.put("approval", "a1", {"status": "pending"})
        assert second.records.get("approval", "a1") == {"status": "pending"}

        first.stop()  # graceful: writes what is pending, releases the lease
        wait_until(lambda: second.is_leader and second.ready, what="the failover")
        assert calls == ["first+", "first-", "second+"]
        second.fleet.apply([started(uuid, T0 + 1)])
        assert isinstance(second.fleet, RedisFleetStore) and second.fleet.flush()
        assert must(second.fleet.get_task(uuid)).state == STARTED
    finally:
        first.stop()
        second.stop()


def test_a_redis_outage_longer_than_the_lease_loses_no_writes_of_the_holder(
    embedded_redis: Callable[..., EmbeddedRedis],
) -> None:
    server = embedded_redis()
    settings = Settings(state_url=server.url_for(1))
    calls: list[str] = []
    stores = open_stores(settings, lease_ttl=1.0, renew_every=0.2)
    try:
        stores.start(lambda: calls.append("+"), lambda: calls.append("-"))
        assert stores.keeper is not None and stores.keeper.wait_held(timeout=10)
        fleet = stores.fleet
        assert isinstance(fleet, RedisFleetStore) and fleet.wait_ready(timeout=30)
        before = run_task(Backend(fleet, "redis"), T0)

        server.stop()
        during = new_id()
        fleet.apply([received(during, T0 + 10), started(during, T0 + 11)])
        # longer than the TTL: the keeper's fence drops, but its turn (and ingest) goes on
        keeper = stores.keeper
        wait_until(lambda: not keeper.confirmed, what="the lease to go unconfirmed")
        assert keeper.held and fleet.is_writer
        server.start()  # came back empty: no lease, no data

        assert fleet.flush(timeout=30)
        assert keeper.confirmed
        assert must(fleet.get_task(before)).state == SUCCESS
        assert must(fleet.get_task(during)).state == STARTED
        assert [t.uuid for t in fleet.active()] == [during]
        assert calls == ["+"]  # one turn throughout: nothing reloaded, nothing dropped
    finally:
        stores.stop()


def test_a_graceful_stop_writes_what_is_pending_before_releasing(redis_url: str) -> None:
    settings = Settings(state_url=redis_url)
    stores = open_stores(settings, lease_ttl=5.0)
    stores.start(lambda: None, lambda: None)
    assert stores.keeper is not None and stores.keeper.wait_held(timeout=10)
    fleet = stores.fleet
    assert isinstance(fleet, RedisFleetStore) and fleet.wait_ready(timeout=30)
    fleet.flush_interval = 1e9  # nothing is written before the stop
    uuids = [new_id() for _ in range(200)]
    for uuid in uuids:
        fleet.apply([received(uuid, T0)])  # no flush: the stop must write them
    stores.stop()
    after = RedisFleetStore(redis_url)
    try:
        assert len(after) == 200
    finally:
        after.close()
