"""The store: the narrow interface between the picture of the fleet and everything reading it.

Commands, control, approvals and alerts only see :class:`FleetStore`. Two backends implement it:
``memory://`` (:mod:`chatbot.store.memory`, the default) and ``redis://`` (shared and durable).
Everything a backend hands out is a snapshot; everything it takes is plain data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from chatbot.model import (
    FailureSummary,
    FleetCounters,
    RuntimeStats,
    StreamHealth,
    Task,
    Worker,
)


@runtime_checkable
class FleetStore(Protocol):
    """Tasks and workers, fed one Celery event at a time (applied in batches)."""

    # -- writing -------------------------------------------------------------
    def apply(self, events: Iterable[Mapping[str, Any]]) -> int:
        """Apply Celery events in arrival order; returns how many were applied.

        Malformed events are counted in ``health().malformed`` and dropped, never raised.
        """
        ...

    def update_worker_info(
        self,
        hostname: str,
        *,
        pool: str | None = None,
        concurrency: int | None = None,
        queues: Sequence[str] | None = None,
    ) -> None:
        """Facts about a worker learned from ``inspect`` (events do not carry them)."""
        ...

    # -- reading -------------------------------------------------------------
    def get_task(self, uuid: str) -> Task | None: ...

    def find_task_ids(self, prefix: str, limit: int = 2) -> list[str]:
        """Ids starting with ``prefix`` (at most ``limit``), to resolve a unique prefix."""
        ...

    def tasks(
        self,
        *,
        state: str | None = None,
        name: str | None = None,
        worker: str | None = None,
        since: float | None = None,
        limit: int = 50,
    ) -> list[Task]:
        """Newest first (by the time of the task's latest transition)."""
        ...

    def count_tasks(
        self, *, state: str | None = None, name: str | None = None, worker: str | None = None
    ) -> int: ...

    def active(self, worker: str | None = None) -> list[Task]:
        """Running tasks, longest-running first."""
        ...

    def failure_counts(self, window: float, now: float) -> dict[str, int]:
        """Failures per task name whose failure time lies within ``window`` seconds of ``now``."""
        ...

    def recent_failures(self, name: str | None, window: float, now: float) -> list[Task]:
        """Failures (of one name, or all) within the window, newest first."""
        ...

    def failure_summary(
        self, name: str | None, window: float, now: float, limit: int
    ) -> FailureSummary:
        """Failures (of one name, or all) within the window: counts by exception type and by
        name over all of them, and the newest ``limit`` as records."""
        ...

    def runtime_stats(self, name: str) -> RuntimeStats | None: ...

    def task_names(self) -> list[str]:
        """Task names seen recently (bounded), sorted."""
        ...

    def counts_by_state(self) -> dict[str, int]: ...

    def workers(self) -> list[Worker]: ...

    def get_worker(self, hostname: str) -> Worker | None: ...

    def health(self) -> StreamHealth: ...

    def fleet_counters(self) -> FleetCounters:
        """Event counts and runtime histograms as of now (copies), for /metrics."""
        ...

    def __len__(self) -> int: ...


@runtime_checkable
class RecordStore(Protocol):
    """Small JSON documents by kind and key: pending approvals, open alerts, silences.

    ``transition`` is the one atomic primitive: it is what makes an approval decided exactly
    once, also across replicas sharing a Redis backend.
    """

    def get(self, kind: str, key: str) -> dict[str, Any] | None: ...

    def put(self, kind: str, key: str, value: Mapping[str, Any], ttl: float | None = None) -> None:
        """Create or replace; ``ttl`` seconds until it disappears (None: kept)."""
        ...

    def create(
        self, kind: str, key: str, value: Mapping[str, Any], ttl: float | None = None
    ) -> bool:
        """Store only if absent; True when stored."""
        ...

    def transition(
        self, kind: str, key: str, field: str, expected: Any, updates: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """Atomically: if the record exists and ``record[field] == expected``, merge ``updates``
        into it and return the new record; otherwise change nothing and return None."""
        ...

    def delete(self, kind: str, key: str) -> bool: ...

    def list(self, kind: str) -> list[dict[str, Any]]: ...
