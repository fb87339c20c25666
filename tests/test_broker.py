"""BrokerReader against a real private Redis and, when reachable, a real RabbitMQ."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Producer, Queue

from chatbot.broker import BrokerReader, QueueLength, queue_names
from chatbot.demo.embedded import EmbeddedRedis
from chatbot.model import Worker
from tests.fleet_app import ADD, make_app


def _publish(url: str, queue: str, priorities: list[int], options: dict[str, Any]) -> None:
    """Send real Celery task messages, each with a priority, through kombu's Redis transport."""
    app = make_app(url, transport_options=options)
    try:
        for priority in priorities:
            app.send_task(ADD, args=(1, 2), queue=queue, priority=priority)
    finally:
        app.close()


@pytest.fixture
def reader_factory() -> Iterator[Callable[..., BrokerReader]]:
    readers: list[BrokerReader] = []

    def make(url: str, options: dict[str, Any] | None = None, timeout: float = 2.0) -> BrokerReader:
        reader = BrokerReader(url, options, timeout=timeout)
        readers.append(reader)
        return reader

    yield make
    for reader in readers:
        reader.close()


# -- Redis -------------------------------------------------------------------------------------


def test_redis_sums_priority_sub_queues_under_a_global_prefix(
    redis_url: str, reader_factory: Callable[..., BrokerReader]
) -> None:
    options = {"global_keyprefix": "fleet:"}
    _publish(redis_url, "jobs", [0, 0, 5, 9], options)
    # The messages really are spread over several prefixed lists.
    client = redis.Redis.from_url(redis_url)
    keys = sorted(client.keys("fleet:jobs*"))
    client.close()
    assert len(keys) >= 2, keys

    lengths = reader_factory(redis_url, options).queue_lengths(["jobs", "idle"])
    assert lengths == [QueueLength("jobs", 4), QueueLength("idle", 0)]
    # A reader that ignores the prefix looks at other keys: the option is honoured, not luck.
    assert reader_factory(redis_url).queue_lengths(["jobs"])[0].messages == 0


def test_redis_custom_separator_and_priority_steps(
    redis_url: str, reader_factory: Callable[..., BrokerReader]
) -> None:
    options = {"sep": ":", "priority_steps": [0, 4, 8]}
    _publish(redis_url, "q", [0, 4, 8, 8], options)
    client = redis.Redis.from_url(redis_url)
    assert set(client.keys("q*")) == {b"q", b"q:4", b"q:8"}
    client.close()
    assert reader_factory(redis_url, options).queue_lengths(["q"])[0].messages == 4


def test_redis_key_of_the_wrong_type_is_an_error_for_that_queue_only(
    redis_url: str, reader_factory: Callable[..., BrokerReader]
) -> None:
    client = redis.Redis.from_url(redis_url)
    client.set("notalist", "x")
    client.lpush("real", "m1", "m2")
    client.close()
    odd, real = reader_factory(redis_url).queue_lengths(["notalist", "real"])
    assert odd.messages is None and odd.error is not None and "WRONGTYPE" in odd.error
    assert odd.status == "unknown"
    assert real == QueueLength("real", 2)
    assert real.status == "ok"


def test_redis_stopped_is_unknown_never_zero_and_recovers_after_restart(
    embedded_redis: Callable[..., EmbeddedRedis], reader_factory: Callable[..., BrokerReader]
) -> None:
    server = embedded_redis(config={"requirepass": "s3cret-pw"})
    url = f"redis://:s3cret-pw@127.0.0.1:{server.port}/3"
    reader = reader_factory(url, timeout=1.0)
    assert reader.broker_name == f"redis 127.0.0.1:{server.port}/3"
    assert reader.queue_lengths(["celery"]) == [QueueLength("celery", 0)]

    server.stop()
    down = reader.queue_lengths(["celery", "other"])
    assert [length.messages for length in down] == [None, None]
    for length in down:
        assert length.error and "\n" not in length.error
        assert "s3cret-pw" not in length.error

    server.start()  # same port again
    assert reader.queue_lengths(["celery"]) == [QueueLength("celery", 0)]


def test_redis_wrong_password_is_reported_without_the_password(
    embedded_redis: Callable[..., EmbeddedRedis], reader_factory: Callable[..., BrokerReader]
) -> None:
    server = embedded_redis(config={"requirepass": "right-one"})
    reader = reader_factory(f"redis://:wrong-one@127.0.0.1:{server.port}/0")
    (length,) = reader.queue_lengths(["celery"])
    assert length.messages is None
    assert length.error and "wrong-one" not in length.error


def test_empty_name_list_needs_no_broker(reader_factory: Callable[..., BrokerReader]) -> None:
    assert reader_factory("redis://127.0.0.1:1/0").queue_lengths([]) == []


def test_unsupported_scheme_is_unknown(reader_factory: Callable[..., BrokerReader]) -> None:
    (length,) = reader_factory("sqs://key:secret@").queue_lengths(["celery"])
    assert length.messages is None and length.error and "secret" not in length.error


# -- queue_names ---------------------------------------------------------------------------------


def test_queue_names_union_is_stable_and_deduplicated() -> None:
    workers = [
        Worker("w2@h", queues=("video", "celery")),
        Worker("w1@h", queues=("emails", "video")),
        Worker("w3@h"),
    ]
    names = queue_names(workers, ["reports", "emails", " "], default_queue="celery")
    assert names == ["celery", "reports", "emails", "video"]
    assert queue_names(list(reversed(workers)), ["reports", "emails"]) == names


# -- RabbitMQ ------------------------------------------------------------------------------------


@pytest.fixture
def amqp_queue(amqp_url: str, unique_name: Callable[[str], str]) -> Iterator[tuple[str, int]]:
    """A real queue on RabbitMQ holding 3 messages; deleted afterwards."""
    name = unique_name("chatops-test-q")
    exchange = Exchange(name, type="direct", auto_delete=True)
    queue = Queue(name, exchange, routing_key=name, auto_delete=False, durable=False)
    with Connection(amqp_url, connect_timeout=3) as connection:
        channel = connection.channel()
        queue(channel).declare()
        producer = Producer(channel, exchange=exchange, routing_key=name)
        for number in range(3):
            producer.publish({"n": number}, declare=[queue])
        channel.close()
    yield name, 3
    with Connection(amqp_url, connect_timeout=3) as connection:
        channel = connection.channel()
        queue(channel).delete()
        exchange(channel).delete()
        channel.close()


@pytest.mark.amqp
def test_rabbitmq_counts_messages_and_reports_a_missing_queue(
    amqp_url: str,
    amqp_queue: tuple[str, int],
    unique_name: Callable[[str], str],
    reader_factory: Callable[..., BrokerReader],
) -> None:
    name, count = amqp_queue
    missing = unique_name("chatops-missing")
    reader = reader_factory(amqp_url)
    assert reader.broker_name == "amqp 127.0.0.1:5672/"
    # The missing queue sits between two real reads: the channel the broker closed with its
    # 404 must be replaced for the next queue.
    first, gone, again = reader.queue_lengths([name, missing, name])
    assert first == QueueLength(name, count, consumers=0, exists=True)
    assert gone == QueueLength(missing, None, exists=False)
    assert gone.status == "missing" and gone.error is None
    assert again == first
    # The reader keeps working across calls on its kept connection.
    assert reader.queue_lengths([name])[0].messages == count


@pytest.mark.amqp
def test_rabbitmq_bad_login_is_unknown_without_the_password(
    amqp_url: str, reader_factory: Callable[..., BrokerReader]
) -> None:
    reader = reader_factory("amqp://guest:not-the-password@127.0.0.1:5672//")
    lengths = reader.queue_lengths(["a", "b"])
    assert [length.messages for length in lengths] == [None, None]
    assert all(length.error and "not-the-password" not in length.error for length in lengths)


def test_rabbitmq_unreachable_is_unknown(reader_factory: Callable[..., BrokerReader]) -> None:
    # Port 1 on loopback: nothing listens there, the connect is refused at once.
    reader = reader_factory("amqp://guest:pw@127.0.0.1:1/prod", timeout=1.0)
    assert reader.broker_name == "amqp 127.0.0.1:1/prod"
    lengths = reader.queue_lengths(["a", "b"])
    assert [length.messages for length in lengths] == [None, None]
    assert all(length.error and length.exists is None for length in lengths)
