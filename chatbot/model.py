"""The records the state keeps and hands out: tasks, workers, stream health.

Records returned by a store are snapshots: changing one changes nothing in the store.
Times are UNIX seconds (floats). Task times come from the event (worker clock, corrected by
the event's UTC offset, as Celery's receiver does); worker liveness uses the local time the
event arrived, so a worker with a skewed clock is not judged dead or alive by its clock.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# Task states, spelled as Celery spells them.
PENDING = "PENDING"
RECEIVED = "RECEIVED"
STARTED = "STARTED"
RETRY = "RETRY"
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
REVOKED = "REVOKED"
REJECTED = "REJECTED"

TASK_STATES = (PENDING, RECEIVED, STARTED, RETRY, SUCCESS, FAILURE, REVOKED, REJECTED)
QUEUED_STATES = frozenset({PENDING, RECEIVED, RETRY})
FINISHED_STATES = frozenset({SUCCESS, FAILURE, REVOKED, REJECTED})

# Celery's heartbeat expiry: a worker is offline once 2 x freq passed without a heartbeat.
HEARTBEAT_EXPIRE_FACTOR = 2.0
DEFAULT_HEARTBEAT_FREQ = 2.0


def exception_type_of(exception: str | None) -> str | None:
    """``ValueError`` for ``ValueError('boom')``; the exception text up to its '('."""
    if not exception:
        return None
    head = exception.split("(", 1)[0].strip()
    return head or None


@dataclass(slots=True)
class Task:
    uuid: str
    name: str | None = None
    state: str = PENDING
    args: str | None = None
    kwargs: str | None = None
    worker: str | None = None
    queue: str | None = None
    routing_key: str | None = None
    sent: float | None = None
    received: float | None = None
    started: float | None = None
    finished: float | None = None  # succeeded, failed, revoked or rejected
    retried: float | None = None  # the last task-retried
    runtime: float | None = None
    retries: int = 0
    exception: str | None = None
    traceback: str | None = None
    result: str | None = None
    parent_id: str | None = None
    root_id: str | None = None
    eta: str | None = None
    expires: str | None = None
    terminated: bool = False  # revoked with terminate
    signum: str | None = None
    # Time of the event that set ``state``: orders late and duplicated events.
    state_ts: float = 0.0

    def snapshot(self) -> Task:
        # Spelled out: copy.copy of a slotted dataclass goes through __reduce_ex__ and costs
        # several times more, and queries snapshot every task they return.
        return Task(
            self.uuid, self.name, self.state, self.args, self.kwargs, self.worker, self.queue,
            self.routing_key, self.sent, self.received, self.started, self.finished,
            self.retried, self.runtime, self.retries, self.exception, self.traceback,
            self.result, self.parent_id, self.root_id, self.eta, self.expires,
            self.terminated, self.signum, self.state_ts,
        )  # fmt: skip

    @property
    def exception_type(self) -> str | None:
        """``ValueError`` for ``ValueError('boom')``; the exception text up to its '('."""
        return exception_type_of(self.exception)

    def runtime_so_far(self, now: float) -> float | None:
        if self.runtime is not None:
            return self.runtime
        if self.started is not None:
            end = self.finished if self.finished is not None else now
            return max(0.0, end - self.started)
        return None

    def as_dict(self) -> dict[str, Any]:
        """Flower's ``Task.as_dict()`` shape where the names coincide, plus our own fields."""
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(slots=True)
class Worker:
    hostname: str
    freq: float = DEFAULT_HEARTBEAT_FREQ
    last_heartbeat: float | None = None  # local receive time of the last online/heartbeat event
    offline_at: float | None = None  # a worker-offline event (graceful shutdown) arrived
    first_seen: float = 0.0
    active: int | None = None
    processed: int | None = None
    loadavg: tuple[float, ...] | None = None
    sw_ident: str | None = None
    sw_ver: str | None = None
    sw_sys: str | None = None
    pid: int | None = None
    # From ``inspect stats`` / ``active_queues`` (events do not carry them).
    pool: str | None = None
    concurrency: int | None = None
    queues: tuple[str, ...] = ()

    def snapshot(self) -> Worker:
        return copy.copy(self)

    def is_online(self, now: float, expire_factor: float = HEARTBEAT_EXPIRE_FACTOR) -> bool:
        """Judged by heartbeat expiry: a killed worker never sends worker-offline."""
        if self.last_heartbeat is None:
            return False
        if self.offline_at is not None and self.offline_at >= self.last_heartbeat:
            return False
        return now < self.last_heartbeat + self.freq * expire_factor

    def expires_at(self, expire_factor: float = HEARTBEAT_EXPIRE_FACTOR) -> float | None:
        if self.last_heartbeat is None:
            return None
        return self.last_heartbeat + self.freq * expire_factor


@dataclass(frozen=True, slots=True)
class FailureSummary:
    """Failures within a window: the total, counts by exception type and by task name, and
    the newest ones (up to a limit) as records."""

    total: int
    newest: list[Task]
    by_type: dict[str, int]
    by_name: dict[str, int]


def summarize_failures(failures: Sequence[Task], limit: int) -> FailureSummary:
    """The summary of ``failures`` given newest first (for stores without a faster path)."""
    by_type: dict[str, int] = {}
    by_name: dict[str, int] = {}
    for task in failures:
        kind = task.exception_type or "unknown"
        by_type[kind] = by_type.get(kind, 0) + 1
        name = task.name or "unknown"
        by_name[name] = by_name.get(name, 0) + 1
    return FailureSummary(len(failures), list(failures[: max(0, limit)]), by_type, by_name)


# A task is "well past its own p99" at 3x it, given enough history for p99 to mean something,
# and only once it has run long enough for an on-call engineer to care. One judgement, shared
# by `/celery stuck` and the stuck-task alert so they never disagree about a task.
P99_FACTOR = 3.0
MIN_HISTORY_RUNS = 20
MIN_OUTLIER_RUNTIME = 30.0


@dataclass(frozen=True, slots=True)
class RuntimeStats:
    """Runtime percentiles over the most recent successful runs of one task name."""

    name: str
    count: int
    p50: float
    p95: float
    p99: float
    max: float

    @property
    def p99_trusted(self) -> bool:
        """Enough runs for the p99 to mean something."""
        return self.count >= MIN_HISTORY_RUNS

    def far_past_p99(self, runtime: float) -> bool:
        return (
            self.p99_trusted and runtime >= MIN_OUTLIER_RUNTIME and runtime >= P99_FACTOR * self.p99
        )


@dataclass(slots=True)
class StreamHealth:
    """How fresh and how complete the picture is."""

    last_event_at: float | None = None  # local time the newest event arrived
    events_total: int = 0
    events_by_type: dict[str, int] = field(default_factory=dict)
    malformed: int = 0
    tasks_evicted: int = 0
    workers_evicted: int = 0
    # Filled by the consumer, not the state:
    connected: bool = False
    broker: str = ""
    reconnects: int = 0
    disconnects_by_server: int = 0  # e.g. Redis closed a subscriber that fell behind: events lost
    # Changes a writer applied but never wrote to the shared store (it lost the ingest lease
    # while the store was unreachable, and its successor writes now): events lost too.
    changes_lost: int = 0
    last_error: str | None = None
    lag_events: int = 0  # received from the broker but not yet applied
    # Dropped messages and events per reason (a small fixed set: chatbot.consumer.DROP_REASONS),
    # counted by the consumer; ``malformed`` is their total plus what the store refused.
    malformed_by_reason: dict[str, int] = field(default_factory=dict)
    intake_restarts: int = 0  # the reader or applier thread died and was restarted
    intake_problem: str | None = None  # intake dead or stalled (then /healthz answers 503)
    events_dropped: int = 0  # messages received and then lost locally (a reader that died)
    last_loss_at: float | None = None  # local time of the latest cut-off or drop

    def snapshot(self) -> StreamHealth:
        clone = copy.copy(self)
        clone.events_by_type = dict(self.events_by_type)
        clone.malformed_by_reason = dict(self.malformed_by_reason)
        return clone


# Flower's default runtime histogram buckets (prometheus_client's defaults), in seconds.
RUNTIME_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)


@dataclass(slots=True)
class RuntimeHistogram:
    """Cumulative-ready bucket counts (one per RUNTIME_BUCKETS bound, plus +Inf), sum, count."""

    buckets: list[int] = field(default_factory=lambda: [0] * (len(RUNTIME_BUCKETS) + 1))
    total: float = 0.0
    count: int = 0


@dataclass(slots=True)
class FleetCounters:
    """Counters behind /metrics, labelled as Flower labels them (bounded label sets)."""

    events: dict[tuple[str, str, str], int] = field(default_factory=dict)  # worker, type, task
    runtimes: dict[tuple[str, str], RuntimeHistogram] = field(default_factory=dict)  # worker, task
    labels_dropped: int = 0
