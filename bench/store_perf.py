"""The store's own figures (issue 12): ingest, eviction, bytes, pauses, `/celery failed`, phantoms.

    python -m bench.store_perf                 # caps 10,000 / 100,000: a few minutes
    python -m bench.store_perf --quick         # caps 1,000 / 10,000: under a minute

Three subjects, each in a fresh child process on the same seeded events (``bench/events.py``):

- ``ours``: ``MemoryStore`` of this tree, fed through ``apply`` in batches of 1,000;
- ``before``: ``MemoryStore`` as it was at ``--reference`` (default: where this work started),
  taken from git into a temporary directory, so the old code is measured exactly, in the
  same run;
- ``celery``: ``celery.events.state.State(max_tasks_in_memory=cap)``, one ``event()`` a call.

Per subject and cap: the steady ingest rate once the cap is full (every new task evicts one;
the rate at the big cap over the rate at the small one shows whether eviction stays constant
time), the RSS growth per retained task, the garbage collector's pauses during that run
(``gc.callbacks``) and one full collection timed at the end, and for our stores the
`/celery failed` query (``failure_summary`` over a 15-minute window).

Then the phantom check: a ``--phantom-events`` stream at ``--phantom-cap`` tasks, each event
delayed on its way (``--jitter-ms``, so that some arrive out of order), after which
every task the store lists as running is looked up in the stream: one whose success or failure
was in it is a phantom. Nothing here asserts; read the ratios.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from bench.events import FleetEvents
from bench.steady import settled

REPO = Path(__file__).resolve().parent.parent
REFERENCE_COMMIT = "a183fbd"  # main before issue 12's store work (this branch is rebased on it)
BATCH = 1000
Event = dict[str, Any]


def _rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


class _Pauses:
    """Every collection's duration, from gc.callbacks (start and stop of each collection)."""

    def __init__(self) -> None:
        self.started = 0.0
        self.by_generation: dict[int, list[float]] = {0: [], 1: [], 2: []}

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
        else:
            self.by_generation[info["generation"]].append(time.perf_counter() - self.started)

    def summary(self) -> dict[str, Any]:
        every = [p for pauses in self.by_generation.values() for p in pauses]
        return {
            "count": {g: len(p) for g, p in self.by_generation.items()},
            "max_ms": max(every, default=0.0) * 1000,
            "total_ms": sum(every) * 1000,
        }


def _store(kind: str, cap: int) -> Any:
    if kind == "celery":
        from celery.events.state import State

        return State(max_tasks_in_memory=cap)
    from chatbot.store.memory import MemoryStore

    return MemoryStore(max_tasks=cap)


def child_store(options: dict[str, Any]) -> dict[str, Any]:
    kind, cap, seed = str(options["kind"]), int(options["cap"]), int(options["seed"])
    stream = FleetEvents(seed).stream(None, received=True)
    rss0 = _rss()
    store = _store(kind, cap)
    ours = kind != "celery"

    def feed(batch: list[Event]) -> None:
        if ours:
            store.apply(batch)
        else:
            handle = store.event
            for event in batch:
                handle(event)

    def retained() -> int:
        return len(store) if ours else len(store.tasks)

    while not settled(store):  # the cap, and every other bound (bench/steady.py)
        feed(list(itertools.islice(stream, BATCH)))
    pauses = _Pauses()
    gc.callbacks.append(pauses)
    steady_time = 0.0
    steady_events = 0
    last: list[Event] = []
    while steady_events < int(options["events"]):
        last = list(itertools.islice(stream, BATCH))
        # CPU time of this process: on a shared box, what other processes take is not ours.
        started = time.process_time()
        feed(last)
        steady_time += time.process_time() - started
        steady_events += len(last)
    gc.callbacks.remove(pauses)
    started = time.perf_counter()
    gc.collect()
    full_collection_ms = (time.perf_counter() - started) * 1000
    rss1 = _rss()
    result: dict[str, Any] = {
        "steady_rate": steady_events / steady_time,
        "bytes_per_task": (rss1 - rss0) / retained(),
        "pauses": pauses.summary(),
        "full_collection_ms": full_collection_ms,
        "tracked_objects": len(gc.get_objects()),
    }
    if ours:
        now = max(float(e["timestamp"]) for e in last)
        times = []
        summary = None
        for _ in range(200):
            started = time.perf_counter()
            summary = store.failure_summary(None, 900.0, now, 10)
            times.append((time.perf_counter() - started) * 1000)
        assert summary is not None
        result["failed_ms"] = statistics.median(times)
        result["failed_in_window"] = summary.total
    return result


def _arrivals(events: Iterator[Event], jitter: float, seed: int) -> Iterator[Event]:
    """``events`` (in timestamp order) in the order they arrive when each is delayed on its
    way by an exponential delay of mean ``jitter`` seconds: messages from different
    processes and connections overtake each other, so a task's ``task-started`` may arrive
    after its ``task-succeeded``."""
    rng = random.Random(seed)
    in_flight: list[tuple[float, int, Event]] = []
    for order, event in enumerate(events):
        ts = float(event["timestamp"])
        # Nothing sent later can arrive before ``ts``: what is due by then is delivered.
        while in_flight and in_flight[0][0] <= ts:
            yield heapq.heappop(in_flight)[2]
        heapq.heappush(in_flight, (ts + rng.expovariate(1.0 / jitter), order, event))
    while in_flight:
        yield heapq.heappop(in_flight)[2]


def child_phantoms(options: dict[str, Any]) -> dict[str, Any]:
    from chatbot.store.memory import MemoryStore

    store = MemoryStore(max_tasks=int(options["cap"]))
    finished: set[str] = set()
    batch: list[Event] = []
    fed = out_of_order = 0
    newest = 0.0
    stream = FleetEvents(int(options["seed"])).stream(None, received=True)
    arriving = _arrivals(stream, float(options["jitter"]), int(options["seed"]))
    for event in itertools.islice(arriving, int(options["events"])):
        if event["type"] in ("task-succeeded", "task-failed"):
            finished.add(event["uuid"])
        ts = float(event["timestamp"])
        fed += 1
        if ts < newest:
            out_of_order += 1
        newest = max(newest, ts)
        batch.append(event)
        if len(batch) >= BATCH:
            store.apply(batch)
            batch = []
    if batch:
        store.apply(batch)
    running = store.active()
    return {
        "running": len(running),
        "phantoms": sum(1 for task in running if task.uuid in finished),
        "evicted": store.health().tasks_evicted,
        "out_of_order": out_of_order / fed,
    }


def _reference_tree(commit: str) -> Path:
    """``chatbot/`` as it was at ``commit``, in a directory of its own."""
    root = Path(tempfile.mkdtemp(prefix="store-perf-ref-"))
    archive = subprocess.run(
        ["git", "archive", commit, "chatbot"], cwd=REPO, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    return root


def _run(mode: str, options: dict[str, Any], tree: Path | None) -> dict[str, Any]:
    env = dict(os.environ)
    # The reference's chatbot first; bench/ (the same events) from this tree. The working
    # directory comes first on the path of `python -m`, so it is the tree measured.
    cwd = tree or REPO
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (cwd, REPO))
    proc = subprocess.run(
        [sys.executable, "-m", "bench.store_perf", "--child", mode, json.dumps(options)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=3600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {mode} {options} failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="caps 1,000 / 10,000")
    parser.add_argument("--events", type=int, default=None, help="steady events per row")
    parser.add_argument("--phantom-events", type=int, default=500_000)
    parser.add_argument("--phantom-cap", type=int, default=10_000)
    parser.add_argument(
        "--jitter-ms", type=float, default=5.0, help="mean delivery delay, phantom check"
    )
    parser.add_argument("--reference", default=REFERENCE_COMMIT, help="git commit of 'before'")
    parser.add_argument("--no-celery", action="store_true")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.child:
        mode, options = args.child[0], json.loads(args.child[1])
        child = child_store if mode == "store" else child_phantoms
        print(json.dumps(child(options)))
        return 0

    caps = [1_000, 10_000] if args.quick else [10_000, 100_000]
    events = args.events or (50_000 if args.quick else 300_000)
    reference = _reference_tree(args.reference)
    subjects: dict[str, Path | None] = {"ours": None, "before": reference}
    kinds = list(subjects) + ([] if args.no_celery else ["celery"])
    results: dict[tuple[str, int], dict[str, Any]] = {}
    for cap in caps:
        for kind in kinds:
            options = {"kind": kind, "cap": cap, "seed": args.seed, "events": events}
            started = time.perf_counter()
            results[(kind, cap)] = _run("store", options, subjects.get(kind))
            print(f"  {kind} at {cap:,}: {time.perf_counter() - started:.0f} s", file=sys.stderr)

    print(
        f"steady ingest at the cap, {events:,} events (events per CPU second; ratio to "
        "celery State)"
    )
    for cap in caps:
        celery = results.get(("celery", cap))
        for kind in kinds:
            r = results[(kind, cap)]
            ratio = f"{r['steady_rate'] / celery['steady_rate']:.2f}x" if celery else "-"
            print(f"  {cap:>7,} {kind:7} {r['steady_rate']:>10,.0f}  {ratio}")
    small, big = caps
    for kind in kinds:
        drop = results[(kind, big)]["steady_rate"] / results[(kind, small)]["steady_rate"]
        print(f"  {kind:7} rate at {big:,} / rate at {small:,}: {drop:.2f}")

    print("bytes per retained task (RSS growth after churn)")
    for kind in kinds:
        r = results[(kind, big)]
        vs = r["bytes_per_task"] / results[("before", big)]["bytes_per_task"]
        print(f"  {big:>7,} {kind:7} {r['bytes_per_task']:>8,.0f}  {vs:.2f}x before")

    print("garbage collection during the steady run (ms), and one full collection at the end")
    for cap in caps:
        for kind in kinds:
            r = results[(kind, cap)]
            p = r["pauses"]
            print(
                f"  {cap:>7,} {kind:7} longest {p['max_ms']:7.1f}  total {p['total_ms']:8.1f}  "
                f"collections {p['count']}  full gc.collect() {r['full_collection_ms']:7.1f}  "
                f"tracked objects {r['tracked_objects']:,}"
            )

    print("/celery failed (failure_summary, 15-minute window), median ms")
    for kind in ("ours", "before"):
        r = results[(kind, big)]
        print(f"  {big:>7,} {kind:7} {r['failed_ms']:7.3f} ms over {r['failed_in_window']:,}")
    ratio = results[("ours", big)]["failed_ms"] / results[("before", big)]["failed_ms"]
    print(f"  ours / before: {ratio:.2f}")

    options = {
        "cap": args.phantom_cap, "events": args.phantom_events, "seed": args.seed,
        "jitter": args.jitter_ms / 1000,
    }
    print(
        f"phantoms after {args.phantom_events:,} events at cap {args.phantom_cap:,}, "
        f"delivered with a mean delay of {args.jitter_ms:g} ms"
    )
    for kind, tree in subjects.items():
        r = _run("phantoms", options, tree)
        print(
            f"  {kind:7} running {r['running']:4}, of which finished in the stream "
            f"{r['phantoms']:4} (evicted {r['evicted']:,}; events out of timestamp order "
            f"{r['out_of_order']:.0%})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
