"""The memory RecordStore: the atomic transition that decides an approval exactly once."""

from __future__ import annotations

import threading

from chatbot.store import RecordStore
from chatbot.store.records import MemoryRecordStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_memory_record_store_satisfies_the_interface() -> None:
    assert isinstance(MemoryRecordStore(), RecordStore)


def test_create_only_if_absent_and_records_are_copies() -> None:
    records = MemoryRecordStore()
    assert records.create("approval", "a1", {"status": "pending", "targets": ["x"]})
    assert not records.create("approval", "a1", {"status": "other"})
    got = records.get("approval", "a1")
    assert got == {"status": "pending", "targets": ["x"]}
    got["targets"].append("y")
    assert records.get("approval", "a1") == {"status": "pending", "targets": ["x"]}


def test_ttl_expires_records() -> None:
    clock = Clock()
    records = MemoryRecordStore(clock=clock)
    records.put("silence", "backlog:celery", {"until": 1060}, ttl=60)
    assert records.list("silence") == [{"until": 1060}]
    clock.now += 61
    assert records.get("silence", "backlog:celery") is None
    assert records.list("silence") == []


def test_expired_records_go_with_later_writes_even_when_never_read() -> None:
    # The replay guard writes one record per signed request and reads back only its own key:
    # what expired must not stay in memory for the life of the process.
    clock = Clock()
    records = MemoryRecordStore(clock=clock)
    records.put("alert", "backlog:celery", {"open": True}, ttl=10)
    records.put("alert", "backlog:celery", {"open": True})  # kept for good now
    for i in range(1000):
        assert records.create("replay", f"sig-{i}", {"at": clock.now}, ttl=300)
        clock.now += 1
    held = {key for (kind, key) in records._records if kind == "replay"}
    assert held == {f"sig-{i}" for i in range(700, 1000)}  # the last 300 s, nothing older
    assert records.get("alert", "backlog:celery") == {"open": True}
    assert len(records._expiries) <= 301


def test_transition_happens_once_among_concurrent_callers() -> None:
    records = MemoryRecordStore()
    records.put("approval", "a1", {"status": "pending"})
    winners: list[str] = []
    barrier = threading.Barrier(8)

    def click(user: str) -> None:
        barrier.wait()
        if records.transition("approval", "a1", "status", "pending", {"status": "approved",
                                                                     "by": user}):
            winners.append(user)

    threads = [threading.Thread(target=click, args=(f"U{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1
    assert records.get("approval", "a1") == {"status": "approved", "by": winners[0]}
    assert records.transition("approval", "missing", "status", "pending", {}) is None
    assert records.delete("approval", "a1") and not records.delete("approval", "a1")
