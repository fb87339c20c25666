"""The event consumer's kombu reader: Celery's own event receiver on a kombu connection.

Used for AMQP (``amqp://``, ``pyamqp://``, ``amqps://``) and for Redis when the fast path of
:mod:`chatbot.consumer_redis` is off or cannot serve the URL (Sentinel, failover lists). It
takes Celery's queue declaration, accept list and ``event_from_message``, with a per-message
TTL of its own (:func:`amqp_event_ttl`). :class:`KombuIntake` is a mixin of
:class:`chatbot.consumer.EventConsumer`, which holds the buffer, the applier and the
bookkeeping it calls; its app is also what the control broadcasts use when none are given.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from chatbot.consumer_base import DECODED_EVENT_COST, READ_TIMEOUT, IntakeHost, closed_by_server
from chatbot.eventwire import is_event

if TYPE_CHECKING:
    from celery import Celery
    from kombu import Connection as KombuConnection
    from kombu import Message

# One logger for the whole intake, as before it was split into modules.
log = logging.getLogger("chatbot.consumer")

AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})
_AMQP_HEARTBEAT_CHECK = 1.0
# Celery declares its event queue with a 5 s per-message TTL (event_queue_ttl): on RabbitMQ, an
# event that waits longer behind a busy consumer expires unseen, a loss nobody can count. Our
# queue keeps events at least this long; a longer event_queue_ttl in the app is kept.
AMQP_EVENT_TTL = 300.0


class KombuIntake(IntakeHost):
    """Reads the event stream through kombu (a mixin of ``EventConsumer``)."""

    def _kombu_app(self) -> Celery:
        if self._app is None:
            from celery import Celery

            self._app = Celery(
                "celery-chatops-consumer",
                broker=self.broker_url,
                set_as_current=False,
            )
            self._app.conf.broker_transport_options = dict(self._transport_options)
        return self._app

    def _run_kombu(self) -> None:
        attempt = 0
        was_good = False
        app = self._kombu_app()
        while not self._stopping.is_set():
            conn: KombuConnection | None = None
            sessions = self._sessions
            try:
                conn = app.connection_for_read(
                    self.broker_url,
                    transport_options=dict(self._transport_options),
                    connect_timeout=self._connect_timeout,
                )
                self._kombu_consume(app, conn)
                self._on_disconnected(None, False)
            except Exception as exc:
                # Errors differ per transport (socket, amqp, redis-py); all mean "reconnect".
                by_server = self._sessions != sessions and closed_by_server(exc)
                self._on_disconnected(exc, by_server)
            finally:
                if conn is not None:
                    try:
                        conn.release()
                    except Exception:
                        log.debug("closing the event connection failed", exc_info=True)
            if self._sessions != sessions:
                attempt, was_good = 0, True
            if self._stopping.is_set() or not self._backoff(attempt, was_good):
                break
            attempt += 1

    def _kombu_consume(self, app: Celery, conn: KombuConnection) -> None:
        from kombu import Consumer

        # Fail fast: the reconnect policy (and its counting) is ours, not kombu's.
        conn.ensure_connection(max_retries=1)
        channel = conn.channel()
        receiver = app.events.Receiver(
            channel, handlers={}, app=app, queue_ttl=amqp_event_ttl(app.conf.event_queue_ttl)
        )
        from_message = receiver.event_from_message
        put = self._put

        def on_message(body: Any, message: Message) -> None:
            # Celery's EventReceiver._receive, minus the crash on a body that is not events.
            batch = body if isinstance(body, list) else [body]
            for event in batch:
                if not is_event(event):
                    self._count_malformed("not-an-event", "body is not an event object")
                    continue
                try:
                    _, localized = from_message(event)
                except Exception as exc:  # Celery's arithmetic on whatever the fields hold
                    self._count_malformed("undecodable", f"bad event fields: {type(exc).__name__}")
                    continue
                put(localized, DECODED_EVENT_COST)

        def on_decode_error(message: Message, exc: Exception) -> None:
            self._count_malformed("body", f"undecodable body: {type(exc).__name__}")

        # no_ack, as Celery's receiver: RabbitMQ's prefetch limit applies to acknowledged
        # deliveries only, so the broker pushes as fast as this socket is read, and when it is
        # not read (our buffer full) events wait in the queue, under the TTL above.
        consumer = Consumer(
            channel,
            queues=[receiver.queue],
            callbacks=[on_message],
            no_ack=True,
            accept=receiver.accept,
            on_decode_error=on_decode_error,
        )
        with consumer:
            self._on_connected()
            next_beat = time.monotonic() + _AMQP_HEARTBEAT_CHECK
            while not self._stopping.is_set():
                with contextlib.suppress(TimeoutError):  # socket.timeout: idle
                    conn.drain_events(timeout=READ_TIMEOUT)
                now = time.monotonic()
                # Under a steady stream drain_events never times out, so AMQP heartbeats
                # must be checked on the clock, not only when idle.
                if now >= next_beat:
                    conn.heartbeat_check()
                    next_beat = now + _AMQP_HEARTBEAT_CHECK


def amqp_event_ttl(configured: object) -> float:
    """The per-message TTL of our event queue: the app's ``event_queue_ttl`` if longer."""
    try:
        value = float(configured) if configured is not None else 0.0  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = 0.0
    return max(value, AMQP_EVENT_TTL)
