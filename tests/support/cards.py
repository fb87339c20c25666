"""Reading an approval card as a person (or Slack) sees it: its Approve button."""

from __future__ import annotations

from chatbot.approvals import APPROVE_ACTION_ID
from chatbot.render import Message

__all__ = ["approve_button_value"]


def approve_button_value(message: Message) -> str | None:
    """The value a click on the card's Approve button sends (None: the card has no button).

    Also checks the card carries the same id as its typed field, which the Slack face uses to
    post it and record where it went: the two must never disagree.
    """
    value: str | None = None
    for block in message.blocks:
        if block.get("type") != "actions":
            continue
        for element in block.get("elements") or ():
            if element.get("action_id") == APPROVE_ACTION_ID and element.get("value"):
                value = str(element["value"])
    assert message.approval_id == value, (message.approval_id, value)
    return value
