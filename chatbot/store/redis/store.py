"""The ``redis://`` fleet store: the picture of the fleet shared by every replica.

Why it looks like this:

- **One state machine, in one process.** Exactly one replica (the ingest lease holder, see
  :mod:`chatbot.store.lease`) is the *writer*: it applies events to an in-process
  :class:`~chatbot.store.memory.MemoryStore` and a thread writes what changed to Redis
  (:mod:`chatbot.store.redis.writer`). ``apply`` never waits for Redis.
- **Every replica reads Redis** (:mod:`chatbot.store.redis.reader`), the writer included.
- **Caps hold in Redis** because Redis mirrors the writer's capped store: an eviction deletes
  the record and its index entries in the same round as the insert that caused it.
- **Outages.** Reads raise :class:`StoreUnavailable` (one line). The writer keeps applying
  events in memory and writes what is pending when Redis answers again, without a restart.
- **Warm start.** :meth:`RedisFleetStore.start_writer` loads the stored tasks into a fresh state
  machine on a background thread; events applied meanwhile are buffered and applied after the
  load, so ordering and idempotence continue across restarts and failovers. Reads never wait
  for it.

Requires Redis >= 6.2 (``ZADD GT``, ``SET KEEPTTL``).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid as uuid_module
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from chatbot.config import DEFAULT_REDACT_KEYS
from chatbot.model import StreamHealth
from chatbot.redaction import FieldLimits
from chatbot.store.memory import MemoryStore
from chatbot.store.redis.connection import (
    DEFAULT_PREFIX,
    RedisClient,
    StoreUnavailable,
    guard,
    where,
)
from chatbot.store.redis.pending import WriterState
from chatbot.store.redis.reader import RedisFleetReader
from chatbot.store.redis.writer import LOADING, READER, WRITING, FleetWriter

__all__ = ["RedisFleetStore", "RedisStore"]

log = logging.getLogger(__name__)


class RedisFleetStore(RedisFleetReader, FleetWriter):
    """The ``redis://`` backend of :class:`chatbot.store.FleetStore`.

    Every instance answers reads from Redis. An instance becomes the writer with
    :meth:`start_writer` (the lease holder does that), after which :meth:`apply` feeds its
    in-process state machine; on a replica that is not the writer ``apply`` drops the events
    and returns 0. :meth:`flush` waits until what was applied is in Redis.
    """

    def __init__(
        self,
        client_or_url: RedisClient | str,
        prefix: str = DEFAULT_PREFIX,
        *,
        max_tasks: int = 10000,
        max_workers: int = 5000,
        redact_keys: Iterable[str] = tuple(DEFAULT_REDACT_KEYS.split(",")),
        clock: Callable[[], float] = time.time,
        limits: FieldLimits | None = None,
        max_task_names: int = 2000,
        runtime_samples: int = 512,
        failure_horizon: float = 86400.0,
        heartbeat_expire_factor: float = 2.0,
        flush_interval: float = 0.005,
        live_interval: float = 1.0,
        counters_interval: float = 5.0,
        load_buffer: int = 200_000,
        writer_client: RedisClient | None = None,
    ) -> None:
        if max_tasks < 1 or max_workers < 1:
            raise ValueError("max_tasks and max_workers must be at least 1")
        super().__init__(client_or_url, prefix)
        # Reads (commands, clicks) go through ``client``, which the factory gives short
        # timeouts; the writer's load and big transactions through this patient one.
        self.writer_client: RedisClient = (
            writer_client if writer_client is not None else self.client
        )
        self.max_tasks = max_tasks
        self.max_workers = max_workers
        self.clock = clock
        self.heartbeat_expire_factor = heartbeat_expire_factor
        self._redact_keys = tuple(redact_keys)
        self._limits = limits
        self._max_task_names = max_task_names
        self._runtime_samples = runtime_samples
        self._failure_horizon = failure_horizon
        self.flush_interval = flush_interval
        self.live_interval = live_interval
        # /metrics counters are copied and diffed whole (thousands of label sets): not per
        # flush; a scrape interval is 15 s or more anyway.
        self.counters_interval = counters_interval

        self._mode = READER
        self._mode_lock = threading.Lock()
        self._writer: WriterState | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._wake = threading.Event()
        self._load_buffer: deque[Mapping[str, Any]] = deque()
        self._load_buffer_max = load_buffer
        self.events_lost_during_load = 0
        self._warned_not_writer = False
        self._applied_gen = 0
        self._flushed_gen = 0
        self._flushed = threading.Condition()
        self._health_source: Callable[[StreamHealth], StreamHealth] | None = None
        self._pending_count = 0
        self.available = True  # as last seen by the writer
        self.last_error: str | None = None
        self.load_seconds: float | None = None
        self.tasks_loaded: int | None = None
        self.records_skipped = 0
        self._lost_unrecorded = 0  # see _count_lost
        self._lost_lock = threading.Lock()

    # ------------------------------------------------------------------ writer lifecycle
    @property
    def is_writer(self) -> bool:
        return self._mode != READER

    @property
    def ready(self) -> bool:
        """True once the writer's state machine is loaded and applying events."""
        return self._ready.is_set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    @property
    def pending(self) -> int:
        """Task and worker records changed but not yet written (e.g. during an outage)."""
        return self._pending_count

    def set_health_source(self, source: Callable[[StreamHealth], StreamHealth] | None) -> None:
        """``source(h)`` fills the consumer's half of ``h`` (``EventConsumer.health_into``).

        The writer publishes it with a short expiry, so every replica's :meth:`health` shows
        the live consumer's connection, and a dead holder's stops showing as connected.
        """
        self._health_source = source

    def start_writer(
        self,
        wait: bool = False,
        timeout: float | None = None,
        fence: Callable[[], bool] | None = None,
    ) -> bool:
        """Become the writer: load stored tasks in the background, then apply and flush.

        ``fence()`` (the lease keeper's ``confirmed``) is asked before every write: while it
        is False changes are kept pending, not written, as during an outage.
        Events passed to :meth:`apply` during the load are buffered (up to ``load_buffer``)
        and applied after it. Returns :attr:`ready` (after waiting, if ``wait``).
        """
        with self._mode_lock:
            if self._mode == READER:
                if self._thread is not None and self._thread.is_alive():
                    raise RuntimeError("the previous writer is still stopping")
                memory = MemoryStore(
                    self.max_tasks,
                    self.max_workers,
                    self._redact_keys,
                    self.clock,
                    limits=self._limits,
                    max_task_names=self._max_task_names,
                    runtime_samples=self._runtime_samples,
                    failure_horizon=self._failure_horizon,
                    heartbeat_expire_factor=self.heartbeat_expire_factor,
                    track_changes=True,
                )
                self._writer = WriterState(
                    memory=memory,
                    stop=threading.Event(),
                    session=uuid_module.uuid4().hex[:12],
                    fence=fence,
                )
                self._mode = LOADING
                self._ready.clear()
                self._load_buffer.clear()
                self._thread = threading.Thread(
                    target=self._run_writer,
                    args=(self._writer,),
                    name="chatops-redis-writer",
                    daemon=True,
                )
                self._thread.start()
        if wait:
            return self._ready.wait(timeout)
        return self.ready

    def stop_writer(self, flush: bool = True, timeout: float = 10.0) -> None:
        """Stop being the writer. ``flush``: write what is pending first (graceful stop);
        pass False after losing the lease, when another replica already writes."""
        with self._mode_lock:
            writer = self._writer
            self._mode = READER
            self._ready.clear()
            self._load_buffer.clear()
        if writer is None:
            return
        writer.final_flush = flush
        writer.stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("The Redis writer did not stop within %.1fs", timeout)
        with self._mode_lock:
            if self._writer is writer:
                self._writer = None
        if writer.unwritten:
            self._count_lost(writer.unwritten)

    def health(self) -> StreamHealth:
        """The shared health; a loss this replica could not record yet is recorded first
        (best effort: it stays counted here until Redis takes it)."""
        self._record_lost()
        health = super().health()
        with self._lost_lock:
            health.changes_lost += self._lost_unrecorded
        return health

    def _count_lost(self, unwritten: int) -> None:
        """Say that ``unwritten`` changes never reached Redis, in its shared counter (every
        replica's ``health().changes_lost``, ``event_loss_detected`` in /healthz). Redis may
        not answer now (the loss happens in an outage): then it is recorded by a later
        :meth:`health`, and counted in this replica's own health until then."""
        log.warning(
            "Event loss: %d task and worker changes were never written to the state store"
            " (the ingest lease moved while it did not answer)",
            unwritten,
        )
        with self._lost_lock:
            self._lost_unrecorded += unwritten
        self._record_lost()

    def _record_lost(self) -> None:
        with self._lost_lock:
            unrecorded = self._lost_unrecorded
        if not unrecorded:
            return
        try:
            with guard(self.client):
                self.client.incrby(self.keys.lost, unrecorded)
        except StoreUnavailable:
            return
        with self._lost_lock:
            self._lost_unrecorded -= unrecorded

    def close(self) -> None:
        self.stop_writer(flush=True)
        if self._owns_client:
            self.client.close()

    # ------------------------------------------------------------------ writing
    def apply(self, events: Iterable[Mapping[str, Any]]) -> int:
        with self._mode_lock:
            mode = self._mode
            if mode == WRITING:
                assert self._writer is not None
                applied = self._writer.memory.apply(events)
                self._applied_gen += 1
                self._wake.set()
                return applied
            batch = list(events)
            if mode == LOADING:
                room = self._load_buffer_max - len(self._load_buffer)
                if len(batch) > room:
                    self.events_lost_during_load += len(batch) - max(0, room)
                    batch = batch[: max(0, room)]
                self._load_buffer.extend(batch)
                return len(batch)
        if not self._warned_not_writer:
            self._warned_not_writer = True
            log.warning("Events applied to a Redis store that is not the writer are dropped")
        return 0

    def update_worker_info(
        self,
        hostname: str,
        *,
        pool: str | None = None,
        concurrency: int | None = None,
        queues: Sequence[str] | None = None,
    ) -> None:
        with self._mode_lock:
            if self._mode != WRITING or self._writer is None:
                return  # only the writer's picture is written; another replica's is not
            self._writer.memory.update_worker_info(
                hostname, pool=pool, concurrency=concurrency, queues=queues
            )
            self._applied_gen += 1
        self._wake.set()

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until everything applied so far is written; False on timeout (or outage)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._mode == LOADING and not self._ready.wait(timeout):
            return False
        target = self._applied_gen
        self._wake.set()
        with self._flushed:
            while self._flushed_gen < target:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                if self._mode == READER:
                    return False
                self._flushed.wait(0.05 if left is None else min(left, 0.05))
        return True


class RedisStore(RedisFleetStore):
    """A standalone writer with no lease, for one process on its own (a tool, a benchmark):
    the writer from construction, and ``apply`` returns once its batch is in Redis.

    The service uses :class:`RedisFleetStore` behind the lease instead, whose ``apply`` does
    not wait (and so coalesces more). Raises :class:`StoreUnavailable` if Redis cannot be
    loaded from within ``timeout``.
    """

    def __init__(
        self,
        client_or_url: RedisClient | str,
        prefix: str = DEFAULT_PREFIX,
        *,
        timeout: float = 60.0,
        **options: Any,
    ) -> None:
        options.setdefault("flush_interval", 0.0)
        super().__init__(client_or_url, prefix, **options)
        self.write_timeout = timeout
        if not self.start_writer(wait=True, timeout=timeout):
            self.stop_writer(flush=False)
            raise StoreUnavailable(
                f"state store unavailable: Redis at {where(self.client)}: "
                f"could not load the stored state within {timeout:g}s"
            )

    def apply(self, events: Iterable[Mapping[str, Any]]) -> int:
        applied = super().apply(events)
        self.flush(timeout=self.write_timeout)
        return applied
