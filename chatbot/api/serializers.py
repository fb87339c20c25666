"""Flower-shaped JSON of the store's records, and the JSON schemas that describe it.

Flower answers with ``celery.events.state.Task.as_dict()`` (its ``_fields``, in that order)
with ``worker`` replaced by the hostname. The store keeps one ``finished`` time; it is shown
under the field Flower names after the final state (``succeeded``, ``failed``, ``revoked``,
``rejected``). Fields the store does not keep are null (``clock``, ``client``, ``exchange``)
or empty (``children``); ``timestamp`` is the time of the event that set the state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chatbot.model import FAILURE, REJECTED, REVOKED, SUCCESS, Task
from chatbot.redaction import scrub

__all__ = [
    "MESSAGE_SCHEMA",
    "TASK_FIELDS",
    "TASK_SCHEMA",
    "task_dict",
]

# celery.events.state.Task._fields, in order: what a Flower client reads.
TASK_FIELDS = (
    "uuid", "name", "state", "received", "sent", "started", "rejected", "succeeded", "failed",
    "retried", "revoked", "args", "kwargs", "eta", "expires", "retries", "worker", "result",
    "exception", "timestamp", "runtime", "traceback", "exchange", "routing_key", "clock",
    "client", "root", "root_id", "parent", "parent_id", "children",
)  # fmt: skip

_FINISHED_FIELD = {
    SUCCESS: "succeeded",
    FAILURE: "failed",
    REVOKED: "revoked",
    REJECTED: "rejected",
}


def _outbound(value: str | None) -> str | None:
    # The store redacted these at ingest; this is the second look on the way out (the
    # contract: no secret reaches the API), as the mrkdwn filter is for Slack.
    return None if value is None else scrub(value)


def task_dict(task: Task) -> dict[str, Any]:
    """Flower's ``/api/task/info`` shape of one task."""
    finished_as = _FINISHED_FIELD.get(task.state)
    return {
        "uuid": task.uuid,
        "name": task.name,
        "state": task.state,
        "received": task.received,
        "sent": task.sent,
        "started": task.started,
        "rejected": task.finished if finished_as == "rejected" else None,
        "succeeded": task.finished if finished_as == "succeeded" else None,
        "failed": task.finished if finished_as == "failed" else None,
        "retried": task.retried,
        "revoked": task.finished if finished_as == "revoked" else None,
        "args": _outbound(task.args),
        "kwargs": _outbound(task.kwargs),
        "eta": task.eta,
        "expires": task.expires,
        "retries": task.retries,
        "worker": task.worker,
        "result": _outbound(task.result),
        "exception": _outbound(task.exception),
        "timestamp": task.state_ts or None,
        "runtime": task.runtime,
        "traceback": _outbound(task.traceback),
        "exchange": None,
        "routing_key": task.routing_key,
        "clock": None,
        "client": None,
        "root": task.root_id,
        "root_id": task.root_id,
        "parent": task.parent_id,
        "parent_id": task.parent_id,
        "children": [],
    }


def _nullable(kind: str) -> dict[str, Any]:
    return {"type": [kind, "null"]}


_TIMES = ("received", "sent", "started", "rejected", "succeeded", "failed", "retried",
          "revoked", "timestamp", "runtime")  # fmt: skip
_TEXTS = ("name", "args", "kwargs", "eta", "expires", "worker", "result", "exception",
          "traceback", "exchange", "routing_key", "client", "root", "root_id", "parent",
          "parent_id")  # fmt: skip

TASK_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "required": list(TASK_FIELDS),
    "properties": {
        "uuid": {"type": "string"},
        "state": {"type": "string"},
        "retries": _nullable("integer"),
        "clock": _nullable("integer"),
        "children": {"type": "array", "items": {"type": "string"}},
        **{name: _nullable("number") for name in _TIMES},
        **{name: _nullable("string") for name in _TEXTS},
    },
}

MESSAGE_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "required": ["message"],
    "properties": {"message": {"type": "string"}},
}
