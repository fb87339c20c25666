"""The audit trail: every control request, decision and outcome, one JSON line each.

Lines go to a dedicated logger (``chatbot.audit``) whose message is the JSON document itself,
so a plain ``%(message)s`` file handler yields an append-only JSONL file. When an audit
channel poster is given (the Slack layer binds it to ``CHATOPS_AUDIT_CHANNEL``), the same
entry is also posted there as a message.

What goes in is already safe to keep: task arguments are the store's redacted previews, and
every line passes through the log scrubber, so a token or a broker password that slipped into
a worker's reply is masked too.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from chatbot.logs import scrub
from chatbot.render import Message, Renderer

__all__ = ["AUDIT_LOGGER", "AuditEntry", "AuditLog", "ChannelPoster"]

AUDIT_LOGGER = "chatbot.audit"
AUDIT_TEMPLATE = "approval_audit.json.j2"

ChannelPoster = Callable[[Message], None]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuditEntry:
    """One step. ``step`` is request, decision, outcome or confirmation."""

    step: str
    who: str  # Slack user ID of whoever acted ("" for the bot itself)
    action: str  # control kind: revoke, pool_grow, ...
    result: str  # pending, run, refused, approved, denied, expired, ignored, ok, error, ...
    time: float
    approval_id: str | None = None
    targets: Sequence[str] = ()
    parameters: Mapping[str, Any] = field(default_factory=dict)
    channel: str = ""
    reason: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)
    cluster: str = ""  # the cluster the action is for, when the bot has several

    def as_dict(self) -> dict[str, Any]:
        return {
            "audit": "celery-chatops",
            "step": self.step,
            "time": _iso(self.time),
            "ts": round(self.time, 3),
            "approval_id": self.approval_id,
            "who": self.who,
            "action": self.action,
            "targets": list(self.targets),
            "parameters": dict(self.parameters),
            "result": self.result,
            "reason": self.reason,
            "channel": self.channel,
            **({"cluster": self.cluster} if self.cluster else {}),
            **({"details": dict(self.details)} if self.details else {}),
        }


def _iso(timestamp: float) -> str:
    moment = dt.datetime.fromtimestamp(timestamp, tz=dt.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AuditLog:
    """Writes :class:`AuditEntry` records; never raises into the action it records."""

    def __init__(
        self,
        logger_name: str = AUDIT_LOGGER,
        channel_poster: ChannelPoster | None = None,
        *,
        renderer: Renderer | None = None,
        secrets: Sequence[str] = (),
    ) -> None:
        self.logger = logging.getLogger(logger_name)
        if self.logger.level == logging.NOTSET:
            # An audit trail must not vanish because the app logs at WARNING; an explicit
            # level set by the deployment still wins.
            self.logger.setLevel(logging.INFO)
        self._poster = channel_poster
        self._renderer = renderer if renderer is not None or channel_poster is None else Renderer()
        self._secrets = tuple(secrets)

    def record(self, entry: AuditEntry) -> str:
        """Log ``entry`` as one JSON line (and post it to the audit channel); returns the line."""
        line = scrub(json.dumps(entry.as_dict(), default=str, sort_keys=False), self._secrets)
        self.logger.info(line)
        if self._poster is not None and self._renderer is not None:
            try:
                message = self._renderer.render(
                    AUDIT_TEMPLATE, ephemeral=False, entry=json.loads(line), now=entry.time
                )
                self._poster(message)
            except Exception:
                # The audit channel is a convenience copy; the log line above is the record.
                logger.warning("posting to the audit channel failed", exc_info=True)
        return line
