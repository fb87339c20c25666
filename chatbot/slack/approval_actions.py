"""The Approve and Deny buttons of approval cards, and the re-carding of expired requests.

The decision itself (who may, exactly once, what runs) is :class:`ApprovalService`'s; this
module only moves its results in and out of Slack: the card is replaced in place with
``chat.update`` (by the ts the card was posted at), the clicker gets an ephemeral notice, and a
revoke's confirmation updates the card once more when the task-revoked event arrives.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from chatbot.alerts.actions import ALERT_ACTION_IDS, command_for_click
from chatbot.approvals import APPROVE_ACTION_ID, DENY_ACTION_ID, Approval, ApprovalService
from chatbot.approvals.clusters import ClusterApprovals
from chatbot.render import Message
from chatbot.slack.app import ActionClick, ActionHandler, ActionReply
from chatbot.slackerrors import error_code

log = logging.getLogger(__name__)

# How often :meth:`ApprovalActions.sweep_expired` runs: a periodic job on every replica
# (chatbot/runner.py); expire_due hands each expired request to one sweeper only.
DEFAULT_EXPIRY_SWEEP = 30.0


class ApprovalActions:
    """Button handlers bound to the approvals (one cluster's service, or every cluster's
    behind :class:`ClusterApprovals`) and the app's WebClient."""

    def __init__(self, approvals: ApprovalService | ClusterApprovals, client: WebClient) -> None:
        self.approvals = approvals
        self.client = client

    def actions(self) -> list[tuple[str, ActionHandler]]:
        """The ``(action_id, handler)`` pairs to give ``build_app``."""
        return [(APPROVE_ACTION_ID, self.on_click), (DENY_ACTION_ID, self.on_click)]

    def on_click(self, click: ActionClick) -> ActionReply | None:
        approve = click.action_id == APPROVE_ACTION_ID
        outcome = self.approvals.decide(click.value, click.user_id, approve=approve)
        notice = ActionReply(Message(text=outcome.notice))
        if outcome.card is None:
            return notice  # refused, already decided, unknown: the clicker alone is told
        approval = outcome.approval
        channel = click.channel_id or (approval.channel if approval else "")
        if not self.update_card(channel, click.message_ts, outcome.card):
            # Not ours to chat.update (it went out through a response_url): replace in place.
            return ActionReply(outcome.card, replace_original=True)
        if approval is not None and click.message_ts:
            self.approvals.attach_message(approval.id, channel, click.message_ts)
        if outcome.needs_confirmation and approval is not None:
            self.approvals.confirm_revoke_in_background(
                approval.id, on_done=self._recard(channel, click.message_ts)
            )
        return notice

    def _recard(self, channel: str, ts: str) -> Callable[[Approval], None]:
        def on_done(approval: Approval) -> None:
            self.update_card(channel, ts, self.approvals.card(approval))

        return on_done

    def post_card(self, channel: str, card: Message) -> str | None:
        """Post a pending card as the app and remember its ts; None if Slack refused."""
        try:
            response = self.client.chat_postMessage(
                channel=channel, text=card.text, blocks=card.blocks
            )
        except SlackApiError as exc:
            code = error_code(exc) or "error"
            log.warning("could not post an approval card in %s: %s", channel, code)
            return None
        ts = str(response.get("ts") or "")
        if card.approval_id and ts:
            # Remembered, so expiry and confirmation can update the card by its ts.
            self.approvals.attach_message(card.approval_id, channel, ts)
        return ts or None

    def update_card(self, channel: str, ts: str | None, card: Message) -> bool:
        if not channel or not ts:
            return False
        try:
            self.client.chat_update(channel=channel, ts=ts, text=card.text, blocks=card.blocks)
        except SlackApiError as exc:
            code = error_code(exc) or "error"
            log.warning("could not update the approval card %s/%s: %s", channel, ts, code)
            return False
        return True

    def sweep_expired(self) -> int:
        """Mark requests past their expiry as expired and take their buttons away."""
        swept = 0
        for approval in self.approvals.expire_due():
            if approval.message_channel and approval.message_ts:
                self.update_card(
                    approval.message_channel, approval.message_ts, self.approvals.card(approval)
                )
            swept += 1
        return swept


class AlertButtons:
    """The Revoke buttons of stuck-task alerts: the click is the typed command, as the clicker.

    ``run_command(text, user_id, channel_id)`` runs a ``/celery`` line through the dispatcher,
    so a click meets the same operator check, approval flow and audit as typing it.
    """

    def __init__(
        self,
        approvals: ApprovalActions,
        run_command: Callable[[str, str, str], Message],
    ) -> None:
        self.approvals = approvals
        self.run_command = run_command

    def actions(self) -> list[tuple[str, ActionHandler]]:
        """The ``(action_id, handler)`` pairs to give ``build_app``."""
        return [(action_id, self.on_click) for action_id in ALERT_ACTION_IDS]

    def on_click(self, click: ActionClick) -> ActionReply:
        command = command_for_click(click.action_id, click.value)
        if command is None:
            return ActionReply(Message(text="This button carries no task id to act on."))
        message = self.run_command(command, click.user_id, click.channel_id)
        if not message.approval_id or not click.channel_id:
            return ActionReply(message)  # a refusal or an error: for the clicker alone
        ts = self.approvals.post_card(click.channel_id, message)
        if ts is None:
            return ActionReply(message)
        return ActionReply(Message(text=f"Posted `/celery {command}` for approval here."))
