"""One Celery cluster's parts, built by one factory: adding a cluster adds nothing elsewhere.

A cluster (``chatbot.cluster_config.ClusterConfig``) gets its own state store namespace and
ingest lease (``open_stores`` with the cluster's key prefix), Celery app, control, broker
reader, event consumer, worker discovery, approvals (over its own control app only), commands
and alert rules. What the clusters share is the bot's: the Slack client and alert sender, the
authorizer, the audit log, the renderer and the process's one scheduler (:class:`Shared`).

With one cluster every name is what it always was (job ids, lease, no cluster in cards or
alerts); with several, each cluster's jobs, lease, cards, alerts and audit lines carry its name.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import Celery

from chatbot.alerts import AlertManager, AlertScheduler, SlackSender
from chatbot.alerts.rules import loss_report
from chatbot.alerts.scheduler import JOB_ID as ALERT_JOB_ID
from chatbot.approvals import ApprovalService
from chatbot.audit import AuditLog
from chatbot.auth import Authorizer
from chatbot.broker import BrokerReader, QueueLength, queue_names
from chatbot.cluster_config import ClusterConfig
from chatbot.commands import CommandContext, Dispatcher, Registry, build_registry
from chatbot.commands.alerts import register_alert_commands
from chatbot.commands.control import register_control_commands
from chatbot.config import Settings, redact_url
from chatbot.consumer import EventConsumer
from chatbot.control import FleetControl
from chatbot.discovery import FIRST_LOOK_AFTER, WorkerDiscovery
from chatbot.failures import FingerprintMemory
from chatbot.metrics import FleetReading, read_fleet
from chatbot.model import StreamHealth
from chatbot.periodic import WRITER, PeriodicJobs
from chatbot.render import Renderer
from chatbot.store import FleetStore, RecordStore
from chatbot.store.balance import IngestBalancer
from chatbot.store.factory import Stores, open_stores
from chatbot.store.memory import MemoryStore
from chatbot.store.records import MemoryRecordStore

__all__ = [
    "DISCOVERY_JOB",
    "LOCAL_LEASE_WAIT",
    "QUEUE_CACHE_SECONDS",
    "STORE_FACTS_SECONDS",
    "STORE_FACTS_STALE_SECONDS",
    "ClusterParts",
    "Shared",
    "StoreFacts",
    "StoreFactsReader",
    "make_celery_app",
]

logger = logging.getLogger(__name__)

QUEUE_CACHE_SECONDS = 10.0
DISCOVERY_JOB = "worker-discovery"
LOCAL_LEASE_WAIT = 5.0


# /healthz never calls the shared state store itself (a hung Redis would hang the probe):
# a background thread reads the store's facts this often, and /healthz serves the last
# reading, or 503 when it is older than STORE_FACTS_STALE_SECONDS (the read is stuck).
STORE_FACTS_SECONDS = 1.0
STORE_FACTS_STALE_SECONDS = 5.0


@dataclass(frozen=True)
class StoreFacts:
    """One reading of the shared state store, for /healthz."""

    at: float  # time.monotonic() of the reading
    stream: StreamHealth | None
    tasks_retained: int | None
    error: str | None


class StoreFactsReader:
    """Reads the shared store's health in a thread of its own, so /healthz never waits on it."""

    def __init__(self, read: Callable[[], tuple[StreamHealth, int]]) -> None:
        self._read = read
        self._latest: StoreFacts | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def latest(self) -> StoreFacts | None:
        return self._latest

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="chatops-store-facts", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(STORE_FACTS_STALE_SECONDS)

    def read_once(self) -> StoreFacts:
        try:
            stream, tasks = self._read()
            facts = StoreFacts(time.monotonic(), stream, tasks, None)
        except Exception as exc:  # StoreUnavailable, or anything a broken store raises
            reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            facts = StoreFacts(time.monotonic(), None, None, reason or type(exc).__name__)
        self._latest = facts
        return facts

    def _run(self) -> None:
        while not self._stop.is_set():
            self.read_once()
            self._stop.wait(STORE_FACTS_SECONDS)


def make_celery_app(settings: Settings) -> Celery:
    """A Celery app of our own on the fleet's broker: no task code is imported."""
    app = Celery("celery-chatops", broker=settings.broker_url, set_as_current=False)
    app.conf.broker_connection_retry_on_startup = True
    # Control replies and broadcasts must not hang a request thread on a dead broker.
    app.conf.broker_connection_timeout = settings.control_timeout
    return app


@dataclass
class Shared:
    """What every cluster of the bot uses alike."""

    renderer: Renderer
    authorizer: Authorizer
    audit: AuditLog
    jobs: PeriodicJobs
    clock: Callable[[], float] = time.time
    several: bool = False  # more than one cluster: name them everywhere
    alert_sender: SlackSender | None = None
    lease_ttl: float | None = None  # None: the state store's default


class ClusterParts:
    """Store, lease, Celery app, control, broker reader, consumer, discovery, approvals,
    commands and alerts of one cluster."""

    def __init__(
        self,
        config: ClusterConfig,
        shared: Shared,
        *,
        store: FleetStore | None = None,
        records: RecordStore | None = None,
        consume_events: bool = True,
    ) -> None:
        self.name = config.name
        self.settings = settings = config.settings
        self.shared = shared
        self.clock = clock = shared.clock
        # Where the name shows: nowhere with one cluster (everything as before).
        self.label = config.name if shared.several else ""
        if store is None and records is None:
            if shared.lease_ttl is None:
                self.stores: Stores | None = open_stores(settings)
            else:
                self.stores = open_stores(settings, lease_ttl=shared.lease_ttl)
            self.store: FleetStore = self.stores.fleet
            self.records: RecordStore = self.stores.records
        else:
            self.stores = None
            self.store = store or MemoryStore(
                max_tasks=settings.max_tasks,
                max_workers=settings.max_workers,
                redact_keys=settings.redact_keys,
                clock=clock,
            )
            self.records = records or MemoryRecordStore(clock=clock)
        # Remembers failure fingerprints (first seen) so `failed` can mark new groups.
        self.failure_memory = FingerprintMemory(self.records, clock)
        self.app = make_celery_app(settings)
        self.control = FleetControl(self.app, timeout=settings.control_timeout)
        self.broker = BrokerReader(
            settings.broker_url,
            transport_options=self.app.conf.broker_transport_options,
            timeout=settings.control_timeout,
        )
        self._consume_events = consume_events
        # Created when this replica holds the cluster's ingest lease (a consumer cannot be
        # restarted).
        self.consumer: EventConsumer | None = None
        self._ingest_lock = threading.Lock()
        self.ingesting = threading.Event()
        self._queue_cache: tuple[float, list[QueueLength]] | None = None
        self._queue_lock = threading.Lock()
        self._balancer: IngestBalancer | None = None

        self.registry: Registry = build_registry()
        self.dispatcher = Dispatcher(self.registry, shared.renderer)
        self.approvals = ApprovalService(
            self.records,
            self.control,
            self.store,
            shared.authorizer,
            shared.audit,
            settings,
            clock,
            renderer=shared.renderer,
            cluster=self.label,
        )
        register_control_commands(self.registry, self.approvals)

        # Learn the queues workers consume, for backlog alerts and status (writer only).
        self.discovery = WorkerDiscovery(self.control, self.store, clock=clock)
        shared.jobs.add(
            self.job_id(DISCOVERY_JOB),
            self.discovery.refresh,
            every=self.discovery.interval,
            replicas=WRITER,
            first_after=min(self.discovery.interval, FIRST_LOOK_AFTER),
            lease=self.label,
        )
        # /healthz never calls a shared state store itself: see StoreFactsReader.
        self.store_facts: StoreFactsReader | None = (
            StoreFactsReader(self._read_store_facts)
            if self.stores is not None and self.stores.backend == "redis"
            else None
        )
        self.alert_manager: AlertManager | None = None
        self.alert_scheduler: AlertScheduler | None = None
        if shared.alert_sender is not None and settings.alert_channel:
            self._wire_alerts(shared.alert_sender)

    def job_id(self, base: str) -> str:
        """A periodic job's id: ``base`` with one cluster, ``base:NAME`` with several."""
        return f"{base}:{self.name}" if self.label else base

    def _wire_alerts(self, sender: SlackSender) -> None:
        """Channel alerts: checks run only where the cluster's lease is held (two would both
        post)."""
        manager = AlertManager(
            self.records, sender, self.shared.renderer, self.settings, cluster=self.label
        )
        scheduler = AlertScheduler(
            manager, self.store, self.settings, broker=self.broker, health=self.stream_health
        )
        register_alert_commands(self.registry, manager, self.shared.authorizer)
        scheduler.start(
            self.shared.jobs, replicas=WRITER, job_id=self.job_id(ALERT_JOB_ID), lease=self.label
        )
        self.alert_manager, self.alert_scheduler = manager, scheduler

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, balancer: IngestBalancer | None = None) -> None:
        """Keep the cluster's ingest lease; consume while it is held (at once without one).
        With a ``balancer`` this replica takes only its share of the clusters' leases."""
        self._balancer = balancer
        if self.stores is not None and balancer is not None:
            name = self.name
            self.stores.start(
                on_acquired=self._start_ingest,
                on_lost=self._stop_ingest,
                may_acquire=lambda: balancer.may_acquire(name),
                should_yield=lambda: balancer.should_yield(name),
            )
        elif self.stores is not None:
            self.stores.start(on_acquired=self._start_ingest, on_lost=self._stop_ingest)
        else:
            self._start_ingest()

    def wait_started(self) -> None:
        if self.stores is not None and self.stores.backend == "memory":
            # The in-process lease is granted at once, on the keeper's thread: let callers
            # of start() find the consumer running, as they would without a lease.
            self.ingesting.wait(LOCAL_LEASE_WAIT)

    def stop(self) -> None:
        if self.stores is not None:
            self.stores.stop()  # runs _stop_ingest while it still holds the lease
        else:
            self._stop_ingest()
        self.broker.close()

    @property
    def holds_lease(self) -> bool:
        return self.ingesting.is_set()

    def _start_ingest(self) -> None:
        """This replica became the cluster's writer: consume its events, run its jobs."""
        with self._ingest_lock:
            if self._consume_events and self.consumer is None:
                self.consumer = EventConsumer(
                    self.settings.broker_url,
                    self.store,
                    app=self.app,
                    enable_events=self.control.enable_events,
                    heartbeat=self.control.heartbeat,
                    enable_events_interval=self.settings.enable_events_interval,
                    clock=self.clock,
                    reader=self.settings.event_reader,
                )
                if self.stores is not None:
                    self.stores.set_health_source(self.consumer.health_into)
                self.consumer.start()
            self.shared.jobs.writer_started(self.label)
            self.ingesting.set()
            if self._balancer is not None:
                self._balancer.acquired(self.name)
        logger.info(
            "this replica consumes events and runs the scheduler%s",
            f" of cluster {self.name}" if self.label else "",
        )

    def _stop_ingest(self) -> None:
        with self._ingest_lock:
            self.ingesting.clear()
            if self._balancer is not None:
                self._balancer.lost(self.name)
            self.shared.jobs.writer_stopped(self.label)
            if self.consumer is not None:
                self.consumer.stop()
                if self.stores is not None:
                    self.stores.set_health_source(None)
                self.consumer = None

    # -- what commands and endpoints read ----------------------------------------------------
    def context_of(self, ctx: CommandContext, problems: Callable[[], list[str]]) -> CommandContext:
        """A face's context (user, channel, confirm) on this cluster."""
        return CommandContext(
            store=self.store,
            settings=self.settings,
            renderer=ctx.renderer,
            broker=self.broker,
            control=self.control,
            user_id=ctx.user_id,
            channel_id=ctx.channel_id,
            clock=self.clock,
            confirm=ctx.confirm,
            health=self.stream_health,
            problems=problems,
            failure_memory=self.failure_memory,
        )

    def stream_health(self) -> StreamHealth:
        """Freshness from the store, connection and event loss from the consumer.

        With a shared Redis store the writer publishes its consumer's half, so every replica
        reads it from ``store.health()``; only a local consumer is merged here.
        """
        stream = self.store.health()
        shared = self.stores is not None and self.stores.backend == "redis"
        consumer = self.consumer
        if consumer is not None and not shared:
            stream = consumer.health_into(stream)
        return stream

    def queue_lengths(self, max_age: float = QUEUE_CACHE_SECONDS) -> list[QueueLength]:
        """Lengths of every watched queue, read at most every ``max_age`` seconds."""
        now = self.clock()
        with self._queue_lock:
            cached = self._queue_cache
            if cached is not None and now - cached[0] < max_age:
                return cached[1]
        names = queue_names(self.store.workers(), self.settings.queues)
        lengths = self.broker.queue_lengths(names)
        with self._queue_lock:
            self._queue_cache = (now, lengths)
        return lengths

    def _read_store_facts(self) -> tuple[StreamHealth, int]:
        return self.stream_health(), len(self.store)

    def start_store_facts(self) -> None:
        if self.store_facts is not None:
            self.store_facts.start()

    def stop_store_facts(self) -> None:
        if self.store_facts is not None:
            self.store_facts.stop()

    def health(self) -> dict[str, Any]:
        """``ok`` once the cluster's event consumer is connected and its state store answers;
        otherwise the reason. Never waits on a shared state store (:class:`StoreFactsReader`)."""
        tasks_retained: int | None
        store_problem: str | None
        if self.store_facts is None:
            stream, tasks_retained = self._read_store_facts()  # in memory: no I/O
            store_problem = None
        else:
            facts = self.store_facts.latest
            if facts is None:
                facts = StoreFacts(time.monotonic(), None, None, "not read yet")
            age = time.monotonic() - facts.at
            stream = facts.stream if facts.stream is not None else StreamHealth()
            tasks_retained = facts.tasks_retained
            if facts.error is not None:
                store_problem = f"the state store is unavailable: {facts.error}"
            elif age > STORE_FACTS_STALE_SECONDS:
                store_problem = (
                    f"the state store is unavailable: no answer for {age:.0f} s"
                    f" ({redact_url(self.settings.state_url)})"
                )
            else:
                store_problem = None
            if store_problem is not None and self.consumer is not None:
                # What this replica's own consumer knows does not need the store.
                stream = self.consumer.health_into(StreamHealth())
        now = self.clock()
        report: dict[str, Any] = {
            "ok": (stream.connected or not self._consume_events) and store_problem is None,
            "broker": redact_url(self.settings.broker_url),
            "state": redact_url(self.settings.state_url),
            "events_total": stream.events_total,
            "malformed": stream.malformed,
            "reconnects": stream.reconnects,
            "event_loss_detected": stream.disconnects_by_server + stream.changes_lost,
            "last_event_age": None
            if stream.last_event_at is None
            else round(now - stream.last_event_at, 3),
            "tasks_retained": tasks_retained,
        }
        if self.label:
            report["ingest_here"] = self.holds_lease
        if store_problem is not None:
            report["reason"] = store_problem
        elif not report["ok"]:
            report["reason"] = (
                f"event consumer not connected to the broker: {stream.last_error}"
                if stream.last_error
                else "event consumer not connected to the broker yet"
            )
        report.update(loss_report(stream, now))
        # Connected is not enough: a dead or stalled intake thread leaves the bot blind.
        consumer = self.consumer
        if consumer is not None:
            report["intake_restarts"] = consumer.intake_restarts
            intake_problem = consumer.intake_problem()
            if intake_problem is not None:
                report["ok"] = False
                report["reason"] = intake_problem
        return report

    def fleet_reading(self, extra: list[dict[str, Any]]) -> FleetReading:
        return read_fleet(
            self.store,
            stream=self.stream_health(),
            queues=self.queue_lengths(),
            now=self.clock(),
            extra=extra,
            cluster=self.label,
        )
