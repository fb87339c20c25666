"""The in-process store: a compact state machine fed one Celery event at a time.

Design notes (why it looks like this):

- Bounded in count and bytes. Tasks are capped at ``max_tasks``; payloads are redacted and
  clipped at ingest (:mod:`chatbot.redaction`); worker records at ``max_workers``; per-name
  statistics at ``max_task_names``. Nothing grows with the number of events seen.
- Eviction by value to the person triaging, not by age alone: finished successes (and revoked
  or rejected tasks) go first, queued tasks next, then failures, and running tasks last. Within
  a class the task that entered its state longest ago goes first. (Flower evicts a failure as
  readily as a success; its users asked for the opposite, flower#550.)
- Every triage question is answered from an index, never a scan: tasks by state (ordered by
  the time they entered it), by name, by worker, failures by name; per-name failure times for
  the spike window; a ring of recent runtimes per name for percentiles.
- Late, duplicated and out-of-order events: a finished task never becomes active again; among
  unfinished states the newer event wins (so a retry's second attempt moves forward while a
  stale duplicate does nothing); task-failed carries no name, so fields from earlier events are
  kept.
- One lock, taken once per batch by the writer and briefly by readers; no I/O under it.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from bisect import bisect_left, insort
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

from chatbot.config import DEFAULT_REDACT_KEYS
from chatbot.model import (
    FAILURE,
    PENDING,
    RECEIVED,
    REJECTED,
    RETRY,
    REVOKED,
    RUNTIME_BUCKETS,
    STARTED,
    SUCCESS,
    TASK_STATES,
    FailureSummary,
    FleetCounters,
    RuntimeHistogram,
    RuntimeStats,
    StreamHealth,
    Task,
    Worker,
)
from chatbot.redaction import FieldLimits, Redactor, clip

_intern = sys.intern

TASK_EVENT_STATE = {
    "task-sent": PENDING,
    "task-received": RECEIVED,
    "task-started": STARTED,
    "task-retried": RETRY,
    "task-succeeded": SUCCESS,
    "task-failed": FAILURE,
    "task-revoked": REVOKED,
    "task-rejected": REJECTED,
}

# Finished states are sticky; among them the higher precedence wins (as in celery.states).
_TERMINAL_PRECEDENCE = {SUCCESS: 4, FAILURE: 3, REVOKED: 2, REJECTED: 1}
_OPEN_RANK = {PENDING: 0, RECEIVED: 1, STARTED: 2, RETRY: 3}

# Eviction classes, first evicted first.
_EVICTION_ORDER: tuple[tuple[str, ...], ...] = (
    (SUCCESS, REVOKED, REJECTED),
    (PENDING, RECEIVED, RETRY),
    (FAILURE,),
    (STARTED,),
)

# Bounds shared with the Redis backend, which mirrors this store and holds the same caps.
MAX_EVENT_TYPES = 64  # distinct event type names counted; the rest count as "other"
MAX_FAILURE_TIMES = 100_000  # failure times kept per name for the spike window
MAX_LABEL_SETS = 20_000  # metric label combinations kept (worker x type x task name)
_FailureEntry = tuple[float, str, str, str]  # failed at, uuid, exception type, task name
Sample = tuple[str, float]  # task name, and a failure time or a runtime


@dataclass(frozen=True, slots=True)
class StoreChanges:
    """What changed since the last :meth:`MemoryStore.drain_changes`.

    ``failures`` and ``runtimes`` are the statistics samples taken by transitions, in order:
    they outlive the task that produced them, so a copy of the store (Redis) needs them as
    samples; deriving them from ``tasks`` would lose those of tasks evicted before the drain.
    """

    tasks: list[Task]  # created or changed
    removed: list[str]  # evicted task ids
    workers: list[Worker]
    removed_workers: list[str]
    health: StreamHealth
    failures: list[Sample]  # (name, failure time) recorded by a transition to FAILURE
    runtimes: list[Sample]  # (name, runtime) recorded by a transition to SUCCESS


class MemoryStore:
    """The ``memory://`` backend of :class:`chatbot.store.FleetStore`."""

    def __init__(
        self,
        max_tasks: int = 10000,
        max_workers: int = 5000,
        redact_keys: Iterable[str] = tuple(DEFAULT_REDACT_KEYS.split(",")),
        clock: Callable[[], float] = time.time,
        *,
        limits: FieldLimits | None = None,
        max_task_names: int = 2000,
        runtime_samples: int = 512,
        failure_horizon: float = 86400.0,
        heartbeat_expire_factor: float = 2.0,
        track_changes: bool = False,
    ) -> None:
        if max_tasks < 1 or max_workers < 1:
            raise ValueError("max_tasks and max_workers must be at least 1")
        self.max_tasks = max_tasks
        self.max_workers = max_workers
        self.clock = clock
        self.heartbeat_expire_factor = heartbeat_expire_factor
        self._limits = limits or FieldLimits()
        self._redactor = Redactor(redact_keys)
        self._max_task_names = max_task_names
        self._runtime_samples = runtime_samples
        self._failure_horizon = failure_horizon
        self._lock = threading.Lock()

        self._tasks: dict[str, Task] = {}
        # Plain dicts (insertion-ordered): an OrderedDict costs ~60 B more per task, and the
        # front of a dict is still where eviction finds the oldest entry.
        self._by_state: dict[str, dict[str, None]] = {s: {} for s in TASK_STATES}
        self._by_name: dict[str, dict[str, None]] = {}
        self._by_worker: dict[str, dict[str, None]] = {}
        # Retained failures sorted by failure time, per name ("?" until a name is known) and
        # overall: a late-arriving old failure must not hide newer ones from a window query.
        # Entries are (failed at, uuid, exception type, task name): a window's counts by type
        # and name are read off the index without touching a task record.
        self._failed_by_name: dict[str, list[_FailureEntry]] = {}
        self._failed_by_time: list[_FailureEntry] = []
        # Per task name, most recently seen last: failure times and recent runtimes.
        self._name_seen: OrderedDict[str, None] = OrderedDict()
        self._failure_times: dict[str, list[float]] = {}  # sorted; kept after eviction
        self._runtimes: dict[str, deque[float]] = {}
        self._workers: dict[str, Worker] = {}
        self._health = StreamHealth()
        self._counters = FleetCounters()
        # Write-through backends (redis://) drain what each batch changed.
        self._track = track_changes
        self._changed: set[str] = set()
        self._removed: set[str] = set()
        self._changed_workers: set[str] = set()
        self._new_failures: list[Sample] = []
        self._new_runtimes: list[Sample] = []

    # ------------------------------------------------------------------ writing
    def apply(self, events: Iterable[Mapping[str, Any]]) -> int:
        applied = 0
        with self._lock:
            now = self.clock()
            apply_one = self._apply_one
            for event in events:
                try:
                    if apply_one(event, now):
                        applied += 1
                    else:
                        self._health.malformed += 1
                except (TypeError, ValueError, AttributeError, KeyError):
                    self._health.malformed += 1
            self._health.events_total += applied
        return applied

    def _apply_one(self, event: Mapping[str, Any], now: float) -> bool:
        kind = event.get("type")
        if not isinstance(kind, str):
            return False
        received_at = event.get("local_received")
        local = float(received_at) if received_at is not None else now
        health = self._health
        if health.last_event_at is None or local > health.last_event_at:
            health.last_event_at = local
        counts = health.events_by_type
        if kind in counts:
            counts[kind] += 1
        elif len(counts) < MAX_EVENT_TYPES:
            counts[kind] = 1
        else:
            counts["other"] = counts.get("other", 0) + 1

        state = TASK_EVENT_STATE.get(kind)
        if state is not None:
            return self._apply_task_event(kind, state, event, local)
        if kind.startswith("worker-"):
            return self._apply_worker_event(kind, event, local)
        return True  # a custom event type: counted, nothing to keep

    def _apply_task_event(
        self, kind: str, state: str, event: Mapping[str, Any], local: float
    ) -> bool:
        uuid = event.get("uuid")
        if not isinstance(uuid, str) or not uuid:
            return False
        raw_ts = event.get("timestamp")
        ts = float(raw_ts) if raw_ts is not None else local
        task = self._tasks.get(uuid)
        created = task is None
        if task is None:
            task = Task(uuid=uuid, state_ts=ts)
            self._tasks[uuid] = task
            self._by_state[PENDING][uuid] = None

        limits = self._limits
        name = event.get("name")
        if name and task.name is None:
            task.name = _intern(str(name))
            self._index(self._by_name, task.name, uuid)
            self._touch_name(task.name)
            if task.state == FAILURE:  # the failure arrived before the event naming the task
                self._drop_failure("?", task)
                self._add_failure(task.name, task)
        hostname = event.get("hostname")
        # A late event from an earlier attempt (before a retry moved the task) must not move
        # the task back to that attempt's worker.
        if (
            hostname
            and kind != "task-sent"
            and task.worker != hostname
            and (task.worker is None or ts >= task.state_ts)
        ):
            if task.worker is not None:
                self._unindex(self._by_worker, task.worker, uuid)
            task.worker = _intern(str(hostname))
            self._index(self._by_worker, task.worker, uuid)

        if kind == "task-received" or kind == "task-sent":
            if task.args is None and "args" in event:
                task.args = clip(self._redactor.args(event["args"]), limits.args)
            if task.kwargs is None and "kwargs" in event:
                task.kwargs = clip(self._redactor.kwargs(event["kwargs"]), limits.kwargs)
            retries = event.get("retries")
            if retries is not None and int(retries) > task.retries:
                task.retries = int(retries)
            for field in ("parent_id", "root_id", "eta", "expires"):
                value = event.get(field)
                if value is not None and getattr(task, field) is None:
                    setattr(task, field, str(value))
            if kind == "task-sent":
                task.sent = ts
                queue = event.get("queue")
                if queue and task.queue is None:
                    task.queue = _intern(str(queue))
                routing_key = event.get("routing_key")
                if routing_key and task.routing_key is None:
                    task.routing_key = _intern(str(routing_key))
            elif task.received is None or ts > task.received:
                task.received = ts
        elif kind == "task-started":
            if task.started is None or ts > task.started:
                task.started = ts
        elif kind == "task-succeeded":
            if "result" in event:
                task.result = self._redactor.clipped(event["result"], limits.result)
            runtime = event.get("runtime")
            if runtime is not None:
                task.runtime = float(runtime)
        elif kind == "task-failed" or kind == "task-retried":
            if task.retried is not None and kind == "task-failed" and ts < task.retried:
                pass  # a stale failure report from before the latest retry
            else:
                exception = event.get("exception")
                if exception is not None:
                    task.exception = self._redactor.clipped(exception, limits.exception)
                traceback = event.get("traceback")
                if traceback is not None:
                    task.traceback = self._redactor.clipped_tail(traceback, limits.traceback)
            if kind == "task-retried" and (task.retried is None or ts > task.retried):
                task.retried = ts
        elif kind == "task-revoked":
            task.terminated = bool(event.get("terminated")) or task.terminated
            signum = event.get("signum")
            if signum is not None:
                task.signum = str(signum)

        if self._track:
            self._changed.add(uuid)
        self._count_event(task, kind)
        requeued = kind == "task-rejected" and bool(event.get("requeue"))
        if requeued:
            state = PENDING  # handed back to the queue: waiting again, not finished
        self._transition(task, state, ts, created, requeued)
        if created and len(self._tasks) > self.max_tasks:
            self._evict(protect=uuid)
        return True

    def _transition(
        self, task: Task, new: str, ts: float, created: bool, requeued: bool = False
    ) -> None:
        current = task.state
        if new == current:
            if not created:
                return
        elif current in _TERMINAL_PRECEDENCE:
            # A finished task never moves back; only a stronger finish replaces a weaker one.
            strength = _TERMINAL_PRECEDENCE.get(new)
            if strength is None or strength <= _TERMINAL_PRECEDENCE[current]:
                return
        elif (
            new not in _TERMINAL_PRECEDENCE
            and not requeued
            and _OPEN_RANK[new] <= _OPEN_RANK[current]
            and (current != RETRY or ts <= task.state_ts)
        ):
            # Among unfinished states precedence wins (task-sent is stamped by the client
            # after it published, so it may be "newer" than the worker's task-started), except
            # that after a retry a newer event is the next attempt moving forward again.
            return
        if current == FAILURE:
            self._drop_failure(task.name or "?", task)  # before ``finished`` changes
        del self._by_state[current][task.uuid]
        self._by_state[new][task.uuid] = None
        task.state = new
        task.state_ts = ts
        if new in _TERMINAL_PRECEDENCE:
            task.finished = ts
            if task.runtime is None and task.started is not None and new == FAILURE:
                task.runtime = max(0.0, ts - task.started)
        if new == FAILURE:
            name = task.name or "?"
            self._add_failure(name, task)
            self._record_failure(name, ts)
            if self._track:
                self._new_failures.append((name, ts))
        elif new == SUCCESS and task.runtime is not None and task.name is not None:
            self._record_runtime(task.name, task.runtime)
            if self._track:
                self._new_runtimes.append((task.name, task.runtime))

    def _count_event(self, task: Task, kind: str) -> None:
        counters = self._counters
        key = (task.worker or "", kind, task.name or "")
        events = counters.events
        if key in events:
            events[key] += 1
        elif len(events) < MAX_LABEL_SETS:
            events[key] = 1
        else:
            counters.labels_dropped += 1
        if kind == "task-succeeded" and task.runtime is not None:
            hist_key = (task.worker or "", task.name or "")
            histogram = counters.runtimes.get(hist_key)
            if histogram is None:
                if len(counters.runtimes) >= MAX_LABEL_SETS:
                    counters.labels_dropped += 1
                    return
                histogram = counters.runtimes[hist_key] = RuntimeHistogram()
            histogram.buckets[bisect_left(RUNTIME_BUCKETS, task.runtime)] += 1
            histogram.total += task.runtime
            histogram.count += 1

    # -- indexes and per-name statistics
    @staticmethod
    def _index(index: dict[str, dict[str, None]], key: str, uuid: str) -> None:
        bucket = index.get(key)
        if bucket is None:
            index[key] = {uuid: None}
        else:
            bucket[uuid] = None

    @staticmethod
    def _unindex(index: dict[str, dict[str, None]], key: str, uuid: str) -> None:
        bucket = index.get(key)
        if bucket is not None:
            bucket.pop(uuid, None)
            if not bucket:
                del index[key]

    def _touch_name(self, name: str) -> None:
        seen = self._name_seen
        if name in seen:
            seen.move_to_end(name)
            return
        seen[name] = None
        if len(seen) > self._max_task_names:
            stale, _ = seen.popitem(last=False)
            self._failure_times.pop(stale, None)
            self._runtimes.pop(stale, None)

    def _add_failure(self, name: str, task: Task) -> None:
        entry: _FailureEntry = (
            task.finished if task.finished is not None else task.state_ts,
            task.uuid,
            _intern(task.exception_type or "unknown"),
            task.name or "unknown",
        )
        insort(self._failed_by_name.setdefault(name, []), entry)
        insort(self._failed_by_time, entry)

    def _drop_failure(self, name: str, task: Task) -> None:
        key = (task.finished if task.finished is not None else task.state_ts, task.uuid)
        for entries in (self._failed_by_name.get(name), self._failed_by_time):
            if entries is None:
                continue
            at = bisect_left(entries, key)
            if at < len(entries) and entries[at][:2] == key:
                del entries[at]
        if not self._failed_by_name.get(name, True):
            del self._failed_by_name[name]

    def _record_failure(self, name: str, ts: float) -> None:
        times = self._failure_times.get(name)
        if times is None:
            times = self._failure_times[name] = []
        insort(times, ts)
        horizon = times[-1] - self._failure_horizon
        if times[0] < horizon or len(times) > MAX_FAILURE_TIMES:
            keep_from = max(bisect_left(times, horizon), len(times) - MAX_FAILURE_TIMES)
            del times[:keep_from]

    def _record_runtime(self, name: str, runtime: float) -> None:
        samples = self._runtimes.get(name)
        if samples is None:
            samples = self._runtimes[name] = deque(maxlen=self._runtime_samples)
        samples.append(runtime)

    def _evict(self, protect: str) -> None:
        """Remove one task, never ``protect`` (the one just created: its next events follow)."""
        for states in _EVICTION_ORDER:
            oldest_uuid: str | None = None
            oldest_ts = 0.0
            for state in states:
                bucket = self._by_state[state]
                if not bucket:
                    continue
                uuid = next(iter(bucket))
                if uuid == protect:
                    continue  # it is alone in its bucket, being the newest
                ts = self._tasks[uuid].state_ts
                if oldest_uuid is None or ts < oldest_ts:
                    oldest_uuid, oldest_ts = uuid, ts
            if oldest_uuid is not None:
                self._remove(oldest_uuid)
                self._health.tasks_evicted += 1
                return

    def _remove(self, uuid: str) -> None:
        task = self._tasks.pop(uuid)
        if self._track:
            self._changed.discard(uuid)
            self._removed.add(uuid)
        del self._by_state[task.state][uuid]
        if task.name is not None:
            self._unindex(self._by_name, task.name, uuid)
        if task.worker is not None:
            self._unindex(self._by_worker, task.worker, uuid)
        if task.state == FAILURE:
            self._drop_failure(task.name or "?", task)

    # -- workers
    def _apply_worker_event(self, kind: str, event: Mapping[str, Any], local: float) -> bool:
        hostname = event.get("hostname")
        if not isinstance(hostname, str) or not hostname:
            return False
        worker = self._workers.get(hostname)
        if worker is None:
            worker = Worker(hostname=_intern(hostname), first_seen=local)
            self._workers[worker.hostname] = worker
            if len(self._workers) > self.max_workers:
                self._evict_worker()
        if self._track:
            self._changed_workers.add(worker.hostname)
        freq = event.get("freq")
        if freq:
            worker.freq = float(freq)
        if kind == "worker-offline":
            if worker.offline_at is None or local > worker.offline_at:
                worker.offline_at = local
            return True
        if worker.last_heartbeat is None or local > worker.last_heartbeat:
            worker.last_heartbeat = local
            active = event.get("active")
            if active is not None:
                worker.active = int(active)
            processed = event.get("processed")
            if processed is not None:
                worker.processed = int(processed)
            loadavg = event.get("loadavg")
            if loadavg:
                worker.loadavg = tuple(float(x) for x in loadavg)[:3]
        for field in ("sw_ident", "sw_ver", "sw_sys"):
            value = event.get(field)
            if value:
                setattr(worker, field, _intern(str(value)))
        pid = event.get("pid")
        if pid is not None:
            worker.pid = int(pid)
        return True

    def _evict_worker(self) -> None:
        # The worker silent for longest goes; an online one is never chosen over an offline one.
        def silence(worker: Worker) -> float:
            return worker.last_heartbeat if worker.last_heartbeat is not None else worker.first_seen

        victim = min(self._workers.values(), key=silence)
        del self._workers[victim.hostname]
        if self._track:
            self._changed_workers.add(victim.hostname)  # absent from the store: a removal
        self._health.workers_evicted += 1

    def update_worker_info(
        self,
        hostname: str,
        *,
        pool: str | None = None,
        concurrency: int | None = None,
        queues: Sequence[str] | None = None,
    ) -> None:
        with self._lock:
            worker = self._workers.get(hostname)
            if worker is None:
                return  # only workers seen on the event stream are kept
            if pool is not None:
                worker.pool = _intern(pool)
            if concurrency is not None:
                worker.concurrency = concurrency
            if queues is not None:
                worker.queues = tuple(_intern(q) for q in queues)
            if self._track:
                self._changed_workers.add(hostname)

    def drain_changes(self) -> StoreChanges:
        """What changed since the last drain (needs ``track_changes=True``)."""
        with self._lock:
            tasks = [self._tasks[u].snapshot() for u in self._changed]
            removed = list(self._removed)
            workers: list[Worker] = []
            gone: list[str] = []
            for hostname in self._changed_workers:
                worker = self._workers.get(hostname)
                if worker is None:
                    gone.append(hostname)
                else:
                    workers.append(worker.snapshot())
            failures, self._new_failures = self._new_failures, []
            runtimes, self._new_runtimes = self._new_runtimes, []
            self._changed.clear()
            self._removed.clear()
            self._changed_workers.clear()
            return StoreChanges(
                tasks, removed, workers, gone, self._health.snapshot(), failures, runtimes
            )

    def all_samples(self) -> tuple[list[Sample], list[Sample]]:
        """Every retained failure time and runtime sample, to rewrite a copy from scratch.

        The samples not drained yet are among them, so the next :meth:`drain_changes` leaves
        them out (they would be counted twice).
        """
        with self._lock:
            failures = [(n, ts) for n, times in self._failure_times.items() for ts in times]
            runtimes = [(n, v) for n, values in self._runtimes.items() for v in values]
            self._new_failures = []
            self._new_runtimes = []
        return failures, runtimes

    def load(self, tasks: Iterable[Task], workers: Iterable[Worker]) -> None:
        """Warm an empty store from stored records (a restart or a failover).

        The statistics rebuilt from them are not changes: :meth:`drain_changes` leaves them out.
        """
        with self._lock:
            for task in sorted(tasks, key=lambda t: t.state_ts):
                task = task.snapshot()
                if task.uuid in self._tasks:
                    continue
                self._tasks[task.uuid] = task
                self._by_state[task.state][task.uuid] = None
                if task.name is not None:
                    task.name = _intern(task.name)
                    self._index(self._by_name, task.name, task.uuid)
                    self._touch_name(task.name)
                if task.worker is not None:
                    task.worker = _intern(task.worker)
                    self._index(self._by_worker, task.worker, task.uuid)
                if task.state == FAILURE:
                    self._add_failure(task.name or "?", task)
                    self._record_failure(task.name or "?", task.finished or task.state_ts)
                elif task.state == SUCCESS and task.runtime is not None and task.name:
                    self._record_runtime(task.name, task.runtime)
                if len(self._tasks) > self.max_tasks:
                    self._evict(protect=task.uuid)
            for worker in workers:
                self._workers.setdefault(worker.hostname, worker.snapshot())

    # ------------------------------------------------------------------ reading
    def get_task(self, uuid: str) -> Task | None:
        with self._lock:
            task = self._tasks.get(uuid)
            return task.snapshot() if task is not None else None

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
            found = [task.snapshot() for task in islice(matching, limit)]
        found.sort(key=lambda t: t.state_ts, reverse=True)
        return found

    def _select(
        self, state: str | None, name: str | None, worker: str | None, since: float | None
    ) -> Iterable[Task]:
        """Matching tasks, newest entry first, from the smallest index that applies."""
        ordered: Iterable[str]
        if state == FAILURE:
            # Failures have an exact time order: newest first, stop at ``since``.
            failed = self._failed_by_time if name is None else self._failed_by_name.get(name, [])
            start = 0 if since is None else bisect_left(failed, (since, ""))
            ordered = (entry[1] for entry in reversed(failed[start:]))
        else:
            candidates: list[dict[str, Any]] = []
            if state is not None:
                candidates.append(self._by_state.get(state, {}))
            if name is not None:
                candidates.append(self._by_name.get(name, {}))
            if worker is not None:
                candidates.append(self._by_worker.get(worker, {}))
            # Without a filter, newest created first: close enough to "newest activity" for
            # a listing whose page is re-sorted by the caller.
            smallest: dict[str, Any] = min(candidates, key=len) if candidates else self._tasks
            ordered = reversed(smallest)
        tasks = self._tasks
        for uuid in ordered:
            task = tasks[uuid]
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
                return len(self._tasks) if state is None else len(self._by_state.get(state, {}))
            if state == FAILURE and name is not None and worker is None:
                return len(self._failed_by_name.get(name, []))
            if state is None and worker is None and name is not None:
                return len(self._by_name.get(name, {}))
            if state is None and name is None and worker is not None:
                return len(self._by_worker.get(worker, {}))
            return sum(1 for _ in self._select(state, name, worker, None))

    def active(self, worker: str | None = None) -> list[Task]:
        with self._lock:
            tasks = self._tasks
            running = [
                tasks[uuid].snapshot()
                for uuid in self._by_state[STARTED]
                if worker is None or tasks[uuid].worker == worker
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
            return [tasks[entry[1]].snapshot() for entry in reversed(failed[start:])]

    def failure_summary(
        self, name: str | None, window: float, now: float, limit: int
    ) -> FailureSummary:
        cutoff = now - window
        with self._lock:
            failed = self._failed_by_time if name is None else self._failed_by_name.get(name, [])
            start = bisect_left(failed, (cutoff, ""))
            in_window = failed[start:]
            # Counted from the index entries (C-speed Counter), without a record in sight;
            # only the page shown is snapshotted.
            by_type = Counter(entry[2] for entry in in_window)
            by_name = Counter(entry[3] for entry in in_window)
            tasks = self._tasks
            newest = [
                tasks[entry[1]].snapshot()
                for entry in islice(reversed(in_window), max(0, limit))
            ]
        return FailureSummary(len(in_window), newest, dict(by_type), dict(by_name))

    def runtime_stats(self, name: str) -> RuntimeStats | None:
        with self._lock:
            samples = self._runtimes.get(name)
            values = sorted(samples) if samples else None
        return runtime_stats_of(name, values or [])

    def task_names(self) -> list[str]:
        with self._lock:
            return sorted(set(self._by_name) | set(self._name_seen))

    def counts_by_state(self) -> dict[str, int]:
        with self._lock:
            return {state: len(bucket) for state, bucket in self._by_state.items() if bucket}

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
