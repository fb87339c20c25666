"""What only the Redis backends have, against a real (private) Redis: the same answers as
memory on a random stream, caps and consistency of the keys themselves, key prefixes, restarts,
replicas, outages, records decided once across processes, and the factory.

The behaviour both backends share is the contract in ``test_store_contract.py``.
"""

from __future__ import annotations

import random
import threading
import time
import uuid as uuid_module
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from chatbot.config import Settings
from chatbot.demo.embedded import EmbeddedRedis
from chatbot.model import FAILURE, RECEIVED, STARTED, SUCCESS, TASK_STATES
from chatbot.store import RecordStore
from chatbot.store.factory import open_stores
from chatbot.store.memory import MemoryStore
from chatbot.store.redis import (
    RedisFleetStore,
    RedisRecordStore,
    RedisStore,
    StoreUnavailable,
)
from chatbot.store.redis.connection import text
from tests.support import wait_until
from tests.support.task_events import (
    T0,
    Clock,
    failed,
    new_id,
    received,
    run_task,
    started,
    succeeded,
)

T = TypeVar("T")


def must(value: T | None) -> T:
    assert value is not None
    return value


def run_task_written(store: RedisFleetStore, ts: float, outcome: str = "ok") -> str:
    """``run_task``, returning once its events are in Redis."""
    uuid = run_task(store, ts, outcome)
    assert store.flush(timeout=30), "the Redis writer did not flush"
    return uuid


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
        before = [run_task_written(store, T0 + i) for i in range(3)]
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
        after = run_task_written(store, T0 + 100)
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


def test_expired_records_are_unindexed_by_later_writes_even_when_never_listed(
    redis_url: str,
) -> None:
    # The replay guard writes one record per signed request and never lists its kind: its
    # index must not keep a member per request for ever.
    prefix = f"sweep-{uuid_module.uuid4().hex[:8]}"
    records = RedisRecordStore(redis_url, prefix=prefix)
    ahead = RedisRecordStore(redis_url, prefix=prefix, clock=lambda: time.time() + 120)
    client = redis.Redis.from_url(redis_url)
    try:
        records.put("alert", "backlog:celery", {"open": True}, ttl=0.05)
        records.put("alert", "backlog:celery", {"open": True})  # kept for good now
        records.create("approval", "long", {"status": "pending"}, ttl=60)
        for i in range(150):
            assert records.create("replay", f"sig-{i}", {"at": i}, ttl=0.05)
        time.sleep(0.3)
        for i in range(150, 152):  # each write unindexes at most SWEEP_LIMIT (100)
            assert records.create("replay", f"sig-{i}", {"at": i}, ttl=60)
        indexed: list[bytes] = client.zrange(f"{prefix}:recidx:replay", 0, -1)  # type: ignore[assignment]
        assert {text(m) for m in indexed} == {
            "sig-150", "sig-151",
        }  # fmt: skip
        assert client.zcard(f"{prefix}:recexp:replay") == 2
        # A replica whose clock runs ahead sweeps early: a record still there stays listed.
        ahead.put("approval", "other", {"status": "pending"}, ttl=600)
        rescheduled = client.zscore(f"{prefix}:recexp:approval", "long")
        assert rescheduled is not None and rescheduled > time.time() + 100  # seen, kept
        assert records.list("approval") == [{"status": "pending"}, {"status": "pending"}]
        assert records.list("alert") == [{"open": True}]
        assert client.zscore(f"{prefix}:recexp:alert", "backlog:celery") is None
    finally:
        for key in client.scan_iter(match=f"{prefix}:*"):
            client.unlink(key)
        client.close()
        records.close()
        ahead.close()


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
        before = run_task_written(fleet, T0)

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


def test_a_poisoned_stored_record_is_skipped_and_counted_never_a_reason_to_stop(
    redis_url: str,
) -> None:
    # Finding 2 of the hostile-input review: a record holding a time of "yesterday" (written
    # by an older version, or by hand) crashed every restart's load. Now it is skipped.
    first = RedisFleetStore(redis_url, prefix="poisoned")
    first.start_writer(wait=True, timeout=30)
    good = run_task_written(first, T0)
    first.close()
    raw = redis.Redis.from_url(redis_url)
    try:
        key = "poisoned:task"
        assert raw.hexists(key, good)
        raw.hset(key, "bad-time", '{"uuid":"bad-time","state":"STARTED","state_ts":"yesterday"}')
        raw.hset(key, "bad-nan", '{"uuid":"bad-nan","state":"STARTED","started":NaN}')
        raw.hset(key, "not-json", "{not json")
    finally:
        raw.close()

    restarted = RedisFleetStore(redis_url, prefix="poisoned")
    try:
        restarted.start_writer(wait=True, timeout=30)
        assert restarted.records_skipped == 3
        assert must(restarted.get_task(good)).state == SUCCESS
        later = run_task_written(restarted, T0 + 10)  # and it goes on ingesting
        assert must(restarted.get_task(later)).state == SUCCESS
    finally:
        restarted.close()
