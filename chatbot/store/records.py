"""The ``memory://`` RecordStore: approvals, alerts and silences kept in this process."""

from __future__ import annotations

import copy
import heapq
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any


class MemoryRecordStore:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._records: dict[tuple[str, str], tuple[dict[str, Any], float | None]] = {}
        # (expires, kind, key) of every record written with a TTL: each write drops the records
        # that expired, so a kind that is never read back (the replay guard writes one record
        # per signed request) does not grow for ever. An entry whose record was replaced since
        # has an expiry that no longer matches and is skipped.
        self._expiries: list[tuple[float, str, str]] = []

    def _live(self, kind: str, key: str) -> dict[str, Any] | None:
        entry = self._records.get((kind, key))
        if entry is None:
            return None
        value, expires = entry
        if expires is not None and self._clock() >= expires:
            del self._records[(kind, key)]
            return None
        return value

    def _store(self, kind: str, key: str, value: Mapping[str, Any], ttl: float | None) -> None:
        """Write one record and drop the expired ones; the lock is held."""
        now = self._clock()
        due = self._expiries
        while due and due[0][0] <= now:
            when, old_kind, old_key = heapq.heappop(due)
            entry = self._records.get((old_kind, old_key))
            if entry is not None and entry[1] == when:
                del self._records[(old_kind, old_key)]
        expires = None if ttl is None else now + ttl
        self._records[(kind, key)] = (copy.deepcopy(dict(value)), expires)
        if expires is not None:
            heapq.heappush(due, (expires, kind, key))

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        with self._lock:
            value = self._live(kind, key)
            return copy.deepcopy(value) if value is not None else None

    def put(self, kind: str, key: str, value: Mapping[str, Any], ttl: float | None = None) -> None:
        with self._lock:
            self._store(kind, key, value, ttl)

    def create(
        self, kind: str, key: str, value: Mapping[str, Any], ttl: float | None = None
    ) -> bool:
        with self._lock:
            if self._live(kind, key) is not None:
                return False
            self._store(kind, key, value, ttl)
            return True

    def transition(
        self, kind: str, key: str, field: str, expected: Any, updates: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        with self._lock:
            value = self._live(kind, key)
            if value is None or value.get(field) != expected:
                return None
            value.update(copy.deepcopy(dict(updates)))
            return copy.deepcopy(value)

    def delete(self, kind: str, key: str) -> bool:
        with self._lock:
            return self._records.pop((kind, key), None) is not None

    def list(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            keys = [k for (group, k) in self._records if group == kind]
            live = (self._live(kind, k) for k in keys)
            return [copy.deepcopy(v) for v in live if v is not None]
