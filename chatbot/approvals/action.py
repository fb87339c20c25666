"""What a control action is: its kind, targets and parameters, and the tasks a card previews.

Built (and validated) by the commands; stored inside an approval record as plain data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from chatbot.approvals.kinds import KINDS
from chatbot.control import ControlResult, validate_rate, validate_signal
from chatbot.control_port import ControlPort
from chatbot.model import Task
from chatbot.retry import RetryPlan, RetryRefusal
from chatbot.store import FleetStore

__all__ = ["PREVIEW_LIMIT", "ControlAction", "TaskPreview"]

# Task rows shown on a card; a bulk revoke says how many more there are.
PREVIEW_LIMIT = 10


# -- what is asked for ------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskPreview:
    """A revoke target as the store knew it when the request was made (args are redacted)."""

    uuid: str
    name: str | None = None
    state: str | None = None
    args: str | None = None
    kwargs: str | None = None
    worker: str | None = None
    runtime: float | None = None
    started: float | None = None

    @classmethod
    def of(cls, task: Task, now: float) -> TaskPreview:
        return cls(
            uuid=task.uuid,
            name=task.name,
            state=task.state,
            args=task.args,
            kwargs=task.kwargs,
            worker=task.worker,
            runtime=task.runtime_so_far(now),
            started=task.started,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "name": self.name,
            "state": self.state,
            "args": self.args,
            "kwargs": self.kwargs,
            "worker": self.worker,
            "runtime": self.runtime,
            "started": self.started,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskPreview:
        return cls(**{key: data.get(key) for key in cls.__dataclass_fields__})  # type: ignore[arg-type]


@dataclass(frozen=True)
class ControlAction:
    """One control action: its kind, targets, parameters and what the card previews.

    ``targets`` are task ids for ``revoke``, the worker for pool/autoscale/shutdown, the task
    name for rate/time limits and the queue for consumers; ``worker`` narrows those last
    ones to one worker (None: every worker).
    """

    kind: str
    targets: tuple[str, ...]
    worker: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    preview: tuple[TaskPreview, ...] = ()
    # How bulk targets were chosen ("name fleet.hang, state STARTED"); empty when listed.
    selector: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown control action {self.kind!r}")
        if not self.targets:
            raise ValueError(f"{self.kind} needs at least one target")

    @property
    def command(self) -> str:
        """The /celery subcommand, as named in CHATOPS_APPROVAL_REQUIRED."""
        return KINDS[self.kind].command

    @property
    def terminate(self) -> bool:
        return self.kind == "revoke" and bool(self.parameters.get("terminate"))

    @property
    def hidden_targets(self) -> int:
        """Targets the card does not list one by one."""
        listed = self.kind in ("revoke", "retry")
        return max(0, len(self.targets) - len(self.preview)) if listed else 0

    def summary(self) -> str:
        """One plain line for notices and logs (not escaped: templates escape it)."""
        return KINDS[self.kind].summary(self)

    def send(self, control: ControlPort, expected: Sequence[str]) -> ControlResult:
        """Send this action to the workers through ``control`` (see :data:`KINDS`)."""
        return KINDS[self.kind].send(control, self, expected)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "targets": list(self.targets),
            "worker": self.worker,
            "parameters": dict(self.parameters),
            "preview": [item.as_dict() for item in self.preview],
            "selector": self.selector,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ControlAction:
        return cls(
            kind=str(data["kind"]),
            targets=tuple(str(t) for t in data.get("targets") or ()),
            worker=data.get("worker"),
            parameters=dict(data.get("parameters") or {}),
            preview=tuple(TaskPreview.from_dict(p) for p in data.get("preview") or ()),
            selector=str(data.get("selector") or ""),
        )

    # -- builders (values validated here too: a bad action never reaches the store) --------
    @classmethod
    def revoke(
        cls,
        task_ids: Iterable[str],
        *,
        store: FleetStore,
        now: float,
        terminate: bool = False,
        signal: str = "SIGTERM",
        selector: str = "",
        preview_limit: int = PREVIEW_LIMIT,
    ) -> ControlAction:
        ids = tuple(dict.fromkeys(t for t in task_ids if t))
        preview: list[TaskPreview] = []
        for task_id in ids[: max(0, preview_limit)]:
            task = store.get_task(task_id)
            preview.append(TaskPreview.of(task, now) if task else TaskPreview(uuid=task_id))
        return cls(
            kind="revoke",
            targets=ids,
            parameters={"terminate": bool(terminate), "signal": validate_signal(signal)},
            preview=tuple(preview),
            selector=selector,
        )

    @classmethod
    def retry(
        cls,
        plans: Sequence[RetryPlan],
        *,
        store: FleetStore,
        now: float,
        refused: Sequence[RetryRefusal] = (),
        selector: str = "",
        preview_limit: int = PREVIEW_LIMIT,
    ) -> ControlAction:
        """Re-send ``plans``; the card lists them (and, apart, the ``refused`` ones)."""
        unique = list({plan.task_id: plan for plan in plans}.values())
        preview: list[TaskPreview] = []
        for plan in unique[: max(0, preview_limit)]:
            task = store.get_task(plan.task_id)
            preview.append(
                TaskPreview.of(task, now)
                if task
                else TaskPreview(
                    plan.task_id, plan.name, args=plan.args_repr, kwargs=plan.kwargs_repr
                )
            )
        return cls(
            kind="retry",
            targets=tuple(plan.task_id for plan in unique),
            parameters={
                "tasks": [plan.as_dict() for plan in unique],
                # Shown on the card, so the approver sees what will not be re-sent too.
                "refused": [
                    {"id": r.task_id, "name": r.name, "reason": r.reason}
                    for r in refused[:preview_limit]
                ],
                "refused_count": len(refused),
            },
            preview=tuple(preview),
            selector=selector,
        )

    @classmethod
    def pool(cls, worker: str, *, grow: bool, n: int = 1) -> ControlAction:
        if n < 1:
            raise ValueError("N must be at least 1")
        return cls(
            kind="pool_grow" if grow else "pool_shrink",
            targets=(worker,),
            worker=worker,
            parameters={"n": int(n)},
        )

    @classmethod
    def autoscale(cls, worker: str, *, max: int, min: int) -> ControlAction:
        if min > max:
            raise ValueError(f"MAX ({max}) must not be below MIN ({min})")
        return cls(
            kind="autoscale",
            targets=(worker,),
            worker=worker,
            parameters={"max": int(max), "min": int(min)},
        )

    @classmethod
    def rate_limit(cls, task_name: str, rate: str, worker: str | None = None) -> ControlAction:
        return cls(
            kind="rate_limit",
            targets=(task_name,),
            worker=worker,
            parameters={"rate": validate_rate(rate)},
        )

    @classmethod
    def time_limit(
        cls, task_name: str, soft: float, hard: float, worker: str | None = None
    ) -> ControlAction:
        if soft > hard:
            raise ValueError(f"SOFT ({soft:g}s) must not exceed HARD ({hard:g}s)")
        return cls(
            kind="time_limit",
            targets=(task_name,),
            worker=worker,
            parameters={"soft": float(soft), "hard": float(hard)},
        )

    @classmethod
    def consumer(cls, queue: str, *, add: bool, worker: str | None = None) -> ControlAction:
        return cls(
            kind="add_consumer" if add else "cancel_consumer", targets=(queue,), worker=worker
        )

    @classmethod
    def shutdown(cls, worker: str) -> ControlAction:
        return cls(kind="shutdown", targets=(worker,), worker=worker)
