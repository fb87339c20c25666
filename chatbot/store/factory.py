"""``open_stores(settings)``: the fleet store, the record store and the ingest lease for
``CHATOPS_STATE_URL``, and the one place that knows how to start and stop them together.

How the service uses it::

    stores = open_stores(settings)
    stores.start(on_acquired=start_ingest, on_lost=stop_ingest)   # never blocks on Redis
    ...                                                            # serve commands from
    ...                                                            # stores.fleet / .records
    stores.stop()                                                  # on shutdown

``start_ingest`` starts the event consumer (feeding ``stores.fleet``) and the alert scheduler;
``stop_ingest`` stops both. They run on the lease keeper's thread when this replica gains or
loses the lease: with ``memory://`` at once, with ``redis://`` when the lease is free. The
consumer may start applying at once: a Redis writer buffers events while it loads the stored
picture (``stores.ready`` tells when it is loaded).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from chatbot.config import Settings
from chatbot.model import StreamHealth
from chatbot.store import FleetStore, RecordStore
from chatbot.store.lease import Lease, LeaseKeeper, LeaseLike, MemoryLease
from chatbot.store.memory import MemoryStore
from chatbot.store.records import MemoryRecordStore
from chatbot.store.redis import RedisClient, RedisFleetStore, RedisRecordStore, connect
from chatbot.store.redis.connection import connect_for_requests
from chatbot.store.snapshot import SnapshotWriter

__all__ = ["INGEST_LEASE", "Stores", "open_stores"]

log = logging.getLogger(__name__)

INGEST_LEASE = "ingest"
DEFAULT_LEASE_TTL = 10.0
DEFAULT_SNAPSHOT_INTERVAL = 60.0


@dataclass
class Stores:
    """What ``CHATOPS_STATE_URL`` opened. ``fleet`` and ``records`` are what commands, control
    and alerts use; the rest is lifecycle."""

    fleet: FleetStore
    records: RecordStore
    lease: LeaseLike
    backend: str  # "memory" or "redis"
    snapshot: SnapshotWriter | None = None
    client: RedisClient | None = None
    request_client: RedisClient | None = None
    keeper: LeaseKeeper | None = None
    renew_every: float | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def ready(self) -> bool:
        """The writer's picture is loaded (always true for memory; for a Redis replica that is
        not the lease holder, true too: it answers from Redis and writes nothing)."""
        if isinstance(self.fleet, RedisFleetStore):
            return self.fleet.ready or not self.fleet.is_writer
        return True

    @property
    def is_leader(self) -> bool:
        return self.keeper is not None and self.keeper.held

    def set_health_source(self, source: Callable[[StreamHealth], StreamHealth] | None) -> None:
        """Publish the event consumer's half of the health to every replica (Redis only).

        Pass ``consumer.health_into``. With Redis, ``fleet.health()`` then already includes the
        consumer's half (do not add it again); with memory this does nothing.
        """
        if isinstance(self.fleet, RedisFleetStore):
            self.fleet.set_health_source(source)

    def start(
        self,
        on_acquired: Callable[[], None],
        on_lost: Callable[[], None],
        *,
        may_acquire: Callable[[], bool] | None = None,
        should_yield: Callable[[], bool] | None = None,
    ) -> LeaseKeeper:
        """Load the snapshot (memory), then keep the lease and run ``on_acquired`` /
        ``on_lost`` around this replica's turns as the writer (``may_acquire`` and
        ``should_yield``: see :class:`LeaseKeeper`)."""
        if self.keeper is not None:
            return self.keeper
        if self.snapshot is not None:
            self.snapshot.load()
            self.snapshot.start()
        fleet = self.fleet

        def acquired() -> None:
            if isinstance(fleet, RedisFleetStore):
                # Loads in the background (apply() buffers meanwhile); writes only while
                # Redis confirms this replica's lease.
                fleet.start_writer(fence=confirmed)
            on_acquired()

        def confirmed() -> bool:
            return self.keeper is not None and self.keeper.confirmed

        def lost() -> None:
            on_lost()
            if isinstance(fleet, RedisFleetStore):
                # Lost to another replica, which writes now: do not flush over it. Stopping,
                # we still hold the lease until released: write what is pending. (A Redis
                # outage is not a loss: the keeper holds on, unconfirmed, and writing waits.)
                # Handing the turn over on purpose, it is still ours: write what is pending.
                handing_over = self.keeper is not None and self.keeper.yielding
                fleet.stop_writer(flush=self._stopping.is_set() or handing_over)

        self.keeper = LeaseKeeper(
            self.lease,
            acquired,
            lost,
            renew_every=self.renew_every,
            may_acquire=may_acquire,
            should_yield=should_yield,
        )
        self.keeper.start()
        return self.keeper

    def stop(self, timeout: float = 10.0) -> None:
        """Stop ingest (``on_lost``), write what is pending, release the lease, close."""
        self._stopping.set()
        if self.keeper is not None:
            self.keeper.stop(release=True, timeout=timeout)
        if isinstance(self.fleet, RedisFleetStore):
            self.fleet.close()
        if self.snapshot is not None:
            self.snapshot.stop(timeout=timeout)
        for client in (self.client, self.request_client):
            if client is not None:
                client.close()


def open_stores(
    settings: Settings,
    *,
    lease_ttl: float = DEFAULT_LEASE_TTL,
    renew_every: float | None = None,
    snapshot_interval: float = DEFAULT_SNAPSHOT_INTERVAL,
) -> Stores:
    """Open the stores for ``settings.state_url``; connects lazily (never raises for an
    unreachable Redis: reads raise ``StoreUnavailable`` until it answers)."""
    scheme = urlsplit(settings.state_url).scheme
    if scheme == "memory":
        memory = MemoryStore(
            max_tasks=settings.max_tasks,
            max_workers=settings.max_workers,
            redact_keys=settings.redact_keys,
        )
        snapshot = (
            SnapshotWriter(memory, settings.snapshot_path, interval=snapshot_interval)
            if settings.snapshot_path
            else None
        )
        return Stores(
            fleet=memory,
            records=MemoryRecordStore(),
            lease=MemoryLease(INGEST_LEASE),
            backend="memory",
            snapshot=snapshot,
            renew_every=renew_every,
        )
    if scheme in {"redis", "rediss"}:
        # Two clients (see chatbot/store/redis/connection.py): commands, clicks and the HTTP
        # gate read through one with short timeouts that fails fast while Redis hangs; the
        # writer and the lease keeper, in the background, through a patient one.
        client = connect(settings.state_url)
        requests = connect_for_requests(settings.state_url)
        prefix = settings.state_prefix or "chatops"
        return Stores(
            fleet=RedisFleetStore(
                requests,
                prefix,
                max_tasks=settings.max_tasks,
                max_workers=settings.max_workers,
                redact_keys=settings.redact_keys,
                writer_client=client,
            ),
            records=RedisRecordStore(requests, prefix),
            lease=Lease(client, INGEST_LEASE, lease_ttl, prefix=prefix),
            backend="redis",
            client=client,
            request_client=requests,
            renew_every=renew_every,
        )
    raise ValueError(f"CHATOPS_STATE_URL: unsupported scheme {scheme}://")
