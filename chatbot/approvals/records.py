"""What became of a control request: the stored :class:`Approval` record, the workers' answers
(:class:`ActionOutcome`), a revoke's confirmation and what one click did (:class:`DecisionOutcome`).

All of it is plain data that round-trips through the :class:`~chatbot.store.RecordStore` as
JSON (``as_record`` / ``from_record``), so replicas sharing Redis read the same request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from chatbot.approvals.action import ControlAction
from chatbot.control import ControlResult
from chatbot.render import Message

__all__ = [
    "APPROVED",
    "DENIED",
    "DIRECT",
    "EXPIRED",
    "PENDING",
    "ActionOutcome",
    "Approval",
    "DecisionOutcome",
    "ReplySummary",
    "RevokeConfirmation",
]

# Statuses. ``direct``: no approval was required; it ran when the operator asked.
PENDING = "pending"
APPROVED = "approved"
DENIED = "denied"
EXPIRED = "expired"
DIRECT = "direct"


# -- what happened ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ReplySummary:
    """One worker's answer as kept in the record: ``ok``, ``error``, ``no_reply`` or ``sent``."""

    worker: str
    status: str
    message: str


@dataclass(frozen=True)
class ActionOutcome:
    command: str
    executed_at: float
    replies: tuple[ReplySummary, ...] = ()
    error: str | None = None  # the broker (not a worker) failed, or nothing could be sent

    @property
    def ok_count(self) -> int:
        return sum(1 for r in self.replies if r.status in ("ok", "sent"))

    @property
    def error_count(self) -> int:
        return sum(1 for r in self.replies if r.status == "error")

    @property
    def no_reply_count(self) -> int:
        return sum(1 for r in self.replies if r.status == "no_reply")

    @property
    def result(self) -> str:
        """One word for the audit: ok, partial, error, no_reply, not_sent."""
        if self.error is not None:
            return "not_sent" if not self.replies or self.no_reply_count else "error"
        if not self.replies:
            return "no_reply"
        if self.ok_count == len(self.replies):
            return "ok"
        if self.ok_count:
            return "partial"
        return "error" if self.error_count else "no_reply"

    def line(self) -> str:
        if self.error is not None:
            return f"not done: {self.error}"
        parts = [f"{self.ok_count} ok"]
        if self.error_count:
            parts.append(f"{self.error_count} error")
        if self.no_reply_count:
            parts.append(f"{self.no_reply_count} no reply")
        return "workers answered: " + ", ".join(parts)

    @classmethod
    def of(cls, result: ControlResult, executed_at: float) -> ActionOutcome:
        replies = tuple(
            ReplySummary(reply.worker, reply.status, reply.message or reply.status)
            for reply in sorted(result.replies.values(), key=lambda r: r.worker)
        )
        return cls(result.command, executed_at, replies, result.error)

    def as_dict(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "executed_at": self.executed_at,
            "replies": [
                {"worker": r.worker, "status": r.status, "message": r.message} for r in self.replies
            ],
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ActionOutcome:
        return cls(
            command=str(data.get("command") or ""),
            executed_at=float(data.get("executed_at") or 0.0),
            replies=tuple(
                ReplySummary(str(r["worker"]), str(r["status"]), str(r.get("message") or ""))
                for r in data.get("replies") or ()
            ),
            error=data.get("error"),
        )


@dataclass(frozen=True)
class RevokeConfirmation:
    """Whether ``task-revoked`` events reached the store for the revoked ids.

    ``status``: ``checking`` (the wait is running), ``confirmed`` (every id), ``partial``,
    ``unconfirmed`` (none within the wait). ``finished`` are ids that had already ended in
    another state (nothing left to revoke).
    """

    status: str
    revoked: tuple[str, ...] = ()
    finished: tuple[tuple[str, str], ...] = ()
    waiting: tuple[str, ...] = ()
    checked_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "revoked": list(self.revoked),
            "finished": [list(item) for item in self.finished],
            "waiting": list(self.waiting),
            "checked_at": self.checked_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RevokeConfirmation:
        return cls(
            status=str(data.get("status") or "unconfirmed"),
            revoked=tuple(data.get("revoked") or ()),
            finished=tuple((str(a), str(b)) for a, b in data.get("finished") or ()),
            waiting=tuple(data.get("waiting") or ()),
            checked_at=data.get("checked_at"),
        )


@dataclass(frozen=True)
class Approval:
    """A control request and everything that became of it (what the card shows)."""

    id: str
    status: str
    action: ControlAction
    requester: str
    channel: str
    requested_at: float
    expires_at: float
    decided_by: str | None = None
    decided_at: float | None = None
    outcome: ActionOutcome | None = None
    confirmation: RevokeConfirmation | None = None
    message_channel: str | None = None
    message_ts: str | None = None
    # The cluster whose control app runs the action ("" when the bot has one cluster).
    cluster: str = ""

    @property
    def pending(self) -> bool:
        return self.status == PENDING

    @property
    def cancelled(self) -> bool:
        """Denied by the person who asked: a cancel."""
        return self.status == DENIED and self.decided_by == self.requester

    def as_record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "action": self.action.as_dict(),
            "requester": self.requester,
            "channel": self.channel,
            "requested_at": self.requested_at,
            "expires_at": self.expires_at,
            "decided_by": self.decided_by,
            "decided_at": self.decided_at,
            "outcome": self.outcome.as_dict() if self.outcome else None,
            "confirmation": self.confirmation.as_dict() if self.confirmation else None,
            "message_channel": self.message_channel,
            "message_ts": self.message_ts,
            "cluster": self.cluster,
        }

    @classmethod
    def from_record(cls, data: Mapping[str, Any]) -> Approval:
        outcome = data.get("outcome")
        confirmation = data.get("confirmation")
        return cls(
            id=str(data["id"]),
            status=str(data["status"]),
            action=ControlAction.from_dict(data["action"]),
            requester=str(data.get("requester") or ""),
            channel=str(data.get("channel") or ""),
            requested_at=float(data.get("requested_at") or 0.0),
            expires_at=float(data.get("expires_at") or 0.0),
            decided_by=data.get("decided_by"),
            decided_at=data.get("decided_at"),
            outcome=ActionOutcome.from_dict(outcome) if outcome else None,
            confirmation=RevokeConfirmation.from_dict(confirmation) if confirmation else None,
            message_channel=data.get("message_channel"),
            message_ts=data.get("message_ts"),
            cluster=str(data.get("cluster") or ""),
        )


@dataclass(frozen=True)
class DecisionOutcome:
    """What a click did.

    ``result``: ``approved`` (this click ran the action), ``denied`` (denied or cancelled),
    ``refused`` (this clicker may not; the request stays open), ``expired`` (too late; it is
    now marked expired), ``already_decided`` (someone decided first; nothing ran),
    ``unknown`` (no such request any more), ``unavailable`` (the state store could not be
    reached before anything ran; nothing was sent, the click may be retried).
    ``notice`` is one line for the clicker alone (ephemeral). ``card`` is the message that
    replaces the request in place, or None to leave it as it is.
    """

    result: str
    notice: str
    approval: Approval | None = None
    card: Message | None = None

    @property
    def needs_confirmation(self) -> bool:
        """A revoke ran: call :meth:`ApprovalService.confirm_revoke` off the request thread."""
        approval = self.approval
        return (
            self.result == "approved"
            and approval is not None
            and approval.action.kind == "revoke"
            and approval.outcome is not None
            and approval.outcome.error is None
        )
