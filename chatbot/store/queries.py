"""The read side of the in-process store: every question a command asks of it.

:class:`MemoryQueries` is a base class of :class:`chatbot.store.memory.MemoryStore` and holds
no state of its own: it reads the records and indexes that the state machine
(:mod:`chatbot.store.memory`) keeps, under the store's one lock, and hands records out as
:class:`Task` snapshots. Every question is answered from an index, never a scan over the
tasks (see the notes of :mod:`chatbot.store.memory`). A base class, not a helper object, so
that the store's own per-event path looks up nothing through an extra layer.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice

from chatbot.model import (
    FAILURE,
    STARTED,
    FailureSummary,
    FleetCounters,
    RuntimeHistogram,
    RuntimeStats,
    StreamHealth,
    Task,
    Worker,
)
from chatbot.store.compact import Ordered, Record, TracebackPacker

FailureEntry = tuple[float, str, str, str]  # failed at, uuid, exception type, task name


class MemoryQueries:
    """The ``FleetStore`` read methods of :class:`~chatbot.store.memory.MemoryStore`."""

    # Written by MemoryStore (the state machine); read here.
    _lock: threading.Lock
    _tasks: dict[str, Record]
    _tracebacks: TracebackPacker
    _by_state: dict[str, Ordered]
    _by_name: dict[str, Ordered]
    _by_worker: dict[str, Ordered]
    _failed_by_name: dict[str, list[FailureEntry]]
    _failed_by_time: list[FailureEntry]
    _failed_by_kind: dict[tuple[str, str], list[FailureEntry]]
    _name_seen: OrderedDict[str, None]
    _failure_times: dict[str, list[float]]
    _runtimes: dict[str, deque[float]]
    _workers: dict[str, Worker]
    _health: StreamHealth
    _counters: FleetCounters

    def _snap(self, task: Record) -> Task:
        """The record as handed out: a :class:`Task`, its traceback as text."""
        # Spelled out, positionally: queries snapshot every task they return.
        rare = task.rare
        held = task.tb
        if isinstance(held, bytes):
            traceback: str | None = self._tracebacks.unpack(held)
        else:
            traceback = held
        return Task(
            task.uuid, task.name, task.state, task.args, task.kwargs, task.worker, rare.queue,
            rare.routing_key, rare.sent, task.received, task.started, task.finished,
            rare.retried, task.runtime, rare.retries, task.exception, traceback, task.result,
            rare.parent_id, task.root_id, rare.eta, rare.expires, rare.terminated, rare.signum,
            task.state_ts,
        )  # fmt: skip

    def _members(self, group: Ordered | None, field: str, key: str) -> Iterator[Record]:
        """The group's tasks, newest first (each once, at its last place)."""
        if group is None or not group.live:
            return
        tasks = self._tasks
        seen: set[str] = set()
        for uuid in reversed(group.ids):
            task = tasks.get(uuid)
            if task is not None and getattr(task, field) == key and uuid not in seen:
                seen.add(uuid)
                yield task

    def get_task(self, uuid: str) -> Task | None:
        with self._lock:
            task = self._tasks.get(uuid)
            return self._snap(task) if task is not None else None

    def find_task_ids(self, prefix: str, limit: int = 2) -> list[str]:
        with self._lock:
            if prefix in self._tasks:
                return [prefix]
            found: list[str] = []
            for uuid in self._tasks:
                if uuid.startswith(prefix):
                    found.append(uuid)
                    if len(found) >= limit:
                        break
            return found

    def tasks(
        self,
        *,
        state: str | None = None,
        name: str | None = None,
        worker: str | None = None,
        since: float | None = None,
        limit: int = 50,
    ) -> list[Task]:
        if limit <= 0:
            return []
        with self._lock:
            matching = (
                task
                for task in self._select(state, name, worker, since)
                if since is None or task.state_ts >= since
            )
            found = [self._snap(task) for task in islice(matching, limit)]
        found.sort(key=lambda t: t.state_ts, reverse=True)
        return found

    def _select(
        self, state: str | None, name: str | None, worker: str | None, since: float | None
    ) -> Iterable[Record]:
        """Matching tasks, newest entry first, from the smallest index that applies."""
        found: Iterable[Record]
        tasks = self._tasks
        if state == FAILURE:
            # Failures have an exact time order: newest first, stop at ``since``.
            failed = self._failed_by_time if name is None else self._failed_by_name.get(name, [])
            start = 0 if since is None else bisect_left(failed, (since, ""))
            found = (tasks[failed[i][1]] for i in range(len(failed) - 1, start - 1, -1))
        else:
            candidates: list[tuple[int, Ordered | None, str, str]] = []
            if state is not None:
                group = self._by_state.get(state)
                candidates.append((group.live if group else 0, group, "state", state))
            if name is not None:
                group = self._by_name.get(name)
                candidates.append((group.live if group else 0, group, "name", name))
            if worker is not None:
                group = self._by_worker.get(worker)
                candidates.append((group.live if group else 0, group, "worker", worker))
            if candidates:
                _, group, field, key = min(candidates, key=lambda c: c[0])
                found = self._members(group, field, key)
            else:
                # Without a filter, newest created first: close enough to "newest activity"
                # for a listing whose page is re-sorted by the caller.
                found = reversed(tasks.values())
        for task in found:
            if state is not None and task.state != state:
                continue
            if name is not None and task.name != name:
                continue
            if worker is not None and task.worker != worker:
                continue
            yield task

    def count_tasks(
        self, *, state: str | None = None, name: str | None = None, worker: str | None = None
    ) -> int:
        with self._lock:
            if name is None and worker is None:
                if state is None:
                    return len(self._tasks)
                group = self._by_state.get(state)
                return group.live if group is not None else 0
            if state == FAILURE and name is not None and worker is None:
                return len(self._failed_by_name.get(name, []))
            if state is None and worker is None and name is not None:
                group = self._by_name.get(name)
                return group.live if group is not None else 0
            if state is None and name is None and worker is not None:
                group = self._by_worker.get(worker)
                return group.live if group is not None else 0
            return sum(1 for _ in self._select(state, name, worker, None))

    def active(self, worker: str | None = None) -> list[Task]:
        with self._lock:
            running = [
                self._snap(task)
                for task in self._members(self._by_state[STARTED], "state", STARTED)
                if worker is None or task.worker == worker
            ]
        running.sort(key=lambda t: t.started if t.started is not None else abs(t.state_ts))
        return running

    def failure_counts(self, window: float, now: float) -> dict[str, int]:
        cutoff = now - window
        counts: dict[str, int] = {}
        with self._lock:
            for name, times in self._failure_times.items():
                count = len(times) - bisect_left(times, cutoff)
                if count:
                    counts[name] = count
        return counts

    def recent_failures(self, name: str | None, window: float, now: float) -> list[Task]:
        cutoff = now - window
        with self._lock:
            failed = self._failed_by_time if name is None else self._failed_by_name.get(name, [])
            start = bisect_left(failed, (cutoff, ""))
            tasks = self._tasks
            return [self._snap(tasks[entry[1]]) for entry in reversed(failed[start:])]

    def failure_summary(
        self, name: str | None, window: float, now: float, limit: int
    ) -> FailureSummary:
        cutoff = (now - window, "")
        by_type: dict[str, int] = {}
        by_name: dict[str, int] = {}
        with self._lock:
            failed = self._failed_by_time if name is None else self._failed_by_name.get(name, [])
            start = bisect_left(failed, cutoff)
            # Counted with a bisect per (name, exception type) list, not a pass over the
            # window (17k failures in a 15-minute window at 100k tasks); only the page shown
            # is snapshotted.
            for (key, kind), entries in self._failed_by_kind.items():
                if name is not None and key != name:
                    continue
                count = len(entries) - bisect_left(entries, cutoff)
                if count:
                    by_type[kind] = by_type.get(kind, 0) + count
                    label = entries[0][3]  # the name the entries carry ("unknown" for "?")
                    by_name[label] = by_name.get(label, 0) + count
            tasks = self._tasks
            end = max(start, len(failed) - max(0, limit))
            newest = [self._snap(tasks[failed[i][1]]) for i in range(len(failed) - 1, end - 1, -1)]
        return FailureSummary(len(failed) - start, newest, by_type, by_name)

    def runtime_stats(self, name: str) -> RuntimeStats | None:
        with self._lock:
            samples = self._runtimes.get(name)
            values = sorted(samples) if samples else None
        return runtime_stats_of(name, values or [])

    def task_names(self) -> list[str]:
        with self._lock:
            return sorted(set(self._by_name) | set(self._name_seen))  # names with members

    def counts_by_state(self) -> dict[str, int]:
        with self._lock:
            return {state: group.live for state, group in self._by_state.items() if group.live}

    def workers(self) -> list[Worker]:
        with self._lock:
            return sorted(
                (w.snapshot() for w in self._workers.values()), key=lambda w: w.hostname
            )

    def get_worker(self, hostname: str) -> Worker | None:
        with self._lock:
            worker = self._workers.get(hostname)
            return worker.snapshot() if worker is not None else None

    def health(self) -> StreamHealth:
        with self._lock:
            return self._health.snapshot()

    def fleet_counters(self) -> FleetCounters:
        with self._lock:
            counters = self._counters
            return FleetCounters(
                events=dict(counters.events),
                runtimes={
                    key: RuntimeHistogram(list(h.buckets), h.total, h.count)
                    for key, h in counters.runtimes.items()
                },
                labels_dropped=counters.labels_dropped,
            )

    def __len__(self) -> int:
        return len(self._tasks)


def runtime_stats_of(name: str, sorted_values: Sequence[float]) -> RuntimeStats | None:
    """Percentiles of one name's runtime samples (ascending); None without a sample."""
    if not sorted_values:
        return None
    return RuntimeStats(
        name=name,
        count=len(sorted_values),
        p50=percentile(sorted_values, 0.50),
        p95=percentile(sorted_values, 0.95),
        p99=percentile(sorted_values, 0.99),
        max=sorted_values[-1],
    )


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, math.ceil(fraction * len(sorted_values)) - 1))
    return sorted_values[rank]
