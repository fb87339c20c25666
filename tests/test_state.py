"""What only the in-memory store has: change tracking for the Redis writer, warm start from
records, and readers running beside the writer under its one lock.

The behaviour both backends share (event semantics, caps, queries) is the contract in
``test_store_contract.py``, run over memory and Redis alike.
"""

from __future__ import annotations

import gc
import threading
from typing import Any

from chatbot.model import FAILURE, Task
from chatbot.store.memory import MemoryStore
from tests.support.task_events import T0, failed, new_id, received, run_task, started, succeeded


def test_readers_never_see_a_half_applied_batch_or_crash_while_a_writer_runs() -> None:
    store = MemoryStore(max_tasks=500)
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        try:
            while not stop.is_set():
                store.tasks(limit=20)
                store.active()
                store.counts_by_state()
                store.failure_counts(60, T0 + 1e6)
        except BaseException as exc:  # pragma: no cover - the assertion reports it
            errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for thread in readers:
        thread.start()
    for i in range(3000):
        run_task(store, T0 + i, outcome="fail" if i % 3 == 0 else "ok")
    stop.set()
    for thread in readers:
        thread.join()
    assert errors == []
    assert len(store) == 500


def test_change_tracking_reports_what_a_batch_changed_and_evicted() -> None:
    store = MemoryStore(max_tasks=2, track_changes=True)
    first = run_task(store, T0)
    store.apply([{"type": "worker-heartbeat", "hostname": "w1@host", "local_received": T0}])
    changes = store.drain_changes()
    assert [t.uuid for t in changes.tasks] == [first]
    assert [w.hostname for w in changes.workers] == ["w1@host"]
    second, third = run_task(store, T0 + 10), run_task(store, T0 + 20)
    changes = store.drain_changes()
    assert {t.uuid for t in changes.tasks} == {second, third}
    assert changes.removed == [first]
    assert store.drain_changes().tasks == []


def test_changes_carry_the_statistics_samples_their_transitions_took() -> None:
    store = MemoryStore(max_tasks=1, track_changes=True)
    ok = run_task(store, T0, name="proj.ok")
    failure = new_id()
    store.apply([received(failure, T0 + 10, name="proj.bad"), failed(failure, T0 + 12)])
    changes = store.drain_changes()
    # the success was evicted by the failure before this drain: its runtime sample is kept
    assert changes.removed == [ok]
    assert changes.runtimes == [("proj.ok", 0.5)]
    assert changes.failures == [("proj.bad", T0 + 12)]
    again = store.drain_changes()
    assert (again.failures, again.runtimes) == ([], [])
    # a duplicate finish takes no second sample
    store.apply([failed(failure, T0 + 12)])
    assert store.drain_changes().failures == []


def test_samples_rebuilt_by_load_are_not_changes_but_all_samples_has_them() -> None:
    original = MemoryStore()
    run_task(original, T0, name="proj.ok")
    run_task(original, T0 + 10, outcome="fail", name="proj.bad")
    warmed = MemoryStore(track_changes=True)
    warmed.load(original.tasks(limit=10), original.workers())
    changes = warmed.drain_changes()
    assert (changes.tasks, changes.failures, changes.runtimes) == ([], [], [])
    running = new_id()
    warmed.apply([received(running, T0 + 20), started(running, T0 + 21)])
    warmed.apply([succeeded(running, T0 + 22, runtime=1.0)])
    failures, runtimes = warmed.all_samples()
    assert failures == [("proj.bad", T0 + 12)]
    assert sorted(runtimes) == [("proj.add", 1.0), ("proj.ok", 0.5)]
    # what all_samples handed out is not drained a second time; the task change still is
    changes = warmed.drain_changes()
    assert (changes.failures, changes.runtimes) == ([], [])
    assert [t.uuid for t in changes.tasks] == [running]


def test_a_store_warmed_from_records_answers_like_the_original() -> None:
    original = MemoryStore()
    for i in range(20):
        run_task(original, T0 + i, outcome="fail" if i % 4 == 0 else "ok", name=f"proj.t{i % 2}")
    running = new_id()
    original.apply([received(running, T0 + 30), started(running, T0 + 31)])
    warmed = MemoryStore()
    warmed.load(original.tasks(limit=1000), original.workers())
    assert warmed.counts_by_state() == original.counts_by_state()
    assert [t.uuid for t in warmed.active()] == [running]
    assert warmed.tasks(state=FAILURE, name="proj.t0") == original.tasks(
        state=FAILURE, name="proj.t0"
    )
    assert warmed.runtime_stats("proj.t1") == original.runtime_stats("proj.t1")
    assert warmed.failure_counts(3600, T0 + 40) == original.failure_counts(3600, T0 + 40)


def test_snapshot_copies_every_field() -> None:
    import dataclasses

    values: dict[str, Any] = {}
    for number, field in enumerate(dataclasses.fields(Task)):
        values[field.name] = f"value-{number}"
    task = Task(**values)
    copy = task.snapshot()
    assert copy == task and copy is not task


def test_tracebacks_are_kept_compressed_once_the_first_ones_made_the_dictionary() -> None:
    # What the contract's read-back test (test_store_contract.py) relies on reaching: after
    # the first 4 KB of tracebacks, records hold them compressed, and much smaller.
    store = MemoryStore()
    ids = []
    for i in range(30):
        uuid = new_id()
        frames = "".join(
            f'  File "/srv/app/mod{j}/tasks.py", line {i * 31 + j}, in step{j}\n'
            f"    value = helper_{j}(payload)\n"
            for j in range(10)
        )
        text = f"Traceback (most recent call last):\n{frames}ValueError: {i}\n"
        store.apply([received(uuid, T0 + i), {**failed(uuid, T0 + i + 1), "traceback": text}])
        ids.append((uuid, text))
    records = [store._tasks[uuid] for uuid, _ in ids]
    assert records[0].packed is None and records[0].traceback == ids[0][1]  # a seed: as is
    late = records[-1]
    assert late.traceback is None and late.packed is not None
    assert len(late.packed) < len(ids[-1][1]) / 3
    read_back = {uuid: store.get_task(uuid) for uuid, _ in ids}
    assert {uuid: t.traceback if t else None for uuid, t in read_back.items()} == dict(ids)


def test_long_lived_records_are_frozen_out_of_full_collections_every_so_many_new_tasks() -> None:
    # Issue 12, item 3: full collections must not visit every retained record. The store
    # moves what is alive to the permanent generation every `gc_freeze_every` new tasks.
    gc.unfreeze()
    try:
        store = MemoryStore(max_tasks=1000, gc_freeze_every=100)
        for i in range(99):
            run_task(store, T0 + i)
        assert gc.get_freeze_count() == 0  # not due yet
        old = store._tasks[run_task(store, T0 + 100)]
        frozen = gc.get_freeze_count()
        assert frozen > 0
        young = store._tasks[run_task(store, T0 + 101)]
        visited = gc.get_objects()  # what a full collection visits: not the frozen ones
        assert not any(obj is old for obj in visited)
        assert any(obj is young for obj in visited)  # created since: not frozen yet
        for i in range(100):
            run_task(store, T0 + 200 + i)
        assert gc.get_freeze_count() > frozen  # the next hundred went too
        gc.unfreeze()
        never = MemoryStore(max_tasks=1000, gc_freeze_every=0)
        for i in range(300):
            run_task(never, T0 + i)
        assert gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()  # the rest of the test session collects as usual


def test_a_task_evicted_twice_is_remembered_by_its_last_eviction() -> None:
    # Found by bench.store_perf's phantom check: a task evicted while queued, back when its
    # success arrived, evicted again, must not be forgotten when its first eviction leaves
    # the ring, or its late task-started makes it a running task for good.
    store = MemoryStore(max_tasks=2, recent_ids=4)
    task = new_id()
    store.apply([received(task, T0)])
    store.apply([received(new_id(), T0 + 1), received(new_id(), T0 + 2)])  # evicts `task`
    assert store.get_task(task) is None
    store.apply([succeeded(task, T0 + 5)])  # back, finished
    assert store.get_task(task) is not None
    for i in range(3):  # evicted again, then its first eviction leaves the ring of 4
        run_task(store, T0 + 10 + i)
    assert store.get_task(task) is None
    assert store.health().tasks_evicted >= 5
    store.apply([started(task, T0 + 4)])  # the late event
    assert store.get_task(task) is None
    assert store.active() == []
