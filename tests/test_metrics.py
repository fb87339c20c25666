"""/metrics: valid Prometheus text with Flower's names and our queue and health metrics,
rendered by prometheus_client from the fleet collector on a private registry."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from chatbot.metrics import fleet_registry, read_fleet
from chatbot.store.memory import MemoryStore

T0 = 1_700_000_000.0


@dataclass(frozen=True)
class Queue:
    name: str
    messages: int | None


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
            queues=[Queue("celery", 12), Queue("io", None)],
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
