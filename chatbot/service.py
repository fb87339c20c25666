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
from typing import Any

from celery import Celery

from chatbot.broker import BrokerReader, QueueLength, queue_names
from chatbot.commands import CommandContext, Dispatcher, Registry, build_registry
from chatbot.config import Settings, redact_url
from chatbot.consumer import EventConsumer
from chatbot.control import FleetControl
from chatbot.metrics import render_metrics
from chatbot.model import StreamHealth
from chatbot.render import Renderer
from chatbot.store import FleetStore, RecordStore
from chatbot.store.memory import MemoryStore
from chatbot.store.records import MemoryRecordStore

logger = logging.getLogger(__name__)

QUEUE_CACHE_SECONDS = 10.0


def make_celery_app(settings: Settings) -> Celery:
    """A Celery app of our own on the fleet's broker: no task code is imported."""
    app = Celery("celery-chatops", broker=settings.broker_url, set_as_current=False)
    app.conf.broker_connection_retry_on_startup = True
    # Control replies and broadcasts must not hang a request thread on a dead broker.
    app.conf.broker_connection_timeout = settings.control_timeout
    return app


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
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.store: FleetStore = store or MemoryStore(
            max_tasks=settings.max_tasks,
            max_workers=settings.max_workers,
            redact_keys=settings.redact_keys,
            clock=clock,
        )
        self.records: RecordStore = records or MemoryRecordStore(clock=clock)
        self.app = make_celery_app(settings)
        self.control = FleetControl(self.app, timeout=settings.control_timeout)
        self.broker = BrokerReader(
            settings.broker_url,
            transport_options=self.app.conf.broker_transport_options,
            timeout=settings.control_timeout,
        )
        self.consumer: EventConsumer | None = (
            EventConsumer(
                settings.broker_url,
                self.store,
                app=self.app,
                enable_events=self.control.enable_events,
                heartbeat=self.control.heartbeat,
                enable_events_interval=settings.enable_events_interval,
                clock=clock,
            )
            if consume_events
            else None
        )
        self.renderer = Renderer()
        self.registry: Registry = build_registry()
        self.dispatcher = Dispatcher(self.registry, self.renderer)
        self._queue_cache: tuple[float, list[QueueLength]] | None = None
        self._queue_lock = threading.Lock()
        # Extra health facts contributed by parts wired on top (alerts sender, Slack).
        self.health_sources: list[Callable[[], dict[str, Any]]] = []
        self.started_at: float | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self.started_at = self.clock()
        if self.consumer is not None:
            self.consumer.start()

    def stop(self) -> None:
        if self.consumer is not None:
            self.consumer.stop()
        self.broker.close()

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
        )

    def stream_health(self) -> StreamHealth:
        """Freshness from the store, connection and event loss from the consumer."""
        stream = self.store.health()
        return self.consumer.health_into(stream) if self.consumer is not None else stream

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

    def health(self) -> dict[str, Any]:
        """``ok`` once the event consumer is connected; otherwise the reason."""
        stream = self.stream_health()
        now = self.clock()
        report: dict[str, Any] = {
            "ok": stream.connected or self.consumer is None,
            "broker": redact_url(self.settings.broker_url),
            "state": redact_url(self.settings.state_url),
            "events_total": stream.events_total,
            "malformed": stream.malformed,
            "reconnects": stream.reconnects,
            "event_loss_detected": stream.disconnects_by_server,
            "last_event_age": None
            if stream.last_event_at is None
            else round(now - stream.last_event_at, 3),
            "tasks_retained": len(self.store),
        }
        if not report["ok"]:
            report["reason"] = (
                f"event consumer not connected to the broker: {stream.last_error}"
                if stream.last_error
                else "event consumer not connected to the broker yet"
            )
        for source in self.health_sources:
            report.update(source())
        return report

    def metrics_text(self) -> str:
        return render_metrics(
            store=self.store,
            stream=self.stream_health(),
            queues=self.queue_lengths(),
            now=self.clock(),
            extra=[source() for source in self.health_sources],
        )
