"""The ``memory://`` snapshot: round trip, atomic replacement, a corrupt file moved aside."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from chatbot.config import Settings
from chatbot.model import FAILURE, STARTED
from chatbot.store import snapshot as snapshot_module
from chatbot.store.codec import task_from_dict, task_to_dict, worker_from_dict, worker_to_dict
from chatbot.store.factory import open_stores
from chatbot.store.memory import MemoryStore
from chatbot.store.snapshot import SnapshotWriter, read_snapshot
from tests.support import wait_until
from tests.support.task_events import T0, new_id, received, run_task, started


def busy_store() -> tuple[MemoryStore, str]:
    store = MemoryStore()
    for i in range(50):
        run_task(store, T0 + i, outcome="fail" if i % 5 == 0 else "ok", name=f"proj.t{i % 3}")
    running = new_id()
    store.apply(
        [
            received(running, T0 + 60, kwargs="{'password': 'hunter2'}"),
            started(running, T0 + 61),
            {
                "type": "worker-heartbeat",
                "hostname": "w1@host",
                "loadavg": [1.0, 0.5, 0.25],
                "local_received": T0 + 61,
            },
        ]
    )
    store.update_worker_info("w1@host", pool="prefork", concurrency=4, queues=["celery"])
    return store, running


def test_the_codec_round_trips_every_field() -> None:
    store, running = busy_store()
    for task in store.tasks(limit=100):
        assert task_from_dict(json.loads(json.dumps(task_to_dict(task)))) == task
    for worker in store.workers():
        assert worker_from_dict(json.loads(json.dumps(worker_to_dict(worker)))) == worker
    # defaults are left out: a record holds what it knows
    assert "terminated" not in task_to_dict(store.get_task(running))  # type: ignore[arg-type]
    assert task_from_dict({"uuid": "x", "a-future-field": 1}).uuid == "x"


def test_a_snapshot_round_trip_answers_like_the_original(tmp_path: Path) -> None:
    original, running = busy_store()
    path = tmp_path / "state" / "snapshot.json"
    writer = SnapshotWriter(original, path)
    assert writer.write()
    assert not writer.write()  # nothing changed: nothing rewritten

    restored = MemoryStore()
    assert SnapshotWriter(restored, path).load() == 51
    assert restored.counts_by_state() == original.counts_by_state()
    assert restored.tasks(state=FAILURE, name="proj.t0") == original.tasks(
        state=FAILURE, name="proj.t0"
    )
    assert [t.uuid for t in restored.active()] == [running]
    assert restored.workers() == original.workers()
    assert restored.runtime_stats("proj.t1") == original.runtime_stats("proj.t1")
    assert restored.failure_counts(3600, T0 + 60) == original.failure_counts(3600, T0 + 60)
    assert "hunter2" not in path.read_text()  # redacted at ingest, so never on disk either


def test_the_file_is_replaced_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, _ = busy_store()
    path = tmp_path / "snapshot.json"
    writer = SnapshotWriter(store, path)
    writer.write()
    good = path.read_bytes()

    # a crash between writing the temporary file and the rename: the old snapshot stays whole
    def crash(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    store.apply([received(new_id(), T0 + 99)])
    monkeypatch.setattr(snapshot_module.os, "replace", crash)
    assert not writer.write()
    assert writer.last_error is not None and "No space left" in writer.last_error
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snapshot.json"]  # no temp left over
    assert writer.write()
    assert read_snapshot(path) is not None and len(read_snapshot(path)[0]) == 52  # type: ignore[index]


def test_serialising_and_writing_happen_outside_the_store_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _ = busy_store()
    locked_during_write: list[bool] = []
    real = snapshot_module.write_snapshot

    def spy(*args: Any, **kwargs: Any) -> int:
        locked_during_write.append(store._lock.locked())
        return real(*args, **kwargs)

    monkeypatch.setattr(snapshot_module, "write_snapshot", spy)
    SnapshotWriter(store, tmp_path / "s.json").write()
    assert locked_during_write == [False]


@pytest.mark.parametrize(
    "content",
    [
        b"\x00\x01garbage",
        b'{"format": "celery-chatops/snapshot", "version": 1, "tasks": [{"uuid": "a"',  # cut
        b'{"format": "something-else"}',
        b'{"format": "celery-chatops/snapshot", "version": 99, "tasks": [], "workers": []}',
        b"",
    ],
    ids=["binary", "truncated", "foreign", "future-version", "empty"],
)
def test_a_corrupt_snapshot_is_moved_aside_and_the_bot_starts_empty(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "snapshot.json"
    path.write_bytes(content)
    store = MemoryStore()
    writer = SnapshotWriter(store, path)
    with caplog.at_level(logging.WARNING, logger="chatbot.store.snapshot"):
        assert writer.load() == 0
    assert len(store) == 0
    assert not path.exists()
    aside = list(tmp_path.glob("snapshot.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == content
    assert writer.moved_aside == aside[0]
    assert "unusable" in caplog.text and "starting empty" in caplog.text
    # the next start is a normal one: no crash loop
    store.apply([received(new_id(), T0)])
    assert writer.write()
    assert SnapshotWriter(MemoryStore(), path).load() == 1


def test_an_unreadable_snapshot_is_moved_aside_too(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    path = tmp_path / "snapshot.json"
    path.write_text("{}")
    path.chmod(0)
    assert SnapshotWriter(MemoryStore(), path).load() == 0
    assert not path.exists()


def test_a_missing_snapshot_is_a_fresh_start(tmp_path: Path) -> None:
    assert SnapshotWriter(MemoryStore(), tmp_path / "none.json").load() == 0
    assert list(tmp_path.iterdir()) == []


def test_the_background_writer_writes_periodically_and_on_stop(tmp_path: Path) -> None:
    store, _ = busy_store()
    path = tmp_path / "snapshot.json"
    writer = SnapshotWriter(store, path, interval=0.05)
    writer.start()
    try:
        wait_until(path.exists, what="the first periodic snapshot")
        last = new_id()
        store.apply([received(last, T0 + 500)])
    finally:
        writer.stop()
    loaded = read_snapshot(path)
    assert loaded is not None and last in {t.uuid for t in loaded[0]}


def test_open_stores_with_a_snapshot_carries_state_across_a_restart(tmp_path: Path) -> None:
    settings = Settings(state_url="memory://", snapshot_path=str(tmp_path / "snap.json"))
    calls: list[str] = []
    stores = open_stores(settings)
    assert stores.backend == "memory" and stores.snapshot is not None
    stores.start(lambda: calls.append("+"), lambda: calls.append("-"))
    assert stores.keeper is not None and stores.keeper.wait_held(timeout=10)
    uuid = new_id()
    stores.fleet.apply([received(uuid, T0), started(uuid, T0 + 1)])
    stores.records.put("approval", "a1", {"status": "pending"})
    stores.stop()
    assert calls == ["+", "-"]

    again = open_stores(settings)
    again.start(lambda: None, lambda: None)
    try:
        task = again.fleet.get_task(uuid)
        assert task is not None and task.state == STARTED
        # documented: the memory backend's approvals do not survive a restart
        assert again.records.get("approval", "a1") is None
    finally:
        again.stop()


def test_unreadable_records_are_skipped_and_counted_the_rest_loads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A record that is not a task, or holds values of the wrong types, no longer costs the
    # whole snapshot (the contract: skipped and counted, never a reason to stop).
    source = MemoryStore()
    source.apply([received(new_id(), T0), received(new_id(), T0 + 1)])
    path = tmp_path / "snapshot.json"
    assert SnapshotWriter(source, path).write()
    document = json.loads(path.read_bytes())
    document["tasks"] += [
        {"no": "uuid"},
        {"uuid": "bad-time", "state": "STARTED", "state_ts": "yesterday"},
        {"uuid": "bad-retries", "retries": "many"},
    ]
    document["workers"] += [{"hostname": "w9@host", "loadavg": ["high"]}]
    path.write_text(json.dumps(document))
    store = MemoryStore()
    with caplog.at_level(logging.WARNING, logger="chatbot.store.snapshot"):
        assert SnapshotWriter(store, path).load() == 2
    assert len(store) == 2 and store.get_task("bad-time") is None
    assert "skipped 3 unreadable records" in caplog.text
    assert "skipped 1 unreadable records" in caplog.text
    assert path.exists()  # not moved aside: it was usable
