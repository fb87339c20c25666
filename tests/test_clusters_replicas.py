"""Two replicas share three clusters' ingest through the Redis state store, and take over.

Three brokers (databases of the private redis-server: Celery's Redis transport keeps their
event channels apart), one state database, two real :class:`~chatbot.service.Service`
replicas with a short lease TTL. Nothing is timed: waits have generous deadlines.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from chatbot.config import load_settings
from chatbot.model import PENDING
from chatbot.service import Service
from tests.fleet_app import ADD, make_app
from tests.support import wait_until

LEASE_TTL = 2.0
DEADLINE = 60.0
CLUSTERS = ("alpha", "beta", "gamma")


def ingesting(service: Service) -> frozenset[str]:
    """The clusters whose events this replica consumes now."""
    return frozenset(name for name, parts in service.clusters.items() if parts.consumer)


@pytest.fixture
def replicas(redis_url_factory: Callable[[], str]) -> Iterator[tuple[Service, Service, dict]]:
    brokers = {name: redis_url_factory() for name in CLUSTERS}
    settings = load_settings(
        {
            "CHATOPS_CLUSTERS": ",".join(f"{name}={url}" for name, url in brokers.items()),
            "CHATOPS_STATE_URL": redis_url_factory(),
        }
    )
    first = Service(settings, lease_ttl=LEASE_TTL)
    second = Service(settings, lease_ttl=LEASE_TTL)
    first.start()
    second.start()
    try:
        yield first, second, brokers
    finally:
        second.stop()
        first.stop()


def test_two_replicas_split_three_clusters_and_one_takes_over_when_the_other_dies(
    replicas: tuple[Service, Service, dict[str, str]],
) -> None:
    first, second, brokers = replicas

    def split() -> bool:
        a, b = ingesting(first), ingesting(second)
        if not (a and b and not (a & b) and (a | b) == set(CLUSTERS)):
            return False
        # Settled: each replica's balancer counts what it ingests, and /healthz says so
        # (a turn being taken or handed over is seen by these at slightly different moments).
        assert first.balancer is not None and second.balancer is not None
        return all(
            service.balancer is not None
            and service.balancer.held == ingesting(service)
            and {n for n, f in service.health()["clusters"].items() if f["ingest_here"]}
            == ingesting(service)
            for service in (first, second)
        )

    wait_until(split, timeout=DEADLINE, what="three clusters split between two replicas")
    # Every replica answers for every cluster from the shared store, whoever ingests it.
    for service in (first, second):
        assert set(service.health()["clusters"]) == set(CLUSTERS)

    # The second replica dies: no release, no goodbye (its leases and its presence run out).
    orphaned = ingesting(second)
    assert second.balancer is not None
    second.balancer.stop(withdraw=False)
    for parts in second.clusters.values():
        assert parts.stores is not None and parts.stores.keeper is not None
        parts.stores.keeper.stop(release=False)
        if parts.consumer is not None:
            parts.consumer.stop()

    wait_until(
        lambda: ingesting(first) == set(CLUSTERS),
        timeout=DEADLINE,
        what=f"the first replica taking over {sorted(orphaned)}",
    )
    # And it really ingests them: a task sent on a taken-over cluster's broker reaches the
    # (shared) store through the first replica's consumer.
    taken = sorted(orphaned)[0]
    parts = first.clusters[taken]
    assert parts.consumer is not None and parts.consumer.wait_connected(DEADLINE)
    producer = make_app(brokers[taken])
    try:
        task_id = str(producer.send_task(ADD, (1, 2)).id)
    finally:
        producer.close()

    def stored() -> bool:
        task = parts.store.get_task(task_id)
        return task is not None and task.state == PENDING

    wait_until(stored, timeout=DEADLINE, what=f"{taken}'s task-sent event in the store")


def test_one_cluster_keeps_the_plain_lease_and_no_balancer(
    redis_url_factory: Callable[[], str],
) -> None:
    settings = load_settings(
        {"CELERY_BROKER_URL": redis_url_factory(), "CHATOPS_STATE_URL": redis_url_factory()}
    )
    service = Service(settings, lease_ttl=LEASE_TTL)
    try:
        assert service.balancer is None
        assert service.stores is not None
        assert service.stores.lease.name == "ingest"
        assert service.first.settings.state_prefix == "chatops"
        assert service.health().get("clusters") is None
    finally:
        service.stop()
