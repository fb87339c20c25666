"""The alert rules on synthetic pictures of a fleet: pure functions, no store, no Slack."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from chatbot.alerts.facts import QueueHistory, consumed_per_queue
from chatbot.alerts.rules import (
    BACKLOG,
    CRITICAL,
    STREAM_SILENT_KEY,
    WARNING,
    FleetFacts,
    backlog_conditions,
    evaluate,
    failure_conditions,
    queue_trend,
    significant_change,
    stream_condition,
    stuck_conditions,
    worker_conditions,
)
from chatbot.broker import QueueLength
from chatbot.config import Settings
from chatbot.failures import group_failures
from chatbot.model import FAILURE, STARTED, SUCCESS, RuntimeStats, StreamHealth, Task, Worker
from chatbot.store.memory import MemoryStore

NOW = 1_800_000_000.0
SETTINGS = Settings(
    backlog_threshold=100,
    failure_spike_threshold=3,
    failure_window=300.0,
    stuck_after=600.0,
    silence_after=120.0,
)


def worker(name: str, heartbeat_age: float = 1.0, **fields: Any) -> Worker:
    return Worker(hostname=name, freq=2.0, last_heartbeat=NOW - heartbeat_age, **fields)


def running(uuid: str, runtime: float, name: str = "app.slow", host: str = "w1") -> Task:
    return Task(
        uuid=uuid, name=name, state=STARTED, worker=host, started=NOW - runtime,
        args="(1, 2)", kwargs="{}",
    )  # fmt: skip


def failed(uuid: str, name: str, exception: str, host: str = "w1", age: float = 10.0) -> Task:
    return Task(
        uuid=uuid, name=name, state=FAILURE, worker=host, exception=exception,
        finished=NOW - age, state_ts=NOW - age,
    )  # fmt: skip


def facts(**fields: Any) -> FleetFacts:
    fields.setdefault("health", StreamHealth(last_event_at=NOW - 1))
    fields.setdefault("watching_since", NOW - 3600)
    return FleetFacts(now=NOW, **fields)


# -- backlog -------------------------------------------------------------------------------------
def test_backlog_fires_at_the_threshold_with_a_stable_key() -> None:
    found = backlog_conditions(
        [QueueLength("celery", 100), QueueLength("low", 99)], threshold=100, now=NOW
    )
    assert [c.key for c in found] == ["backlog:celery"]
    assert found[0].figures.length == 100  # type: ignore[union-attr]
    assert found[0].severity == WARNING


def test_backlog_trend_and_time_to_drain_from_the_last_checks() -> None:
    history = {"q": [(NOW - 120, 1000), (NOW - 60, 800)]}
    (condition,) = backlog_conditions([QueueLength("q", 600)], threshold=100, now=NOW,
                                      history=history)  # fmt: skip
    f = condition.figures
    assert f.trend == "draining"  # type: ignore[union-attr]
    assert f.rate_per_min == pytest.approx(-200.0)  # type: ignore[union-attr]
    assert f.drain_eta == pytest.approx(180.0)  # type: ignore[union-attr]  # 600 at 200/min
    assert f.eta_basis == "trend"  # type: ignore[union-attr]

    (growing,) = backlog_conditions(
        [QueueLength("q", 1200)], threshold=100, now=NOW, history={"q": [(NOW - 60, 1000)]}
    )
    assert growing.figures.trend == "growing"  # type: ignore[union-attr]
    assert growing.figures.drain_eta is None  # type: ignore[union-attr]
    assert growing.severity == CRITICAL  # 1200 >= 10 x 100


def test_backlog_without_a_trend_uses_the_consumption_rate() -> None:
    (condition,) = backlog_conditions(
        [QueueLength("q", 300)], threshold=100, now=NOW, consumed={"q": 50},
        consumption_span=60.0,
    )  # fmt: skip
    f = condition.figures
    assert f.trend == "unknown"  # type: ignore[union-attr]
    assert f.consumed_per_min == 50.0  # type: ignore[union-attr]
    assert f.drain_eta == pytest.approx(360.0)  # type: ignore[union-attr]
    assert f.eta_basis == "consumption"  # type: ignore[union-attr]


def test_an_unknown_queue_length_neither_opens_nor_resolves() -> None:
    unknown = [QueueLength("celery", None, error="ConnectionError: refused")]
    assert backlog_conditions(unknown, threshold=1, now=NOW) == []
    evaluation = evaluate(facts(queues=unknown), SETTINGS, {"backlog:celery": NOW - 60})
    assert "backlog:celery" in evaluation.held
    assert "backlog:celery" not in evaluation.notes

    broker_down = evaluate(facts(queues=None), SETTINGS, {"backlog:celery": NOW - 60})
    assert "backlog:celery" in broker_down.held

    drained = evaluate(facts(queues=[QueueLength("celery", 3)]), SETTINGS,
                       {"backlog:celery": NOW - 60})  # fmt: skip
    assert "backlog:celery" not in drained.held
    assert "3 waiting" in drained.notes["backlog:celery"]


def test_queue_trend_needs_two_samples_a_second_apart() -> None:
    assert queue_trend([(NOW, 5)])[0] == "unknown"
    assert queue_trend([(NOW - 0.5, 5), (NOW, 50)])[0] == "unknown"
    assert queue_trend([(NOW - 60, 5), (NOW, 5)])[0] == "steady"


def test_queue_history_keeps_known_lengths_only() -> None:
    history = QueueHistory(max_samples=3)
    for i, length in enumerate([1, None, 3, 4, 5]):
        history.record([QueueLength("q", length)], NOW + i)
    assert history.samples()["q"] == ((NOW + 2, 3), (NOW + 3, 4), (NOW + 4, 5))


def test_consumption_counts_tasks_taken_from_each_queue() -> None:
    store = MemoryStore(clock=lambda: NOW)
    events: list[dict[str, Any]] = []
    for i, queue in enumerate(["a", "a", "b"]):
        uuid = f"t{i}"
        events += [
            {"type": "task-sent", "uuid": uuid, "name": "x", "queue": queue, "timestamp": NOW - 30},
            {"type": "task-received", "uuid": uuid, "name": "x", "hostname": "w1",
             "timestamp": NOW - 20},
            {"type": "task-succeeded", "uuid": uuid, "hostname": "w1", "runtime": 0.1,
             "timestamp": NOW - 19},
        ]  # fmt: skip
    store.apply(events)
    assert consumed_per_queue(store, ["a", "b", "c"], NOW - 60) == {"a": 2, "b": 1, "c": 0}
    assert consumed_per_queue(store, ["a"], NOW - 10) == {"a": 0}


# -- failures ------------------------------------------------------------------------------------
def test_failure_spike_names_top_exceptions_with_an_example_and_the_workers() -> None:
    recent = [
        failed("f1", "app.pay", "ValueError('bad card')", "w1", age=1),
        failed("f2", "app.pay", "ValueError('bad card')", "w2", age=2),
        failed("f3", "app.pay", "TimeoutError()", "w1", age=3),
    ]
    (condition,) = failure_conditions(
        {"app.pay": 3, "app.other": 2}, {"app.pay": recent}, threshold=3, window=300.0
    )
    f = condition.figures
    assert condition.key == "failures:app.pay"
    assert f.count == 3  # type: ignore[union-attr]
    assert [(e.type, e.count, e.example_id) for e in f.exceptions] == [  # type: ignore[union-attr]
        ("ValueError", 2, "f1"),
        ("TimeoutError", 1, "f3"),
    ]
    assert f.workers == ("w1", "w2")  # type: ignore[union-attr]


def test_failure_spike_groups_by_the_same_fingerprint_as_failed() -> None:
    # Eleven declines differing only in numbers are one group; another message shape of the
    # same exception type is another group (not folded into "CardDeclined").
    declined = "CardDeclined('card {} declined for {} cents')"
    recent = [
        failed(f"d{i}", "shop.charge", declined.format(1000 + i, i * 7), f"w{i % 2}", age=i + 1)
        for i in range(11)
    ] + [failed("x1", "shop.charge", "CardDeclined('gateway said no')", age=20)]
    (condition,) = failure_conditions(
        {"shop.charge": 12}, {"shop.charge": recent}, threshold=5, window=300.0
    )
    f = condition.figures
    groups = group_failures(recent)
    assert [(e.type, e.count, e.key) for e in f.exceptions] == [  # type: ignore[union-attr]
        ("CardDeclined", 11, groups[0].key),
        ("CardDeclined", 1, groups[1].key),
    ]
    assert f.exceptions[0].example_id == "d0"  # type: ignore[union-attr]  # the newest


# -- stuck tasks ---------------------------------------------------------------------------------
def test_stuck_past_the_threshold_or_far_past_its_own_p99() -> None:
    stats = {"app.fast": RuntimeStats("app.fast", 50, 1.0, 5.0, 10.0, 12.0)}
    active = [
        running("long", 700),
        running("young", 100),
        running("outlier", 45, name="app.fast"),  # 4.5x its p99, over 30s
        running("brief", 20, name="app.fast"),  # past 3x p99 but too short to matter
    ]
    found = stuck_conditions(active, stuck_after=600, now=NOW, runtime_stats=stats)
    by_key = {c.key: c.figures for c in found}
    assert set(by_key) == {"stuck:long", "stuck:outlier"}
    assert by_key["stuck:long"].reason == "threshold"  # type: ignore[union-attr]
    assert by_key["stuck:outlier"].reason == "p99"  # type: ignore[union-attr]
    assert by_key["stuck:long"].args == "(1, 2)"  # type: ignore[union-attr]

    # Too little history: p99 means nothing yet.
    thin = {"app.fast": RuntimeStats("app.fast", 5, 1.0, 5.0, 10.0, 12.0)}
    assert stuck_conditions([running("o", 45, name="app.fast")], stuck_after=600, now=NOW,
                            runtime_stats=thin) == []  # fmt: skip


def test_a_task_on_an_offline_worker_is_not_stuck_but_its_worker_is_down() -> None:
    workers = [worker("w1", heartbeat_age=60)]
    assert stuck_conditions([running("t", 900)], stuck_after=600, now=NOW, workers=workers) == []
    evaluation = evaluate(
        facts(workers=workers, active=[running("t", 900)], tasks={"t": running("t", 900)}),
        SETTINGS,
        {"stuck:t": NOW - 60},
    )
    assert "worker:w1" in evaluation.conditions
    assert evaluation.notes["stuck:t"] == "its worker went offline"


# -- workers -------------------------------------------------------------------------------------
def test_worker_offline_is_judged_by_heartbeat_expiry_not_by_goodbye() -> None:
    workers = [
        worker("alive", heartbeat_age=1),
        worker("killed", heartbeat_age=5),  # 2 x 2s expired, no worker-offline event
        dataclasses.replace(worker("stopped", heartbeat_age=30), offline_at=NOW - 29),
    ]
    found = worker_conditions(workers, now=NOW)
    assert [c.key for c in found] == ["worker:killed"]
    assert found[0].severity == WARNING
    assert found[0].figures.online_workers == 1  # type: ignore[union-attr]

    everyone_gone = worker_conditions([worker("a", 10), worker("b", 10)], now=NOW)
    assert {c.severity for c in everyone_gone} == {CRITICAL}


def test_worker_recovery_and_clean_shutdown_resolve_with_a_reason() -> None:
    open_alerts = {"worker:back": NOW - 100, "worker:bye": NOW - 100, "worker:gone": NOW - 100}
    workers = [
        worker("back", heartbeat_age=1),
        dataclasses.replace(worker("bye", heartbeat_age=30), offline_at=NOW - 29),
    ]
    evaluation = evaluate(facts(workers=workers), SETTINGS, open_alerts)
    assert evaluation.notes["worker:back"] == "heartbeats again"
    assert "shut down cleanly" in evaluation.notes["worker:bye"]
    assert "no longer" in evaluation.notes["worker:gone"]

    # Right after a restart the store has not heard everyone yet: hold, do not resolve.
    fresh = evaluate(facts(workers=workers, watching_since=NOW - 5), SETTINGS, open_alerts)
    assert "worker:gone" in fresh.held


# -- the event stream ----------------------------------------------------------------------------
def test_stream_silent_only_while_workers_were_expected() -> None:
    health = StreamHealth(last_event_at=NOW - 200)
    alive_then = [Worker("w1", freq=2.0, last_heartbeat=NOW - 201)]
    condition = stream_condition(
        health, alive_then, silence_after=120, watching_since=NOW - 3600, now=NOW
    )
    assert condition is not None and condition.key == STREAM_SILENT_KEY
    assert condition.figures.silent_for == 200  # type: ignore[union-attr]

    # Every worker said goodbye: a quiet stream is expected.
    gone = [dataclasses.replace(alive_then[0], offline_at=NOW - 200)]
    assert stream_condition(health, gone, silence_after=120, watching_since=0, now=NOW) is None
    assert stream_condition(health, [], silence_after=120, watching_since=0, now=NOW) is None
    fresh = StreamHealth(last_event_at=NOW - 10)
    assert stream_condition(fresh, alive_then, silence_after=120, watching_since=0,
                            now=NOW) is None  # fmt: skip


def test_a_blind_store_holds_worker_stuck_and_failure_alerts() -> None:
    # The consumer lost the broker: every worker looks expired and failures age out.
    health = StreamHealth(last_event_at=NOW - 30, broker="redis://x/0", connected=False)
    opened = {"failures:app.pay": NOW - 60, "stuck:t": NOW - 60, "worker:w1": NOW - 60}
    evaluation = evaluate(
        facts(health=health, workers=[worker("w1", 30), worker("w2", 30)]), SETTINGS, opened
    )
    assert evaluation.blind
    assert not [k for k in evaluation.conditions if not k.startswith(BACKLOG)]
    assert evaluation.held == frozenset(opened)


def test_failure_alerts_from_before_a_restart_wait_a_whole_window() -> None:
    opened = {"failures:app.pay": NOW - 1000}
    young = evaluate(facts(watching_since=NOW - 60), SETTINGS, opened)
    assert "failures:app.pay" in young.held
    old = evaluate(facts(watching_since=NOW - 400), SETTINGS, opened)
    assert "under the threshold" in old.notes["failures:app.pay"]


def test_stuck_task_that_finished_resolves_with_its_state() -> None:
    done = Task(uuid="t", name="app.slow", state=SUCCESS, finished=NOW - 1)
    evaluation = evaluate(facts(tasks={"t": done}), SETTINGS, {"stuck:t": NOW - 60})
    assert evaluation.notes["stuck:t"] == "the task is now SUCCESS"


# -- debouncing ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "old", "new", "expected"),
    [
        ("backlog", {"length": 100}, {"length": 110}, None),
        ("backlog", {"length": 100}, {"length": 125}, "grew"),
        ("backlog", {"length": 100}, {"length": 70}, "shrank"),
        ("failures", {"count": 10, "exceptions": [{"type": "A"}]},
         {"count": 12, "exceptions": [{"type": "A"}]}, None),
        ("failures", {"count": 10, "exceptions": [{"type": "A"}]},
         {"count": 15, "exceptions": [{"type": "A"}]}, "more"),
        ("failures", {"count": 10, "exceptions": [{"type": "A"}]},
         {"count": 10, "exceptions": [{"type": "A"}, {"type": "B"}]}, "new_exception"),
        # A new group of a type already reported is news too; the same groups are not.
        ("failures", {"count": 10, "exceptions": [{"type": "A", "key": "k1"}]},
         {"count": 10, "exceptions": [{"type": "A", "key": "k1"}, {"type": "A", "key": "k2"}]},
         "new_exception"),
        ("failures", {"count": 10, "exceptions": [{"type": "A", "key": "k1"}]},
         {"count": 11, "exceptions": [{"type": "A", "key": "k1"}]}, None),
        ("stuck", {"runtime": 600}, {"runtime": 1100}, None),
        ("stuck", {"runtime": 600}, {"runtime": 1200}, "longer"),
        ("worker", {"last_heartbeat": 1}, {"last_heartbeat": 1}, None),
        ("stream", {"silent_for": 200, "consumer_connected": True},
         {"silent_for": 250, "consumer_connected": False}, "consumer"),
    ],
)  # fmt: skip
def test_significant_change(
    kind: str, old: dict[str, Any], new: dict[str, Any], expected: str | None
) -> None:
    assert significant_change(kind, old, new) == expected
