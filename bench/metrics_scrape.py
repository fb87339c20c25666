"""``/metrics`` scrape time at a full store: prometheus_client's collector vs the old writer.

    python -m bench.metrics_scrape                 # 100,000 tasks retained
    python -m bench.metrics_scrape --tasks 10000

The store is filled with the seeded fleet of ``bench/events.py`` until the cap is reached,
then both renderers read the same store: the fleet collector through ``generate_latest`` on
its private registry, and the hand-written writer it replaced, loaded from the git history
(``--reference``, the last commit that had it) so the reference is that code exactly. The
read (copies out of the store) is timed on its own too, as it holds the store's lock. Nothing
here asserts; the figures are medians, and the ratio is the one to compare across machines.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bench.events import FleetEvents
from chatbot.broker import QueueLength
from chatbot.metrics import FleetReading, fleet_registry, read_fleet
from chatbot.store.memory import MemoryStore

REPO = Path(__file__).resolve().parent.parent
REFERENCE_COMMIT = "0c89416"  # the last commit whose chatbot/metrics.py wrote the text by hand
BEFORE_COMMIT = "a183fbd"  # main before issue 12 bounded the collector's label sets
BATCH = 1000


def _reference_writer(commit: str, name: str = "handwritten_metrics") -> ModuleType | None:
    """An old ``chatbot/metrics.py`` from git, imported under a name of its own."""
    try:
        source = subprocess.run(
            ["git", "show", f"{commit}:chatbot/metrics.py"],
            cwd=REPO, check=True, capture_output=True, text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"reference writer unavailable ({exc}); timing the collector alone")
        return None
    path = Path(tempfile.mkdtemp()) / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while defining a class
    spec.loader.exec_module(module)
    return module


def _fill(tasks: int, seed: int) -> tuple[MemoryStore, float]:
    store = MemoryStore(max_tasks=tasks)
    batch: list[dict[str, object]] = []
    now = 0.0
    # Past the cap by a fifth, so evictions have happened as in a long-running bot.
    for event in FleetEvents(seed).stream(tasks + tasks // 5, received=True):
        batch.append(event)
        if len(batch) >= BATCH:
            store.apply(batch)
            batch = []
    if batch:
        store.apply(batch)
    for worker in store.workers():
        now = max(now, worker.last_heartbeat or 0.0)
    return store, now


def _medians_ms(runs: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Median wall time of each run, taken in turns so that load from the rest of the machine
    falls on all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - started) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=100_000, help="tasks retained (the cap)")
    parser.add_argument("--repeat", type=int, default=15, help="scrapes timed per renderer")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--reference", default=REFERENCE_COMMIT, help="git commit of the old writer"
    )
    parser.add_argument(
        "--before", default=BEFORE_COMMIT, help="git commit of the collector before bounding"
    )
    args = parser.parse_args(argv)

    started = time.perf_counter()
    store, now = _fill(args.tasks, args.seed)
    queues = [QueueLength("celery", 12), QueueLength("io", None)]
    stream = store.health()
    counters = store.fleet_counters()
    print(
        f"store: {len(store):,} tasks, {len(store.workers())} workers, "
        f"{len(counters.events):,} event label sets, {len(counters.runtimes):,} runtime "
        f"label sets (filled in {time.perf_counter() - started:.1f} s)"
    )

    def reading() -> FleetReading:
        return read_fleet(store, stream=stream, queues=queues, now=now)

    registry = fleet_registry(reading)
    text = generate_latest(registry)
    samples = sum(len(f.samples) for f in text_string_to_metric_families(text.decode()))
    print(f"exposition: {len(text):,} bytes, {samples:,} samples")

    runs: dict[str, Callable[[], object]] = {
        "read from the store (copies, under its lock)": reading,
        "prometheus_client collector, whole scrape": lambda: generate_latest(registry),
    }
    before = _reference_writer(args.before, "collector_before")
    if before is not None:
        before_registry = before.fleet_registry(reading)
        text = generate_latest(before_registry)
        samples = sum(len(f.samples) for f in text_string_to_metric_families(text.decode()))
        print(f"exposition before ({args.before}): {len(text):,} bytes, {samples:,} samples")
        runs[f"collector before ({args.before}), whole scrape"] = lambda: generate_latest(
            before_registry
        )
    old = _reference_writer(args.reference)
    if old is not None:
        runs[f"hand-written writer ({args.reference}), whole scrape"] = lambda: (
            old.render_metrics(store=store, stream=stream, queues=queues, now=now).encode()
        )
    for frozen in (False, True):
        if frozen:
            # The retained records out of the collector's reach, as a gc.freeze() at start-up
            # would put them: what is left is the scrape's own cost, without full collections
            # of the store's heap set off by the scrape's allocations.
            gc.collect()
            gc.freeze()
            print(f"after gc.freeze() of {gc.get_freeze_count():,} objects:")
        medians = _medians_ms(runs, args.repeat)
        for name, ms in medians.items():
            print(f"  {name:<55} {ms:8.1f} ms")
        collector_ms = medians["prometheus_client collector, whole scrape"]
        for name, ms in medians.items():
            if name.startswith(("collector before", "hand-written")):
                print(f"  ratio collector / {name.split(',')[0]}: {collector_ms / ms:.2f}x")
    gc.unfreeze()
    return 0


if __name__ == "__main__":
    sys.exit(main())
