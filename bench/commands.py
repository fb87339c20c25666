"""Slash-command ack time under ingest load: the real bot, one process, signed HTTP requests.

    python -m bench.commands --quick   # 10,000 tasks, 2,000 ev/s, 10 s windows: under a minute
    python -m bench.commands           # 100,000 tasks, 10,000 ev/s, 30 s windows: ~2 minutes

The question (issue 3's target): with 100,000 retained tasks and events flowing at 10,000
events/s into the same process, is the p99 time from a signed ``/celery failed`` request to
the HTTP ack below 100 ms, and does ingest still keep up?

One process (this one) runs the bot as ``celery-chatops run`` wires it: ``Service`` with its
memory store and real ``EventConsumer`` on a private ``EmbeddedRedis`` broker, the Bolt app
behind the waitress ``HttpServer``, the approval actions and their sweeper, and
``SLACK_API_URL`` pointing at ``MockSlackAPI``. Two child processes, so that neither shares
the bot's GIL:

* the *publisher* PUBLISHes ``bench.events``' seeded stream to the broker exactly as workers
  do (kombu's wire format, ``task.multi`` lists), paced at ``--rate`` events/s;
* the *client* sends signed ``/celery failed``, ``/celery failed <hot name>`` and
  ``/celery stuck`` requests, open loop at ``--requests-per-second``, and times each one from
  the moment it is sent to the moment the response (the ack, which carries the answer) has
  been read.

The store is pre-filled to ``--tasks`` retained tasks by ``store.apply`` in batches of 1,000
(what the consumer hands over), straight from the generator: faster than through Redis, and
the same events. The publisher then continues the same seeded stream where the pre-fill
stopped. Three phases with the same requests: *idle* (no events flowing, the reference),
*loaded* (events flowing), *idle again* (drift check). Nothing here asserts; see
bench/README.md for what each row means.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bench.events import Event, FleetEvents, Profile, wire_messages

REPO = Path(__file__).resolve().parent.parent
BATCH = 1000  # what the consumer hands to store.apply under load (its batch_max)
TARGET_P99_MS = 100.0
SIGNING_SECRET_BYTES = 24
USER_ID = "U0BENCH0001"
CHANNEL_ID = "C0BENCH0001"
LEAD_SECONDS = 1.5  # events flow this long before the loaded window's first request
TAIL_SECONDS = 1.0  # ...and this long after its last one is sent
DRAIN_TIMEOUT = 60.0
SAMPLE_EVERY = 0.25  # ingest monitor: events applied and consumer lag, this often

# ---------------------------------------------------------------------------------------------
# The stream: one seeded generator, shared by the pre-fill and the publisher
# ---------------------------------------------------------------------------------------------


def fleet_profile(rate: float, tasks: int, seed: int, now: float) -> Profile:
    """The reference fleet, sped up so that ``rate`` events/s is its real-time event rate.

    The generator's reference fleet runs 1,000 tasks/s (~3,000 events/s of event time). Here
    its task rate is scaled so that event time advances as fast as the wall clock while the
    publisher offers ``rate`` events/s, and it starts so that the pre-fill ends about now:
    timestamps look live, and every retained failure is inside ``/celery failed``'s default
    15-minute window (the heaviest case for that command).
    """
    base = Profile()
    # Past the ramp-up (the first tasks' completions are still to come), at a steady rate.
    sample = list(itertools.islice(FleetEvents(seed, base).stream(None), 20_000, 80_000))
    span = float(sample[-1]["timestamp"]) - float(sample[0]["timestamp"])
    base_rate = len(sample) / span if span > 0 else 3000.0
    tasks_per_second = base.tasks_per_second * rate / base_rate
    return Profile(tasks_per_second=tasks_per_second, start_time=now - tasks / tasks_per_second)


def prefill_batches(stream: Iterator[Event], tasks: int) -> Iterator[list[Event]]:
    """Batches of ``BATCH`` events until ``tasks`` distinct tasks have been seen.

    The store keeps one record per task uuid (until its cap), so after these batches it holds
    ``tasks`` tasks. The publisher runs the same function on the same seed to skip exactly the
    events the pre-fill used.
    """
    seen: set[str] = set()
    while len(seen) < tasks:
        batch = list(itertools.islice(stream, BATCH))
        if not batch:
            return
        for event in batch:
            uuid = event.get("uuid")
            if uuid:
                seen.add(str(uuid))
        yield batch


def hot_task_name(seed: int, profile: Profile) -> str:
    """The most popular task name, as a person would type it (its last part, if unique)."""
    names = FleetEvents(seed, profile).task_names  # index 0 has the largest weight
    short = names[0].rsplit(".", 1)[-1]
    unique = sum(1 for n in names if n.rsplit(".", 1)[-1] == short) == 1
    return short if unique else names[0]


# ---------------------------------------------------------------------------------------------
# Child: the publisher
# ---------------------------------------------------------------------------------------------


def child_publisher(options: dict[str, Any], stdin: IO[str], stdout: IO[str]) -> None:
    import redis

    profile = Profile(
        tasks_per_second=float(options["tasks_per_second"]),
        start_time=float(options["start_time"]),
    )
    stream = FleetEvents(int(options["seed"]), profile).stream(None, received=False)
    skipped = sum(len(b) for b in prefill_batches(stream, int(options["tasks"])))
    wanted = int(float(options["rate"]) * float(options["duration"]))
    events = list(itertools.islice(stream, wanted))
    messages = list(wire_messages(events))
    del events
    size = sum(len(p) for _, p, _ in messages)
    ready = {"skipped": skipped, "events": wanted, "messages": len(messages), "bytes": size}
    stdout.write("READY " + json.dumps(ready) + "\n")
    stdout.flush()
    if stdin.readline().strip() != "GO":
        return
    rate = float(options["rate"])
    client = redis.Redis.from_url(str(options["url"]))
    sent = 0
    worst_behind = 0.0
    started = time.perf_counter()
    try:
        index = 0
        while index < len(messages):
            elapsed = time.perf_counter() - started
            due = rate * elapsed
            worst_behind = max(worst_behind, (due - sent) / rate)
            if sent >= due:
                time.sleep(0.002)
                continue
            # Small pipelines, a few ms of events each: a fleet publishes smoothly, not in bursts.
            pipe = client.pipeline(transaction=False)
            for _ in range(50):
                if index >= len(messages) or sent >= due:
                    break
                channel, payload, count = messages[index]
                pipe.publish(channel, payload)
                sent += count
                index += 1
            pipe.execute()
    finally:
        client.close()
    ended = time.perf_counter()
    result = {
        "offered": sent,
        "messages": index,
        "seconds": ended - started,
        "rate": sent / (ended - started) if ended > started else 0.0,
        "worst_behind": worst_behind,
    }
    stdout.write(json.dumps(result) + "\n")
    stdout.flush()


# ---------------------------------------------------------------------------------------------
# Child: the Slack client
# ---------------------------------------------------------------------------------------------


def child_client(options: dict[str, Any], stdin: IO[str], stdout: IO[str]) -> None:
    """Runs one phase per ``PHASE <seconds> <rps>`` line; answers each with a JSON line."""
    from tests.support.slack_payloads import FORM, post_signed, slash_command

    url = str(options["url"])
    secret = str(options["secret"])
    response_url = str(options["response_url"])
    commands: list[tuple[str, str]] = [(str(k), str(t)) for k, t in options["commands"]]
    pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="bench-client")

    def send(kind: str, text: str, scheduled: float) -> dict[str, Any]:
        body = slash_command(
            text, user_id=USER_ID, channel_id=CHANNEL_ID, response_url=response_url
        )
        begin = time.perf_counter()
        try:
            response = post_signed(
                url, body, signing_secret=secret, content_type=FORM, timeout=30.0
            )
            status, raw = response.status, response.body
        except OSError as exc:
            status, raw = 0, str(exc).encode()
        end = time.perf_counter()
        answered = status == 200 and b'"blocks"' in raw and b"internal error" not in raw.lower()
        text = ""
        with contextlib.suppress(ValueError, AttributeError):
            text = str(json.loads(raw).get("text") or "")
        return {
            "kind": kind,
            "ms": (end - begin) * 1000.0,
            "late_ms": (begin - scheduled) * 1000.0,
            # perf_counter is CLOCK_MONOTONIC on Linux: comparable with the bot's GC times.
            "begin": begin,
            "end": end,
            "status": status,
            "answered": answered,
            "bytes": len(raw),
            "text": text[:120],
        }

    try:
        for line in stdin:
            parts = line.split()
            if not parts or parts[0] == "QUIT":
                break
            seconds, rps = float(parts[1]), float(parts[2])
            count = max(1, round(seconds * rps))
            start = time.perf_counter() + 0.05
            futures = []
            for i in range(count):
                scheduled = start + i / rps
                delay = scheduled - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                kind, text = commands[i % len(commands)]
                futures.append(pool.submit(send, kind, text, scheduled))
            results = [f.result() for f in futures]
            stdout.write(json.dumps(results) + "\n")
            stdout.flush()
    finally:
        pool.shutdown(wait=True)


# ---------------------------------------------------------------------------------------------
# Parent: the bot, and what it measures about itself
# ---------------------------------------------------------------------------------------------


@dataclass
class Probe:
    """Server-side timings, tagged with the current phase (instrumentation of ~1 us a call)."""

    phase: str = "setup"
    samples: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    gc_pauses: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    # (start, end) of every full (generation 2) collection, perf_counter seconds.
    full_collections: list[tuple[float, float]] = field(default_factory=list)
    _gc_started: float = 0.0

    def record(self, label: str, seconds: float) -> None:
        self.samples.setdefault((self.phase, label), []).append(seconds * 1000.0)

    def timed(self, label: str, func: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            begin = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                self.record(label, time.perf_counter() - begin)

        return wrapper

    def on_gc(self, stage: str, info: dict[str, Any]) -> None:
        if stage == "start":
            self._gc_started = time.perf_counter()
        else:
            ended = time.perf_counter()
            generation = int(info.get("generation", 0))
            key = (self.phase, generation)
            self.gc_pauses.setdefault(key, []).append((ended - self._gc_started) * 1000.0)
            if generation == 2:
                self.full_collections.append((self._gc_started, ended))

    def overlaps_full_collection(self, result: dict[str, Any]) -> bool:
        begin, end = float(result["begin"]), float(result["end"])
        return any(start < end and begin < stop for start, stop in self.full_collections)


@dataclass
class IngestSample:
    at: float
    events_total: int
    lag: int


class Monitor:
    """Samples the store's applied-event count and the consumer's lag, in the bot process."""

    def __init__(self, read: Callable[[], tuple[int, int]]) -> None:
        self.read = read
        self.samples: list[IngestSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-monitor", daemon=True)

    def start(self) -> Monitor:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            total, lag = self.read()
            self.samples.append(IngestSample(time.monotonic(), total, lag))

    def between(self, start: float, end: float) -> list[IngestSample]:
        return [s for s in self.samples if start <= s.at <= end]


class Bot:
    """What ``chatbot.runner.run`` builds, kept in reach so the bench can read the store."""

    def __init__(self, settings: Any) -> None:
        from chatbot.periodic import EVERY
        from chatbot.runner import APPROVAL_EXPIRY_JOB
        from chatbot.service import Service
        from chatbot.slack import (
            HttpServer,
            SlackMetrics,
            build_app,
            make_executor,
        )
        from chatbot.slack.approval_actions import (
            DEFAULT_EXPIRY_SWEEP,
            AlertButtons,
            ApprovalActions,
        )
        from chatbot.slack.client import web_client_from_settings

        self.settings = settings
        client = web_client_from_settings(settings)
        self.service = Service(settings, web_client=client)
        self.executor = make_executor()
        approval_actions = ApprovalActions(self.service.approvals, client)
        alert_buttons = AlertButtons(approval_actions, self.service.run_as)
        self.metrics = SlackMetrics()
        app = build_app(
            self.service,
            client=client,
            signing_secret=settings.slack_signing_secret,
            executor=self.executor,
            actions=[*approval_actions.actions(), *alert_buttons.actions()],
            metrics=self.metrics,
        )
        self.server = HttpServer(
            app, self.service, settings.host, settings.port, metrics=self.metrics
        )
        # As chatbot.runner.run wires it: on the service's one scheduler.
        self.service.jobs.add(
            APPROVAL_EXPIRY_JOB,
            approval_actions.sweep_expired,
            every=DEFAULT_EXPIRY_SWEEP,
            replicas=EVERY,
        )
        self.started = False

    def instrument(self, probe: Probe) -> None:
        """Time the command (query + render) and the store queries it makes, per phase."""
        dispatcher = self.service.dispatcher
        dispatcher.execute = probe.timed("command", dispatcher.execute)  # type: ignore[method-assign]
        store: Any = self.service.store
        store.failure_summary = probe.timed("store query", store.failure_summary)
        store.active = probe.timed("store query", store.active)

    def start(self) -> None:
        self.service.start()
        self.started = True
        self.server.start()

    def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        with contextlib.suppress(Exception):
            self.server.stop()
        with contextlib.suppress(Exception):
            self.service.stop()
        self.executor.shutdown(wait=False)

    def ingest_counters(self) -> tuple[int, int]:
        consumer = self.service.consumer
        lag = consumer.lag_events if consumer is not None else 0
        return self.service.store.health().events_total, lag

    def stream(self) -> Any:
        return self.service.stream_health()


class Child:
    """A ``python -m bench.commands --child MODE`` process, spoken to line by line."""

    def __init__(self, mode: str, options: dict[str, Any]) -> None:
        self.mode = mode
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.commands", "--child", mode, json.dumps(options)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def read(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait(timeout=10)
            raise RuntimeError(f"the {self.mode} process ended (exit {code}) without answering")
        return line.strip()

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self.send("QUIT")
            with contextlib.suppress(OSError, ValueError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=5)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError, ValueError):
                    stream.close()


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * fraction // 1))
    return ordered[int(rank) - 1]


def stats(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": float(len(values)),
        "p50": percentile(values, 0.50),
        "p95": percentile(values, 0.95),
        "p99": percentile(values, 0.99),
        "max": max(values) if values else 0.0,
    }


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "n/a"


def _table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    print("  " + "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  " + "  ".join("-" * w for w in widths))
    for row in rows:
        print("  " + "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))


PHASES = ("idle", "loaded", "idle again")


def report(
    args: argparse.Namespace,
    results: dict[str, list[dict[str, Any]]],
    probe: Probe,
    ingest: dict[str, Any],
    commands: list[tuple[str, str]],
) -> None:
    groups: list[tuple[str, set[str]]] = [(f"/celery {text}", {kind}) for kind, text in commands]
    failed_kinds = {kind for kind, _ in commands if kind.startswith("failed")}
    groups.append(("/celery failed (both)", failed_kinds))
    groups.append(("all", {kind for kind, _ in commands}))

    def ack_ms(phase: str, kinds: set[str]) -> list[float]:
        return [r["ms"] for r in results.get(phase, []) if r["kind"] in kinds]

    rows: list[list[str]] = []
    for label, kinds in groups:
        idle = ack_ms("idle", kinds) + ack_ms("idle again", kinds)
        idle_s = stats(idle)
        for phase in PHASES:
            s = stats(ack_ms(phase, kinds))
            loaded = phase == "loaded"
            rows.append(
                [
                    label if phase == "idle" else "",
                    phase,
                    f"{int(s['n'])}",
                    f"{s['p50']:.1f}",
                    f"{s['p95']:.1f}",
                    f"{s['p99']:.1f}",
                    f"{s['max']:.1f}",
                    _ratio(s["p50"], idle_s["p50"]) if loaded else "",
                    _ratio(s["p99"], idle_s["p99"]) if loaded else "",
                ]
            )
    _table(
        "(a) signed request -> HTTP ack (the answer is in the ack), ms, measured by the client "
        "process; ratios: loaded / both idle phases pooled",
        ["request", "phase", "n", "p50", "p95", "p99", "max", "p50 ratio", "p99 ratio"],
        rows,
    )
    bad = [r for phase in PHASES for r in results.get(phase, []) if not r["answered"]]
    late = max((r["late_ms"] for phase in PHASES for r in results.get(phase, [])), default=0.0)
    sizes = [r["bytes"] for r in results.get("loaded", [])]
    for kind, text in commands:
        sample = next((r for r in results.get("loaded", []) if r["kind"] == kind), None)
        if sample is not None:
            print(f"  /celery {text}: answered {sample['text']!r}")
    print(
        f"  requests not answered in the ack (non-200 or no blocks): {len(bad)}; client sent "
        f"at most {late:.1f} ms after schedule; ack bodies {min(sizes, default=0):,}-"
        f"{max(sizes, default=0):,} bytes"
    )

    rows = []
    for phase in PHASES:
        http = [r["ms"] for r in results.get(phase, [])]
        command = probe.samples.get((phase, "command"), [])
        query = probe.samples.get((phase, "store query"), [])
        h, c, q = stats(http), stats(command), stats(query)
        rows.append(
            [
                phase,
                f"{h['p50']:.1f} / {h['p99']:.1f}",
                f"{c['p50']:.1f} / {c['p99']:.1f}",
                f"{q['p50']:.1f} / {q['p99']:.1f}",
                f"{h['p50'] - c['p50']:.1f}",
            ]
        )
    _table(
        "(b) where the ack time goes, ms p50 / p99 (all requests): HTTP = client-measured; "
        "command = dispatcher.execute in the bot (store query + render); store query = "
        "failure_summary / active, lock wait included",
        ["phase", "HTTP", "command", "store query", "HTTP - command, p50"],
        rows,
    )

    rows = []
    for phase in PHASES:
        pauses = [probe.gc_pauses.get((phase, gen), []) for gen in (0, 1, 2)]
        every = [p for gen in pauses for p in gen]
        hit = [r["ms"] for r in results.get(phase, []) if probe.overlaps_full_collection(r)]
        rows.append(
            [
                phase,
                " / ".join(str(len(gen)) for gen in pauses),
                f"{max(pauses[2], default=0.0):.1f}",
                f"{max(every, default=0.0):.1f}",
                f"{sum(every):.0f}",
                f"{len(hit)}" + (f" ({', '.join(f'{ms:.0f}' for ms in hit)} ms)" if hit else ""),
            ]
        )
    _table(
        "(c) garbage collector pauses in the bot process (a collection stops every thread); "
        "the last column: requests in flight during a full (gen 2) collection, and their ack",
        [
            "phase",
            "collections gen 0/1/2",
            "gen 2 max ms",
            "any max ms",
            "total ms",
            "requests hit",
        ],
        rows,
    )

    offered = int(ingest["offered"])
    applied = int(ingest["applied"])
    rows = [
        ["events offered (published)", f"{offered:,}"],
        [
            "published ev/s (target rate)",
            f"{ingest['published_rate']:,.0f} ({args.rate:,.0f}); publisher at most "
            f"{ingest['worst_behind'] * 1000:.0f} ms behind schedule",
        ],
        ["events applied (events_total delta)", f"{applied:,} ({_pct(applied, offered)})"],
        [
            "applied ev/s during the request window",
            f"{ingest['window_rate']:,.0f} ({_ratio(ingest['window_rate'], args.rate)} of offered)",
        ],
        [
            "consumer lag, max during the window",
            f"{ingest['lag_max']:,} (mean {ingest['lag_mean']:,.0f})",
        ],
        ["caught up after the last publish", f"{ingest['caught_up']}"],
        ["disconnects_by_server (event loss)", str(ingest["disconnects"])],
        ["reconnects / malformed", f"{ingest['reconnects']} / {ingest['malformed']}"],
        ["tasks retained after", f"{ingest['retained']:,}"],
    ]
    _table("(d) ingest during the loaded phase", ["", "value"], rows)

    failed_loaded = stats(ack_ms("loaded", failed_kinds))
    kept_up = (
        applied >= offered
        and ingest["disconnects"] == 0
        and ingest["window_rate"] >= 0.95 * min(args.rate, ingest["published_rate"])
    )
    where = (
        ""
        if args.tasks == 100_000 and args.rate == 10_000
        else (" (the target is set for 100,000 tasks at 10,000 ev/s: indicative only)")
    )
    print(f"\n  target, measured, not asserted{where}:")
    verdict = "met" if failed_loaded["p99"] < TARGET_P99_MS else "MISSED"
    print(
        f"    {'p99 /celery failed ack under load':<44}{failed_loaded['p99']:7.1f} ms "
        f"(target < {TARGET_P99_MS:.0f} ms): {verdict}"
    )
    spared = [
        r["ms"]
        for r in results.get("loaded", [])
        if r["kind"] in failed_kinds and not probe.overlaps_full_collection(r)
    ]
    print(
        f"    {'  the same, without requests hit by a full GC':<44}"
        f"{percentile(spared, 0.99):7.1f} ms "
        f"({len(spared)} of {int(failed_loaded['n'])} requests)"
    )
    print(
        f"    {'ingest kept up':<44}{'yes' if kept_up else 'NO':>7}    "
        f"(all applied, no cut-off, window rate >= 95% of offered)"
    )


def _pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.2f}%" if whole else "n/a"


# ---------------------------------------------------------------------------------------------
# Parent: the run
# ---------------------------------------------------------------------------------------------


def run_bench(args: argparse.Namespace) -> int:
    from chatbot.config import load_settings
    from chatbot.demo.embedded import EmbeddedRedis
    from tests.support.slack_api import MockSlackAPI

    logging.basicConfig(level=logging.WARNING, format="  [%(levelname)s %(name)s] %(message)s")
    print(
        f"bench.commands: seed {args.seed}, {args.tasks:,} tasks, {args.rate:,.0f} ev/s offered, "
        f"{args.seconds:g} s windows, {args.requests_per_second:g} requests/s, "
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
        + (" (quick)" if args.quick else "")
    )
    started = time.perf_counter()
    profile = fleet_profile(args.rate, args.tasks, args.seed, time.time())
    hot = hot_task_name(args.seed, profile)
    commands = [("failed", "failed"), ("failed NAME", f"failed {hot}"), ("stuck", "stuck")]
    secret = secrets.token_hex(SIGNING_SECRET_BYTES)
    probe = Probe()
    gc.callbacks.append(probe.on_gc)
    redis_server = EmbeddedRedis()  # Redis's default pubsub output limit: 32mb 8mb 60
    api = MockSlackAPI()
    bot: Bot | None = None
    publisher: Child | None = None
    client: Child | None = None
    monitor: Monitor | None = None
    try:
        redis_server.start()
        api.start()
        broker = redis_server.url_for(0)
        publish_seconds = LEAD_SECONDS + args.seconds + TAIL_SECONDS
        # The publisher prepares its messages while this process pre-fills the store.
        publisher = Child(
            "publisher",
            {
                "url": broker,
                "seed": args.seed,
                "tasks": args.tasks,
                "rate": args.rate,
                "duration": publish_seconds,
                "tasks_per_second": profile.tasks_per_second,
                "start_time": profile.start_time,
            },
        )
        settings = load_settings(
            environ={
                "CELERY_BROKER_URL": broker,
                "SLACK_BOT_TOKEN": "xoxb-bench-commands",
                "SLACK_SIGNING_SECRET": secret,
                "SLACK_API_URL": api.url,
                "CHATOPS_HOST": "127.0.0.1",
                "CHATOPS_PORT": "0",
                "CHATOPS_MAX_TASKS": str(args.tasks),
                "CHATOPS_LOG_LEVEL": "WARNING",
            }
        )
        bot = Bot(settings)
        bot.instrument(probe)

        t0 = time.perf_counter()
        stream = FleetEvents(args.seed, profile).stream(None, received=True)
        prefill_events = 0
        store = bot.service.store
        for batch in prefill_batches(stream, args.tasks):
            store.apply(batch)
            prefill_events += len(batch)
        prefill_seconds = time.perf_counter() - t0
        del stream
        bot.start()
        consumer = bot.service.consumer
        if consumer is None or not consumer.wait_connected(15):
            raise RuntimeError("the event consumer did not connect to the private broker")
        events_url = f"{bot.server.url}/slack/events"
        ready_line = publisher.read()
        if not ready_line.startswith("READY "):
            raise RuntimeError(f"publisher: {ready_line!r}")
        ready = json.loads(ready_line[len("READY ") :])
        if int(ready["skipped"]) != prefill_events:
            raise RuntimeError(
                f"publisher skipped {ready['skipped']} events, pre-fill used "
                f"{prefill_events}: the streams diverged"
            )
        print(
            f"  pre-fill: {len(store):,} tasks retained from {prefill_events:,} events by "
            f"store.apply in {prefill_seconds:.1f} s; publisher ready with {ready['events']:,} "
            f"events in {ready['messages']:,} messages ({ready['bytes'] / 2**20:.0f} MB); "
            f"fleet sped up to {profile.tasks_per_second:,.0f} tasks/s so event time runs at "
            f"wall-clock speed; hot task name {hot!r}"
        )
        client = Child(
            "client",
            {
                "url": events_url,
                "secret": secret,
                "response_url": api.response_url("bench"),
                "commands": commands,
            },
        )
        monitor = Monitor(bot.ingest_counters).start()

        def phase(name: str, seconds: float) -> list[dict[str, Any]]:
            assert client is not None
            probe.phase = name
            client.send(f"PHASE {seconds} {args.requests_per_second}")
            found: list[dict[str, Any]] = json.loads(client.read())
            return found

        results: dict[str, list[dict[str, Any]]] = {}
        phase("warm-up", 6 / args.requests_per_second + 0.01)
        print(f"  phase idle: {args.seconds:g} s, no events flowing", file=sys.stderr)
        results["idle"] = phase("idle", args.seconds)

        before = bot.stream()
        total_before = store.health().events_total
        print(f"  phase loaded: {args.seconds:g} s at {args.rate:,.0f} ev/s", file=sys.stderr)
        publisher.send("GO")
        go = time.monotonic()
        time.sleep(LEAD_SECONDS)
        window_start = time.monotonic()
        results["loaded"] = phase("loaded", args.seconds)
        window_end = time.monotonic()
        probe.phase = "drain"
        published = json.loads(publisher.read())
        published_at = time.monotonic()
        offered = int(published["offered"])
        deadline = published_at + DRAIN_TIMEOUT
        caught_up = "not within the drain timeout"
        while time.monotonic() < deadline:
            total, lag = bot.ingest_counters()
            if total - total_before >= offered and lag == 0:
                caught_up = f"{(time.monotonic() - published_at) * 1000:.0f} ms"
                break
            time.sleep(0.01)
        after = bot.stream()
        window = monitor.between(window_start, window_end)
        window_rate = 0.0
        if len(window) >= 2:
            span = window[-1].at - window[0].at
            window_rate = (window[-1].events_total - window[0].events_total) / span if span else 0.0
        loaded_samples = monitor.between(go, published_at)
        lags = [s.lag for s in loaded_samples] or [0]
        ingest = {
            "offered": offered,
            "published_rate": float(published["rate"]),
            "worst_behind": float(published["worst_behind"]),
            "applied": store.health().events_total - total_before,
            "window_rate": window_rate,
            "lag_max": max(lags),
            "lag_mean": sum(lags) / len(lags),
            "caught_up": caught_up,
            "disconnects": after.disconnects_by_server - before.disconnects_by_server,
            "reconnects": after.reconnects - before.reconnects,
            "malformed": after.malformed - before.malformed,
            "retained": len(store),
        }
        print(f"  phase idle again: {args.seconds:g} s, no events flowing", file=sys.stderr)
        results["idle again"] = phase("idle again", args.seconds)
        probe.phase = "done"
        report(args, results, probe, ingest, commands)
    finally:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(probe.on_gc)
        if monitor is not None:
            monitor.stop()
        for child in (client, publisher):
            if child is not None:
                child.close()
        if bot is not None:
            bot.stop()
        api.stop()
        redis_server.stop()
    print(f"\ndone in {time.perf_counter() - started:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.commands",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--tasks", type=int, default=None, help="retained tasks (100,000)")
    parser.add_argument("--rate", type=float, default=None, help="offered events/s (10,000)")
    parser.add_argument("--seconds", type=float, default=None, help="each phase's window (30)")
    parser.add_argument(
        "--requests-per-second", type=float, default=10.0, help="signed requests/s (10)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--quick", action="store_true", help="10,000 tasks, 2,000 ev/s, 10 s: under a minute"
    )
    parser.add_argument("--child", nargs=2, metavar=("MODE", "JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        mode, raw = args.child
        options = json.loads(raw)
        if mode == "publisher":
            child_publisher(options, sys.stdin, sys.stdout)
        else:
            child_client(options, sys.stdin, sys.stdout)
        return 0
    quick = args.quick
    args.tasks = args.tasks or (10_000 if quick else 100_000)
    args.rate = args.rate or (2_000.0 if quick else 10_000.0)
    args.seconds = args.seconds or (10.0 if quick else 30.0)
    if args.tasks < 1 or args.rate <= 0 or args.seconds <= 0 or args.requests_per_second <= 0:
        parser.error("--tasks, --rate, --seconds and --requests-per-second must be positive")
    return run_bench(args)


if __name__ == "__main__":
    sys.exit(main())
