"""The control endpoints' declarations: path, parameters, who may call, replies.

The handlers are in :mod:`chatbot.api.control`; the dispatcher and ``/api/openapi.json`` both
read this table (see :mod:`chatbot.api.spec`).
"""

from __future__ import annotations

from chatbot.api.control import (
    autoscale,
    consumer,
    get_approval,
    pool,
    rate_limit,
    retry,
    revoke,
    revoke_by_name,
    send_task,
    shutdown,
    time_limit,
)
from chatbot.api.reads import ERRORS
from chatbot.api.serializers import MESSAGE_SCHEMA
from chatbot.api.spec import Endpoint, Param, Reply
from chatbot.approvals import PREVIEW_LIMIT
from chatbot.commands.control import MAX_POOL_STEP

__all__ = ["CONTROL_ENDPOINTS"]

_CONTROL_REPLIES: dict[int, Reply] = {
    200: Reply("done; the workers' answer", MESSAGE_SCHEMA),
    202: Reply(
        "waiting for an approval in CHATOPS_ALERT_CHANNEL",
        {
            "type": "object",
            "required": ["approval_id", "status_url"],
            "properties": {
                "approval_id": {"type": "string"},
                "status_url": {"type": "string"},
                "message": {"type": "string"},
            },
        },
    ),
    **ERRORS,
    503: Reply("the broker, the state store or Slack could not be reached"),
}
_WORKER = Param("workername", where="path", required=True, description="worker hostname")
_TASKNAME = Param("taskname", where="path", required=True, description="task name")
_NULLABLE_TEXT = {"type": ["string", "null"]}
_NULLABLE_NUMBER = {"type": ["number", "null"]}

CONTROL_ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "POST", "/api/task/revoke/{uuid}", "revoke_task", "Revoke a task", revoke,
        _CONTROL_REPLIES,
        params=(
            Param("uuid", where="path", required=True, description="task id"),
            Param("terminate", "boolean", default=False, description="also kill the process"
                  " running it"),
            Param("signal", default="SIGTERM", description="signal for terminate"),
        ),
        access="control",
    ),
    Endpoint(
        "POST", "/api/tasks/revoke", "revoke_tasks",
        "Revoke every retained task of a name (not finished, or in one state): one approval",
        revoke_by_name,
        {
            **_CONTROL_REPLIES,
            200: Reply(
                "revoked",
                {
                    "type": "object",
                    "required": ["message", "revoked"],
                    "properties": {
                        "message": {"type": "string"},
                        "revoked": {"type": "array", "items": {"type": "string"}},
                    },
                },
            ),
        },
        params=(
            Param("taskname", required=True, description="task name"),
            Param("state", description="only tasks in this state (default: queued or running)"),
            Param("terminate", "boolean", default=False, description="also kill running ones"),
            Param("signal", default="SIGTERM", description="signal for terminate"),
        ),
        access="control",
        tag="chatops",
        description=f"The card previews {PREVIEW_LIMIT} of them; every one is revoked.",
    ),
    Endpoint(
        "POST", "/api/task/retry/{uuid}", "retry_task",
        "Re-send a failed task with the same arguments to the same queue, as /celery retry",
        retry,
        {
            **_CONTROL_REPLIES,
            200: Reply(
                "re-sent: the new task's id",
                {"type": "object", "required": ["task-id", "message"],
                 "properties": {"task-id": {"type": "string"}, "message": {"type": "string"}}},
            ),
            409: Reply(
                "not retried, and nothing sent: the task is not FAILURE, its arguments cannot"
                " be rebuilt exactly (redacted, cut, not literals), or its retry is already"
                " requested or sent; 'message' says which",
                MESSAGE_SCHEMA,
            ),
        },
        params=(Param("uuid", where="path", required=True, description="the failed task's id"),),
        access="control",
        tag="chatops",
        description="Under CHATOPS_APPROVAL_REQUIRED (retry is in the default) the answer is"
        " 202; once approved, the approval's 'retried' maps the failed id to the new one.",
    ),
    Endpoint(
        "POST", "/api/worker/pool/grow/{workername}", "pool_grow", "Grow a worker's pool",
        pool(True), _CONTROL_REPLIES,
        params=(_WORKER, Param("n", "integer", default=1, description=f"processes, 1 to"
                               f" {MAX_POOL_STEP}")),
        access="control",
    ),
    Endpoint(
        "POST", "/api/worker/pool/shrink/{workername}", "pool_shrink", "Shrink a worker's pool",
        pool(False), _CONTROL_REPLIES,
        params=(_WORKER, Param("n", "integer", default=1, description=f"processes, 1 to"
                               f" {MAX_POOL_STEP}")),
        access="control",
    ),
    Endpoint(
        "POST", "/api/worker/pool/autoscale/{workername}", "pool_autoscale",
        "Set a worker's autoscaler bounds", autoscale, _CONTROL_REPLIES,
        params=(
            _WORKER,
            Param("min", "integer", required=True, description="fewest processes"),
            Param("max", "integer", required=True, description="most processes"),
        ),
        access="control",
    ),
    Endpoint(
        "POST", "/api/worker/queue/add-consumer/{workername}", "add_consumer",
        "Start consuming a queue", consumer(True), _CONTROL_REPLIES,
        params=(_WORKER, Param("queue", required=True, description="queue name")),
        access="control",
    ),
    Endpoint(
        "POST", "/api/worker/queue/cancel-consumer/{workername}", "cancel_consumer",
        "Stop consuming a queue", consumer(False), _CONTROL_REPLIES,
        params=(_WORKER, Param("queue", required=True, description="queue name")),
        access="control",
    ),
    Endpoint(
        "POST", "/api/worker/shutdown/{workername}", "shutdown_worker",
        "Warm shutdown of a worker", shutdown, _CONTROL_REPLIES, params=(_WORKER,),
        access="control",
    ),
    Endpoint(
        "POST", "/api/task/rate-limit/{taskname}", "rate_limit",
        "Limit how often a task may start on a worker", rate_limit, _CONTROL_REPLIES,
        params=(
            _TASKNAME,
            Param("ratelimit", required=True, description="N, N/s, N/m or N/h; 0: no limit"),
            Param("workername", required=True, description="worker hostname"),
        ),
        access="control",
    ),
    Endpoint(
        "POST", "/api/task/timeout/{taskname}", "time_limit",
        "Set a task's soft and hard time limits on a worker", time_limit, _CONTROL_REPLIES,
        params=(
            _TASKNAME,
            Param("soft", "number", description="soft time limit, seconds"),
            Param("hard", "number", description="hard time limit, seconds"),
            Param("workername", required=True, description="worker hostname"),
        ),
        access="control",
    ),
    Endpoint(
        "POST", "/api/task/send-task/{taskname}", "send_task", "Send a task by name", send_task,
        {
            200: Reply(
                "sent",
                {"type": "object", "required": ["task-id"],
                 "properties": {"task-id": {"type": "string"}}},
            ),
            **ERRORS,
            503: Reply("the broker could not be reached"),
        },
        params=(_TASKNAME,),
        body={
            "type": "object",
            "properties": {
                "args": {"type": "array"},
                "kwargs": {"type": "object"},
                "queue": {"type": "string"},
                "routing_key": {"type": "string"},
                "countdown": {"type": "number"},
                "expires": {"type": "number"},
                "priority": {"type": "integer"},
            },
            "additionalProperties": False,
        },
        access="control",
    ),
    Endpoint(
        "GET", "/api/approvals/{approval_id}", "get_approval",
        "An approval's state, who decided, what the workers answered", get_approval,
        {
            200: Reply(
                "the approval",
                {
                    "type": "object",
                    "required": ["approval_id", "status", "action", "kind", "targets"],
                    "properties": {
                        "approval_id": {"type": "string"},
                        "status": {"type": "string"},
                        "action": {"type": "string"},
                        "kind": {"type": "string"},
                        "targets": {"type": "array", "items": {"type": "string"}},
                        "requester": {"type": "string"},
                        "requested_at": {"type": "number"},
                        "expires_at": {"type": "number"},
                        "decided_by": _NULLABLE_TEXT,
                        "decided_at": _NULLABLE_NUMBER,
                        "outcome": {"type": ["object", "null"]},
                        "confirmation": {"type": ["object", "null"]},
                        "retried": {"type": "object",
                                    "additionalProperties": {"type": "string"}},
                    },
                },
            ),
            **ERRORS,
            503: Reply("the state store could not be reached"),
        },
        params=(Param("approval_id", where="path", required=True, description="approval id"),),
        tag="chatops",
    ),
)  # fmt: skip
