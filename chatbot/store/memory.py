"""The in-process store: a compact state machine fed one Celery event at a time.

This module is the writing side: events applied one at a time, transitions, eviction, the
indexes' bookkeeping, warm starts, the changes a write-behind copy drains, GC freezing. The
read side (every query) is :mod:`chatbot.store.queries`, a base class of :class:`MemoryStore`;
the record layout and traceback compression are :mod:`chatbot.store.compact`.

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
- Indexes are append-only queues of ids checked against the record when read (see
  :class:`~chatbot.store.compact.Ordered`), not dicts: eviction takes the head of a queue in
  constant time at any cap (the first key of a dict deleted from the front is found by
  skipping every deleted slot before it, which grows with the cap), and an id in a queue
  costs 8 bytes where a dict entry under churn costs ~100.
- Records are smaller than the :class:`Task` they are handed out as, and tracebacks are kept
  compressed (the layout and why: :mod:`chatbot.store.compact`). The task table, which a
  dict under churn would let grow to three times its entries, is copied back to its size
  each time it grew (:meth:`MemoryStore._compact_tasks_when_grown`).
- No phantoms: the ids of evicted tasks are remembered (a bounded ring, with the state they
  left in), so a late event for one is checked against that state, as for a retained task: a
  ``task-started`` arriving after its task succeeded and was evicted creates nothing. The
  Redis writer runs this state machine, so the rule holds there too; the ring lives in the
  writer's process only (a new writer after a failover starts with it empty).
- A window's failure counts by name and exception type are a bisect per (name, type) list,
  not a pass over every failure in the window (``/celery failed`` at 100k tasks).
- Late, duplicated and out-of-order events: a finished task never becomes active again; among
  unfinished states the newer event wins (so a retry's second attempt moves forward while a
  stale duplicate does nothing); task-failed carries no name, so fields from earlier events are
  kept.
- One lock, taken once per batch by the writer and briefly by readers; no I/O under it.
- No stop-the-world pauses that grow with the cap. A full garbage collection visits every
  tracked object and everything each one points to; with 100k records that is ~100 ms of one
  core (``python -m bench.store_perf``), during which every thread stands still. Records never
  form reference cycles (they hold strings, numbers and ids, never each other), so the
  collector has nothing to find among them: every ``gc_freeze_every`` new tasks the store
  collects the young generations and moves everything alive to the permanent generation
  (``gc.freeze()``), where full collections no longer visit it. Frozen objects are still
  freed by reference counting when evicted. The cost: an object alive at a freeze that later
  becomes part of a reference cycle is never collected; collecting the young generations
  first keeps that to the long-lived objects of the moment. ``gc_freeze_every=0`` turns it
  off.
"""

from __future__ import annotations

import gc
import math
import sys
import threading
import time
from bisect import bisect_left, insort
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
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
    FleetCounters,
    RuntimeHistogram,
    StreamHealth,
    Task,
    Worker,
)
from chatbot.redaction import FieldLimits, Redactor, clip
from chatbot.store.compact import (
    NO_RARE,
    RARE_DEFAULTS,
    RARE_FIELDS,
    RECORD_FIELDS,
    Ordered,
    Rare,
    Record,
    TracebackPacker,
)
from chatbot.store.queries import FailureEntry, MemoryQueries, percentile, runtime_stats_of

# Read by the Redis reader and by callers of this module since before the read side moved.
__all__ = [
    "MAX_EVENT_TYPES",
    "MAX_FAILURE_TIMES",
    "MAX_LABEL_SETS",
    "TASK_EVENT_STATE",
    "MemoryStore",
    "Sample",
    "StoreChanges",
    "percentile",
    "runtime_stats_of",
]

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

# Task event types as the store reads them: (its spelling, the state it moves to, a code).
# The codes' order matters: _apply_task_event tests ranges of them.
_KIND_ORDER = (
    "task-sent", "task-received", "task-started", "task-succeeded", "task-failed",
    "task-retried", "task-revoked", "task-rejected",
)  # fmt: skip
_SENT, _RECEIVED, _STARTED, _SUCCEEDED, _FAILED, _RETRIED, _REVOKED, _REJECTED = range(8)
_TASK_KINDS: dict[str, tuple[str, str, int]] = {
    kind: (_intern(kind), TASK_EVENT_STATE[kind], code) for code, kind in enumerate(_KIND_ORDER)
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


class MemoryStore(MemoryQueries):
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
        recent_ids: int | None = None,
        gc_freeze_every: int | None = None,
    ) -> None:
        """``recent_ids``: how many evictions are remembered against phantoms (default an
        eighth of ``max_tasks``, at least 1,024: the late events of a realistic stream
        arrive within a second or two, i.e. well within that many evictions; with 500k
        events delivered with a mean delay of 50 ms at a cap of 10,000, none was a phantom).
        ``gc_freeze_every``: new tasks between two ``gc.freeze()`` (see the module's notes;
        default an eighth of ``max_tasks``, at least 10,000; 0: never)."""
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

        self._tasks: dict[str, Record] = {}
        self._tasks_bytes = sys.getsizeof(self._tasks)  # see _compact_tasks_when_grown
        self._tracebacks = TracebackPacker()  # see chatbot.store.compact
        # Bound once: a failure keeps its traceback through no extra attribute lookup.
        self._keep_traceback = self._tracebacks.keep
        # Tasks by state, name and worker, each in the order they joined (see Ordered).
        self._by_state: dict[str, Ordered] = {s: Ordered() for s in TASK_STATES}
        # _EVICTION_ORDER with each state's group beside it, as _evict walks it per eviction.
        self._eviction_groups = tuple(
            tuple((state, self._by_state[state]) for state in states)
            for states in _EVICTION_ORDER
        )
        self._by_name: dict[str, Ordered] = {}
        self._by_worker: dict[str, Ordered] = {}
        # Evicted ids and the state they were evicted in, the oldest forgotten first.
        self._recent_ids = (
            max(1024, max_tasks // 8) if recent_ids is None else max(0, recent_ids)
        )
        # Keyed by the id's hash (a str caches it), not the id: an int costs 32 bytes where
        # the id costs 85. Two ids of one hash in the ring (64-bit SipHash, a few thousand
        # ids) would at worst make one late event count as already seen.
        self._gone: dict[int, str] = {}
        self._gone_order: deque[int] = deque()
        self._gone_again: dict[int, int] = {}  # in the order more than once: how often
        # Retained failures sorted by failure time, per name ("?" until a name is known) and
        # overall: a late-arriving old failure must not hide newer ones from a window query.
        # Entries are (failed at, uuid, exception type, task name): a window's counts by type
        # and name are read off the index without touching a task record.
        self._failed_by_name: dict[str, list[FailureEntry]] = {}
        self._failed_by_time: list[FailureEntry] = []
        # The same entries per (name key, exception type): a window's counts by name and type
        # are a bisect per list, not a pass over every failure in the window.
        self._failed_by_kind: dict[tuple[str, str], list[FailureEntry]] = {}
        # Per task name, most recently seen last: failure times and recent runtimes.
        self._name_seen: OrderedDict[str, None] = OrderedDict()
        self._failure_times: dict[str, list[float]] = {}  # sorted; kept after eviction
        self._runtimes: dict[str, deque[float]] = {}
        self._workers: dict[str, Worker] = {}
        self._health = StreamHealth()
        self._counters = FleetCounters()
        # Write-through backends (redis://) drain what each batch changed.
        self._track = track_changes
        self._freeze_every = (
            max(10_000, max_tasks // 8) if gc_freeze_every is None else max(0, gc_freeze_every)
        )
        self._created_since_freeze = 0
        self._changed: set[str] = set()
        self._removed: set[str] = set()
        self._changed_workers: set[str] = set()
        self._new_failures: list[Sample] = []
        self._new_runtimes: list[Sample] = []

    # ------------------------------------------------------------------ writing
    def apply(self, events: Iterable[Mapping[str, Any]]) -> int:
        applied = 0
        malformed = 0
        with self._lock:
            now = self.clock()
            health = self._health
            counts = health.events_by_type
            task_kinds = _TASK_KINDS
            apply_task = self._apply_task_event
            # Held in a local for the batch (the lock is ours throughout), written back below.
            last_event_at = health.last_event_at
            try:
                for event in events:
                    try:
                        kind = event.get("type")
                        if not isinstance(kind, str):
                            malformed += 1
                            continue
                        received_at = event.get("local_received")
                        if received_at is None:
                            local = now
                        elif type(received_at) is float:
                            local = received_at
                        else:
                            local = float(received_at)
                        if last_event_at is None or local > last_event_at:
                            last_event_at = local
                        count = counts.get(kind)
                        if count is not None:
                            counts[kind] = count + 1
                        elif len(counts) < MAX_EVENT_TYPES:
                            counts[kind] = 1
                        else:
                            counts["other"] = counts.get("other", 0) + 1
                        spec = task_kinds.get(kind)
                        if spec is not None:
                            ok = apply_task(spec, event, local)
                        elif kind.startswith("worker-"):
                            ok = self._apply_worker_event(kind, event, local)
                        else:
                            ok = True  # a custom event type: counted, nothing to keep
                        if ok:
                            applied += 1
                        else:
                            malformed += 1
                    except (TypeError, ValueError, AttributeError, KeyError):
                        malformed += 1
            finally:
                health.last_event_at = last_event_at
                health.malformed += malformed
                health.events_total += applied
            self._compact_tasks_when_grown()
        self._freeze_when_due()
        return applied

    def _compact_tasks_when_grown(self) -> None:
        """Copy the task dict into a table sized for what it holds, each time it grew.

        At the cap every new task evicts one, and a dict never shrinks on deletes: once its
        slots are used up it rebuilds itself with room for three times its live entries, where
        a copy has room for one and a half. At 100,000 tasks that is 7.7 MB against 3.8 MB
        (~38 bytes per retained task), for a copy of a few milliseconds every ~75,000 new
        tasks. (``{**d}``, not ``dict(d)``: the latter clones a clean table at its size.)
        """
        size = sys.getsizeof(self._tasks)
        if size > self._tasks_bytes:
            self._tasks = {**self._tasks}
            self._tasks_bytes = sys.getsizeof(self._tasks)

    def _freeze_when_due(self) -> None:
        """Out of the collector's reach: the records created since the last freeze."""
        if not self._freeze_every or self._created_since_freeze < self._freeze_every:
            return
        self._created_since_freeze = 0
        gc.collect(1)  # the young generations' cycles die before they could be frozen
        gc.freeze()

    @staticmethod
    def _rare(task: Record) -> Rare:
        """The record's own :class:`Rare`, made on the first rare field set."""
        rare = task.rare
        if rare is NO_RARE:
            rare = task.rare = Rare()
        return rare

    def _apply_task_event(
        self, spec: tuple[str, str, int], event: Mapping[str, Any], local: float
    ) -> bool:
        # ``kind`` is the table's own (interned) spelling: its hash is computed once, not once
        # an event, where it keys the counters.
        kind, state, code = spec
        uuid = event.get("uuid")
        if not isinstance(uuid, str) or not uuid:
            return False
        raw_ts = event.get("timestamp")
        if raw_ts is None:
            ts = local
        elif type(raw_ts) is float:
            ts = raw_ts
        else:
            ts = float(raw_ts)
        task = self._tasks.get(uuid)
        created = task is None
        if task is None:
            gone = self._gone.get(hash(uuid))
            if gone is not None:
                # Evicted already: a late event is judged against the state the task left in,
                # as if it were still here. One that would not move it creates nothing (a
                # task-started after its success was evicted is not a running task).
                requeue = code == _REJECTED and bool(event.get("requeue"))
                if requeue:
                    state = PENDING
                # Without its state's time, a RETRY accepts any newer attempt.
                if not _moves(gone, state, ts, -math.inf, requeue):
                    hostname = event.get("hostname")
                    self._count(str(hostname) if hostname else "", kind, "", None)
                    return True
                # Kept in the memory: it is only read for an absent task, and the next
                # eviction of this one overwrites it.
            # Not indexed in any state yet: _transition puts it in its first one.
            task = Record(uuid, ts)
            self._tasks[uuid] = task
            self._created_since_freeze += 1

        if task.name is None:
            name = event.get("name")
            if name:
                task.name = _intern(str(name))
                self._join(self._by_name, task.name, uuid)
                self._touch_name(task.name)
                if task.state == FAILURE:  # the failure arrived before the event naming it
                    self._drop_failure("?", task)
                    self._add_failure(task.name, task)
        hostname = event.get("hostname")
        # A late event from an earlier attempt (before a retry moved the task) must not move
        # the task back to that attempt's worker.
        if (
            hostname
            and task.worker != hostname
            and code != _SENT
            and (task.worker is None or ts >= task.state_ts)
        ):
            if task.worker is not None:
                self._leave(self._by_worker, task.worker)
            task.worker = _intern(str(hostname))
            self._join(self._by_worker, task.worker, uuid)

        if code == _STARTED:
            if task.started is None or ts > task.started:
                task.started = ts
        elif code == _SUCCEEDED:
            if "result" in event:
                task.result = self._redactor.clipped(event["result"], self._limits.result)
            runtime = event.get("runtime")
            if runtime is not None:
                task.runtime = float(runtime)
        elif code <= _RECEIVED:
            self._on_queued(task, code, event, ts)
        elif code <= _RETRIED:  # task-failed or task-retried
            rare = task.rare
            if rare.retried is not None and code == _FAILED and ts < rare.retried:
                pass  # a stale failure report from before the latest retry
            else:
                limits = self._limits
                exception = event.get("exception")
                if exception is not None:
                    task.exception = self._redactor.clipped(exception, limits.exception)
                traceback = event.get("traceback")
                if traceback is not None:
                    self._keep_traceback(
                        task, self._redactor.clipped_tail(traceback, limits.traceback)
                    )
            if code == _RETRIED and (rare.retried is None or ts > rare.retried):
                self._rare(task).retried = ts
        elif code == _REVOKED:
            terminated = bool(event.get("terminated")) or task.rare.terminated
            if terminated:
                self._rare(task).terminated = terminated
            signum = event.get("signum")
            if signum is not None:
                self._rare(task).signum = str(signum)

        if self._track:
            self._changed.add(uuid)
        # The /metrics counters (as _count does; written out: this runs for every event).
        worker = task.worker or ""
        name = task.name or ""
        key = (worker, kind, name)
        counters = self._counters
        events = counters.events
        count = events.get(key)
        if count is not None:
            events[key] = count + 1
        elif len(events) < MAX_LABEL_SETS:
            events[key] = 1
        else:
            counters.labels_dropped += 1
        if code == _SUCCEEDED and task.runtime is not None:
            self._observe_runtime(worker, name, task.runtime)

        if code == _REJECTED and event.get("requeue"):
            # Handed back to the queue: waiting again, not finished.
            if created:
                self._enter(task, PENDING, ts)
            elif _moves(task.state, PENDING, ts, task.state_ts, True):
                self._transition(task, PENDING, ts)
        elif created:
            self._enter(task, state, ts)
        elif state is not task.state and _moves(task.state, state, ts, task.state_ts, False):
            self._transition(task, state, ts)
        if created and len(self._tasks) > self.max_tasks:
            self._evict(protect=uuid)
        return True

    def _on_queued(self, task: Record, code: int, event: Mapping[str, Any], ts: float) -> None:
        """The fields of a task-sent or task-received."""
        limits = self._limits
        if task.args is None and "args" in event:
            task.args = clip(self._redactor.args(event["args"]), limits.args)
        if task.kwargs is None and "kwargs" in event:
            task.kwargs = clip(self._redactor.kwargs(event["kwargs"]), limits.kwargs)
        uuid = task.uuid
        retries = event.get("retries")
        if retries is not None and int(retries) > task.rare.retries:
            self._rare(task).retries = int(retries)
        # In the order the fields were always read: parent_id, root_id, eta, expires. An id
        # is held as the string of the same id already kept where there is one (a root task
        # is its own root; a parent is often retained, and is often the root): an id costs
        # 85 bytes a copy.
        value = event.get("parent_id")
        if value is not None and task.rare.parent_id is None:
            text = str(value)
            self._rare(task).parent_id = uuid if text == uuid else self._kept_id(text)
        value = event.get("root_id")
        if value is not None and task.root_id is None:
            text = str(value)
            if text == uuid:
                task.root_id = uuid
            elif text == task.rare.parent_id:
                task.root_id = task.rare.parent_id
            else:
                task.root_id = self._kept_id(text)
        for field in ("eta", "expires"):  # rarely set
            value = event.get(field)
            if value is not None and getattr(task.rare, field) is None:
                text = str(value)
                setattr(self._rare(task), field, uuid if text == uuid else text)
        if code == _SENT:
            rare = self._rare(task)
            rare.sent = ts
            queue = event.get("queue")
            if queue and rare.queue is None:
                rare.queue = _intern(str(queue))
            routing_key = event.get("routing_key")
            if routing_key and rare.routing_key is None:
                rare.routing_key = _intern(str(routing_key))
        elif task.received is None or ts > task.received:
            task.received = ts

    def _kept_id(self, text: str) -> str:
        """``text``, or the equal id string of a retained task."""
        kept = self._tasks.get(text)
        return kept.uuid if kept is not None else text

    def _enter(self, task: Record, new: str, ts: float) -> None:
        """``task`` joins the state ``new``: a new record's first, or the next (_transition)."""
        task.state = new  # before a compaction, which counts the members by their state
        group = self._by_state[new]
        group.ids.append(task.uuid)
        group.live += 1
        if len(group.ids) > 2 * group.live + 32:
            self._compact(group, "state", new)
        task.state_ts = ts
        if new in _TERMINAL_PRECEDENCE:
            self._finish(task, new, ts)

    def _transition(self, task: Record, new: str, ts: float) -> None:
        """Moves ``task`` to ``new`` (``_moves`` said it should)."""
        current = task.state
        if current == FAILURE:
            self._drop_failure(task.name or "?", task)  # before ``finished`` changes
        self._by_state[current].live -= 1
        self._enter(task, new, ts)

    def _finish(self, task: Record, new: str, ts: float) -> None:
        task.finished = ts
        if new == FAILURE:
            if task.runtime is None and task.started is not None:
                task.runtime = max(0.0, ts - task.started)
            name = task.name or "?"
            self._add_failure(name, task)
            self._record_failure(name, ts)
            if self._track:
                self._new_failures.append((name, ts))
        elif new == SUCCESS and task.runtime is not None and task.name is not None:
            self._record_runtime(task.name, task.runtime)
            if self._track:
                self._new_runtimes.append((task.name, task.runtime))

    def _count(self, worker: str, kind: str, name: str, runtime: float | None) -> None:
        """The /metrics counters of one task event, labelled as Flower labels them."""
        counters = self._counters
        key = (worker, kind, name)
        events = counters.events
        if key in events:
            events[key] += 1
        elif len(events) < MAX_LABEL_SETS:
            events[key] = 1
        else:
            counters.labels_dropped += 1
        if kind == "task-succeeded" and runtime is not None:
            self._observe_runtime(worker, name, runtime)

    def _observe_runtime(self, worker: str, name: str, runtime: float) -> None:
        counters = self._counters
        hist_key = (worker, name)
        histogram = counters.runtimes.get(hist_key)
        if histogram is None:
            if len(counters.runtimes) >= MAX_LABEL_SETS:
                counters.labels_dropped += 1
                return
            histogram = counters.runtimes[hist_key] = RuntimeHistogram()
        histogram.buckets[bisect_left(RUNTIME_BUCKETS, runtime)] += 1
        histogram.total += runtime
        histogram.count += 1

    # -- indexes and per-name statistics
    def _join(self, index: dict[str, Ordered], key: str, uuid: str) -> None:
        """``uuid`` joins the group ``key`` of the name or worker index."""
        group = index.get(key)
        if group is None:
            group = index[key] = Ordered()
        group.ids.append(uuid)
        group.live += 1
        if len(group.ids) > 2 * group.live + 32:
            self._compact(group, "name" if index is self._by_name else "worker", key)

    @staticmethod
    def _leave(index: dict[str, Ordered], key: str) -> None:
        group = index.get(key)
        if group is not None:
            group.live -= 1
            if group.live <= 0:
                del index[key]

    def _compact(self, group: Ordered, field: str, key: str) -> None:
        """Keep each member once, at its last place; drop the ids that left."""
        tasks = self._tasks
        value_of = attrgetter(field)
        kept = [
            uuid
            for uuid in group.ids
            if (task := tasks.get(uuid)) is not None and value_of(task) == key
        ]
        if len(kept) > group.live:  # a member that left and joined again: its last place
            kept = list(dict.fromkeys(reversed(kept)))
            kept.reverse()
        group.ids = deque(kept)
        group.live = len(kept)

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

    def _add_failure(self, name: str, task: Record) -> None:
        entry: FailureEntry = (
            task.finished if task.finished is not None else task.state_ts,
            task.uuid,
            _intern(task.exception_type or "unknown"),
            task.name or "unknown",
        )
        insort(self._failed_by_name.setdefault(name, []), entry)
        insort(self._failed_by_time, entry)
        insort(self._failed_by_kind.setdefault((name, entry[2]), []), entry)

    def _drop_failure(self, name: str, task: Record) -> None:
        key = (task.finished if task.finished is not None else task.state_ts, task.uuid)
        kind: str | None = None
        by_name = self._failed_by_name.get(name)
        for entries in (by_name, self._failed_by_time):
            if entries is None:
                continue
            at = bisect_left(entries, key)
            if at < len(entries) and entries[at][:2] == key:
                kind = entries[at][2]
                del entries[at]
        if by_name is not None and not by_name:
            del self._failed_by_name[name]
        if kind is not None:
            of_kind = self._failed_by_kind.get((name, kind))
            if of_kind is not None:
                at = bisect_left(of_kind, key)
                if at < len(of_kind) and of_kind[at][:2] == key:
                    del of_kind[at]
                if not of_kind:
                    del self._failed_by_kind[(name, kind)]

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
        """Remove one task, never ``protect`` (the one just created: its next events follow).

        Constant time at any cap: the oldest member of a state is the head of its queue once
        the ids that left it are popped, each popped once.
        """
        tasks = self._tasks
        for groups in self._eviction_groups:
            oldest: Record | None = None
            for state, group in groups:
                if not group.live:
                    continue
                ids = group.ids
                while True:  # a member is in the queue, so this stops at one
                    task = tasks.get(ids[0])
                    if task is not None and task.state == state:
                        break
                    ids.popleft()
                if task.uuid == protect:
                    continue  # it is alone in its state, being the newest
                if oldest is None or task.state_ts < oldest.state_ts:
                    oldest = task
            if oldest is not None:
                self._remove(oldest.uuid)
                self._health.tasks_evicted += 1
                return

    def _remove(self, uuid: str) -> None:
        task = self._tasks.pop(uuid)
        if self._track:
            self._changed.discard(uuid)
            self._removed.add(uuid)
        self._by_state[task.state].live -= 1
        # _leave, written out: once per eviction, i.e. once per new task at the cap.
        name = task.name
        if name is not None:
            group = self._by_name.get(name)
            if group is not None:
                group.live -= 1
                if group.live <= 0:
                    del self._by_name[name]
        worker = task.worker
        if worker is not None:
            group = self._by_worker.get(worker)
            if group is not None:
                group.live -= 1
                if group.live <= 0:
                    del self._by_worker[worker]
        if task.state == FAILURE:
            self._drop_failure(task.name or "?", task)
        self._remember(uuid, task.state)

    def _remember(self, uuid: str, state: str) -> None:
        """Keep an evicted id (and its state) against phantoms; forget the oldest beyond the
        bound. An id evicted again (it came back, e.g. queued, then evicted, then started)
        is forgotten at its last turn, not its first: its latest state is what matters."""
        if not self._recent_ids:
            return
        key = hash(uuid)
        order = self._gone_order
        if len(order) >= self._recent_ids:
            oldest = order.popleft()
            again = self._gone_again.get(oldest)
            if again is None:
                self._gone.pop(oldest, None)
            elif again > 1:
                self._gone_again[oldest] = again - 1
            else:
                del self._gone_again[oldest]
        if key in self._gone:
            self._gone_again[key] = self._gone_again.get(key, 0) + 1
        order.append(key)
        self._gone[key] = state

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
            tasks = [self._snap(self._tasks[u]) for u in self._changed]
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
            for stored in sorted(tasks, key=lambda t: t.state_ts):
                if stored.uuid in self._tasks:
                    continue
                task = Record(stored.uuid, stored.state_ts)
                for field in RECORD_FIELDS:
                    setattr(task, field, getattr(stored, field))
                for field in RARE_FIELDS:
                    value = getattr(stored, field)
                    if value != RARE_DEFAULTS[field]:
                        setattr(self._rare(task), field, value)
                if stored.traceback is not None:
                    self._keep_traceback(task, stored.traceback)
                self._tasks[task.uuid] = task
                group = self._by_state[task.state]
                group.ids.append(task.uuid)
                group.live += 1
                if task.root_id == task.uuid:
                    task.root_id = task.uuid
                if task.name is not None:
                    task.name = _intern(task.name)
                    self._join(self._by_name, task.name, task.uuid)
                    self._touch_name(task.name)
                if task.worker is not None:
                    task.worker = _intern(task.worker)
                    self._join(self._by_worker, task.worker, task.uuid)
                if task.state == FAILURE:
                    self._add_failure(task.name or "?", task)
                    self._record_failure(task.name or "?", task.finished or task.state_ts)
                elif task.state == SUCCESS and task.runtime is not None and task.name:
                    self._record_runtime(task.name, task.runtime)
                if len(self._tasks) > self.max_tasks:
                    self._evict(protect=task.uuid)
            for worker in workers:
                self._workers.setdefault(worker.hostname, worker.snapshot())
            self._compact_tasks_when_grown()
            self._created_since_freeze += len(self._tasks)
        self._freeze_when_due()  # a warm start's records are the longest-lived of all

def _moves(current: str, new: str, ts: float, state_ts: float, requeued: bool) -> bool:
    """Whether an event saying ``new`` (stamped ``ts``) moves a task that is ``current``
    (since ``state_ts``) to it."""
    if new == current:
        return False
    if current in _TERMINAL_PRECEDENCE:
        # A finished task never moves back; only a stronger finish replaces a weaker one.
        strength = _TERMINAL_PRECEDENCE.get(new)
        return strength is not None and strength > _TERMINAL_PRECEDENCE[current]
    # Among unfinished states precedence wins (task-sent is stamped by the client after it
    # published, so it may be "newer" than the worker's task-started), except that after a
    # retry a newer event is the next attempt moving forward again.
    return (
        new in _TERMINAL_PRECEDENCE
        or requeued
        or _OPEN_RANK[new] > _OPEN_RANK[current]
        or (current == RETRY and ts > state_ts)
    )
