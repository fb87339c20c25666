"""The ingest lease: exactly one replica consumes events and runs the scheduler at a time.

Slack's Socket Mode hands each request to any one open connection of the app, so every
replica answers commands; but events must be applied, and alerts posted, by one
replica only, or they would be written twice and alerts duplicated. The holder is the replica
whose token sits in ``<prefix>:lease:<name>``, a Redis key with a TTL that the holder keeps
extending. A holder that dies (crash, SIGKILL, network partition) stops extending it; the key
expires and another replica's :class:`LeaseKeeper` takes it within one TTL plus one retry period.

Renew and release compare the token first (Lua), so a replica that lost the lease can never
extend or delete its successor's. Every acquisition of a free lease increments an epoch.

When the holder cannot reach Redis to renew, it stops being *confirmed* before the TTL can run
out on the server (:attr:`LeaseKeeper.confirmed` is the writer's fence: no writes while
unconfirmed), but it does not give its turn up: ingest goes on in memory, and when Redis
answers again the keeper takes the lease back if nobody else had it in between (the epoch
moved by at most the keeper's own re-acquisition), so a Redis outage loses no pending writes.
If another replica held the lease meanwhile, ``on_lost`` runs (the writer then discards its
picture and reloads on its next turn).

With ``memory://`` there is one process: :class:`MemoryLease` is always held.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import redis.exceptions

from chatbot.store.redis.connection import (
    DEFAULT_PREFIX,
    RedisClient,
    StoreUnavailable,
    client_from,
    guard,
)

__all__ = ["Lease", "LeaseKeeper", "LeaseLike", "MemoryLease"]

log = logging.getLogger(__name__)

# KEYS[1]: the lease, KEYS[2]: its epoch counter; ARGV[1]: our token; ARGV[2]: ttl in ms.
# Returns the epoch we hold it in, 0 when another replica holds it.
_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(redis.call('GET', KEYS[2]) or '0')
end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return redis.call('INCR', KEYS[2])
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@runtime_checkable
class LeaseLike(Protocol):
    name: str
    ttl: float
    epoch: int  # of the last successful try_acquire (0 before any)

    @property
    def token(self) -> str: ...

    @property
    def holder(self) -> str | None: ...

    def try_acquire(self) -> bool: ...

    def renew(self) -> bool: ...

    def release(self) -> bool: ...


def _default_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Lease:
    """A named lease in Redis. Methods raise :class:`StoreUnavailable` when Redis is down."""

    def __init__(
        self,
        redis_client_or_url: RedisClient | str,
        name: str,
        ttl: float,
        *,
        prefix: str = DEFAULT_PREFIX,
        identity: str | None = None,
    ) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be > 0")
        self.client, self._owns_client = client_from(redis_client_or_url)
        self.name = name
        self.ttl = float(ttl)
        self.key = f"{prefix}:lease:{name}"
        self.epoch_key = f"{self.key}:epoch"
        self.epoch = 0
        # Unique per instance: a restarted process (same host and maybe the same pid in a
        # container) must not mistake its predecessor's lease for its own.
        self._token = f"{identity or _default_identity()}:{uuid.uuid4().hex[:12]}"
        self._acquire = self.client.register_script(_ACQUIRE)
        self._renew = self.client.register_script(_RENEW)
        self._release = self.client.register_script(_RELEASE)

    @property
    def token(self) -> str:
        return self._token

    @property
    def _ttl_ms(self) -> int:
        return max(1, int(self.ttl * 1000))

    @property
    def holder(self) -> str | None:
        """The token of the current holder (ours or another replica's), None when free."""
        with guard(self.client):
            value = self.client.get(self.key)
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    def try_acquire(self) -> bool:
        """Take the lease if it is free (or already ours, which extends it); sets ``epoch``."""
        with guard(self.client):
            epoch = int(
                self._acquire(keys=[self.key, self.epoch_key], args=[self._token, self._ttl_ms])
            )
        if epoch:
            self.epoch = epoch
        return bool(epoch)

    def renew(self) -> bool:
        """Extend the lease by a full TTL if we still hold it; False if we do not."""
        with guard(self.client):
            return bool(self._renew(keys=[self.key], args=[self._token, self._ttl_ms]))

    def release(self) -> bool:
        """Give the lease up if we hold it (another replica can take it at once)."""
        with guard(self.client):
            return bool(self._release(keys=[self.key], args=[self._token]))

    def close(self) -> None:
        if self._owns_client:
            self.client.close()


class MemoryLease:
    """The ``memory://`` lease: one process, always the holder."""

    def __init__(self, name: str = "ingest", ttl: float = float("inf")) -> None:
        self.name = name
        self.ttl = ttl
        self.epoch = 1
        self._token = f"{_default_identity()}:memory"

    @property
    def token(self) -> str:
        return self._token

    @property
    def holder(self) -> str | None:
        return self._token

    def try_acquire(self) -> bool:
        return True

    def renew(self) -> bool:
        return True

    def release(self) -> bool:
        return True


class LeaseKeeper:
    """A daemon thread that takes the lease when it is free and keeps it while alive.

    ``on_acquired()`` runs when this replica becomes the holder and ``on_lost()`` when it stops
    being the holder (another replica has it, or :meth:`stop`). Both run on the keeper's thread
    and should return quickly (start or stop threads, do not join long work). Every
    acquisition is followed by exactly one loss. While Redis cannot confirm the lease the
    keeper stays the holder but :attr:`confirmed` is False: writes to shared state must wait.
    """

    def __init__(
        self,
        lease: LeaseLike,
        on_acquired: Callable[[], None],
        on_lost: Callable[[], None],
        renew_every: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        may_acquire: Callable[[], bool] | None = None,
        should_yield: Callable[[], bool] | None = None,
    ) -> None:
        """``may_acquire`` (asked before taking a free lease) and ``should_yield`` (asked
        while holding it: True hands the turn over, released at once) let several leases be
        shared out between replicas (``chatbot.store.balance``); None: take and keep."""
        ttl = lease.ttl
        if renew_every is None:
            renew_every = ttl / 3 if ttl != float("inf") else 1.0
        if renew_every <= 0:
            raise ValueError("renew_every must be > 0")
        if ttl != float("inf") and renew_every >= ttl:
            raise ValueError("renew_every must be shorter than the lease's ttl")
        self.lease = lease
        self.on_acquired = on_acquired
        self.on_lost = on_lost
        self.renew_every = float(renew_every)
        self._clock = clock
        self._held = False
        self._held_event = threading.Event()
        self._confirmed_at = 0.0  # when the last acquire/renew request that succeeded was sent
        self._epoch = 0  # the epoch of our turn
        self._losing = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state_lock = threading.Lock()
        self.last_error: str | None = None
        self.may_acquire = may_acquire
        self.should_yield = should_yield
        # True while on_lost runs for a turn handed over on purpose: the lease is still ours,
        # so what the writer has pending is written before the release.
        self.yielding = False

    @property
    def held(self) -> bool:
        """This replica holds the lease and ``on_acquired`` has returned."""
        return self._held_event.is_set()

    @property
    def confirmed(self) -> bool:
        """Held, and confirmed by Redis recently enough that no other replica can hold it:
        the fence for writing shared state."""
        return self._held and self._clock() < self._expiry_margin()

    def wait_held(self, timeout: float | None = None) -> bool:
        return self._held_event.wait(timeout)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="chatops-lease", daemon=True)
        self._thread.start()

    def stop(self, release: bool = True, timeout: float = 10.0) -> None:
        """Stop keeping the lease: ``on_lost()`` runs (if held), then the lease is released so
        another replica takes over at once. ``release=False`` simulates a crash: the lease
        stays until its TTL runs out."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            self._thread = None
        if release:
            was_held = self._lose("stopping", stopping=True)
            if was_held:
                try:
                    self.lease.release()
                except StoreUnavailable as exc:
                    log.warning("Could not release the lease %r: %s", self.lease.name, exc)

    def _run(self) -> None:
        while not self._stop.is_set():
            sent = self._clock()
            try:
                if self._held:
                    if self.should_yield is not None and self.should_yield():
                        self._yield_turn()
                    else:
                        self._keep(sent)
                elif (self.may_acquire is None or self.may_acquire()) and (
                    self.lease.try_acquire()
                ):
                    self._confirmed_at = sent
                    self._epoch = self.lease.epoch
                    self.last_error = None
                    self._gain()
            except (StoreUnavailable, redis.exceptions.RedisError) as exc:
                if self.last_error is None and self._held:
                    log.warning("Cannot renew the lease %r: %s", self.lease.name, exc)
                self.last_error = str(exc)
            except Exception:  # pragma: no cover - keep the keeper alive, loudly
                log.exception("Lease keeper error")
            self._stop.wait(self._next_wait())

    def _keep(self, sent: float) -> None:
        if self.lease.renew():
            self._confirmed_at = sent
            self.last_error = None
            return
        # Not ours any more: expired while Redis was out of reach, or taken.
        if self.lease.try_acquire():
            epoch = self.lease.epoch
            # Our own re-acquisition moves the epoch by one; more means another replica had
            # a turn (and wrote) in between. Lower means Redis lost its data: nobody else's
            # picture is newer than ours then.
            if epoch <= self._epoch + 1:
                self._epoch = epoch
                self._confirmed_at = sent
                self.last_error = None
                log.info("Took the lease %r back after an interruption", self.lease.name)
                return
            self._lose("another replica held it meanwhile")
            self._confirmed_at = sent
            self._epoch = epoch
            self._gain()
            return
        self._lose("another replica holds it")

    def _yield_turn(self) -> None:
        """Hand the lease over: stop (writing what is pending under it), then release it so
        another replica takes it on its next try."""
        self.yielding = True
        try:
            if self._lose("handed over to balance the replicas' ingest", stopping=True):
                self.lease.release()
        finally:
            self.yielding = False

    def _expiry_margin(self) -> float:
        """Local time by which the lease must be confirmed again, with a safety margin."""
        ttl = self.lease.ttl
        margin = min(self.renew_every, ttl / 4)
        return self._confirmed_at + ttl - margin

    def _next_wait(self) -> float:
        if not self._held:
            return self.renew_every
        left = self._expiry_margin() - self._clock()
        if left <= 0:
            # Unconfirmed: retry often, so that when Redis answers again this replica takes
            # its turn back before another one takes the expired lease.
            return min(self.renew_every, 0.1)
        return max(0.01, min(self.renew_every, left))

    def _gain(self) -> None:
        with self._state_lock:
            if self._held:
                return
            self._held = True
        log.info("This replica holds the lease %r", self.lease.name)
        try:
            self.on_acquired()
        except Exception:
            log.exception("on_acquired failed")
        self._held_event.set()

    def _lose(self, reason: str, stopping: bool = False) -> bool:
        with self._state_lock:
            if not self._held or self._losing:
                return False
            self._losing = True
            self._held_event.clear()
            if not stopping:
                # Another replica holds it: unconfirmed before on_lost, so nothing more is
                # written. Stopping, the lease is still ours until released: what on_lost
                # flushes is written under it.
                self._held = False
        log.info("This replica no longer holds the lease %r: %s", self.lease.name, reason)
        try:
            self.on_lost()
        except Exception:
            log.exception("on_lost failed")
        with self._state_lock:
            self._held = False
            self._losing = False
        return True
