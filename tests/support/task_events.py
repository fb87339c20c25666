"""Celery events as the store receives them, for the store's tests (memory and Redis alike)."""

from __future__ import annotations

import itertools
from typing import Any, Protocol

T0 = 1_700_000_000.0
_ids = itertools.count()

__all__ = [
    "T0",
    "Clock",
    "failed",
    "new_id",
    "received",
    "run_task",
    "started",
    "succeeded",
]


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Applies(Protocol):
    def apply(self, events: list[dict[str, Any]]) -> int: ...


def new_id() -> str:
    return f"{next(_ids):08x}-0000-4000-8000-000000000000"


def received(uuid: str, ts: float, name: str = "proj.add", **extra: Any) -> dict[str, Any]:
    event = {
        "type": "task-received",
        "uuid": uuid,
        "name": name,
        "args": "(1, 2)",
        "kwargs": "{}",
        "retries": 0,
        "hostname": "w1@host",
        "timestamp": ts,
        "local_received": ts,
    }
    event.update(extra)
    return event


def started(uuid: str, ts: float, hostname: str = "w1@host") -> dict[str, Any]:
    return {"type": "task-started", "uuid": uuid, "hostname": hostname, "timestamp": ts}


def succeeded(uuid: str, ts: float, runtime: float = 0.5) -> dict[str, Any]:
    return {
        "type": "task-succeeded",
        "uuid": uuid,
        "result": "3",
        "runtime": runtime,
        "hostname": "w1@host",
        "timestamp": ts,
    }


def failed(uuid: str, ts: float, exc: str = "ValueError('boom')") -> dict[str, Any]:
    return {
        "type": "task-failed",
        "uuid": uuid,
        "exception": exc,
        "traceback": 'Traceback (most recent call last):\n  File "t.py", line 1\nValueError: boom',
        "hostname": "w1@host",
        "timestamp": ts,
    }


def run_task(store: Applies, ts: float, outcome: str = "ok", name: str = "proj.add") -> str:
    """One task received, started and finished (``ok``: succeeded, else failed); its id."""
    uuid = new_id()
    finish = succeeded(uuid, ts + 2) if outcome == "ok" else failed(uuid, ts + 2)
    store.apply([received(uuid, ts, name=name), started(uuid, ts + 1), finish])
    return uuid
