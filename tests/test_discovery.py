"""The writer learns which queues the workers consume, so backlog alerts and status watch them."""

from __future__ import annotations

from typing import Any

from chatbot.config import Settings
from chatbot.control import FleetControl, consumed_queues, pool_facts
from chatbot.discovery import WorkerDiscovery
from chatbot.service import Service
from chatbot.store.memory import MemoryStore
from tests.fleet_app import make_app
from tests.support import wait_until


def test_a_running_bot_learns_the_queues_its_workers_consume(
    redis_url: str, celery_worker: Any
) -> None:
    worker = celery_worker(redis_url, queues=("celery", "reports"), concurrency=2)
    service = Service(Settings(broker_url=redis_url, enable_events_interval=0))
    service.start()
    try:
        def learned() -> Any:
            known = service.store.get_worker(worker.hostname)
            return known if known is not None and "reports" in known.queues else None

        known = wait_until(learned, timeout=40, what="the worker's queues learned")
        assert set(known.queues) == {"celery", "reports"}
        assert (known.pool, known.concurrency) == ("prefork", 2)
        watched = [q.name for q in service.queue_lengths(max_age=0)]
        assert "reports" in watched and "celery" in watched
    finally:
        service.stop()


def test_discovery_asks_nobody_when_no_worker_is_online(redis_url: str) -> None:
    sent: list[str] = []
    control = FleetControl(make_app(redis_url), timeout=0.5,
                           on_broadcast=lambda command, _args: sent.append(command))
    discovery = WorkerDiscovery(control, MemoryStore())
    assert discovery.refresh() == 0
    assert sent == []


def test_reply_parsers_ignore_what_is_not_a_reply() -> None:
    stats = {"pool": {"implementation": "celery.concurrency.prefork:TaskPool",
                      "max-concurrency": 8}}
    assert pool_facts(stats) == ("prefork", 8)
    # After a pool grow the processes are counted, not the size the worker started with.
    grown = {"pool": {**stats["pool"], "processes": [101, 102, 103]}}
    assert pool_facts(grown) == ("prefork", 3)
    assert pool_facts({"pool": "weird"}) == (None, None)
    assert consumed_queues([{"name": "celery"}, {"nameless": 1}, "junk"]) == ["celery"]
    assert consumed_queues({"not": "a list"}) is None
