"""The ``redis://`` RecordStore: approvals, alerts and silences shared by every replica.

A record is one JSON string key ``<prefix>:rec:<kind>:<key>`` whose TTL is a Redis expiry;
``<prefix>:recidx:<kind>`` lists a kind's keys in creation order.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis.exceptions

from chatbot.store.codec import dumps
from chatbot.store.redis.connection import DEFAULT_PREFIX, RedisClient, client_from, guard, text

__all__ = ["CREATE", "PRUNE", "RedisRecordStore"]

log = logging.getLogger(__name__)

# KEYS[1]: the record, KEYS[2]: its kind's index; ARGV[1]: JSON, ARGV[2]: ttl in ms (0: none),
# ARGV[3]: order score, ARGV[4]: the key as indexed. Create only if absent, and index it,
# atomically.
CREATE = """
local stored
if tonumber(ARGV[2]) > 0 then
  stored = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
else
  stored = redis.call('SET', KEYS[1], ARGV[1], 'NX')
end
if not stored then return 0 end
redis.call('ZADD', KEYS[2], 'NX', ARGV[3], ARGV[4])
return 1
"""


# KEYS[1]: a kind's index; ARGV[1]: its records' key prefix; ARGV[2..]: members whose record
# looked gone. Unindexes those still gone (a concurrent create may have brought one back).
PRUNE = """
local removed = 0
for i = 2, #ARGV do
  if redis.call('EXISTS', ARGV[1] .. ARGV[i]) == 0 then
    removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return removed
"""


class RedisRecordStore:
    """The ``redis://`` backend of :class:`chatbot.store.RecordStore`.

    A record is one JSON string key ``<prefix>:rec:<kind>:<key>`` whose TTL is a Redis expiry;
    ``<prefix>:recidx:<kind>`` lists a kind's keys in creation order (expired members are
    pruned when listed). ``transition`` is a compare-and-set under ``WATCH``, with Python's
    equality on the decoded field, so it is decided once across threads and processes.
    """

    def __init__(
        self,
        client_or_url: RedisClient | str,
        prefix: str = DEFAULT_PREFIX,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not prefix:
            raise ValueError("the key prefix must not be empty")
        self.client, self._owns_client = client_from(client_or_url)
        self.prefix = prefix
        self._clock = clock
        self._create = self.client.register_script(CREATE)
        self._prune = self.client.register_script(PRUNE)

    def _key(self, kind: str, key: str) -> str:
        return f"{self.prefix}:rec:{kind}:{key}"

    def _index(self, kind: str) -> str:
        return f"{self.prefix}:recidx:{kind}"

    def _order_score(self) -> float:
        return self._clock()  # list() returns a kind's records in creation order

    @staticmethod
    def _ttl_ms(ttl: float | None) -> int:
        return 0 if ttl is None else max(1, int(ttl * 1000))

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        with guard(self.client):
            raw = self.client.get(self._key(kind, key))
        return _decode_record(raw)

    def put(self, kind: str, key: str, value: Mapping[str, Any], ttl: float | None = None) -> None:
        data = dumps(dict(value))
        name = self._key(kind, key)
        with guard(self.client):
            pipe = self.client.pipeline(transaction=True)
            ms = self._ttl_ms(ttl)
            if ms:
                pipe.set(name, data, px=ms)
            else:
                pipe.set(name, data)
            pipe.zadd(self._index(kind), {key: self._order_score()}, nx=True)
            pipe.execute()

    def create(
        self, kind: str, key: str, value: Mapping[str, Any], ttl: float | None = None
    ) -> bool:
        data = dumps(dict(value))
        with guard(self.client):
            stored = self._create(
                keys=[self._key(kind, key), self._index(kind)],
                args=[data, self._ttl_ms(ttl), repr(self._order_score()), key],
            )
        return bool(stored)

    def transition(
        self, kind: str, key: str, field: str, expected: Any, updates: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        name = self._key(kind, key)
        with guard(self.client), self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(name)
                    raw = pipe.get(name)
                    value = _decode_record(raw)
                    if value is None or value.get(field) != expected:
                        pipe.unwatch()
                        return None
                    value.update(json.loads(dumps(dict(updates))))
                    pipe.multi()
                    # XX: if the record expired since the GET, do not resurrect it.
                    pipe.set(name, dumps(value), xx=True, keepttl=True)
                    (stored,) = pipe.execute()
                    return value if stored else None
                except redis.exceptions.WatchError:
                    continue  # changed under us: read again and re-check ``expected``

    def delete(self, kind: str, key: str) -> bool:
        with guard(self.client):
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(self._key(kind, key))
            pipe.zrem(self._index(kind), key)
            deleted, _ = pipe.execute()
        return bool(deleted)

    def list(self, kind: str) -> list[dict[str, Any]]:
        index = self._index(kind)
        with guard(self.client):
            indexed: list[str | bytes] = self.client.zrange(index, 0, -1)  # type: ignore[assignment]
            members = [text(m) for m in indexed]
            if not members:
                return []
            raws = self.client.mget([self._key(kind, m) for m in members])
            gone = [m for m, raw in zip(members, raws, strict=True) if raw is None]
            if gone:
                self._prune(keys=[index], args=[f"{self.prefix}:rec:{kind}:", *gone])
        found: list[dict[str, Any]] = []
        for raw in raws:
            value = _decode_record(raw)
            if value is not None:
                found.append(value)
        return found

    def close(self) -> None:
        if self._owns_client:
            self.client.close()


def _decode_record(raw: str | bytes | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        log.warning("Skipping an unreadable record in Redis")
        return None
    return value if isinstance(value, dict) else None
