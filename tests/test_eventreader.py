"""The reader process against a real private redis-server.

Nothing is timed: every wait polls with a generous deadline.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from chatbot.consumer import redis_connection_kwargs
from chatbot.demo.embedded import EmbeddedRedis
from chatbot.eventreader import (
    CONNECTED,
    DISCONNECTED,
    EVENTS,
    IDLE_PING,
    MESSAGES,
    DecodedBatch,
    ReaderProcess,
    Subscription,
    after_quiet_read,
)
from chatbot.eventwire import encode_message, publish_topic, subscribe_topic

DEADLINE = 60.0


def subscription_for(url: str, decode: bool = False) -> Subscription:
    cls, kwargs = redis_connection_kwargs(url)
    topic, is_pattern = subscribe_topic(db=int(kwargs["db"]))
    return Subscription(cls, kwargs, topic, is_pattern, decode=decode)


class Collector:
    """Takes a reader's frames on a thread, as the consumer's reader thread does."""

    def __init__(self, reader: ReaderProcess) -> None:
        self.reader = reader
        self.messages: list[bytes] = []
        self.kinds: list[str] = []
        self.disconnects: list[tuple[str, bool]] = []
        self.batches: list[DecodedBatch] = []
        self.stopping = threading.Event()
        self.paused = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        for kind, payload in self.reader.frames(self.stopping):
            self.kinds.append(kind)
            if kind == MESSAGES:
                self.messages.extend(payload)
            elif kind == EVENTS:
                self.batches.append(payload)
            elif kind == DISCONNECTED:
                self.disconnects.append(payload)
            while self.paused.is_set() and not self.stopping.is_set():
                time.sleep(0.01)

    def wait(self, predicate: Callable[[], Any], what: str) -> None:
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            if predicate():
                return
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def readers() -> Iterator[Callable[..., tuple[ReaderProcess, Collector]]]:
    made: list[tuple[ReaderProcess, Collector]] = []

    def make(url: str, decode: bool = False, **options: Any) -> tuple[ReaderProcess, Collector]:
        reader = ReaderProcess(subscription_for(url, decode), **options)
        reader.start()
        collector = Collector(reader)
        collector.thread.start()
        made.append((reader, collector))
        collector.wait(lambda: CONNECTED in collector.kinds, "the subscription")
        return reader, collector

    yield make
    for reader, collector in made:
        collector.stopping.set()
        reader.stop()
        collector.thread.join(5.0)


def test_every_published_message_arrives_in_order_through_the_child(
    redis_url: str, readers: Callable[..., tuple[ReaderProcess, Collector]]
) -> None:
    reader, collector = readers(redis_url, batch_max=50)
    assert reader.pid is not None and reader.pid != os.getpid()
    client = redis.Redis.from_url(redis_url)
    channel = publish_topic("task.multi", db=int(redis_url.rsplit("/", 1)[1]))
    sent = [f"message-{i}".encode() for i in range(5000)]
    with client.pipeline(transaction=False) as pipe:
        for body in sent:
            pipe.publish(channel, body)
        pipe.execute()
    collector.wait(lambda: len(collector.messages) >= len(sent), "all messages")
    assert collector.messages == sent
    collector.wait(lambda: reader.stats().buffered_messages == 0, "an empty child buffer")
    assert reader.stats().read_messages == len(sent)
    assert reader.stats().dropped_messages == 0


def test_a_burst_the_parent_does_not_take_is_held_by_the_child_not_cut_off_by_redis(
    embedded_redis: Callable[..., EmbeddedRedis],
    readers: Callable[..., tuple[ReaderProcess, Collector]],
) -> None:
    # A 256 KB pub/sub limit: a subscriber that stops reading is cut off almost at once.
    server = embedded_redis(config={"client-output-buffer-limit": "pubsub 256kb 0 0"})
    url = server.url_for(1)
    reader, collector = readers(url)
    collector.paused.set()  # the parent is busy (a GC pause, a burst the applier cannot follow)
    client = redis.Redis.from_url(url)
    channel = publish_topic("task.multi", db=1)
    body = b"x" * 1000
    total = 20_000  # 20 MB: 80 times Redis's limit
    for start in range(0, total, 1000):
        with client.pipeline(transaction=False) as pipe:
            for _ in range(1000):
                pipe.publish(channel, body)
            pipe.execute()
        del start
    collector.wait(lambda: reader.stats().read_messages == total, "the child to read the burst")
    collector.paused.clear()
    collector.wait(lambda: len(collector.messages) == total, "the parent to catch up")
    assert collector.disconnects == []
    assert reader.stats().backpressure_waits == 0


def test_a_child_buffer_at_its_limit_stops_reading_and_the_cut_off_is_reported(
    embedded_redis: Callable[..., EmbeddedRedis],
    readers: Callable[..., tuple[ReaderProcess, Collector]],
) -> None:
    server = embedded_redis(config={"client-output-buffer-limit": "pubsub 64kb 0 0"})
    url = server.url_for(1)
    reader, collector = readers(url, buffer_bytes=50_000)
    collector.paused.set()
    client = redis.Redis.from_url(url)
    channel = publish_topic("task.multi", db=1)
    body = b"y" * 1000

    # The parent stalls: the child's small buffer fills and its socket is left unread, so
    # Redis's output buffer passes 64 KB and the server closes the subscription.
    for _ in range(20):  # 20 MB: far past the child's buffer, the pipe and the socket's
        with client.pipeline(transaction=False) as pipe:
            for _ in range(1000):
                pipe.publish(channel, body)
            pipe.execute()
    collector.paused.clear()
    collector.wait(lambda: bool(collector.disconnects), "the DISCONNECTED frame")
    text, by_server = collector.disconnects[0]
    assert by_server, text
    assert reader.stats().backpressure_waits > 0


def test_a_child_killed_holding_messages_counts_them_as_dropped(
    redis_url: str, readers: Callable[..., tuple[ReaderProcess, Collector]]
) -> None:
    reader, collector = readers(redis_url)
    collector.paused.set()
    client = redis.Redis.from_url(redis_url)
    channel = publish_topic("task.multi", db=int(redis_url.rsplit("/", 1)[1]))
    with client.pipeline(transaction=False) as pipe:
        for i in range(20_000):
            pipe.publish(channel, b"z" * 500 + str(i).encode())
        pipe.execute()
    collector.wait(lambda: reader.stats().read_messages == 20_000, "the child to read them")
    held = reader.stats().buffered_messages
    assert held > 0
    assert reader.pid is not None
    os.kill(reader.pid, signal.SIGKILL)
    collector.wait(lambda: not reader.alive(), "the child to die")
    collector.paused.clear()
    collector.thread.join(DEADLINE)
    assert not collector.thread.is_alive()
    stats = reader.stats()
    assert stats.dropped_messages + len(collector.messages) == 20_000
    assert stats.dropped_messages > 0


def test_a_decoding_child_hands_over_checked_localized_events_and_counts_what_it_dropped(
    redis_url: str, readers: Callable[..., tuple[ReaderProcess, Collector]]
) -> None:
    _, collector = readers(redis_url, decode=True)
    client = redis.Redis.from_url(redis_url)
    db = int(redis_url.rsplit("/", 1)[1])
    good = [
        {"type": "task-received", "uuid": f"t-{i}", "name": "app.add", "hostname": "w1@h",
         "timestamp": 1_700_000_000.0 + i, "utcoffset": 0, "pid": 1, "clock": i + 1}
        for i in range(300)
    ]  # fmt: skip
    with client.pipeline(transaction=False) as pipe:
        for event in good:
            pipe.publish(publish_topic("task.received", db=db),
                         encode_message(event, "task.received"))  # fmt: skip
        pipe.publish(publish_topic("task.received", db=db), b"not json at all")
        pipe.publish(publish_topic("task.multi", db=db), encode_message(good[:2], "task.multi"))
        pipe.execute()

    def handed_over() -> int:
        return sum(b.messages for b in collector.batches)

    collector.wait(lambda: handed_over() == len(good) + 2, "every message handed over")
    events = [e for b in collector.batches for e in b.events]
    assert [e["uuid"] for e in events] == [e["uuid"] for e in good] + ["t-0", "t-1"]
    assert all("local_received" in e for e in events)
    drops: dict[str, int] = {}
    for batch in collector.batches:
        for reason, (count, _) in batch.drops.items():
            drops[reason] = drops.get(reason, 0) + count
    assert drops == {"not-json": 1}
    assert sum(b.cost for b in collector.batches) > 0
    assert collector.messages == []  # decoded: no raw messages cross the pipe


def test_a_quiet_subscription_pings_once_then_gives_up_on_a_broker_that_never_answers(
    redis_url: str,
) -> None:
    # Both subscribers (the reader child and the consumer's inline loop) call this on every
    # read timeout: a hung broker keeps the socket open, so silence is the only sign.
    cls, kwargs = redis_connection_kwargs(redis_url)
    conn = cls(**kwargs, protocol=2, socket_timeout=None)  # as the reader child connects
    try:
        conn.connect()
        conn.send_command("SUBSCRIBE", "chatops-quiet-test")
        assert conn.read_response(timeout=5)[0] == b"subscribe"
        assert after_quiet_read(conn, time.monotonic(), False) is False  # not quiet yet
        assert not conn.can_read(0.2)  # and nothing was sent
        quiet_since = time.monotonic() - IDLE_PING - 1
        assert after_quiet_read(conn, quiet_since, False) is True
        assert conn.read_response(timeout=5) == [b"pong", b""]  # the broker was asked
        assert after_quiet_read(conn, quiet_since, True) is True  # one PING out is enough
        assert not conn.can_read(0.2)
        with pytest.raises(redis.exceptions.TimeoutError, match="no reply from the broker"):
            after_quiet_read(conn, time.monotonic() - 2 * IDLE_PING - 1, True)
    finally:
        conn.disconnect()
