"""The ``redis://`` backends: the fleet picture and the records, shared by every replica.

Why it looks like this:

- **One state machine, in one process.** Exactly one replica (the ingest lease holder, see
  :mod:`chatbot.store.lease`) is the *writer*: it keeps a
  :class:`~chatbot.store.memory.MemoryStore` with ``track_changes=True`` and applies events to
  it, so event semantics (ordering, idempotence, value-ordered eviction, redaction and clipping at
  ingest) exist exactly once in the code base. A flusher thread drains what changed and writes
  it to Redis in one ``MULTI`` round trip per round (a few milliseconds of events coalesced: a
  task whose received/started/succeeded arrive together is written once; a backlog goes in
  transactions of at most ``_WRITE_CHUNK`` records). Records and their index entries are moved
  by one server-side script per transaction, from a few arguments per task. ``apply`` never
  waits for Redis, and nothing is written while the lease is unconfirmed (the ``fence``).
- **Every replica reads Redis**, the writer included, so two replicas behind one Slack app
  answer the same. Every question is answered from an index in one round trip (a Lua script
  walks the smallest sorted set and fetches the records): task records are compact JSON values
  in one hash; indexes are sorted sets scored by the time of the task's latest transition (by
  state, name, worker, failures by name, all tasks); ids are also kept in a lexicographic index
  for prefix lookup; per-name failure times and runtime samples live apart from the records, so
  they outlive evictions as they do in memory.
- **Caps hold in Redis** because Redis mirrors the writer's capped store: an eviction deletes
  the record and its index entries in the same round as the insert that caused it.
- **Outages.** Reads raise :class:`StoreUnavailable` (one line). The writer keeps applying
  events in memory; what it could not write stays pending (coalesced per task, so bounded by the
  caps) and is written when Redis answers again, without a restart. If Redis came back *empty*
  (restarted without persistence), the writer notices that its marker key is gone and rewrites
  its whole picture.
- **Warm start.** :meth:`RedisFleetStore.start_writer` loads the stored tasks into a fresh state
  machine on a background thread; events applied meanwhile are buffered and applied after the
  load, so ordering and idempotence continue across restarts and failovers. Reads never wait
  for it.

Requires Redis >= 6.2 (``ZADD GT``, ``SET KEEPTTL``). Keys are plain ``<prefix>:...`` names, not
hash-tagged: Redis Cluster is not supported.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid as uuid_module
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeAlias

import redis
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

from chatbot.config import DEFAULT_REDACT_KEYS, redact_url
from chatbot.model import (
    FAILURE,
    STARTED,
    TASK_STATES,
    FailureSummary,
    FleetCounters,
    RuntimeHistogram,
    RuntimeStats,
    StreamHealth,
    Task,
    Worker,
    summarize_failures,
)
from chatbot.redaction import FieldLimits
from chatbot.store.memory import MemoryStore, StoreChanges, _percentile
from chatbot.store.snapshot import (
    _dumps,
    decode,
    encode,
    health_from_dict,
    health_to_dict,
    task_from_dict,
    task_to_dict,
    worker_from_dict,
    worker_to_dict,
)

__all__ = [
    "DEFAULT_PREFIX",
    "RedisFleetStore",
    "RedisRecordStore",
    "RedisStore",
    "StoreUnavailable",
    "connect",
]

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "chatops"
RedisClient: TypeAlias = redis.Redis

_MAX_FAILURE_TIMES = 100_000  # per name, as MemoryStore's deque
_MAX_EVENT_TYPES = 64
_MAX_METRIC_LABELS = 20_000  # label sets kept in Redis, as MemoryStore bounds its own
# Task writes and deletes per transaction: a flood or a backlog after an outage is written in
# several, so Redis never blocks readers for long (at the cost of a reader possibly seeing one
# chunk written and the next not yet).
_WRITE_CHUNK = 2000
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 2.0
_CONSUMER_FIELDS = (
    "connected",
    "broker",
    "reconnects",
    "disconnects_by_server",
    "last_error",
    "lag_events",
)


class StoreUnavailable(RuntimeError):
    """The shared state store (Redis) cannot answer; ``str(err)`` is one line for a reply."""


class _Fenced(redis.exceptions.RedisError):
    """The writer may not write now (its lease is unconfirmed): handled like an outage."""


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


def _client(client_or_url: RedisClient | str) -> tuple[RedisClient, bool]:
    if isinstance(client_or_url, str):
        return connect(client_or_url), True
    return client_or_url, False


def _where(client: RedisClient) -> str:
    kwargs = client.connection_pool.connection_kwargs
    host = kwargs.get("host", "?")
    port = kwargs.get("port", "?")
    db = kwargs.get("db", 0)
    return redact_url(f"redis://{host}:{port}/{db}")


def _unavailable(client: RedisClient, exc: BaseException) -> StoreUnavailable:
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return StoreUnavailable(f"state store unavailable: Redis at {_where(client)}: {reason}")


@contextlib.contextmanager
def _guard(client: RedisClient) -> Iterator[None]:
    try:
        yield
    except redis.exceptions.RedisError as exc:
        raise _unavailable(client, exc) from exc


def _score(value: float | None) -> str:
    return "-inf" if value is None else repr(float(value))


def _text(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


# KEYS[1]: the task hash; KEYS[2..]: index sorted sets a task must all be in.
# ARGV[1]: lowest score to include; ARGV[2]: at most this many (-1: all); ARGV[3]: "count" to
# return how many match instead of the records. Walks the smallest index newest first.
_QUERY = """
local n = #KEYS
local counting = ARGV[3] == 'count'
local primary, smallest = 2, -1
for i = 2, n do
  local size = redis.call('ZCARD', KEYS[i])
  if size == 0 then
    if counting then return 0 end
    return {}
  end
  if smallest < 0 or size < smallest then primary, smallest = i, size end
end
local limit = tonumber(ARGV[2])
local found, count, offset, chunk, full = {}, 0, 0, 500, false
while not full do
  local ids = redis.call('ZREVRANGEBYSCORE', KEYS[primary], '+inf', ARGV[1],
                         'LIMIT', offset, chunk)
  for _, id in ipairs(ids) do
    local member = true
    for i = 2, n do
      if i ~= primary and not redis.call('ZSCORE', KEYS[i], id) then
        member = false
        break
      end
    end
    if member then
      count = count + 1
      if not counting then found[count] = id end
      if limit >= 0 and count >= limit then
        full = true
        break
      end
    end
  end
  if #ids < chunk then break end
  offset = offset + chunk
end
if counting then return count end
local out = {}
for s = 1, #found, 1000 do
  local values = redis.call('HMGET', KEYS[1], unpack(found, s, math.min(s + 999, #found)))
  for _, v in ipairs(values) do
    if v then out[#out + 1] = v end
  end
end
return out
"""

# KEYS[1]: names with failures, scored by their latest; ARGV[1]: key prefix of the per-name
# failure times; ARGV[2]: the cutoff. Returns name, count, name, count...
_FAILURE_COUNTS = """
local names = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[2], '+inf')
local out = {}
for _, name in ipairs(names) do
  local c = redis.call('ZCOUNT', ARGV[1] .. name, ARGV[2], '+inf')
  if c > 0 then
    out[#out + 1] = name
    out[#out + 1] = c
  end
end
return out
"""


# ARGV[1]: the key prefix, then flat ops, two or three arguments each (KEYS[1]: the task hash):
#   uuid "r" record      -- the record only (indexes unchanged)
#   uuid meta record     -- a new or changed task: its record, then its index entries moved
#   uuid meta            -- an evicted task: its record and index entries go
# meta is "<op>\31<ts>\31<state>\31<name>\31<worker>\31<old state>\31<old name>\31<old worker>"
# with op n (new), c (changed) or d (deleted); an empty field means none (the store ignores
# empty names and hostnames). One argument instead of eight: packing arguments is what costs
# the writer most. A name containing \31 cannot be split like this; the writer never sends one
# (see _meta).
_WRITE_TASKS = """
local p = ARGV[1]
local tasks = KEYS[1]
local ids, recent = p .. ':idx:ids', p .. ':idx:recent'
local sp, np, wp, fp = p .. ':idx:state:', p .. ':idx:name:', p .. ':idx:worker:',
                       p .. ':idx:failed:'
local i, n = 2, #ARGV
local f = {}
while i <= n do
  local id, meta = ARGV[i], ARGV[i + 1]
  if meta == 'r' then
    redis.call('HSET', tasks, id, ARGV[i + 2])
    i = i + 3
  else
    local k, start = 1, 1
    while true do
      local stop = string.find(meta, '\\31', start, true)
      if not stop then
        f[k] = string.sub(meta, start)
        break
      end
      f[k] = string.sub(meta, start, stop - 1)
      k, start = k + 1, stop + 1
    end
    local op, ts, st, nm, wk, ost, onm, owk = f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8]
    if op == 'd' then
      redis.call('HDEL', tasks, id)
      redis.call('ZREM', ids, id)
      redis.call('ZREM', recent, id)
      redis.call('ZREM', sp .. ost, id)
      if onm ~= '' then redis.call('ZREM', np .. onm, id) end
      if owk ~= '' then redis.call('ZREM', wp .. owk, id) end
      if ost == 'FAILURE' then redis.call('ZREM', fp .. (onm ~= '' and onm or '?'), id) end
      i = i + 2
    else
      redis.call('HSET', tasks, id, ARGV[i + 2])
      if op == 'n' then redis.call('ZADD', ids, 0, id) end
      redis.call('ZADD', recent, ts, id)
      redis.call('ZADD', sp .. st, ts, id)
      if ost ~= '' and ost ~= st then redis.call('ZREM', sp .. ost, id) end
      if nm ~= '' then redis.call('ZADD', np .. nm, ts, id) end
      if onm ~= '' and onm ~= nm then redis.call('ZREM', np .. onm, id) end
      if wk ~= '' then redis.call('ZADD', wp .. wk, ts, id) end
      if owk ~= '' and owk ~= wk then redis.call('ZREM', wp .. owk, id) end
      local failed = false
      if st == 'FAILURE' then
        failed = fp .. (nm ~= '' and nm or '?')
        redis.call('ZADD', failed, ts, id)
      end
      if ost == 'FAILURE' then
        local was = fp .. (onm ~= '' and onm or '?')
        if was ~= failed then redis.call('ZREM', was, id) end
      end
      i = i + 3
    end
  end
end
return 1
"""
_SEP = "\x1f"


def _meta(
    op: str, ts: float, state: str, name: str | None, worker: str | None, old: _Indexed | None
) -> str:
    fields = [
        op,
        repr(ts),
        state,
        name or "",
        worker or "",
        old.state if old is not None else "",
        (old.name or "") if old is not None else "",
        (old.worker or "") if old is not None else "",
    ]
    for i in (3, 4, 6, 7):
        if _SEP in fields[i]:
            # Not a name Celery would send; indexed under a lookalike rather than mis-split.
            fields[i] = fields[i].replace(_SEP, "?")
    return _SEP.join(fields)


class _Keys:
    """Key names under one prefix. Task and worker names are used verbatim as key tails."""

    def __init__(self, prefix: str) -> None:
        if not prefix:
            raise ValueError("the key prefix must not be empty")
        self.prefix = p = prefix
        self.tasks = f"{p}:task"
        self.workers = f"{p}:worker"
        self.health = f"{p}:health"
        self.live = f"{p}:health:live"
        self.mark = f"{p}:mark"
        self.metric_events = f"{p}:metrics:events"
        self.metric_runtimes = f"{p}:metrics:runtimes"
        self.metric_dropped = f"{p}:metrics:dropped"
        self.ids = f"{p}:idx:ids"  # all scores 0: lexicographic, for prefix lookup
        self.recent = f"{p}:idx:recent"
        self.names = f"{p}:idx:names"  # names of retained tasks
        self.seen = f"{p}:stat:names"  # names with statistics, bounded
        self.fnames = f"{p}:stat:fnames"  # names with failure times, by the latest
        self.state_prefix = f"{p}:idx:state:"
        self.name_prefix = f"{p}:idx:name:"
        self.worker_prefix = f"{p}:idx:worker:"
        self.failed_prefix = f"{p}:idx:failed:"
        self.ftimes_prefix = f"{p}:stat:ftimes:"
        self.runtimes_prefix = f"{p}:stat:rt:"

    def state(self, state: str) -> str:
        return self.state_prefix + state

    def name(self, name: str) -> str:
        return self.name_prefix + name

    def worker(self, hostname: str) -> str:
        return self.worker_prefix + hostname

    def failed(self, name: str | None) -> str:
        return self.failed_prefix + (name or "?")

    def ftimes(self, name: str) -> str:
        return self.ftimes_prefix + name

    def runtimes(self, name: str) -> str:
        return self.runtimes_prefix + name

    def fleet_patterns(self) -> list[str]:
        """SCAN patterns of every fleet key (not records, not leases)."""
        fixed = [
            self.tasks,
            self.workers,
            self.health,
            self.live,
            self.mark,
            self.ids,
            self.recent,
            self.names,
            self.seen,
            self.fnames,
            self.metric_events,
            self.metric_runtimes,
            self.metric_dropped,
        ]
        families = [
            self.state_prefix,
            self.name_prefix,
            self.worker_prefix,
            self.failed_prefix,
            self.ftimes_prefix,
            self.runtimes_prefix,
        ]
        return [_glob_escape(k) for k in fixed] + [_glob_escape(k) + "*" for k in families]


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class _Indexed(NamedTuple):
    """What the writer last wrote to the indexes for one task."""

    state: str
    name: str | None
    worker: str | None
    state_ts: float
    finished: float | None


def _indexed(task: Task) -> _Indexed:
    return _Indexed(task.state, task.name, task.worker, task.state_ts, task.finished)


class _SampledMemoryStore(MemoryStore):
    """A MemoryStore that also hands out the statistics samples its transitions record.

    Failure times and runtime samples are recorded at the transition that produced them and
    outlive the task; deriving them from drained task records instead would lose those of
    tasks evicted before a flush (a flood, an outage). This hooks MemoryStore's two recording
    methods rather than re-implementing when a sample is taken; the private names used here
    are the whole coupling (a public ``drain_changes`` field would replace it).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sampling = False  # off while load() rebuilds samples that Redis already has
        self._failure_log: list[tuple[str, float]] = []
        self._runtime_log: list[tuple[str, float]] = []

    def _record_failure(self, name: str, ts: float) -> None:
        super()._record_failure(name, ts)
        if self.sampling:
            self._failure_log.append((name, ts))

    def _record_runtime(self, name: str, runtime: float) -> None:
        super()._record_runtime(name, runtime)
        if self.sampling:
            self._runtime_log.append((name, runtime))

    def drain_samples(self) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
        with self._lock:
            failures, self._failure_log = self._failure_log, []
            runtimes, self._runtime_log = self._runtime_log, []
        return failures, runtimes

    def all_samples(self) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
        """Every retained sample (to rewrite a Redis that lost its data)."""
        with self._lock:
            failures = [(n, ts) for n, times in self._failure_times.items() for ts in times]
            runtimes = [(n, v) for n, values in self._runtimes.items() for v in values]
            self._failure_log = []
            self._runtime_log = []
        return failures, runtimes


_READER, _LOADING, _WRITING = "reader", "loading", "writing"


@dataclass
class _Writer:
    """The writer's private state; touched only by its thread (and by the loader before it)."""

    memory: _SampledMemoryStore
    stop: threading.Event
    session: str = ""
    samples_taken: int = 0
    fence: Callable[[], bool] | None = None
    final_flush: bool = True
    shadow: dict[str, _Indexed] | None = None
    name_counts: Counter[str] | None = None
    names_seen: OrderedDict[str, None] | None = None
    health_base: StreamHealth | None = None
    needs_resync: bool = False
    # /metrics counters: what Redis held at takeover, and what this writer last published.
    counters_base: FleetCounters | None = None
    counters_published: FleetCounters | None = None


class RedisFleetStore:
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
    ) -> None:
        if max_tasks < 1 or max_workers < 1:
            raise ValueError("max_tasks and max_workers must be at least 1")
        self.client, self._owns_client = _client(client_or_url)
        self.keys = _Keys(prefix)
        self.prefix = prefix
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
        self._query = self.client.register_script(_QUERY)
        self._failure_counts = self.client.register_script(_FAILURE_COUNTS)
        self._write_tasks = self.client.register_script(_WRITE_TASKS)

        self._mode = _READER
        self._mode_lock = threading.Lock()
        self._writer: _Writer | None = None
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

    # ------------------------------------------------------------------ writer lifecycle
    @property
    def is_writer(self) -> bool:
        return self._mode != _READER

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
            if self._mode == _READER:
                if self._thread is not None and self._thread.is_alive():
                    raise RuntimeError("the previous writer is still stopping")
                memory = _SampledMemoryStore(
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
                self._writer = _Writer(
                    memory=memory,
                    stop=threading.Event(),
                    session=uuid_module.uuid4().hex[:12],
                    fence=fence,
                )
                self._mode = _LOADING
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
            self._mode = _READER
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

    def close(self) -> None:
        self.stop_writer(flush=True)
        if self._owns_client:
            self.client.close()

    # ------------------------------------------------------------------ writing
    def apply(self, events: Iterable[Mapping[str, Any]]) -> int:
        with self._mode_lock:
            mode = self._mode
            if mode == _WRITING:
                assert self._writer is not None
                applied = self._writer.memory.apply(events)
                self._applied_gen += 1
                self._wake.set()
                return applied
            batch = list(events)
            if mode == _LOADING:
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
            if self._mode != _WRITING or self._writer is None:
                return  # only the writer's picture is written; another replica's is not
            self._writer.memory.update_worker_info(
                hostname, pool=pool, concurrency=concurrency, queues=queues
            )
            self._applied_gen += 1
        self._wake.set()

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until everything applied so far is written; False on timeout (or outage)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._mode == _LOADING and not self._ready.wait(timeout):
            return False
        target = self._applied_gen
        self._wake.set()
        with self._flushed:
            while self._flushed_gen < target:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                if self._mode == _READER:
                    return False
                self._flushed.wait(0.05 if left is None else min(left, 0.05))
        return True

    # -- the writer thread
    def _run_writer(self, writer: _Writer) -> None:
        try:
            if not self._load(writer):
                return
            self._flush_loop(writer)
        except Exception:  # pragma: no cover - a bug here must be loud, not silent
            log.exception("The Redis writer crashed")
            with self._mode_lock:
                if self._writer is writer:
                    self._mode = _READER
                    self._ready.clear()

    def _load(self, writer: _Writer) -> bool:
        """Read the stored picture and warm the state machine (retrying through outages)."""
        keys = self.keys
        backoff = _BACKOFF_FIRST
        started = time.monotonic()
        while True:
            if writer.stop.is_set():
                return False
            try:
                raw_tasks = dict(self.client.hscan_iter(keys.tasks, count=2000))
                pipe = self.client.pipeline(transaction=False)
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
            task = _decode_task(raw)
            if task is not None:
                tasks.append(task)
        workers = [w for w in (_decode_worker(raw) for raw in raw_workers.values()) if w]
        memory = writer.memory
        memory.load(tasks, workers)
        writer.shadow = {task.uuid: _indexed(task) for task in tasks}
        writer.name_counts = Counter(task.name for task in tasks if task.name is not None)
        writer.names_seen = OrderedDict((_text(name), None) for name in seen)
        base = StreamHealth()
        if raw_health:
            with contextlib.suppress(ValueError, TypeError):
                base = health_from_dict(json.loads(raw_health))
        for name in _CONSUMER_FIELDS:  # the consumer's half is published apart, live
            setattr(base, name, getattr(StreamHealth(), name))
        writer.health_base = base
        writer.counters_base = _decode_counters(*raw_counters)
        writer.counters_published = FleetCounters()
        with self._mode_lock:
            if writer.stop.is_set() or self._writer is not writer:
                return False
            buffered = list(self._load_buffer)
            self._load_buffer.clear()
            memory.sampling = True
            if buffered:
                memory.apply(buffered)
            self._mode = _WRITING
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

    def _flush_loop(self, writer: _Writer) -> None:
        pending = _Pending()
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
            pending.merge(writer.memory.drain_changes(), writer.shadow or {})
            pending.add_samples(writer, *writer.memory.drain_samples())
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
        message = str(_unavailable(self.client, exc))
        if self.available or message != self.last_error:
            log.warning("%s; changes are kept and written when it answers", message)
        self.available = False
        self.last_error = message

    def _write(self, writer: _Writer, pending: _Pending, live_due: bool) -> None:
        """Write ``pending`` in as few transactions as the size allows; clears what was written."""
        assert writer.shadow is not None and writer.name_counts is not None
        assert writer.names_seen is not None
        live = self._live_health() if live_due else None
        while True:
            if writer.needs_resync:
                self._resync(writer, pending)
            health = self._combined_health(writer) if pending.health is not None else None
            chunk = pending.take(_WRITE_CHUNK)
            last = not pending.has_records
            plan = _Plan(self, writer, chunk)
            pipe = self.client.pipeline(transaction=True)
            pipe.get(self.keys.mark)
            plan.emit(pipe, self._write_tasks)
            if last:
                if chunk.workers or chunk.gone_workers:
                    self._emit_workers(pipe, chunk)
                if health is not None:
                    pipe.set(self.keys.health, _dumps(health_to_dict(health)))
                if live is not None:
                    pipe.set(
                        self.keys.live,
                        _dumps(live),
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

    def _publish_counters(self, writer: _Writer) -> None:
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
                if len(base.events) + new_events >= _MAX_METRIC_LABELS:
                    continue  # bounded in Redis as in memory: counted below as dropped
                new_events += 1
            events[_label_field(key)] = base.events.get(key, 0) + count
        runtimes: dict[str, str] = {}
        for pair, histogram in current.runtimes.items():
            before = published.runtimes.get(pair)
            if before is not None and before.count == histogram.count:
                continue
            stored = base.runtimes.get(pair)
            if (
                stored is None
                and before is None
                and len(base.runtimes) + len(runtimes) >= _MAX_METRIC_LABELS
            ):
                continue
            stored = stored or RuntimeHistogram()
            merged = [a + b for a, b in zip(stored.buckets, histogram.buckets, strict=False)]
            runtimes[_label_field(pair)] = _dumps(
                [merged, stored.total + histogram.total, stored.count + histogram.count]
            )
        dropped = current.labels_dropped != published.labels_dropped
        if not events and not runtimes and not dropped:
            return
        pipe = self.client.pipeline(transaction=True)
        if events:
            pipe.hset(self.keys.metric_events, mapping=dict(events))  # type: ignore[arg-type]
        if runtimes:
            pipe.hset(self.keys.metric_runtimes, mapping=dict(runtimes))  # type: ignore[arg-type]
        if dropped:
            pipe.set(self.keys.metric_dropped, base.labels_dropped + current.labels_dropped)
        pipe.execute()
        writer.counters_published = current

    def _emit_workers(self, pipe: Any, chunk: _Pending) -> None:
        if chunk.workers:
            pipe.hset(
                self.keys.workers,
                mapping={h: _dumps(worker_to_dict(w)) for h, w in chunk.workers.items()},
            )
        if chunk.gone_workers:
            pipe.hdel(self.keys.workers, *chunk.gone_workers)

    def _resync(self, writer: _Writer, pending: _Pending) -> None:
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
            for key in self.client.scan_iter(match=pattern, count=1000):
                batch.append(_text(key))
                if len(batch) >= 1000:
                    self.client.delete(*batch)
                    batch.clear()
            if batch:
                self.client.delete(*batch)

    def _combined_health(self, writer: _Writer) -> StreamHealth:
        """The writer's counters on top of those stored before it took over."""
        health = writer.memory.health()
        base = writer.health_base or StreamHealth()
        health.events_total += base.events_total
        health.malformed += base.malformed
        health.tasks_evicted += base.tasks_evicted
        health.workers_evicted += base.workers_evicted
        counts = health.events_by_type
        for kind, count in base.events_by_type.items():
            if kind in counts or len(counts) < _MAX_EVENT_TYPES:
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
        live = {name: getattr(filled, name) for name in _CONSUMER_FIELDS}
        live["malformed"] = filled.malformed
        return live

    # ------------------------------------------------------------------ reading
    def _run_query(
        self, index_keys: list[str], since: float | None, limit: int, count: bool = False
    ) -> Any:
        with _guard(self.client):
            return self._query(
                keys=[self.keys.tasks, *index_keys],
                args=[_score(since), limit, "count" if count else "records"],
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
        with _guard(self.client):
            raw = self.client.hget(self.keys.tasks, uuid)
        return _decode_task(raw) if raw is not None else None

    def find_task_ids(self, prefix: str, limit: int = 2) -> list[str]:
        if limit <= 0:
            return []
        with _guard(self.client):
            pipe = self.client.pipeline(transaction=False)
            pipe.hexists(self.keys.tasks, prefix)
            pipe.zrangebylex(
                self.keys.ids, "[" + prefix, "[" + prefix + "\U0010ffff", start=0, num=limit
            )
            exact, found = pipe.execute()
        if exact:
            return [prefix]
        return [_text(uuid) for uuid in found]

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
        found = _decode_tasks(self._run_query(index_keys, since, limit))
        found.sort(key=lambda t: t.state_ts, reverse=True)
        return found

    def count_tasks(
        self, *, state: str | None = None, name: str | None = None, worker: str | None = None
    ) -> int:
        index_keys = self._index_keys(state, name, worker)
        with _guard(self.client):
            if not index_keys:
                return int(self.client.zcard(self.keys.ids))
            if len(index_keys) == 1:
                return int(self.client.zcard(index_keys[0]))
        return int(self._run_query(index_keys, None, -1, count=True))

    def active(self, worker: str | None = None) -> list[Task]:
        index_keys = [self.keys.state(STARTED)]
        if worker is not None:
            index_keys.append(self.keys.worker(worker))
        running = _decode_tasks(self._run_query(index_keys, None, -1))
        running.sort(key=lambda t: t.started if t.started is not None else abs(t.state_ts))
        return running

    def failure_counts(self, window: float, now: float) -> dict[str, int]:
        with _guard(self.client):
            flat = self._failure_counts(
                keys=[self.keys.fnames], args=[self.keys.ftimes_prefix, _score(now - window)]
            )
        return {_text(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}

    def recent_failures(self, name: str | None, window: float, now: float) -> list[Task]:
        index = self.keys.state(FAILURE) if name is None else self.keys.failed(name)
        return _decode_tasks(self._run_query([index], now - window, -1))

    def failure_summary(
        self, name: str | None, window: float, now: float, limit: int
    ) -> FailureSummary:
        # Decoded records are already copies: summarise them on this side of the wire.
        return summarize_failures(self.recent_failures(name, window, now), limit)

    def runtime_stats(self, name: str) -> RuntimeStats | None:
        with _guard(self.client):
            raw = self.client.lrange(self.keys.runtimes(name), 0, -1)
        if not raw:
            return None
        values = sorted(float(v) for v in raw)
        return RuntimeStats(
            name=name,
            count=len(values),
            p50=_percentile(values, 0.50),
            p95=_percentile(values, 0.95),
            p99=_percentile(values, 0.99),
            max=values[-1],
        )

    def task_names(self) -> list[str]:
        with _guard(self.client):
            pipe = self.client.pipeline(transaction=False)
            pipe.zrange(self.keys.names, 0, -1)
            pipe.zrange(self.keys.seen, 0, -1)
            retained, seen = pipe.execute()
        return sorted({_text(n) for n in retained} | {_text(n) for n in seen})

    def counts_by_state(self) -> dict[str, int]:
        with _guard(self.client):
            pipe = self.client.pipeline(transaction=False)
            for state in TASK_STATES:
                pipe.zcard(self.keys.state(state))
            sizes = pipe.execute()
        return {state: int(n) for state, n in zip(TASK_STATES, sizes, strict=True) if n}

    def workers(self) -> list[Worker]:
        with _guard(self.client):
            raw = self.client.hgetall(self.keys.workers)
        found = [w for w in (_decode_worker(v) for v in raw.values()) if w is not None]
        found.sort(key=lambda w: w.hostname)
        return found

    def get_worker(self, hostname: str) -> Worker | None:
        with _guard(self.client):
            raw = self.client.hget(self.keys.workers, hostname)
        return _decode_worker(raw) if raw is not None else None

    def health(self) -> StreamHealth:
        with _guard(self.client):
            pipe = self.client.pipeline(transaction=False)
            pipe.get(self.keys.health)
            pipe.get(self.keys.live)
            raw, raw_live = pipe.execute()
        health = StreamHealth()
        with contextlib.suppress(ValueError, TypeError):
            if raw:
                health = health_from_dict(json.loads(raw))
        for name in _CONSUMER_FIELDS:
            setattr(health, name, getattr(StreamHealth(), name))
        if raw_live:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                live = json.loads(raw_live)
                for name in _CONSUMER_FIELDS:
                    if name in live:
                        setattr(health, name, live[name])
                health.malformed += int(live.get("malformed") or 0)
        return health

    def fleet_counters(self) -> FleetCounters:
        """The writer's counters as last published (at most ``live_interval`` old)."""
        with _guard(self.client):
            pipe = self.client.pipeline(transaction=False)
            pipe.hgetall(self.keys.metric_events)
            pipe.hgetall(self.keys.metric_runtimes)
            pipe.get(self.keys.metric_dropped)
            raw_events, raw_runtimes, raw_dropped = pipe.execute()
        return _decode_counters(raw_events, raw_runtimes, raw_dropped)

    def __len__(self) -> int:
        with _guard(self.client):
            return int(self.client.zcard(self.keys.ids))


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
                f"state store unavailable: Redis at {_where(self.client)}: "
                f"could not load the stored state within {timeout:g}s"
            )

    def apply(self, events: Iterable[Mapping[str, Any]]) -> int:
        applied = super().apply(events)
        self.flush(timeout=self.write_timeout)
        return applied


# -- the writer's bookkeeping ------------------------------------------------------------------
class _Pending:
    """Changes drained from the state machine and not yet written, coalesced per record."""

    def __init__(self) -> None:
        self.tasks: dict[str, Task] = {}
        self.removed: set[str] = set()
        self.workers: dict[str, Worker] = {}
        self.gone_workers: set[str] = set()
        self.health: StreamHealth | None = None
        self._last_health: StreamHealth | None = None
        self.failures: list[tuple[str, float, str]] = []  # name, time, unique member
        self.runtimes: list[tuple[str, float]] = []

    def __bool__(self) -> bool:
        return bool(
            self.tasks
            or self.removed
            or self.workers
            or self.gone_workers
            or self.health
            or self.failures
            or self.runtimes
        )

    def size(self) -> int:
        return len(self.tasks) + len(self.removed) + len(self.workers) + len(self.gone_workers)

    def add_samples(
        self,
        writer: _Writer,
        failures: list[tuple[str, float]],
        runtimes: list[tuple[str, float]],
    ) -> None:
        for name, when in failures:
            # A member unique to this writer's sample: a retried write adds it only once.
            writer.samples_taken += 1
            self.failures.append((name, when, f"{writer.session}:{writer.samples_taken}"))
        self.runtimes.extend(runtimes)
        # Bounded like the state machine's own: samples beyond these would be trimmed anyway.
        if len(self.runtimes) > 1_000_000:
            del self.runtimes[: len(self.runtimes) - 1_000_000]
        if len(self.failures) > 1_000_000:
            del self.failures[: len(self.failures) - 1_000_000]

    def merge(self, changes: StoreChanges, shadow: Mapping[str, _Indexed]) -> None:
        changed = {task.uuid for task in changes.tasks}
        for uuid in changes.removed:
            if uuid in changed:
                continue  # evicted, then created again: the new record replaces the old one
            self.tasks.pop(uuid, None)
            # A task never written needs no delete: keeps this bounded during an outage.
            if uuid in shadow:
                self.removed.add(uuid)
        for task in changes.tasks:
            self.tasks[task.uuid] = task
            self.removed.discard(task.uuid)
        for worker in changes.workers:
            self.workers[worker.hostname] = worker
            self.gone_workers.discard(worker.hostname)
        for hostname in changes.removed_workers:
            self.workers.pop(hostname, None)
            self.gone_workers.add(hostname)
        # Counters change with every event, malformed ones included; an idle writer writes
        # nothing.
        if changes.health != self._last_health:
            self.health = self._last_health = changes.health

    @property
    def has_records(self) -> bool:
        return bool(self.tasks or self.removed)

    def take(self, size: int) -> _Pending:
        """Remove and return up to ``size`` task writes and deletes; samples come with the
        first chunk, workers with the last."""
        chunk = _Pending()
        if len(self.tasks) <= size:
            chunk.tasks, self.tasks = self.tasks, {}
        else:
            for uuid in list(self.tasks)[:size]:
                chunk.tasks[uuid] = self.tasks.pop(uuid)
        room = size - len(chunk.tasks)
        if len(self.removed) <= room:
            chunk.removed, self.removed = self.removed, set()
        else:
            for _ in range(room):
                chunk.removed.add(self.removed.pop())
        chunk.failures, self.failures = self.failures, []
        chunk.runtimes, self.runtimes = self.runtimes, []
        if not self.has_records:
            chunk.workers, self.workers = self.workers, {}
            chunk.gone_workers, self.gone_workers = self.gone_workers, set()
        return chunk

    def restore(self, chunk: _Pending) -> None:
        """Put an unwritten chunk back, under anything newer that arrived meanwhile."""
        for uuid, task in chunk.tasks.items():
            self.tasks.setdefault(uuid, task)
        self.removed |= chunk.removed - set(self.tasks)
        self.failures[:0] = chunk.failures
        self.runtimes[:0] = chunk.runtimes
        for hostname, worker in chunk.workers.items():
            if hostname not in self.gone_workers:
                self.workers.setdefault(hostname, worker)
        self.gone_workers |= chunk.gone_workers - set(self.workers)


class _Plan:
    """The Redis commands for one chunk of changes, and the bookkeeping to commit after it.

    Task records and their index entries go to the ``_WRITE_TASKS`` script as flat ops: the
    writer's shadow says what each task was indexed under, the script moves it. Doing the
    index bookkeeping in Redis's process keeps it off this one's GIL, and a handful of
    arguments per task costs far less to send than a dozen commands.
    """

    def __init__(self, store: RedisFleetStore, writer: _Writer, chunk: _Pending) -> None:
        assert writer.shadow is not None and writer.name_counts is not None
        assert writer.names_seen is not None
        self.writer = writer
        keys = store.keys
        shadow = writer.shadow
        self.ops: list[str | bytes] = []
        self.deleted: list[str] = []
        self.runtimes: dict[str, list[float]] = {}
        self.failures: dict[str, float] = {}  # name -> latest failure time in this chunk
        self.ftimes: dict[str, dict[str, float]] = {}
        self.name_delta: Counter[str] = Counter()
        self.touched: dict[str, float] = {}
        self.new_shadow: dict[str, _Indexed] = {}
        self.horizon = store._failure_horizon
        self.samples = store._runtime_samples
        self.max_names = store._max_task_names
        self.keys = keys
        self._seen_after: OrderedDict[str, None] = writer.names_seen

        ops = self.ops
        name_delta = self.name_delta
        for uuid, task in chunk.tasks.items():
            record = encode(task_to_dict(task))
            old = shadow.get(uuid)
            entry = _indexed(task)
            if old == entry:
                # Only fields outside the indexes changed (or a duplicate event).
                ops += (uuid, "r", record)
                continue
            self.new_shadow[uuid] = entry
            name = task.name
            meta = _meta(
                "n" if old is None else "c", task.state_ts, task.state, name, task.worker, old
            )
            ops += (uuid, meta, record)
            if old is None:
                if name is not None:
                    name_delta[name] += 1
                    self.touched[name] = task.state_ts
                continue
            if old.name != name:
                if old.name is not None:
                    name_delta[old.name] -= 1
                if name is not None:
                    name_delta[name] += 1
                    self.touched[name] = task.state_ts
        deletes: dict[tuple[str, str | None, str | None], str] = {}
        for uuid in chunk.removed:
            old = shadow.get(uuid)
            if old is None:
                continue
            self.deleted.append(uuid)
            # Evicted tasks share a few (state, name, worker) combinations: build each once.
            where = (old.state, old.name, old.worker)
            gone = deletes.get(where)
            if gone is None:
                gone = deletes[where] = _meta("d", 0.0, "", None, None, old)
            ops += (uuid, gone)
            if old.name is not None:
                name_delta[old.name] -= 1
        # Statistics samples, as the state machine recorded them (they outlive evictions).
        for name, when, member in chunk.failures:
            self.ftimes.setdefault(name, {})[member] = when
            if when > self.failures.get(name, float("-inf")):
                self.failures[name] = when
        for name, runtime in chunk.runtimes:
            self.runtimes.setdefault(name, []).append(runtime)

    def emit(self, pipe: Any, write_tasks: Any) -> None:
        keys = self.keys
        writer = self.writer
        assert writer.name_counts is not None and writer.names_seen is not None
        if self.ops:
            write_tasks(keys=[keys.tasks], args=[keys.prefix, *self.ops], client=pipe)
        for name, members in self.ftimes.items():
            pipe.zadd(keys.ftimes(name), members)
        for name, delta in self.name_delta.items():
            before = writer.name_counts.get(name, 0)
            after = before + delta
            if before <= 0 < after:
                pipe.zadd(keys.names, {name: 0.0})
            elif after <= 0 < before:
                pipe.zrem(keys.names, name)
        for name, latest in self.failures.items():
            key = keys.ftimes(name)
            pipe.zremrangebyscore(key, "-inf", f"({_score(latest - self.horizon)}")
            pipe.zremrangebyrank(key, 0, -(_MAX_FAILURE_TIMES + 1))
            pipe.zadd(keys.fnames, {name: latest}, gt=True)
        for name, values in self.runtimes.items():
            key = keys.runtimes(name)
            pipe.rpush(key, *(repr(v) for v in values))
            pipe.ltrim(key, -self.samples, -1)
        # Names seen, bounded: the least recently seen name's statistics go, as in memory.
        if not self.touched:
            self._seen_after = writer.names_seen
            return
        seen = OrderedDict(writer.names_seen)
        for name in self.touched:
            seen[name] = None
            seen.move_to_end(name)
        pipe.zadd(keys.seen, self.touched)
        dropped: list[str] = []
        while len(seen) > self.max_names:
            stale, _ = seen.popitem(last=False)
            dropped.append(stale)
        if dropped:
            pipe.delete(*(keys.runtimes(n) for n in dropped), *(keys.ftimes(n) for n in dropped))
            pipe.zrem(keys.seen, *dropped)
            pipe.zrem(keys.fnames, *dropped)
        self._seen_after = seen

    def commit(self) -> None:
        writer = self.writer
        assert writer.shadow is not None and writer.name_counts is not None
        writer.shadow.update(self.new_shadow)
        for uuid in self.deleted:
            writer.shadow.pop(uuid, None)
        for name, delta in self.name_delta.items():
            count = writer.name_counts.get(name, 0) + delta
            if count > 0:
                writer.name_counts[name] = count
            else:
                writer.name_counts.pop(name, None)
        writer.names_seen = self._seen_after


# -- decoding ----------------------------------------------------------------------------------
def _decode_task(raw: str | bytes) -> Task | None:
    try:
        return task_from_dict(decode(raw))
    except (ValueError, TypeError, KeyError, AttributeError):
        log.warning("Skipping an unreadable task record in Redis")
        return None


def _decode_tasks(raws: Sequence[str | bytes]) -> list[Task]:
    found: list[Task] = []
    for raw in raws:
        task = _decode_task(raw)
        if task is not None:
            found.append(task)
    return found


_LABEL_SEP = "\x1f"  # cannot occur in a hostname, an event type or a task name


def _label_field(key: tuple[str, ...]) -> str:
    return _LABEL_SEP.join(key)


def _decode_counters(
    raw_events: Mapping[Any, Any], raw_runtimes: Mapping[Any, Any], raw_dropped: Any
) -> FleetCounters:
    counters = FleetCounters()
    for field, value in raw_events.items():
        parts = _text(field).split(_LABEL_SEP)
        if len(parts) == 3:
            counters.events[(parts[0], parts[1], parts[2])] = int(value)
    for field, value in raw_runtimes.items():
        parts = _text(field).split(_LABEL_SEP)
        try:
            buckets, total, count = json.loads(value)
        except (ValueError, TypeError):
            continue
        if len(parts) == 2:
            counters.runtimes[(parts[0], parts[1])] = RuntimeHistogram(
                [int(b) for b in buckets], float(total), int(count)
            )
    with contextlib.suppress(TypeError, ValueError):
        counters.labels_dropped = int(raw_dropped or 0)
    return counters


def _decode_worker(raw: str | bytes) -> Worker | None:
    try:
        return worker_from_dict(json.loads(raw))
    except (ValueError, TypeError, KeyError, AttributeError):
        log.warning("Skipping an unreadable worker record in Redis")
        return None


# -- records -----------------------------------------------------------------------------------
# KEYS[1]: the record, KEYS[2]: its kind's index; ARGV[1]: JSON, ARGV[2]: ttl in ms (0: none),
# ARGV[3]: order score, ARGV[4]: the key as indexed. Create only if absent, and index it,
# atomically.
_CREATE = """
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
_PRUNE = """
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
        self.client, self._owns_client = _client(client_or_url)
        self.prefix = prefix
        self._clock = clock
        self._create = self.client.register_script(_CREATE)
        self._prune = self.client.register_script(_PRUNE)

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
        with _guard(self.client):
            raw = self.client.get(self._key(kind, key))
        return _decode_record(raw)

    def put(self, kind: str, key: str, value: Mapping[str, Any], ttl: float | None = None) -> None:
        data = _dumps(dict(value))
        name = self._key(kind, key)
        with _guard(self.client):
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
        data = _dumps(dict(value))
        with _guard(self.client):
            stored = self._create(
                keys=[self._key(kind, key), self._index(kind)],
                args=[data, self._ttl_ms(ttl), repr(self._order_score()), key],
            )
        return bool(stored)

    def transition(
        self, kind: str, key: str, field: str, expected: Any, updates: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        name = self._key(kind, key)
        with _guard(self.client), self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(name)
                    raw = pipe.get(name)
                    value = _decode_record(raw)
                    if value is None or value.get(field) != expected:
                        pipe.unwatch()
                        return None
                    value.update(json.loads(_dumps(dict(updates))))
                    pipe.multi()
                    # XX: if the record expired since the GET, do not resurrect it.
                    pipe.set(name, _dumps(value), xx=True, keepttl=True)
                    (stored,) = pipe.execute()
                    return value if stored else None
                except redis.exceptions.WatchError:
                    continue  # changed under us: read again and re-check ``expected``

    def delete(self, kind: str, key: str) -> bool:
        with _guard(self.client):
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(self._key(kind, key))
            pipe.zrem(self._index(kind), key)
            deleted, _ = pipe.execute()
        return bool(deleted)

    def list(self, kind: str) -> list[dict[str, Any]]:
        index = self._index(kind)
        with _guard(self.client):
            indexed: list[str | bytes] = self.client.zrange(index, 0, -1)  # type: ignore[assignment]
            members = [_text(m) for m in indexed]
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
