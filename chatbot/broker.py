"""Queue lengths read straight from the broker: Redis lists or RabbitMQ passive declares.

A length we could not read is ``None`` ("unknown"), never a made-up ``0``: a dead broker must
not look like an empty queue. Error texts are one line and never carry the broker password.

Redis: kombu keeps a queue as one list per priority step (``name`` for step 0, else
``name + sep + str(step)``), all under ``global_keyprefix``; a queue's length is the sum, read
for every queue in one pipelined round trip. A missing key is an empty list, so on Redis every
queue "exists" as far as anyone can tell (``exists`` is None).

RabbitMQ: the management plugin is not assumed. A passive ``queue.declare`` answers with the
message and consumer counts of an existing queue, or a 404 that closes the channel. A queue the
broker does not know is reported as ``exists=False`` with ``messages=None`` and no ``error``:
it is a fact about the queue (nobody declared it; messages routed to it are dropped), not a
failure to read the broker.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import unquote, urlsplit

import redis
from kombu import Connection

from chatbot.model import Worker

__all__ = ["BrokerReader", "QueueLength", "QueueLengthReader", "QueueStatus", "queue_names"]

REDIS_SCHEMES = frozenset({"redis", "rediss"})
AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})
# kombu.transport.redis defaults (Channel.sep, PRIORITY_STEPS).
DEFAULT_PRIORITY_SEP = "\x06\x16"
DEFAULT_PRIORITY_STEPS = (0, 3, 6, 9)
_MAX_ERROR_LENGTH = 200

QueueStatus = Literal["ok", "missing", "unknown"]


@dataclass(frozen=True)
class QueueLength:
    name: str
    messages: int | None  # None = not known (broker unreadable or queue missing), never a fake 0
    consumers: int | None = None  # RabbitMQ only: Redis cannot tell
    error: str | None = None  # one line, no secrets
    exists: bool | None = None  # False: RabbitMQ says there is no such queue; None: cannot tell

    @property
    def status(self) -> QueueStatus:
        if self.exists is False:
            return "missing"
        return "ok" if self.messages is not None else "unknown"


class QueueLengthReader(Protocol):
    """What the commands, the alert check and ``/metrics`` read queue lengths through:
    :class:`BrokerReader`, or a recorded stand-in in tests.
    """

    @property
    def broker_name(self) -> str: ...

    def queue_lengths(self, names: Sequence[str]) -> list[QueueLength]: ...


def queue_names(
    workers: Iterable[Worker], configured: Sequence[str], default_queue: str = "celery"
) -> list[str]:
    """The queues to watch: the default queue, then ``CHATOPS_QUEUES`` in the order given,
    then the queues workers consume from, sorted (worker order is not stable); no duplicates.
    """
    from_workers = sorted({queue for worker in workers for queue in worker.queues})
    names: dict[str, None] = {}
    for name in (default_queue, *configured, *from_workers):
        name = name.strip() if name else ""
        if name:
            names.setdefault(name, None)
    return list(names)


def _one_line(exc: BaseException, secret: str | None) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if secret:
        text = text.replace(secret, "***")
    if len(text) > _MAX_ERROR_LENGTH:
        text = text[: _MAX_ERROR_LENGTH - 1] + "…"
    return text


def _normalise_ssl_cert_reqs(url: str) -> str:
    # A rediss URL written for Celery says ssl_cert_reqs=CERT_REQUIRED; redis-py wants 'required'.
    for name, plain in (("CERT_REQUIRED", "required"), ("CERT_OPTIONAL", "optional"),
                        ("CERT_NONE", "none")):  # fmt: skip
        url = url.replace(f"ssl_cert_reqs={name}", f"ssl_cert_reqs={plain}")
    return url


class BrokerReader:
    """Reads queue lengths from one broker; keeps its connection between calls; thread-safe."""

    def __init__(
        self,
        broker_url: str,
        transport_options: Mapping[str, Any] | None = None,
        timeout: float = 2.0,
    ) -> None:
        self._url = broker_url
        self._options = dict(transport_options or {})
        self._timeout = timeout
        parts = urlsplit(broker_url)
        self._scheme = parts.scheme.lower()
        self._password = unquote(parts.password) if parts.password else None
        self._lock = threading.Lock()
        self._redis: redis.Redis | None = None
        self._amqp: Connection | None = None
        self._amqp_channel: Any = None
        host = parts.hostname or "localhost"
        try:
            port = parts.port
        except ValueError:
            port = None
        where = f"{host}:{port}" if port else host
        if self._scheme in REDIS_SCHEMES:
            db = parts.path.lstrip("/") or "0"
            self._name = f"{self._scheme} {where}/{db}"
        elif self._scheme in AMQP_SCHEMES:
            vhost = unquote(parts.path[1:]) if parts.path.startswith("/") else ""
            self._name = f"{self._scheme} {where}/{'' if vhost == '/' else vhost}"
        else:
            self._name = f"{self._scheme or '?'} {where}"

    @property
    def broker_name(self) -> str:
        """Scheme, host, port and db or vhost; never the credentials."""
        return self._name

    def queue_lengths(self, names: Sequence[str]) -> list[QueueLength]:
        """One :class:`QueueLength` per name, in the order given."""
        if not names:
            return []
        with self._lock:
            if self._scheme in REDIS_SCHEMES:
                return self._redis_lengths(names)
            if self._scheme in AMQP_SCHEMES:
                return self._amqp_lengths(names)
        reason = f"queue lengths are not supported for {self._scheme or 'this'}:// brokers"
        return [QueueLength(name, None, error=reason) for name in names]

    def close(self) -> None:
        with self._lock:
            self._close_redis()
            self._close_amqp()

    def __enter__(self) -> BrokerReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- Redis -------------------------------------------------------------------------------
    def _redis_keys(self, name: str) -> list[str]:
        prefix = str(self._options.get("global_keyprefix") or "")
        sep = str(self._options.get("sep", DEFAULT_PRIORITY_SEP))
        steps = self._options.get("priority_steps") or DEFAULT_PRIORITY_STEPS
        return [prefix + (name if not step else f"{name}{sep}{step}") for step in steps]

    def _redis_client(self) -> redis.Redis:
        if self._redis is None:
            self._redis = redis.Redis.from_url(
                _normalise_ssl_cert_reqs(self._url),
                socket_timeout=self._timeout,
                socket_connect_timeout=self._timeout,
                # A reader that cannot reach the broker answers "unknown" now, not after retries.
                retry_on_timeout=False,
                health_check_interval=0,
                client_name="celery-chatops-queues",
            )
        return self._redis

    def _redis_lengths(self, names: Sequence[str]) -> list[QueueLength]:
        keys_per_queue = [self._redis_keys(name) for name in names]
        try:
            client = self._redis_client()
            with client.pipeline(transaction=False) as pipe:
                for keys in keys_per_queue:
                    for key in keys:
                        pipe.llen(key)
                results = pipe.execute(raise_on_error=False)
        except Exception as exc:  # any failure to talk to the broker means "unknown"
            # Drop the client: a half-read pipeline must not be reused.
            self._close_redis()
            reason = _one_line(exc, self._password)
            return [QueueLength(name, None, error=reason) for name in names]
        lengths: list[QueueLength] = []
        position = 0
        for name, keys in zip(names, keys_per_queue, strict=True):
            sizes = results[position : position + len(keys)]
            position += len(keys)
            failure = next((size for size in sizes if isinstance(size, Exception)), None)
            if failure is not None:
                # e.g. WRONGTYPE: the key holds something that is not a kombu queue.
                error = _one_line(failure, self._password)
                lengths.append(QueueLength(name, None, error=error))
            else:
                lengths.append(QueueLength(name, sum(int(size) for size in sizes)))
        return lengths

    def _close_redis(self) -> None:
        client, self._redis = self._redis, None
        if client is not None:
            # Closing a broken client must not mask the original problem.
            with contextlib.suppress(Exception):
                client.close()

    # -- RabbitMQ ----------------------------------------------------------------------------
    def _amqp_connection(self) -> Connection:
        if self._amqp is None or not self._amqp.connected:
            self._close_amqp()
            connection = Connection(
                self._url,
                connect_timeout=self._timeout,
                # py-amqp socket timeouts: a stalled broker must not hang the caller.
                transport_options={"read_timeout": self._timeout, "write_timeout": self._timeout},
            )
            self._amqp = connection
            connection.ensure_connection(max_retries=0)
        return self._amqp

    def _amqp_channel_open(self) -> Any:
        if self._amqp_channel is None or not getattr(self._amqp_channel, "is_open", False):
            self._amqp_channel = self._amqp_connection().channel()
        return self._amqp_channel

    def _amqp_lengths(self, names: Sequence[str]) -> list[QueueLength]:
        lengths: list[QueueLength] = []
        for index, name in enumerate(names):
            try:
                channel = self._amqp_channel_open()
                declared = channel.queue_declare(queue=name, passive=True)
            except Exception as exc:
                if getattr(exc, "reply_code", None) == 404:
                    # The broker closed the channel with the 404: the next queue needs a new one.
                    self._discard_amqp_channel()
                    lengths.append(QueueLength(name, None, exists=False))
                    continue
                # Anything else is the broker or the connection failing: nothing more is known.
                self._close_amqp()
                reason = _one_line(exc, self._password)
                lengths.extend(QueueLength(rest, None, error=reason) for rest in names[index:])
                return lengths
            lengths.append(
                QueueLength(
                    name,
                    int(declared.message_count),
                    consumers=int(declared.consumer_count),
                    exists=True,
                )
            )
        return lengths

    def _discard_amqp_channel(self) -> None:
        channel, self._amqp_channel = self._amqp_channel, None
        if channel is not None:
            # Usually already closed by the broker's 404.
            with contextlib.suppress(Exception):
                channel.close()

    def _close_amqp(self) -> None:
        self._discard_amqp_channel()
        connection, self._amqp = self._amqp, None
        if connection is not None:
            # The connection may already be dead; it is being dropped either way.
            with contextlib.suppress(Exception):
                connection.release()
