"""The read endpoints: Flower 2.2's task and worker listings, served from the store.

Each handler takes :class:`~chatbot.api.core.ApiServices` and the typed request; its
declaration (in :data:`READ_ENDPOINTS`) is what the dispatcher parses arguments by and what
``/api/openapi.json`` says. Differences from Flower are deliberate and listed in the README
("Using it from runbooks"): ``/api/tasks`` answers a bounded page by default.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from chatbot.api.core import ApiServices
from chatbot.api.search import QuerySyntaxError, compile_query
from chatbot.api.serializers import TASK_SCHEMA, task_dict
from chatbot.api.spec import ApiError, ApiRequest, ApiResponse, Endpoint, Param, Reply
from chatbot.commands.readonly import MAX_GROUPED_FAILURES
from chatbot.failures import FailureGroup, FingerprintMemory, find_group, group_failures
from chatbot.model import FAILURE, FINISHED_STATES, REJECTED, SUCCESS, Task

__all__ = ["DEFAULT_TASK_LIMIT", "ERRORS", "READ_ENDPOINTS", "resolve_name", "resolve_worker"]

logger = logging.getLogger(__name__)

# Flower lists every retained task when no limit is given (its default keeps 100,000: one
# answer of tens of megabytes); a runbook that wants more asks for it.
DEFAULT_TASK_LIMIT = 100
# A limit beyond this is the same as "all": the store never holds more.
_LIMIT_CEILING = 10_000_000
SORT_KEYS = ("name", "state", "received", "started")
MAX_RESULT_WAIT = 30.0
RESULT_POLL = 0.1
DEFAULT_FAILED_WINDOW = 3600.0
DEFAULT_FAILED_LIMIT = 20
# A window of varied failures makes hundreds of groups, each with an example task: the answer
# lists the biggest (the command shows 8), and says how many there are.
DEFAULT_FAILED_GROUPS = 20
# Celery's READY_STATES: a result exists for these.
_READY = frozenset({SUCCESS, FAILURE, "REVOKED"})

ERRORS: dict[int, Reply] = {
    400: Reply("invalid query parameters"),
    401: Reply("no or wrong credential"),
    403: Reply("the API is off, or the caller may not do this"),
    404: Reply("unknown task, worker or path"),
    405: Reply("method not allowed"),
}

TASK_MAP_SCHEMA = {"type": "object", "additionalProperties": TASK_SCHEMA}


def _json(body: Any, status: int = 200) -> ApiResponse:
    return ApiResponse(status, body)


def resolve_name(svc: ApiServices, raw: str) -> str | None:
    """A seen task name matching ``raw`` exactly or case-insensitively (Flower's match)."""
    names = svc.store.task_names()
    if raw in names:
        return raw
    folded = raw.casefold()
    return next((n for n in names if n.casefold() == folded), None)


def resolve_worker(svc: ApiServices, raw: str) -> str | None:
    """A known worker hostname matching ``raw`` exactly or case-insensitively."""
    if svc.store.get_worker(raw) is not None:
        return raw
    folded = raw.casefold()
    return next((w.hostname for w in svc.store.workers() if w.hostname.casefold() == folded), None)


def _local_time(raw: str | None) -> float | None:
    if not raw:
        return None
    try:
        # Flower reads these as local time (time.mktime of the parsed value).
        return time.mktime(dt.datetime.strptime(raw, "%Y-%m-%d %H:%M").timetuple())
    except (ValueError, OverflowError):
        raise ApiError(
            400, "Invalid received_start or received_end, expected format 'YYYY-MM-DD HH:MM'"
        ) from None


def _sort_key(field: str) -> Callable[[Task], tuple[Any, ...]]:
    def key(task: Task) -> tuple[Any, ...]:
        value = getattr(task, field)
        if value is None:
            return (False, "", task.uuid)
        return (True, value.casefold() if isinstance(value, str) else value, task.uuid)

    return key


# -- handlers ------------------------------------------------------------------------------------
def healthcheck(_svc: ApiServices, _req: ApiRequest) -> ApiResponse:
    return ApiResponse(200, "OK")


def openapi(svc: ApiServices, _req: ApiRequest) -> ApiResponse:
    return _json(svc.openapi)


def list_tasks(svc: ApiServices, req: ApiRequest) -> ApiResponse:
    limit = req["limit"]
    offset = max(0, req["offset"])
    limit = DEFAULT_TASK_LIMIT if limit is None else max(0, min(limit, _LIMIT_CEILING))
    sort_by: str | None = req["sort_by"]
    if sort_by and sort_by.lstrip("-") not in SORT_KEYS:
        raise ApiError(
            400, f"Invalid sort_by '{sort_by}', expected one of {', '.join(sorted(SORT_KEYS))}"
        )
    state = req["state"]
    state = None if not state or state == "All" else state.upper()
    name = req["taskname"]
    worker = req["workername"]
    try:
        matches = compile_query(req["search"]) if req["search"] else None
    except QuerySyntaxError as exc:
        raise ApiError(400, str(exc), {"error": str(exc)}) from None
    start = _local_time(req["received_start"])
    end = _local_time(req["received_end"])
    if name and name != "All":
        name = resolve_name(svc, name)
        if name is None:
            return _json({})
    else:
        name = None
    if worker and worker != "All":
        worker = resolve_worker(svc, worker)
        if worker is None:
            return _json({})
    else:
        worker = None
    if limit == 0:
        return _json({})
    store = svc.store
    total = store.count_tasks(state=state, name=name, worker=worker)

    def keep(task: Task) -> bool:
        if not _received_between(task, start, end):
            return False
        return matches is None or matches(task)

    if sort_by:
        found = [
            t
            for t in store.tasks(state=state, name=name, worker=worker, limit=max(total, 1))
            if keep(t)
        ]
        found.sort(key=_sort_key(sort_by.lstrip("-")), reverse=sort_by.startswith("-"))
    else:
        found = _newest_matching(svc, state, name, worker, total, offset + limit, keep)
    page = found[offset : offset + limit]
    return _json({task.uuid: task_dict(task) for task in page})


def _newest_matching(
    svc: ApiServices,
    state: str | None,
    name: str | None,
    worker: str | None,
    total: int,
    wanted: int,
    keep: Callable[[Task], bool],
) -> list[Task]:
    """The newest ``wanted`` tasks ``keep`` accepts: read the store's newest-first pages,
    four times bigger each round, until enough match or every candidate was read.

    Pages are read with a margin (at least 256, four times what is wanted) and ordered here by
    the latest transition: a store may pick a partial page by creation order, and tasks end in
    another order than they began; with the margin, page 2 follows page 1."""
    read = min(total, max(4 * wanted, 256))
    while True:
        page = svc.store.tasks(state=state, name=name, worker=worker, limit=max(read, 1))
        found = [t for t in page if keep(t)]
        if len(found) >= wanted or read >= total:
            found.sort(key=lambda t: (t.state_ts, t.uuid), reverse=True)
            return found
        read = min(total, read * 4)


def _received_between(task: Task, start: float | None, end: float | None) -> bool:
    received = task.received
    if start is not None and received is not None and received < start:
        return False
    return end is None or received is None or received <= end


def task_info(svc: ApiServices, req: ApiRequest) -> ApiResponse:
    task = svc.store.get_task(req["uuid"])
    if task is None:
        raise ApiError(404, f"Unknown task '{req['uuid']}'")
    return _json(task_dict(task))


def task_types(svc: ApiServices, _req: ApiRequest) -> ApiResponse:
    return _json({"task-types": svc.store.task_names()})


def task_result(svc: ApiServices, req: ApiRequest) -> ApiResponse:
    """The state (and result) as the events tell it: Flower reads the result backend."""
    timeout = req["timeout"]
    if timeout is not None and timeout < 0:
        raise ApiError(400, "Invalid timeout: must be >= 0")
    task_id: str = req["uuid"]
    task = svc.store.get_task(task_id)
    if timeout:
        deadline = time.monotonic() + min(timeout, MAX_RESULT_WAIT)
        while (task is None or task.state not in _READY) and time.monotonic() < deadline:
            time.sleep(RESULT_POLL)
            task = svc.store.get_task(task_id)
    # Celery answers PENDING for an id it knows nothing about; so do we.
    body: dict[str, Any] = {"task-id": task_id, "state": task.state if task else "PENDING"}
    if task is not None and task.state in _READY:
        if task.state == FAILURE:
            body.update(result=task.exception, traceback=task.traceback)
        else:
            body["result"] = task.result if task.state == SUCCESS else task.exception
    return _json(body)


def list_workers(svc: ApiServices, req: ApiRequest) -> ApiResponse:
    workername: str | None = req["workername"]
    cache = svc.workers
    if req["refresh"] or not cache.refreshed:
        try:
            cache.refresh(workername)
        except Exception as exc:
            raise ApiError(503, f"Failed to update workers: {str(exc)[:300]}") from None
    if req["status"]:
        now = svc.clock()
        return _json({w.hostname: w.is_online(now) for w in svc.store.workers()})
    known = cache.snapshot()
    if workername and workername not in known and svc.store.get_worker(workername) is not None:
        # Seen in the events but not inspected yet: ask it once before saying "unknown".
        try:
            cache.refresh(workername)
        except Exception as exc:
            raise ApiError(503, f"Failed to update workers: {str(exc)[:300]}") from None
        known = cache.snapshot()
    if workername:
        if workername not in known:
            raise ApiError(404, f"Unknown worker '{workername}'")
        return _json({workername: known[workername]})
    return _json(known)


def queue_lengths(svc: ApiServices, _req: ApiRequest) -> ApiResponse:
    if svc.queue_lengths is None:
        raise ApiError(404, "The broker's queue lengths are not available")
    rows: list[dict[str, Any]] = []
    for queue in svc.queue_lengths():
        row: dict[str, Any] = {"name": queue.name, "messages": queue.messages}
        if queue.consumers is not None:
            row["consumers"] = queue.consumers
        rows.append(row)
    return _json({"active_queues": rows})


def failed_tasks(svc: ApiServices, req: ApiRequest) -> ApiResponse:
    """Failures in a window, in the groups `/celery failed` shows (same task, exception and
    message shape: chatbot/failures.py), biggest first, then the newest as Flower task dicts;
    ``group``: one group and its own members only."""
    window: float = req["since"]
    if window <= 0:
        raise ApiError(400, "Invalid since: must be > 0 seconds")
    limit = max(0, min(req["limit"], _LIMIT_CEILING))
    name = None
    if req["taskname"]:
        name = resolve_name(svc, req["taskname"])
        if name is None:
            raise ApiError(404, f"Unknown task '{req['taskname']}'")
    max_groups = max(0, min(req["max_groups"], _LIMIT_CEILING))
    now = svc.clock()
    # The command's bound: the newest this many are fingerprinted (``grouped`` says so). The
    # summary counts the whole window without reading it, and reads only those.
    summary = svc.store.failure_summary(name, window, now, MAX_GROUPED_FAILURES)
    failures = summary.newest
    groups = _failure_groups(svc, failures, now - window, now)
    total, grouped, group_count = summary.total, len(failures), len(groups)
    wanted: str | None = req["group"]
    if wanted:
        group = find_group(groups, wanted)
        if group is None:
            raise ApiError(404, f"Unknown failure group '{wanted}' in the last {window:g}s")
        groups = [group]
        members = set(group.members)
        failures = [t for t in failures if t.uuid in members]
        total = len(failures)
    return _json(
        {
            "since": window,
            "total": total,
            "grouped": grouped,
            "group_count": group_count,
            "groups": [_group_dict(g) for g in groups[:max_groups]],
            "tasks": {task.uuid: task_dict(task) for task in failures[:limit]},
        }
    )


def _failure_groups(
    svc: ApiServices, failures: Sequence[Task], window_start: float, now: float
) -> list[FailureGroup]:
    """Grouped, with ``new`` from the fingerprint memory `/celery failed` uses.

    The memory lives wholly in the record store (chatbot/failures.py), the one the Service
    gives its approvals (chatbot/service.py): one made here on it reads and writes the same
    first-seen times as the command and the alerts. Without it ``new`` stays unknown."""
    if svc.approvals is None:
        return group_failures(failures)
    try:
        memory = FingerprintMemory(svc.approvals.records, svc.clock)
        # Listening from the first question, failures or not: a later window that opens
        # after it can then tell a new group from an old one.
        _ = memory.since
        return memory.group(failures, window_start, now)
    except Exception:
        # The memory only adds "new": a state store that fails must not cost the answer.
        logger.warning("failure fingerprint memory unavailable", exc_info=True)
        return group_failures(failures)


def _group_dict(group: FailureGroup) -> dict[str, Any]:
    return {
        "key": group.key,
        "count": group.count,
        "name": group.name,
        "exception_type": group.exception_type,
        "message_shape": group.fingerprint.shape,
        "first_seen": group.first_seen,
        "last_seen": group.last_seen,
        "workers": list(group.workers),
        "new": group.new,
        "example": task_dict(group.example),
    }


# -- declarations --------------------------------------------------------------------------------
_GROUP_SCHEMA = {
    "type": "object",
    "required": ["key", "count", "name", "exception_type", "message_shape", "first_seen",
                 "last_seen", "workers", "new", "example"],
    "properties": {
        "key": {"type": "string"},
        "count": {"type": "integer"},
        "name": {"type": "string"},
        "exception_type": {"type": "string"},
        "message_shape": {"type": "string"},
        "first_seen": {"type": "number"},
        "last_seen": {"type": "number"},
        "workers": {"type": "array", "items": {"type": "string"}},
        "new": {"type": ["boolean", "null"]},
        "example": TASK_SCHEMA,
    },
}  # fmt: skip
_STATES = ("All", "PENDING", "RECEIVED", "STARTED", "RETRY", *sorted(FINISHED_STATES - {REJECTED}))

READ_ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "GET", "/healthcheck", "healthcheck", "Liveness: always OK while the listener answers",
        healthcheck, {200: Reply("OK")}, access="public",
    ),
    Endpoint(
        "GET", "/api/openapi.json", "openapi", "This description (OpenAPI 3.1)", openapi,
        {200: Reply("the OpenAPI document", {"type": "object"}), **ERRORS}, tag="chatops",
    ),
    Endpoint(
        "GET", "/api/tasks", "list_tasks", "List tasks, newest first, keyed by uuid",
        list_tasks,
        {
            200: Reply("tasks keyed by uuid", TASK_MAP_SCHEMA),
            **ERRORS,
            400: Reply(
                "invalid query parameters; a bad search is {'error': reason}",
                {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}},
                },
                or_text=True,
            ),
        },
        params=(
            Param("limit", "integer", description=f"maximum number of tasks (default"
                  f" {DEFAULT_TASK_LIMIT}; Flower: all)"),
            Param("offset", "integer", default=0, description="skip the first N tasks"),
            Param("sort_by", description="name, state, received or started; prefix - for"
                  " descending", enum=(*SORT_KEYS, *(f"-{k}" for k in SORT_KEYS))),
            Param("workername", description="only this worker's tasks"),
            Param("taskname", description="only tasks of this name"),
            Param("state", description="only tasks in this state, any case (All: any state):"
                  f" {', '.join(_STATES)}"),
            Param("received_start", description="received after, 'YYYY-MM-DD HH:MM' local"),
            Param("received_end", description="received before, 'YYYY-MM-DD HH:MM' local"),
            Param("search", description="Flower's search syntax: words, name:, state:,"
                  " worker:, args:, kwargs:, result:, quotes, AND, OR, parentheses"),
        ),
    ),
    Endpoint(
        "GET", "/api/task/info/{uuid}", "task_info", "One task", task_info,
        {200: Reply("the task", TASK_SCHEMA), **ERRORS},
        params=(Param("uuid", where="path", required=True, description="task id"),),
    ),
    Endpoint(
        "GET", "/api/task/types", "task_types", "Task names seen", task_types,
        {
            200: Reply(
                "names",
                {
                    "type": "object",
                    "required": ["task-types"],
                    "properties": {"task-types": {"type": "array", "items": {"type": "string"}}},
                },
            ),
            **ERRORS,
        },
    ),
    Endpoint(
        "GET", "/api/task/result/{uuid}", "task_result",
        "A task's state and result, as its events reported them", task_result,
        {
            200: Reply(
                "state and result",
                {
                    "type": "object",
                    "required": ["task-id", "state"],
                    "properties": {
                        "task-id": {"type": "string"},
                        "state": {"type": "string"},
                        "result": {"type": ["string", "null"]},
                        "traceback": {"type": ["string", "null"]},
                    },
                },
            ),
            **ERRORS,
        },
        params=(
            Param("uuid", where="path", required=True, description="task id"),
            Param("timeout", "number", description=f"wait up to this many seconds (at most"
                  f" {MAX_RESULT_WAIT:g}) for the task to finish"),
        ),
    ),
    Endpoint(
        "GET", "/api/workers", "list_workers", "Workers, as their inspect replies describe them",
        list_workers,
        {
            200: Reply(
                "worker name -> inspect replies (or, with status, -> online)",
                {"type": "object", "additionalProperties": {"type": ["object", "boolean"]}},
            ),
            503: Reply("the workers could not be asked"),
            **ERRORS,
        },
        params=(
            Param("refresh", "boolean", default=False, description="inspect the workers now"),
            Param("workername", description="only this worker (adds its task lists)"),
            Param("status", "boolean", default=False, description="only online or not, from"
                  " heartbeats"),
        ),
    ),
    Endpoint(
        "GET", "/api/queues/length", "queue_lengths", "Messages waiting in each watched queue",
        queue_lengths,
        {
            200: Reply(
                "queues",
                {
                    "type": "object",
                    "required": ["active_queues"],
                    "properties": {
                        "active_queues": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name", "messages"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "messages": {"type": ["integer", "null"]},
                                    "consumers": {"type": "integer"},
                                },
                            },
                        }
                    },
                },
            ),
            **ERRORS,
        },
    ),
    Endpoint(
        "GET", "/api/tasks/failed", "failed_tasks",
        "Failures in a window, in the groups /celery failed shows, then the newest",
        failed_tasks,
        {
            200: Reply(
                "failure groups (biggest first) and the newest failures",
                {
                    "type": "object",
                    "required": ["since", "total", "grouped", "group_count", "groups", "tasks"],
                    "properties": {
                        "since": {"type": "number"},
                        "total": {"type": "integer"},
                        "grouped": {"type": "integer"},
                        "group_count": {"type": "integer"},
                        "groups": {"type": "array", "items": _GROUP_SCHEMA},
                        "tasks": TASK_MAP_SCHEMA,
                    },
                },
            ),
            **ERRORS,
        },
        params=(
            Param("since", "number", default=DEFAULT_FAILED_WINDOW, description="window in"
                  " seconds"),
            Param("taskname", description="only failures of this task name"),
            Param("group", description="only this failure group (its key, or a unique prefix"
                  " of 4+ characters)"),
            Param("limit", "integer", default=DEFAULT_FAILED_LIMIT, description="newest"
                  " failures listed"),
            Param("max_groups", "integer", default=DEFAULT_FAILED_GROUPS, description="biggest"
                  " groups listed ('group_count' says how many there are)"),
        ),
        tag="chatops",
        description=(
            "A group is one task name, one exception type and one message shape (the message"
            " with numbers, ids and quoted values masked). 'new': first seen inside the"
            " window (true), before it (false), or unknown (null: the memory of earlier"
            f" failures does not reach back that far). At most {MAX_GROUPED_FAILURES} of the"
            " newest failures are grouped ('grouped')."
        ),
    ),
)  # fmt: skip
