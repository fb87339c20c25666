"""Redis-backed state: ingest against Celery's State, and how fast a restarted replica is ready.

    python -m bench.redis_store                 # private redis-server, the full run
    python -m bench.redis_store --quick         # a small run
    python -m bench.redis_store --state redis://host:6379/5   # an existing Redis (db is FLUSHED)

The events are ``bench.events``' seeded fleet stream, the same as ``bench.ingest`` uses. Each
measurement runs in a fresh child process, one store per process, so one store's heap and
garbage never colour another's figures. Nothing here asserts; it prints figures and ratios.

Rows:

- **ingest**: fill the store to its cap (untimed), then apply ``--events`` more in batches of
  1000 (what the event consumer hands to ``apply``) and stop the clock when everything is
  *readable in Redis* (``flush()`` returned), not when ``apply`` returned. Celery's
  ``State.event`` is fed the same events one call at a time, as Flower and ``celery events``
  do. Reported as events/s (wall) and CPU microseconds per event of the ingesting process
  (the wall figure is at the mercy of whatever else the machine runs; CPU much less so). The
  Redis server's own CPU is reported apart: in production it is another machine's.
- **ready**: a store with ``--ready-tasks`` tasks retained in Redis; a fresh process opens a
  new store and times the first answers to ``tasks(state=FAILURE)``, ``active()`` and
  ``get_task`` (what a restarted replica does), then the writer's warm-up ``load()`` of every
  stored task into its state machine. Flower 2.2 needs 8.35 s to load and 1.96 s to save a
  100k-task state file (docs/benchmarks.md); the memory backend's snapshot file is
  timed on the same tasks for comparison.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from bench.events import Event, FleetEvents
from bench.steady import settled
from chatbot.demo.embedded import EmbeddedRedis
from chatbot.model import FAILURE
from chatbot.store.memory import MemoryStore
from chatbot.store.redis import RedisFleetStore, connect
from chatbot.store.snapshot import SnapshotWriter

BATCH = 1000  # the consumer's batch_max
TARGET_INGEST = 2.0  # x celery State
TARGET_READY_S = 1.0
FLOWER_LOAD_S, FLOWER_SAVE_S = 8.35, 1.96  # Flower 2.2, 100k tasks (docs/benchmarks.md)


def _stream(seed: int) -> Iterator[Event]:
    return FleetEvents(seed).stream(None, received=True)


def _batches(stream: Iterator[Event], count: int) -> list[list[Event]]:
    events = list(itertools.islice(stream, count))
    return [events[i : i + BATCH] for i in range(0, len(events), BATCH)]


def _server_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


# ---------------------------------------------------------------------------------------------
# Children
# ---------------------------------------------------------------------------------------------
def child_ingest(options: dict[str, Any]) -> dict[str, Any]:
    kind, cap, seed, count = options["kind"], options["cap"], options["seed"], options["events"]
    stream = _stream(seed)
    store: Any
    if kind == "celery":
        from celery.events.state import State

        store = State(max_tasks_in_memory=cap)
        while not settled(store):  # the cap, and its event heap's bound (bench/steady.py)
            for event in itertools.islice(stream, BATCH):
                store.event(event)
    elif kind == "memory":
        store = MemoryStore(max_tasks=cap)
        while not settled(store):
            store.apply(list(itertools.islice(stream, BATCH)))
    else:
        client = connect(options["url"])
        if options.get("flush_interval") is None:
            options["flush_interval"] = RedisFleetStore(client).flush_interval
        store = RedisFleetStore(
            client, options["prefix"], max_tasks=cap, flush_interval=options["flush_interval"]
        )
        store.start_writer(wait=True, timeout=60)
        while not settled(store):
            store.apply(list(itertools.islice(stream, BATCH)))
            store.flush(timeout=60)
    batches = _batches(stream, count)
    applied = sum(len(b) for b in batches)
    gc.collect()
    server0 = _server_cpu(store.client) if kind == "redis" else 0.0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if kind == "celery":
        handle = store.event
        for batch in batches:
            for event in batch:
                handle(event)
    else:
        for batch in batches:
            store.apply(batch)
        if kind == "redis":
            store.flush(timeout=300)  # the clock stops when Redis has it all
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    result = {
        "kind": kind,
        "cap": cap,
        "events": applied,
        "rate": applied / wall,
        "cpu_us": cpu / applied * 1e6,
    }
    if kind == "redis":
        result["server_cpu_us"] = (_server_cpu(store.client) - server0) / applied * 1e6
        result["retained"] = len(store)
        store.close()
    return result


def child_fill(options: dict[str, Any]) -> dict[str, Any]:
    """Leave ``tasks`` tasks in Redis under ``prefix`` (and a snapshot file of the same)."""
    tasks, seed = options["tasks"], options["seed"]
    client = connect(options["url"])
    store = RedisFleetStore(client, options["prefix"], max_tasks=tasks)
    store.start_writer(wait=True, timeout=60)
    memory = MemoryStore(max_tasks=tasks)
    stream = _stream(seed)
    while len(memory) < tasks:
        batch = list(itertools.islice(stream, BATCH))
        store.apply(batch)
        memory.apply(batch)
    store.flush(timeout=300)
    result: dict[str, Any] = {"retained": len(store), "failures": store.count_tasks(state=FAILURE)}
    store.close()
    writer = SnapshotWriter(memory, options["snapshot"])
    started = time.perf_counter()
    writer.write(force=True)
    result["snapshot_save_s"] = time.perf_counter() - started
    result["snapshot_bytes"] = writer.last_write_bytes
    result["redis_used_memory"] = int(client.info("memory")["used_memory"])
    return result


def child_ready(options: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    store = RedisFleetStore(options["url"], options["prefix"], max_tasks=options["tasks"])
    failures = store.tasks(state=FAILURE)
    first_answer = time.perf_counter() - started
    active = store.active()
    some = failures[0].uuid if failures else active[0].uuid
    task = store.get_task(some)
    ready = time.perf_counter() - started
    load_started = time.perf_counter()
    store.start_writer(wait=True, timeout=600)
    load = time.perf_counter() - load_started
    result = {
        "first_answer_s": first_answer,
        "ready_s": ready,
        "answers": [len(failures), len(active), task is not None],
        "load_s": load,
        "loaded": store.tasks_loaded,
    }
    store.stop_writer(flush=False)
    store.close()
    memory = MemoryStore(max_tasks=options["tasks"])
    snapshot_started = time.perf_counter()
    SnapshotWriter(memory, options["snapshot"]).load()
    result["snapshot_load_s"] = time.perf_counter() - snapshot_started
    return result


CHILDREN = {"ingest": child_ingest, "fill": child_fill, "ready": child_ready}


def _run_child(mode: str, options: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.redis_store", "--child", mode, json.dumps(options)],
        check=True,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# ---------------------------------------------------------------------------------------------
# Parent
# ---------------------------------------------------------------------------------------------
def _fmt(rate: float) -> str:
    return f"{rate / 1000:7.1f}k"


def section_ingest(args: argparse.Namespace, url: str, caps: list[int]) -> None:
    print(f"\ningest: {args.events:,} events after filling to the cap, batches of {BATCH}")
    print(f"  {'cap':>8}  {'store':<8} {'ev/s':>9} {'cpu us/ev':>10} {'redis us/ev':>12}")
    for cap in caps:
        rows: dict[str, dict[str, Any]] = {}
        for kind in ("celery", "memory", "redis"):
            options = {
                "kind": kind,
                "cap": cap,
                "seed": args.seed,
                "events": args.events,
                "url": url,
                "prefix": f"bench-ingest-{cap}",
                "flush_interval": args.flush_interval,
            }
            rows[kind] = row = _run_child("ingest", options)
            server = f"{row['server_cpu_us']:12.1f}" if "server_cpu_us" in row else " " * 12
            print(f"  {cap:>8,}  {kind:<8} {_fmt(row['rate'])} {row['cpu_us']:10.1f} {server}")
        celery, ours = rows["celery"], rows["redis"]
        wall_ratio = ours["rate"] / celery["rate"]
        cpu_ratio = celery["cpu_us"] / ours["cpu_us"]
        print(
            f"  {'':>8}  redis vs celery State: {wall_ratio:4.2f}x wall, {cpu_ratio:4.2f}x by CPU"
            f" (target >= {TARGET_INGEST:.0f}x)"
        )


def section_ready(args: argparse.Namespace, url: str) -> None:
    tasks = args.ready_tasks
    with tempfile.TemporaryDirectory(prefix="chatops-bench-") as tmp:
        snapshot = str(Path(tmp) / "snapshot.json")
        options = {
            "tasks": tasks,
            "seed": args.seed,
            "url": url,
            "prefix": "bench-ready",
            "snapshot": snapshot,
        }
        filled = _run_child("fill", options)
        ready = _run_child("ready", options)
    print(f"\nready: a fresh replica, {filled['retained']:,} tasks retained in Redis")
    print(f"  first answer (tasks --state FAILURE)   {ready['first_answer_s'] * 1000:8.1f} ms")
    print(
        f"  ready (+ active, get_task)             {ready['ready_s'] * 1000:8.1f} ms"
        f"   (target < {TARGET_READY_S:.0f} s; Flower loads for {FLOWER_LOAD_S} s:"
        f" {FLOWER_LOAD_S / ready['ready_s']:,.0f}x)"
    )
    print(
        f"  writer warm-up load() of {ready['loaded']:,} tasks   {ready['load_s']:8.2f} s"
        f"   (Flower's load: {FLOWER_LOAD_S / ready['load_s']:.1f}x)"
    )
    print(f"  answers: {ready['answers'][0]} failures, {ready['answers'][1]} active, task found")
    print(f"  Redis used_memory {filled['redis_used_memory'] / 2**20:,.0f} MiB")
    save, load = filled["snapshot_save_s"], ready["snapshot_load_s"]
    print(f"\nmemory:// snapshot of the same {filled['retained']:,} tasks")
    print(
        f"  save {save:.2f} s ({FLOWER_SAVE_S / save:.1f}x Flower's {FLOWER_SAVE_S} s),"
        f" load {load:.2f} s ({FLOWER_LOAD_S / load:.1f}x Flower's {FLOWER_LOAD_S} s),"
        f" {filled['snapshot_bytes'] / 2**20:.0f} MiB"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", nargs=2, metavar=("MODE", "OPTIONS"), help=argparse.SUPPRESS)
    parser.add_argument("--state", help="redis://... to use (its database is flushed)")
    parser.add_argument("--events", type=int, default=300_000, help="events per ingest row")
    parser.add_argument("--caps", default="10000,100000", help="task caps, comma separated")
    parser.add_argument("--ready-tasks", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--flush-interval", type=float, default=None, help="the Redis writer's (default: its own)"
    )
    parser.add_argument("--quick", action="store_true", help="a small run")
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--skip-ready", action="store_true")
    args = parser.parse_args(argv)
    if args.child:
        mode, options = args.child
        print(json.dumps(CHILDREN[mode](json.loads(options))))
        return 0
    if args.quick:
        args.events = min(args.events, 50_000)
        args.caps = "10000"
        args.ready_tasks = min(args.ready_tasks, 20_000)
    caps = [int(c) for c in args.caps.split(",") if c.strip()]

    server: EmbeddedRedis | None = None
    url = args.state
    if url is None:
        server = EmbeddedRedis(config={"maxmemory": "0"}).start()
        url = server.url_for(1)
        print(f"Redis: a private redis-server on {url}")
    else:
        print(f"Redis: {url} (database flushed)")
    client = redis.Redis.from_url(url)
    client.flushdb()
    version = client.info("server")["redis_version"]
    client.close()
    print(f"redis {version}, python {sys.version.split()[0]}, seed {args.seed}")
    try:
        if not args.skip_ingest:
            section_ingest(args, url, caps)
        if not args.skip_ready:
            section_ready(args, url)
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
