"""The fleet store's behaviour, once, over both backends: memory and Redis answer alike.

Every test here runs against ``memory://`` and against ``redis://`` (a private Redis, with a
writer that is flushed after each ``apply``), so event semantics (ordering, idempotence,
value-ordered eviction, redaction and clipping at ingest) and every question the commands ask
are held to one contract. What only one backend has lives apart: the memory store's change
tracking, warm start and locking in ``test_state.py``; restarts, replicas, outages, keys and
records of Redis in ``test_store_redis.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from chatbot.model import FAILURE, PENDING, RECEIVED, RETRY, STARTED, SUCCESS
from chatbot.redaction import WITHHELD
from chatbot.store import FleetStore
from chatbot.store.memory import MemoryStore
from chatbot.store.redis import RedisFleetStore
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


@pytest.fixture(params=["memory", "redis"])
def make_backend(request: pytest.FixtureRequest) -> Iterator[MakeBackend]:
    """``make_backend(**options)``: a store of the parametrised kind, built with the options
    both constructors take (caps, clock, redaction)."""
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


def test_both_backends_satisfy_the_store_interface(make_backend: MakeBackend) -> None:
    assert isinstance(make_backend().store, FleetStore)


@pytest.mark.parametrize("bad", [0, -1])
def test_caps_must_be_positive(make_backend: MakeBackend, bad: int) -> None:
    with pytest.raises(ValueError):
        make_backend(max_tasks=bad)


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
                "eta": None,
                "expires": None,
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
    # the client's hostname on task-sent is not the worker's
    assert store.tasks(worker="client@host") == []


def test_a_late_started_after_succeeded_does_not_make_the_task_active_again(
    make_backend: MakeBackend,
) -> None:
    store = make_backend()
    uuid = new_id()
    store.apply([received(uuid, T0), succeeded(uuid, T0 + 3), started(uuid, T0 + 1)])
    task = store.get_task(uuid)
    assert task is not None and task.state == SUCCESS
    assert task.started == T0 + 1  # the late event still fills in its time
    assert store.active() == []


def test_a_late_started_after_the_success_was_evicted_creates_no_running_task(
    make_backend: MakeBackend,
) -> None:
    # Issue 12, item 4: at a small cap a success is evicted soon after it finished; its late
    # task-started must not bring it back as a running task (STARTED is evicted last, so a
    # phantom would stay in `active` and `stuck` for good).
    store = make_backend(max_tasks=2)
    done = new_id()
    store.apply([received(done, T0), succeeded(done, T0 + 2)])
    newer = [run_task(store, T0 + 10 + i) for i in range(2)]  # the cap pushes `done` out
    assert store.get_task(done) is None
    assert store.health().tasks_evicted == 1
    applied = store.apply([started(done, T0 + 1)])  # the late event
    assert applied == 1  # a valid event, applied to the picture: it changes nothing
    assert store.get_task(done) is None
    assert store.active() == []
    assert store.count_tasks(state=STARTED) == 0
    assert {t.uuid for t in store.tasks(limit=10)} == set(newer)
    # A task evicted while queued still moves forward when it really starts...
    queued = new_id()
    store.apply([received(queued, T0 + 20)])
    store.apply([received(new_id(), T0 + 21), received(new_id(), T0 + 22)])
    assert store.get_task(queued) is None
    store.apply([received(queued, T0 + 20)])  # ...but a duplicate of its last word does not
    assert store.get_task(queued) is None
    store.apply([started(queued, T0 + 23)])
    task = store.get_task(queued)
    assert task is not None and task.state == STARTED
    assert [t.uuid for t in store.active()] == [queued]


def test_events_in_reverse_order_end_in_the_final_state(make_backend: MakeBackend) -> None:
    store = make_backend()
    uuid = new_id()
    store.apply([failed(uuid, T0 + 3), started(uuid, T0 + 1), received(uuid, T0)])
    task = store.get_task(uuid)
    assert task is not None
    assert task.state == FAILURE
    assert task.name == "proj.add"  # task-failed has no name: it came from task-received
    assert task.exception == "ValueError('boom')"
    assert task.exception_type == "ValueError"
    assert store.count_tasks(state=FAILURE, name="proj.add") == 1
    assert [t.uuid for t in store.tasks(state=FAILURE, name="proj.add")] == [uuid]


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
    stats = store.runtime_stats("proj.add")
    assert stats is not None
    assert stats.count == 1
    assert store.counts_by_state() == {SUCCESS: 1}


def test_a_retry_moves_forward_to_the_second_attempt_but_a_stale_duplicate_does_not(
    make_backend: MakeBackend,
) -> None:
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
    assert task is not None
    assert (task.state, task.retries, task.worker) == (STARTED, 1, "w2@host")
    assert [t.uuid for t in store.tasks(worker="w2@host")] == [uuid]
    assert store.tasks(worker="w1@host") == []
    assert [t.uuid for t in store.active(worker="w2@host")] == [uuid]
    # the first attempt's received event, delivered again late, does not move it back,
    # neither its state nor its worker
    store.apply([received(uuid, T0)])
    task = store.get_task(uuid)
    assert task is not None and (task.state, task.worker) == (STARTED, "w2@host")
    assert [t.uuid for t in store.active(worker="w2@host")] == [uuid]
    assert store.tasks(worker="w1@host") == []


def test_a_requeued_rejection_is_waiting_again_not_finished(make_backend: MakeBackend) -> None:
    store = make_backend()
    uuid = new_id()
    store.apply(
        [
            received(uuid, T0),
            {"type": "task-rejected", "uuid": uuid, "requeue": True, "timestamp": T0 + 1},
        ]
    )
    task = store.get_task(uuid)
    assert task is not None and task.state == PENDING and task.finished is None
    assert store.count_tasks(state=PENDING) == 1


def test_a_client_task_sent_stamped_after_the_worker_started_does_not_requeue_it(
    make_backend: MakeBackend,
) -> None:
    store = make_backend()
    uuid = new_id()
    sent = {"type": "task-sent", "uuid": uuid, "name": "proj.add", "queue": "celery",
            "hostname": "client@host", "timestamp": T0 + 0.5}
    store.apply([received(uuid, T0), started(uuid, T0 + 0.1), sent])
    task = store.get_task(uuid)
    assert task is not None and task.state == STARTED
    assert (task.sent, task.queue) == (T0 + 0.5, "celery")
    assert [t.uuid for t in store.active()] == [uuid]


def test_after_a_retry_the_resent_attempt_is_queued_again(make_backend: MakeBackend) -> None:
    store = make_backend()
    uuid = new_id()
    retried = {"type": "task-retried", "uuid": uuid, "exception": "E()", "traceback": "tb",
               "hostname": "w1@host", "timestamp": T0 + 2}
    resent = {"type": "task-sent", "uuid": uuid, "name": "proj.add", "retries": 1,
              "hostname": "w1@host", "timestamp": T0 + 3}
    store.apply([received(uuid, T0), started(uuid, T0 + 1), retried, resent])
    assert store.get_task(uuid).state == PENDING


def test_malformed_events_are_counted_and_dropped(make_backend: MakeBackend) -> None:
    store = make_backend()
    good = new_id()
    applied = store.apply(
        [
            {"no": "type"},
            {"type": "task-started"},  # no uuid
            {"type": "task-started", "uuid": ""},
            {"type": "task-started", "uuid": new_id(), "timestamp": "yesterday"},
            {"type": "worker-heartbeat"},  # no hostname
            {"type": 42},
            received(good, T0),
        ]
    )
    health = store.health()
    assert applied == 1
    assert health.malformed == 6
    assert health.events_total == 1
    assert store.get_task(good) is not None


def test_cap_evicts_successes_first_then_queued_then_failures_and_running_last(
    make_backend: MakeBackend,
) -> None:
    store = make_backend(max_tasks=4)
    running = new_id()
    store.apply([received(running, T0), started(running, T0 + 1)])
    failure = run_task(store, T0 + 2, outcome="fail")
    queued = new_id()
    store.apply([received(queued, T0 + 3)])
    ok1 = run_task(store, T0 + 4)
    ok2 = run_task(store, T0 + 5)  # over the cap: the oldest success goes
    assert store.get_task(ok1) is None and store.get_task(ok2) is not None
    run_task(store, T0 + 6)  # ok2 goes
    assert store.get_task(ok2) is None
    assert {running, failure, queued} <= {t.uuid for t in store.tasks(limit=10)}
    # with no successes left to evict, the queued task goes before the failure
    store.apply([received(new_id(), T0 + 7)])
    store.apply([received(new_id(), T0 + 8)])
    assert store.get_task(queued) is None
    assert store.get_task(failure) is not None and store.get_task(running) is not None
    assert len(store) == 4
    assert store.health().tasks_evicted == 4
    # the indexes follow the eviction
    assert store.find_task_ids(queued[:8]) == []
    assert queued not in {t.uuid for t in store.tasks(limit=100)}


def test_cap_holds_under_a_flood_and_indexes_stay_consistent(make_backend: MakeBackend) -> None:
    store = make_backend(max_tasks=100)
    for i in range(1000):
        run_task(store, T0 + i, outcome="fail" if i % 7 == 0 else "ok", name=f"proj.t{i % 5}")
    assert len(store) == 100
    counts = store.counts_by_state()
    assert sum(counts.values()) == 100
    # failures are kept in preference to successes: only the newest task (a success that
    # has not yet had to give way) is not a failure
    assert counts == {FAILURE: 99, SUCCESS: 1}
    assert store.tasks(state=SUCCESS)[0].received == T0 + 999
    for name in ("proj.t0", "proj.t1"):
        listed = store.tasks(name=name, limit=1000)
        assert all(t.name == name for t in listed)
        assert store.count_tasks(name=name) == len(listed)
    # statistics outlive the evicted tasks
    assert store.runtime_stats("proj.t1").count == sum(
        1 for i in range(1000) if i % 5 == 1 and i % 7 != 0
    )


def test_kwargs_named_in_redact_keys_never_reach_the_store(make_backend: MakeBackend) -> None:
    store = make_backend(redact_keys=("password", "token"))
    plain, nested, cut, in_args = new_id(), new_id(), new_id(), new_id()
    store.apply(
        [
            received(plain, T0, kwargs="{'user': 'bob', 'password': 'hunter2'}"),
            received(nested, T0, kwargs="{'cfg': {'API_TOKEN': 's3cr3t', 'n': 1}}"),
            received(cut, T0, kwargs="{'db_password': 'hunter2', 'x': '...'"),  # cut by Celery
            received(in_args, T0, args="({'password': 'hunter2'}, 5)"),
        ]
    )
    stored = {u: store.get_task(u) for u in (plain, nested, cut, in_args)}
    assert stored[plain].kwargs == "{'user': 'bob', 'password': '[redacted]'}"
    assert stored[nested].kwargs == "{'cfg': {'API_TOKEN': '[redacted]', 'n': 1}}"
    assert stored[cut].kwargs == WITHHELD
    assert stored[in_args].args == "({'password': '[redacted]'}, 5)"
    for task in stored.values():
        assert "hunter2" not in repr(task) and "s3cr3t" not in repr(task)


def test_secrets_beyond_kwargs_never_reach_the_store(make_backend: MakeBackend) -> None:
    # Positional arguments, results, exception text and tracebacks: every form the contract
    # lists, on both backends (the Redis store holds what the state machine kept).
    store = make_backend()
    positional, result, failure = new_id(), new_id(), new_id()
    ok = succeeded(result, T0 + 2)
    ok["result"] = "{'password': 'opensesame', 'rows': 3}"
    bad = failed(failure, T0 + 3, exc="AuthError('api_key=AKIAIOSFODNN7EXAMPLE rejected')")
    bad["traceback"] = (
        'Traceback (most recent call last):\n  File "t.py", line 3, in run\n'
        "    connect('redis://app:dbpass99@db:6379/0')\nAuthError: Bearer tok.en.value bad"
    )
    store.apply(
        [
            received(positional, T0, args="('password=hunter2', 'xoxb-1234567890-abcdefghij')"),
            received(result, T0 + 1),
            ok,
            received(failure, T0 + 2),
            bad,
        ]
    )
    stored = [store.get_task(u) for u in (positional, result, failure)]
    text = repr(stored)
    for secret in ("hunter2", "xoxb-1234567890", "opensesame", "AKIAIOSFODNN7EXAMPLE",
                   "dbpass99", "tok.en.value"):  # fmt: skip
        assert secret not in text, secret
    assert stored[0] is not None and stored[0].args == "('password=[redacted]', '[redacted]')"
    assert stored[1] is not None and stored[1].result == "{'password': '[redacted]', 'rows': 3}"


def test_large_payloads_are_clipped_at_ingest_keeping_the_end_of_a_traceback(
    make_backend: MakeBackend,
) -> None:
    store = make_backend()
    uuid = new_id()
    frames = "".join(f'  File "mod.py", line {i}, in f{i}\n' for i in range(2000))
    event = failed(uuid, T0 + 1)
    event["traceback"] = "Traceback (most recent call last):\n" + frames + "KeyError: 'last'"
    store.apply([received(uuid, T0, args="(" + "x" * 50_000 + ")"), event])
    task = store.get_task(uuid)
    assert task is not None and task.args is not None and task.traceback is not None
    assert len(task.args) <= 1024 and task.args.endswith("…")
    assert len(task.traceback) <= 4096
    assert task.traceback.endswith("KeyError: 'last'")


def test_tracebacks_read_back_exactly_as_kept_once_the_store_compresses_them(
    make_backend: MakeBackend,
) -> None:
    # The memory store keeps tracebacks compressed with a dictionary made of the first ones
    # it saw (chatbot/store/compact.py); every reader gets the text back, byte for byte.
    store = make_backend()
    sent: dict[str, str] = {}
    for i in range(40):  # well past the dictionary's 4 KB of seed tracebacks
        uuid = new_id()
        frames = "".join(
            f'  File "/srv/app/mod{(i * 7 + j) % 13}/tasks.py", line {i * 31 + j}, in step{j}\n'
            f"    value = helper_{j}(payload, attempt={i})\n"
            for j in range(8)
        )
        text = f"Traceback (most recent call last):\n{frames}KeyError: 'é{i}'\n"
        sent[uuid] = text
        store.apply([received(uuid, T0 + i), {**failed(uuid, T0 + i + 0.5), "traceback": text}])
    for uuid, text in sent.items():
        task = store.get_task(uuid)
        assert task is not None and task.traceback == text
    newest = store.failure_summary(None, 3600.0, T0 + 100, 5).newest
    assert [t.traceback for t in newest] == [sent[t.uuid] for t in newest] != []
    assert {t.uuid: t.traceback for t in store.tasks(state=FAILURE, limit=100)} == sent


def test_queries_by_state_name_worker_and_since_come_newest_first(
    make_backend: MakeBackend,
) -> None:
    store = make_backend()
    for i in range(10):
        run_task(store, T0 + 10 * i, outcome="fail" if i % 2 else "ok", name=f"proj.t{i % 3}")
    failures = store.tasks(state=FAILURE)
    finished = [t.finished or 0.0 for t in failures]
    assert finished == sorted(finished, reverse=True)
    assert finished == [T0 + 92, T0 + 72, T0 + 52, T0 + 32, T0 + 12]
    assert len(failures) == 5
    assert all(t.state == FAILURE for t in failures)
    recent = store.tasks(state=FAILURE, since=T0 + 50)
    assert {t.finished for t in recent} == {T0 + 52, T0 + 72, T0 + 92}
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


def test_failure_window_and_runtime_percentiles_per_name(make_backend: MakeBackend) -> None:
    store = make_backend()
    for ts in (T0, T0 + 100, T0 + 250, T0 + 290):
        run_task(store, ts, outcome="fail", name="proj.flaky")
    run_task(store, T0 + 280, outcome="fail", name="proj.other")
    counts = store.failure_counts(window=60, now=T0 + 300)
    assert counts == {"proj.flaky": 2, "proj.other": 1}
    recent = store.recent_failures("proj.flaky", window=60, now=T0 + 300)
    assert [t.finished for t in recent] == [T0 + 292, T0 + 252]
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
    assert stats is not None
    assert (stats.count, stats.p50, stats.p95, stats.p99, stats.max) == (100, 50, 95, 99, 100)
    assert store.runtime_stats("proj.never") is None
    assert store.task_names() == ["proj.flaky", "proj.other", "proj.slow"]


def test_a_late_old_failure_does_not_hide_newer_ones_from_window_queries(
    make_backend: MakeBackend,
) -> None:
    store = make_backend()
    newer = [run_task(store, T0 + 1000 + i, outcome="fail", name="proj.f") for i in range(3)]
    old = run_task(store, T0 - 7200, outcome="fail", name="proj.f")  # arrives last, 2 h old
    now = T0 + 1100
    recent = store.recent_failures("proj.f", window=600, now=now)
    assert [t.uuid for t in recent] == list(reversed(newer))
    assert [t.uuid for t in store.recent_failures(None, window=600, now=now)] == [
        t.uuid for t in recent
    ]
    assert store.failure_counts(window=600, now=now) == {"proj.f": 3}
    listed = store.tasks(state=FAILURE, since=now - 600)
    assert {t.uuid for t in listed} == set(newer)
    assert store.tasks(state=FAILURE, name="proj.f", limit=10)[-1].uuid == old
    assert store.count_tasks(state=FAILURE, name="proj.f") == 4


def test_a_failure_that_later_succeeds_leaves_the_failure_indexes(
    make_backend: MakeBackend,
) -> None:
    store = make_backend()
    uuid = new_id()
    store.apply([received(uuid, T0), failed(uuid, T0 + 1), succeeded(uuid, T0 + 2)])
    assert store.get_task(uuid).state == SUCCESS
    assert store.tasks(state=FAILURE) == []
    assert store.recent_failures(None, window=60, now=T0 + 10) == []
    assert store.count_tasks(state=FAILURE, name="proj.add") == 0


def test_failure_summary_counts_everything_in_the_window_and_lists_the_newest(
    make_backend: MakeBackend,
) -> None:
    store = make_backend()
    for i in range(30):
        uuid = new_id()
        exc = "ValueError('x')" if i % 3 else "KeyError('k')"
        store.apply([received(uuid, T0 + i, name=f"proj.t{i % 2}"), failed(uuid, T0 + i + 1,
                                                                          exc=exc)])
    summary = store.failure_summary(None, window=20, now=T0 + 31, limit=5)
    assert summary.total == 20
    # i = 10..29 are in the window; KeyError where i % 3 == 0
    assert summary.by_type == {"ValueError": 14, "KeyError": 6}
    assert summary.by_name == {"proj.t0": 10, "proj.t1": 10}
    assert [t.finished for t in summary.newest] == [T0 + 30, T0 + 29, T0 + 28, T0 + 27, T0 + 26]
    one = store.failure_summary("proj.t1", window=20, now=T0 + 31, limit=50)
    assert one.total == 10 and len(one.newest) == 10
    assert all(t.name == "proj.t1" for t in one.newest)
    assert store.failure_summary("proj.none", 20, T0 + 31, 5).total == 0


def test_a_killed_worker_goes_offline_by_heartbeat_expiry(make_backend: MakeBackend) -> None:
    store = make_backend(clock=Clock())
    store.apply(
        [
            {"type": "worker-online", "hostname": "w1@host", "freq": 2.0, "local_received": T0,
             "sw_ident": "py-celery", "sw_ver": "5.7.0", "sw_sys": "Linux", "timestamp": T0},
            {"type": "worker-heartbeat", "hostname": "w1@host", "freq": 2.0, "active": 3,
             "processed": 40, "loadavg": [0.5, 0.4, 0.3], "local_received": T0 + 2,
             "timestamp": T0 + 2},
        ]
    )
    worker = store.get_worker("w1@host")
    assert worker is not None
    assert (worker.active, worker.processed, worker.loadavg) == (3, 40, (0.5, 0.4, 0.3))
    assert worker.is_online(T0 + 5.9)
    assert not worker.is_online(T0 + 6.1)  # no worker-offline was ever sent
    # a stale heartbeat delivered late does not bring it back
    store.apply([{"type": "worker-heartbeat", "hostname": "w1@host", "local_received": T0 + 1}])
    assert store.get_worker("w1@host").last_heartbeat == T0 + 2


def test_a_graceful_worker_offline_is_offline_at_once(make_backend: MakeBackend) -> None:
    store = make_backend()
    store.apply(
        [
            {"type": "worker-heartbeat", "hostname": "w1@host", "local_received": T0},
            {"type": "worker-offline", "hostname": "w1@host", "local_received": T0 + 1},
        ]
    )
    assert not store.get_worker("w1@host").is_online(T0 + 1.5)


def test_workers_are_capped_dropping_the_longest_silent(make_backend: MakeBackend) -> None:
    store = make_backend(max_workers=3)
    store.apply([{"type": "worker-heartbeat", "hostname": "w0@h", "local_received": T0}])
    store.update_worker_info("w0@h", pool="prefork", concurrency=8, queues=["celery"])
    for i in range(1, 5):
        store.apply(
            [{"type": "worker-heartbeat", "hostname": f"w{i}@h", "local_received": T0 + i}]
        )
    assert [w.hostname for w in store.workers()] == ["w2@h", "w3@h", "w4@h"]
    # an evicted worker is gone, the facts learned from inspect with it
    assert store.get_worker("w0@h") is None and store.get_worker("w1@h") is None
    assert store.health().workers_evicted == 2


def test_worker_info_from_inspect_is_kept(make_backend: MakeBackend) -> None:
    store = make_backend()
    store.apply([{"type": "worker-heartbeat", "hostname": "w1@host", "local_received": T0}])
    store.update_worker_info("w1@host", pool="prefork", concurrency=8, queues=["celery", "io"])
    store.update_worker_info("ghost@host", pool="solo")  # never seen on the stream: ignored
    worker = store.get_worker("w1@host")
    assert worker is not None
    assert (worker.pool, worker.concurrency, worker.queues) == ("prefork", 8, ("celery", "io"))
    assert store.get_worker("ghost@host") is None


def test_freshness_is_the_arrival_time_of_the_newest_event(make_backend: MakeBackend) -> None:
    store = make_backend(clock=Clock(T0 + 100))
    assert store.health().last_event_at is None
    store.apply([{"type": "worker-heartbeat", "hostname": "w@h"}])  # no local_received: now
    assert store.health().last_event_at == T0 + 100
    assert store.health().events_by_type == {"worker-heartbeat": 1}


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
    assert snapshot is not None
    snapshot.state = RECEIVED
    assert store.get_task(uuid).state == SUCCESS
