"""The write-behind writer's thread: load the stored picture, then drain the state machine and
write what changed, through outages.

Exactly one replica (the ingest lease holder) is the writer: it keeps a
:class:`~chatbot.store.memory.MemoryStore` with ``track_changes=True``, so event semantics exist
once in the code base. This thread drains what changed (tasks, workers, health and the
statistics samples of :class:`~chatbot.store.memory.StoreChanges`) and writes it in one
``MULTI`` round trip per round: a few milliseconds of events coalesced, a backlog in
transactions of at most ``WRITE_CHUNK`` records. Nothing is written while the lease is
unconfirmed (the ``fence``). What could not be written stays pending and is written when Redis
answers again; if Redis came back *empty* (its marker key is gone), the whole picture is
rewritten.

:class:`FleetWriter` holds the thread's methods; :class:`~chatbot.store.redis.store.RedisFleetStore`
mixes it in and owns the state declared below (the lifecycle that sets it up, ``start_writer``
and ``stop_writer``, and the thread share it under ``_mode_lock``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Mapping
from typing import Any

import redis.exceptions

from chatbot.model import FleetCounters, RuntimeHistogram, StreamHealth, Task
from chatbot.store.codec import dumps, health_from_dict, health_to_dict, worker_to_dict
from chatbot.store.memory import MAX_EVENT_TYPES, MAX_LABEL_SETS
from chatbot.store.redis.connection import RedisClient, breaker_for, text, unavailable
from chatbot.store.redis.keys import FleetScripts, Keys, indexed
from chatbot.store.redis.pending import Pending, Plan, WriterState
from chatbot.store.redis.values import (
    CONSUMER_FIELDS,
    decode_counters,
    decode_task,
    decode_worker,
    label_field,
)

__all__ = ["LOADING", "READER", "WRITING", "FleetWriter"]

log = logging.getLogger(__name__)

READER, LOADING, WRITING = "reader", "loading", "writing"

# Task writes and deletes per transaction: a flood or a backlog after an outage is written in
# several, so Redis never blocks readers for long (at the cost of a reader possibly seeing one
# chunk written and the next not yet).
WRITE_CHUNK = 2000
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 2.0


class _Fenced(redis.exceptions.RedisError):
    """The writer may not write now (its lease is unconfirmed): handled like an outage."""


class FleetWriter:
    """The writer thread's methods, mixed into the Redis fleet store."""

    # Owned and set up by the store.
    client: RedisClient
    writer_client: RedisClient
    keys: Keys
    scripts: FleetScripts
    flush_interval: float
    live_interval: float
    counters_interval: float
    available: bool
    last_error: str | None
    load_seconds: float | None
    tasks_loaded: int | None
    records_skipped: int
    events_lost_during_load: int
    _failure_horizon: float
    _runtime_samples: int
    _max_task_names: int
    _mode: str
    _mode_lock: threading.Lock
    _writer: WriterState | None
    _ready: threading.Event
    _wake: threading.Event
    _load_buffer: deque[Mapping[str, Any]]
    _applied_gen: int
    _flushed_gen: int
    _flushed: threading.Condition
    _health_source: Callable[[StreamHealth], StreamHealth] | None
    _pending_count: int

    # -- the writer thread
    def _run_writer(self, writer: WriterState) -> None:
        try:
            if not self._load(writer):
                return
            self._flush_loop(writer)
        except Exception:  # pragma: no cover - a bug here must be loud, not silent
            log.exception("The Redis writer crashed")
            with self._mode_lock:
                if self._writer is writer:
                    self._mode = READER
                    self._ready.clear()

    def _load(self, writer: WriterState) -> bool:
        """Read the stored picture and warm the state machine (retrying through outages)."""
        keys = self.keys
        backoff = _BACKOFF_FIRST
        started = time.monotonic()
        while True:
            if writer.stop.is_set():
                return False
            try:
                raw_tasks = dict(self.writer_client.hscan_iter(keys.tasks, count=2000))
                pipe = self.writer_client.pipeline(transaction=False)
                pipe.hgetall(keys.workers)
                pipe.get(keys.health)
                pipe.zrange(keys.seen, 0, -1)
                pipe.hgetall(keys.metric_events)
                pipe.hgetall(keys.metric_runtimes)
                pipe.get(keys.metric_dropped)
                raw_workers, raw_health, seen, *raw_counters = pipe.execute()
                break
            except redis.exceptions.RedisError as exc:
                self._mark_failure(exc)
                if writer.stop.wait(backoff):
                    return False
                backoff = min(backoff * 2, _BACKOFF_MAX)
        tasks: list[Task] = []
        for raw in raw_tasks.values():
            task = decode_task(raw)
            if task is not None:
                tasks.append(task)
        workers = [w for w in (decode_worker(raw) for raw in raw_workers.values()) if w]
        # A record that cannot be read (or holds values of the wrong types) is skipped: one
        # poisoned record must never stop a replica from ingesting.
        self.records_skipped = len(raw_tasks) - len(tasks) + len(raw_workers) - len(workers)
        if self.records_skipped:
            log.warning("Skipped %d unreadable stored records", self.records_skipped)
        memory = writer.memory
        memory.load(tasks, workers)
        writer.shadow = {task.uuid: indexed(task) for task in tasks}
        writer.name_counts = Counter(task.name for task in tasks if task.name is not None)
        writer.names_seen = OrderedDict((text(name), None) for name in seen)
        base = StreamHealth()
        if raw_health:
            with contextlib.suppress(ValueError, TypeError):
                base = health_from_dict(json.loads(raw_health))
        for name in CONSUMER_FIELDS:  # the consumer's half is published apart, live
            setattr(base, name, getattr(StreamHealth(), name))
        writer.health_base = base
        writer.counters_base = decode_counters(*raw_counters)
        writer.counters_published = FleetCounters()
        with self._mode_lock:
            if writer.stop.is_set() or self._writer is not writer:
                return False
            buffered = list(self._load_buffer)
            self._load_buffer.clear()
            if buffered:
                memory.apply(buffered)
            self._mode = WRITING
            self._applied_gen += 1
        self.load_seconds = time.monotonic() - started
        self.tasks_loaded = len(tasks)
        if self.events_lost_during_load:
            log.warning(
                "%d events arrived while loading and did not fit the buffer",
                self.events_lost_during_load,
            )
        log.info("Loaded %d stored tasks in %.2fs", len(tasks), self.load_seconds)
        self._ready.set()
        return True

    def _flush_loop(self, writer: WriterState) -> None:
        pending = Pending()
        backoff = _BACKOFF_FIRST
        last_live = 0.0
        last_counters = 0.0
        last_round = 0.0
        failing = False
        stop_deadline: float | None = None
        while True:
            stopping = writer.stop.is_set()
            if stopping:
                if not writer.final_flush:
                    # Another replica writes now: what this one could not write is lost.
                    pending.merge(writer.memory.drain_changes(), writer.shadow or {})
                    writer.unwritten = pending.size()
                    return
                if stop_deadline is None:
                    stop_deadline = time.monotonic() + 5.0
            elif not failing:
                self._wake.wait(min(self.live_interval, self.counters_interval))
                self._wake.clear()
                # Let a few milliseconds of events coalesce into one round trip.
                pause = last_round + self.flush_interval - time.monotonic()
                if pause > 0:
                    writer.stop.wait(pause)
            last_round = time.monotonic()
            gen = self._applied_gen
            changes = writer.memory.drain_changes()
            pending.merge(changes, writer.shadow or {})
            pending.add_samples(writer, changes.failures, changes.runtimes)
            self._pending_count = pending.size()
            live_due = (
                self._health_source is not None and last_round - last_live >= self.live_interval
            )
            counters_due = last_round - last_counters >= self.counters_interval
            try:
                if writer.fence is not None and not writer.fence():
                    raise _Fenced("the ingest lease is not confirmed; changes are kept")
                if pending or live_due:
                    self._write(writer, pending, live_due)
                    if live_due:
                        last_live = last_round
                if counters_due:
                    self._publish_counters(writer)
                    last_counters = last_round
            except _Fenced:
                if stopping:
                    log.warning("Stopping unconfirmed: %d changes not written", pending.size())
                    writer.unwritten = pending.size()
                    return
                failing = True  # retried without waiting for new events
                writer.stop.wait(_BACKOFF_FIRST)
                continue
            except Exception as exc:
                if not isinstance(exc, redis.exceptions.RedisError):
                    log.exception("Writing to Redis failed; changes are kept, retrying")
                self._mark_failure(exc)
                failing = True
                if stopping and stop_deadline is not None and time.monotonic() > stop_deadline:
                    log.warning("Stopping with %d unwritten records", pending.size())
                    writer.unwritten = pending.size()
                    return
                if stopping:
                    time.sleep(backoff)
                else:
                    writer.stop.wait(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            if failing:
                log.info("Redis answers again; pending changes written")
            failing = False
            backoff = _BACKOFF_FIRST
            # Redis answers: reads need not wait out a breaker tripped during the outage.
            breaker_for(self.client).answered()
            breaker_for(self.writer_client).answered()
            self.available = True
            self.last_error = None
            self._pending_count = 0
            with self._flushed:
                if gen > self._flushed_gen:
                    self._flushed_gen = gen
                self._flushed.notify_all()
            if stopping:
                return

    def _mark_failure(self, exc: BaseException) -> None:
        message = str(unavailable(self.writer_client, exc))
        if self.available or message != self.last_error:
            log.warning("%s; changes are kept and written when it answers", message)
        self.available = False
        self.last_error = message

    def _write(self, writer: WriterState, pending: Pending, live_due: bool) -> None:
        """Write ``pending`` in as few transactions as the size allows; clears what was written."""
        assert writer.shadow is not None and writer.name_counts is not None
        assert writer.names_seen is not None
        live = self._live_health() if live_due else None
        while True:
            if writer.needs_resync:
                self._resync(writer, pending)
            health = self._combined_health(writer) if pending.health is not None else None
            chunk = pending.take(WRITE_CHUNK)
            last = not pending.has_records
            plan = Plan(
                self.keys,
                writer,
                chunk,
                failure_horizon=self._failure_horizon,
                runtime_samples=self._runtime_samples,
                max_task_names=self._max_task_names,
            )
            pipe = self.writer_client.pipeline(transaction=True)
            pipe.get(self.keys.mark)
            plan.emit(pipe, self.scripts.write_tasks)
            if last:
                if chunk.workers or chunk.gone_workers:
                    self._emit_workers(pipe, chunk)
                if health is not None:
                    pipe.set(self.keys.health, dumps(health_to_dict(health)))
                if live is not None:
                    pipe.set(
                        self.keys.live,
                        dumps(live),
                        px=max(1000, int(self.live_interval * 5000)),
                    )
            pipe.set(self.keys.mark, "1")
            try:
                results = pipe.execute()
            except BaseException:
                pending.restore(chunk)
                raise
            if results[0] is None and writer.shadow:
                # Redis lost its data (restarted empty, flushed): rewrite the whole picture.
                log.warning("Redis lost the stored state; rewriting it from this replica")
                writer.needs_resync = True
                continue
            plan.commit()
            if last:
                pending.health = None
                return

    def _publish_counters(self, writer: WriterState) -> None:
        """Write the /metrics counters that changed: stored base + this writer's counts, so
        they keep counting up across failovers (a Prometheus counter must not go back)."""
        base, published = writer.counters_base, writer.counters_published
        if base is None or published is None:
            return
        current = writer.memory.fleet_counters()
        events: dict[str, int] = {}
        new_events = 0
        for key, count in current.events.items():
            if published.events.get(key) == count:
                continue
            if key not in base.events and key not in published.events:
                if len(base.events) + new_events >= MAX_LABEL_SETS:
                    continue  # bounded in Redis as in memory: counted below as dropped
                new_events += 1
            events[label_field(key)] = base.events.get(key, 0) + count
        runtimes: dict[str, str] = {}
        for pair, histogram in current.runtimes.items():
            before = published.runtimes.get(pair)
            if before is not None and before.count == histogram.count:
                continue
            stored = base.runtimes.get(pair)
            if (
                stored is None
                and before is None
                and len(base.runtimes) + len(runtimes) >= MAX_LABEL_SETS
            ):
                continue
            stored = stored or RuntimeHistogram()
            merged = [a + b for a, b in zip(stored.buckets, histogram.buckets, strict=False)]
            runtimes[label_field(pair)] = dumps(
                [merged, stored.total + histogram.total, stored.count + histogram.count]
            )
        dropped = current.labels_dropped != published.labels_dropped
        if not events and not runtimes and not dropped:
            return
        pipe = self.writer_client.pipeline(transaction=True)
        if events:
            pipe.hset(self.keys.metric_events, mapping=dict(events))  # type: ignore[arg-type]
        if runtimes:
            pipe.hset(self.keys.metric_runtimes, mapping=dict(runtimes))  # type: ignore[arg-type]
        if dropped:
            pipe.set(self.keys.metric_dropped, base.labels_dropped + current.labels_dropped)
        pipe.execute()
        writer.counters_published = current

    def _emit_workers(self, pipe: Any, chunk: Pending) -> None:
        if chunk.workers:
            pipe.hset(
                self.keys.workers,
                mapping={h: dumps(worker_to_dict(w)) for h, w in chunk.workers.items()},
            )
        if chunk.gone_workers:
            pipe.hdel(self.keys.workers, *chunk.gone_workers)

    def _resync(self, writer: WriterState, pending: Pending) -> None:
        """Empty the fleet keys and queue the writer's whole picture (raises while Redis is
        down; ``needs_resync`` stays set until it completes)."""
        self._delete_fleet_keys()
        writer.shadow = {}
        writer.name_counts = Counter()
        writer.names_seen = OrderedDict()
        memory = writer.memory
        pending.tasks = {t.uuid: t for t in memory.tasks(limit=max(1, len(memory)))}
        pending.removed.clear()
        pending.workers = {w.hostname: w for w in memory.workers()}
        pending.gone_workers.clear()
        pending.health = memory.health()
        pending.failures.clear()
        pending.runtimes.clear()
        pending.add_samples(writer, *memory.all_samples())
        writer.needs_resync = False

    def _delete_fleet_keys(self) -> None:
        for pattern in self.keys.fleet_patterns():
            batch: list[str] = []
            for key in self.writer_client.scan_iter(match=pattern, count=1000):
                batch.append(text(key))
                if len(batch) >= 1000:
                    self.writer_client.delete(*batch)
                    batch.clear()
            if batch:
                self.writer_client.delete(*batch)

    def _combined_health(self, writer: WriterState) -> StreamHealth:
        """The writer's counters on top of those stored before it took over."""
        health = writer.memory.health()
        base = writer.health_base or StreamHealth()
        health.events_total += base.events_total
        health.malformed += base.malformed
        health.tasks_evicted += base.tasks_evicted
        health.workers_evicted += base.workers_evicted
        counts = health.events_by_type
        for kind, count in base.events_by_type.items():
            if kind in counts or len(counts) < MAX_EVENT_TYPES:
                counts[kind] = counts.get(kind, 0) + count
            else:
                counts["other"] = counts.get("other", 0) + count
        if base.last_event_at is not None and (
            health.last_event_at is None or base.last_event_at > health.last_event_at
        ):
            health.last_event_at = base.last_event_at
        return health

    def _live_health(self) -> dict[str, Any] | None:
        source = self._health_source
        if source is None:
            return None
        try:
            filled = source(StreamHealth())
        except Exception:  # pragma: no cover - the consumer's problem, not the store's
            log.exception("The health source failed")
            return None
        live = {name: getattr(filled, name) for name in CONSUMER_FIELDS}
        live["malformed"] = filled.malformed
        live["malformed_by_reason"] = dict(filled.malformed_by_reason)
        return live
