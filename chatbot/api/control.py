"""The control endpoints: Flower's, plus a bulk revoke and a retry, through the bot's approval
service.

Each call goes the way a ``/celery`` control command goes, in this order:

1. may this identity control? (``ApprovalService.authorize_request``: operators only, the
   refusal audited; nothing is broadcast) -> 403;
2. are the targets real and the values sane? (the store: workers and task names seen; the
   commands' bounds) -> 404 / 400;
3. ``ApprovalService.submit``: an action in ``CHATOPS_APPROVAL_REQUIRED`` becomes a pending
   approval whose card is posted in ``CHATOPS_ALERT_CHANNEL`` -> 202 with its ``status_url``;
   any other runs at once -> Flower's answer, from what the workers replied.

Requests carry ``"api"`` as their channel, so every audit line of the approval says where it
came from, beside the identity. ``send-task`` publishes a message rather than controlling
workers: operators only, audited here, never through an approval. ``retry`` re-sends a failed
task by the rules of ``/celery retry`` (chatbot/retry.py): a task that is not failed, whose
arguments cannot be rebuilt exactly, or whose retry is already requested or sent is refused
with 409 and the reason (audited), and nothing is sent.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from chatbot.api.core import ApiServices
from chatbot.api.reads import resolve_name, resolve_worker
from chatbot.api.spec import ApiError, ApiRequest, ApiResponse
from chatbot.approvals import (
    PREVIEW_LIMIT,
    Approval,
    ControlAction,
    PermissionDenied,
    StateStoreUnavailable,
)
from chatbot.audit import AuditEntry
from chatbot.commands.control import (
    MAX_AUTOSCALE,
    MAX_POOL_STEP,
    MAX_TIME_LIMIT,
    bulk_targets,
)
from chatbot.control import validate_rate, validate_signal
from chatbot.model import FINISHED_STATES
from chatbot.retry import RetryPlan, plan_retry

__all__ = ["API_CHANNEL", "approval_view"]

logger = logging.getLogger(__name__)

# The "channel" an API request is made in: what the audit lines name as its origin.
API_CHANNEL = "api"
# send-task options passed to Celery's send_task (Flower passes every key; these are the ones
# that only route or time the message).
SEND_OPTIONS = {"queue": str, "routing_key": str, "countdown": float, "expires": float,
                "priority": int}  # fmt: skip
MAX_DELAY = 366 * 86400.0  # countdown and expires: at most a year
MAX_PRIORITY = 255  # AMQP's priority range; Redis emulates a subset of it
MAX_NAME = 255  # queue and routing key names (AMQP's shortstr)
# How FleetControl.resend (chatbot/control.py) words a re-sent task; the approval record keeps
# the words, not the value, so the new task's id is read back from them.
_RESENT = re.compile(r"^re-sent as (\S+) to queue ")


def _message(text: str, status: int = 200) -> ApiResponse:
    return ApiResponse(status, {"message": text})


def _require(svc: ApiServices) -> Any:
    if svc.approvals is None:
        raise ApiError(503, "Control is not available: the bot has no approval service")
    return svc.approvals


def _authorize(svc: ApiServices, req: ApiRequest, command: str, targets: list[str]) -> None:
    decision = _require(svc).authorize_request(
        req.identity, command=command, channel=API_CHANNEL, targets=targets
    )
    if not decision.allowed:
        raise ApiError(403, decision.reason)


def _known_worker(svc: ApiServices, raw: str) -> str:
    found = resolve_worker(svc, raw)
    if found is None:
        raise ApiError(404, f"Unknown worker '{raw}'")
    return found


def _known_task(svc: ApiServices, raw: str) -> str:
    found = resolve_name(svc, raw)
    if found is None:
        raise ApiError(404, f"Unknown task '{raw}'")
    return found


def _between(label: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise ApiError(400, f"{label} must be between {low} and {high}, got {value}")
    return value


def _submit(
    svc: ApiServices,
    req: ApiRequest,
    build: Callable[[], ControlAction],
    done: Callable[[Approval], ApiResponse],
) -> ApiResponse:
    """Build (400 on a bad value), submit, and answer 202 or what ``done`` makes of it."""
    approvals = _require(svc)
    try:
        action = build()
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    alert_channel = svc.settings.alert_channel
    if approvals.needs_approval(action) and (not alert_channel or svc.post_card is None):
        raise ApiError(
            403,
            f"{action.command} needs an approval, and CHATOPS_ALERT_CHANNEL is not set:"
            " there is nowhere to ask for it",
        )
    try:
        approval = approvals.submit(action, req.identity, API_CHANNEL)
    except PermissionDenied as exc:  # lost the permission between the two checks
        raise ApiError(403, str(exc)) from None
    except StateStoreUnavailable as exc:
        raise ApiError(503, f"Not requested: {exc}") from None
    if not approval.pending:
        return done(approval)
    card = approvals.card(approval)
    via = f"Requested through the REST API by <@{req.identity}>"
    note = {"type": "context", "elements": [{"type": "mrkdwn", "text": via}]}
    assert svc.post_card is not None and alert_channel
    ts = svc.post_card(alert_channel, dataclasses.replace(card, blocks=[*card.blocks, note]))
    if ts is None:
        raise ApiError(
            503,
            f"Requested ({approval.id}), but the approval card could not be posted in"
            f" {alert_channel}; the request expires unanswered",
        )
    return ApiResponse(
        202,
        {
            "approval_id": approval.id,
            # With several clusters the status is read from the request's own cluster.
            "status_url": f"/api/approvals/{approval.id}"
            + (f"?cluster={approval.cluster}" if approval.cluster else ""),
            "message": f"Waiting for approval in {alert_channel}: {action.summary()}",
        },
    )


def _worker_answer(
    approval: Approval, worker: str, ok: Callable[[str], str], failed: Callable[[str], str]
) -> ApiResponse:
    """Flower's answer to a one-worker command: 200 with ``ok(reply)``, 403 with the reason."""
    outcome = approval.outcome
    if outcome is None or outcome.error is not None:
        raise ApiError(503, f"Broker unavailable: {outcome.error if outcome else 'not sent'}")
    reply = next((r for r in outcome.replies if r.worker == worker), None)
    if reply is not None and reply.status in ("ok", "sent"):
        return _message(ok(reply.message))
    return ApiResponse(403, failed(reply.message if reply is not None else "Unknown reason"))


# -- handlers ------------------------------------------------------------------------------------
def revoke(svc: ApiServices, req: ApiRequest) -> ApiResponse:
    task_id: str = req["uuid"]
    _authorize(svc, req, "revoke", [task_id])
    signal = _signal(req["signal"])

    def done(approval: Approval) -> ApiResponse:
        outcome = approval.outcome
        if outcome is not None and outcome.error is not None:
            raise ApiError(503, f"Broker unavailable: {outcome.error}")
        # Flower's revoke is fire-and-forget: it says "Revoked" once the broadcast went out.
        return _message(f"Revoked '{task_id}'")

    return _submit(
        svc,
        req,
        lambda: ControlAction.revoke(
            [task_id], store=svc.store, now=svc.clock(), terminate=req["terminate"], signal=signal
        ),
        done,
    )


def _signal(raw: str) -> str:
    try:
        return validate_signal(raw)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None


def revoke_by_name(svc: ApiServices, req: ApiRequest) -> ApiResponse:
    raw_name: str = req["taskname"]
    _authorize(svc, req, "revoke", [raw_name])
    name = _known_task(svc, raw_name)
    state = (req["state"] or "").upper() or None
    if state in FINISHED_STATES:
        raise ApiError(400, f"tasks in state {state} have finished: nothing to revoke")
    signal = _signal(req["signal"])
    tasks = bulk_targets(svc.store, name, state)
    if not tasks:
        which = f"in state {state}" if state else "queued or running"
        raise ApiError(404, f"No retained {name} task is {which}: nothing to revoke")
    ids = [task.uuid for task in tasks]

    def done(approval: Approval) -> ApiResponse:
        outcome = approval.outcome
        if outcome is not None and outcome.error is not None:
            raise ApiError(503, f"Broker unavailable: {outcome.error}")
        return ApiResponse(200, {"message": f"Revoked {len(ids)} tasks", "revoked": ids})

    selector = f"name {name}, " + (f"state {state}" if state else "queued or running")
    return _submit(
        svc,
        req,
        lambda: ControlAction.revoke(
            ids,
            store=svc.store,
            now=svc.clock(),
            terminate=req["terminate"],
            signal=signal,
            selector=selector,
            preview_limit=PREVIEW_LIMIT,
        ),
        done,
    )


def retry(svc: ApiServices, req: ApiRequest) -> ApiResponse:
    task_id: str = req["uuid"]
    _authorize(svc, req, "retry", [task_id])
    approvals = _require(svc)
    task = svc.store.get_task(task_id)
    if task is None:
        raise ApiError(404, f"Unknown task '{task_id}'")
    queues = {w.hostname: w.queues for w in svc.store.workers() if w.queues}
    planned = plan_retry(task, worker_queues=queues)
    if not isinstance(planned, RetryPlan):
        _refuse_retry(svc, req, task_id, planned.reason)
    try:
        # One retry per failure, as the command: a second call must not run it twice.
        claim = approvals.retry_claims().get(task_id)
    except StateStoreUnavailable as exc:
        raise ApiError(503, f"Not requested: {exc}") from None
    if claim is not None:
        _refuse_retry(svc, req, task_id, claim)
    plan: RetryPlan = planned

    def done(approval: Approval) -> ApiResponse:
        outcome = approval.outcome
        if outcome is None or outcome.error is not None:
            raise ApiError(503, f"Not re-sent: {outcome.error if outcome else 'not sent'}")
        reply = next((r for r in outcome.replies if r.worker == task_id), None)
        new_id = resent_id(reply.message) if reply is not None and reply.status == "ok" else None
        if new_id is None:
            raise ApiError(503, reply.message if reply is not None else "Not re-sent")
        return ApiResponse(
            200,
            {"task-id": new_id, "message": f"Retried '{task_id}' as '{new_id}'"},
        )

    return _submit(
        svc,
        req,
        lambda: ControlAction.retry([plan], store=svc.store, now=svc.clock()),
        done,
    )


def _refuse_retry(svc: ApiServices, req: ApiRequest, task_id: str, reason: str) -> NoReturn:
    text = f"Not retried: {reason}"
    _audit(svc, req, "retry", (task_id,), "refused", reason)
    raise ApiError(409, text, {"message": text})


def resent_id(message: str) -> str | None:
    """The new task's id in a re-sent reply's words, or None."""
    match = _RESENT.match(message)
    return match.group(1) if match else None


def pool(grow: bool) -> Callable[[ApiServices, ApiRequest], ApiResponse]:
    verb, gerund = ("grow", "Growing") if grow else ("shrink", "Shrinking")

    def handler(svc: ApiServices, req: ApiRequest) -> ApiResponse:
        raw: str = req["workername"]
        _authorize(svc, req, "pool", [raw])
        worker = _known_worker(svc, raw)
        n = _between("n", req["n"], 1, MAX_POOL_STEP)
        return _submit(
            svc,
            req,
            lambda: ControlAction.pool(worker, grow=grow, n=n),
            lambda approval: _worker_answer(
                approval,
                worker,
                lambda _ok: f"{gerund} '{worker}' worker's pool by {n}",
                lambda why: f"Failed to {verb} '{worker}' worker's pool: {why}",
            ),
        )

    return handler


def autoscale(svc: ApiServices, req: ApiRequest) -> ApiResponse:
    raw: str = req["workername"]
    _authorize(svc, req, "autoscale", [raw])
    worker = _known_worker(svc, raw)
    low = _between("min", req["min"], 0, MAX_AUTOSCALE)
    high = _between("max", req["max"], 1, MAX_AUTOSCALE)
    if low > high:
        raise ApiError(400, f"min ({low}) must not exceed max ({high})")
    return _submit(
        svc,
        req,
        lambda: ControlAction.autoscale(worker, max=high, min=low),
        lambda approval: _worker_answer(
            approval,
            worker,
            lambda _ok: f"Autoscaling '{worker}' worker (min={low}, max={high})",
            lambda why: f"Failed to autoscale '{worker}' worker: {why}",
        ),
    )


def consumer(add: bool) -> Callable[[ApiServices, ApiRequest], ApiResponse]:
    def handler(svc: ApiServices, req: ApiRequest) -> ApiResponse:
        raw: str = req["workername"]
        _authorize(svc, req, "consumer", [raw])
        worker = _known_worker(svc, raw)
        queue: str = req["queue"]
        failed = (
            f"Failed to add '{queue}' consumer to '{worker}' worker"
            if add
            else f"Failed to cancel '{queue}' consumer from '{worker}' worker"
        )
        return _submit(
            svc,
            req,
            lambda: ControlAction.consumer(queue, add=add, worker=worker),
            # Flower answers with the worker's own words ("add consumer bulk").
            lambda approval: _worker_answer(
                approval, worker, lambda ok: ok, lambda why: f"{failed}: {why}"
            ),
        )

    return handler


def shutdown(svc: ApiServices, req: ApiRequest) -> ApiResponse:
    raw: str = req["workername"]
    _authorize(svc, req, "shutdown", [raw])
    worker = _known_worker(svc, raw)
    return _submit(
        svc,
        req,
        lambda: ControlAction.shutdown(worker),
        lambda approval: _worker_answer(
            approval, worker, lambda _ok: "Shutting down!", lambda why: f"Failed: {why}"
        ),
    )


def rate_limit(svc: ApiServices, req: ApiRequest) -> ApiResponse:
    raw: str = req["taskname"]
    _authorize(svc, req, "rate-limit", [raw])
    name = _known_task(svc, raw)
    worker = _known_worker(svc, req["workername"])
    try:
        rate = validate_rate(req["ratelimit"])
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    return _submit(
        svc,
        req,
        lambda: ControlAction.rate_limit(name, rate, worker),
        lambda approval: _worker_answer(
            approval, worker, lambda ok: ok, lambda why: f"Failed to set rate limit: '{why}'"
        ),
    )


def time_limit(svc: ApiServices, req: ApiRequest) -> ApiResponse:
    raw: str = req["taskname"]
    _authorize(svc, req, "time-limit", [raw])
    name = _known_task(svc, raw)
    worker = _known_worker(svc, req["workername"])
    soft, hard = req["soft"], req["hard"]
    if soft is None or hard is None:
        # The bot's time-limit action sets both (as `/celery time-limit` does).
        raise ApiError(400, "Missing argument " + ("soft" if soft is None else "hard"))
    for label, value in (("soft", soft), ("hard", hard)):
        if not 0 < value <= MAX_TIME_LIMIT:
            raise ApiError(400, f"{label} must be more than 0 and at most {MAX_TIME_LIMIT:g}s")
    if soft > hard:
        raise ApiError(400, f"soft ({soft:g}s) must not exceed hard ({hard:g}s)")
    return _submit(
        svc,
        req,
        lambda: ControlAction.time_limit(name, soft, hard, worker),
        lambda approval: _worker_answer(
            approval, worker, lambda ok: ok, lambda why: f"Failed to set timeouts: '{why}'"
        ),
    )


def send_task(svc: ApiServices, req: ApiRequest) -> ApiResponse:
    name: str = req["taskname"]
    _authorize(svc, req, "send-task", [name])
    policy = {w.strip().lower().replace("_", "-") for w in svc.settings.approval_required}
    if policy & {"all", "*", "send-task"}:
        # Approvals know control actions on workers; a sent task is not one of them.
        raise ApiError(
            403,
            "send-task needs an approval by CHATOPS_APPROVAL_REQUIRED, which the bot"
            " cannot ask for a sent task: it is refused",
        )
    if svc.publish is None:
        raise ApiError(503, "Sending tasks is not available: no broker connection")
    body = req.body if req.body is not None else {}
    if not isinstance(body, dict):
        raise ApiError(400, "invalid options")
    args = body.get("args", [])
    kwargs = body.get("kwargs", {})
    if not isinstance(args, list):
        raise ApiError(400, "args must be an array")
    if not isinstance(kwargs, dict):
        raise ApiError(400, "kwargs must be an object")
    options = _send_options({k: v for k, v in body.items() if k not in ("args", "kwargs")})
    try:
        task_id = svc.publish(name, args, kwargs, options)
        result = "ok"
    except Exception as exc:
        logger.warning("send-task %s failed: %s", name, type(exc).__name__)
        _audit(svc, req, "send_task", (name,), "error", type(exc).__name__, options)
        raise ApiError(503, "Broker unavailable: the task was not sent") from None
    _audit(svc, req, "send_task", (name,), result, "", options, {"task_id": task_id})
    return ApiResponse(200, {"task-id": task_id})


def _send_options(raw: Mapping[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "timeout":
            continue  # apply's wait; send-task never waits
        kind = SEND_OPTIONS.get(key)
        if kind is None:
            supported = ", ".join(SEND_OPTIONS)
            raise ApiError(400, f"Unsupported option '{key}' (supported: {supported})")
        try:
            options[key] = _option(kind, value)
        except (TypeError, ValueError, OverflowError):
            raise ApiError(400, f"Invalid option '{key}'") from None
    return options


def _option(kind: type, value: Any) -> Any:
    if isinstance(value, bool):
        raise TypeError(value)
    if kind is str:
        if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME:
            raise ValueError(value)
        value.encode("utf-8")  # a lone surrogate cannot be a queue name
        return value
    if kind is int:
        if not isinstance(value, int) or not 0 <= value <= MAX_PRIORITY:
            raise ValueError(value)
        return value
    number = float(value)
    if not 0 <= number <= MAX_DELAY:
        raise ValueError(value)
    return number


def _audit(
    svc: ApiServices,
    req: ApiRequest,
    action: str,
    targets: tuple[str, ...],
    result: str,
    reason: str,
    parameters: Mapping[str, Any] | None = None,
    details: Mapping[str, Any] | None = None,
) -> None:
    """An audit line for what never becomes an approval (a sent task, a refused retry)."""
    if svc.audit is None:
        return
    svc.audit.record(
        AuditEntry(
            step="request",
            who=req.identity,
            action=action,
            result=result,
            time=svc.clock(),
            targets=targets,
            parameters=dict(parameters or {}),
            channel=API_CHANNEL,
            reason=reason,
            details=dict(details or {}),
        )
    )


def approval_view(approval: Approval) -> dict[str, Any]:
    """What ``GET /api/approvals/<id>`` answers: the state and what the workers said."""
    outcome = approval.outcome
    confirmation = approval.confirmation
    return {
        "approval_id": approval.id,
        **({"cluster": approval.cluster} if approval.cluster else {}),
        "status": approval.status,
        "action": approval.action.summary(),
        "kind": approval.action.kind,
        "targets": list(approval.action.targets),
        "requester": approval.requester,
        "requested_at": approval.requested_at,
        "expires_at": approval.expires_at,
        "decided_by": approval.decided_by,
        "decided_at": approval.decided_at,
        "outcome": None
        if outcome is None
        else {
            "result": outcome.result,
            "error": outcome.error,
            "replies": [
                {"worker": r.worker, "status": r.status, "message": r.message}
                for r in outcome.replies
            ],
        },
        "confirmation": None if confirmation is None else confirmation.as_dict(),
        **({"retried": _retried(approval)} if approval.action.kind == "retry" else {}),
    }


def _retried(approval: Approval) -> dict[str, str]:
    """A retry's failed task id -> the new task's id, for those re-sent."""
    replies = approval.outcome.replies if approval.outcome is not None else ()
    found = {r.worker: resent_id(r.message) for r in replies if r.status == "ok"}
    return {failed: new for failed, new in found.items() if new is not None}


def get_approval(svc: ApiServices, req: ApiRequest) -> ApiResponse:
    approvals = _require(svc)
    try:
        approval = approvals.get(req["approval_id"])
    except StateStoreUnavailable as exc:
        raise ApiError(503, str(exc)) from None
    if approval is None:
        raise ApiError(404, f"Unknown approval '{req['approval_id']}'")
    return ApiResponse(200, approval_view(approval))
