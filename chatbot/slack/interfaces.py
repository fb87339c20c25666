"""What the Slack face needs from the rest of the program, as structural Protocols.

``chatbot.service.Service`` satisfies :class:`SlackServices`; tests may pass any object with
the same members (hand-wired real parts), so the Slack layer never imports the wiring layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from chatbot.auth import Authorizer
from chatbot.commands.context import CommandContext
from chatbot.commands.registry import Prepared
from chatbot.render import Message, Renderer


class CommandRunner(Protocol):
    """The part of :class:`chatbot.commands.registry.Dispatcher` a face calls."""

    def prepare(self, text: str) -> Prepared: ...

    def execute(self, prepared: Prepared, ctx: CommandContext) -> Message: ...

    def internal_error(self, name: str, reference: str) -> Message: ...


class ApprovalCards(Protocol):
    """The part of :class:`chatbot.approvals.ApprovalService` a face calls after posting."""

    def attach_message(self, approval_id: str, channel: str, ts: str) -> object:
        """Remember that the card of ``approval_id`` is at ``channel``/``ts``."""
        ...


class SlackServices(Protocol):
    """Everything the Bolt listeners and the HTTP endpoints use."""

    @property
    def dispatcher(self) -> CommandRunner: ...

    @property
    def renderer(self) -> Renderer: ...

    def context(self, user_id: str, channel_id: str) -> CommandContext:
        """A fresh context for one invocation by ``user_id`` in ``channel_id``."""
        ...

    def health(self) -> Mapping[str, Any]:
        """``{"ok": bool, "reason": str | None, ...}``: served by ``GET /healthz``."""
        ...

    def metrics_text(self) -> str:
        """Prometheus text exposition format: served by ``GET /metrics``."""
        ...

    @property
    def approvals(self) -> ApprovalCards:
        """Told where an approval card (``Message.approval_id``) was posted as the app."""
        ...

    @property
    def authorizer(self) -> Authorizer:
        """Told when a user group changes (its cached members are then stale)."""
        ...
