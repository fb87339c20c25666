"""Wiring: one object that owns the parts of a running bot and starts and stops them in order.

The faces (Slack HTTP, Socket Mode, console, demo) receive this object; nothing below it
knows it exists. Every part is built from :class:`~chatbot.config.Settings` and handed its
collaborators explicitly.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import Celery
from prometheus_client import generate_latest
from slack_sdk import WebClient

from chatbot.alerts import AlertManager, AlertScheduler, SlackSender
from chatbot.alerts.rules import loss_report
from chatbot.approvals import ApprovalService
from chatbot.audit import AuditLog
from chatbot.auth import Authorizer, SlackGroupResolver
from chatbot.broker import BrokerReader, QueueLength, queue_names
from chatbot.commands import CommandContext, Dispatcher, Registry, build_registry
from chatbot.commands.alerts import register_alert_commands
from chatbot.commands.control import register_control_commands
from chatbot.config import Settings, redact_url
from chatbot.consumer import EventConsumer
from chatbot.control import FleetControl
from chatbot.discovery import FIRST_LOOK_AFTER, WorkerDiscovery
from chatbot.failures import FingerprintMemory
from chatbot.metrics import FleetReading, fleet_registry, read_fleet
from chatbot.model import StreamHealth
from chatbot.periodic import WRITER, PeriodicJobs
from chatbot.render import Message, Renderer
from chatbot.slack.client import make_web_client
from chatbot.store import FleetStore, RecordStore
from chatbot.store.factory import Stores, open_stores
from chatbot.store.memory import MemoryStore
from chatbot.store.records import MemoryRecordStore

logger = logging.getLogger(__name__)

QUEUE_CACHE_SECONDS = 10.0
GROUP_LOOKUP_TIMEOUT = 2  # seconds (slack_sdk takes an int)
# /healthz never calls the shared state store itself (a hung Redis would hang the probe):
# a background thread reads the store's facts this often, and /healthz serves the last
# reading, or 503 when it is older than STORE_FACTS_STALE_SECONDS (the read is stuck).
STORE_FACTS_SECONDS = 1.0
STORE_FACTS_STALE_SECONDS = 5.0
DISCOVERY_JOB = "worker-discovery"
LOCAL_LEASE_WAIT = 5.0


def _secrets(settings: Settings) -> tuple[str, ...]:
    return settings.secret_values


def group_lookup_client(web_client: WebClient) -> WebClient:
    """The bot's client for user-group lookups: they may run while a command is acked (an
    operator check), so a slow or rate-limited Slack fails the lookup after a short wait
    ("groups could not be checked, try again") instead of holding the ack past 3 s."""
    return make_web_client(
        web_client.token or "",
        web_client.base_url,
        timeout=GROUP_LOOKUP_TIMEOUT,
        proxy=web_client.proxy,
        ssl=web_client.ssl,
        retries=False,
    )


def make_celery_app(settings: Settings) -> Celery:
    """A Celery app of our own on the fleet's broker: no task code is imported."""
    app = Celery("celery-chatops", broker=settings.broker_url, set_as_current=False)
    app.conf.broker_connection_retry_on_startup = True
    # Control replies and broadcasts must not hang a request thread on a dead broker.
    app.conf.broker_connection_timeout = settings.control_timeout
    return app


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


class Service:
    """The bot's parts: store, event consumer, broker reader, control, commands."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        store: FleetStore | None = None,
        records: RecordStore | None = None,
        consume_events: bool = True,
        web_client: WebClient | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.web_client = web_client
        if store is None and records is None:
            self.stores: Stores | None = open_stores(settings)
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
        # Created when this replica holds the ingest lease (a consumer cannot be restarted).
        self.consumer: EventConsumer | None = None
        self._ingest_lock = threading.Lock()
        self._ingesting = threading.Event()
        self.renderer = Renderer()
        self.registry: Registry = build_registry()
        self.dispatcher = Dispatcher(self.registry, self.renderer)
        resolver = (
            SlackGroupResolver(group_lookup_client(web_client)) if web_client is not None else None
        )
        self.authorizer = Authorizer.from_settings(settings, resolver)
        self.audit = AuditLog(
            channel_poster=self._post_audit if settings.audit_channel and web_client else None,
            renderer=self.renderer,
            secrets=_secrets(settings),
        )
        self.approvals = ApprovalService(
            self.records,
            self.control,
            self.store,
            self.authorizer,
            self.audit,
            settings,
            clock,
            renderer=self.renderer,
        )
        register_control_commands(self.registry, self.approvals)
        self.alert_manager: AlertManager | None = None
        self.alert_scheduler: AlertScheduler | None = None
        self.alert_sender: SlackSender | None = None
        self._queue_cache: tuple[float, list[QueueLength]] | None = None
        self._queue_lock = threading.Lock()
        # Extra health facts contributed by parts wired on top (alerts sender, Slack).
        self.health_sources: list[Callable[[], dict[str, Any]]] = []
        # /metrics: the fleet collector on a private prometheus_client registry.
        self.metrics_registry = fleet_registry(self.fleet_reading)
        # What runs periodically, and on which replica: every job of the process is on this
        # one scheduler, and /healthz shows them all ("periodic"). WRITER jobs run while this
        # replica holds the ingest lease: worker discovery (here), alert checks
        # (_wire_alerts); jobs for EVERY replica: the approval expiry sweep (runner.py).
        self.jobs = PeriodicJobs(clock=clock)
        # Learn the queues workers consume, for backlog alerts and status.
        self.discovery = WorkerDiscovery(self.control, self.store, clock=clock)
        self.jobs.add(
            DISCOVERY_JOB,
            self.discovery.refresh,
            every=self.discovery.interval,
            replicas=WRITER,
            first_after=min(self.discovery.interval, FIRST_LOOK_AFTER),
        )
        self.started_at: float | None = None
        self.store_facts: StoreFactsReader | None = (
            StoreFactsReader(self._read_store_facts)
            if self.stores is not None and self.stores.backend == "redis"
            else None
        )
        if web_client is not None and settings.alert_channel:
            self._wire_alerts()

    def _wire_alerts(self) -> None:
        """Channel alerts: checks run only on the writer replica (two would both post)."""
        settings = self.settings
        # The sender is the one layer that retries alert calls (see chatbot/alerts/sender.py):
        # its client has no retry handlers of its own.
        client = make_web_client(settings.slack_bot_token, settings.slack_api_url, retries=False)
        sender = SlackSender(client)
        manager = AlertManager(self.records, sender, self.renderer, settings)
        scheduler = AlertScheduler(
            manager, self.store, settings, broker=self.broker, health=self.stream_health
        )
        register_alert_commands(self.registry, manager, self.authorizer)
        scheduler.start(self.jobs, replicas=WRITER)
        self.health_sources.append(
            lambda: {
                "alerts": {
                    "sender": sender.health().as_dict(),
                    "scheduler": scheduler.health().as_dict(),
                },
                "slack_errors": dict(sender.health().errors_by_code),
            }
        )
        self.alert_manager, self.alert_scheduler, self.alert_sender = manager, scheduler, sender

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self.started_at = self.clock()
        if self.store_facts is not None:
            self.store_facts.start()
        self.jobs.start()
        if self.stores is not None:
            self.stores.start(on_acquired=self._start_ingest, on_lost=self._stop_ingest)
            if self.stores.backend == "memory":
                # The in-process lease is granted at once, on the keeper's thread: let callers
                # of start() find the consumer running, as they would without a lease.
                self._ingesting.wait(LOCAL_LEASE_WAIT)
        else:
            self._start_ingest()

    def stop(self) -> None:
        if self.stores is not None:
            self.stores.stop()  # runs _stop_ingest while it still holds the lease
        else:
            self._stop_ingest()
        self.jobs.shutdown()
        if self.store_facts is not None:
            self.store_facts.stop()
        if self.alert_sender is not None:
            self.alert_sender.stop()
        self.broker.close()

    def _start_ingest(self) -> None:
        """This replica became the writer: consume events, run the leader-only parts."""
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
            self.jobs.writer_started()
            self._ingesting.set()
        logger.info("this replica consumes events and runs the scheduler")

    def _stop_ingest(self) -> None:
        with self._ingest_lock:
            self._ingesting.clear()
            self.jobs.writer_stopped()
            if self.consumer is not None:
                self.consumer.stop()
                if self.stores is not None:
                    self.stores.set_health_source(None)
                self.consumer = None

    def run_as(self, text: str, user_id: str, channel_id: str) -> Message:
        """Run a ``/celery`` line as ``user_id`` (a button that stands for a command)."""
        return self.dispatcher.run(text, self.context(user_id, channel_id))

    def _post_audit(self, message: Message) -> None:
        """A copy of an audit step in CHATOPS_AUDIT_CHANNEL (failures are the audit's to log)."""
        if self.web_client is not None:
            self.web_client.chat_postMessage(
                channel=self.settings.audit_channel, text=message.text, blocks=message.blocks
            )

    # -- what the faces use ------------------------------------------------------------
    def context(
        self,
        user_id: str = "",
        channel_id: str = "",
        confirm: Callable[[str], bool] | None = None,
    ) -> CommandContext:
        return CommandContext(
            store=self.store,
            settings=self.settings,
            renderer=self.renderer,
            broker=self.broker,
            control=self.control,
            user_id=user_id,
            channel_id=channel_id,
            clock=self.clock,
            confirm=confirm,
            health=self.stream_health,
            problems=self.problems,
            failure_memory=self.failure_memory,
        )

    def problems(self) -> list[str]:
        """The bot's own troubles that `status` shows (the stream's are shown on their own)."""
        found: list[str] = []
        sender = self.alert_sender
        if sender is not None:
            health = sender.health()
            if not health.ok:
                found.append(f"Alerts cannot be posted: {health.last_error or 'see /healthz'}")
        return found

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

    def health(self) -> dict[str, Any]:
        """``ok`` once the event consumer is connected and the state store answers; otherwise
        the reason. Never waits on the shared state store (see :class:`StoreFactsReader`)."""
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
        if store_problem is not None:
            report["reason"] = store_problem
        elif not report["ok"]:
            report["reason"] = (
                f"event consumer not connected to the broker: {stream.last_error}"
                if stream.last_error
                else "event consumer not connected to the broker yet"
            )
        report.update(loss_report(stream, now))
        report["periodic"] = {job_id: job.as_dict() for job_id, job in self.jobs.health().items()}
        # Connected is not enough: a dead or stalled intake thread leaves the bot blind.
        consumer = self.consumer
        if consumer is not None:
            report["intake_restarts"] = consumer.intake_restarts
            intake_problem = consumer.intake_problem()
            if intake_problem is not None:
                report["ok"] = False
                report["reason"] = intake_problem
        for source in self.health_sources:
            report.update(source())
        return report

    def fleet_reading(self) -> FleetReading:
        return read_fleet(
            self.store,
            stream=self.stream_health(),
            queues=self.queue_lengths(),
            now=self.clock(),
            extra=[source() for source in self.health_sources],
        )

    def metrics_text(self) -> str:
        return generate_latest(self.metrics_registry).decode("utf-8")
