"""The approval state machine: request, decide once, execute once, report, confirm.

A control action that destroys work (``settings.approval_required``: revoke and shutdown by
default) is stored as a pending :class:`Approval` in the :class:`~chatbot.store.RecordStore`
and shown as a card with Approve and Deny buttons. Each click goes to
:meth:`ApprovalService.decide`, which

1. re-reads the request (an unknown id is said so: restarted without Redis, or long gone);
2. re-checks the permission of the person who CLICKED, every time (Grafana OnCall's rule);
3. refuses self-approval unless ``CHATOPS_SELF_APPROVAL`` (denying your own is a cancel);
4. expires a request past its ``expires_at`` instead of running it;
5. moves ``status`` from ``pending`` with ``RecordStore.transition``, the one atomic gate:
   of two simultaneous clicks, in one process or in two replicas sharing Redis, exactly one
   wins and only the winner sends anything to the workers.

Actions outside ``approval_required`` run at once for an operator, and are recorded the same
way. Every step is one audit line. A revoke is then confirmed by the ``task-revoked`` event
reaching the store (:meth:`ApprovalService.confirm_revoke`, bounded, meant for a background
thread), or reported as unconfirmed.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from chatbot.audit import AuditEntry, AuditLog
from chatbot.auth import Authorizer, Decision, is_user_id
from chatbot.config import Settings
from chatbot.control import ControlResult, validate_rate, validate_signal
from chatbot.model import FINISHED_STATES, REVOKED, Task
from chatbot.render import Message, Renderer, mrkdwn, utc_time
from chatbot.store import FleetStore, RecordStore

__all__ = [
    "APPROVAL_RECORD_KIND",
    "APPROVE_ACTION_ID",
    "DENY_ACTION_ID",
    "ActionOutcome",
    "Approval",
    "ApprovalService",
    "ControlAction",
    "ControlPort",
    "DecisionOutcome",
    "PermissionDenied",
    "ReplySummary",
    "RevokeConfirmation",
    "StateStoreUnavailable",
    "TaskPreview",
    "approval_id_of",
]

logger = logging.getLogger(__name__)

# Stable identifiers the Slack layer registers handlers for (`app.action(APPROVE_ACTION_ID)`).
APPROVE_ACTION_ID = "chatops_approve"
DENY_ACTION_ID = "chatops_deny"
ACTIONS_BLOCK_ID = "chatops_approval"

APPROVAL_RECORD_KIND = "approval"
CARD_TEMPLATE = "approval.json.j2"
REFUSED_TEMPLATE = "approval_refused.json.j2"

# Statuses. ``direct``: no approval was required; it ran when the operator asked.
PENDING = "pending"
APPROVED = "approved"
DENIED = "denied"
EXPIRED = "expired"
DIRECT = "direct"
DECIDED = frozenset({APPROVED, DENIED, EXPIRED, DIRECT})

# Kinds of action, and the /celery subcommand each belongs to (the names people put in
# CHATOPS_APPROVAL_REQUIRED).
COMMAND_OF_KIND: Mapping[str, str] = {
    "revoke": "revoke",
    "pool_grow": "pool",
    "pool_shrink": "pool",
    "autoscale": "autoscale",
    "rate_limit": "rate-limit",
    "time_limit": "time-limit",
    "add_consumer": "consumer",
    "cancel_consumer": "consumer",
    "shutdown": "shutdown",
}

# A decided request stays readable this long, so a late click is told who decided and when.
DEFAULT_RETENTION = 24 * 3600.0
DEFAULT_CONFIRM_TIMEOUT = 10.0
DEFAULT_CONFIRM_INTERVAL = 0.2
# Task rows shown on a card; a bulk revoke says how many more there are.
PREVIEW_LIMIT = 10

UNKNOWN_REQUEST = (
    "Nothing done: this request is no longer known (the bot restarted without a Redis state"
    " store, or it expired)."
)

_ID = re.compile(r"^[0-9a-f]{32}$")


class PermissionDenied(Exception):
    """The requester may not ask for control actions; ``str()`` is the reason for them."""


class StateStoreUnavailable(RuntimeError):
    """The RecordStore could not be read or written (e.g. Redis is down); one line."""


class ControlPort(Protocol):
    """What the service uses of :class:`chatbot.control.FleetControl`."""

    def revoke(
        self,
        task_ids: Sequence[str],
        *,
        terminate: bool = False,
        signal: str = "SIGTERM",
        destination: Sequence[str] | None = None,
        expected: Sequence[str] = (),
    ) -> ControlResult: ...

    def pool_grow(self, worker: str, n: int = 1) -> ControlResult: ...

    def pool_shrink(self, worker: str, n: int = 1) -> ControlResult: ...

    def autoscale(self, worker: str, max: int, min: int) -> ControlResult: ...

    def rate_limit(
        self, task_name: str, rate: str, worker: str | None = None, expected: Sequence[str] = ()
    ) -> ControlResult: ...

    def time_limit(
        self,
        task_name: str,
        soft: float | None,
        hard: float | None,
        worker: str | None = None,
        expected: Sequence[str] = (),
    ) -> ControlResult: ...

    def shutdown(self, worker: str) -> ControlResult: ...

    def add_consumer(
        self, queue: str, worker: str | None = None, expected: Sequence[str] = ()
    ) -> ControlResult: ...

    def cancel_consumer(
        self, queue: str, worker: str | None = None, expected: Sequence[str] = ()
    ) -> ControlResult: ...


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
        if self.kind not in COMMAND_OF_KIND:
            raise ValueError(f"unknown control action {self.kind!r}")
        if not self.targets:
            raise ValueError(f"{self.kind} needs at least one target")

    @property
    def command(self) -> str:
        """The /celery subcommand, as named in CHATOPS_APPROVAL_REQUIRED."""
        return COMMAND_OF_KIND[self.kind]

    @property
    def terminate(self) -> bool:
        return self.kind == "revoke" and bool(self.parameters.get("terminate"))

    @property
    def hidden_targets(self) -> int:
        """Targets the card does not list one by one."""
        return max(0, len(self.targets) - len(self.preview)) if self.kind == "revoke" else 0

    def summary(self) -> str:
        """One plain line for notices and logs (not escaped: templates escape it)."""
        p = self.parameters
        where = f" on {self.worker}" if self.worker else " on every worker"
        if self.kind == "revoke":
            count = len(self.targets)
            what = f"{count} task{'s' if count != 1 else ''}"
            if self.selector:
                what += f" ({self.selector})"
            how = f" with terminate ({p.get('signal', 'SIGTERM')})" if self.terminate else ""
            return f"revoke {what}{how}"
        if self.kind in ("pool_grow", "pool_shrink"):
            verb = "grow" if self.kind == "pool_grow" else "shrink"
            return f"pool {verb} {self.targets[0]} by {p.get('n', 1)}"
        if self.kind == "autoscale":
            return f"autoscale {self.targets[0]} to max {p.get('max')} min {p.get('min')}"
        if self.kind == "rate_limit":
            return f"rate limit {self.targets[0]} to {p.get('rate')}{where}"
        if self.kind == "time_limit":
            return (
                f"time limits of {self.targets[0]}: soft {p.get('soft'):g}s,"
                f" hard {p.get('hard'):g}s{where}"
            )
        if self.kind in ("add_consumer", "cancel_consumer"):
            verb = "start" if self.kind == "add_consumer" else "stop"
            return f"{verb} consuming queue {self.targets[0]}{where}"
        return f"warm shutdown of {self.targets[0]}"

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


def approval_id_of(message: Message) -> str | None:
    """The approval id carried by a card's Approve button (None: not a pending card)."""
    for block in message.blocks:
        if block.get("type") != "actions":
            continue
        for element in block.get("elements") or ():
            if element.get("action_id") == APPROVE_ACTION_ID:
                value = element.get("value")
                return str(value) if value else None
    return None


def mention(user_id: str | None) -> str:
    """``<@U123>`` for a real user ID only: nothing else may become a mention."""
    if user_id and is_user_id(user_id):
        return f"<@{user_id}>"
    return mrkdwn(user_id) if user_id else "someone"


# -- the service ------------------------------------------------------------------------------
class ApprovalService:
    """Requests, decisions, execution and confirmation of control actions.

    Thread-safe: all shared state lives in ``records`` and every state change goes through
    ``records.transition``. Several instances (replicas) may share one RecordStore.
    """

    def __init__(
        self,
        records: RecordStore,
        control: ControlPort,
        store: FleetStore,
        authorizer: Authorizer,
        audit: AuditLog,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        *,
        renderer: Renderer | None = None,
        confirm_timeout: float = DEFAULT_CONFIRM_TIMEOUT,
        confirm_interval: float = DEFAULT_CONFIRM_INTERVAL,
        retention: float = DEFAULT_RETENTION,
    ) -> None:
        self.records = records
        self.control = control
        self.store = store
        self.authorizer = authorizer
        self.audit = audit
        self.settings = settings
        self.clock = clock
        self.renderer = renderer or Renderer(clock=clock)
        self.confirm_timeout = float(confirm_timeout)
        self.confirm_interval = max(0.01, float(confirm_interval))
        self.retention = float(retention)
        self._required = {_policy_word(w) for w in settings.approval_required if w.strip()}

    # -- asking ---------------------------------------------------------------------------
    def needs_approval(self, action: ControlAction) -> bool:
        required = self._required
        if required & {"all", "*"}:
            return True
        words = {_policy_word(action.command), _policy_word(action.kind)}
        if action.terminate:
            words.add("terminate")  # terminate is a revoke, and may also be listed alone
        return bool(required & words)

    def authorize_request(
        self, user_id: str, *, command: str, channel: str = "", targets: Sequence[str] = ()
    ) -> Decision:
        """May ``user_id`` ask for control actions? A refusal is audited here."""
        decision = self.authorizer.can_request(user_id)
        if not decision.allowed:
            self._audit(
                "request",
                user_id,
                command,
                "refused",
                None,
                targets=targets,
                channel=channel,
                reason=decision.reason,
            )
        return decision

    def submit(self, action: ControlAction, requester: str, channel: str) -> Approval:
        """Ask for ``action``: a pending approval, or run at once when none is required.

        Raises :class:`PermissionDenied` (audited) when ``requester`` is not an operator.
        """
        if self.needs_approval(action):
            return self.request(action, requester, channel)
        return self.run_now(action, requester, channel)

    def request(self, action: ControlAction, requester: str, channel: str) -> Approval:
        """Store a pending approval for ``action`` (the card is :meth:`card` of the result)."""
        self._require_operator(action, requester, channel)
        now = self.clock()
        approval = Approval(
            id=uuid.uuid4().hex,
            status=PENDING,
            action=action,
            requester=requester,
            channel=channel,
            requested_at=now,
            expires_at=now + self.settings.approval_ttl,
        )
        # The record outlives the request: a late click can still be told what happened.
        ttl = self.settings.approval_ttl + self.retention
        if not self._records(
            "create", APPROVAL_RECORD_KIND, approval.id, approval.as_record(), ttl
        ):
            raise RuntimeError("approval id collision")  # 128 random bits: never in practice
        self._audit("request", requester, action.kind, "pending", approval)
        return approval

    def run_now(self, action: ControlAction, requester: str, channel: str) -> Approval:
        """Run an action that needs no approval (still only for operators, still audited)."""
        self._require_operator(action, requester, channel)
        now = self.clock()
        approval = Approval(
            id=uuid.uuid4().hex,
            status=DIRECT,
            action=action,
            requester=requester,
            channel=channel,
            requested_at=now,
            expires_at=now,
            decided_by=requester,
            decided_at=now,
        )
        self._records(
            "create", APPROVAL_RECORD_KIND, approval.id, approval.as_record(), self.retention
        )
        self._audit(
            "request",
            requester,
            action.kind,
            "run",
            approval,
            reason="no approval required for " + action.command,
        )
        return self._execute(approval)

    # -- deciding -------------------------------------------------------------------------
    def decide(self, approval_id: str, user_id: str, approve: bool) -> DecisionOutcome:
        """Handle a click on Approve (``approve=True``) or Deny by ``user_id``."""
        try:
            return self._decide(approval_id, user_id, approve)
        except StateStoreUnavailable as exc:
            # Raised only before the gate was passed (the execution path stores its outcome
            # defensively), so nothing ran: safe to say so and let the person click again.
            self._audit(
                "decision",
                user_id,
                "",
                "unavailable",
                None,
                approval_id=str(approval_id)[:64],
                reason=str(exc),
            )
            return DecisionOutcome("unavailable", f"Nothing done: {exc}. Try again in a moment.")

    def _decide(self, approval_id: str, user_id: str, approve: bool) -> DecisionOutcome:
        verb = "approve" if approve else "deny"
        approval = self.get(approval_id)
        if approval is None:
            self._audit(
                "decision",
                user_id,
                "",
                "unknown",
                None,
                approval_id=approval_id,
                reason=f"{verb}: no such request",
            )
            return DecisionOutcome("unknown", UNKNOWN_REQUEST)
        if approval.status != PENDING:
            return self._already_decided(approval, user_id, verb)

        now = self.clock()
        if now >= approval.expires_at:
            return self._expire(approval, user_id, now)

        refusal = self._refusal(approval, user_id, approve)
        if refusal is not None:
            self._audit(
                "decision",
                user_id,
                approval.action.kind,
                "refused",
                approval,
                reason=f"{verb}: {refusal}",
            )
            return DecisionOutcome("refused", refusal + " The request stays open.", approval)

        status = APPROVED if approve else DENIED
        won = self._records(
            "transition",
            APPROVAL_RECORD_KIND,
            approval.id,
            "status",
            PENDING,
            {"status": status, "decided_by": user_id, "decided_at": now},
        )
        if won is None:
            # Someone else decided (or it vanished) between our read and our write.
            latest = self.get(approval.id)
            if latest is None:
                return DecisionOutcome("unknown", UNKNOWN_REQUEST)
            return self._already_decided(latest, user_id, verb)
        decided = Approval.from_record(won)
        self._audit(
            "decision", user_id, approval.action.kind, "approved" if approve else "denied", decided
        )
        if not approve:
            word = "Cancelled" if decided.cancelled else "Denied"
            notice = f"{word}: {approval.action.summary()}. Nothing was sent to the workers."
            return DecisionOutcome("denied", notice, decided, self.card(decided))
        executed = self._execute(decided)
        outcome = executed.outcome
        notice = f"Approved: {approval.action.summary()}; " + (
            outcome.line() if outcome else "outcome unknown"
        )
        return DecisionOutcome("approved", notice, executed, self.card(executed))

    def _refusal(self, approval: Approval, user_id: str, approve: bool) -> str | None:
        """Why this clicker may not make this decision now (None: they may)."""
        own = user_id == approval.requester and is_user_id(user_id)
        if not approve and own:
            return None  # withdrawing your own request is always allowed
        if approve and own and not self.settings.self_approval:
            return (
                "You asked for this, so another approver has to approve it"
                " (CHATOPS_SELF_APPROVAL is off)."
            )
        decision = self.authorizer.can_approve(user_id)
        return None if decision.allowed else decision.reason

    def _already_decided(self, approval: Approval, user_id: str, verb: str) -> DecisionOutcome:
        what = _decided_phrase(approval)
        self._audit(
            "decision",
            user_id,
            approval.action.kind,
            "ignored",
            approval,
            reason=f"{verb}: already {what}",
        )
        return DecisionOutcome(
            "already_decided", f"Nothing done: this request was already {what}.", approval
        )

    def _expire(self, approval: Approval, user_id: str, now: float) -> DecisionOutcome:
        expired = self._mark_expired(approval, user_id, now)
        if expired is None:
            latest = self.get(approval.id)
            if latest is None:
                return DecisionOutcome("unknown", UNKNOWN_REQUEST)
            return self._already_decided(latest, user_id, "decide")
        notice = (
            f"Nothing done: this request expired at {utc_time(approval.expires_at)}."
            f" Ask again with /celery {approval.action.command} if it is still needed."
        )
        return DecisionOutcome("expired", notice, expired, self.card(expired))

    def _mark_expired(self, approval: Approval, who: str, now: float) -> Approval | None:
        won = self._records(
            "transition",
            APPROVAL_RECORD_KIND,
            approval.id,
            "status",
            PENDING,
            {"status": EXPIRED, "decided_at": approval.expires_at},
        )
        if won is None:
            return None
        expired = Approval.from_record(won)
        self._audit(
            "decision",
            who,
            approval.action.kind,
            "expired",
            expired,
            reason=f"expired at {utc_time(approval.expires_at)}",
        )
        return expired

    def expire_due(self) -> list[Approval]:
        """Mark every pending request past its expiry as expired; returns them (to re-card).

        For a periodic job: a click would expire them too, but an unclicked card should not
        keep offering buttons that can no longer do anything.
        """
        now = self.clock()
        expired: list[Approval] = []
        for data in self._records("list", APPROVAL_RECORD_KIND):
            try:
                approval = Approval.from_record(data)
            except (KeyError, TypeError, ValueError):
                logger.warning("skipping a malformed approval record %r", data.get("id"))
                continue
            if approval.status == PENDING and now >= approval.expires_at:
                marked = self._mark_expired(approval, "", now)
                if marked is not None:
                    expired.append(marked)
        return expired

    # -- executing ------------------------------------------------------------------------
    def _execute(self, approval: Approval) -> Approval:
        """Send the action to the workers (called only by the one winner of the gate)."""
        action = approval.action
        started = self.clock()
        try:
            result = self._send(action, started)
            outcome = ActionOutcome.of(result, self.clock())
        except Exception as exc:  # a bug or a dependency failing: record it, never re-raise
            logger.exception("control action %s (%s) failed", action.kind, approval.id)
            outcome = ActionOutcome(action.kind, self.clock(), (), f"{type(exc).__name__}: {exc}")
        updates: dict[str, Any] = {"outcome": outcome.as_dict()}
        if action.kind == "revoke" and outcome.error is None:
            updates["confirmation"] = RevokeConfirmation("checking").as_dict()
        # The action has run: failing to store its outcome must not turn into an error that
        # reads as "nothing happened". The card still shows it; the audit line records it.
        stored = self._store_quietly(approval, updates)
        done = (
            Approval.from_record(stored)
            if stored is not None
            else replace(
                approval,
                outcome=outcome,
                confirmation=RevokeConfirmation("checking") if "confirmation" in updates else None,
            )
        )
        self._audit(
            "outcome",
            approval.decided_by or approval.requester,
            action.kind,
            outcome.result,
            done,
            reason=outcome.error or "",
            details={
                "replies": [
                    {"worker": r.worker, "status": r.status, "message": r.message}
                    for r in outcome.replies
                ]
            },
        )
        return done

    def _online_workers(self, now: float) -> list[str]:
        return sorted(w.hostname for w in self.store.workers() if w.is_online(now))

    def _send(self, action: ControlAction, now: float) -> ControlResult:
        p = action.parameters
        control = self.control
        target = action.targets[0]
        # Broadcasts to every worker wait for the ones we believe online, so a silent one is
        # reported as "no reply" rather than left out.
        expected = [] if action.worker else self._online_workers(now)
        if action.kind == "revoke":
            # To every worker, not only the ones that ran them: a queued id must be refused
            # by whichever worker picks it up later.
            return control.revoke(
                list(action.targets),
                terminate=bool(p.get("terminate")),
                signal=str(p.get("signal") or "SIGTERM"),
                expected=expected,
            )
        if action.kind == "pool_grow":
            return control.pool_grow(target, int(p.get("n", 1)))
        if action.kind == "pool_shrink":
            return control.pool_shrink(target, int(p.get("n", 1)))
        if action.kind == "autoscale":
            return control.autoscale(target, max=int(p["max"]), min=int(p["min"]))
        if action.kind == "rate_limit":
            return control.rate_limit(target, str(p["rate"]), action.worker, expected=expected)
        if action.kind == "time_limit":
            return control.time_limit(
                target, float(p["soft"]), float(p["hard"]), action.worker, expected=expected
            )
        if action.kind == "add_consumer":
            return control.add_consumer(target, action.worker, expected=expected)
        if action.kind == "cancel_consumer":
            return control.cancel_consumer(target, action.worker, expected=expected)
        return control.shutdown(target)

    # -- confirming a revoke --------------------------------------------------------------
    def confirm_revoke(self, approval_id: str, timeout: float | None = None) -> Approval | None:
        """Wait (bounded) for the revoked ids to reach state REVOKED in the store; record it.

        Blocks up to ``timeout`` (default ``confirm_timeout``) seconds: call it on a
        background thread, then show :meth:`card` of the returned approval. Returns None for
        an unknown id; an approval that is not an executed revoke is returned unchanged.
        """
        approval = self.get(approval_id)
        if (
            approval is None
            or approval.action.kind != "revoke"
            or approval.outcome is None
            or approval.outcome.error is not None
            or approval.status not in (APPROVED, DIRECT)
        ):
            return approval
        wait = self.confirm_timeout if timeout is None else max(0.0, timeout)
        deadline = time.monotonic() + wait
        ids = approval.action.targets
        while True:
            confirmation = self._revoke_state(ids)
            if not confirmation.waiting or time.monotonic() >= deadline:
                break
            time.sleep(min(self.confirm_interval, max(0.0, deadline - time.monotonic())))
        if confirmation.revoked and not confirmation.waiting:
            status = "confirmed"
        else:
            status = "partial" if confirmation.revoked else "unconfirmed"
        confirmation = replace(confirmation, status=status, checked_at=self.clock())
        stored = self._store_quietly(approval, {"confirmation": confirmation.as_dict()})
        done = (
            Approval.from_record(stored) if stored else replace(approval, confirmation=confirmation)
        )
        self._audit(
            "confirmation",
            "",
            approval.action.kind,
            status,
            done,
            details={
                "revoked": len(confirmation.revoked),
                "already_finished": len(confirmation.finished),
                "unconfirmed": len(confirmation.waiting),
            },
        )
        return done

    def confirm_revoke_in_background(
        self, approval_id: str, on_done: Callable[[Approval], None]
    ) -> threading.Thread:
        """:meth:`confirm_revoke` on a daemon thread; ``on_done(approval)`` re-renders the card."""

        def run() -> None:
            try:
                approval = self.confirm_revoke(approval_id)
                if approval is not None:
                    on_done(approval)
            except Exception:
                logger.exception("revoke confirmation of %s failed", approval_id)

        thread = threading.Thread(target=run, name=f"revoke-confirm-{approval_id[:8]}", daemon=True)
        thread.start()
        return thread

    def _revoke_state(self, ids: Sequence[str]) -> RevokeConfirmation:
        revoked: list[str] = []
        finished: list[tuple[str, str]] = []
        waiting: list[str] = []
        for task_id in ids:
            task = self.store.get_task(task_id)
            if task is not None and task.state == REVOKED:
                revoked.append(task_id)
            elif task is not None and task.state in FINISHED_STATES:
                finished.append((task_id, task.state))
            else:
                waiting.append(task_id)
        return RevokeConfirmation("checking", tuple(revoked), tuple(finished), tuple(waiting))

    # -- reading and presenting -----------------------------------------------------------
    def get(self, approval_id: str) -> Approval | None:
        if not isinstance(approval_id, str) or not _ID.match(approval_id):
            return None  # button values are data from the client: check before using as a key
        data = self._records("get", APPROVAL_RECORD_KIND, approval_id)
        if data is None:
            return None
        try:
            return Approval.from_record(data)
        except (KeyError, TypeError, ValueError):
            logger.warning("malformed approval record %s", approval_id)
            return None

    def attach_message(self, approval_id: str, channel: str, ts: str) -> Approval | None:
        """Remember where the card was posted, so a later update (expiry, confirmation) can
        ``chat.update`` it. Returns None if the request is unknown."""
        if self.get(approval_id) is None:
            return None
        # "id equals itself" is a gate that only requires the record to exist: an update must
        # not resurrect a request that expired out of the store in the meantime.
        stored = self._records(
            "transition",
            APPROVAL_RECORD_KIND,
            approval_id,
            "id",
            approval_id,
            {"message_channel": channel, "message_ts": ts},
        )
        return Approval.from_record(stored) if stored else None

    def card(self, approval: Approval) -> Message:
        """The approval card (pending: with buttons; decided: who, when, what workers said).

        Posted in the channel (not ephemeral); the decided card replaces the pending one.
        """
        now = self.clock()
        online = {w.hostname: w.is_online(now) for w in self.store.workers()}
        card = self.renderer.render(
            CARD_TEMPLATE,
            ephemeral=False,
            approval=approval,
            action=approval.action,
            now=now,
            mention=mention,
            approve_action_id=APPROVE_ACTION_ID,
            deny_action_id=DENY_ACTION_ID,
            actions_block_id=ACTIONS_BLOCK_ID,
            worker_online=online.get(approval.action.worker or "")
            if approval.action.worker
            else None,
            more=approval.action.hidden_targets,
            narrow_hint="every listed id is revoked, shown or not",
            policy_word=approval.action.command,
        )
        # A pending card is updated later by its ts (expiry, decision, confirmation).
        return replace(card, channel_post=approval.pending)

    def refused(self, reason: str) -> Message:
        """The ephemeral answer to a refused request."""
        return self.renderer.render(
            REFUSED_TEMPLATE, ephemeral=True, reason=reason, now=self.clock()
        )

    # -- internals ------------------------------------------------------------------------
    def _records(self, method: str, *args: Any) -> Any:
        """``self.records.<method>(*args)``, any failure turned into StateStoreUnavailable."""
        try:
            return getattr(self.records, method)(*args)
        except Exception as exc:
            logger.warning("approval state store: %s failed", method, exc_info=True)
            detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            raise StateStoreUnavailable(
                "the approval state store is unreachable"
                + (f" ({type(exc).__name__}: {detail})" if detail else f" ({type(exc).__name__})")
            ) from exc

    def _store_quietly(
        self, approval: Approval, updates: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """Merge ``updates`` into a decided record; None (logged) if that cannot be done."""
        try:
            stored: dict[str, Any] | None = self._records(
                "transition", APPROVAL_RECORD_KIND, approval.id, "status", approval.status, updates
            )
        except StateStoreUnavailable:
            return None
        return stored

    def _require_operator(self, action: ControlAction, requester: str, channel: str) -> None:
        decision = self.authorize_request(
            requester, command=action.kind, channel=channel, targets=action.targets
        )
        if not decision.allowed:
            raise PermissionDenied(decision.reason)

    def _audit(
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


def _policy_word(word: str) -> str:
    return word.strip().lower().replace("_", "-").replace(" ", "-")


def _decided_phrase(approval: Approval) -> str:
    when = utc_time(approval.decided_at)
    if approval.status == APPROVED:
        return f"approved by {mention(approval.decided_by)} at {when}"
    if approval.status == DENIED:
        if approval.cancelled:
            return f"cancelled by {mention(approval.decided_by)} at {when}"
        return f"denied by {mention(approval.decided_by)} at {when}"
    if approval.status == EXPIRED:
        return f"expired at {utc_time(approval.expires_at)}"
    if approval.status == DIRECT:
        return f"run by {mention(approval.decided_by)} at {when} (no approval needed)"
    return approval.status
