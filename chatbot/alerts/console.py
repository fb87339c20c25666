"""Alerts without Slack: the same rules and lifecycle, notices printed in a terminal.

Used by ``celery-chatops demo``: the manager and scheduler are the real ones; only the sender
is replaced by :class:`ConsoleSender`, which renders each message as text and hands it to a
``notice`` callback. A thread reply is indented under its alert; an edit of a parent message
is not printed (the thread reply that accompanies it says what changed).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol

from chatbot.alerts.manager import AlertManager
from chatbot.alerts.scheduler import AlertScheduler
from chatbot.alerts.sender import POST, UPDATE, SenderHealth, SendResult
from chatbot.broker import QueueLengthReader
from chatbot.config import Settings
from chatbot.console_text import to_text
from chatbot.model import StreamHealth
from chatbot.periodic import WRITER, PeriodicJobs
from chatbot.render import Message, Renderer
from chatbot.store import FleetStore, RecordStore

CONSOLE_CHANNEL = "console"


class ConsoleSender:
    """A :class:`~chatbot.alerts.manager.MessageSender` that prints instead of posting."""

    def __init__(self, notice: Callable[[str], None]) -> None:
        self._notice = notice
        self._lock = threading.Lock()
        self._ts = itertools.count(1)
        self._sent = 0

    def _done(self, method: str, channel: str, ts: str) -> Future[SendResult]:
        future: Future[SendResult] = Future()
        future.set_result(SendResult(True, method, channel, ts=ts))
        return future

    def post_message(
        self,
        channel: str,
        text: str,
        blocks: list[dict[str, Any]] | None = None,
        *,
        thread_ts: str | None = None,
        urgent: bool = False,  # printed at once anyway: nothing waits here
    ) -> Future[SendResult]:
        rendered = to_text(Message(text, list(blocks or []))).rstrip("\n")
        if thread_ts:
            rendered = "\n".join("    ↳ " + line if line else "" for line in rendered.split("\n"))
        with self._lock:
            self._sent += 1
            ts = f"{time.time():.6f}.{next(self._ts)}"
        self._notice(rendered)
        return self._done(POST, channel, ts)

    def update_message(
        self, channel: str, ts: str, text: str, blocks: list[dict[str, Any]] | None = None
    ) -> Future[SendResult]:
        return self._done(UPDATE, channel, ts)

    def health(self) -> SenderHealth:
        with self._lock:
            sent = self._sent
        return SenderHealth(None, None, {}, 0, sent, 0, 0, 0)


class AlertHost(Protocol):
    """What :func:`start_console_alerts` needs of the service (``chatbot.service.Service``)."""

    settings: Settings
    renderer: Renderer
    jobs: PeriodicJobs  # the process's one scheduler

    @property
    def store(self) -> FleetStore: ...

    @property
    def records(self) -> RecordStore: ...

    @property
    def broker(self) -> QueueLengthReader: ...

    def stream_health(self) -> StreamHealth: ...


class ConsoleAlerts:
    """Running console alerts; calling it stops them. ``manager`` is for the commands."""

    def __init__(self, manager: AlertManager, scheduler: AlertScheduler) -> None:
        self.manager = manager
        self.scheduler = scheduler

    def __call__(self) -> None:
        self.scheduler.stop()


def start_console_alerts(host: AlertHost, notice: Callable[[str], None]) -> ConsoleAlerts:
    """Start the alert scheduler over ``host``'s store and broker, printing via ``notice``.

    Register the commands with ``register_alert_commands(registry, alerts.manager)``.
    """
    manager = AlertManager(
        host.records, ConsoleSender(notice), host.renderer, host.settings, channel=CONSOLE_CHANNEL
    )
    scheduler = AlertScheduler(
        manager, host.store, host.settings, broker=host.broker, health=host.stream_health
    )
    scheduler.start(host.jobs, replicas=WRITER)
    return ConsoleAlerts(manager, scheduler)
