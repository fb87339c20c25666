"""The message every command returns and every face (Slack, console) shows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Message:
    """What every command returns and every face (Slack, console) shows.

    ``text`` is the plain fallback used for notifications; ``blocks`` is Block Kit.
    """

    text: str
    blocks: list[dict[str, Any]] = field(default_factory=list)
    ephemeral: bool = True
    # Set on a pending approval card: a face posts it in the channel as the app
    # (chat.postMessage) rather than as a reply, and reports the channel and ts back to the
    # approvals, which update the card by its ts later (expiry, decision, confirmation).
    approval_id: str | None = None

    def to_response(self) -> dict[str, Any]:
        """The body for ``respond()`` / a response_url."""
        return {
            "response_type": "ephemeral" if self.ephemeral else "in_channel",
            "text": self.text,
            "blocks": self.blocks,
        }
