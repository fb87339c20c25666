"""The ``redis://`` RecordStore: approvals, alerts and silences shared by every replica.

A record is one JSON string key ``<prefix>:rec:<kind>:<key>`` whose TTL is a Redis expiry;
``<prefix>:recidx:<kind>`` lists a kind's keys in creation order, and
``<prefix>:recexp:<kind>`` the keys of records with a TTL by when they expire, so that every
write unindexes the records that expired (a kind that is never listed, like the replay guard's
one record per signed request, would otherwise grow its index forever).
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

__all__ = ["CREATE", "PRUNE", "PUT", "RedisRecordStore"]

log = logging.getLogger(__name__)

# How many expired records one write unindexes at most: the work a write adds stays bounded,
# and a kind written to at all is swept faster than its records expire.
SWEEP_LIMIT = 100

# The scripts below share their keys and arguments. KEYS[1]: the record, KEYS[2]: its kind's
# index, KEYS[3]: its kind's expiry index. ARGV[1]: JSON, ARGV[2]: ttl in ms (0: none),
# ARGV[3]: now in seconds (the record's order score, and the clock expiries are scheduled by),
# ARGV[4]: the key as indexed, ARGV[5]: the kind's record key prefix, ARGV[6]: SWEEP_LIMIT.
#
# First, each unindexes the kind's records that are due to have expired and are gone; one still
# there (a replica's clock ahead of another's) is rescheduled by its own remaining TTL.
_SWEEP = """
local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[3], 'LIMIT', 0, ARGV[6])
for _, member in ipairs(due) do
  local left = redis.call('PTTL', ARGV[5] .. member)
  if left == -2 then
    redis.call('ZREM', KEYS[2], member)
    redis.call('ZREM', KEYS[3], member)
  elseif left == -1 then
    redis.call('ZREM', KEYS[3], member)
  else
    redis.call('ZADD', KEYS[3], tonumber(ARGV[3]) + left / 1000, member)
  end
end
"""
# Then it indexes the record it wrote, and schedules its expiry (a record kept for good has
# none).
_INDEX = """
redis.call('ZADD', KEYS[2], 'NX', ARGV[3], ARGV[4])
if tonumber(ARGV[2]) > 0 then
  redis.call('ZADD', KEYS[3], tonumber(ARGV[3]) + tonumber(ARGV[2]) / 1000, ARGV[4])
else
  redis.call('ZREM', KEYS[3], ARGV[4])
end
"""
# Create only if absent, and index it, atomically.
CREATE = (
    _SWEEP
    + """
local stored
if tonumber(ARGV[2]) > 0 then
  stored = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
else
  stored = redis.call('SET', KEYS[1], ARGV[1], 'NX')
end
if not stored then return 0 end
"""
    + _INDEX
    + "return 1\n"
)
# Create or replace, and index it, atomically.
PUT = (
    _SWEEP
    + """
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
"""
    + _INDEX
    + "return 1\n"
)


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
    pruned when listed, and by every write of the kind, see the module's notes).
    ``transition`` is a compare-and-set under ``WATCH``, with Python's equality on the decoded
    field, so it is decided once across threads and processes.
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
        self._put = self.client.register_script(PUT)
        self._prune = self.client.register_script(PRUNE)

    def _key(self, kind: str, key: str) -> str:
        return f"{self.prefix}:rec:{kind}:{key}"

    def _index(self, kind: str) -> str:
        return f"{self.prefix}:recidx:{kind}"

    def _expiries(self, kind: str) -> str:
        return f"{self.prefix}:recexp:{kind}"

    def _write(
        self, script: Any, kind: str, key: str, value: Mapping[str, Any], ttl: float | None
    ) -> bool:
        """Run CREATE or PUT. ``now`` orders the records (list() returns a kind's records in
        creation order) and schedules expiries; the sweep checks each record's own TTL before
        it unindexes one, so replicas whose clocks differ only sweep a little early or late."""
        data = dumps(dict(value))
        now = repr(self._clock())
        record_prefix = self._key(kind, "")
        with guard(self.client):
            stored = script(
                keys=[self._key(kind, key), self._index(kind), self._expiries(kind)],
                args=[data, self._ttl_ms(ttl), now, key, record_prefix, SWEEP_LIMIT],
            )
        return bool(stored)

    @staticmethod
    def _ttl_ms(ttl: float | None) -> int:
        return 0 if ttl is None else max(1, int(ttl * 1000))

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        with guard(self.client):
            raw = self.client.get(self._key(kind, key))
        return _decode_record(raw)

    def put(self, kind: str, key: str, value: Mapping[str, Any], ttl: float | None = None) -> None:
        self._write(self._put, kind, key, value, ttl)

    def create(
        self, kind: str, key: str, value: Mapping[str, Any], ttl: float | None = None
    ) -> bool:
        return self._write(self._create, kind, key, value, ttl)

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
            pipe.zrem(self._expiries(kind), key)
            deleted, _, _ = pipe.execute()
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
                self._prune(keys=[index], args=[self._key(kind, ""), *gone])
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
