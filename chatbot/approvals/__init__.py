"""Control actions behind approval: what is asked, who decided, what ran, what the card shows.

- :mod:`~chatbot.approvals.kinds`: the table of action kinds (command, summary, how sent);
- :mod:`~chatbot.approvals.action`: :class:`ControlAction` and the tasks a card previews;
- :mod:`~chatbot.approvals.records`: the stored :class:`Approval` and what became of it;
- :mod:`~chatbot.approvals.persistence`: approval records in the RecordStore;
- :mod:`~chatbot.approvals.card`: the Block Kit card and its button ids;
- :mod:`~chatbot.approvals.trail`: one audit line per step;
- :mod:`~chatbot.approvals.service`: :class:`ApprovalService`, the state machine.
"""

from __future__ import annotations

from chatbot.approvals.action import PREVIEW_LIMIT, ControlAction, TaskPreview
from chatbot.approvals.card import APPROVE_ACTION_ID, DENY_ACTION_ID, mention
from chatbot.approvals.kinds import KINDS, Kind
from chatbot.approvals.persistence import APPROVAL_RECORD_KIND, StateStoreUnavailable
from chatbot.approvals.records import (
    ActionOutcome,
    Approval,
    DecisionOutcome,
    ReplySummary,
    RevokeConfirmation,
)
from chatbot.approvals.service import UNKNOWN_REQUEST, ApprovalService, PermissionDenied

__all__ = [
    "APPROVAL_RECORD_KIND",
    "APPROVE_ACTION_ID",
    "DENY_ACTION_ID",
    "KINDS",
    "PREVIEW_LIMIT",
    "UNKNOWN_REQUEST",
    "ActionOutcome",
    "Approval",
    "ApprovalService",
    "ControlAction",
    "DecisionOutcome",
    "Kind",
    "PermissionDenied",
    "ReplySummary",
    "RevokeConfirmation",
    "StateStoreUnavailable",
    "TaskPreview",
    "mention",
]
