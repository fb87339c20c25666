"""Ingest benchmark: our store and consumer against Celery's State and Flower, in one run.

    python -m bench.ingest            # the full run (a few minutes)
    python -m bench.ingest --quick    # a small run, under a minute

Every figure is printed next to a reference measured in the same run on the same events, and
as a ratio. Each store is measured in a fresh child process (``--child ...``), so one store's
heap, garbage collector load and allocator state never colour another's numbers. Nothing here
asserts; see bench/README.md for what each row means.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import importlib.util
import io
import itertools
import json
import logging
import os
import pstats
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import psutil

from bench.events import Event, FleetEvents, wire_messages
from bench.steady import settled

REPO = Path(__file__).resolve().parent.parent
BATCH = 1000  # what the consumer hands to store.apply under load (its batch_max)
TARGETS = {
    "ingest": 5.0,  # x celery State at the big cap
    "e2e": 3.0,  # x Flower
    "bytes": 1536,  # per retained task at the big cap
    "query_ms": 1.0,  # each triage query at the big cap
}

# ---------------------------------------------------------------------------------------------
# Child: one store, in-process ingest + memory + queries
# ---------------------------------------------------------------------------------------------


def _rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


class _Subject:
    """A store under test, fed and queried the way its real consumer would."""

    def __init__(self, kind: str, cap: int, state_url: str | None, validate: bool = True) -> None:
        self.kind = kind
        self.cap = cap
        self.validate = validate
        if kind in ("ours", "redis") and validate:
            from chatbot.eventcheck import EventChecker

            self.checker = EventChecker()
        if kind == "ours":
            from chatbot.store.memory import MemoryStore

            self.store: Any = MemoryStore(max_tasks=cap)
        elif kind == "redis":
            module = importlib.import_module("chatbot.store.redis")
            # Keys under a prefix of our own, deleted by cleanup(): nothing else is touched.
            self.prefix = f"chatops-bench-{os.getpid()}-{int(time.time())}"
            self.state_url = state_url
            self.store = module.RedisStore(state_url, self.prefix, max_tasks=cap)
        elif kind == "celery":
            from celery.events.state import State

            self.store = State(max_tasks_in_memory=cap)
        elif kind == "flower":
            from flower.events import EventsState

            self.store = EventsState(max_tasks_in_memory=cap)
        else:
            raise ValueError(kind)

    def feed(self, batch: list[Event]) -> None:
        if self.kind in ("ours", "redis"):
            # Validated first, as EventConsumer does before a batch reaches the store.
            if self.validate:
                check = self.checker.check
                for event in batch:
                    check(event)
            self.store.apply(batch)  # one lock per batch, as EventConsumer does
        else:
            handle = self.store.event  # Flower and State consumers: one call per event
            for event in batch:
                handle(event)

    def cleanup(self) -> None:
        if self.kind != "redis":
            return
        import redis

        stop = getattr(self.store, "stop_writer", None)
        if stop is not None:
            stop(flush=False)
        client = redis.Redis.from_url(str(self.state_url))
        try:
            for key in client.scan_iter(match=f"{self.prefix}:*", count=1000):
                client.unlink(key)
        finally:
            client.close()

    def retained(self) -> int:
        if self.kind in ("ours", "redis"):
            return len(self.store)
        return len(self.store.tasks)

    # -- the three triage questions ------------------------------------------------------
    def queries(self, now: float) -> dict[str, Callable[[Any], Any]]:
        store = self.store
        if self.kind in ("ours", "redis"):
            return {
                # What `/celery failed NAME` asks: counts over the window, the newest 20.
                "failures of one name": lambda name: store.failure_summary(name, 900.0, now, 20),
                "active by runtime": lambda _: store.active(),
                "one task by id": lambda uuid: store.get_task(uuid),
            }
        if self.kind == "celery":
            # What a State-based monitor (Flower <= 2.0, celery events) does: scan and sort.
            tasks = store.tasks

            def failures(name: str) -> list[Any]:
                cutoff = now - 900.0
                found = [
                    t
                    for t in list(tasks.data.values())
                    if t.state == "FAILURE" and t.name == name and (t.failed or 0) >= cutoff
                ]
                return sorted(found, key=lambda t: t.failed or 0, reverse=True)

            def active(_: Any) -> list[Any]:
                running = [t for t in list(tasks.data.values()) if t.state == "STARTED"]
                return sorted(running, key=lambda t: t.started or 0)

            return {
                "failures of one name": failures,
                "active by runtime": active,
                "one task by id": lambda uuid: tasks.get(uuid),
            }
        from flower.utils.tasks import get_task_by_id, search_tasks

        events = SimpleNamespace(state=store)  # what flower.utils.tasks expects
        return {
            "failures of one name": lambda name: search_tasks(
                events, type=name, state="FAILURE", sort_by="received", descending=True
            ),
            "active by runtime": lambda _: search_tasks(events, state="STARTED", sort_by="started"),
            "one task by id": lambda uuid: get_task_by_id(events, uuid),
        }


def child_store(options: dict[str, Any]) -> dict[str, Any]:
    kind, cap, seed = options["kind"], int(options["cap"]), int(options["seed"])
    measured_events = int(options["events"])
    stream = FleetEvents(seed).stream(None, received=True)
    rss0 = _rss()
    subject = _Subject(kind, cap, options.get("state_url"), bool(options.get("validate", True)))
    fill_events = 0
    fill_started = time.perf_counter()
    fill_time = 0.0
    # Fill to the cap (the cheap phase: nothing to evict yet), timed apart from steady state.
    while subject.retained() < cap:
        batch = list(itertools.islice(stream, BATCH))
        t0 = time.perf_counter()
        subject.feed(batch)
        fill_time += time.perf_counter() - t0
        fill_events += len(batch)
    fill_wall = time.perf_counter() - fill_started
    # Then untimed until every other bound the store keeps is full too (bench/steady.py).
    settle_events = 0
    while not settled(subject.store):
        batch = list(itertools.islice(stream, BATCH))
        subject.feed(batch)
        settle_events += len(batch)
    profiler = cProfile.Profile() if options.get("profile") else None
    steady_time = 0.0
    steady_cpu = 0.0
    steady_events = 0
    last: list[Event] = []
    while steady_events < measured_events:
        batch = list(itertools.islice(stream, BATCH))
        t0 = time.perf_counter()
        c0 = time.process_time()
        if profiler is not None:
            profiler.enable()
        subject.feed(batch)
        if profiler is not None:
            profiler.disable()
        steady_cpu += time.process_time() - c0
        steady_time += time.perf_counter() - t0
        steady_events += len(batch)
        last = batch
    rss1 = _rss()
    retained = subject.retained()
    result: dict[str, Any] = {
        "kind": kind,
        "cap": cap,
        "fill_events": fill_events,
        "fill_rate": fill_events / fill_time if fill_time else 0.0,
        "fill_wall": fill_wall,
        "settle_events": settle_events,
        "steady_events": steady_events,
        "steady_rate": steady_events / steady_time if steady_time else 0.0,
        "steady_cpu_rate": steady_events / steady_cpu if steady_cpu else 0.0,
        "retained": retained,
        "rss_delta": rss1 - rss0,
        "bytes_per_task": (rss1 - rss0) / retained if retained else 0.0,
    }
    if profiler is not None:
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("tottime").print_stats(18)
        result["profile"] = out.getvalue()
    if options.get("queries"):
        result["queries"] = _time_queries(subject, last, int(options.get("query_rounds", 300)))
    subject.cleanup()
    return result


def _time_queries(subject: _Subject, last: list[Event], rounds: int) -> dict[str, list[float]]:
    now = max(float(e["timestamp"]) for e in last)
    names = sorted({str(e["name"]) for e in last if e.get("name")})
    ids = [str(e["uuid"]) for e in last if e.get("uuid")]
    found = subject.queries(now)
    out: dict[str, list[float]] = {}
    for label, query in found.items():
        args = ids if "id" in label else names
        times: list[float] = []
        for i in range(rounds):
            arg = args[i % len(args)]
            t0 = time.perf_counter_ns()
            query(arg)
            times.append((time.perf_counter_ns() - t0) / 1e6)
        times.sort()
        out[label] = [times[len(times) // 2], times[min(len(times) - 1, int(len(times) * 0.99))]]
    return out


# ---------------------------------------------------------------------------------------------
# Child: one consumer against a private Redis, end to end
# ---------------------------------------------------------------------------------------------


def child_e2e(options: dict[str, Any]) -> dict[str, Any]:
    kind, url, cap = options["kind"], options["url"], int(options["cap"])
    expected = int(options["expected"])
    idle_limit = float(options.get("idle", 5.0))
    deadline = time.monotonic() + float(options.get("timeout", 600))
    if kind.startswith("ours"):
        from chatbot.consumer import EventConsumer
        from chatbot.model import StreamHealth
        from chatbot.store import FleetStore
        from chatbot.store.memory import MemoryStore

        store = MemoryStore(max_tasks=cap)
        stall = float(options.get("stall", 0.0))
        consumer = EventConsumer(
            url,
            cast("FleetStore", _Stalling(store, stall)) if stall else store,
            heartbeat=lambda: None,
            enable_events=lambda: None,
            split_reader=kind != "ours-inline",
            fast_path=kind != "ours-kombu",
        )
        consumer.start()
        consumer.wait_connected(30)

        def count() -> int:
            return store.health().events_total

        def losses() -> tuple[int, int]:
            h = consumer.health_into(StreamHealth())
            return h.disconnects_by_server, h.reconnects

        stop: Callable[[], None] = lambda: consumer.stop(5)  # noqa: E731
        return _watch(count, losses, stop, expected, idle_limit, deadline)

    # Flower 2.2's own consumer: its Events thread, EventsState and a Tornado I/O loop that
    # applies every event (io_loop.add_callback), exactly as `celery flower` runs them.
    from celery import Celery
    from flower.events import Events
    from tornado.ioloop import IOLoop

    cut_offs = [0]

    class _Count(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "Failed to capture events" in record.getMessage():
                cut_offs[0] += 1

    logging.getLogger("flower.events").addHandler(_Count())
    logging.getLogger("flower.events").setLevel(logging.ERROR)
    capp = Celery("flower-bench", broker=url, set_as_current=False)
    loop = IOLoop.current()
    events = Events(capp, loop, enable_events=False, max_tasks_in_memory=cap)
    events.start()
    result: dict[str, Any] = {}

    def watch() -> None:
        result.update(
            _watch(
                lambda: events.state.event_count,
                lambda: (cut_offs[0], cut_offs[0]),
                lambda: None,
                expected,
                idle_limit,
                deadline,
            )
        )
        loop.add_callback(loop.stop)

    threading.Thread(target=watch, daemon=True).start()
    loop.start()
    return result


class _Stalling:
    """A store whose writer is held up once, mid-stream, for ``stall`` seconds.

    What a slow query holding the store lock, a snapshot write or a long GC pause does to the
    consumer: nothing is applied meanwhile, and the question is whether the socket is still
    read (so Redis does not cut the subscriber off) or not.
    """

    def __init__(self, inner: Any, stall: float) -> None:
        self.inner = inner
        self.stall = stall
        self.first: float | None = None
        self.done = False

    def apply(self, events: Any) -> int:
        now = time.monotonic()
        if self.first is None:
            self.first = now
        elif not self.done and now - self.first > 1.0:
            self.done = True
            time.sleep(self.stall)
        return int(self.inner.apply(events))

    def health(self) -> Any:
        return self.inner.health()


def _watch(
    count: Callable[[], int],
    losses: Callable[[], tuple[int, int]],
    stop: Callable[[], None],
    expected: int,
    idle_limit: float,
    deadline: float,
) -> dict[str, Any]:
    print("READY", flush=True)
    first = last = None
    seen = 0
    last_change = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.005)
        n = count()
        now = time.time()
        if n != seen:
            if first is None:
                first = now
            seen, last, last_change = n, now, time.monotonic()
            if n >= expected:
                break
        elif first is not None and time.monotonic() - last_change > idle_limit:
            break
    cut, reconnects = losses()
    stop()
    return {
        "received": seen,
        "first": first,
        "last": last,
        "cut_offs": cut,
        "reconnects": reconnects,
    }


# ---------------------------------------------------------------------------------------------
# Parent
# ---------------------------------------------------------------------------------------------
_INGEST_HEADER = [
    "max tasks", "store", "filling", "settling", "steady", "ours / this", "per CPU s",
    "ours / this",
]  # fmt: skip


def _run_child(mode: str, options: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.ingest", "--child", mode, json.dumps(options)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {mode} {options.get('kind')} failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


class _E2EChild:
    """A consumer child we publish to while it runs."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.ingest", "--child", "e2e", json.dumps(options)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "READY":
            _, err = self.proc.communicate(timeout=30)
            raise RuntimeError(f"e2e child did not start: {line!r} {err[-2000:]}")

    def result(self, timeout: float = 900) -> dict[str, Any]:
        out, err = self.proc.communicate(timeout=timeout)
        if self.proc.returncode != 0:
            raise RuntimeError(f"e2e child failed: {err[-3000:]}")
        return dict(json.loads(out.strip().splitlines()[-1]))


def _fmt_rate(value: float) -> str:
    return f"{value:,.0f}"


def _ratio(ours: float, ref: float) -> str:
    return f"{ours / ref:.2f}x" if ref else "n/a"


def _table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    print("  " + "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  " + "  ".join("-" * w for w in widths))
    for row in rows:
        print("  " + "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))


def section_stores(args: argparse.Namespace, caps: list[int]) -> None:
    kinds = ["ours", "celery"] + ([] if args.no_flower else ["flower"])
    redis_ready = _redis_store_available(args)
    if redis_ready:
        kinds.append("redis")
    results: dict[tuple[str, int], dict[str, Any]] = {}
    for cap in caps:
        for kind in kinds:
            options = {
                "kind": kind,
                "cap": cap,
                "seed": args.seed,
                "events": args.events,
                "queries": cap == caps[-1],
                "query_rounds": 100 if args.quick else 500,
                "state_url": args.state,
                "validate": not args.no_validate,
            }
            started = time.perf_counter()
            try:
                results[(kind, cap)] = _run_child("store", options)
            except RuntimeError as exc:
                if kind != "redis":
                    raise
                # The Redis store is another module's: its failure must not sink the run.
                reason = str(exc).strip().splitlines()[-1][:200]
                print(f"\n  --state {args.state}: the Redis store row failed ({reason}); skipped.")
                kinds.remove("redis")
                break
            print(
                f"  measured {kind:6} at {cap:>7,} tasks in {time.perf_counter() - started:5.1f} s",
                file=sys.stderr,
            )

    rows = []
    for cap in caps:
        ours = results[("ours", cap)]
        for kind in kinds:
            r = results[(kind, cap)]
            rows.append(
                [
                    f"{cap:,}",
                    kind,
                    _fmt_rate(r["fill_rate"]),
                    f"{r['settle_events']:,}",
                    _fmt_rate(r["steady_rate"]),
                    _ratio(ours["steady_rate"], r["steady_rate"]) if kind != "ours" else "1.00x",
                    _fmt_rate(r["steady_cpu_rate"]),
                    (
                        _ratio(ours["steady_cpu_rate"], r["steady_cpu_rate"])
                        if kind != "ours"
                        else "1.00x"
                    ),
                ]
            )
    _table(
        f"(a) in-process ingest, events/s (steady state = once the cap is reached and then, "
        "untimed, the 'settling' events until every other bound the store keeps is full too, "
        f"see bench/steady.py; {args.events:,} events measured; ours in batches of {BATCH}; "
        "per CPU second: the process's CPU time, which a neighbour on a shared machine does "
        "not inflate)",
        _INGEST_HEADER,
        rows,
    )
    rows = []
    for cap in caps:
        ours = results[("ours", cap)]
        for kind in kinds:
            r = results[(kind, cap)]
            rows.append(
                [
                    f"{cap:,}",
                    kind,
                    f"{r['retained']:,}",
                    f"{r['rss_delta'] / 2**20:,.1f} MB",
                    f"{r['bytes_per_task']:,.0f}",
                    (
                        _ratio(r["bytes_per_task"], ours["bytes_per_task"])
                        if kind != "ours"
                        else "1.00x"
                    ),
                ]
            )
    _table(
        "(b) memory: RSS growth of a fresh process holding the retained tasks (after churn)",
        ["max tasks", "store", "retained", "RSS growth", "bytes/task", "this / ours"],
        rows,
    )
    big = caps[-1]
    rows = []
    for label in ("failures of one name", "active by runtime", "one task by id"):
        ours_q = results[("ours", big)]["queries"][label]
        for kind in kinds:
            q = results[(kind, big)]["queries"][label]
            rows.append(
                [
                    label,
                    kind,
                    f"{q[0]:.3f}",
                    f"{q[1]:.3f}",
                    _ratio(q[0], ours_q[0]) if kind != "ours" else "1.00x",
                ]
            )
    _table(
        f"(c) triage query latency at {big:,} retained tasks, ms "
        "(celery: scan + sort of State; flower: its 2.2 search index)",
        ["query", "store", "p50", "p99", "this p50 / ours"],
        rows,
    )
    ours_big = results[("ours", big)]
    celery_big = results[("celery", big)]
    ratio = ours_big["steady_rate"] / celery_big["steady_rate"]
    cpu_ratio = ours_big["steady_cpu_rate"] / celery_big["steady_cpu_rate"]
    worst = max(v[1] for v in ours_big["queries"].values())
    where = "" if big == 100_000 else " (the targets are set for 100,000: indicative only)"
    print(f"\n  targets at {big:,} tasks, measured, not asserted{where}:")
    print(
        f"    ingest vs celery State   {ratio:5.2f}x   (target >= {TARGETS['ingest']:.0f}x;"
        f" per CPU second {cpu_ratio:.2f}x)"
    )
    print(
        f"    bytes per retained task  {ours_big['bytes_per_task']:6,.0f}   "
        f"(target <= {TARGETS['bytes']:,})"
    )
    print(f"    slowest query p99        {worst:6.3f} ms (target < {TARGETS['query_ms']:.0f} ms)")
    if args.profile:
        # A run of its own: the profiler's overhead must not touch the figures above.
        profiled = _run_child(
            "store",
            {"kind": "ours", "cap": big, "seed": args.seed, "events": args.events, "profile": True},
        )
        print(f"\n  where our store's steady-state time goes (cProfile, tottime), {big:,} tasks:")
        print("    " + "\n    ".join(profiled["profile"].strip().splitlines()[:30]))


def _redis_store_available(args: argparse.Namespace) -> bool:
    if not args.state:
        return False
    if importlib.util.find_spec("chatbot.store.redis") is None:
        print(f"\n  --state {args.state}: chatbot.store.redis does not exist yet; row skipped.")
        return False
    module = importlib.import_module("chatbot.store.redis")
    if not hasattr(module, "RedisStore"):
        print("\n  --state: chatbot.store.redis has no RedisStore; that row is skipped.")
        return False
    return True


def _publish(
    url: str, messages: list[tuple[str, bytes, int]], rate: float | None
) -> tuple[float, float]:
    """PUBLISH everything (pipelined), paced at ``rate`` events/s if given."""
    import redis

    client = redis.Redis.from_url(url)
    started = time.time()
    sent_events = 0
    try:
        step = 200
        for start in range(0, len(messages), step):
            chunk = messages[start : start + step]
            pipe = client.pipeline(transaction=False)
            for channel, payload, _ in chunk:
                pipe.publish(channel, payload)
            pipe.execute()
            sent_events += sum(n for _, _, n in chunk)
            if rate:
                ahead = started + sent_events / rate - time.time()
                if ahead > 0:
                    time.sleep(ahead)
    finally:
        client.close()
    return started, time.time()


def _wait_subscribed(url: str, timeout: float = 30) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if client.pubsub_numpat() >= 1:
                return
            time.sleep(0.02)
        raise RuntimeError("the consumer never subscribed")
    finally:
        client.close()


def section_e2e(args: argparse.Namespace, cap: int) -> None:
    from chatbot.demo.embedded import EmbeddedRedis

    offered_events = args.e2e_events
    stream = FleetEvents(args.seed).stream(None, received=False)
    events = list(itertools.islice(stream, offered_events))
    messages = list(wire_messages(events))
    del events
    offered = sum(n for _, _, n in messages)
    size = sum(len(p) for _, p, _ in messages)
    print(
        f"\n(d) end to end through a private redis-server: {offered:,} events in "
        f"{len(messages):,} messages ({size / 2**20:.0f} MB as kombu publishes them: task "
        f"events grouped per worker into task.multi lists), consumers with max_tasks={cap:,}"
    )
    consumers = ["ours", "flower"]
    if not args.quick:
        consumers[1:1] = ["ours-inline", "ours-kombu"]
    unlimited = {"client-output-buffer-limit": "pubsub 0 0 0"}
    scenarios = [
        ("backlog drain (output buffer unlimited)", unlimited, None),
        (
            f"offered {args.rate:,.0f} ev/s (Redis default pubsub limit 32mb 8mb 60)",
            {"client-output-buffer-limit": "pubsub 32mb 8mb 60"},
            args.rate,
        ),
    ]
    if not args.quick:
        scenarios.append(
            (
                f"store stalled {args.stall:g} s mid-stream, offered {args.rate:,.0f} ev/s "
                "(default 32mb limit): does the reader thread pay?",
                {"client-output-buffer-limit": "pubsub 32mb 8mb 60"},
                args.rate,
            )
        )
    for title, config, rate in scenarios:
        rows = []
        rates: dict[str, float] = {}
        stall = args.stall if title.startswith("store stalled") else 0.0
        if stall:
            kinds = ["ours", "ours-inline"]
        else:
            kinds = consumers if rate is None else ["ours", "flower"]
        for kind in kinds:
            server = EmbeddedRedis(config=config).start()
            try:
                url = server.url_for(0)
                child = _E2EChild(
                    {
                        "kind": kind,
                        "url": url,
                        "cap": cap,
                        "expected": offered,
                        "idle": 5.0 + stall,
                        "stall": stall,
                    }
                )
                _wait_subscribed(url)
                pub_start, pub_end = _publish(url, messages, rate)
                r = child.result()
            finally:
                server.stop()
            received = r["received"]
            span = (r["last"] - r["first"]) if r["first"] and r["last"] else 0.0
            drain = received / span if span > 0 else 0.0
            rates[kind] = drain
            publish_rate = offered / (pub_end - pub_start) if pub_end > pub_start else 0.0
            rows.append(
                [
                    kind,
                    f"{received:,}/{offered:,}",
                    f"{100.0 * received / offered:.1f}%",
                    _fmt_rate(drain),
                    _fmt_rate(publish_rate),
                    str(r["cut_offs"]),
                ]
            )
        header = ["consumer", "received/offered", "share", "events/s", "published ev/s", "cut off"]
        if rate is None:
            # Only a drain measures capacity; under a paced load both just follow the offer.
            header.append("this / flower")
            for row in rows:
                row.append(_ratio(rates[row[0]], rates.get("flower", 0.0)))
        _table(title, header, rows)
    print(
        "\n  ours = EventConsumer fast path (reader thread + applier); ours-inline = decode and"
        " apply on the reading thread; ours-kombu = EventConsumer through kombu's Redis"
        " transport; flower = flower.events.Events + EventsState on a Tornado I/O loop."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__)
    parser.add_argument("--tasks", type=int, default=100_000, help="the big cap (default 100,000)")
    parser.add_argument("--events", type=int, default=None, help="events measured per store row")
    parser.add_argument("--e2e-events", type=int, default=None, help="events published end to end")
    parser.add_argument("--rate", type=float, default=10_000, help="offered ev/s, paced scenario")
    parser.add_argument("--stall", type=float, default=8.0, help="store stall, seconds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="a small run, under a minute")
    parser.add_argument("--state", default=None, help="redis://... for the Redis store row")
    parser.add_argument("--no-flower", action="store_true", help="skip the Flower reference rows")
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--skip-stores", action="store_true")
    parser.add_argument(
        "--no-validate", action="store_true", help="our store without EventChecker (to compare)"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile our store's ingest")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        mode, raw = args.child
        options = json.loads(raw)
        result = child_store(options) if mode == "store" else child_e2e(options)
        print(json.dumps(result), flush=True)
        return 0

    if args.quick:
        caps = [1_000, 10_000]
        args.events = args.events or 30_000
        args.e2e_events = args.e2e_events or 30_000
    else:
        caps = [10_000, args.tasks]
        args.events = args.events or 300_000
        args.e2e_events = args.e2e_events or 200_000
    print(
        f"bench.ingest: seed {args.seed}, caps {', '.join(f'{c:,}' for c in caps)}, "
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
        + (" (quick)" if args.quick else "")
    )
    started = time.perf_counter()
    if args.state and args.skip_stores:
        _redis_store_available(args)
    if not args.skip_stores:
        section_stores(args, caps)
    if not args.skip_e2e:
        section_e2e(args, caps[0])
    print(f"\ndone in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
