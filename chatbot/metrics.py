"""Prometheus text exposition of the fleet and of the bot itself.

Fleet metrics keep Flower's names and labels (``flower_events_total``,
``flower_task_runtime_seconds``, ``flower_worker_online``,
``flower_worker_number_of_currently_executing_tasks``) so existing dashboards keep working,
with one deliberate difference: ``flower_worker_online`` is judged by heartbeat expiry, so a
killed worker drops to 0 (Flower's never does). Queue lengths and the bot's own health are
new, under ``celery_chatops_``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from chatbot.model import RUNTIME_BUCKETS, StreamHealth
from chatbot.store import FleetStore


class QueueLengthLike(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def messages(self) -> int | None: ...


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Mapping[str, str]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs.items()) + "}"


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value)) if isinstance(value, float) else str(value)


class _Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        self.lines.append(f"{name}{_labels(labels or {})} {_number(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render_metrics(
    *,
    store: FleetStore,
    stream: StreamHealth,
    queues: Sequence[QueueLengthLike],
    now: float,
    extra: Iterable[Mapping[str, Any]] = (),
) -> str:
    out = _Exposition()
    counters = store.fleet_counters()

    out.family("flower_events_total", "counter", "Number of task events, as Flower counts them.")
    for (host, kind, task), count in sorted(counters.events.items()):
        out.sample("flower_events_total", count, {"worker": host, "type": kind, "task": task})

    name = "flower_task_runtime_seconds"
    out.family(name, "histogram", "Task runtime of succeeded tasks, as Flower measures it.")
    for (host, task), histogram in sorted(counters.runtimes.items()):
        cumulative = 0
        for bound, count in zip((*RUNTIME_BUCKETS, float("inf")), histogram.buckets, strict=True):
            cumulative += count
            labels = {"worker": host, "task": task, "le": _number(float(bound))}
            out.sample(f"{name}_bucket", cumulative, labels)
        out.sample(f"{name}_sum", histogram.total, {"worker": host, "task": task})
        out.sample(f"{name}_count", histogram.count, {"worker": host, "task": task})

    workers = store.workers()
    out.family(
        "flower_worker_online",
        "gauge",
        "1 while the worker's heartbeats arrive (expiry-based: a killed worker reads 0).",
    )
    for worker in workers:
        out.sample(
            "flower_worker_online", 1 if worker.is_online(now) else 0, {"worker": worker.hostname}
        )
    name = "flower_worker_number_of_currently_executing_tasks"
    out.family(name, "gauge", "Tasks the worker reported running in its last heartbeat.")
    for worker in workers:
        if worker.active is not None:
            out.sample(name, worker.active, {"worker": worker.hostname})

    out.family(
        "celery_chatops_queue_length",
        "gauge",
        "Messages waiting in a broker queue (absent when the broker could not be read).",
    )
    for queue in queues:
        if queue.messages is not None:
            out.sample("celery_chatops_queue_length", queue.messages, {"queue": queue.name})
    out.family(
        "celery_chatops_queue_length_unknown",
        "gauge",
        "1 for a watched queue whose length could not be read.",
    )
    for queue in queues:
        if queue.messages is None:
            out.sample("celery_chatops_queue_length_unknown", 1, {"queue": queue.name})

    out.family("celery_chatops_tasks_retained", "gauge", "Task records retained, by state.")
    for state, count in sorted(store.counts_by_state().items()):
        out.sample("celery_chatops_tasks_retained", count, {"state": state})

    simple: list[tuple[str, str, str, float]] = [
        ("celery_chatops_events_ingested_total", "counter", "Events applied to the state.",
         stream.events_total),
        ("celery_chatops_events_malformed_total", "counter",
         "Events or broker messages dropped as malformed.", stream.malformed),
        ("celery_chatops_tasks_evicted_total", "counter",
         "Task records evicted to stay within CHATOPS_MAX_TASKS.", stream.tasks_evicted),
        ("celery_chatops_consumer_reconnects_total", "counter",
         "Reconnects of the event consumer to the broker.", stream.reconnects),
        ("celery_chatops_event_loss_detected_total", "counter",
         "Times the broker closed the event subscription (events lost).",
         stream.disconnects_by_server),
        ("celery_chatops_consumer_connected", "gauge",
         "1 while the event consumer is connected.", 1 if stream.connected else 0),
        ("celery_chatops_consumer_lag_events", "gauge",
         "Events received from the broker and not yet applied.", stream.lag_events),
        ("celery_chatops_metric_labels_dropped_total", "counter",
         "Label sets not tracked because of the cardinality cap.", counters.labels_dropped),
    ]
    if stream.last_event_at is not None:
        age = max(0.0, now - stream.last_event_at)
        simple.append(("celery_chatops_last_event_age_seconds", "gauge",
                       "Seconds since the newest event arrived.", age))
    for metric, kind, help_text, value in simple:
        out.family(metric, kind, help_text)
        out.sample(metric, value)

    slack_errors: dict[str, int] = {}
    for facts in extra:
        for code, count in dict(facts.get("slack_errors", {})).items():
            slack_errors[str(code)] = slack_errors.get(str(code), 0) + int(count)
    out.family("celery_chatops_slack_errors_total", "counter", "Slack Web API errors, by code.")
    for code, count in sorted(slack_errors.items()):
        out.sample("celery_chatops_slack_errors_total", count, {"code": code})
    return out.text()
