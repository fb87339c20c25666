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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from chatbot.approvals.action import ControlAction
from chatbot.approvals.card import decided_phrase, render_card, render_refused
from chatbot.approvals.persistence import ApprovalRecords, StateStoreUnavailable
from chatbot.approvals.records import (
    APPROVED,
    DENIED,
    DIRECT,
    EXPIRED,
    PENDING,
    ActionOutcome,
    Approval,
    DecisionOutcome,
    RevokeConfirmation,
)
from chatbot.approvals.trail import AuditTrail
from chatbot.audit import AuditLog
from chatbot.auth import Authorizer, Decision, is_user_id
from chatbot.config import Settings
from chatbot.control_port import ControlPort
from chatbot.model import FINISHED_STATES, REVOKED
from chatbot.render import Message, Renderer, utc_time
from chatbot.store import FleetStore, RecordStore

__all__ = ["UNKNOWN_REQUEST", "ApprovalService", "PermissionDenied"]

logger = logging.getLogger(__name__)

# A decided request stays readable this long, so a late click is told who decided and when.
DEFAULT_RETENTION = 24 * 3600.0
DEFAULT_CONFIRM_TIMEOUT = 10.0
DEFAULT_CONFIRM_INTERVAL = 0.2

UNKNOWN_REQUEST = (
    "Nothing done: this request is no longer known (the bot restarted without a Redis state"
    " store, or it expired)."
)

_ID = re.compile(r"^[0-9a-f]{32}$")


class PermissionDenied(Exception):
    """The requester may not ask for control actions; ``str()`` is the reason for them."""


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
        cluster: str = "",
    ) -> None:
        self.records = records
        self._approvals = ApprovalRecords(records)
        # With several clusters: the one whose control app this service sends through. Every
        # request it stores, its card and its audit lines carry the name.
        self.cluster = cluster
        self._trail = AuditTrail(audit, clock, cluster)
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
            self._trail.record(
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
            cluster=self.cluster,
        )
        # The record outlives the request: a late click can still be told what happened.
        ttl = self.settings.approval_ttl + self.retention
        if not self._approvals.create(approval.id, approval.as_record(), ttl):
            raise RuntimeError("approval id collision")  # 128 random bits: never in practice
        self._trail.record("request", requester, action.kind, "pending", approval)
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
            cluster=self.cluster,
        )
        self._approvals.create(approval.id, approval.as_record(), self.retention)
        self._trail.record(
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
            self._trail.record(
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
            self._trail.record(
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
            self._trail.record(
                "decision",
                user_id,
                approval.action.kind,
                "refused",
                approval,
                reason=f"{verb}: {refusal}",
            )
            return DecisionOutcome("refused", refusal + " The request stays open.", approval)

        status = APPROVED if approve else DENIED
        won = self._approvals.transition(
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
        self._trail.record(
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
        what = decided_phrase(approval)
        self._trail.record(
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
        won = self._approvals.transition(
            approval.id, "status", PENDING, {"status": EXPIRED, "decided_at": approval.expires_at}
        )
        if won is None:
            return None
        expired = Approval.from_record(won)
        self._trail.record(
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
        for data in self._approvals.list():
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
            if approval.cluster != self.cluster:
                # Records of clusters are kept apart; should one still reach another cluster's
                # service, it must not run on these workers.
                raise PermissionError(
                    f"request for cluster {approval.cluster!r} reached cluster {self.cluster!r}"
                )
            # Broadcasts to every worker wait for the ones we believe online, so a silent
            # one is reported as "no reply" rather than left out.
            expected = [] if action.worker else self._online_workers(started)
            result = action.send(self.control, expected)
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
        self._trail.record(
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
        self._trail.record(
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
    def retry_claims(self) -> dict[str, str]:
        """Failed task id -> what already claims its retry: a pending request, or a re-send
        that went out (``re-sent as <id>``), among the requests still kept (``retention``).

        So a second Retry (another click, another person) is refused instead of running the
        task twice."""
        claims: dict[str, str] = {}
        for data in self._approvals.list():
            try:
                approval = Approval.from_record(data)
            except (KeyError, TypeError, ValueError):
                continue
            if approval.action.kind != "retry":
                continue
            if approval.status == PENDING:
                for task_id in approval.action.targets:
                    claims.setdefault(task_id, f"a retry awaits approval ({approval.id[:8]})")
            elif approval.outcome is not None:
                for reply in approval.outcome.replies:
                    if reply.status == "ok":
                        claims[reply.worker] = f"already {reply.message} ({approval.id[:8]})"
        return claims

    def get(self, approval_id: str) -> Approval | None:
        if not isinstance(approval_id, str) or not _ID.match(approval_id):
            return None  # button values are data from the client: check before using as a key
        data = self._approvals.get(approval_id)
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
        stored = self._approvals.transition(
            approval_id, "id", approval_id, {"message_channel": channel, "message_ts": ts}
        )
        return Approval.from_record(stored) if stored else None

    def card(self, approval: Approval) -> Message:
        """The approval card of ``approval`` as of now (see :func:`render_card`)."""
        now = self.clock()
        online = {w.hostname: w.is_online(now) for w in self.store.workers()}
        return render_card(self.renderer, approval, now, online)

    def refused(self, reason: str) -> Message:
        """The ephemeral answer to a refused request."""
        return render_refused(self.renderer, reason, self.clock())

    # -- internals ------------------------------------------------------------------------
    def _store_quietly(
        self, approval: Approval, updates: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """Merge ``updates`` into a decided record; None (logged) if that cannot be done."""
        try:
            stored = self._approvals.transition(approval.id, "status", approval.status, updates)
        except StateStoreUnavailable:
            return None
        return stored

    def _require_operator(self, action: ControlAction, requester: str, channel: str) -> None:
        decision = self.authorize_request(
            requester, command=action.kind, channel=channel, targets=action.targets
        )
        if not decision.allowed:
            raise PermissionDenied(decision.reason)


def _policy_word(word: str) -> str:
    return word.strip().lower().replace("_", "-").replace(" ", "-")
