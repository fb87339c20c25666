"""Wiring: one object that owns the parts of a running bot and starts and stops them in order.

The faces (Slack HTTP, Socket Mode, console, demo) receive this object; nothing below it
knows it exists. Every part is built from :class:`~chatbot.config.Settings` and handed its
collaborators explicitly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from celery import Celery
from prometheus_client import generate_latest
from slack_sdk import WebClient

from chatbot.alerts import AlertManager, AlertScheduler, SlackSender
from chatbot.approvals import ApprovalService
from chatbot.approvals.clusters import ClusterApprovals
from chatbot.audit import AuditLog
from chatbot.auth import Authorizer, SlackGroupResolver
from chatbot.broker import BrokerReader, QueueLength
from chatbot.cluster import (
    DISCOVERY_JOB,
    LOCAL_LEASE_WAIT,
    QUEUE_CACHE_SECONDS,
    STORE_FACTS_SECONDS,
    STORE_FACTS_STALE_SECONDS,
    ClusterParts,
    Shared,
    StoreFacts,
    StoreFactsReader,
)
from chatbot.cluster import make_celery_app as make_celery_app
from chatbot.cluster_config import Clusters, load_clusters
from chatbot.commands import CommandContext, Registry
from chatbot.commands.addressing import ClusterDispatcher
from chatbot.config import Settings
from chatbot.consumer import EventConsumer
from chatbot.control import FleetControl
from chatbot.discovery import WorkerDiscovery
from chatbot.failures import FingerprintMemory
from chatbot.metrics import FleetReading, fleet_registry
from chatbot.model import StreamHealth, Task
from chatbot.periodic import PeriodicJobs
from chatbot.render import Message, Renderer
from chatbot.slack.client import make_web_client
from chatbot.store import FleetStore, RecordStore
from chatbot.store.balance import IngestBalancer
from chatbot.store.factory import DEFAULT_LEASE_TTL, Stores
from chatbot.store.redis import connect

__all__ = [
    "DISCOVERY_JOB",
    "GROUP_LOOKUP_TIMEOUT",
    "LOCAL_LEASE_WAIT",
    "QUEUE_CACHE_SECONDS",
    "STORE_FACTS_SECONDS",
    "STORE_FACTS_STALE_SECONDS",
    "Service",
    "StoreFacts",
    "StoreFactsReader",
    "group_lookup_client",
    "make_celery_app",
]

logger = logging.getLogger(__name__)


GROUP_LOOKUP_TIMEOUT = 2  # seconds (slack_sdk takes an int)


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


class Service:
    """The bot's parts: one :class:`~chatbot.cluster.ClusterParts` per Celery cluster (store,
    event consumer, broker reader, control, approvals, alerts), and what they share (Slack,
    authorizer, audit, renderer, the one scheduler, the dispatcher that routes commands).

    With one cluster, ``store``, ``consumer``, ``control``... are that cluster's parts, as they
    always were; with several, they are the first cluster's and ``clusters`` holds them all.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        store: FleetStore | None = None,
        records: RecordStore | None = None,
        consume_events: bool = True,
        web_client: WebClient | None = None,
        lease_ttl: float | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.web_client = web_client
        self.cluster_config: Clusters = load_clusters(settings)
        several = self.cluster_config.several
        if several and (store is not None or records is not None):
            raise ValueError("a store or records may only be given with one cluster")
        self.renderer = Renderer()
        resolver = (
            SlackGroupResolver(group_lookup_client(web_client)) if web_client is not None else None
        )
        self.authorizer = Authorizer.from_settings(settings, resolver)
        self.audit = AuditLog(
            channel_poster=self._post_audit if settings.audit_channel and web_client else None,
            renderer=self.renderer,
            secrets=_secrets(settings),
        )
        # What runs periodically, and on which replica: every job of the process is on this
        # one scheduler, and /healthz shows them all ("periodic"). WRITER jobs run while this
        # replica holds their cluster's ingest lease: worker discovery and alert checks
        # (chatbot/cluster.py); jobs for EVERY replica: the approval expiry sweep (runner.py).
        self.jobs = PeriodicJobs(clock=clock)
        # Extra health facts contributed by parts wired on top (alerts sender, Slack).
        self.health_sources: list[Callable[[], dict[str, Any]]] = []
        self.alert_sender: SlackSender | None = None
        if web_client is not None and any(c.settings.alert_channel for c in self.cluster_config):
            self._wire_alert_sender()
        shared = Shared(
            renderer=self.renderer,
            authorizer=self.authorizer,
            audit=self.audit,
            jobs=self.jobs,
            clock=clock,
            several=several,
            alert_sender=self.alert_sender,
            lease_ttl=lease_ttl,
        )
        # One factory builds every cluster's parts: adding a cluster adds nothing here.
        self.clusters: dict[str, ClusterParts] = {
            config.name: ClusterParts(
                config, shared, store=store, records=records, consume_events=consume_events
            )
            for config in self.cluster_config
        }
        self.dispatcher = ClusterDispatcher(
            {name: parts.dispatcher for name, parts in self.clusters.items()},
            self.cluster_config,
            self._context_for,
        )
        self.approvals: ApprovalService | ClusterApprovals = (
            ClusterApprovals({name: p.approvals for name, p in self.clusters.items()})
            if several
            else self.first.approvals
        )
        # /metrics: the fleet collector on a private prometheus_client registry.
        self.metrics_registry = fleet_registry(self.fleet_readings)
        self.started_at: float | None = None
        # Several clusters on a shared Redis: each replica takes its share of their leases.
        self.balancer: IngestBalancer | None = None
        if several and self.first.stores is not None and self.first.stores.backend == "redis":
            ttl = lease_ttl if lease_ttl is not None else DEFAULT_LEASE_TTL
            self.balancer = IngestBalancer(
                connect(settings.state_url),
                settings.state_prefix or "chatops",
                len(self.clusters),
                presence_ttl=ttl,
            )

    def _wire_alert_sender(self) -> None:
        """One sender for every cluster's alerts; checks run only on each cluster's writer."""
        settings = self.settings
        # The sender is the one layer that retries alert calls (see chatbot/alerts/sender.py):
        # its client has no retry handlers of its own.
        client = make_web_client(settings.slack_bot_token, settings.slack_api_url, retries=False)
        sender = SlackSender(client)

        def facts() -> dict[str, Any]:
            alerts: dict[str, Any] = {"sender": sender.health().as_dict()}
            schedulers = {
                name: p.alert_scheduler.health().as_dict()
                for name, p in self.clusters.items()
                if p.alert_scheduler is not None
            }
            if len(self.clusters) == 1:
                alerts["scheduler"] = next(iter(schedulers.values()), None)
            else:
                alerts["schedulers"] = schedulers
            return {"alerts": alerts, "slack_errors": dict(sender.health().errors_by_code)}

        self.health_sources.append(facts)
        self.alert_sender = sender

    # -- the first (with one cluster: the only) cluster's parts, as they always were -----------
    @property
    def first(self) -> ClusterParts:
        return self.clusters[self.cluster_config.names[0]]

    @property
    def stores(self) -> Stores | None:
        return self.first.stores

    @property
    def store(self) -> FleetStore:
        return self.first.store

    @property
    def records(self) -> RecordStore:
        return self.first.records

    @property
    def app(self) -> Celery:
        return self.first.app

    @property
    def control(self) -> FleetControl:
        return self.first.control

    @property
    def broker(self) -> BrokerReader:
        return self.first.broker

    @property
    def consumer(self) -> EventConsumer | None:
        return self.first.consumer

    @property
    def failure_memory(self) -> FingerprintMemory:
        return self.first.failure_memory

    @property
    def registry(self) -> Registry:
        return self.first.registry

    @property
    def discovery(self) -> WorkerDiscovery:
        return self.first.discovery

    @property
    def alert_manager(self) -> AlertManager | None:
        return self.first.alert_manager

    @property
    def alert_scheduler(self) -> AlertScheduler | None:
        return self.first.alert_scheduler

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self.started_at = self.clock()
        for parts in self.clusters.values():
            parts.start_store_facts()
        self.jobs.start()
        for parts in self.clusters.values():
            parts.start(self.balancer)
        for parts in self.clusters.values():
            parts.wait_started()

    def stop(self) -> None:
        if self.balancer is not None:
            # Withdrawn first: no lease is taken again while stopping, and the other
            # replicas' share grows at once.
            self.balancer.stop()
        for parts in self.clusters.values():
            parts.stop()
        if self.balancer is not None:
            self.balancer.client.close()
        self.jobs.shutdown()
        for parts in self.clusters.values():
            parts.stop_store_facts()
        if self.alert_sender is not None:
            self.alert_sender.stop()

    def get_task_in(self, cluster: str, task_id: str) -> Task | None:
        """A task of ``cluster`` (None for an unknown cluster or task)."""
        parts = self.clusters.get(cluster)
        return parts.store.get_task(task_id) if parts is not None else None

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
        """A face's context; the dispatcher moves it onto the cluster a command addresses
        (with one cluster it already is that cluster's)."""
        parts = self.first
        return CommandContext(
            store=parts.store,
            settings=parts.settings,
            renderer=self.renderer,
            broker=parts.broker,
            control=parts.control,
            user_id=user_id,
            channel_id=channel_id,
            clock=self.clock,
            confirm=confirm,
            health=parts.stream_health,
            problems=self.problems,
            failure_memory=parts.failure_memory,
        )

    def _context_for(self, cluster: str, ctx: CommandContext) -> CommandContext:
        return self.clusters[cluster].context_of(ctx, self.problems)

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
        """The first (with one cluster: the only) cluster's stream health."""
        return self.first.stream_health()

    def queue_lengths(self, max_age: float = QUEUE_CACHE_SECONDS) -> list[QueueLength]:
        """The first (with one cluster: the only) cluster's watched queues."""
        return self.first.queue_lengths(max_age)

    def health(self) -> dict[str, Any]:
        """``ok`` once every cluster's event consumer is connected; otherwise the reason.

        One cluster: its facts at the top level, as always. Several: ``clusters`` holds each
        one's facts, ``ok`` is all of them, and ``reason`` names the clusters that are not.
        """
        if len(self.clusters) == 1:
            report = self.first.health()
        else:
            facts = {name: parts.health() for name, parts in self.clusters.items()}
            report = {"ok": all(f["ok"] for f in facts.values()), "clusters": facts}
            reasons = [f"{name}: {f['reason']}" for name, f in facts.items() if not f["ok"]]
            if reasons:
                report["reason"] = "; ".join(reasons)
        report["periodic"] = {
            job_id: job.as_dict() for job_id, job in self.jobs.health().items()
        }
        for source in self.health_sources:
            report.update(source())
        return report

    def fleet_reading(self) -> FleetReading:
        """The first (with one cluster: the only) cluster's reading."""
        return self.first.fleet_reading([source() for source in self.health_sources])

    def fleet_readings(self) -> list[FleetReading]:
        """One reading per cluster for ``/metrics`` (named when there are several)."""
        extra = [source() for source in self.health_sources]
        return [parts.fleet_reading(extra) for parts in self.clusters.values()]

    def metrics_text(self) -> str:
        return generate_latest(self.metrics_registry).decode("utf-8")
