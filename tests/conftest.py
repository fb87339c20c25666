"""Shared fixtures: a private Redis, per-test databases, real Celery workers, RabbitMQ probe.

Nothing here touches the machine's own Redis on 127.0.0.1:6379: every Redis URL points at the
session's :class:`~chatbot.demo.embedded.EmbeddedRedis`, and only databases we hand out are flushed.
"""

from __future__ import annotations

import itertools
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from chatbot.consumer import EventConsumer
from chatbot.demo.embedded import EmbeddedRedis
from chatbot.demo.worker import CeleryWorkerProcess

REPO_ROOT = Path(__file__).resolve().parent.parent
FLEET_APP_MODULE = "tests.fleet_app"
# Database 0 is left unused so a test that forgets its db number does not collide.
REDIS_DATABASES = 64
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"

_db_numbers = itertools.cycle(range(1, REDIS_DATABASES))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """The session's private redis-server (do not stop or restart it: others share it)."""
    server = EmbeddedRedis(databases=REDIS_DATABASES)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _fresh_db_url(server: EmbeddedRedis) -> str:
    db = next(_db_numbers)
    client = redis.Redis(host=server.host, port=server.port, db=db, socket_timeout=5)
    try:
        client.flushdb()
    finally:
        client.close()
    return server.url_for(db)


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    """``redis://127.0.0.1:PORT/N``: a database of the private server, empty, this test's own.

    Celery's Redis transport prefixes fanout (event and control) channels with ``/N.``, so
    workers and event consumers of different tests do not hear each other either.
    """
    return _fresh_db_url(redis_server)


@pytest.fixture(scope="session")
def redis_url_factory(redis_server: EmbeddedRedis) -> Callable[[], str]:
    """Another empty database per call: for a test that needs several (broker + state...), or
    for a module-scoped fixture (e.g. one worker shared by a module's read-only tests)."""
    return lambda: _fresh_db_url(redis_server)


@pytest.fixture
def embedded_redis() -> Iterator[Callable[..., EmbeddedRedis]]:
    """Factory of extra private servers a test may stop or restart; all stopped at teardown.

    ``embedded_redis(config={...})`` takes :class:`EmbeddedRedis` keyword arguments.
    """
    servers: list[EmbeddedRedis] = []

    def make(**options: Any) -> EmbeddedRedis:
        server = EmbeddedRedis(**options)
        servers.append(server)
        return server.start()

    yield make
    for server in reversed(servers):
        server.stop()


def unique_hostname(prefix: str = "w") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}@chatops-test"


@pytest.fixture
def celery_worker(tmp_path: Path) -> Iterator[Callable[..., CeleryWorkerProcess]]:
    """Factory: ``celery_worker(broker_url, hostname=None, queues=("celery",), concurrency=1,
    app_module="tests.fleet_app", ready_timeout=30, **CeleryWorkerProcess options)``.

    Returns a started worker that has answered a ping; every worker is stopped at teardown
    (warm shutdown, SIGKILL of its process group after a few seconds). Hostnames default to a
    unique ``w-xxxxxxxx@chatops-test``.
    """
    workers: list[CeleryWorkerProcess] = []

    def start(
        broker_url: str,
        *,
        hostname: str | None = None,
        queues: tuple[str, ...] | list[str] = ("celery",),
        concurrency: int = 1,
        app_module: str = FLEET_APP_MODULE,
        ready_timeout: float = 30.0,
        wait: bool = True,
        **options: Any,
    ) -> CeleryWorkerProcess:
        name = hostname or unique_hostname()
        options.setdefault("cwd", REPO_ROOT)
        options.setdefault("log_path", tmp_path / f"worker-{len(workers)}-{name.split('@')[0]}.log")
        worker = CeleryWorkerProcess(
            app_module,
            broker_url,
            hostname=name,
            queues=tuple(queues),
            concurrency=concurrency,
            **options,
        )
        workers.append(worker)
        worker.start()
        if wait:
            worker.wait_ready(timeout=ready_timeout)
        return worker

    yield start
    for worker in reversed(workers):
        worker.stop(timeout=5.0)


def _tcp_reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@pytest.fixture
def amqp_url() -> str:
    """RabbitMQ on 127.0.0.1:5672 (guest, vhost ``/``); the test is skipped when unreachable.

    The vhost is shared with everyone else: isolate by unique queue names and worker hostnames
    (``unique_name``), and address control commands to your own workers.
    """
    if not _tcp_reachable("127.0.0.1", 5672):
        pytest.skip("RabbitMQ is not reachable on 127.0.0.1:5672")
    return AMQP_URL


@pytest.fixture
def unique_name() -> Callable[[str], str]:
    """``unique_name("q")`` -> ``q-<8 hex>``: queue names and hostnames no other test uses."""
    return lambda prefix: f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def consumers() -> Iterator[Callable[..., EventConsumer]]:
    """Started EventConsumers, connected before a test sees them, stopped after it."""
    started: list[EventConsumer] = []

    def make(url: str, store: Any, **options: Any) -> EventConsumer:
        # No broadcasts unless a test asks: other tests' workers share the brokers.
        options.setdefault("heartbeat", lambda: None)
        options.setdefault("enable_events", lambda: None)
        consumer = EventConsumer(url, store, **options)
        started.append(consumer)
        consumer.start()
        assert consumer.wait_connected(30), "consumer did not connect"
        return consumer

    yield make
    for consumer in started:
        consumer.stop(timeout=10)
