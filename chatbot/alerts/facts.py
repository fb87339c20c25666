"""Gathering what one check knows: the store's queries and the broker's queue lengths.

This is the only part of the alert rules that talks to the store; :func:`collect_facts` turns
its answers into a :class:`~chatbot.alerts.rules.FleetFacts` for the pure rules. Queries are
chosen to be answered from the store's indexes (failures by name, tasks by state since a time)
and only for what a rule will look at (recent failures only for names over the threshold).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping, Sequence

from chatbot.alerts.rules import STUCK, FleetFacts, split_key
from chatbot.broker import QueueLength
from chatbot.config import Settings
from chatbot.model import (
    FAILURE,
    HEARTBEAT_EXPIRE_FACTOR,
    MIN_OUTLIER_RUNTIME,
    RECEIVED,
    RETRY,
    STARTED,
    SUCCESS,
    RuntimeStats,
    StreamHealth,
    Task,
)
from chatbot.store import FleetStore

# How far back the consumption rate of a queue is counted.
CONSUMPTION_WINDOW = 300.0
# States a task that was taken from a queue can be in; bounded scan per state.
_CONSUMED_STATES = (RECEIVED, STARTED, RETRY, SUCCESS, FAILURE)
_CONSUMED_SCAN_LIMIT = 5000


class QueueHistory:
    """Recent known lengths per queue, for the backlog trend ("since the last checks").

    Unknown lengths are not recorded: a gap is better than a fake zero. Thread-safe.
    """

    def __init__(self, max_samples: int = 6, horizon: float = 900.0) -> None:
        if max_samples < 2:
            raise ValueError("max_samples must be at least 2 to show a trend")
        self.max_samples = max_samples
        self.horizon = horizon
        self._lock = threading.Lock()
        self._samples: dict[str, deque[tuple[float, int]]] = {}

    def record(self, lengths: Sequence[QueueLength], now: float) -> None:
        with self._lock:
            for queue in lengths:
                if queue.messages is None:
                    continue
                samples = self._samples.setdefault(queue.name, deque(maxlen=self.max_samples))
                samples.append((now, queue.messages))
            for name in list(self._samples):
                samples = self._samples[name]
                while samples and samples[0][0] < now - self.horizon:
                    samples.popleft()
                if not samples:
                    del self._samples[name]

    def samples(self) -> dict[str, tuple[tuple[float, int], ...]]:
        with self._lock:
            return {name: tuple(samples) for name, samples in self._samples.items()}


def consumed_per_queue(
    store: FleetStore, queue_names: Sequence[str], since: float
) -> dict[str, int]:
    """Tasks received by workers since ``since``, per watched queue.

    A task's queue is known from its task-sent event (``task_send_sent_event``); without it a
    task can only be attributed when a single queue is watched. Queues nothing could be
    attributed to are absent (unknown), not zero.
    """
    watched = set(queue_names)
    only = queue_names[0] if len(queue_names) == 1 else None
    counts: dict[str, int] = {}
    attributed = False
    for state in _CONSUMED_STATES:
        for task in store.tasks(state=state, since=since, limit=_CONSUMED_SCAN_LIMIT):
            if task.received is None or task.received < since:
                continue
            queue = task.queue or task.routing_key or only
            if queue is None:
                continue
            attributed = attributed or bool(task.queue or task.routing_key)
            if queue in watched:
                counts[queue] = counts.get(queue, 0) + 1
    if attributed or only is not None:
        # Routing is visible: a watched queue with nothing taken from it really saw zero.
        for name in queue_names:
            counts.setdefault(name, 0)
    return counts


def collect_facts(
    store: FleetStore,
    settings: Settings,
    *,
    now: float,
    watching_since: float,
    queues: Sequence[QueueLength] | None = None,
    queue_error: str | None = None,
    history: Mapping[str, Sequence[tuple[float, int]]] | None = None,
    health: StreamHealth | None = None,
    open_keys: Sequence[str] = (),
    expire_factor: float = HEARTBEAT_EXPIRE_FACTOR,
) -> FleetFacts:
    workers = store.workers()
    active = store.active()
    stats: dict[str, RuntimeStats] = {}
    for task in active:
        runtime = task.runtime_so_far(now) or 0.0
        # Only a task that ran long enough to be judged by its p99 needs its name's history.
        if task.name and task.name not in stats and runtime >= MIN_OUTLIER_RUNTIME:
            found = store.runtime_stats(task.name)
            if found is not None:
                stats[task.name] = found
    counts = store.failure_counts(settings.failure_window, now)
    recent = {
        name: store.recent_failures(name, settings.failure_window, now)
        for name, count in counts.items()
        if count >= settings.failure_spike_threshold
    }
    tasks: dict[str, Task | None] = {}
    for key in open_keys:
        kind, subject = split_key(key)
        if kind == STUCK:
            tasks[subject] = store.get_task(subject)
    span = max(0.0, min(CONSUMPTION_WINDOW, now - watching_since))
    consumed: dict[str, int] = {}
    if queues and span >= 1.0:
        consumed = consumed_per_queue(store, [q.name for q in queues], now - span)
    return FleetFacts(
        now=now,
        workers=workers,
        active=active,
        runtime_stats=stats,
        failure_counts=counts,
        recent_failures=recent,
        health=health if health is not None else store.health(),
        watching_since=watching_since,
        queues=queues,
        queue_error=queue_error,
        queue_history=dict(history or {}),
        consumed=consumed,
        consumption_span=span,
        tasks=tasks,
        expire_factor=expire_factor,
    )
