"""How the in-memory store lays its records out (issue 12: bytes per retained task): the rarely
set fields live apart until set, and the task table is kept at the size of what it holds.
What a user is shown must not change with the layout."""

from __future__ import annotations

import dataclasses
import sys

from chatbot.model import Task
from chatbot.store.memory import MemoryStore
from tests.support.task_events import T0, new_id, received, run_task


def test_a_loaded_task_reads_back_with_every_field_as_it_was() -> None:
    uuid = new_id()
    stored = Task(
        uuid=uuid, name="proj.add", state="REVOKED", args="(1,)", kwargs="{}", worker="w1@host",
        queue="celery", routing_key="celery.rk", sent=T0, received=T0 + 1, started=T0 + 2,
        finished=T0 + 3, retried=T0 + 1.5, runtime=0.25, retries=2, exception="KeyError('x')",
        traceback="Traceback (most recent call last):\nKeyError: 'x'\n", result="None",
        parent_id=new_id(), root_id=new_id(), eta="2026-01-01T00:00:00", expires="never",
        terminated=True, signum="15", state_ts=T0 + 3,
    )  # fmt: skip
    store = MemoryStore()
    store.load([stored], [])
    assert store.get_task(uuid) == stored
    plain = run_task(store, T0 + 10)  # no rare field set: shares the defaults
    read = store.get_task(plain)
    assert read is not None
    defaults = Task(uuid="")
    for field in ("queue", "routing_key", "sent", "retried", "parent_id", "eta", "expires",
                  "signum"):  # fmt: skip
        assert getattr(read, field) == getattr(defaults, field) is None
    assert (read.retries, read.terminated) == (0, False)


def test_rare_fields_set_on_one_task_never_show_on_another() -> None:
    store = MemoryStore()
    child, other = new_id(), new_id()
    parent = new_id()
    store.apply(
        [
            received(child, T0, parent_id=parent, root_id=parent, retries=1, eta="soon"),
            received(other, T0 + 1),
        ]
    )
    first, second = store.get_task(child), store.get_task(other)
    assert first is not None and second is not None
    assert (first.parent_id, first.root_id, first.retries, first.eta) == (parent, parent, 1, "soon")
    assert (second.parent_id, second.retries, second.eta) == (None, 0, None)
    assert dataclasses.replace(second, uuid=child) != first


def test_the_task_table_is_no_larger_than_a_copy_of_it_after_churn() -> None:
    # A dict never shrinks on deletes and regrows to three times its entries; the store
    # copies it back to the size a fresh table of that many entries takes.
    store = MemoryStore(max_tasks=2000, gc_freeze_every=0)
    for i in range(12_000):  # six times the cap: the table regrew more than once
        run_task(store, T0 + i)
    assert len(store) == 2000
    table = store._tasks
    assert sys.getsizeof(table) <= sys.getsizeof({**table})
