"""The broker: connect with a short timeout, then the workers, queues and events behind it.

What follows the connection needs it: when the broker cannot be reached, its one FAIL line
says so and the workers, queues and events are not asked (they would only repeat it).
"""

from __future__ import annotations

import time

from celery import Celery
from kombu import Connection

from chatbot.broker import BrokerReader
from chatbot.check.events import check_events
from chatbot.check.report import Report, Timeouts
from chatbot.check.workers import Fleet, check_queues, check_workers
from chatbot.config import Settings
from chatbot.control import FleetControl

__all__ = ["check_broker"]


def _app(settings: Settings, timeout: float) -> Celery:
    app = Celery("celery-chatops-check", broker=settings.broker_url, set_as_current=False)
    app.conf.broker_connection_timeout = timeout
    app.conf.broker_connection_retry_on_startup = False
    return app


def _connect(url: str, timeout: float) -> None:
    """One attempt, no retries: kombu's default would retry a dead broker for a long time."""
    with Connection(
        url,
        connect_timeout=timeout,
        transport_options={"max_retries": 0, "socket_timeout": timeout},
    ) as connection:
        connection.ensure_connection(max_retries=0, timeout=timeout)


def check_broker(settings: Settings, report: Report, timeouts: Timeouts) -> None:
    url = settings.broker_url
    reader = BrokerReader(url, timeout=timeouts.broker)
    where = reader.broker_name
    app = _app(settings, timeouts.broker)
    try:
        started = time.monotonic()
        try:
            _connect(url, timeouts.broker)
        except Exception as exc:  # refused, DNS, login, TLS: one line either way
            report.fail(
                "broker",
                f"cannot connect to {where} within {timeouts.broker:g}s"
                f" ({report.error_text(exc)}); check CELERY_BROKER_URL (host, port,"
                " password, vhost or db) and that the broker is running",
            )
            return
        elapsed_ms = (time.monotonic() - started) * 1000
        report.ok("broker", f"{where} reachable ({elapsed_ms:.0f} ms)")
        fleet = Fleet(app, FleetControl(app, timeout=timeouts.ping), timeouts.ping)
        check_workers(fleet, report)
        check_queues(fleet, reader, settings, report)
        if fleet.workers:
            check_events(
                fleet, settings, report, connect_timeout=timeouts.broker, wait=timeouts.events
            )
    finally:
        reader.close()
        app.close()
