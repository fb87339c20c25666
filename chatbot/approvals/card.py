"""The approval card: a pending request with Approve and Deny buttons, or what became of it.

Posted in the channel (not ephemeral); the decided card replaces the pending one in place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from chatbot.approvals.records import APPROVED, DENIED, DIRECT, EXPIRED, Approval
from chatbot.auth import is_user_id
from chatbot.render import Message, Renderer, mrkdwn, utc_time

__all__ = [
    "APPROVE_ACTION_ID",
    "DENY_ACTION_ID",
    "decided_phrase",
    "mention",
    "render_card",
    "render_refused",
]

# Stable identifiers the Slack layer registers handlers for (`app.action(APPROVE_ACTION_ID)`).
APPROVE_ACTION_ID = "chatops_approve"
DENY_ACTION_ID = "chatops_deny"
ACTIONS_BLOCK_ID = "chatops_approval"

CARD_TEMPLATE = "approval.json.j2"
REFUSED_TEMPLATE = "approval_refused.json.j2"


def mention(user_id: str | None) -> str:
    """``<@U123>`` for a real user ID only: nothing else may become a mention."""
    if user_id and is_user_id(user_id):
        return f"<@{user_id}>"
    return mrkdwn(user_id) if user_id else "someone"


def decided_phrase(approval: Approval) -> str:
    """``approved by <@U1> at 12:00 UTC`` and the like: who decided, and when."""
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


def render_card(
    renderer: Renderer, approval: Approval, now: float, worker_online: Mapping[str, bool]
) -> Message:
    """The card (pending: with buttons; decided: who, when, what workers said).

    ``worker_online``: hostname → online now, to say whether a targeted worker is there.
    """
    action = approval.action
    card = renderer.render(
        CARD_TEMPLATE,
        ephemeral=False,
        approval=approval,
        action=action,
        now=now,
        mention=mention,
        approve_action_id=APPROVE_ACTION_ID,
        deny_action_id=DENY_ACTION_ID,
        actions_block_id=ACTIONS_BLOCK_ID,
        worker_online=worker_online.get(action.worker) if action.worker else None,
        more=action.hidden_targets,
        narrow_hint=(
            "every listed task is re-sent, shown or not"
            if action.kind == "retry"
            else "every listed id is revoked, shown or not"
        ),
        policy_word=action.command,
    )
    # Only a pending card is updated later by its ts (expiry, decision, confirmation).
    return replace(card, approval_id=approval.id if approval.pending else None)


def render_refused(renderer: Renderer, reason: str, now: float) -> Message:
    """The ephemeral answer to a refused request."""
    return renderer.render(REFUSED_TEMPLATE, ephemeral=True, reason=reason, now=now)
