"""End-to-end sweep: one event per message at 10k..50k events/s into `celery-chatops run`.

```sh
python -m bench.sweep --quick   # 10 s per rate: about 8 minutes
python -m bench.sweep           # 60 s per rate (issue 12): about 30 minutes
```

Each consumer, in turn, follows a private redis-server (Redis's default ``pubsub 32mb 8mb 60``
limit) while a publisher process offers the same seeded stream (``bench/events.py``), one
event per message (the worst case for a decode-bound consumer), at each rate for the same
time, the rates back to back:

* ``ours``: the whole ``celery-chatops run`` (its CLI entry point, in a child process; Slack is
  the local stand-in ``MockSlackAPI``), ``CHATOPS_MAX_TASKS=100000``, the reader process
  (reading and decoding);
* ``ours-raw``: the same with ``CHATOPS_EVENT_READER=process-raw`` (the reader process hands
  raw messages over), and ``ours-thread`` with ``CHATOPS_EVENT_READER=thread`` (the reader a
  thread of the bot's process): the measurements behind the choice in
  ``docs/architecture.md``;
* ``celery``: ``celery.events.state.State(max_tasks_in_memory=100000)`` behind Celery's own
  ``EventReceiver`` on kombu's Redis transport, reconnecting when Redis cuts it off;
* ``flower``: Flower 2.2's ``flower.events.Events`` with its ``EventsState`` on a Tornado loop.

Per rate it reports the events applied as a share of those published, how often Redis cut the
consumer off, and the lag p99: every 100 ms the consumer's applied count is read and set
against the publisher's timeline, and the lag is how long ago the publisher had sent that
many. For ``ours`` it also reports the longest garbage-collection pause of each step (the
bot's ``gc.callbacks``), the loss alerts the bot posted to its alert channel, ``/healthz``'s
``degraded`` and how long ``/metrics`` takes to answer at the end (100,000 tasks retained).

Nothing here asserts; the machine's cores are shared, so compare the columns of one run.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gc
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RATES = (10_000, 20_000, 30_000, 40_000, 50_000)
CONSUMERS = ("ours", "ours-raw", "ours-thread", "celery", "flower")
READERS = {"ours": "process", "ours-raw": "process-raw", "ours-thread": "thread"}
SAMPLE_EVERY = 0.1
TICK = 0.005  # the publisher sends what is due every 5 ms
REDIS_PUBSUB_LIMIT = "pubsub 32mb 8mb 60"  # Redis's default, stated so the run does not rely on it
SECRET = "bench-sweep-signing-secret"
ALERT_CHANNEL = "C0SWEEP"


# ---------------------------------------------------------------------------------------------
# The publisher (a child process)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Template:
    """One message of the pool, split where the task id's 48 base64 characters sit."""

    routing_key: str
    head: bytes  # the envelope up to the id (or the whole envelope, for worker events)
    tail: bytes  # the rest
    uuid_tail: bytes | None  # the id after its first 8 characters; None: no id to rewrite


def _templates(seed: int, pool: int) -> list[_Template]:
    """A pool of one-event messages whose task ids can be renewed at the cost of a slice.

    The body is JSON with the id first (``{"uuid":"`` is 9 bytes, a multiple of 3), so the id's
    36 bytes map to 48 base64 characters of their own: replacing them renews the id without
    encoding the body again. The id's first 8 characters become the pass number over the pool,
    so every pass is new tasks, and a task's events share its new id.
    """
    import itertools

    from bench.events import FleetEvents
    from chatbot.eventwire import encode_message

    found: list[_Template] = []
    for event in itertools.islice(FleetEvents(seed).stream(None, received=False), pool):
        routing_key = str(event["type"]).replace("-", ".")
        task_id = event.get("uuid")
        if isinstance(task_id, str) and len(task_id) == 36:
            body = {"uuid": task_id, **{k: v for k, v in event.items() if k != "uuid"}}
        else:
            body, task_id = dict(event), None
        payload = json.dumps(body, separators=(",", ":")).encode()
        envelope = json.loads(encode_message(body, routing_key))
        b64 = base64.b64encode(payload).decode("ascii")
        envelope["body"] = b64
        message = json.dumps(envelope).encode()
        if task_id is None:
            found.append(_Template(routing_key, message, b"", None))
            continue
        at = message.index(b64.encode()) + 12  # '{"uuid":"' is 9 bytes: 12 characters
        assert base64.b64decode(message[at : at + 48]) == task_id.encode()
        found.append(_Template(routing_key, message[:at], message[at + 48 :],
                               task_id[8:].encode()))  # fmt: skip
    return found


class _Publisher:
    def __init__(self, host: str, port: int, templates: list[_Template]) -> None:
        self.templates = templates
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.next = 0  # messages published so far, over every step
        self.replies = 0
        threading.Thread(target=self._drain_replies, daemon=True).start()

    def _drain_replies(self) -> None:
        # PUBLISH answers ":<subscribers>\r\n": one line each. Read and dropped, so that the
        # publisher's own output buffer on the server stays small.
        while True:
            data = self.sock.recv(1 << 20)
            if not data:
                return
            self.replies += data.count(b"\n")

    def _frames(self, db: int) -> list[tuple[bytes, bytes, bytes | None]]:
        from chatbot.eventwire import publish_topic

        frames = []
        for t in self.templates:
            channel = publish_topic(t.routing_key, db=db).encode()
            size = len(t.head) + len(t.tail) + (48 if t.uuid_tail is not None else 0)
            head = b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s" % (
                len(channel), channel, size, t.head,
            )  # fmt: skip
            frames.append((head, t.tail + b"\r\n", t.uuid_tail))
        return frames

    def step(self, db: int, rate: float, seconds: float) -> dict[str, Any]:
        frames = self._frames(db)
        pool = len(frames)
        b64 = base64.b64encode
        sent = 0
        total = int(rate * seconds)
        timeline: list[tuple[float, int]] = []
        started = time.time()
        while sent < total:
            now = time.time()
            due = min(total, int((now - started) * rate) + 1) - sent
            if due > 0:
                parts: list[bytes] = []
                k = self.next
                for _ in range(due):
                    head, tail, uuid_tail = frames[k % pool]
                    if uuid_tail is None:
                        parts.append(head + tail)
                    else:
                        parts.append(head + b64(b"%08x" % (k // pool) + uuid_tail) + tail)
                    k += 1
                self.sock.sendall(b"".join(parts))
                self.next = k
                sent += due
                timeline.append((time.time(), sent))
            time.sleep(TICK)
        ended = time.time()
        return {"sent": sent, "started": started, "ended": ended, "timeline": timeline}


def child_publisher(options: dict[str, Any]) -> None:
    templates = _templates(int(options["seed"]), int(options["pool"]))
    publisher = _Publisher(options["host"], int(options["port"]), templates)
    print(json.dumps({"ready": len(templates)}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command.get("stop"):
            return
        result = publisher.step(int(command["db"]), float(command["rate"]),
                                float(command["seconds"]))  # fmt: skip
        print(json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# The reference consumers (child processes): answer "sample" on stdin with their counts
# ---------------------------------------------------------------------------------------------
def _serve_samples(count: Callable[[], int], cut_offs: Callable[[], int]) -> None:
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip() == "stop":
            return
        print(json.dumps({"t": time.time(), "count": count(), "cut_offs": cut_offs()}),
              flush=True)  # fmt: skip


def child_celery(options: dict[str, Any]) -> None:
    """Celery's State behind its own EventReceiver, as a State-based monitor runs it."""
    from celery import Celery
    from celery.events.state import State

    app = Celery("sweep-celery", broker=options["url"], set_as_current=False)
    state = State(max_tasks_in_memory=int(options["cap"]))
    cuts = [0]
    connected = threading.Event()

    def consume() -> None:
        while True:
            try:
                with app.connection_for_read() as conn:
                    receiver = app.events.Receiver(conn, handlers={"*": state.event})
                    connected.set()
                    receiver.capture(limit=None, timeout=None, wakeup=False)
            except Exception:  # Redis closed the subscriber: count it, and reconnect
                cuts[0] += 1
                time.sleep(0.1)

    threading.Thread(target=consume, daemon=True).start()
    connected.wait(30)
    _wait_subscribed(options["url"])
    _serve_samples(lambda: state.event_count, lambda: cuts[0])


def child_flower(options: dict[str, Any]) -> None:
    """Flower 2.2's own consumer: its Events thread, EventsState and a Tornado I/O loop."""
    import logging

    from celery import Celery
    from flower.events import Events
    from tornado.ioloop import IOLoop

    cuts = [0]

    class _Count(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "Failed to capture events" in record.getMessage():
                cuts[0] += 1

    logging.getLogger("flower.events").addHandler(_Count())
    logging.getLogger("flower.events").setLevel(logging.ERROR)
    app = Celery("sweep-flower", broker=options["url"], set_as_current=False)
    loop = IOLoop.current()
    events = Events(app, loop, enable_events=False, max_tasks_in_memory=int(options["cap"]))
    events.start()

    def serve() -> None:
        _wait_subscribed(options["url"])
        _serve_samples(lambda: events.state.event_count, lambda: cuts[0])
        loop.add_callback(loop.stop)

    threading.Thread(target=serve, daemon=True).start()
    loop.start()


def _wait_subscribed(url: str, timeout: float = 30.0) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if int(client.execute_command("PUBSUB", "NUMPAT")) >= 1:
                return
            time.sleep(0.02)
        raise RuntimeError("the consumer never subscribed")
    finally:
        client.close()


# ---------------------------------------------------------------------------------------------
# Our bot (a child process): `celery-chatops run`, with its garbage collector's pauses recorded
# ---------------------------------------------------------------------------------------------
def child_bot(options: dict[str, Any]) -> None:
    """``celery-chatops run`` through its CLI entry point, plus a ``gc.callbacks`` recorder.

    The recorder only appends ``(end time, generation, seconds)`` per collection and writes
    them to ``options["gc_file"]`` every second: it is the only thing added to the bot.
    """
    from chatbot.cli import main as cli_main

    pauses: list[tuple[float, int, float]] = []
    started: list[float] = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses.append((time.time(), int(info["generation"]),
                           time.perf_counter() - started[0]))  # fmt: skip

    gc.callbacks.append(on_gc)
    path = Path(options["gc_file"])

    def dump() -> None:
        while True:
            time.sleep(1.0)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(list(pauses)))
            tmp.replace(path)

    threading.Thread(target=dump, daemon=True).start()
    sys.exit(cli_main(["run"]))


# ---------------------------------------------------------------------------------------------
# The parent
# ---------------------------------------------------------------------------------------------
def _child(mode: str, options: dict[str, Any], env: dict[str, str] | None = None,
           stderr: Any = subprocess.DEVNULL) -> subprocess.Popen[str]:  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "bench.sweep", "--child", mode, json.dumps(options)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=env,
    )


def _ask(proc: subprocess.Popen[str], line: str) -> dict[str, Any]:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()
    answer = proc.stdout.readline()
    if not answer:
        raise RuntimeError(f"child {proc.args!r} ended")
    return dict(json.loads(answer))


def _wait_ready(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"child {proc.args!r} did not start")
    return dict(json.loads(line))


def _stop(proc: subprocess.Popen[str], line: str | None = "stop") -> None:
    with contextlib.suppress(OSError, ValueError):
        if line is not None and proc.stdin is not None:
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _get(url: str, timeout: float = 30.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Sample:
    t: float
    count: int
    cut_offs: int


@dataclass
class Step:
    rate: int
    sent: int = 0
    published_rate: float = 0.0
    applied: int = 0
    cut_offs: int = 0
    lag_p99: float | None = None
    lag_max: float | None = None
    gc_max_ms: float | None = None
    gc_full: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def applied_share(self) -> float:
        return self.applied / self.sent if self.sent else 0.0


class _Subject:
    """A consumer under test: started, sampled, stopped."""

    name = ""

    def sample(self) -> Sample:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class _Reference(_Subject):
    def __init__(self, name: str, url: str, cap: int) -> None:
        self.name = name
        self.proc = _child(name, {"url": url, "cap": cap})
        _wait_ready(self.proc)

    def sample(self) -> Sample:
        reply = _ask(self.proc, "sample")
        return Sample(float(reply["t"]), int(reply["count"]), int(reply["cut_offs"]))

    def stop(self) -> None:
        _stop(self.proc)


class _Bot(_Subject):
    def __init__(self, name: str, url: str, cap: int, slack_url: str, workdir: Path) -> None:
        self.name = name
        self.port = _free_port()
        self.gc_file = workdir / f"{name}-gc.json"
        self.log = (workdir / f"{name}.log").open("w")
        env = dict(os.environ)
        env.update({
            "CELERY_BROKER_URL": url,
            "SLACK_BOT_TOKEN": "xoxb-sweep",
            "SLACK_SIGNING_SECRET": SECRET,
            "SLACK_API_URL": slack_url,
            "CHATOPS_HOST": "127.0.0.1",
            "CHATOPS_PORT": str(self.port),
            "CHATOPS_MAX_TASKS": str(cap),
            "CHATOPS_ENABLE_EVENTS_INTERVAL": "0",
            "CHATOPS_ALERT_CHANNEL": ALERT_CHANNEL,
            "CHATOPS_CHECK_INTERVAL": "5",
            "CHATOPS_EVENT_READER": READERS[name],
            # The cycled synthetic stream makes hundreds of tasks look stuck and every name
            # spike: those alerts would queue ahead of the loss alert at Slack's posting pace.
            "CHATOPS_STUCK_AFTER": "86400",
            "CHATOPS_FAILURE_SPIKE_THRESHOLD": "1000000000",
            "CHATOPS_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(REPO),
        })  # fmt: skip
        self.proc = _child("bot", {"gc_file": str(self.gc_file)}, env=env, stderr=self.log)
        self.base = f"http://127.0.0.1:{self.port}"
        end = time.monotonic() + 60
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the bot exited: see {self.log.name}")
            with contextlib.suppress(OSError):
                if _get(self.base + "/healthz", 2)[0] == 200:
                    break
            time.sleep(0.2)
        else:
            raise RuntimeError("the bot never became healthy")
        _wait_subscribed(url)

    def health(self) -> dict[str, Any]:
        return dict(json.loads(_get(self.base + "/healthz")[1]))

    def sample(self) -> Sample:
        health = self.health()
        loss = health.get("event_loss") or {}
        cuts = int(loss.get("cutoffs", health.get("event_loss_detected", 0)) or 0)
        return Sample(time.time(), int(health["events_total"]), cuts)

    def gc_pauses(self) -> list[tuple[float, int, float]]:
        with contextlib.suppress(OSError, ValueError):
            recorded = json.loads(self.gc_file.read_text())
            return [(float(t), int(g), float(d)) for t, g, d in recorded]
        return []

    def scrape(self, repeat: int = 5) -> list[float]:
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            status, _ = _get(self.base + "/metrics", 60)
            times.append(time.perf_counter() - t0)
            if status != 200:
                break
        return times

    def stop(self) -> None:
        self.proc.terminate()
        _stop(self.proc, None)
        self.log.close()


def _lag(samples: list[Sample], base: int, timeline: list[tuple[float, int]]) -> list[float]:
    """For each sample, how long ago the publisher had sent what the consumer has applied."""
    lags = []
    j = 0
    for s in samples:
        applied = s.count - base
        if applied <= 0:
            continue
        while j < len(timeline) and timeline[j][1] < applied:
            j += 1
        if j == len(timeline):
            break  # more applied than the timeline says was sent: nothing to compare
        lags.append(max(0.0, s.t - timeline[j][0]))
    return lags


def _p99(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def run_steps(subject: _Subject, publisher: subprocess.Popen[str], db: int,
              rates: list[int], seconds: float, drain: float) -> Iterator[Step]:  # fmt: skip
    for rate in rates:
        before = subject.sample()
        samples: list[Sample] = []
        answer: dict[str, Any] = {}

        def publish(rate: int = rate, answer: dict[str, Any] = answer) -> None:
            answer.update(_ask(publisher, json.dumps({"db": db, "rate": rate,
                                                      "seconds": seconds})))  # fmt: skip

        thread = threading.Thread(target=publish)
        thread.start()
        while thread.is_alive():
            samples.append(subject.sample())
            time.sleep(SAMPLE_EVERY)
        sent = int(answer["sent"])
        # Drained: everything applied, or nothing more for 2 s, or `drain` seconds at most.
        end = time.monotonic() + drain
        last_change = time.monotonic()
        while time.monotonic() < end:
            s = subject.sample()
            samples.append(s)
            if s.count - before.count >= sent:
                break
            if len(samples) > 1 and s.count != samples[-2].count:
                last_change = time.monotonic()
            elif time.monotonic() - last_change > 2.0:
                break
            time.sleep(SAMPLE_EVERY)
        final = samples[-1]
        step = Step(rate=rate, sent=sent)
        step.published_rate = sent / max(1e-9, answer["ended"] - answer["started"])
        step.applied = final.count - before.count
        step.cut_offs = final.cut_offs - before.cut_offs
        lags = _lag(samples, before.count, [(t, n) for t, n in answer["timeline"]])
        if step.applied >= sent:
            step.lag_p99, step.lag_max = _p99(lags), max(lags) if lags else None
        if isinstance(subject, _Bot):
            window = [p for p in subject.gc_pauses()
                      if answer["started"] <= p[0] <= final.t]  # fmt: skip
            step.gc_max_ms = max((p[2] for p in window), default=0.0) * 1000
            step.gc_full = sum(1 for p in window if p[1] == 2)
        yield step


def _fmt_lag(value: float | None) -> str:
    return "lost" if value is None else f"{value:.2f} s"


def _print_table(results: dict[str, list[Step]]) -> None:
    names = list(results)
    rates = [s.rate for s in results[names[0]]]
    print("\napplied / published (cut-offs, lag p99) per offered rate")
    header = ["offered ev/s", "published ev/s", *names]
    rows = []
    for i, rate in enumerate(rates):
        row = [f"{rate:,}", f"{results[names[0]][i].published_rate:,.0f}"]
        for name in names:
            s = results[name][i]
            row.append(f"{100 * s.applied_share:.1f} % ({s.cut_offs} cut, {_fmt_lag(s.lag_p99)})")
        rows.append(row)
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    print("  " + "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for row in rows:
        print("  " + "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
    for name in names:
        if results[name] and results[name][0].gc_max_ms is not None:
            parts = [f"{s.rate // 1000}k: {s.gc_max_ms:.0f} ms ({s.gc_full} full)"
                     for s in results[name]]  # fmt: skip
            print(f"  {name}: longest GC pause per step: " + ", ".join(parts))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sweep", description=__doc__.split(
        "\n")[0])  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="10 s per rate instead of 60")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per rate")
    parser.add_argument("--rates", default=",".join(str(r) for r in RATES))
    parser.add_argument("--consumers", default=",".join(CONSUMERS))
    parser.add_argument("--cap", type=int, default=100_000, help="retained tasks, each consumer")
    parser.add_argument("--pool", type=int, default=60_000, help="distinct template messages")
    parser.add_argument("--drain", type=float, default=30.0, help="seconds to wait after a step")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "OPTIONS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        mode, options = args.child[0], json.loads(args.child[1])
        children: dict[str, Callable[[dict[str, Any]], None]] = {
            "publish": child_publisher, "celery": child_celery, "flower": child_flower,
            "bot": child_bot,
        }  # fmt: skip
        children[mode](options)
        return 0

    from chatbot.demo.embedded import EmbeddedRedis
    from tests.support.slack_api import MockSlackAPI

    seconds = args.seconds or (10.0 if args.quick else 60.0)
    rates = [int(r) for r in args.rates.split(",") if r]
    names = [n for n in args.consumers.split(",") if n]
    print(f"sweep: {seconds:.0f} s per rate, rates {rates}, cap {args.cap:,}, consumers {names};"
          f" {os.cpu_count()} CPUs shared with the machine's other work: compare within a run")
    workdir = Path(tempfile.mkdtemp(prefix="chatops-sweep-"))
    server = EmbeddedRedis(config={"client-output-buffer-limit": REDIS_PUBSUB_LIMIT},
                           databases=len(names) + 1).start()  # fmt: skip
    slack = MockSlackAPI().start()
    publisher = _child("publish", {"host": server.host, "port": server.port, "seed": args.seed,
                                   "pool": args.pool})  # fmt: skip
    results: dict[str, list[Step]] = {}
    extras: dict[str, Any] = {}
    try:
        print(f"  publisher ready: {_wait_ready(publisher)['ready']:,} template messages")
        for db, name in enumerate(names, start=1):
            url = server.url_for(db)
            subject: _Subject
            if name.startswith("ours"):
                subject = _Bot(name, url, args.cap, slack.url, workdir)
            else:
                subject = _Reference(name, url, args.cap)
            try:
                steps = []
                for step in run_steps(subject, publisher, db, rates, seconds, args.drain):
                    steps.append(step)
                    print(f"  {name:12} {step.rate:>6,} ev/s: {100 * step.applied_share:6.2f} %"
                          f" applied of {step.sent:,}, published {step.published_rate:,.0f}/s,"
                          f" {step.cut_offs} cut-offs, lag p99 {_fmt_lag(step.lag_p99)}"
                          + (f", longest GC {step.gc_max_ms:.0f} ms" if step.gc_max_ms
                             is not None else ""), flush=True)  # fmt: skip
                results[name] = steps
                if isinstance(subject, _Bot):
                    health = subject.health()
                    scrape = subject.scrape()
                    lost = (health.get("event_loss") or {}).get("cutoffs") or (
                        health.get("event_loss") or {}).get("dropped")  # fmt: skip

                    def loss_alerts() -> list[Any]:
                        return [c for c in slack.calls("chat.postMessage")
                                if "loss:events" in json.dumps(c.params.get("blocks"))
                                and c.params.get("channel") == ALERT_CHANNEL]  # fmt: skip

                    # The alert goes out at the bot's next check, behind any other alerts
                    # the stream raised (failure spikes...), at Slack's posting pace.
                    end = time.monotonic() + (90 if lost else 0)
                    while not loss_alerts() and time.monotonic() < end:
                        time.sleep(1.0)
                    alerts = loss_alerts()
                    extras[name] = {
                        "tasks_retained": health.get("tasks_retained"),
                        "healthz_ok": health.get("ok"),
                        "degraded": health.get("degraded"),
                        "event_loss": health.get("event_loss"),
                        "metrics_scrape_ms": [round(t * 1000, 1) for t in scrape],
                        "loss_alert_messages": len(alerts),
                        "alert_messages": len(slack.calls("chat.postMessage")),
                        "alert_kinds": sorted({str(c.params.get("text", ""))[:40]
                                               for c in slack.calls("chat.postMessage")}),
                    }
                    slack.clear()
                    print(f"  {name}: {json.dumps(extras[name])}", flush=True)
            finally:
                subject.stop()
    finally:
        _stop(publisher, json.dumps({"stop": True}))
        slack.stop()
        server.stop()
    if results:
        _print_table(results)
        for name, extra in extras.items():
            scrape = extra["metrics_scrape_ms"]
            if scrape:
                print(f"  {name}: /metrics at {extra['tasks_retained']:,} tasks: median"
                      f" {statistics.median(scrape):.0f} ms, max {max(scrape):.0f} ms;"
                      f" loss alerts posted {extra['loss_alert_messages']},"
                      f" /healthz ok={extra['healthz_ok']} degraded={extra['degraded']}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "seconds": seconds, "rates": rates,
            "results": {n: [s.__dict__ for s in steps] for n, steps in results.items()},
            "extras": extras,
        }, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
