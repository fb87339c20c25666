"""Alert rules: pure functions from a picture of the fleet to the conditions that hold now.

Everything here is a function of plain data (:class:`FleetFacts`, gathered by
:mod:`chatbot.alerts.facts`), the settings and the time: no store, no broker, no Slack. That is
what lets the rules be tested on synthetic data and the lifecycle be tested without rules.

Each condition has a stable key (``backlog:<queue>``, ``failures:<task name>``,
``stuck:<task id>``, ``worker:<hostname>``, ``stream:silent``, ``loss:events``): the lifecycle
groups every check's findings under it, so one problem is one Slack message however long it
lasts.

Not knowing is not the same as being fine. An open alert whose state cannot be judged this
check (an unreadable queue length, a task or worker the store no longer holds right after a
restart, a store fed by a silent event stream) is *held*: neither updated nor resolved.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from chatbot.broker import QueueLength
from chatbot.config import Settings
from chatbot.failures import group_failures
from chatbot.model import (
    HEARTBEAT_EXPIRE_FACTOR,
    STARTED,
    RuntimeStats,
    StreamHealth,
    Task,
    Worker,
)

# -- kinds, keys, severities ---------------------------------------------------------------------
BACKLOG = "backlog"
FAILURES = "failures"
STUCK = "stuck"
WORKER = "worker"
STREAM = "stream"
LOSS = "loss"
KINDS = (BACKLOG, FAILURES, STUCK, WORKER, STREAM, LOSS)
STREAM_SILENT_KEY = "stream:silent"
EVENT_LOSS_KEY = "loss:events"

WARNING = "warning"
CRITICAL = "critical"
SEVERITY_RANK = {WARNING: 1, CRITICAL: 2}

# -- tuning (kept next to the rules they shape) --------------------------------------------------
# A backlog this many times the threshold is critical rather than a warning.
BACKLOG_CRITICAL_FACTOR = 10
# A backlog update is worth a thread reply once its length moved this much since the last one.
BACKLOG_CHANGE_FRACTION = 0.25
# Below this many messages per minute in either direction a queue counts as steady.
STEADY_RATE = 0.5
FAILURE_CRITICAL_FACTOR = 3
FAILURE_CHANGE_FRACTION = 0.5
TOP_EXCEPTIONS = 5
MAX_WORKERS_LISTED = 10
# A stuck task earns a thread reply each time its runtime doubles: often early, rarely later.
STUCK_CHANGE_FACTOR = 2.0
STREAM_CHANGE_FACTOR = 2.0
# Events lost this recently keep the loss alert open (and /healthz degraded); a quarter of an
# hour without a new loss resolves it. Loss is an occurrence, not a state: without a quiet
# period, the alert would resolve at the next check and reopen at the next cut-off.
LOSS_QUIET_AFTER = 900.0
# A worker silent for this long is no longer alerted on: a long-gone autoscaled host is history.
WORKER_FORGET_AFTER = 86400.0


def alert_key(kind: str, subject: str) -> str:
    return f"{kind}:{subject}"


def split_key(key: str) -> tuple[str, str]:
    kind, _, subject = key.partition(":")
    return kind, subject


def _json_safe(value: Mapping[str, Any]) -> dict[str, Any]:
    # Records go through JSON in the Redis backend: compare and store what comes back from it,
    # so tuples vs lists never make two equal figure sets look different.
    loaded: dict[str, Any] = json.loads(json.dumps(dict(value)))
    return loaded


# -- figures: what each notice shows -------------------------------------------------------------
@dataclass(frozen=True)
class BacklogFigures:
    queue: str
    length: int
    threshold: int
    trend: str  # growing | draining | steady | unknown
    rate_per_min: float | None  # net change of the length, from the last checks' samples
    trend_span: float | None  # seconds the trend was measured over
    consumed_per_min: float | None  # tasks workers took from this queue (events), if known
    consumers: int | None  # RabbitMQ's count, or online workers known to consume the queue
    drain_eta: float | None  # seconds until empty at the current rate; None: not draining
    eta_basis: str | None  # "trend" (net rate) or "consumption" (no trend yet)


@dataclass(frozen=True)
class ExceptionSample:
    """One failure group (:mod:`chatbot.failures`: same exception type and message shape)."""

    type: str
    count: int
    example_id: str
    example: str | None  # the exception text of the example, as retained (already clipped)
    key: str = ""  # the group's key, as `/celery failed --group KEY` takes it


@dataclass(frozen=True)
class FailureFigures:
    name: str
    count: int
    threshold: int
    window: float
    exceptions: tuple[ExceptionSample, ...]
    other_exception_types: int
    workers: tuple[str, ...]
    other_workers: int
    retained: int  # failures still held by the store (eviction may have taken some)
    first_at: float | None
    last_at: float | None


@dataclass(frozen=True)
class StuckFigures:
    uuid: str
    name: str | None
    worker: str | None
    runtime: float
    started: float | None
    args: str | None
    kwargs: str | None
    reason: str  # "threshold" | "p99"
    stuck_after: float
    p99: float | None
    history_runs: int | None
    retries: int


@dataclass(frozen=True)
class WorkerFigures:
    hostname: str
    last_heartbeat: float | None
    expired_at: float | None
    freq: float
    active: int | None  # tasks it reported running in its last heartbeat
    processed: int | None
    online_workers: int
    known_workers: int


@dataclass(frozen=True)
class StreamFigures:
    last_event_at: float | None
    silent_for: float
    silence_after: float
    expected_workers: int
    consumer_connected: bool | None  # None: no consumer reported (a bare store)
    consumer_error: str | None
    broker: str | None


@dataclass(frozen=True)
class LossFigures:
    cutoffs: int  # times the broker closed the subscription (it fell behind): since start
    dropped: int  # messages received and then lost locally (a reader that died): since start
    last_loss_at: float  # local time of the latest cut-off or drop
    quiet_after: float  # seconds without a new loss before the alert resolves
    lag_events: int  # received, not yet applied, as of this check
    broker: str | None


Figures = (
    BacklogFigures | FailureFigures | StuckFigures | WorkerFigures | StreamFigures | LossFigures
)


@dataclass(frozen=True)
class Condition:
    """One problem that holds now, under its stable key."""

    key: str
    kind: str
    severity: str
    subject: str
    figures: Figures

    def figures_dict(self) -> dict[str, Any]:
        return _json_safe(asdict(self.figures))


@dataclass(frozen=True)
class Evaluation:
    """The outcome of one check.

    ``conditions`` by key; ``held`` are open keys that must be left alone this check (their
    state is unknown); ``notes`` say why an open key that is neither firing nor held cleared.
    ``blind`` is True when the store is not being fed (silent stream or consumer offline).
    """

    conditions: Mapping[str, Condition]
    held: frozenset[str] = frozenset()
    notes: Mapping[str, str] = field(default_factory=dict)
    blind: bool = False


@dataclass(frozen=True)
class FleetFacts:
    """What one check knows, gathered up front so the rules stay pure."""

    now: float
    workers: Sequence[Worker] = ()
    active: Sequence[Task] = ()
    runtime_stats: Mapping[str, RuntimeStats] = field(default_factory=dict)
    failure_counts: Mapping[str, int] = field(default_factory=dict)
    recent_failures: Mapping[str, Sequence[Task]] = field(default_factory=dict)
    health: StreamHealth = field(default_factory=StreamHealth)
    # When this process started watching: bounds "no events since" and the post-restart grace.
    watching_since: float = 0.0
    queues: Sequence[QueueLength] | None = None  # None: the broker was not read at all
    queue_error: str | None = None
    queue_history: Mapping[str, Sequence[tuple[float, int]]] = field(default_factory=dict)
    consumed: Mapping[str, int] = field(default_factory=dict)  # tasks received per queue
    consumption_span: float = 0.0  # seconds ``consumed`` was counted over
    tasks: Mapping[str, Task | None] = field(default_factory=dict)  # tasks behind open stuck keys
    expire_factor: float = HEARTBEAT_EXPIRE_FACTOR


# -- backlog --------------------------------------------------------------------------------------
def queue_trend(
    samples: Sequence[tuple[float, int]],
) -> tuple[str, float | None, float | None]:
    """``(trend, net messages per minute, span)`` from ``(time, length)`` samples, oldest first."""
    if len(samples) < 2:
        return "unknown", None, None
    (t0, first), (t1, last) = samples[0], samples[-1]
    span = t1 - t0
    if span < 1.0:
        return "unknown", None, None
    rate = (last - first) / span * 60.0
    if rate > STEADY_RATE:
        return "growing", rate, span
    if rate < -STEADY_RATE:
        return "draining", rate, span
    return "steady", rate, span


def _queue_consumers(queue: QueueLength, workers: Sequence[Worker], now: float) -> int | None:
    if queue.consumers is not None:
        return queue.consumers
    if not any(w.queues for w in workers):
        return None  # nobody asked the workers which queues they consume
    return sum(1 for w in workers if queue.name in w.queues and w.is_online(now))


def backlog_conditions(
    queues: Sequence[QueueLength],
    *,
    threshold: int,
    now: float,
    history: Mapping[str, Sequence[tuple[float, int]]] | None = None,
    consumed: Mapping[str, int] | None = None,
    consumption_span: float = 0.0,
    workers: Sequence[Worker] = (),
) -> list[Condition]:
    """A condition per queue at or above ``threshold``; unknown lengths never make one."""
    found: list[Condition] = []
    for queue in queues:
        if queue.messages is None or queue.messages < threshold:
            continue
        samples = list((history or {}).get(queue.name, ()))
        if not samples or samples[-1][0] < now:
            samples.append((now, queue.messages))
        trend, rate, span = queue_trend(samples)
        consumed_per_min: float | None = None
        if consumed is not None and queue.name in consumed and consumption_span >= 1.0:
            consumed_per_min = consumed[queue.name] / consumption_span * 60.0
        eta: float | None = None
        basis: str | None = None
        if rate is not None and trend == "draining":
            eta, basis = queue.messages / -rate * 60.0, "trend"
        elif rate is None and consumed_per_min:
            # No trend yet: assume nothing new arrives, the best guess a first check has.
            eta, basis = queue.messages / consumed_per_min * 60.0, "consumption"
        figures = BacklogFigures(
            queue=queue.name,
            length=queue.messages,
            threshold=threshold,
            trend=trend,
            rate_per_min=None if rate is None else round(rate, 2),
            trend_span=None if span is None else round(span, 1),
            consumed_per_min=None if consumed_per_min is None else round(consumed_per_min, 2),
            consumers=_queue_consumers(queue, workers, now),
            drain_eta=None if eta is None else round(eta, 1),
            eta_basis=basis,
        )
        severity = CRITICAL if queue.messages >= threshold * BACKLOG_CRITICAL_FACTOR else WARNING
        found.append(
            Condition(alert_key(BACKLOG, queue.name), BACKLOG, severity, queue.name, figures)
        )
    return found


# -- failure spikes -------------------------------------------------------------------------------
def failure_conditions(
    counts: Mapping[str, int],
    recent: Mapping[str, Sequence[Task]],
    *,
    threshold: int,
    window: float,
) -> list[Condition]:
    """A condition per task name with ``threshold`` or more failures within ``window``."""
    found: list[Condition] = []
    for name, count in sorted(counts.items()):
        if count < threshold:
            continue
        failures = sorted(
            recent.get(name, ()), key=lambda t: t.finished or t.state_ts, reverse=True
        )
        # Grouped by fingerprint, as `/celery failed` groups them: one line per failure
        # (exception type and message shape), not per exception type.
        groups = group_failures(failures)
        samples = tuple(
            ExceptionSample(g.exception_type, g.count, g.example.uuid, g.example.exception, g.key)
            for g in groups[:TOP_EXCEPTIONS]
        )
        ranked = groups
        workers = sorted({t.worker for t in failures if t.worker})
        times = [t.finished for t in failures if t.finished is not None]
        figures = FailureFigures(
            name=name,
            count=count,
            threshold=threshold,
            window=window,
            exceptions=samples,
            other_exception_types=max(0, len(ranked) - TOP_EXCEPTIONS),
            workers=tuple(workers[:MAX_WORKERS_LISTED]),
            other_workers=max(0, len(workers) - MAX_WORKERS_LISTED),
            retained=len(failures),
            first_at=min(times) if times else None,
            last_at=max(times) if times else None,
        )
        severity = CRITICAL if count >= threshold * FAILURE_CRITICAL_FACTOR else WARNING
        found.append(Condition(alert_key(FAILURES, name), FAILURES, severity, name, figures))
    return found


# -- stuck tasks ----------------------------------------------------------------------------------
def stuck_reason(
    runtime: float, stats: RuntimeStats | None, stuck_after: float
) -> tuple[str | None, float | None]:
    """``("threshold" | "p99" | None, p99)`` for a task that has run ``runtime`` seconds."""
    p99 = stats.p99 if stats is not None and stats.p99_trusted else None
    if runtime >= stuck_after:
        return "threshold", p99
    if stats is not None and stats.far_past_p99(runtime):
        return "p99", p99
    return None, p99


def _offline_hosts(workers: Iterable[Worker], now: float, expire_factor: float) -> set[str]:
    return {w.hostname for w in workers if not w.is_online(now, expire_factor)}


def stuck_conditions(
    active: Sequence[Task],
    *,
    stuck_after: float,
    now: float,
    runtime_stats: Mapping[str, RuntimeStats] | None = None,
    workers: Sequence[Worker] = (),
    expire_factor: float = HEARTBEAT_EXPIRE_FACTOR,
) -> list[Condition]:
    """A condition per running task past ``stuck_after`` or well past its name's p99.

    A task whose worker is known to be offline is not "running": the worker alert covers it.
    """
    offline = _offline_hosts(workers, now, expire_factor)
    found: list[Condition] = []
    for task in active:
        if task.state != STARTED or (task.worker is not None and task.worker in offline):
            continue
        runtime = task.runtime_so_far(now)
        if runtime is None:
            continue
        stats = (runtime_stats or {}).get(task.name) if task.name else None
        reason, p99 = stuck_reason(runtime, stats, stuck_after)
        if reason is None:
            continue
        figures = StuckFigures(
            uuid=task.uuid,
            name=task.name,
            worker=task.worker,
            runtime=round(runtime, 1),
            started=task.started,
            args=task.args,
            kwargs=task.kwargs,
            reason=reason,
            stuck_after=stuck_after,
            p99=p99,
            history_runs=stats.count if stats is not None else None,
            retries=task.retries,
        )
        found.append(Condition(alert_key(STUCK, task.uuid), STUCK, WARNING, task.uuid, figures))
    return found


# -- workers --------------------------------------------------------------------------------------
def _shut_down_cleanly(worker: Worker) -> bool:
    return worker.offline_at is not None and worker.offline_at >= (worker.last_heartbeat or 0.0)


def worker_conditions(
    workers: Sequence[Worker], *, now: float, expire_factor: float = HEARTBEAT_EXPIRE_FACTOR
) -> list[Condition]:
    """A condition per worker whose heartbeats expired (a SIGKILL sends no worker-offline).

    A worker that said goodbye (worker-offline after its last heartbeat) left on purpose.
    """
    online = sum(1 for w in workers if w.is_online(now, expire_factor))
    found: list[Condition] = []
    for worker in workers:
        if worker.is_online(now, expire_factor) or _shut_down_cleanly(worker):
            continue
        if worker.last_heartbeat is None or now - worker.last_heartbeat > WORKER_FORGET_AFTER:
            continue
        figures = WorkerFigures(
            hostname=worker.hostname,
            last_heartbeat=worker.last_heartbeat,
            expired_at=worker.expires_at(expire_factor),
            freq=worker.freq,
            active=worker.active,
            processed=worker.processed,
            online_workers=online,
            known_workers=len(workers),
        )
        severity = CRITICAL if online == 0 else WARNING
        found.append(
            Condition(
                alert_key(WORKER, worker.hostname), WORKER, severity, worker.hostname, figures
            )
        )
    return found


# -- the event stream -----------------------------------------------------------------------------
def expected_workers(workers: Sequence[Worker], at: float, expire_factor: float) -> list[Worker]:
    """Workers that were alive at ``at`` and did not say goodbye: they should still be heard."""
    return [w for w in workers if w.is_online(at, expire_factor) and not _shut_down_cleanly(w)]


def stream_condition(
    health: StreamHealth,
    workers: Sequence[Worker],
    *,
    silence_after: float,
    watching_since: float,
    now: float,
    expire_factor: float = HEARTBEAT_EXPIRE_FACTOR,
) -> Condition | None:
    """``stream:silent``: no events at all for ``silence_after`` while workers were known.

    Events disabled, or the consumer lost the broker: every other rule then reasons on a
    picture that no longer changes, which is exactly when nobody notices.
    """
    last = health.last_event_at
    since = last if last is not None else watching_since
    silent_for = now - since
    if silent_for < silence_after:
        return None
    # Judged at the moment the stream went quiet: a worker killed then was still expected.
    expected = (
        expected_workers(workers, since, expire_factor)
        if last is not None
        else [w for w in workers if not _shut_down_cleanly(w)]  # known only from a snapshot
    )
    if not expected:
        return None
    figures = StreamFigures(
        last_event_at=last,
        silent_for=round(silent_for, 1),
        silence_after=silence_after,
        expected_workers=len(expected),
        consumer_connected=health.connected if health.broker else None,
        consumer_error=health.last_error if health.broker else None,
        broker=health.broker or None,
    )
    return Condition(STREAM_SILENT_KEY, STREAM, CRITICAL, "silent", figures)


def recent_loss(health: StreamHealth, now: float, quiet_after: float = LOSS_QUIET_AFTER) -> bool:
    """Were events lost (a cut-off, a dropped buffer) within the last ``quiet_after`` seconds?"""
    lost = health.disconnects_by_server or health.events_dropped
    last = health.last_loss_at
    return bool(lost) and last is not None and now - last < quiet_after


def loss_report(health: StreamHealth, now: float) -> dict[str, Any]:
    """What ``/healthz`` says about lost events: ``degraded`` while a loss is recent.

    Degraded, not failing: an orchestrator that restarts a bot which is merely overloaded
    loses more events, not fewer. The count and the time stay in the report after it clears.
    """
    last = health.last_loss_at
    degraded = recent_loss(health, now)
    report: dict[str, Any] = {
        "degraded": degraded,
        "event_loss": {
            "cutoffs": health.disconnects_by_server,
            "dropped": health.events_dropped,
            "last_at": last,
            "last_age": None if last is None else round(now - last, 3),
        },
    }
    if degraded:
        report["degraded_reason"] = (
            f"events were lost in the last {_seconds(LOSS_QUIET_AFTER)}: the broker closed the"
            f" event subscription {health.disconnects_by_server} time(s),"
            f" {health.events_dropped} received message(s) dropped"
        )
    return report


def loss_condition(
    health: StreamHealth, *, now: float, quiet_after: float = LOSS_QUIET_AFTER
) -> Condition | None:
    """``loss:events``: events were lost within ``quiet_after`` (the picture has holes).

    A cut-off means the broker closed a subscriber that fell behind (Redis's
    ``client-output-buffer-limit pubsub``): what it published until the reconnect is gone.
    """
    if not recent_loss(health, now, quiet_after) or health.last_loss_at is None:
        return None
    figures = LossFigures(
        cutoffs=health.disconnects_by_server,
        dropped=health.events_dropped,
        last_loss_at=health.last_loss_at,
        quiet_after=quiet_after,
        lag_events=health.lag_events,
        broker=health.broker or None,
    )
    return Condition(EVENT_LOSS_KEY, LOSS, CRITICAL, "events", figures)


def consumer_offline(health: StreamHealth) -> bool:
    """The consumer reported itself (``broker`` is set) and is not connected."""
    return bool(health.broker) and not health.connected


# -- when an update is worth a thread reply --------------------------------------------------------
def significant_change(kind: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    """A short code naming what changed enough to tell the channel, or None.

    Debouncing is relative to what was last *posted*, so a slow drift adds up to an update.
    """
    if kind == BACKLOG:
        length_then, length_now = int(old.get("length") or 0), int(new.get("length") or 0)
        if abs(length_now - length_then) >= max(1.0, BACKLOG_CHANGE_FRACTION * length_then):
            return "grew" if length_now > length_then else "shrank"
        return None
    if kind == FAILURES:
        count_then, count_now = int(old.get("count") or 0), int(new.get("count") or 0)
        # A failure group not reported before (figures stored before groups had keys name
        # their exception type only).
        old_groups = {e.get("key") or e["type"] for e in old.get("exceptions") or ()}
        if any((e.get("key") or e["type"]) not in old_groups for e in new.get("exceptions") or ()):
            return "new_exception"
        if count_now > count_then and count_now >= count_then * (1 + FAILURE_CHANGE_FRACTION):
            return "more"
        return None
    if kind == STUCK:
        runtime_then, runtime_now = float(old.get("runtime") or 0), float(new.get("runtime") or 0)
        return "longer" if 0 < runtime_then * STUCK_CHANGE_FACTOR <= runtime_now else None
    if kind == STREAM:
        if old.get("consumer_connected") != new.get("consumer_connected"):
            return "consumer"
        silent_then, silent_now = (
            float(old.get("silent_for") or 0),
            float(new.get("silent_for") or 0),
        )
        return "longer" if 0 < silent_then * STREAM_CHANGE_FACTOR <= silent_now else None
    if kind == LOSS:
        then = int(old.get("cutoffs") or 0) + int(old.get("dropped") or 0)
        now = int(new.get("cutoffs") or 0) + int(new.get("dropped") or 0)
        return "more" if now > then else None
    return None  # worker: nothing changes while it is gone but the severity (handled apart)


# -- one check ------------------------------------------------------------------------------------
def evaluate(
    facts: FleetFacts, settings: Settings, open_alerts: Mapping[str, float] | None = None
) -> Evaluation:
    """All conditions of one check, and what to make of alerts that are open but not firing.

    ``open_alerts`` maps the keys of open alerts to the time each was opened: an alert opened
    before this process started watching is not resolved on evidence this process cannot have
    yet (a memory store that restarted empty knows no failures and no tasks).
    """
    now = facts.now
    opened = dict(open_alerts or {})
    conditions: dict[str, Condition] = {}
    held: set[str] = set()
    notes: dict[str, str] = {}

    stream = stream_condition(
        facts.health,
        facts.workers,
        silence_after=settings.silence_after,
        watching_since=facts.watching_since,
        now=now,
        expire_factor=facts.expire_factor,
    )
    if stream is not None:
        conditions[stream.key] = stream
    elif STREAM_SILENT_KEY in opened:
        notes[STREAM_SILENT_KEY] = "events are arriving again"
    loss = loss_condition(facts.health, now=now)
    if loss is not None:
        conditions[loss.key] = loss
    elif EVENT_LOSS_KEY in opened:
        notes[EVENT_LOSS_KEY] = f"no events lost for {_seconds(LOSS_QUIET_AFTER)}"
    # A store nobody feeds still looks like a fleet: every worker "expires", no task finishes
    # and failures age out of the window. Judge none of that until events flow again.
    blind = stream is not None or consumer_offline(facts.health)

    # Backlog: the broker is read directly, so it is judged even when blind.
    if facts.queues is not None:
        for condition in backlog_conditions(
            facts.queues,
            threshold=settings.backlog_threshold,
            now=now,
            history=facts.queue_history,
            consumed=facts.consumed,
            consumption_span=facts.consumption_span,
            workers=facts.workers,
        ):
            conditions[condition.key] = condition
    lengths = {q.name: q for q in facts.queues or ()}
    for key in opened:
        kind, subject = split_key(key)
        if kind != BACKLOG or key in conditions:
            continue
        queue = lengths.get(subject)
        if queue is not None and queue.exists is False:
            notes[key] = "the queue no longer exists on the broker"
        elif queue is None or queue.messages is None:
            held.add(key)  # unknown is never "drained"
        else:
            notes[key] = (
                f"{queue.messages} waiting, under the threshold of {settings.backlog_threshold}"
            )

    store_kinds = (FAILURES, STUCK, WORKER)
    if blind:
        held.update(k for k in opened if split_key(k)[0] in store_kinds)
        return Evaluation(conditions, frozenset(held), notes, blind=True)

    for condition in (
        *failure_conditions(
            facts.failure_counts,
            facts.recent_failures,
            threshold=settings.failure_spike_threshold,
            window=settings.failure_window,
        ),
        *stuck_conditions(
            facts.active,
            stuck_after=settings.stuck_after,
            now=now,
            runtime_stats=facts.runtime_stats,
            workers=facts.workers,
            expire_factor=facts.expire_factor,
        ),
        *worker_conditions(facts.workers, now=now, expire_factor=facts.expire_factor),
    ):
        conditions[condition.key] = condition

    # How long a fresh process needs before absence means "gone" rather than "not heard yet".
    settle = facts.watching_since + settings.silence_after
    workers = {w.hostname: w for w in facts.workers}
    for key, opened_at in opened.items():
        if key in conditions or key in held or key in notes:
            continue
        kind, subject = split_key(key)
        inherited = opened_at < facts.watching_since
        if kind == FAILURES:
            count = facts.failure_counts.get(subject, 0)
            if inherited and now < facts.watching_since + settings.failure_window:
                held.add(key)  # this process has not watched a whole window yet
            else:
                notes[key] = (
                    f"{count} in the last {_seconds(settings.failure_window)},"
                    f" under the threshold of {settings.failure_spike_threshold}"
                )
        elif kind == WORKER:
            worker = workers.get(subject)
            if worker is None:
                if now < settle:
                    held.add(key)
                else:
                    notes[key] = "no longer in the retained picture of the fleet"
            elif worker.is_online(now, facts.expire_factor):
                notes[key] = "heartbeats again"
            elif _shut_down_cleanly(worker):
                notes[key] = "it shut down cleanly (worker-offline received)"
            else:
                notes[key] = "silent for over a day: no longer tracked"
        elif kind == STUCK:
            task = facts.tasks.get(subject)
            if task is None:
                if now < settle:
                    held.add(key)
                else:
                    notes[key] = "the task is no longer retained"
            elif task.state != STARTED:
                notes[key] = f"the task is now {task.state}"
            elif task.worker is not None and task.worker in _offline_hosts(
                facts.workers, now, facts.expire_factor
            ):
                notes[key] = "its worker went offline"
            else:
                notes[key] = "it is no longer past the threshold"
        elif kind not in KINDS:
            notes[key] = "no rule produces this alert any more"
    return Evaluation(conditions, frozenset(held), notes, blind=False)


def _seconds(value: float) -> str:
    whole = int(value)
    if whole % 3600 == 0 and whole >= 3600:
        return f"{whole // 3600}h"
    if whole % 60 == 0 and whole >= 60:
        return f"{whole // 60}m"
    return f"{whole}s"
