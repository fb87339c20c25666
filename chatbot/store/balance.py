"""Sharing several clusters' ingest leases out between the replicas of one bot.

Each cluster's ingest is its own lease (``chatbot/store/lease.py``). Left alone, the first
replica to start would take every lease and keep them. :class:`IngestBalancer` gives each
replica a fair share instead: every replica announces itself in a Redis sorted set
(``<prefix>:replicas``, member = the replica, score = when its announcement runs out), and
with N live replicas and C clusters a replica takes a free lease only while it holds fewer than
ceil(C / N), and hands one back (written out, then released) while it holds more. A replica
that dies stops announcing itself: its entry runs out after ``presence_ttl``, the survivors'
share grows, and they take its leases as each one's TTL runs out.

Used only with several clusters and a Redis state store; one cluster keeps the plain lease.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

import redis.exceptions

from chatbot.store.redis.connection import RedisClient, StoreUnavailable

__all__ = ["DEFAULT_PRESENCE_TTL", "IngestBalancer"]

log = logging.getLogger(__name__)

DEFAULT_PRESENCE_TTL = 10.0
_FAILURES = (StoreUnavailable, redis.exceptions.RedisError, OSError)


class IngestBalancer:
    """This replica's fair share of ``clusters`` ingest leases, from the replicas alive."""

    def __init__(
        self,
        client: RedisClient,
        prefix: str,
        clusters: int,
        *,
        presence_ttl: float = DEFAULT_PRESENCE_TTL,
        clock: Callable[[], float] = time.time,
        identity: str | None = None,
    ) -> None:
        if clusters < 1:
            raise ValueError("at least one cluster")
        self.client = client
        self.key = f"{prefix}:replicas"
        self.clusters = clusters
        self.presence_ttl = float(presence_ttl)
        self.member = identity or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._clock = clock
        self._lock = threading.Lock()
        self._held: set[str] = set()
        self._live = 1
        self._announced_at: float | None = None
        self._stopped = False

    # -- what the lease keepers ask ----------------------------------------------------------
    def may_acquire(self, cluster: str) -> bool:
        """Take a free lease of ``cluster``? Only while holding less than the share."""
        share = self.share()
        with self._lock:
            return not self._stopped and cluster not in self._held and len(self._held) < share

    def should_yield(self, cluster: str) -> bool:
        """Hand ``cluster`` back? While holding more than the share: one lease per call (the
        lease is counted as gone at once, so two keepers do not both hand theirs back)."""
        share = self.share()
        with self._lock:
            if cluster in self._held and len(self._held) > share:
                self._held.discard(cluster)
                log.info("handing the ingest of cluster %s to another replica", cluster)
                return True
            return False

    def acquired(self, cluster: str) -> None:
        with self._lock:
            self._held.add(cluster)

    def lost(self, cluster: str) -> None:
        with self._lock:
            self._held.discard(cluster)

    @property
    def held(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._held)

    # -- presence ----------------------------------------------------------------------------
    def share(self) -> int:
        """ceil(clusters / live replicas), counting this one; announces it when due."""
        live = self._refresh()
        return math.ceil(self.clusters / max(1, live))

    def _refresh(self) -> int:
        now = self._clock()
        with self._lock:
            due = self._announced_at is None or now - self._announced_at >= self.presence_ttl / 3
            if not due or self._stopped:
                return self._live
            self._announced_at = now
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.zadd(self.key, {self.member: now + self.presence_ttl})
            pipe.zremrangebyscore(self.key, "-inf", now)
            pipe.zcard(self.key)
            live = int(pipe.execute()[-1])
        except _FAILURES as exc:
            # Without Redis no lease can be taken or renewed anyway: keep the last count.
            log.debug("could not announce this replica: %s", exc)
            return self._live
        with self._lock:
            self._live = max(1, live)
            return self._live

    def stop(self, *, withdraw: bool = True) -> None:
        """Stop announcing; ``withdraw`` removes this replica at once (a clean stop), so the
        others' share grows now rather than after ``presence_ttl``."""
        with self._lock:
            self._stopped = True
        if withdraw:
            try:
                self.client.zrem(self.key, self.member)
            except _FAILURES as exc:
                log.debug("could not withdraw this replica: %s", exc)
