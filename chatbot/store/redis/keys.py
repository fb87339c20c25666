"""The key schema of the fleet in Redis, and the server-side scripts that walk and move it.

Keys are plain ``<prefix>:...`` names (not hash-tagged: Redis Cluster is not supported). Task
records are compact JSON values in one hash; indexes are sorted sets scored by the time of the
task's latest transition (by state, name, worker, failures by name, all tasks); ids are also
kept in a lexicographic index for prefix lookup; per-name failure times and runtime samples live
apart from the records, so they outlive evictions as they do in memory.

The Lua scripts are module constants, registered once per client by
:meth:`FleetScripts.register`: each call then goes by ``EVALSHA``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from redis.commands.core import Script

from chatbot.model import Task
from chatbot.store.redis.connection import RedisClient

__all__ = [
    "FAILURE_COUNTS",
    "FIELD_SEP",
    "QUERY",
    "WRITE_TASKS",
    "FleetScripts",
    "Indexed",
    "Keys",
    "indexed",
    "meta",
    "score",
]

# Separates fields packed into one value: a script argument, a metric label set. Celery sends
# no hostname, event type or task name with it (meta() replaces it should one arrive).
FIELD_SEP = "\x1f"


def score(value: float | None) -> str:
    """A sorted-set score bound: None is no bound."""
    return "-inf" if value is None else repr(float(value))


# KEYS[1]: the task hash; KEYS[2..]: index sorted sets a task must all be in.
# ARGV[1]: lowest score to include; ARGV[2]: at most this many (-1: all); ARGV[3]: "count" to
# return how many match instead of the records. Walks the smallest index newest first.
QUERY = """
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
FAILURE_COUNTS = """
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
# (see meta).
WRITE_TASKS = """
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


def meta(
    op: str, ts: float, state: str, name: str | None, worker: str | None, old: Indexed | None
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
        if FIELD_SEP in fields[i]:
            # Not a name Celery would send; indexed under a lookalike rather than mis-split.
            fields[i] = fields[i].replace(FIELD_SEP, "?")
    return FIELD_SEP.join(fields)


class Keys:
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
        # Changes writers could not write before handing over: kept out of fleet_patterns,
        # so a resync after Redis came back empty does not forget that events were lost.
        self.lost = f"{p}:lost"
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
        return [glob_escape(k) for k in fixed] + [glob_escape(k) + "*" for k in families]


def glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class Indexed(NamedTuple):
    """What the writer last wrote to the indexes for one task."""

    state: str
    name: str | None
    worker: str | None
    state_ts: float
    finished: float | None


def indexed(task: Task) -> Indexed:
    return Indexed(task.state, task.name, task.worker, task.state_ts, task.finished)


@dataclass(frozen=True)
class FleetScripts:
    """The fleet's scripts, registered on one client."""

    query: Script
    failure_counts: Script
    write_tasks: Script

    @classmethod
    def register(cls, client: RedisClient) -> FleetScripts:
        return cls(
            query=client.register_script(QUERY),
            failure_counts=client.register_script(FAILURE_COUNTS),
            write_tasks=client.register_script(WRITE_TASKS),
        )
