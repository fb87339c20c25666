"""The writer's bookkeeping: what it drained and has not written yet, and how one chunk of it
becomes Redis commands.

:class:`Pending` coalesces changes per record (a task whose received/started/succeeded arrive
together is written once; during an outage it stays bounded by the caps). :class:`Plan` turns a
chunk into one ``MULTI`` transaction: task records and their index entries go to the
``WRITE_TASKS`` script as a few arguments per task; statistics samples and name bookkeeping as
plain commands.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from chatbot.model import FleetCounters, StreamHealth, Task, Worker
from chatbot.store.codec import encode, task_to_dict
from chatbot.store.memory import MAX_FAILURE_TIMES, MemoryStore, Sample, StoreChanges
from chatbot.store.redis.keys import Indexed, Keys, indexed, meta, score

__all__ = ["Pending", "Plan", "WriterState"]


@dataclass
class WriterState:
    """The writer's private state; touched only by its thread (and by the loader before it).

    ``shadow``, ``name_counts`` and ``names_seen`` say what Redis holds, as this writer last
    wrote it (None until the stored picture is loaded).
    """

    memory: MemoryStore
    stop: threading.Event
    session: str = ""
    samples_taken: int = 0
    fence: Callable[[], bool] | None = None
    final_flush: bool = True
    # Task and worker records still unwritten when the thread ended without a final flush.
    unwritten: int = 0
    shadow: dict[str, Indexed] | None = None
    name_counts: Counter[str] | None = None
    names_seen: OrderedDict[str, None] | None = None
    health_base: StreamHealth | None = None
    needs_resync: bool = False
    # /metrics counters: what Redis held at takeover, and what this writer last published.
    counters_base: FleetCounters | None = None
    counters_published: FleetCounters | None = None


class Pending:
    """Changes drained from the state machine and not yet written, coalesced per record."""

    def __init__(self) -> None:
        self.tasks: dict[str, Task] = {}
        self.removed: set[str] = set()
        self.workers: dict[str, Worker] = {}
        self.gone_workers: set[str] = set()
        self.health: StreamHealth | None = None
        self._last_health: StreamHealth | None = None
        self.failures: list[tuple[str, float, str]] = []  # name, time, unique member
        self.runtimes: list[tuple[str, float]] = []

    def __bool__(self) -> bool:
        return bool(
            self.tasks
            or self.removed
            or self.workers
            or self.gone_workers
            or self.health
            or self.failures
            or self.runtimes
        )

    def size(self) -> int:
        return len(self.tasks) + len(self.removed) + len(self.workers) + len(self.gone_workers)

    def add_samples(
        self,
        writer: WriterState,
        failures: list[Sample],
        runtimes: list[Sample],
    ) -> None:
        for name, when in failures:
            # A member unique to this writer's sample: a retried write adds it only once.
            writer.samples_taken += 1
            self.failures.append((name, when, f"{writer.session}:{writer.samples_taken}"))
        self.runtimes.extend(runtimes)
        # Bounded like the state machine's own: samples beyond these would be trimmed anyway.
        if len(self.runtimes) > 1_000_000:
            del self.runtimes[: len(self.runtimes) - 1_000_000]
        if len(self.failures) > 1_000_000:
            del self.failures[: len(self.failures) - 1_000_000]

    def merge(self, changes: StoreChanges, shadow: Mapping[str, Indexed]) -> None:
        changed = {task.uuid for task in changes.tasks}
        for uuid in changes.removed:
            if uuid in changed:
                continue  # evicted, then created again: the new record replaces the old one
            self.tasks.pop(uuid, None)
            # A task never written needs no delete: keeps this bounded during an outage.
            if uuid in shadow:
                self.removed.add(uuid)
        for task in changes.tasks:
            self.tasks[task.uuid] = task
            self.removed.discard(task.uuid)
        for worker in changes.workers:
            self.workers[worker.hostname] = worker
            self.gone_workers.discard(worker.hostname)
        for hostname in changes.removed_workers:
            self.workers.pop(hostname, None)
            self.gone_workers.add(hostname)
        # Counters change with every event, malformed ones included; an idle writer writes
        # nothing.
        if changes.health != self._last_health:
            self.health = self._last_health = changes.health

    @property
    def has_records(self) -> bool:
        return bool(self.tasks or self.removed)

    def take(self, size: int) -> Pending:
        """Remove and return up to ``size`` task writes and deletes; samples come with the
        first chunk, workers with the last."""
        chunk = Pending()
        if len(self.tasks) <= size:
            chunk.tasks, self.tasks = self.tasks, {}
        else:
            for uuid in list(self.tasks)[:size]:
                chunk.tasks[uuid] = self.tasks.pop(uuid)
        room = size - len(chunk.tasks)
        if len(self.removed) <= room:
            chunk.removed, self.removed = self.removed, set()
        else:
            for _ in range(room):
                chunk.removed.add(self.removed.pop())
        chunk.failures, self.failures = self.failures, []
        chunk.runtimes, self.runtimes = self.runtimes, []
        if not self.has_records:
            chunk.workers, self.workers = self.workers, {}
            chunk.gone_workers, self.gone_workers = self.gone_workers, set()
        return chunk

    def restore(self, chunk: Pending) -> None:
        """Put an unwritten chunk back, under anything newer that arrived meanwhile."""
        for uuid, task in chunk.tasks.items():
            self.tasks.setdefault(uuid, task)
        self.removed |= chunk.removed - set(self.tasks)
        self.failures[:0] = chunk.failures
        self.runtimes[:0] = chunk.runtimes
        for hostname, worker in chunk.workers.items():
            if hostname not in self.gone_workers:
                self.workers.setdefault(hostname, worker)
        self.gone_workers |= chunk.gone_workers - set(self.workers)


class Plan:
    """The Redis commands for one chunk of changes, and the bookkeeping to commit after it.

    Task records and their index entries go to the ``WRITE_TASKS`` script as flat ops: the
    writer's shadow says what each task was indexed under, the script moves it. Doing the
    index bookkeeping in Redis's process keeps it off this one's GIL, and a handful of
    arguments per task costs far less to send than a dozen commands.
    """

    def __init__(
        self,
        keys: Keys,
        writer: WriterState,
        chunk: Pending,
        *,
        failure_horizon: float,
        runtime_samples: int,
        max_task_names: int,
    ) -> None:
        assert writer.shadow is not None and writer.name_counts is not None
        assert writer.names_seen is not None
        self.writer = writer
        shadow = writer.shadow
        self.ops: list[str | bytes] = []
        self.deleted: list[str] = []
        self.runtimes: dict[str, list[float]] = {}
        self.failures: dict[str, float] = {}  # name -> latest failure time in this chunk
        self.ftimes: dict[str, dict[str, float]] = {}
        self.name_delta: Counter[str] = Counter()
        self.touched: dict[str, float] = {}
        self.new_shadow: dict[str, Indexed] = {}
        self.horizon = failure_horizon
        self.samples = runtime_samples
        self.max_names = max_task_names
        self.keys = keys
        self._seen_after: OrderedDict[str, None] = writer.names_seen

        ops = self.ops
        name_delta = self.name_delta
        for uuid, task in chunk.tasks.items():
            record = encode(task_to_dict(task))
            old = shadow.get(uuid)
            entry = indexed(task)
            if old == entry:
                # Only fields outside the indexes changed (or a duplicate event).
                ops += (uuid, "r", record)
                continue
            self.new_shadow[uuid] = entry
            name = task.name
            packed = meta(
                "n" if old is None else "c", task.state_ts, task.state, name, task.worker, old
            )
            ops += (uuid, packed, record)
            if old is None:
                if name is not None:
                    name_delta[name] += 1
                    self.touched[name] = task.state_ts
                continue
            if old.name != name:
                if old.name is not None:
                    name_delta[old.name] -= 1
                if name is not None:
                    name_delta[name] += 1
                    self.touched[name] = task.state_ts
        deletes: dict[tuple[str, str | None, str | None], str] = {}
        for uuid in chunk.removed:
            old = shadow.get(uuid)
            if old is None:
                continue
            self.deleted.append(uuid)
            # Evicted tasks share a few (state, name, worker) combinations: build each once.
            where = (old.state, old.name, old.worker)
            gone = deletes.get(where)
            if gone is None:
                gone = deletes[where] = meta("d", 0.0, "", None, None, old)
            ops += (uuid, gone)
            if old.name is not None:
                name_delta[old.name] -= 1
        # Statistics samples, as the state machine recorded them (they outlive evictions).
        for name, when, member in chunk.failures:
            self.ftimes.setdefault(name, {})[member] = when
            if when > self.failures.get(name, float("-inf")):
                self.failures[name] = when
        for name, runtime in chunk.runtimes:
            self.runtimes.setdefault(name, []).append(runtime)

    def emit(self, pipe: Any, write_tasks: Any) -> None:
        keys = self.keys
        writer = self.writer
        assert writer.name_counts is not None and writer.names_seen is not None
        if self.ops:
            write_tasks(keys=[keys.tasks], args=[keys.prefix, *self.ops], client=pipe)
        for name, members in self.ftimes.items():
            pipe.zadd(keys.ftimes(name), members)
        for name, delta in self.name_delta.items():
            before = writer.name_counts.get(name, 0)
            after = before + delta
            if before <= 0 < after:
                pipe.zadd(keys.names, {name: 0.0})
            elif after <= 0 < before:
                pipe.zrem(keys.names, name)
        for name, latest in self.failures.items():
            key = keys.ftimes(name)
            pipe.zremrangebyscore(key, "-inf", f"({score(latest - self.horizon)}")
            pipe.zremrangebyrank(key, 0, -(MAX_FAILURE_TIMES + 1))
            pipe.zadd(keys.fnames, {name: latest}, gt=True)
        for name, values in self.runtimes.items():
            key = keys.runtimes(name)
            pipe.rpush(key, *(repr(v) for v in values))
            pipe.ltrim(key, -self.samples, -1)
        # Names seen, bounded: the least recently seen name's statistics go, as in memory.
        if not self.touched:
            self._seen_after = writer.names_seen
            return
        seen = OrderedDict(writer.names_seen)
        for name in self.touched:
            seen[name] = None
            seen.move_to_end(name)
        pipe.zadd(keys.seen, self.touched)
        dropped: list[str] = []
        while len(seen) > self.max_names:
            stale, _ = seen.popitem(last=False)
            dropped.append(stale)
        if dropped:
            pipe.delete(*(keys.runtimes(n) for n in dropped), *(keys.ftimes(n) for n in dropped))
            pipe.zrem(keys.seen, *dropped)
            pipe.zrem(keys.fnames, *dropped)
        self._seen_after = seen

    def commit(self) -> None:
        writer = self.writer
        assert writer.shadow is not None and writer.name_counts is not None
        writer.shadow.update(self.new_shadow)
        for uuid in self.deleted:
            writer.shadow.pop(uuid, None)
        for name, delta in self.name_delta.items():
            count = writer.name_counts.get(name, 0) + delta
            if count > 0:
                writer.name_counts[name] = count
            else:
                writer.name_counts.pop(name, None)
        writer.names_seen = self._seen_after
