"""What the event consumer's transport readers share with its core (:mod:`chatbot.consumer`).

:class:`IntakeHost` declares the state and the bookkeeping the Redis reader
(:mod:`chatbot.consumer_redis`) and the kombu/AMQP reader (:mod:`chatbot.consumer_amqp`) use;
:class:`chatbot.consumer.EventConsumer` provides them. The declarations are for the type
checker only: at run time the readers' methods resolve straight to the core's, so reading an
event costs no extra call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery import Celery

    from chatbot.eventreader import ReaderProcess

# redis-py's message when recv() returns EOF: the server closed the subscription.
_SERVER_CLOSED = "Connection closed by server"
READ_TIMEOUT = 0.25  # how often a blocked reader looks at the stop flag
# A raw event message is ~0.6-2 KB; an already-decoded AMQP event is charged as this many.
DECODED_EVENT_COST = 1024


class IntakeHost:
    """The part of :class:`chatbot.consumer.EventConsumer` its transport readers use."""

    broker_url: str
    batch_max: int
    _app: Celery | None
    _transport_options: dict[str, Any]
    _connect_timeout: float
    _clock: Callable[[], float]
    _split: bool
    _decode_in_reader: bool
    _accept: frozenset[str]
    _buffer_limit: int
    _stopping: threading.Event
    _connected: threading.Event
    _stats_lock: threading.Lock
    _sessions: int
    _last_error: str | None
    _last_loss_at: float | None
    _dropped_before: int
    _reader_process: ReaderProcess | None

    if TYPE_CHECKING:
        # Provided by EventConsumer (the core); declared here so the mixins type-check.
        def _put(self, item: Any, cost: int, messages: int = 1) -> None: ...
        def _process(self, items: list[Any]) -> None: ...
        def _on_connected(self) -> None: ...
        def _on_disconnected(self, exc: BaseException | None, by_server: bool) -> None: ...
        def _count_malformed(self, reason: str, detail: str, dropped: int = 1) -> None: ...
        def _backoff(self, attempt: int, was_good: bool) -> bool: ...


def closed_by_server(exc: BaseException) -> bool:
    """Did the broker end the connection (rather than the network failing or us closing)?"""
    text = str(exc)
    if _SERVER_CLOSED in text or "unexpectedly closed" in text.lower():
        return True
    name = type(exc).__name__
    # RabbitMQ: an administrator's close or a shutdown (CONNECTION_FORCED, 320).
    return name == "ConnectionForced"
