"""The event consumer's Redis reader: PSUBSCRIBE on the fleet's broker, in a reader process
or on a reader thread.

The fast path of :mod:`chatbot.consumer` on ``redis://`` and ``rediss://``: one redis-py
connection (hiredis parser) subscribes to the event exchange's topics exactly as kombu would
(``{global_keyprefix}/{db}.celeryev/*``), with its connection arguments from the kombu-style
broker URL (:func:`redis_connection_kwargs`). With ``reader="process"`` or ``"process-raw"`` a
child process (:mod:`chatbot.eventreader`) reads the socket and :meth:`RedisIntake._follow` moves
its frames into the consumer's buffer; with ``reader="thread"`` :meth:`RedisIntake._redis_read`
reads it here. :class:`RedisIntake` is a mixin of :class:`chatbot.consumer.EventConsumer`, which
holds the buffer, the applier and the bookkeeping it calls.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
import redis.exceptions

from chatbot.consumer_base import READ_TIMEOUT, IntakeHost, closed_by_server
from chatbot.eventreader import (
    CONNECTED,
    DISCONNECTED,
    EVENTS,
    MESSAGES,
    ReaderProcess,
    Subscription,
    after_quiet_read,
)
from chatbot.eventwire import EVENT_EXCHANGE, subscribe_topic

# One logger for the whole intake, as before it was split into modules.
log = logging.getLogger("chatbot.consumer")

REDIS_SCHEMES = frozenset({"redis", "rediss"})
# process: a reader process reads and decodes, this process applies (docs/architecture.md);
# process-raw: the reader process hands raw messages over, this process decodes; thread.
READERS = ("process", "process-raw", "thread")


_CERT_REQS = {
    "cert_required": "required",
    "required": "required",
    "cert_optional": "optional",
    "optional": "optional",
    "cert_none": "none",
    "none": "none",
}


class _ReaderError(ConnectionError):
    """A connection error the reader process reported (its text, already with its type)."""


def _cert_reqs(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, int):
        if value == ssl.CERT_NONE:
            return "none"
        return "optional" if value == ssl.CERT_OPTIONAL else "required"
    return _CERT_REQS.get(str(value).strip().lower(), "required")


def redis_connection_kwargs(
    url: str, ssl_options: Mapping[str, Any] | None = None
) -> tuple[type[redis.Connection], dict[str, Any]]:
    """redis-py connection class and arguments for a kombu-style Redis broker URL.

    Parsed here rather than by ``redis.from_url`` because kombu URLs carry query options
    (``ssl_cert_reqs=CERT_REQUIRED``, transport flags) that redis-py would pass on as
    unknown keyword arguments.
    """
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    kwargs: dict[str, Any] = {
        "host": parts.hostname or "localhost",
        "port": parts.port or 6379,
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
    }
    path = parts.path.strip("/")
    db = query.get("db") or query.get("virtual_host") or path or "0"
    try:
        kwargs["db"] = int(db)
    except ValueError:
        raise ValueError(f"Redis database must be a number, got {db!r}") from None
    if parts.scheme != "rediss":
        return redis.Connection, kwargs
    options: dict[str, Any] = dict(ssl_options or {})
    for key in ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        if key in query:
            options[key] = query[key]
    reqs = _cert_reqs(options.get("ssl_cert_reqs", "required"))
    kwargs["ssl_cert_reqs"] = reqs
    for key in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        if options.get(key):
            kwargs[key] = options[key]
    if "ssl_check_hostname" in query:
        kwargs["ssl_check_hostname"] = query["ssl_check_hostname"].lower() in {"1", "true", "yes"}
    elif reqs == "none":
        kwargs["ssl_check_hostname"] = False
    return redis.SSLConnection, kwargs


class RedisIntake(IntakeHost):
    """Reads the event stream from Redis pub/sub (a mixin of ``EventConsumer``)."""

    def _redis_topic(self, db: int) -> tuple[str, bool]:
        opts = self._transport_options
        return subscribe_topic(
            db=db,
            global_keyprefix=str(opts.get("global_keyprefix") or ""),
            fanout_prefix_option=opts.get("fanout_prefix", True),
            fanout_patterns=bool(opts.get("fanout_patterns", True)),
            exchange=self._exchange_name(),
        )

    def _exchange_name(self) -> str:
        if self._app is not None:
            return str(self._app.conf.event_exchange or EVENT_EXCHANGE)
        return EVENT_EXCHANGE

    def _subscription(self) -> Subscription:
        """What the reader process connects to: the same URL, options and topic as here."""
        ssl_options = None
        if self._app is not None and isinstance(self._app.conf.broker_use_ssl, Mapping):
            ssl_options = self._app.conf.broker_use_ssl
        cls, kwargs = redis_connection_kwargs(self.broker_url, ssl_options)
        connect_timeout = float(
            self._transport_options.get("socket_connect_timeout") or self._connect_timeout
        )
        topic, is_pattern = self._redis_topic(int(kwargs["db"]))
        return Subscription(
            cls,
            kwargs,
            topic,
            is_pattern,
            connect_timeout,
            decode=self._decode_in_reader,
            accept=self._accept,
        )

    def _run_redis_process(self) -> None:
        """Follow a reader process; if it dies, count what it held as lost and start another.

        Runs under ``_supervise`` as the reader role, like ``_run_redis``.
        """
        failures = 0
        while not self._stopping.is_set():
            reader = ReaderProcess(
                self._subscription(),
                buffer_bytes=self._buffer_limit,
                batch_max=self.batch_max,
            )
            self._reader_process = reader
            reader.start()
            try:
                self._follow(reader)
            finally:
                self._connected.clear()
                reader.stop()
            if self._stopping.is_set():
                break
            dropped = reader.stats().dropped_messages
            log.warning(
                "The event reader process exited (code %s) holding %d messages: lost;"
                " starting another",
                reader.exitcode,
                dropped,
            )
            with self._stats_lock:
                self._last_error = f"event reader process exited (code {reader.exitcode})"
                if dropped:
                    self._last_loss_at = self._clock()
                self._dropped_before += dropped
                self._reader_process = None
            failures += 1
            if not self._backoff(failures, True):
                break

    def _follow(self, reader: ReaderProcess) -> None:
        """The child's frames, in order, into the local buffer and the bookkeeping."""
        put = self._put
        for kind, payload in reader.frames(self._stopping):
            if kind == EVENTS:
                put(payload, payload.cost, payload.messages)
            elif kind == MESSAGES:
                for data in payload:
                    put(data, len(data))
            elif kind == CONNECTED:
                self._on_connected()
            elif kind == DISCONNECTED:
                text, by_server = payload
                self._on_disconnected(_ReaderError(text), bool(by_server))

    def _redis_connect(self) -> redis.Connection:
        ssl_options = None
        if self._app is not None and isinstance(self._app.conf.broker_use_ssl, Mapping):
            ssl_options = self._app.conf.broker_use_ssl
        cls, kwargs = redis_connection_kwargs(self.broker_url, ssl_options)
        connect_timeout = float(
            self._transport_options.get("socket_connect_timeout") or self._connect_timeout
        )
        conn = cls(
            **kwargs,
            protocol=2,  # RESP2: pub/sub messages are plain lists, no push-handler detour
            socket_connect_timeout=connect_timeout,
            socket_timeout=None,
            socket_keepalive=True,
            health_check_interval=0,
            client_name="celery-chatops-events",
        )
        conn.connect()
        topic, is_pattern = self._redis_topic(int(kwargs["db"]))
        conn.send_command("PSUBSCRIBE" if is_pattern else "SUBSCRIBE", topic)
        reply = conn.read_response(timeout=connect_timeout)
        if not (isinstance(reply, list) and reply and reply[0] in (b"psubscribe", b"subscribe")):
            conn.disconnect()
            raise redis.exceptions.ConnectionError(f"unexpected reply to SUBSCRIBE: {reply!r}")
        return conn

    def _run_redis(self) -> None:
        attempt = 0
        was_good = False
        while not self._stopping.is_set():
            conn: redis.Connection | None = None
            sessions = self._sessions
            try:
                conn = self._redis_connect()
                self._on_connected()
                self._redis_read(conn)
                self._on_disconnected(None, False)
            except (redis.exceptions.RedisError, OSError, ValueError) as exc:
                by_server = self._sessions != sessions and closed_by_server(exc)
                self._on_disconnected(exc, by_server)
            finally:
                if conn is not None:
                    conn.disconnect()
            if self._sessions != sessions:
                attempt, was_good = 0, True
            if self._stopping.is_set() or not self._backoff(attempt, was_good):
                break
            attempt += 1

    def _redis_read(self, conn: redis.Connection) -> None:
        put = self._put
        stopping = self._stopping
        split = self._split
        batch_max = self.batch_max
        monotonic = time.monotonic
        inline: list[bytes] = []
        last_reply = monotonic()
        pinged = False
        while not stopping.is_set():
            try:
                reply = conn.read_response(timeout=READ_TIMEOUT, disconnect_on_error=False)
            except redis.exceptions.TimeoutError:
                if inline:
                    self._process(inline)
                    inline = []
                pinged = after_quiet_read(conn, last_reply, pinged)
                continue
            last_reply = monotonic()
            pinged = False
            # pmessage: [kind, pattern, channel, data]; message: [kind, channel, data].
            # Anything else (subscribe confirmations, PING's pong) only proves liveness.
            if type(reply) is list and len(reply) >= 3 and reply[0] in (b"pmessage", b"message"):
                data = reply[-1]
                if not data:
                    continue
                if split:
                    put(data, len(data))
                else:
                    inline.append(data)
                    if len(inline) >= batch_max or not conn.can_read(0):
                        self._process(inline)
                        inline = []
        if inline:
            self._process(inline)
