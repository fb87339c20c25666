"""Fleet values as they read back from Redis: task and worker records, /metrics counters.

An unreadable record is skipped with a warning, never raised: one bad value must not take a
listing down.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from chatbot.model import FleetCounters, RuntimeHistogram, Task, Worker
from chatbot.store.codec import decode, task_from_dict, worker_from_dict
from chatbot.store.redis.connection import text
from chatbot.store.redis.keys import FIELD_SEP

__all__ = [
    "CONSUMER_FIELDS",
    "decode_counters", "decode_task", "decode_tasks", "decode_worker", "label_field",
]

log = logging.getLogger(__name__)

# The event consumer's half of the stream's health: the writer publishes it apart, with a short
# expiry (``Keys.live``), so a dead writer's connection stops showing as connected.
CONSUMER_FIELDS = (
    "connected",
    "broker",
    "reconnects",
    "disconnects_by_server",
    "last_error",
    "lag_events",
    "intake_restarts",
    "intake_problem",
    "events_dropped",
    "last_loss_at",
)


def decode_task(raw: str | bytes) -> Task | None:
    try:
        return task_from_dict(decode(raw))
    except (ValueError, TypeError, KeyError, AttributeError):
        log.warning("Skipping an unreadable task record in Redis")
        return None


def decode_tasks(raws: Sequence[str | bytes]) -> list[Task]:
    found: list[Task] = []
    for raw in raws:
        task = decode_task(raw)
        if task is not None:
            found.append(task)
    return found


def label_field(key: tuple[str, ...]) -> str:
    return FIELD_SEP.join(key)


def decode_counters(
    raw_events: Mapping[Any, Any], raw_runtimes: Mapping[Any, Any], raw_dropped: Any
) -> FleetCounters:
    counters = FleetCounters()
    for field, value in raw_events.items():
        parts = text(field).split(FIELD_SEP)
        if len(parts) == 3:
            counters.events[(parts[0], parts[1], parts[2])] = int(value)
    for field, value in raw_runtimes.items():
        parts = text(field).split(FIELD_SEP)
        try:
            buckets, total, count = json.loads(value)
        except (ValueError, TypeError):
            continue
        if len(parts) == 2:
            counters.runtimes[(parts[0], parts[1])] = RuntimeHistogram(
                [int(b) for b in buckets], float(total), int(count)
            )
    with contextlib.suppress(TypeError, ValueError):
        counters.labels_dropped = int(raw_dropped or 0)
    return counters


def decode_worker(raw: str | bytes) -> Worker | None:
    try:
        return worker_from_dict(json.loads(raw))
    except (ValueError, TypeError, KeyError, AttributeError):
        log.warning("Skipping an unreadable worker record in Redis")
        return None
