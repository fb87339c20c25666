"""The fleet on ``GET /metrics``: a prometheus_client collector over one reading per scrape.

Fleet metrics keep Flower's names and labels (``flower_events_total``,
``flower_task_runtime_seconds``, ``flower_worker_online``,
``flower_worker_number_of_currently_executing_tasks``) so existing dashboards keep working,
with one deliberate difference: ``flower_worker_online`` is judged by heartbeat expiry, so a
killed worker drops to 0 (Flower's never does). Queue lengths and the bot's own health are
new, under ``celery_chatops_``.

Everything the collector shows comes from one :class:`FleetReading`, taken once per scrape
through the callable it was given. The store fills the counters as events arrive
(``FleetCounters``, bounded by the store's label-set cap), so a scrape only folds and formats.

Bounded label sets (issue 12). prometheus_client formats each sample for several
microseconds, so a scrape costs what the number of samples costs: Flower's label sets, kept
as they are, were ~22k samples at 100k tasks of a 20-worker, 50-name fleet (~200 ms of the
ingest process's core on this box; ``python -m bench.metrics_scrape``), and they grow with
every pod name. Two folds, with Flower's metric names kept:

- ``flower_events_total{worker,type,task}``: the ``max_task_names`` most active task names
  (by events counted) keep their own series; the other names are summed into
  ``task="other"``, per worker and type. Totals are unchanged, so ratios (failed / succeeded,
  Flower's shipped alert) and ``sum by (worker)`` read as before.
- ``flower_task_runtime_seconds{task}``: one histogram per task name (the same kept names
  plus ``other``), summed over workers. Per worker and name it was 17 samples times workers
  times names, three quarters of the exposition, for a distribution the workers of one fleet
  share; ``histogram_quantile(..., sum by (le, task) (...))`` reads as before, a query by
  ``worker`` on this one family does not.

With several clusters the collector reads one :class:`FleetReading` per cluster, and every
fleet and ingest family carries a ``cluster`` label first (the folds are per cluster); with one
cluster (no name on its reading) the exposition is exactly the one-cluster one, without it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from chatbot.broker import QueueLength
from chatbot.model import RUNTIME_BUCKETS, FleetCounters, RuntimeHistogram, StreamHealth, Worker
from chatbot.store import FleetStore

# Bucket bounds as label values, rendered once (``le`` strings are what Flower's exposition has).
_LE = tuple(floatToGoString(bound) for bound in (*RUNTIME_BUCKETS, float("inf")))


@dataclass(frozen=True, slots=True)
class FleetReading:
    """Everything one scrape shows about the fleet, read at one moment."""

    counters: FleetCounters
    workers: Sequence[Worker]
    tasks_by_state: Mapping[str, int]
    stream: StreamHealth
    now: float
    queues: Sequence[QueueLength] = ()
    slack_errors: Mapping[str, int] = field(default_factory=dict)
    cluster: str = ""  # the cluster's name when the bot follows several


# What a scrape reads: one reading, or one per cluster.
Readings = FleetReading | Sequence[FleetReading]


def read_fleet(
    store: FleetStore,
    *,
    stream: StreamHealth,
    now: float,
    queues: Sequence[QueueLength] = (),
    extra: Iterable[Mapping[str, Any]] = (),
    cluster: str = "",
) -> FleetReading:
    """A reading from ``store`` plus the facts it does not hold.

    ``extra``: health-source mappings; their ``slack_errors`` (code -> count) are summed.
    """
    slack_errors: dict[str, int] = {}
    for facts in extra:
        for code, count in dict(facts.get("slack_errors", {})).items():
            slack_errors[str(code)] = slack_errors.get(str(code), 0) + int(count)
    return FleetReading(
        counters=store.fleet_counters(),
        workers=store.workers(),
        tasks_by_state=store.counts_by_state(),
        stream=stream,
        now=now,
        queues=queues,
        slack_errors=slack_errors,
        cluster=cluster,
    )


# Task names with series of their own; the rest are summed under OTHER_TASKS (see above).
DEFAULT_MAX_TASK_NAMES = 20
OTHER_TASKS = "other"


class FleetCollector(Collector):
    """A custom collector: families built from ``read()`` at each scrape, never stored."""

    def __init__(
        self, read: Callable[[], Readings], max_task_names: int = DEFAULT_MAX_TASK_NAMES
    ) -> None:
        self.read = read
        self.max_task_names = max_task_names

    def describe(self) -> Iterable[Metric]:
        # The names this collector owns, so a registry refuses a second owner of any of them.
        return list(_families(None, self.max_task_names))

    def collect(self) -> Iterable[Metric]:
        readings = self.read()
        listed = [readings] if isinstance(readings, FleetReading) else list(readings)
        return _families(listed, self.max_task_names)


def fleet_registry(
    read: Callable[[], Readings], max_task_names: int = DEFAULT_MAX_TASK_NAMES
) -> CollectorRegistry:
    """A private registry (never prometheus_client's global one) holding the fleet collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(read, max_task_names))
    return registry


def fold_counters(
    counters: FleetCounters, max_task_names: int
) -> tuple[dict[tuple[str, str, str], int], dict[str, RuntimeHistogram]]:
    """Events per (worker, type, task) and runtimes per task, the task names beyond the
    ``max_task_names`` most active summed under :data:`OTHER_TASKS`."""
    activity: dict[str, int] = {}
    for (_, _, task), count in counters.events.items():
        activity[task] = activity.get(task, 0) + count
    kept = set(sorted(activity, key=lambda name: (-activity[name], name))[:max_task_names])
    events: dict[tuple[str, str, str], int] = {}
    for (host, kind, task), count in counters.events.items():
        key = (host, kind, task if task in kept else OTHER_TASKS)
        events[key] = events.get(key, 0) + count
    runtimes: dict[str, RuntimeHistogram] = {}
    for (_, task), histogram in counters.runtimes.items():
        name = task if task in kept else OTHER_TASKS
        into = runtimes.get(name)
        if into is None:
            runtimes[name] = RuntimeHistogram(list(histogram.buckets), histogram.total,
                                              histogram.count)
            continue
        into.buckets = [a + b for a, b in zip(into.buckets, histogram.buckets, strict=True)]
        into.total += histogram.total
        into.count += histogram.count
    return events, runtimes


def _families(readings: Sequence[FleetReading] | None, max_task_names: int) -> Iterator[Metric]:
    """The fleet's metric families; with ``readings=None`` only their names and types.

    Readings that name their cluster put a ``cluster`` label first on every family but the
    bot-wide Slack errors (taken once, from the first reading).
    """
    named = any(r.cluster for r in readings or ())
    first: tuple[str, ...] = ("cluster",) if named else ()
    events = CounterMetricFamily(
        "flower_events_total",
        "Number of task events, as Flower counts them.",
        labels=(*first, "worker", "type", "task"),
    )
    runtimes = HistogramMetricFamily(
        "flower_task_runtime_seconds",
        "Task runtime of succeeded tasks, as Flower measures it (summed over workers).",
        labels=(*first, "task"),
    )
    online = GaugeMetricFamily(
        "flower_worker_online",
        "1 while the worker's heartbeats arrive (expiry-based: a killed worker reads 0).",
        labels=(*first, "worker"),
    )
    executing = GaugeMetricFamily(
        "flower_worker_number_of_currently_executing_tasks",
        "Tasks the worker reported running in its last heartbeat.",
        labels=(*first, "worker"),
    )
    queue_length = GaugeMetricFamily(
        "celery_chatops_queue_length",
        "Messages waiting in a broker queue (absent when the broker could not be read).",
        labels=(*first, "queue"),
    )
    queue_unknown = GaugeMetricFamily(
        "celery_chatops_queue_length_unknown",
        "1 for a watched queue whose length could not be read.",
        labels=(*first, "queue"),
    )
    retained = GaugeMetricFamily(
        "celery_chatops_tasks_retained",
        "Task records retained, by state.",
        labels=(*first, "state"),
    )
    slack_errors = CounterMetricFamily(
        "celery_chatops_slack_errors_total", "Slack Web API errors, by code.", labels=("code",)
    )
    families: list[Metric] = [
        events, runtimes, online, executing, queue_length, queue_unknown, retained
    ]
    if readings is None:
        yield from families
        yield from _stream_families(None)
        yield slack_errors
        return

    for reading in readings:
        _add_fleet(reading, named, max_task_names, events, runtimes, online, executing)
        head: tuple[str, ...] = (reading.cluster,) if named else ()
        for queue in reading.queues:
            if queue.messages is None:
                queue_unknown.add_metric((*head, queue.name), 1)
            else:
                queue_length.add_metric((*head, queue.name), queue.messages)
        for state, count in sorted(reading.tasks_by_state.items()):
            retained.add_metric((*head, state), count)
    if readings:
        for code, count in sorted(readings[0].slack_errors.items()):
            slack_errors.add_metric((code,), count)
    yield from families
    if named:
        yield from _stream_families_by_cluster(readings)
    else:
        yield from _stream_families(readings[0] if readings else None)
    yield slack_errors


def _add_fleet(
    reading: FleetReading,
    named: bool,
    max_task_names: int,
    events: Metric,
    runtimes: Metric,
    online: GaugeMetricFamily,
    executing: GaugeMetricFamily,
) -> None:
    # The thousands of label sets go in through Metric.add_sample, with the samples
    # add_metric would make (_total; cumulative _bucket, _count, _sum): add_metric builds
    # each label dict from zipped lists, which made collect() several times slower.
    cluster: dict[str, str] = {"cluster": reading.cluster} if named else {}
    head: tuple[str, ...] = (reading.cluster,) if named else ()
    event_counts, histograms = fold_counters(reading.counters, max_task_names)
    add_event = events.add_sample
    for (host, kind, task), count in event_counts.items():
        add_event(
            "flower_events_total", {**cluster, "worker": host, "type": kind, "task": task}, count
        )
    add_runtime = runtimes.add_sample
    for task, histogram in histograms.items():
        labels = {**cluster, "task": task}
        cumulative = 0
        for le, count in zip(_LE, histogram.buckets, strict=True):
            cumulative += count
            add_runtime("flower_task_runtime_seconds_bucket", {**labels, "le": le}, cumulative)
        add_runtime("flower_task_runtime_seconds_count", labels, histogram.count)
        add_runtime("flower_task_runtime_seconds_sum", labels, histogram.total)
    for worker in reading.workers:
        online.add_metric((*head, worker.hostname), 1 if worker.is_online(reading.now) else 0)
        if worker.active is not None:
            executing.add_metric((*head, worker.hostname), worker.active)


# The bot's own ingest health, one unlabelled sample each: (name, type, help, value of a reading).
_STREAM: tuple[tuple[str, str, str, Callable[[StreamHealth, int], float]], ...] = (
    ("celery_chatops_events_ingested_total", "counter", "Events applied to the state.",
     lambda s, _: s.events_total),
    ("celery_chatops_events_malformed_total", "counter",
     "Events or broker messages dropped as malformed.", lambda s, _: s.malformed),
    ("celery_chatops_tasks_evicted_total", "counter",
     "Task records evicted to stay within CHATOPS_MAX_TASKS.", lambda s, _: s.tasks_evicted),
    ("celery_chatops_consumer_reconnects_total", "counter",
     "Reconnects of the event consumer to the broker.", lambda s, _: s.reconnects),
    ("celery_chatops_event_loss_detected_total", "counter",
     "Times the broker closed the event subscription (events lost).",
     lambda s, _: s.disconnects_by_server),
    ("celery_chatops_changes_lost_total", "counter",
     "Task and worker changes never written to the shared state store (the ingest lease moved"
     " while it did not answer).", lambda s, _: s.changes_lost),
    ("celery_chatops_consumer_connected", "gauge",
     "1 while the event consumer is connected.", lambda s, _: 1 if s.connected else 0),
    ("celery_chatops_consumer_lag_events", "gauge",
     "Events received from the broker and not yet applied.", lambda s, _: s.lag_events),
    ("celery_chatops_metric_labels_dropped_total", "counter",
     "Label sets not tracked because of the cardinality cap.", lambda _, dropped: dropped),
    ("celery_chatops_intake_restarts_total", "counter",
     "Times an event intake thread died and was restarted.", lambda s, _: s.intake_restarts),
    ("celery_chatops_intake_healthy", "gauge",
     "0 while event intake is dead or stalled (then /healthz answers 503).",
     lambda s, _: 0 if s.intake_problem else 1),
)
_MALFORMED_BY_REASON = (
    "celery_chatops_events_dropped_by_reason_total",
    "Events or broker messages dropped as malformed, by reason (a fixed set of reasons).",
)
_LAST_EVENT_AGE = (
    "celery_chatops_last_event_age_seconds",
    "Seconds since the newest event arrived.",
)


def _stream_families(reading: FleetReading | None) -> Iterator[Metric]:
    """Ingest health; with ``reading=None`` only the families' names and types."""
    for name, kind, help_text, value_of in _STREAM:
        value = (
            None
            if reading is None
            else value_of(reading.stream, reading.counters.labels_dropped)
        )
        if kind == "counter":
            yield CounterMetricFamily(name, help_text, value=value)
        else:
            yield GaugeMetricFamily(name, help_text, value=value)
    by_reason = CounterMetricFamily(*_MALFORMED_BY_REASON, labels=("reason",))
    if reading is not None:
        for reason, count in sorted(reading.stream.malformed_by_reason.items()):
            by_reason.add_metric((reason,), count)
    yield by_reason
    if reading is None:
        yield GaugeMetricFamily(*_LAST_EVENT_AGE)
    elif reading.stream.last_event_at is not None:
        # Absent until the first event arrives (there is no age to show yet).
        age = max(0.0, reading.now - reading.stream.last_event_at)
        yield GaugeMetricFamily(*_LAST_EVENT_AGE, value=age)


def _stream_families_by_cluster(readings: Sequence[FleetReading]) -> Iterator[Metric]:
    """Ingest health with one sample per cluster, labelled ``cluster``."""
    for name, kind, help_text, value_of in _STREAM:
        family: CounterMetricFamily | GaugeMetricFamily
        if kind == "counter":
            family = CounterMetricFamily(name, help_text, labels=("cluster",))
        else:
            family = GaugeMetricFamily(name, help_text, labels=("cluster",))
        for reading in readings:
            family.add_metric(
                (reading.cluster,), value_of(reading.stream, reading.counters.labels_dropped)
            )
        yield family
    by_reason = CounterMetricFamily(*_MALFORMED_BY_REASON, labels=("cluster", "reason"))
    for reading in readings:
        for reason, count in sorted(reading.stream.malformed_by_reason.items()):
            by_reason.add_metric((reading.cluster, reason), count)
    yield by_reason
    age = GaugeMetricFamily(*_LAST_EVENT_AGE, labels=("cluster",))
    for reading in readings:
        if reading.stream.last_event_at is not None:
            seconds = max(0.0, reading.now - reading.stream.last_event_at)
            age.add_metric((reading.cluster,), seconds)
    yield age
