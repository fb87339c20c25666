"""Reading the fleet from Redis: every replica answers every question from Redis, the writer
included, so two replicas behind one Slack app answer the same.

Every question is answered from an index in one round trip (the ``QUERY`` script walks the
smallest sorted set and fetches the records); see :mod:`chatbot.store.redis.keys`. Reads raise
:class:`~chatbot.store.redis.connection.StoreUnavailable` (one line) while Redis is down.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from chatbot.model import (
    FAILURE,
    STARTED,
    TASK_STATES,
    FailureSummary,
    FleetCounters,
    RuntimeStats,
    StreamHealth,
    Task,
    Worker,
    summarize_failures,
)
from chatbot.store.codec import health_from_dict
from chatbot.store.memory import runtime_stats_of
from chatbot.store.redis.connection import DEFAULT_PREFIX, RedisClient, client_from, guard, text
from chatbot.store.redis.keys import FleetScripts, Keys, score
from chatbot.store.redis.values import (
    CONSUMER_FIELDS,
    decode_counters,
    decode_task,
    decode_tasks,
    decode_worker,
)

__all__ = ["RedisFleetReader"]


class RedisFleetReader:
    """The reading half of :class:`~chatbot.store.redis.store.RedisFleetStore`."""

    def __init__(self, client_or_url: RedisClient | str, prefix: str = DEFAULT_PREFIX) -> None:
        self.client, self._owns_client = client_from(client_or_url)
        self.keys = Keys(prefix)
        self.prefix = prefix
        self.scripts = FleetScripts.register(self.client)

    # ------------------------------------------------------------------ reading
    def _run_query(
        self, index_keys: list[str], since: float | None, limit: int, count: bool = False
    ) -> Any:
        with guard(self.client):
            return self.scripts.query(
                keys=[self.keys.tasks, *index_keys],
                args=[score(since), limit, "count" if count else "records"],
            )

    def _index_keys(self, state: str | None, name: str | None, worker: str | None) -> list[str]:
        keys = self.keys
        found: list[str] = []
        if state == FAILURE and name is not None:
            found.append(keys.failed(name))  # one index instead of two
        else:
            if state is not None:
                found.append(keys.state(state))
            if name is not None:
                found.append(keys.name(name))
        if worker is not None:
            found.append(keys.worker(worker))
        return found

    def get_task(self, uuid: str) -> Task | None:
        with guard(self.client):
            raw = self.client.hget(self.keys.tasks, uuid)
        return decode_task(raw) if raw is not None else None

    def find_task_ids(self, prefix: str, limit: int = 2) -> list[str]:
        if limit <= 0:
            return []
        with guard(self.client):
            pipe = self.client.pipeline(transaction=False)
            pipe.hexists(self.keys.tasks, prefix)
            pipe.zrangebylex(
                self.keys.ids, "[" + prefix, "[" + prefix + "\U0010ffff", start=0, num=limit
            )
            exact, found = pipe.execute()
        if exact:
            return [prefix]
        return [text(uuid) for uuid in found]

    def tasks(
        self,
        *,
        state: str | None = None,
        name: str | None = None,
        worker: str | None = None,
        since: float | None = None,
        limit: int = 50,
    ) -> list[Task]:
        if limit <= 0:
            return []
        index_keys = self._index_keys(state, name, worker) or [self.keys.recent]
        found = decode_tasks(self._run_query(index_keys, since, limit))
        found.sort(key=lambda t: t.state_ts, reverse=True)
        return found

    def count_tasks(
        self, *, state: str | None = None, name: str | None = None, worker: str | None = None
    ) -> int:
        index_keys = self._index_keys(state, name, worker)
        with guard(self.client):
            if not index_keys:
                return int(self.client.zcard(self.keys.ids))
            if len(index_keys) == 1:
                return int(self.client.zcard(index_keys[0]))
        return int(self._run_query(index_keys, None, -1, count=True))

    def active(self, worker: str | None = None) -> list[Task]:
        index_keys = [self.keys.state(STARTED)]
        if worker is not None:
            index_keys.append(self.keys.worker(worker))
        running = decode_tasks(self._run_query(index_keys, None, -1))
        running.sort(key=lambda t: t.started if t.started is not None else abs(t.state_ts))
        return running

    def failure_counts(self, window: float, now: float) -> dict[str, int]:
        with guard(self.client):
            flat = self.scripts.failure_counts(
                keys=[self.keys.fnames], args=[self.keys.ftimes_prefix, score(now - window)]
            )
        return {text(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}

    def recent_failures(self, name: str | None, window: float, now: float) -> list[Task]:
        index = self.keys.state(FAILURE) if name is None else self.keys.failed(name)
        return decode_tasks(self._run_query([index], now - window, -1))

    def failure_summary(
        self, name: str | None, window: float, now: float, limit: int
    ) -> FailureSummary:
        # Decoded records are already copies: summarise them on this side of the wire.
        return summarize_failures(self.recent_failures(name, window, now), limit)

    def runtime_stats(self, name: str) -> RuntimeStats | None:
        with guard(self.client):
            raw = self.client.lrange(self.keys.runtimes(name), 0, -1)
        values = sorted(float(v) for v in raw)
        return runtime_stats_of(name, values)

    def task_names(self) -> list[str]:
        with guard(self.client):
            pipe = self.client.pipeline(transaction=False)
            pipe.zrange(self.keys.names, 0, -1)
            pipe.zrange(self.keys.seen, 0, -1)
            retained, seen = pipe.execute()
        return sorted({text(n) for n in retained} | {text(n) for n in seen})

    def counts_by_state(self) -> dict[str, int]:
        with guard(self.client):
            pipe = self.client.pipeline(transaction=False)
            for state in TASK_STATES:
                pipe.zcard(self.keys.state(state))
            sizes = pipe.execute()
        return {state: int(n) for state, n in zip(TASK_STATES, sizes, strict=True) if n}

    def workers(self) -> list[Worker]:
        with guard(self.client):
            raw = self.client.hgetall(self.keys.workers)
        found = [w for w in (decode_worker(v) for v in raw.values()) if w is not None]
        found.sort(key=lambda w: w.hostname)
        return found

    def get_worker(self, hostname: str) -> Worker | None:
        with guard(self.client):
            raw = self.client.hget(self.keys.workers, hostname)
        return decode_worker(raw) if raw is not None else None

    def health(self) -> StreamHealth:
        with guard(self.client):
            pipe = self.client.pipeline(transaction=False)
            pipe.get(self.keys.health)
            pipe.get(self.keys.live)
            pipe.get(self.keys.lost)
            raw, raw_live, raw_lost = pipe.execute()
        health = StreamHealth()
        with contextlib.suppress(ValueError, TypeError):
            if raw:
                health = health_from_dict(json.loads(raw))
        for name in CONSUMER_FIELDS:
            setattr(health, name, getattr(StreamHealth(), name))
        if raw_live:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                live = json.loads(raw_live)
                for name in CONSUMER_FIELDS:
                    if name in live:
                        setattr(health, name, live[name])
                health.malformed += int(live.get("malformed") or 0)
                for reason, count in dict(live.get("malformed_by_reason") or {}).items():
                    by_reason = health.malformed_by_reason
                    by_reason[str(reason)] = by_reason.get(str(reason), 0) + int(count)
        with contextlib.suppress(ValueError, TypeError):
            health.changes_lost = int(raw_lost or 0)
        return health

    def fleet_counters(self) -> FleetCounters:
        """The writer's counters as last published (at most ``live_interval`` old)."""
        with guard(self.client):
            pipe = self.client.pipeline(transaction=False)
            pipe.hgetall(self.keys.metric_events)
            pipe.hgetall(self.keys.metric_runtimes)
            pipe.get(self.keys.metric_dropped)
            raw_events, raw_runtimes, raw_dropped = pipe.execute()
        return decode_counters(raw_events, raw_runtimes, raw_dropped)

    def __len__(self) -> int:
        with guard(self.client):
            return int(self.client.zcard(self.keys.ids))
