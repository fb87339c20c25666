"""The ``redis://`` backends: the fleet picture and the records, shared by every replica.

One concern a module:

- :mod:`~chatbot.store.redis.connection`: the client, and :class:`StoreUnavailable` for outages;
- :mod:`~chatbot.store.redis.keys`: the key schema and the Lua scripts that walk and move it;
- :mod:`~chatbot.store.redis.values`: fleet values as they read back from Redis;
- :mod:`~chatbot.store.redis.reader`: every question answered from Redis, on every replica;
- :mod:`~chatbot.store.redis.pending` and :mod:`~chatbot.store.redis.writer`: the write-behind
  writer (the lease holder's) and its bookkeeping;
- :mod:`~chatbot.store.redis.store`: :class:`RedisFleetStore` (reader plus writer) and the
  standalone :class:`RedisStore`;
- :mod:`~chatbot.store.redis.records`: :class:`RedisRecordStore` (approvals, alerts, silences).
"""

from chatbot.store.redis.connection import (
    DEFAULT_PREFIX,
    RedisClient,
    StoreUnavailable,
    client_from,
    connect,
    guard,
)
from chatbot.store.redis.records import RedisRecordStore
from chatbot.store.redis.store import RedisFleetStore, RedisStore

__all__ = [
    "DEFAULT_PREFIX",
    "RedisClient",
    "RedisFleetStore",
    "RedisRecordStore",
    "RedisStore",
    "StoreUnavailable",
    "client_from",
    "connect",
    "guard",
]
