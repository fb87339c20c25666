"""The ingest lease: one holder at a time, handed over when the holder dies or steps down."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from chatbot.store.lease import Lease, LeaseKeeper, LeaseLike, MemoryLease
from chatbot.store.redis import StoreUnavailable
from tests.support import wait_until


class Turns:
    """Records gains and losses of every keeper; fails on two holders at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.holder: str | None = None
        self.log: list[str] = []
        self.overlaps: list[str] = []

    def callbacks(self, who: str) -> tuple[Callable[[], None], Callable[[], None]]:
        def gained() -> None:
            with self.lock:
                if self.holder is not None:
                    self.overlaps.append(f"{who} gained while {self.holder} held it")
                self.holder = who
                self.log.append(f"{who}+")

        def lost() -> None:
            with self.lock:
                if self.holder == who:
                    self.holder = None
                self.log.append(f"{who}-")

        return gained, lost


@pytest.fixture
def keepers() -> Iterator[list[LeaseKeeper]]:
    started: list[LeaseKeeper] = []
    yield started
    for keeper in started:
        keeper.stop(release=False, timeout=5)


def keeper_for(
    url: str, who: str, turns: Turns, started: list[LeaseKeeper], ttl: float = 1.0
) -> LeaseKeeper:
    lease = Lease(url, "ingest", ttl, identity=who)
    keeper = LeaseKeeper(lease, *turns.callbacks(who), renew_every=ttl / 5)
    started.append(keeper)
    keeper.start()
    return keeper


def test_leases_satisfy_the_interface(redis_url: str) -> None:
    assert isinstance(Lease(redis_url, "ingest", 5), LeaseLike)
    assert isinstance(MemoryLease(), LeaseLike)


def test_acquire_renew_and_release_compare_the_token(redis_url: str) -> None:
    a = Lease(redis_url, "ingest", 30, identity="a")
    b = Lease(redis_url, "ingest", 30, identity="b")
    assert a.holder is None
    assert a.try_acquire()
    assert a.try_acquire()  # already ours: extended, still held
    assert a.holder == a.token and a.token.startswith("a:")
    assert not b.try_acquire()
    assert not b.renew()  # compare-and-extend: not b's to extend
    assert not b.release()  # compare-and-delete: not b's to delete
    assert a.holder == a.token
    assert a.renew()
    assert a.release()
    assert a.holder is None and not a.renew()
    assert b.try_acquire() and b.holder == b.token


def test_two_instances_with_the_same_identity_are_different_holders(redis_url: str) -> None:
    # A restarted process may reuse its host name and pid; it must not inherit the old lease.
    old = Lease(redis_url, "ingest", 30, identity="pod-1")
    new = Lease(redis_url, "ingest", 30, identity="pod-1")
    assert old.try_acquire()
    assert not new.try_acquire() and not new.renew()


def test_an_unrenewed_lease_expires_and_someone_else_can_take_it(redis_url: str) -> None:
    a = Lease(redis_url, "ingest", 0.3, identity="a")
    b = Lease(redis_url, "ingest", 0.3, identity="b")
    assert a.try_acquire()
    wait_until(b.try_acquire, what="the lease to expire")
    assert not a.renew()


def test_leases_are_per_name_and_prefix(redis_url: str) -> None:
    assert Lease(redis_url, "ingest", 30).try_acquire()
    assert Lease(redis_url, "scheduler", 30).try_acquire()
    assert Lease(redis_url, "ingest", 30, prefix="other-bot").try_acquire()


def test_exactly_one_keeper_holds_the_lease(redis_url: str, keepers: list[LeaseKeeper]) -> None:
    turns = Turns()
    for who in ("a", "b", "c"):
        keeper_for(redis_url, who, turns, keepers)
    wait_until(lambda: sum(k.held for k in keepers) == 1, what="a holder")
    # several renewal periods later it is still the same single holder
    holder = next(k for k in keepers if k.held)
    for _ in range(10):
        threading.Event().wait(0.1)
        assert [k for k in keepers if k.held] == [holder]
    assert turns.overlaps == []
    assert len(turns.log) == 1


def test_a_dead_holder_is_replaced_within_the_ttl(
    redis_url: str, keepers: list[LeaseKeeper]
) -> None:
    turns = Turns()
    a = keeper_for(redis_url, "a", turns, keepers)
    assert a.wait_held(timeout=10)
    b = keeper_for(redis_url, "b", turns, keepers)
    # the holder "dies": it stops renewing without releasing (a SIGKILL, an OOM kill)
    a.stop(release=False)
    assert b.wait_held(timeout=15)
    assert turns.log == ["a+", "b+"]
    assert Lease(redis_url, "ingest", 1.0).holder == b.lease.token


def test_a_holder_cut_off_from_redis_is_unconfirmed_before_anyone_takes_over(
    redis_url: str, keepers: list[LeaseKeeper]
) -> None:
    turns = Turns()
    a = keeper_for(redis_url, "a", turns, keepers)
    assert a.wait_held(timeout=10) and a.confirmed
    b = keeper_for(redis_url, "b", turns, keepers)
    renew, acquire = a.lease.renew, a.lease.try_acquire

    def cut_off() -> bool:
        raise StoreUnavailable("state store unavailable: Redis at redis://x: partitioned")

    a.lease.renew = cut_off  # type: ignore[method-assign]
    a.lease.try_acquire = cut_off  # type: ignore[method-assign]
    # a's fence drops before its lease can expire on the server, so before b can take it
    confirmed_seen: list[bool] = []
    b_gained = threading.Thread(target=lambda: confirmed_seen.append(b.wait_held(timeout=15)))
    b_gained.start()
    wait_until(lambda: not a.confirmed, timeout=15, what="a to become unconfirmed")
    b_gained.join()
    assert confirmed_seen == [True] and b.confirmed and not a.confirmed
    assert a.held  # a keeps its ingest going in memory, writing nothing...
    assert "partitioned" in (a.last_error or "")
    # ...until Redis answers again and says b has it: then a's turn ends
    a.lease.renew, a.lease.try_acquire = renew, acquire
    wait_until(lambda: not a.held, timeout=15, what="a to learn it lost")
    assert turns.log == ["a+", "b+", "a-"]


def test_a_holder_cut_off_briefly_takes_its_turn_back(
    redis_url: str, keepers: list[LeaseKeeper]
) -> None:
    turns = Turns()
    a = keeper_for(redis_url, "a", turns, keepers, ttl=0.5)
    assert a.wait_held(timeout=10)
    renew = a.lease.renew

    def cut_off() -> bool:
        raise StoreUnavailable("state store unavailable: Redis at redis://x: restarting")

    a.lease.renew = cut_off  # type: ignore[method-assign]
    wait_until(lambda: not a.confirmed, timeout=15, what="a to become unconfirmed")
    wait_until(lambda: Lease(redis_url, "ingest", 1).holder is None, what="the key to expire")
    a.lease.renew = renew  # type: ignore[method-assign]
    wait_until(lambda: a.confirmed, timeout=15, what="a to take it back")
    assert turns.log == ["a+"]  # one uninterrupted turn: nothing was reloaded or lost


def test_a_holder_whose_lease_another_replica_held_meanwhile_starts_a_new_turn(
    redis_url: str, keepers: list[LeaseKeeper]
) -> None:
    turns = Turns()
    a = keeper_for(redis_url, "a", turns, keepers, ttl=0.5)
    assert a.wait_held(timeout=10)
    renew = a.lease.renew

    def cut_off() -> bool:
        raise StoreUnavailable("state store unavailable: Redis at redis://x: partitioned")

    a.lease.renew = cut_off  # type: ignore[method-assign]
    wait_until(lambda: not a.confirmed, timeout=15, what="a to become unconfirmed")
    other = Lease(redis_url, "ingest", 30, identity="other")
    wait_until(other.try_acquire, what="another replica's turn")
    assert other.release()  # ...which ended before a got through again
    a.lease.renew = renew  # type: ignore[method-assign]
    wait_until(lambda: a.confirmed, timeout=15, what="a's new turn")
    assert turns.log == ["a+", "a-", "a+"]  # its picture is stale: a new turn reloads it


def test_a_graceful_stop_hands_over_at_once_after_on_lost(
    redis_url: str, keepers: list[LeaseKeeper]
) -> None:
    turns = Turns()
    a = keeper_for(redis_url, "a", turns, keepers, ttl=30.0)  # the TTL is not what hands over
    assert a.wait_held(timeout=10)
    b = keeper_for(redis_url, "b", turns, keepers, ttl=30.0)
    a.stop(release=True)
    assert b.wait_held(timeout=30)
    assert turns.log == ["a+", "a-", "b+"]


def test_a_keeper_that_finds_its_lease_taken_reports_the_loss(
    redis_url: str, keepers: list[LeaseKeeper]
) -> None:
    turns = Turns()
    a = keeper_for(redis_url, "a", turns, keepers)
    assert a.wait_held(timeout=10)
    # an operator deletes the key and another process grabs it between two renewals
    intruder = Lease(redis_url, "ingest", 30, identity="intruder")
    a.lease.release()
    assert intruder.try_acquire()
    wait_until(lambda: not a.held, timeout=15, what="a to notice")
    assert turns.log == ["a+", "a-"]


def test_the_memory_lease_is_always_held() -> None:
    turns = Turns()
    keeper = LeaseKeeper(MemoryLease(), *turns.callbacks("solo"))
    keeper.start()
    try:
        assert keeper.wait_held(timeout=10)
        assert keeper.lease.holder == keeper.lease.token
    finally:
        keeper.stop()
    assert turns.log == ["solo+", "solo-"]


def test_renew_every_must_be_shorter_than_the_ttl(redis_url: str) -> None:
    with pytest.raises(ValueError):
        LeaseKeeper(Lease(redis_url, "ingest", 1.0), lambda: None, lambda: None, renew_every=1.0)
    with pytest.raises(ValueError):
        Lease(redis_url, "ingest", 0)
