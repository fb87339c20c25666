"""The connection to the state store: one client per URL, and one way to say Redis is down.

Shared by every Redis-backed piece (fleet, records, lease): :func:`connect` makes the client,
:func:`client_from` accepts a client or a URL, and :func:`guard` turns any Redis error into a
one-line :class:`StoreUnavailable` that a command can show as its reply.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TypeAlias

import redis
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

from chatbot.config import redact_url

__all__ = [
    "DEFAULT_PREFIX",
    "RedisClient",
    "StoreUnavailable",
    "client_from",
    "connect",
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
    """Raise :class:`StoreUnavailable` for any Redis error inside the block."""
    try:
        yield
    except redis.exceptions.RedisError as exc:
        raise unavailable(client, exc) from exc


def text(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value
