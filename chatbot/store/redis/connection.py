"""The connection to the state store: one client per URL, and one way to say Redis is down.

Shared by every Redis-backed piece (fleet, records, lease): :func:`connect` makes the client,
:func:`client_from` accepts a client or a URL, and :func:`guard` turns any Redis error into a
one-line :class:`StoreUnavailable` that a command can show as its reply.

A hung Redis (stopped, or a network that drops packets) answers nothing and closes nothing, so
every call waits its full socket timeout. Two things keep that off Slack's 3-second ack:

- the request path (commands, clicks, the HTTP gate's replay check) has its own client,
  :func:`connect_for_requests`, with a short timeout and no retry of a timeout; the writer and
  the lease keep the patient one from :func:`connect` (a big write may take a while);
- :func:`guard` keeps a :class:`Breaker` per client: once a call timed out, calls through that
  client fail at once, for ``Breaker.cooldown`` seconds, after which one call probes again
  while the others keep failing fast (a success anywhere, e.g. the writer's, closes it).
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import TypeAlias

import redis
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

from chatbot.config import redact_url

__all__ = [
    "DEFAULT_PREFIX",
    "REQUEST_TIMEOUT",
    "Breaker",
    "RedisClient",
    "StoreUnavailable",
    "breaker_for",
    "client_from",
    "connect",
    "connect_for_requests",
    "guard",
    "text",
    "unavailable",
    "where",
]

DEFAULT_PREFIX = "chatops"
RedisClient: TypeAlias = redis.Redis


class StoreUnavailable(RuntimeError):
    """The shared state store (Redis) cannot answer; ``str(err)`` is one line for a reply."""


def connect(url: str, *, socket_timeout: float = 5.0, connect_timeout: float = 2.0) -> RedisClient:
    """A client for the state store: string replies, bounded timeouts, one quick retry.

    The single retry reconnects a pooled connection that died with a Redis restart; more
    retries with backoff (redis-py's default) would make a read during an outage hang for
    seconds instead of failing with a clear reply.
    """
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=30,
    )


# How long a command or a click may wait for one Redis call. A local Redis answers in well
# under a millisecond and the reads of the request path are bounded (scripts over indexes, at
# most a page of tasks): a second without an answer means it is not answering.
REQUEST_TIMEOUT = 1.0


def connect_for_requests(url: str, *, timeout: float = REQUEST_TIMEOUT) -> RedisClient:
    """A client for the request path: short timeouts, a dead pooled connection retried once
    (a Redis restart), a timeout never (it would only double the wait)."""
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)),
        health_check_interval=30,
    )


class Breaker:
    """Fails calls at once while Redis is known not to answer (see the module docstring)."""

    def __init__(self, cooldown: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._error: str | None = None
        self._retry_at = 0.0
        self._probing = False

    @property
    def error(self) -> str | None:
        """Why Redis is considered down, or None."""
        with self._lock:
            return self._error

    def admit(self) -> str | None:
        """None when the call may go ahead, else the error to fail it with."""
        with self._lock:
            if self._error is None:
                return None
            if not self._probing and self._clock() >= self._retry_at:
                self._probing = True  # this caller finds out whether Redis answers again
                return None
            return self._error

    def failed(self, error: str) -> None:
        with self._lock:
            self._error = error
            self._retry_at = self._clock() + self.cooldown
            self._probing = False

    def answered(self) -> None:
        with self._lock:
            self._error = None
            self._probing = False


_breakers: weakref.WeakKeyDictionary[RedisClient, Breaker] = weakref.WeakKeyDictionary()
_breakers_lock = threading.Lock()


def breaker_for(client: RedisClient) -> Breaker:
    with _breakers_lock:
        breaker = _breakers.get(client)
        if breaker is None:
            breaker = _breakers[client] = Breaker()
        return breaker


def client_from(client_or_url: RedisClient | str) -> tuple[RedisClient, bool]:
    """The client to use, and whether the caller made it (and so closes it)."""
    if isinstance(client_or_url, str):
        return connect(client_or_url), True
    return client_or_url, False


def where(client: RedisClient) -> str:
    """The client's server as a redacted URL, for messages."""
    kwargs = client.connection_pool.connection_kwargs
    host = kwargs.get("host", "?")
    port = kwargs.get("port", "?")
    db = kwargs.get("db", 0)
    return redact_url(f"redis://{host}:{port}/{db}")


def unavailable(client: RedisClient, exc: BaseException) -> StoreUnavailable:
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return StoreUnavailable(f"state store unavailable: Redis at {where(client)}: {reason}")


@contextlib.contextmanager
def guard(client: RedisClient) -> Iterator[None]:
    """Raise :class:`StoreUnavailable` for any Redis error inside the block, and at once,
    without calling Redis, while the client's :class:`Breaker` says it does not answer."""
    breaker = breaker_for(client)
    refusal = breaker.admit()
    if refusal is not None:
        raise StoreUnavailable(refusal)
    try:
        yield
    except redis.exceptions.TimeoutError as exc:
        # Only a timeout trips the breaker: a refused or reset connection fails at once
        # anyway, and must not keep failing for the cooldown once Redis is back.
        error = unavailable(client, exc)
        breaker.failed(str(error))
        raise error from exc
    except redis.exceptions.RedisError as exc:
        breaker.answered()  # it answered, with an error, or refused at once
        raise unavailable(client, exc) from exc
    except BaseException:
        breaker.answered()  # not Redis's doing; a probe must not stay in flight
        raise
    breaker.answered()


def text(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value
