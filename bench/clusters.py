"""Ingest of several clusters: one cluster vs three in one process, and three across replicas.

    python -m bench.clusters            # 100,000 events per cluster
    python -m bench.clusters --quick    # 20,000 events per cluster, under a minute or two

The bot (the real :class:`~chatbot.service.Service`, built from ``CHATOPS_CLUSTERS``) runs in
a child process; this process publishes the same seeded event stream (``bench/events.py``,
exactly as workers publish it) to each cluster's broker, a database of one private
redis-server (output buffer unlimited: a drain measures capacity). Every figure is printed
next to the one-cluster reference measured in the same run, as a ratio. Nothing asserts.

Rows:
- ``1 cluster``: the reference, one process, memory state.
- ``3 clusters``: three brokers, one process, memory state: per-cluster and total events/s.
- ``3 clusters, redis state, 1 replica`` and ``... 2 replicas`` (with ``--replicas``): the
  leases shared out (``chatbot/store/balance.py``); each replica ingests its share into the
  Redis state store; the total is the sum over replicas.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.events import FleetEvents, wire_messages

REPO = Path(__file__).resolve().parent.parent
NAMES = ("alpha", "beta", "gamma")
LEASE_TTL = 3.0


# -- child: one bot process ------------------------------------------------------------------
def child(options: dict[str, Any]) -> None:
    from chatbot.config import load_settings
    from chatbot.service import Service

    brokers: dict[str, str] = options["brokers"]
    env = {
        "CHATOPS_CLUSTERS": ",".join(f"{n}={u}" for n, u in brokers.items()),
        "CHATOPS_MAX_TASKS": str(options["cap"]),
        "CHATOPS_LOG_LEVEL": "WARNING",
    }
    if options.get("state"):
        env["CHATOPS_STATE_URL"] = options["state"]
        env["CHATOPS_STATE_PREFIX"] = options["prefix"]
    service = Service(load_settings(env), lease_ttl=LEASE_TTL)
    service.start()
    share = int(options["share"])
    deadline = time.monotonic() + 60
    # Ready once this replica ingests its share and each of those consumers is connected.
    while time.monotonic() < deadline:
        mine = [p for p in service.clusters.values() if p.consumer is not None]
        if len(mine) == share and all(p.consumer and p.consumer.wait_connected(0.1) for p in mine):
            break
        time.sleep(0.1)
    mine_names = sorted(n for n, p in service.clusters.items() if p.consumer is not None)
    print("READY " + json.dumps(mine_names), flush=True)
    expected = int(options["expected"])
    idle_limit = float(options.get("idle", 5.0))
    seen = {name: 0 for name in mine_names}
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    changed = time.monotonic()
    while True:
        now = time.time()
        for name in mine_names:
            parts = service.clusters[name]
            consumer = parts.consumer
            if consumer is None:
                continue
            total = consumer.health_into(parts.store.health()).events_total
            if total > seen[name]:
                first.setdefault(name, now)
                last[name] = now
                seen[name] = total
                changed = time.monotonic()
        if all(seen[n] >= expected for n in mine_names):
            break
        if time.monotonic() - changed > idle_limit and any(seen.values()):
            break
        if time.monotonic() - changed > 120:
            break
        time.sleep(0.02)
    result = {
        name: {"events": seen[name], "first": first.get(name), "last": last.get(name)}
        for name in mine_names
    }
    service.stop()
    print(json.dumps(result), flush=True)


class _Child:
    def __init__(self, options: dict[str, Any]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.clusters", "--child", json.dumps(options)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.clusters: list[str] = []

    def wait_ready(self) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY "):
            _, err = self.proc.communicate(timeout=30)
            raise RuntimeError(f"bot child did not start: {line!r} {err[-2000:]}")
        self.clusters = json.loads(line[len("READY ") :])

    def result(self, timeout: float = 900) -> dict[str, dict[str, Any]]:
        out, err = self.proc.communicate(timeout=timeout)
        if self.proc.returncode != 0:
            raise RuntimeError(f"bot child failed: {err[-3000:]}")
        return dict(json.loads(out.strip().splitlines()[-1]))


# -- parent ----------------------------------------------------------------------------------
def _publish(url: str, streams: list[list[tuple[str, bytes, int]]]) -> float:
    """PUBLISH every cluster's messages, interleaved in chunks, unpaced; returns seconds."""
    import redis

    client = redis.Redis.from_url(url)
    started = time.perf_counter()
    try:
        step = 200
        longest = max(len(s) for s in streams)
        for start in range(0, longest, step):
            pipe = client.pipeline(transaction=False)
            for stream in streams:
                for channel, payload, _ in stream[start : start + step]:
                    pipe.publish(channel, payload)
            pipe.execute()
    finally:
        client.close()
    return time.perf_counter() - started


def _rate(entry: dict[str, Any]) -> float:
    span = (entry["last"] or 0.0) - (entry["first"] or 0.0)
    return entry["events"] / span if span > 0 else 0.0


def _scenario(
    server: Any,
    title: str,
    clusters: int,
    events: list[Any],
    cap: int,
    *,
    state_db: int | None = None,
    replicas: int = 1,
    run: int = 0,
) -> dict[str, Any]:
    brokers = {NAMES[i]: server.url_for(1 + i + 3 * run) for i in range(clusters)}
    streams = [list(wire_messages(events, db=1 + i + 3 * run)) for i in range(clusters)]
    offered = sum(n for _, _, n in streams[0])
    state = server.url_for(state_db) if state_db is not None else ""
    share = -(-clusters // replicas)
    children = []
    for index in range(replicas):
        mine = share if index < replicas - 1 else clusters - share * (replicas - 1)
        children.append(
            _Child(
                {
                    "brokers": brokers,
                    "cap": cap,
                    "expected": offered,
                    "state": state,
                    "prefix": f"bench-clusters-{run}",
                    "share": mine,
                }
            )
        )
        if index < replicas - 1:
            time.sleep(0.5)  # the first replica takes every lease, then hands some over
    for bot in children:
        bot.wait_ready()
    published = _publish(server.url_for(0), streams)
    per_cluster: dict[str, dict[str, Any]] = {}
    held: dict[str, int] = {}
    for index, bot in enumerate(children):
        for name, entry in bot.result().items():
            per_cluster[name] = entry
            held[name] = index
    rates = {name: _rate(entry) for name, entry in per_cluster.items()}
    firsts = [e["first"] for e in per_cluster.values() if e["first"]]
    lasts = [e["last"] for e in per_cluster.values() if e["last"]]
    span = max(lasts) - min(firsts) if firsts and lasts else 0.0
    received = sum(e["events"] for e in per_cluster.values())
    return {
        "title": title,
        "offered": offered * clusters,
        "received": received,
        "per_cluster": rates,
        "held": held,
        "total": received / span if span > 0 else 0.0,
        "published": published,
    }


def _print(results: list[dict[str, Any]]) -> None:
    reference = results[0]
    ref_cluster = next(iter(reference["per_cluster"].values()), 0.0)
    print()
    header = ("scenario", "received/offered", "per cluster ev/s (replica)", "total ev/s",
              "total / 1 cluster", "min cluster / 1 cluster")  # fmt: skip
    rows = []
    for r in results:
        per = ", ".join(
            f"{n} {v:,.0f} (r{r['held'][n]})" for n, v in sorted(r["per_cluster"].items())
        )
        slowest = min(r["per_cluster"].values(), default=0.0)
        rows.append(
            (
                r["title"],
                f"{r['received']:,}/{r['offered']:,}",
                per,
                f"{r['total']:,.0f}",
                f"{r['total'] / reference['total']:.2f}x" if reference["total"] else "n/a",
                f"{slowest / ref_cluster:.2f}x" if ref_cluster else "n/a",
            )
        )
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, tuple("-" * w for w in widths), *rows):
        print("  " + "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))
    print(
        "\n  events/s: applied events over the span from the first to the last applied, per"
        " cluster; total: all clusters' events over the whole span. The publisher, the bot and"
        " redis-server share the machine's CPUs: compare the ratios."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.clusters", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="20,000 events per cluster")
    parser.add_argument("--events", type=int, default=None, help="events per cluster")
    parser.add_argument("--replicas", action="store_true", help="add the Redis-state rows")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return 0
    from chatbot.demo.embedded import EmbeddedRedis

    per_cluster = args.events or (20_000 if args.quick else 100_000)
    events = list(itertools.islice(FleetEvents(args.seed).stream(None), per_cluster))
    cap = 10_000
    server = EmbeddedRedis(databases=16, config={"client-output-buffer-limit": "pubsub 0 0 0"})
    server.start()
    try:
        results = [
            _scenario(server, "1 cluster", 1, events, cap, run=0),
            _scenario(server, "3 clusters, 1 process", 3, events, cap, run=1),
        ]
        if args.replicas:
            title = "3 clusters, redis state, 1 replica"
            results.append(_scenario(server, title, 3, events, cap, state_db=15, run=2))
            title = "3 clusters, redis state, 2 replicas"
            results.append(_scenario(server, title, 3, events, cap, state_db=14, replicas=2, run=3))
    finally:
        server.stop()
    _print(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
