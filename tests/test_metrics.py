"""/metrics: valid Prometheus text with Flower's names and our queue and health metrics,
rendered by prometheus_client from the fleet collector on a private registry."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from chatbot.broker import QueueLength
from chatbot.metrics import FleetCollector, FleetReading, fleet_registry, read_fleet
from chatbot.slack.metrics import SlackMetrics
from chatbot.store.memory import MemoryStore

T0 = 1_700_000_000.0


def families(text: str) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    found: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        found[family.name] = [(s.name, s.labels, s.value) for s in family.samples]
    return found


def test_metrics_are_valid_prometheus_text_with_flower_names() -> None:
    store = MemoryStore(clock=lambda: T0 + 3)
    store.apply(
        [
            {"type": "worker-heartbeat", "hostname": "w1@h", "active": 2, "freq": 2.0,
             "local_received": T0},
            {"type": "worker-heartbeat", "hostname": "dead@h", "active": 0, "freq": 2.0,
             "local_received": T0 - 100},
            {"type": "task-received", "uuid": "a", "name": "proj.add", "hostname": "w1@h",
             "timestamp": T0, "local_received": T0},
            {"type": "task-succeeded", "uuid": "a", "runtime": 0.3, "hostname": "w1@h",
             "timestamp": T0 + 1, "local_received": T0},
            {"type": "task-received", "uuid": "b", "name": 'we"ird\nname', "hostname": "w1@h",
             "timestamp": T0, "local_received": T0},
        ]
    )
    registry = fleet_registry(
        lambda: read_fleet(
            store,
            stream=store.health(),
            queues=[QueueLength("celery", 12), QueueLength("io", None)],
            now=T0 + 3,
            extra=[{"slack_errors": {"not_in_channel": 2}}],
        )
    )
    text = generate_latest(registry).decode()
    parsed = families(text)
    events = {(s[1]["worker"], s[1]["type"], s[1]["task"]): s[2] for s in parsed["flower_events"]}
    assert events[("w1@h", "task-succeeded", "proj.add")] == 1
    assert events[("w1@h", "task-received", 'we"ird\nname')] == 1
    buckets = {
        s[1]["le"]: s[2]
        for s in parsed["flower_task_runtime_seconds"]
        if s[0].endswith("_bucket")
    }
    assert buckets["0.25"] == 0 and buckets["0.5"] == 1 and buckets["+Inf"] == 1
    online = {s[1]["worker"]: s[2] for s in parsed["flower_worker_online"]}
    assert online == {"w1@h": 1, "dead@h": 0}  # expiry-based: the silent worker is offline
    running = {s[1]["worker"]: s[2] for s in
               parsed["flower_worker_number_of_currently_executing_tasks"]}
    assert running == {"w1@h": 2, "dead@h": 0}
    assert [(s[1], s[2]) for s in parsed["celery_chatops_queue_length"]] == [
        ({"queue": "celery"}, 12)
    ]
    assert [s[1] for s in parsed["celery_chatops_queue_length_unknown"]] == [{"queue": "io"}]
    assert parsed["celery_chatops_events_ingested"][0][2] == 5
    assert parsed["celery_chatops_slack_errors"][0][1] == {"code": "not_in_channel"}
    assert parsed["celery_chatops_last_event_age_seconds"][0][2] == 3


def test_the_fleet_collector_owns_its_names_and_shares_a_registry_with_slack_counters() -> None:
    store = MemoryStore(clock=lambda: T0)
    store.apply(
        [
            {"type": "task-received", "uuid": "a", "name": "proj.add", "hostname": "w1@h",
             "timestamp": T0, "local_received": T0},
            {"type": "task-succeeded", "uuid": "a", "runtime": 12.0, "hostname": "w1@h",
             "timestamp": T0 + 1, "local_received": T0},
        ]
    )

    def reading() -> FleetReading:
        return read_fleet(store, stream=store.health(), now=T0)

    registry = fleet_registry(reading)
    # describe() names every family, so a second owner of any of them is refused...
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(FleetCollector(reading))
    # ...while the Slack face's counters, whose names differ, fit on the same registry.
    slack = SlackMetrics(registry)
    slack.command("status", "ack", "ok")
    parsed = families(generate_latest(registry).decode())
    assert parsed["chatops_slack_commands"][0][1:] == (
        {"command": "status", "answer": "ack", "outcome": "ok"}, 1
    )
    runtime = {
        (s[0], s[1].get("le")): s[2] for s in parsed["flower_task_runtime_seconds"]
    }
    # 12 s is past the last bound (10 s): only +Inf counts it; count and sum as Flower's.
    assert runtime[("flower_task_runtime_seconds_bucket", "10.0")] == 0
    assert runtime[("flower_task_runtime_seconds_bucket", "+Inf")] == 1
    assert runtime[("flower_task_runtime_seconds_count", None)] == 1
    assert runtime[("flower_task_runtime_seconds_sum", None)] == 12.0
    # No event yet seen by the stream: no age sample, as before.
    empty = MemoryStore()
    text = generate_latest(
        fleet_registry(lambda: read_fleet(empty, stream=empty.health(), now=T0))
    ).decode()
    assert "celery_chatops_last_event_age_seconds" not in families(text)
    assert "celery_chatops_events_ingested" in families(text)


def test_label_sets_are_bounded_by_folding_the_least_active_task_names_into_other() -> None:
    # Issue 12: the exposition's size follows the number of samples, so task names beyond
    # the most active keep no series of their own; their counts are summed, never dropped.
    store = MemoryStore(clock=lambda: T0)
    events: list[dict[str, object]] = []
    for i in range(6):
        name = f"proj.t{i}"
        for n in range(6 - i):  # proj.t0 is the most active, proj.t5 the least
            uuid = f"{name}-{n}"
            worker = f"w{n % 2}@h"
            events += [
                {"type": "task-received", "uuid": uuid, "name": name, "hostname": worker,
                 "timestamp": T0, "local_received": T0},
                {"type": "task-succeeded", "uuid": uuid, "runtime": 0.02 * (i + 1),
                 "hostname": worker, "timestamp": T0 + 1, "local_received": T0},
            ]
    store.apply(events)
    registry = fleet_registry(
        lambda: read_fleet(store, stream=store.health(), now=T0), max_task_names=2
    )
    parsed = families(generate_latest(registry).decode())
    counted: dict[tuple[str, str, str], float] = {
        (s[1]["worker"], s[1]["type"], s[1]["task"]): s[2] for s in parsed["flower_events"]
    }
    assert {task for _, _, task in counted} == {"proj.t0", "proj.t1", "other"}
    # per worker and type, "other" is the sum of the folded names' events
    assert counted[("w0@h", "task-succeeded", "other")] == 2 + 2 + 1 + 1  # t2..t5 on w0
    assert counted[("w1@h", "task-received", "other")] == 2 + 1 + 1  # t2..t4 on w1
    assert counted[("w0@h", "task-succeeded", "proj.t0")] == 3
    assert sum(counted.values()) == len(events)  # nothing dropped
    # runtimes: one histogram per kept name and one for the rest, summed over workers
    counts = {
        s[1]["task"]: s[2]
        for s in parsed["flower_task_runtime_seconds"]
        if s[0] == "flower_task_runtime_seconds_count"
    }
    assert counts == {"proj.t0": 6, "proj.t1": 5, "other": 4 + 3 + 2 + 1}
    sums = {
        s[1]["task"]: s[2]
        for s in parsed["flower_task_runtime_seconds"]
        if s[0] == "flower_task_runtime_seconds_sum"
    }
    assert sums["other"] == pytest.approx(0.06 * 4 + 0.08 * 3 + 0.10 * 2 + 0.12)
    buckets = {
        s[1]["le"]: s[2]
        for s in parsed["flower_task_runtime_seconds"]
        if s[0].endswith("_bucket") and s[1]["task"] == "other"
    }
    assert buckets["0.075"] == 4 and buckets["0.1"] == 4 + 3 + 2 and buckets["+Inf"] == 10


def test_intake_health_is_on_metrics() -> None:
    store = MemoryStore(clock=lambda: T0)
    stream = store.health()
    stream.intake_restarts = 2
    stream.intake_problem = "the event applier is not running"
    stream.malformed_by_reason = {"not_json": 3, "bad_timestamp": 1}
    registry = fleet_registry(lambda: read_fleet(store, stream=stream, queues=[], now=T0))
    parsed = families(generate_latest(registry).decode())
    assert parsed["celery_chatops_intake_restarts"][0][2] == 2
    assert parsed["celery_chatops_intake_healthy"][0][2] == 0
    by_reason = {s[1]["reason"]: s[2] for s in parsed["celery_chatops_events_dropped_by_reason"]}
    assert by_reason == {"not_json": 3, "bad_timestamp": 1}
