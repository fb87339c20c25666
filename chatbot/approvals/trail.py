"""One audit line per step of an approval (request, decision, outcome, confirmation).

The approval's action, targets and parameters are filled in from the record, and a request's
preview carries the store's redacted args, never the raw ones. Recording never raises: the
audit must not undo or block what it records.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from chatbot.approvals.action import TaskPreview
from chatbot.approvals.records import Approval
from chatbot.audit import AuditEntry, AuditLog

__all__ = ["AuditTrail"]

logger = logging.getLogger(__name__)


class AuditTrail:
    """Writes approval steps to an :class:`~chatbot.audit.AuditLog`."""

    def __init__(self, audit: AuditLog, clock: Callable[[], float], cluster: str = "") -> None:
        self.audit = audit
        self.clock = clock
        self.cluster = cluster

    def record(
        self,
        step: str,
        who: str,
        action: str,
        result: str,
        approval: Approval | None,
        *,
        approval_id: str | None = None,
        targets: Sequence[str] = (),
        channel: str = "",
        reason: str = "",
        details: Mapping[str, Any] | None = None,
    ) -> None:
        parameters: Mapping[str, Any] = {}
        cluster = approval.cluster if approval is not None else self.cluster
        if approval is not None:
            act = approval.action
            targets = act.targets
            parameters = {**act.parameters, **({"worker": act.worker} if act.worker else {})}
            if act.selector:
                parameters = {**parameters, "selector": act.selector}
            channel = channel or approval.channel
            approval_id = approval.id
            if step == "request" and act.preview:
                # What the requester saw: the store's redacted args, never the raw ones.
                details = {**(details or {}), "preview": [_audit_preview(p) for p in act.preview]}
        entry = AuditEntry(
            step=step,
            who=who,
            action=action,
            result=result,
            time=self.clock(),
            approval_id=approval_id,
            targets=tuple(targets),
            parameters=parameters,
            channel=channel,
            reason=reason,
            details=details or {},
            cluster=cluster,
        )
        try:
            self.audit.record(entry)
        except Exception:  # the audit must not undo or block what it records
            logger.exception("audit record failed for %s %s", step, approval_id)


def _audit_preview(task: TaskPreview) -> dict[str, Any]:
    return {
        "uuid": task.uuid,
        "name": task.name,
        "state": task.state,
        "worker": task.worker,
        "args": task.args,
        "kwargs": task.kwargs,
    }
