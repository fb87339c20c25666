"""A seeded generator of realistic Celery event streams, and their Redis wire encoding.

The fleet it imitates: about 50 task names (a few hot, a long tail), 20 workers, 80 % of
tasks succeed, 15 % fail with a ~860-byte traceback, 5 % are retried once and then succeed;
args and kwargs reprs of ~100 bytes each; a few long runners; a heartbeat every 2 s per
worker. Tasks overlap in time as they do on a real fleet: a task's events are interleaved
with other tasks' and ordered by timestamp.

The same seed gives the same stream (uuids included), so two consumers can be fed identical
events. :func:`wire_messages` groups task events per worker into ``task.multi`` lists as a
worker with an event loop does (``EventDispatcher`` with ``buffer_group=['task']``), and
encodes each message exactly as kombu's Redis transport publishes it.
"""

from __future__ import annotations

import heapq
import random
import uuid as uuid_module
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from chatbot.eventwire import encode_message, publish_topic

Event = dict[str, Any]

_MODULES = ("billing", "orders", "emails", "reports", "search", "media", "sync", "auth")
_VERBS = (
    "charge", "refund", "render", "send", "index", "resize", "export", "import",
    "notify", "reconcile", "cleanup", "fetch", "publish", "compute", "verify",
)  # fmt: skip
_OBJECTS = ("invoice", "receipt", "thumbnail", "digest", "feed", "user", "account", "batch")
_EXCEPTIONS = (
    ("ConnectionError", "upstream {host} timed out after {n}s"),
    ("ValueError", "invalid literal for int() with base 10: '{word}'"),
    ("KeyError", "'{word}'"),
    ("IntegrityError", 'duplicate key value violates unique constraint "{word}_pkey"'),
    ("TimeoutError", "lock {word}:{n} not acquired within {n}s"),
    ("HTTPError", "502 Server Error: Bad Gateway for url: https://{host}/v1/{word}"),
)
_WORDS = ("alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "lambda", "zeta")
_HOSTS = ("payments.internal", "s3.eu-west-1.amazonaws.com", "smtp.mailer", "search-7")

_TRACE = "/usr/local/lib/python3.11/site-packages/celery/app/trace.py"
HEARTBEAT_FREQ = 2.0
SW = {"sw_ident": "py-celery", "sw_ver": "5.7.0", "sw_sys": "Linux"}


@dataclass(frozen=True)
class Profile:
    """What the fleet looks like. Defaults are the benchmark's reference fleet."""

    names: int = 50
    workers: int = 20
    tasks_per_second: float = 1000.0
    success: float = 0.80
    failure: float = 0.15  # the rest (5 %) is retried once, then succeeds
    long_runner: float = 0.002  # share of tasks that run for minutes...
    long_slots: int = 2  # ...but at most this many at once per worker (its pool is finite)
    args_bytes: int = 100
    kwargs_bytes: int = 100
    traceback_bytes: int = 860
    start_time: float = 1_750_000_000.0


class FleetEvents:
    """An endless (or ``tasks``-long) timestamp-ordered stream of events, seeded."""

    def __init__(self, seed: int = 1, profile: Profile | None = None) -> None:
        self.profile = profile or Profile()
        self.rng = random.Random(seed)
        rng = self.rng
        p = self.profile
        names: set[str] = set()
        while len(names) < p.names:
            names.add(f"app.{rng.choice(_MODULES)}.{rng.choice(_VERBS)}_{rng.choice(_OBJECTS)}")
        self.task_names = sorted(names)
        # Zipf-like popularity: a handful of hot task names, a long tail.
        self._weights = [1.0 / (rank + 1) ** 0.9 for rank in range(len(self.task_names))]
        self.workers = [f"celery@worker-{i:02d}.prod" for i in range(p.workers)]
        self._pids = {w: rng.randint(1000, 60000) for w in self.workers}
        self._processed = dict.fromkeys(self.workers, 0)
        self._active = dict.fromkeys(self.workers, 0)
        self._long_until: dict[str, list[float]] = {w: [] for w in self.workers}
        self._clock = 0
        self._seq = 0
        self._heap: list[tuple[float, int, Event]] = []
        self._recent_ids: list[str] = []
        self.tasks_started = 0

    # -- payloads ----------------------------------------------------------------------
    def _uuid(self) -> str:
        return str(uuid_module.UUID(int=self.rng.getrandbits(128), version=4))

    def _fit(self, text: str, size: int) -> str:
        """Pad or cut a repr to about ``size`` bytes, keeping it looking like a repr."""
        target = max(8, int(self.rng.gauss(size, size * 0.15)))
        if len(text) < target:
            pad = max(0, target - len(text) - 4)
            text = text[:-1] + ", '" + f"{self.rng.getrandbits(4 * pad + 4):x}"[:pad] + "')"
        return text[:target]

    def _args(self) -> str:
        rng = self.rng
        text = (
            f"({rng.randint(1, 10**7)}, 'cust_{rng.getrandbits(48):012x}', "
            f"{{'amount': {rng.randint(1, 99999)}, 'currency': '{rng.choice(('EUR', 'USD'))}'}})"
        )
        return self._fit(text, self.profile.args_bytes)

    def _kwargs(self) -> str:
        rng = self.rng
        text = (
            f"{{'request_id': 'req-{rng.getrandbits(64):016x}', 'region': "
            f"'{rng.choice(('eu-west-1', 'us-east-1'))}', 'priority': {rng.randint(0, 9)}, "
            f"'dry_run': {rng.random() < 0.1}}}"
        )
        return self._fit(text, self.profile.kwargs_bytes)

    def _exception(self) -> tuple[str, str]:
        rng = self.rng
        kind, template = rng.choice(_EXCEPTIONS)
        message = template.format(
            host=rng.choice(_HOSTS), n=rng.randint(1, 90), word=rng.choice(_WORDS)
        )
        exception = f"{kind}({message!r})"
        frames = [
            (_TRACE, 453, "trace_task", "R = retval = fun(*args, **kwargs)"),
            (_TRACE, 736, "__protected_call__", "return self.run(*args, **kwargs)"),
            (f"/srv/app/{rng.choice(_MODULES)}/tasks.py", rng.randint(20, 900), rng.choice(_VERBS),
             f"result = client.{rng.choice(_VERBS)}({rng.choice(_WORDS)}, timeout=timeout)"),
            (f"/srv/app/{rng.choice(_MODULES)}/client.py", rng.randint(20, 900), "_request",
             "response = self.session.request(method, url, **kwargs)"),
        ]  # fmt: skip
        lines = ["Traceback (most recent call last):"]
        for path, line, func, code in frames:
            lines.append(f'  File "{path}", line {line}, in {func}')
            lines.append(f"    {code}")
        lines.append(f"{kind}: {message}")
        text = "\n".join(lines) + "\n"
        target = int(rng.gauss(self.profile.traceback_bytes, 60))
        while len(text) + 50 < target:  # deeper stacks for the longer ones
            path = f"/srv/app/{rng.choice(_MODULES)}/util.py"
            line = rng.randint(1, 400)
            extra = f'  File "{path}", line {line}, in wrapper\n    return fn(*a, **kw)\n'
            head, _, tail = text.partition("\n")
            text = head + "\n" + extra + tail
        return exception, text

    # -- scheduling --------------------------------------------------------------------
    def _push(self, ts: float, event: Event) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (ts, self._seq, event))

    def _base(self, kind: str, worker: str, ts: float) -> Event:
        return {
            "hostname": worker,
            "utcoffset": 0,
            "pid": self._pids[worker],
            "clock": 0,  # stamped at emission, in emission order
            "timestamp": ts,
            "type": kind,
        }

    def _schedule_task(self, ts: float) -> None:
        rng = self.rng
        p = self.profile
        name = rng.choices(self.task_names, self._weights)[0]
        worker = rng.choice(self.workers)
        task_id = self._uuid()
        parent = rng.choice(self._recent_ids) if self._recent_ids and rng.random() < 0.1 else None
        self._recent_ids.append(task_id)
        if len(self._recent_ids) > 64:
            self._recent_ids.pop(0)
        args, kwargs = self._args(), self._kwargs()
        roll = rng.random()
        running_long = [end for end in self._long_until[worker] if end > ts]
        if rng.random() < p.long_runner and len(running_long) < p.long_slots:
            runtime = rng.uniform(60.0, 900.0)
            running_long.append(ts + runtime)
            self._long_until[worker] = running_long
        else:
            runtime = rng.lognormvariate(-2.5, 1.0)  # median ~80 ms
        self._attempt(ts, task_id, name, worker, args, kwargs, parent, 0, runtime, roll)

    def _attempt(
        self,
        ts: float,
        task_id: str,
        name: str,
        worker: str,
        args: str,
        kwargs: str,
        parent: str | None,
        retries: int,
        runtime: float,
        roll: float,
    ) -> None:
        rng = self.rng
        p = self.profile
        received = self._base("task-received", worker, ts)
        received.update(
            uuid=task_id, name=name, args=args, kwargs=kwargs, root_id=parent or task_id,
            parent_id=parent, retries=retries, eta=None, expires=None,
        )  # fmt: skip
        self._push(ts, received)
        started_at = ts + rng.expovariate(200.0)
        started = self._base("task-started", worker, started_at)
        started["uuid"] = task_id
        self._push(started_at, started)
        done_at = started_at + runtime
        if retries == 0 and roll >= p.success + p.failure:
            exception, traceback = self._exception()
            retried = self._base("task-retried", worker, done_at)
            retried.update(uuid=task_id, exception=exception, traceback=traceback)
            self._push(done_at, retried)
            again = done_at + rng.uniform(0.5, 2.0)
            retry_worker = rng.choice(self.workers)
            self._attempt(
                again, task_id, name, retry_worker, args, kwargs, parent, 1,
                rng.lognormvariate(-2.5, 1.0), 0.0,
            )  # fmt: skip
        elif retries == 0 and roll >= p.success:
            exception, traceback = self._exception()
            failed = self._base("task-failed", worker, done_at)
            failed.update(uuid=task_id, exception=exception, traceback=traceback)
            self._push(done_at, failed)
        else:
            succeeded = self._base("task-succeeded", worker, done_at)
            ident, rows = rng.randint(1, 10**9), rng.randint(0, 500)
            result = f"{{'status': 'ok', 'id': {ident}, 'rows': {rows}}}"
            succeeded.update(uuid=task_id, result=result, runtime=runtime)
            self._push(done_at, succeeded)

    def _heartbeat(self, worker: str, ts: float, kind: str = "worker-heartbeat") -> Event:
        event = self._base(kind, worker, ts)
        event.update(freq=HEARTBEAT_FREQ, **SW)
        if kind == "worker-heartbeat":
            load = self.rng.uniform(0.2, 4.0)
            event.update(
                active=self._active[worker],
                processed=self._processed[worker],
                loadavg=[round(load, 2), round(load * 0.9, 2), round(load * 0.8, 2)],
            )
        return event

    # -- the stream ----------------------------------------------------------------------
    def stream(self, tasks: int | None = None, *, received: bool = False) -> Iterator[Event]:
        """Events of ``tasks`` tasks (endless if None) plus heartbeats, in timestamp order.

        ``received=True`` adds ``local_received`` as Celery's receiver would (the events are
        then what an ``EventReceiver`` handler gets); otherwise they are what a worker sends.
        """
        p = self.profile
        interval = 1.0 / p.tasks_per_second
        now = p.start_time
        for i, worker in enumerate(self.workers):
            self._push(now - 1.0, self._heartbeat(worker, now - 1.0, "worker-online"))
            first = now + HEARTBEAT_FREQ * i / len(self.workers)
            self._push(first, {"_heartbeat": worker})
        created = 0
        heap = self._heap
        while True:
            producing = tasks is None or created < tasks
            if producing:
                now += self.rng.expovariate(1.0 / interval)
                self._schedule_task(now)
                created += 1
                horizon = now
            elif heap:
                horizon = heap[0][0]  # winding down: the tasks still in flight finish
            else:
                return
            while heap and heap[0][0] <= horizon:
                ts, _, event = heapq.heappop(heap)
                marker = event.get("_heartbeat")
                if marker is not None:
                    worker = str(marker)
                    # Keep heartbeating only while tasks are still being produced.
                    if producing:
                        self._push(ts + HEARTBEAT_FREQ, {"_heartbeat": worker})
                    event = self._heartbeat(worker, ts)
                self._account(event)
                self._clock += 1
                event["clock"] = self._clock
                if received:
                    event["local_received"] = ts + 0.0005
                yield event

    def _account(self, event: Event) -> None:
        kind = event["type"]
        worker = event["hostname"]
        if kind == "task-started":
            self._active[worker] += 1
            self.tasks_started += 1
        elif kind in ("task-succeeded", "task-failed", "task-retried"):
            self._active[worker] = max(0, self._active[worker] - 1)
            self._processed[worker] += 1


def generate(
    tasks: int, seed: int = 1, *, received: bool = True, profile: Profile | None = None
) -> list[Event]:
    """A materialized stream of ``tasks`` tasks (small runs and tests)."""
    return list(FleetEvents(seed, profile).stream(tasks, received=received))


def chunks(events: Iterable[Event], size: int) -> Iterator[list[Event]]:
    batch: list[Event] = []
    for event in events:
        batch.append(event)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def wire_messages(
    events: Iterable[Event],
    *,
    db: int = 0,
    global_keyprefix: str = "",
    group_window: float = 0.01,
    max_group: int = 24,
) -> Iterator[tuple[str, bytes, int]]:
    """``(channel, payload, events_in_it)`` exactly as workers publish them over Redis.

    Task events are buffered per worker and flushed as one ``task.multi`` list when the
    worker's buffer reaches ``max_group`` (Celery's ``buffer_limit`` is 24) or after
    ``group_window`` seconds of event time (the worker's event loop flushes every tick);
    worker events go out at once, one message each.
    """
    pending: dict[str, list[Event]] = {}
    first_ts: dict[str, float] = {}

    def topic(routing_key: str) -> str:
        return publish_topic(routing_key, db=db, global_keyprefix=global_keyprefix)

    multi_topic = topic("task.multi")
    for event in events:
        worker = event["hostname"]
        ts = float(event["timestamp"])
        # Flush every worker whose buffer is older than the window (its loop ticked).
        for other in [w for w, t0 in first_ts.items() if ts - t0 > group_window]:
            batch = pending.pop(other)
            del first_ts[other]
            yield multi_topic, encode_message(batch, "task.multi", hostname=other), len(batch)
        if event["type"].startswith("task-"):
            buffer = pending.setdefault(worker, [])
            if not buffer:
                first_ts[worker] = ts
            buffer.append(event)
            if len(buffer) >= max_group:
                pending.pop(worker)
                del first_ts[worker]
                message = encode_message(buffer, "task.multi", hostname=worker)
                yield multi_topic, message, len(buffer)
        else:
            routing_key = event["type"].replace("-", ".")
            yield topic(routing_key), encode_message(event, routing_key, hostname=worker), 1
    for worker, batch in pending.items():
        yield multi_topic, encode_message(batch, "task.multi", hostname=worker), len(batch)
