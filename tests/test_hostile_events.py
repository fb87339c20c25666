"""Hostile events: what anyone on the broker can publish must not blind the bot or poison it.

Issue 11, findings 1 and 2, and the "Hostile input and faults" contract: each bad message is
published as a real wire message on the suite's private Redis, into a real ``EventConsumer``
and ``MemoryStore``; it must be counted as malformed (under its reason), dropped before the
store sees it, and the next good event applied by the same, still living, consumer. Then the
decoder and the checker are fed by hypothesis: they never raise anything but their own
rejection, and what they let through satisfies what the store relies on.

Nothing is timed: every wait polls with a generous deadline.
"""

from __future__ import annotations

import base64
import json
import math
import threading
import time
import urllib.error
import urllib.request
import uuid as uuid_module
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatbot import consumer as consumer_module
from chatbot.consumer import DROP_REASONS, EventConsumer
from chatbot.eventcheck import (
    FIELD_MAX,
    MAX_FUTURE,
    NAME_MAX,
    REASONS,
    TEXT_CAPS,
    YEAR_2000,
    EventChecker,
    RejectedEvent,
)
from chatbot.eventreader import CONNECTED
from chatbot.eventwire import (
    WIRE_REASONS,
    Localizer,
    MalformedMessage,
    decode_body,
    encode_message,
    publish_topic,
)
from chatbot.model import STARTED, SUCCESS, StreamHealth, Task
from chatbot.store import FleetStore
from chatbot.store.memory import MemoryStore
from tests.support import wait_until

DEADLINE = 60.0


# The suite's one polling helper, with this file's deadline (it bounds a hang only).
wait_for: Callable[..., Any] = partial(wait_until, timeout=DEADLINE, interval=0.02)


def _db(url: str) -> int:
    return int(url.rsplit("/", 1)[1] or 0)


class Wire:
    """Publishes raw bytes on the channels kombu would use, on this test's database."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client = redis.Redis.from_url(url)

    def publish(self, routing_key: str, payload: bytes) -> None:
        topic = publish_topic(routing_key, db=_db(self.url))
        assert int(self.client.publish(topic, payload)) == 1, "the consumer is not subscribed"

    def close(self) -> None:
        self.client.close()


@pytest.fixture
def wire(redis_url: str) -> Iterator[Wire]:
    publisher = Wire(redis_url)
    yield publisher
    publisher.close()


def finished(store: FleetStore, uuid: str) -> Task | None:
    task = store.get_task(uuid)
    return task if task is not None and task.state == SUCCESS else None


def good_task(uuid: str, ts: float | None = None) -> list[dict[str, Any]]:
    ts = time.time() if ts is None else ts
    base = {"hostname": "w@hostile", "utcoffset": 0, "pid": 7, "uuid": uuid}
    return [
        {**base, "type": "task-received", "name": "hostile.ok", "args": "(1,)", "kwargs": "{}",
         "retries": 0, "timestamp": ts, "clock": 1},
        {**base, "type": "task-started", "timestamp": ts + 0.001, "clock": 2},
        {**base, "type": "task-succeeded", "result": "2", "runtime": 0.001,
         "timestamp": ts + 0.002, "clock": 3},
    ]  # fmt: skip


def envelope(payload: bytes, *, content_type: str = "application/json", **changes: Any) -> bytes:
    """A kombu envelope around raw body bytes (base64), with fields replaced by ``changes``."""
    data = json.loads(encode_message({"type": "task-started"}, "task.started"))
    data["body"] = base64.b64encode(payload).decode("ascii")
    data["content-type"] = content_type
    data.update(changes)
    return json.dumps(data).encode("utf-8")


def event_message(**fields: Any) -> bytes:
    """One ``task-started`` event (valid but for ``fields``) as a worker would publish it."""
    event: dict[str, Any] = {
        "type": "task-started",
        "uuid": str(uuid_module.uuid4()),
        "hostname": "w@hostile",
        "utcoffset": 0,
        "pid": 7,
        "clock": 5,
        "timestamp": time.time(),
    }
    event.update(fields)
    body = json.dumps(event).encode("utf-8")  # json.dumps writes NaN/Infinity as Python does
    return envelope(body)


def nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


# (label, payload, reason it must be counted under)
HOSTILE: list[tuple[str, bytes, str]] = [
    ("envelope nested 100,000 levels", nested(100_000), "not-json"),
    ("body nested 100,000 levels", envelope(nested(100_000)), "body"),
    ("body a list nested 100,000 levels", envelope(b"[" * 100_000 + b"]" * 100_000), "body"),
    ("not JSON", b"\x00\xffthis is not json", "not-json"),
    ("envelope is a list", b"[1, 2, 3]", "envelope"),
    ("body not base64", envelope(b"{}", body="!!! not base64 !!!"), "base64"),
    ("body is not JSON", envelope(b"{broken"), "body"),
    ("body invalid UTF-8", envelope(b'{"type": "task-started", "uuid": "\xff"}'), "body"),
    ("lone surrogate", envelope(b'{"type": "task-started", "uuid": "\\ud800"}'), "body"),
    ("unknown body encoding", envelope(b"{}", properties={"body_encoding": "rot13"}), "encoding"),
    ("properties a list", envelope(b"{}", properties=[1]), "body"),
    ("pickle", envelope(b"\x80\x04K\x01.", content_type="application/x-python-serialize"),
     "content-type"),
    ("timestamp 'yesterday'", event_message(timestamp="yesterday"), "timestamp"),
    ("timestamp NaN", event_message(timestamp=math.nan), "body"),
    ("timestamp Infinity", event_message(timestamp=math.inf), "body"),
    ("timestamp 1e308", event_message(timestamp=1e308), "timestamp"),
    ("timestamp -1e12", event_message(timestamp=-1e12), "timestamp"),
    ("timestamp 1970", event_message(timestamp=1.0), "timestamp"),
    ("timestamp next week", event_message(timestamp=time.time() + 7 * 86_400), "timestamp"),
    ("timestamp true", event_message(timestamp=True), "timestamp"),
    ("utcoffset 1e308", event_message(utcoffset=1e308), "utcoffset"),
    ("utcoffset 'UTC'", event_message(utcoffset="UTC"), "utcoffset"),
    ("clock 10**30", event_message(clock=10**30), "clock"),
    ("clock -1", event_message(clock=-1), "clock"),
    ("runtime 'fast'", event_message(type="task-succeeded", runtime="fast"), "runtime"),
    ("runtime -1", event_message(type="task-succeeded", runtime=-1.0), "runtime"),
    ("retries '3'", event_message(type="task-received", retries="3"), "retries"),
    ("uuid a number", event_message(uuid=12345), "uuid"),
    ("uuid 10 KB", event_message(uuid="u" * 10_000), "uuid"),
    ("uuid empty", event_message(uuid=""), "missing-uuid"),
    ("hostname a dict", event_message(hostname={"a": 1}), "hostname"),
    ("name a list", event_message(type="task-received", name=["a"]), "name"),
    ("args a list", event_message(type="task-received", args=[1, 2]), "args"),
    ("result 1 MB", event_message(type="task-succeeded", result="x" * 1_000_000), "oversized"),
    ("traceback 1 MB", event_message(type="task-failed", traceback="t" * 1_000_000),
     "oversized"),
    ("unknown field 1 MB", event_message(junk="j" * 1_000_000), "oversized"),
    ("type a list", event_message(type=["task-started"]), "type"),
    ("type 1 KB", event_message(type="t" * 1000), "type"),
    ("type with a newline", event_message(type="task-\nstarted"), "type"),
    ("list where an object is expected", envelope(b"[[1, 2]]"), "not-an-event"),
    ("a number for a body", envelope(b"42"), "not-an-event"),
    ("worker event without hostname",
     envelope(json.dumps({"type": "worker-heartbeat", "freq": 2.0}).encode()),
     "missing-hostname"),
    ("worker freq NaN-ish string",
     envelope(json.dumps({"type": "worker-heartbeat", "hostname": "w", "freq": "2"}).encode()),
     "freq"),
    ("loadavg a dict",
     envelope(json.dumps({"type": "worker-heartbeat", "hostname": "w", "loadavg": {}}).encode()),
     "loadavg"),
    ("active -5",
     envelope(json.dumps({"type": "worker-heartbeat", "hostname": "w", "active": -5}).encode()),
     "active"),
]  # fmt: skip


def test_every_hostile_message_is_counted_and_the_next_good_event_applied(
    redis_url: str, wire: Wire, consumers: Callable[..., EventConsumer]
) -> None:
    store = MemoryStore()
    consumer = consumers(redis_url, store)
    expected: dict[str, int] = {}
    for number, (label, payload, reason) in enumerate(HOSTILE):
        wire.publish("task.started", payload)
        uuid = f"good-after-{number}"
        wire.publish("task.multi", encode_message(good_task(uuid), "task.multi"))
        task = wait_for(partial(finished, store, uuid), what=f"the good task after {label!r}")
        assert isinstance(task, Task) and task.name == "hostile.ok"
        expected[reason] = expected.get(reason, 0) + 1
        h = consumer.health_into(store.health())
        assert h.malformed_by_reason == expected, f"after {label!r}: {h.malformed_by_reason}"
    h = consumer.health_into(store.health())
    assert h.malformed == len(HOSTILE)
    assert set(h.malformed_by_reason) <= DROP_REASONS
    # Nothing invalid reached the store: it refused nothing, and holds only the good tasks.
    assert store.health().malformed == 0
    assert len(store) == len(HOSTILE)
    # The same threads did all of it: none died, none was restarted.
    assert h.connected and h.intake_restarts == 0 and h.intake_problem is None
    assert all(thread.is_alive() for thread in consumer._threads)


def test_a_big_but_legitimate_traceback_is_clipped_not_dropped(
    redis_url: str, wire: Wire, consumers: Callable[..., EventConsumer]
) -> None:
    store = MemoryStore()
    consumer = consumers(redis_url, store)
    ts = time.time()
    frames = "".join(f'  File "app.py", line {i}, in f{i}\n    f{i + 1}()\n' for i in range(2000))
    traceback = "Traceback (most recent call last):\n" + frames + "RecursionError: deep\n"
    failed = {
        "type": "task-failed", "uuid": "big-tb", "hostname": "w", "timestamp": ts,
        "utcoffset": 0, "exception": "RecursionError('too deep')", "traceback": traceback,
    }  # fmt: skip
    assert TEXT_CAPS["traceback"] < len(traceback) < FIELD_MAX
    wire.publish("task.failed", encode_message(failed, "task.failed"))
    task = wait_for(lambda: store.get_task("big-tb"), what="the failure")
    assert task.exception == "RecursionError('too deep')"
    assert task.traceback is not None and task.traceback.endswith("RecursionError: deep\n")
    assert consumer.health_into(StreamHealth()).malformed == 0


def test_a_dead_applier_is_restarted_and_the_death_shown(
    redis_url: str,
    wire: Wire,
    consumers: Callable[..., EventConsumer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug nobody foresaw (here injected into the applier's batch step) costs a restart."""
    monkeypatch.setattr(consumer_module, "BACKOFF_FIRST", 3.0)  # a window wide enough to see
    store = MemoryStore()
    consumer = consumers(redis_url, store)
    fault = threading.Event()
    fault.set()
    process = consumer._process

    def faulty(items: list[Any]) -> None:
        if fault.is_set():
            raise RuntimeError("injected applier fault")
        process(items)

    monkeypatch.setattr(consumer, "_process", faulty)
    wire.publish("task.multi", encode_message(good_task("lost-in-crash"), "task.multi"))
    problem = wait_for(consumer.intake_problem, what="the death shown")
    assert "applier died (RuntimeError)" in problem
    assert "injected" not in problem  # the type only: an error's text may quote a value
    h = consumer.health_into(StreamHealth())
    assert h.intake_restarts == 1 and h.intake_problem == problem
    fault.clear()
    wait_for(lambda: consumer.intake_problem() is None, what="the restart")
    wire.publish("task.multi", encode_message(good_task("after-restart"), "task.multi"))
    wait_for(lambda: store.get_task("after-restart"), what="a good event after the restart")
    assert consumer.health_into(StreamHealth()).intake_restarts == 1


@pytest.mark.parametrize("reader", ["process", "thread"])
def test_a_dead_reader_is_restarted_and_reconnects(
    redis_url: str, wire: Wire, monkeypatch: pytest.MonkeyPatch, reader: str
) -> None:
    store = MemoryStore()
    consumer = EventConsumer(
        redis_url, store, heartbeat=lambda: None, enable_events=lambda: None, reader=reader
    )
    # The reading step of each reader: the socket (thread) or the reader process's frames.
    step = "_follow" if reader == "process" else "_redis_read"
    read = getattr(consumer, step)
    calls: list[int] = []

    def dies_once(source: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            if reader == "process":  # die once subscribed, as the thread's read does
                for kind, _ in source.frames(threading.Event()):
                    if kind == CONNECTED:
                        consumer._on_connected()
                        break
            raise RuntimeError("injected reader fault")
        read(source)

    monkeypatch.setattr(consumer, step, dies_once)
    consumer.start()
    try:
        wait_for(lambda: consumer.intake_restarts == 1, what="the reader's death counted")
        wait_for(lambda: len(calls) >= 2 and consumer.connected, what="the reader back")
        wire.publish("task.multi", encode_message(good_task("after-reader"), "task.multi"))
        wait_for(lambda: store.get_task("after-reader"), what="a good event after the restart")
        h = consumer.health_into(StreamHealth())
        assert h.intake_restarts == 1 and h.intake_problem is None and h.connected
        assert h.reconnects == 1  # the restarted reader's new subscription
    finally:
        consumer.stop(timeout=10)


class _Blocking:
    """A store whose ``apply`` waits for a gate: a hung state store, as the applier sees it."""

    def __init__(self, inner: MemoryStore) -> None:
        self.inner = inner
        self.gate = threading.Event()

    def apply(self, events: Any) -> int:
        self.gate.wait(DEADLINE)
        return self.inner.apply(events)

    def health(self) -> StreamHealth:
        return self.inner.health()


def test_stalled_intake_is_reported_while_events_wait(
    redis_url: str, wire: Wire, consumers: Callable[..., EventConsumer]
) -> None:
    store = MemoryStore()
    blocking = _Blocking(store)
    consumer = consumers(redis_url, blocking, batch_max=1, batch_window=0)
    for number in range(3):
        wire.publish("task.multi", encode_message(good_task(f"stall-{number}"), "task.multi"))
    problem = wait_for(
        lambda: consumer.intake_problem(stall_after=0.2), what="the stall reported"
    )
    assert problem.startswith("event intake stalled")
    assert consumer.health_into(StreamHealth()).lag_events > 0
    blocking.gate.set()
    wait_for(lambda: store.get_task("stall-2"), what="the backlog applied")
    wait_for(lambda: consumer.intake_problem(stall_after=0.2) is None, what="the stall over")


# -- property-based: the decoder and the checker ----------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
KNOWN_FIELDS = [
    "type", "timestamp", "utcoffset", "clock", "retries", "active", "processed", "pid",
    "runtime", "freq", "uuid", "hostname", "name", "state", "queue", "routing_key", "parent_id",
    "root_id", "sw_ident", "sw_ver", "sw_sys", "args", "kwargs", "result", "exception",
    "traceback", "terminated", "requeue", "eta", "expires", "signum", "loadavg", "local_received",
]  # fmt: skip
EVENT_TYPES = [
    "task-sent", "task-received", "task-started", "task-succeeded", "task-failed",
    "task-retried", "task-revoked", "task-rejected", "worker-online", "worker-heartbeat",
    "worker-offline", "custom-event",
]  # fmt: skip
NOW = time.time()
plausible = {
    "type": st.sampled_from(EVENT_TYPES) | st.text(max_size=80),
    "timestamp": st.floats(YEAR_2000 - 10, NOW + 2 * MAX_FUTURE) | json_scalars,
    "utcoffset": st.integers(-30, 30) | st.floats(-30, 30) | json_scalars,
    "uuid": st.uuids().map(str) | st.text(max_size=300) | json_scalars,
    "hostname": st.text(min_size=1, max_size=300) | json_scalars,
    "args": st.text(max_size=50) | st.integers(0, 6000).map(lambda n: "a" * n) | json_values,
    "traceback": st.integers(0, 40_000).map(lambda n: "t\n" * n) | json_values,
    "loadavg": st.lists(st.floats(0, 10), max_size=4) | json_values,
}
events = st.fixed_dictionaries(
    {"type": plausible["type"]},
    optional={
        key: plausible.get(key, json_values)
        for key in KNOWN_FIELDS
        if key != "type"
    },
).flatmap(
    lambda known: st.dictionaries(st.text(max_size=10), json_values, max_size=3).map(
        lambda extra: {**extra, **known}
    )
)

_COUNTS = ("clock", "retries", "active", "processed", "pid")
_NAMES = ("uuid", "hostname", "name", "state", "queue", "routing_key", "parent_id", "root_id",
          "sw_ident", "sw_ver", "sw_sys")  # fmt: skip


def assert_store_safe(event: dict[str, Any], latest: float) -> None:
    """What the store relies on, for every field it reads."""
    kind = event["type"]
    assert isinstance(kind, str) and 0 < len(kind) <= 64 and kind.isprintable()
    ts = event.get("timestamp")
    if ts is not None:
        assert type(ts) in (int, float) and math.isfinite(ts) and YEAR_2000 <= ts <= latest
    offset = event.get("utcoffset")
    if offset is not None:
        assert type(offset) in (int, float) and abs(offset) <= 24
    for key in _COUNTS:
        value = event.get(key)
        assert value is None or (type(value) is int and 0 <= value < 2**62), key
    for key in ("runtime", "freq"):
        value = event.get(key)
        assert value is None or (type(value) in (int, float) and 0 <= value <= 1e9), key
    for key in _NAMES:
        value = event.get(key)
        assert value is None or (type(value) is str and len(value) <= NAME_MAX), key
    for key, cap in TEXT_CAPS.items():
        value = event.get(key)
        assert value is None or (type(value) is str and len(value) <= cap), key
    loadavg = event.get("loadavg")
    if loadavg is not None:
        assert all(type(x) in (int, float) and math.isfinite(x) for x in loadavg)
    if kind.startswith("task-"):
        assert isinstance(event.get("uuid"), str) and event["uuid"]
    if kind.startswith("worker-"):
        assert isinstance(event.get("hostname"), str) and event["hostname"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event=events)
def test_checker_rejects_with_a_known_reason_or_passes_what_the_store_can_hold(
    event: dict[str, Any],
) -> None:
    checker = EventChecker()
    try:
        checked = checker.check(event)
    except RejectedEvent as exc:
        assert exc.reason in REASONS
        return
    assert_store_safe(checked, checker.latest)
    # ... and the store takes it without refusing it or raising, localized as the consumer does.
    Localizer().localize(checked, NOW)
    store = MemoryStore()
    store.apply([checked])
    assert store.health().malformed == 0
    if checked["type"].startswith("task-"):
        task = store.get_task(checked["uuid"])
        assert task is not None and math.isfinite(task.state_ts) and task.state_ts >= YEAR_2000


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=2000))
def test_decoder_raises_only_malformed_message_on_any_bytes(data: bytes) -> None:
    try:
        decode_body(data)
    except MalformedMessage as exc:
        assert exc.reason in WIRE_REASONS


@settings(max_examples=300, deadline=None)
@given(
    body=json_values | st.binary(max_size=200),
    content_type=st.sampled_from(
        ["application/json", "application/x-yaml", "application/x-msgpack", "text/plain", ""]
    ),
    encoding=st.sampled_from(["base64", "", None, "gzip"]),
    depth=st.integers(0, 3000),
)
def test_decoder_raises_only_malformed_message_on_any_envelope(
    body: Any, content_type: str, encoding: str | None, depth: int
) -> None:
    if isinstance(body, bytes):
        raw = body
    else:
        try:
            raw = json.dumps(body).encode("utf-8")
        except (ValueError, UnicodeEncodeError):
            raw = b"{}"
    raw = b"[" * depth + raw + b"]" * depth
    data = json.loads(encode_message({"type": "x"}, "x"))
    data["content-type"] = content_type
    data["properties"]["body_encoding"] = encoding
    data["body"] = base64.b64encode(raw).decode() if encoding == "base64" else raw.decode("latin-1")
    from chatbot.eventwire import accept_content

    try:
        accept = accept_content(["json", "yaml", "msgpack"])
        decoded = decode_body(json.dumps(data).encode(), accept)
    except MalformedMessage as exc:
        assert exc.reason in WIRE_REASONS
        return
    # Whatever came through is plain JSON data, whichever serializer it came by.
    json.dumps(decoded, allow_nan=False)


valid_unicode = st.characters(blacklist_categories=["Cs"])  # no lone surrogates
# What a worker's JSON serializer produces: finite floats, 64-bit integers, valid Unicode.
worker_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(valid_unicode, max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(valid_unicode, max_size=8), inner)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(event=st.dictionaries(st.text(valid_unicode, max_size=10), worker_values, max_size=6))
def test_what_the_encoder_publishes_decodes_to_the_same_event(event: dict[str, Any]) -> None:
    assert decode_body(encode_message(event, "task.x")) == event


def test_drop_reasons_are_a_small_fixed_label_set() -> None:
    assert WIRE_REASONS <= DROP_REASONS and REASONS <= DROP_REASONS
    assert len(DROP_REASONS) < 60
    assert all(reason.replace("-", "_").isidentifier() for reason in DROP_REASONS)


def test_a_late_started_after_success_is_not_a_running_task_here_either(
    redis_url: str, wire: Wire, consumers: Callable[..., EventConsumer]
) -> None:
    """Validation must not reorder: a late task-started still loses to the finished state."""
    store = MemoryStore()
    consumers(redis_url, store)
    events = good_task("late")
    wire.publish("task.multi", encode_message([events[0], events[2]], "task.multi"))
    wait_for(lambda: (t := store.get_task("late")) is not None and t.state == SUCCESS)
    wire.publish("task.started", encode_message(events[1], "task.started"))
    wire.publish("task.multi", encode_message(good_task("marker"), "task.multi"))
    wait_for(lambda: store.get_task("marker"), what="the marker")
    task = store.get_task("late")
    assert task is not None and task.state == SUCCESS and task.state != STARTED


def _get_json(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_healthz_is_503_with_the_reason_while_the_intake_is_dead(
    redis_url: str, wire: Wire, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connected to the broker but not applying anything is not healthy (issue 11, finding 1)."""
    from chatbot.config import Settings
    from chatbot.service import Service
    from chatbot.slack.http import HttpServer

    monkeypatch.setattr(consumer_module, "BACKOFF_FIRST", 3.0)
    service = Service(Settings(broker_url=redis_url))
    server = HttpServer(None, service, "127.0.0.1", 0).start()
    try:
        service.start()
        healthz = server.url + "/healthz"
        wait_for(lambda: _get_json(healthz)[0] == 200, what="healthy once connected")
        consumer = service.consumer
        assert consumer is not None
        fault = threading.Event()
        fault.set()
        process = consumer._process

        def faulty(items: list[Any]) -> None:
            if fault.is_set():
                raise RuntimeError("injected applier fault")
            process(items)

        monkeypatch.setattr(consumer, "_process", faulty)
        wire.publish("task.multi", encode_message(good_task("lost"), "task.multi"))
        _, report = wait_for(
            lambda: (answer := _get_json(healthz))[0] == 503 and answer, what="503"
        )
        assert report["ok"] is False and "applier died" in report["reason"]
        assert report["intake_restarts"] == 1
        fault.clear()
        wait_for(lambda: _get_json(healthz)[0] == 200, what="healthy again after the restart")
        assert _get_json(healthz)[1]["intake_restarts"] == 1
    finally:
        server.stop()
        service.stop()


def test_badly_typed_events_never_poison_a_redis_state_store_across_a_restart(
    redis_url_factory: Callable[[], str], consumers: Callable[..., EventConsumer]
) -> None:
    """Issue 11, finding 2: with CHATOPS_STATE_URL=redis://, "yesterday", NaN, 1e308, -1e12 or
    ``runtime: "fast"`` made the store unavailable and a restart crash on loading. Now they
    are dropped at intake, the store stays up, and a fresh store loads every good task."""
    from chatbot.config import Settings
    from chatbot.store.factory import open_stores
    from chatbot.store.redis import RedisFleetStore

    broker_url, state_url = redis_url_factory(), redis_url_factory()
    stores = open_stores(Settings(state_url=state_url), lease_ttl=5.0)
    stores.start(lambda: None, lambda: None)
    wire = Wire(broker_url)
    try:
        assert stores.keeper is not None and stores.keeper.wait_held(timeout=10)
        fleet = stores.fleet
        assert isinstance(fleet, RedisFleetStore) and fleet.wait_ready(timeout=30)
        consumer = consumers(broker_url, fleet)
        poison = [
            event_message(timestamp="yesterday"),
            event_message(timestamp=math.nan),
            event_message(timestamp=1e308),
            event_message(timestamp=-1e12),
            event_message(type="task-succeeded", runtime="fast"),
            event_message(type="task-failed", timestamp=-1e12, exception="E('x')"),
        ]
        for number, payload in enumerate(poison):
            wire.publish("task.started", payload)
            wire.publish("task.multi", encode_message(good_task(f"kept-{number}"), "task.multi"))
        for number in range(len(poison)):
            wait_for(partial(finished, fleet, f"kept-{number}"), what=f"good task {number}")
        assert fleet.flush(timeout=30)
        assert consumer.health_into(StreamHealth()).malformed == len(poison)
        stores.stop()
        restarted = RedisFleetStore(state_url)
        assert len(restarted) == len(poison)
        for number in range(len(poison)):
            task = restarted.get_task(f"kept-{number}")
            assert task is not None and task.state == SUCCESS and task.state_ts >= YEAR_2000
        assert restarted.active() == []  # a late or bad event resurrected nothing
        assert restarted.recent_failures(None, 10 * 365 * 86_400, time.time()) == []
    finally:
        stores.stop()
        wire.close()


def test_hostile_messages_on_amqp_are_counted_and_the_next_good_event_applied(
    amqp_url: str, unique_name: Callable[[str], str], consumers: Callable[..., EventConsumer]
) -> None:
    """The AMQP path (Celery's own receiver on kombu) survives the same corpus.

    The vhost is shared with other test runs: everything goes through an event exchange of this
    test's own, deleted afterwards, so no other consumer ever sees these messages.
    """
    from celery import Celery
    from kombu import Connection, Exchange, Producer

    exchange_name = unique_name("chatops-hostile-ev")
    app = Celery("hostile-amqp", broker=amqp_url, set_as_current=False)
    app.conf.event_exchange = exchange_name
    store = MemoryStore()
    consumer = consumers(amqp_url, store, app=app)
    exchange = Exchange(exchange_name, type="topic", durable=True, auto_delete=False)
    cases: list[tuple[str, bytes, str]] = [
        ("nested 100,000 levels", nested(100_000), "body"),
        ("not JSON", b"\x00\xffnot json", "body"),
        ("timestamp 'yesterday' with utcoffset",
         _event_body(timestamp="yesterday"), "undecodable"),
        ("timestamp 1e308", _event_body(timestamp=1e308, without="utcoffset"), "timestamp"),
        ("runtime 'fast'", _event_body(type="task-succeeded", runtime="fast"), "runtime"),
        ("a list of lists", b"[[1, 2]]", "not-an-event"),
    ]  # fmt: skip
    with Connection(amqp_url) as conn:
        producer = Producer(conn.default_channel, exchange=exchange)
        try:
            expected: dict[str, int] = {}
            for number, (label, body, reason) in enumerate(cases):
                producer.publish(
                    body,
                    routing_key="task.started",
                    content_type="application/json",
                    content_encoding="utf-8",
                )
                uuid = f"amqp-good-after-{number}"
                for event in good_task(uuid):
                    producer.publish(
                        json.dumps(event).encode(),
                        routing_key=str(event["type"]).replace("-", "."),
                        content_type="application/json",
                        content_encoding="utf-8",
                    )
                wait_for(partial(finished, store, uuid), what=f"the good task after {label!r}")
                expected[reason] = expected.get(reason, 0) + 1
                by_reason = consumer.health_into(StreamHealth()).malformed_by_reason
                assert by_reason == expected, f"after {label!r}: {by_reason}"
            h = consumer.health_into(store.health())
            assert h.malformed == len(cases) and store.health().malformed == 0
            assert h.connected and h.intake_restarts == 0 and h.intake_problem is None
        finally:
            consumer.stop(timeout=10)
            exchange.bind(conn.default_channel).delete()
            app.close()


def _event_body(without: str = "", **fields: Any) -> bytes:
    """A ``task-started`` body, valid but for ``fields`` (and ``without`` one of its fields)."""
    event: dict[str, Any] = {
        "type": "task-started", "uuid": str(uuid_module.uuid4()), "hostname": "w@hostile",
        "utcoffset": 0, "pid": 7, "clock": 5, "timestamp": time.time(), **fields,
    }  # fmt: skip
    event.pop(without, None)
    return json.dumps(event).encode()
