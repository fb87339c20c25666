"""Read-only subcommands: help, status, tasks, failed, active, stuck, task, workers, queues.

Handlers gather and order facts; the layout is in ``templates/<command>.json.j2``. Every list
states how fresh the event stream is, because "no failures" from a blind bot is a lie.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chatbot.broker import QueueLength, queue_names
from chatbot.commands.context import CommandContext
from chatbot.commands.parser import (
    ArgSpec,
    Flag,
    ParsedArgs,
    Positional,
    UsageError,
    parse_duration,
    parse_limit,
    parse_name,
    parse_state,
    parse_task_id,
)
from chatbot.commands.registry import CommandSpec, Registry
from chatbot.commands.resolve import resolve_task_id, resolve_task_name, resolve_worker
from chatbot.control import WorkerReply, consumed_queues, pool_facts
from chatbot.failures import FailureGroup, find_group, group_failures
from chatbot.model import (
    FAILURE,
    P99_FACTOR,
    REJECTED,
    REVOKED,
    SUCCESS,
    RuntimeStats,
    Task,
    Worker,
)
from chatbot.render import Message, duration

logger = logging.getLogger(__name__)

DEFAULT_LIMIT = 15
DEFAULT_FAILED_SINCE = 15 * 60.0
DEFAULT_QUEUE = "celery"  # Celery's task_default_queue when nothing else is known
# `failed`: failure groups shown before the newest examples, and how many failures at most
# are fingerprinted for them (the newest; the answer says so when there were more).
MAX_GROUPS_SHOWN = 8
MAX_GROUPED_FAILURES = 5000
TOP_FAILURE_NAMES = 5
OFFLINE_WORKERS_SHOWN = 5

_FINISHED_LABEL = {
    SUCCESS: "succeeded",
    FAILURE: "failed",
    REVOKED: "revoked",
    REJECTED: "rejected",
}
# Broker errors may quote a URL; its password must not reach Slack.
_URL_PASSWORD = re.compile(r"(\w+://[^:/@\s]*:)[^@\s]+@")


def _scrub(text: str) -> str:
    return _URL_PASSWORD.sub(r"\1***@", text)


# -- shared facts --------------------------------------------------------------------------------
def _stream_facts(ctx: CommandContext, now: float) -> dict[str, Any]:
    """How fresh the picture is; every answer shows it."""
    health = ctx.stream_health()
    age = None if health.last_event_at is None else max(0.0, now - health.last_event_at)
    return {
        "now": now,
        "health": health,
        "events_age": age,
        "stream_stale": age is None or age > ctx.settings.silence_after,
    }


def _render(ctx: CommandContext, template: str, now: float, **values: Any) -> Message:
    return ctx.renderer.render(template, **{**_stream_facts(ctx, now), **values})


@dataclass(frozen=True)
class QueueRow:
    name: str
    messages: int | None  # None: unknown (shown as such, never as 0)
    consumers: int | None
    error: str | None
    missing: bool  # the broker says no such queue exists: messages routed there are dropped
    over_threshold: bool


def _read_queues(
    ctx: CommandContext, workers: Sequence[Worker]
) -> tuple[list[QueueRow] | None, str | None]:
    """Queue lengths, or ``(None, reason)``; a length that could not be read stays None."""
    if ctx.broker is None:
        return None, "no broker reader (CELERY_BROKER_URL not set?)"
    names = queue_names(workers, ctx.settings.queues, DEFAULT_QUEUE)
    try:
        lengths: Sequence[QueueLength] = ctx.broker.queue_lengths(names)
    except Exception as exc:  # the broker is a network peer: any failure is reported, not raised
        logger.warning("reading queue lengths failed", exc_info=True)
        return None, _scrub(f"{type(exc).__name__}: {exc}")
    threshold = ctx.settings.backlog_threshold
    rows = [
        QueueRow(
            name=q.name,
            messages=q.messages,
            consumers=q.consumers,
            error=_scrub(q.error) if q.error else None,
            missing=q.exists is False,
            over_threshold=q.messages is not None and q.messages >= threshold,
        )
        for q in lengths
    ]
    # Unknown lengths first (they need a look), then the longest backlog.
    rows.sort(key=lambda r: (r.messages is not None, -(r.messages or 0), r.name))
    return rows, None


@dataclass(frozen=True)
class RunningTask:
    """An active task with what `active` and `stuck` say about it."""

    task: Task
    runtime: float
    stats: RuntimeStats | None
    over_threshold: bool
    past_p99: bool

    @property
    def p99_ratio(self) -> float | None:
        if self.stats is None or self.stats.p99 <= 0:
            return None
        return self.runtime / self.stats.p99


def _running(
    ctx: CommandContext, tasks: Sequence[Task], now: float, threshold: float
) -> list[RunningTask]:
    stats_by_name: dict[str, RuntimeStats | None] = {}
    rows: list[RunningTask] = []
    for task in tasks:
        runtime = task.runtime_so_far(now) or 0.0
        stats = None
        if task.name:
            if task.name not in stats_by_name:
                stats_by_name[task.name] = ctx.store.runtime_stats(task.name)
            stats = stats_by_name[task.name]
        past_p99 = stats is not None and stats.far_past_p99(runtime)
        rows.append(RunningTask(task, runtime, stats, runtime >= threshold, past_p99))
    rows.sort(key=lambda r: -r.runtime)
    return rows


# -- handlers ------------------------------------------------------------------------------------
def status(args: ParsedArgs, ctx: CommandContext) -> Message:
    now = ctx.clock()
    settings = ctx.settings
    workers = ctx.store.workers()
    online = sorted((w for w in workers if w.is_online(now)), key=lambda w: w.hostname)
    offline = sorted(
        (w for w in workers if not w.is_online(now)),
        key=lambda w: -(w.last_heartbeat or w.first_seen),
    )
    active = ctx.store.active()
    stuck = [t for t in active if (t.runtime_so_far(now) or 0.0) >= settings.stuck_after]
    failures = ctx.store.failure_counts(settings.failure_window, now)
    top_failures = sorted(failures.items(), key=lambda kv: (-kv[1], kv[0]))
    queues, queue_error = _read_queues(ctx, workers)
    return _render(
        ctx,
        "status.json.j2",
        now,
        online=online,
        offline=offline,
        offline_shown=offline[:OFFLINE_WORKERS_SHOWN],
        active_count=len(active),
        stuck_count=len(stuck),
        stuck_after=settings.stuck_after,
        failure_window=settings.failure_window,
        failures_total=sum(failures.values()),
        top_failures=top_failures[:TOP_FAILURE_NAMES],
        other_failure_names=max(0, len(top_failures) - TOP_FAILURE_NAMES),
        queues=queues,
        queue_error=queue_error,
        broker_name=ctx.broker.broker_name if ctx.broker is not None else "",
        retained=len(ctx.store),
        max_tasks=settings.max_tasks,
        bot_problems=ctx.problems() if ctx.problems is not None else [],
    )


def tasks(args: ParsedArgs, ctx: CommandContext) -> Message:
    now = ctx.clock()
    state: str | None = args["state"]
    lookup = resolve_task_name(ctx, args["name"]) if args["name"] else None
    worker = resolve_worker(ctx, args["worker"]) if args["worker"] else None
    limit: int = args["limit"] or DEFAULT_LIMIT
    name = lookup.name if lookup else None
    found = ctx.store.tasks(state=state, name=name, worker=worker, limit=limit)
    total = ctx.store.count_tasks(state=state, name=name, worker=worker)
    filters = [f"state {state}" if state else "", f"name {name}" if name else ""]
    filters.append(f"worker {worker}" if worker else "")
    return _render(
        ctx,
        "tasks.json.j2",
        now,
        tasks=found,
        total=max(total, len(found)),
        more=max(0, total - len(found)),
        filters=[f for f in filters if f],
        lookup=lookup,
        retained=len(ctx.store),
        narrow_hint="narrow with --state, --name, --worker or --limit",
    )


def failed(args: ParsedArgs, ctx: CommandContext) -> Message:
    now = ctx.clock()
    since: float = args["since"] or DEFAULT_FAILED_SINCE
    limit: int = args["limit"] or DEFAULT_LIMIT
    lookup = resolve_task_name(ctx, args["name"]) if args["name"] else None
    wanted: str | None = args["group"]
    window = ctx.store.recent_failures(lookup.name if lookup else None, since, now)
    grouped = window[:MAX_GROUPED_FAILURES]
    groups = _failure_groups(ctx, grouped, now - since, now)
    group = None
    if wanted:
        group = find_group(groups, wanted)
        if group is None:
            raise UsageError(
                f"no failure group {wanted!r} in the last {duration(since)}"
                " (the key is on each group's line of `failed`; try a longer --since)",
                command="failed",
            )
        members = set(group.members)
        window = [t for t in window if t.uuid in members]
    shown = window[:limit]
    return _render(
        ctx,
        "failed.json.j2",
        now,
        failures=shown,
        total=len(window),
        more=len(window) - len(shown),
        since=since,
        lookup=lookup,
        group=group,
        # Groups first once there is more than one failure to group; one group's own
        # listing needs no summary of itself.
        groups=groups[:MAX_GROUPS_SHOWN] if len(window) > 1 and group is None else [],
        more_groups=max(0, len(groups) - MAX_GROUPS_SHOWN),
        grouped_of=len(grouped) if len(grouped) < len(window) else None,
        narrow_hint="narrow with NAME, --group, --since or --limit",
    )


def _failure_groups(
    ctx: CommandContext, failures: Sequence[Task], window_start: float, now: float
) -> list[FailureGroup]:
    memory = ctx.failure_memory
    if memory is None:
        return group_failures(failures)
    try:
        return memory.group(failures, window_start, now)
    except Exception:
        # The memory only adds "new": a state store that fails must not cost the answer.
        logger.warning("failure fingerprint memory unavailable", exc_info=True)
        return group_failures(failures)


def active(args: ParsedArgs, ctx: CommandContext) -> Message:
    now = ctx.clock()
    worker = resolve_worker(ctx, args["worker"]) if args["worker"] else None
    limit: int = args["limit"] or DEFAULT_LIMIT
    running = _running(ctx, ctx.store.active(worker), now, ctx.settings.stuck_after)
    return _render(
        ctx,
        "active.json.j2",
        now,
        rows=running[:limit],
        total=len(running),
        more=len(running) - min(limit, len(running)),
        worker=worker,
        stuck_after=ctx.settings.stuck_after,
        narrow_hint="narrow with WORKER or --limit",
    )


def stuck(args: ParsedArgs, ctx: CommandContext) -> Message:
    now = ctx.clock()
    threshold: float = args["over"] or ctx.settings.stuck_after
    limit: int = args["limit"] or DEFAULT_LIMIT
    running = _running(ctx, ctx.store.active(), now, threshold)
    flagged = [r for r in running if r.over_threshold or r.past_p99]
    return _render(
        ctx,
        "stuck.json.j2",
        now,
        rows=flagged[:limit],
        total=len(flagged),
        more=len(flagged) - min(limit, len(flagged)),
        threshold=threshold,
        active_count=len(running),
        longest=running[0].runtime if running else None,
        p99_factor=P99_FACTOR,
        narrow_hint="narrow with --over or --limit",
    )


def task(args: ParsedArgs, ctx: CommandContext) -> Message:
    now = ctx.clock()
    task_id = resolve_task_id(ctx, args["uuid"])
    record = ctx.store.get_task(task_id)
    if record is None:  # evicted between the lookup and now
        raise UsageError(f"task {task_id!r} was just evicted from the retained records")
    timeline = [
        (label, moment)
        for label, moment in (
            ("sent", record.sent),
            ("received", record.received),
            ("started", record.started),
            ("retried", record.retried),
            (_FINISHED_LABEL.get(record.state, "finished"), record.finished),
        )
        if moment is not None
    ]
    timeline.sort(key=lambda item: item[1])
    worker = ctx.store.get_worker(record.worker) if record.worker else None
    return _render(
        ctx,
        "task.json.j2",
        now,
        task=record,
        timeline=timeline,
        runtime=record.runtime_so_far(now),
        finished=record.state in _FINISHED_LABEL,
        worker=worker,
        worker_online=worker.is_online(now) if worker else None,
        stats=ctx.store.runtime_stats(record.name) if record.name else None,
    )


@dataclass(frozen=True)
class WorkerRow:
    worker: Worker
    online: bool
    reply_status: str | None  # "ok", "error", "no_reply"; None when workers were not asked
    reply_message: str | None


def workers(args: ParsedArgs, ctx: CommandContext) -> Message:
    now = ctx.clock()
    known = ctx.store.workers()
    replies: Mapping[str, WorkerReply] = {}
    inspect_error = None
    if ctx.control is not None:
        online_names = [w.hostname for w in known if w.is_online(now)]
        try:
            result = ctx.control.inspect("stats", expected=online_names)
        except Exception as exc:  # workers and broker are network peers: report, don't raise
            logger.warning("inspect stats failed", exc_info=True)
            inspect_error = _scrub(f"{type(exc).__name__}: {exc}")
        else:
            if result.error is not None:  # the broker, not the workers, failed
                inspect_error = _scrub(result.error)
            else:
                replies = result.replies
            for hostname, reply in replies.items():
                if reply.status == "ok" and isinstance(reply.value, Mapping):
                    pool, concurrency = pool_facts(reply.value)
                    ctx.store.update_worker_info(hostname, pool=pool, concurrency=concurrency)
            known = ctx.store.workers()
            # The inspect took up to the control timeout: the answer is as of now, not as of
            # the request (heartbeats that arrived meanwhile would read as "in 1s").
            now = ctx.clock()
    rows = []
    for worker in known:
        answer = replies.get(worker.hostname)
        rows.append(
            WorkerRow(
                worker=worker,
                online=worker.is_online(now),
                reply_status=answer.status if answer is not None else None,
                reply_message=_scrub(str(answer.message)) if answer and answer.message else None,
            )
        )
    rows.sort(key=lambda r: (not r.online, r.worker.hostname))
    known_names = {w.hostname for w in known}
    # Answered the broadcast but never sent an event: alive, yet invisible to everything else.
    silent = sorted(h for h, r in replies.items() if h not in known_names and r.status == "ok")
    return _render(
        ctx,
        "workers.json.j2",
        now,
        rows=rows,
        online_count=sum(1 for r in rows if r.online),
        offline_count=sum(1 for r in rows if not r.online),
        asked=ctx.control is not None and inspect_error is None,
        inspect_error=inspect_error,
        no_reply_count=sum(1 for r in rows if r.online and r.reply_status == "no_reply"),
        silent=silent,
        narrow_hint="offline workers are listed last",
    )


def queues(args: ParsedArgs, ctx: CommandContext) -> Message:
    now = ctx.clock()
    known = ctx.store.workers()
    if ctx.control is not None:
        # Queue names are only known from the workers themselves (events do not carry them).
        try:
            result = ctx.control.inspect(
                "active_queues", expected=[w.hostname for w in known if w.is_online(now)]
            )
        except Exception:
            logger.warning("inspect active_queues failed", exc_info=True)
        else:
            for hostname, reply in result.replies.items():
                names = consumed_queues(reply.value) if reply.status == "ok" else None
                if names is not None:
                    ctx.store.update_worker_info(hostname, queues=names)
            known = ctx.store.workers()
    rows, error = _read_queues(ctx, known)
    return _render(
        ctx,
        "queues.json.j2",
        now,
        rows=rows or [],
        error=error,
        broker_name=ctx.broker.broker_name if ctx.broker is not None else "",
        threshold=ctx.settings.backlog_threshold,
        configured=ctx.settings.queues,
    )


def make_help(registry: Registry) -> CommandSpec:
    """`help` and `help <command>`, generated from the registry it documents."""

    def show_help(args: ParsedArgs, ctx: CommandContext) -> Message:
        topic: str | None = args["command"]
        if topic:
            spec = registry.get(topic)
            if spec is None:
                suggestion = registry.suggest(topic)
                hint = f"; did you mean {suggestion}?" if suggestion else ""
                raise UsageError(f"no command {topic!r}{hint}")
            return ctx.renderer.render("help_command.json.j2", spec=spec, now=ctx.clock())
        groups: dict[str, list[CommandSpec]] = {}
        for spec in registry:
            groups.setdefault(spec.group, []).append(spec)
        return ctx.renderer.render("help.json.j2", groups=list(groups.items()), now=ctx.clock())

    return CommandSpec(
        name="help",
        summary="the grammar and every command, or one command's flags and examples",
        usage="help [COMMAND]",
        handler=show_help,
        args=ArgSpec(positionals=(Positional("command", "a command to explain", "COMMAND"),)),
        examples=("help", "help failed"),
    )


_LIMIT = Flag("limit", "how many to show", parse_limit, "N")


def register_readonly(registry: Registry) -> Registry:
    """Add the read-only commands to ``registry``."""
    registry.register(make_help(registry))
    specs = [
        CommandSpec(
            name="status",
            summary="one screen: workers, active, backlog, failures, event stream health",
            usage="status",
            handler=status,
            examples=("status",),
            slow=True,  # reads queue lengths from the broker
        ),
        CommandSpec(
            name="tasks",
            summary="the general query, newest first",
            usage="tasks [--state S] [--name N] [--worker W] [--limit N]",
            handler=tasks,
            args=ArgSpec(
                flags=(
                    Flag(
                        "state",
                        "FAILURE, STARTED, ... or failed/active/succeeded",
                        parse_state,
                        "S",
                    ),
                    Flag("name", "task name, or its last part", parse_name, "N"),
                    Flag("worker", "worker hostname, or a unique part of it", parse_name, "W"),
                    _LIMIT,
                )
            ),
            examples=("tasks --state failed", "tasks --name send_email --limit 5"),
        ),
        CommandSpec(
            name="failed",
            summary="recent failures, grouped by task, exception and message shape, then the"
            " newest",
            usage="failed [NAME] [--since 15m] [--group KEY] [--limit N]",
            handler=failed,
            args=ArgSpec(
                positionals=(
                    Positional("name", "only this task name", "NAME", convert=parse_name),
                ),
                flags=(
                    Flag(
                        "since", "how far back (30s, 15m, 2h, 1d); default 15m", parse_duration, "D"
                    ),
                    Flag(
                        "group",
                        "only this failure group (its key from `failed`)",
                        parse_name,
                        "KEY",
                    ),
                    _LIMIT,
                ),
            ),
            examples=("failed", "failed send_email --since 1h", "failed --group 3f2a9c1e"),
            aliases=("failures",),
        ),
        CommandSpec(
            name="active",
            summary="running tasks, longest first, with runtime so far",
            usage="active [WORKER] [--limit N]",
            handler=active,
            args=ArgSpec(
                positionals=(
                    Positional("worker", "only this worker", "WORKER", convert=parse_name),
                ),
                flags=(_LIMIT,),
            ),
            examples=("active", "active celery@web-1"),
            aliases=("running",),
        ),
        CommandSpec(
            name="stuck",
            summary="active tasks past the stuck threshold or far past their own p99",
            usage="stuck [--over 10m] [--limit N]",
            handler=stuck,
            args=ArgSpec(
                flags=(
                    Flag(
                        "over",
                        "runtime threshold; default CHATOPS_STUCK_AFTER",
                        parse_duration,
                        "D",
                    ),
                    _LIMIT,
                )
            ),
            examples=("stuck", "stuck --over 2m"),
        ),
        CommandSpec(
            name="task",
            summary="one task: args, kwargs, worker, timeline, runtime, result or traceback",
            usage="task UUID",
            handler=task,
            args=ArgSpec(
                positionals=(
                    Positional(
                        "uuid",
                        "task id, or a unique prefix of 8+ characters",
                        "UUID",
                        required=True,
                        convert=parse_task_id,
                    ),
                )
            ),
            examples=("task 3f2a9c1e",),
        ),
        CommandSpec(
            name="workers",
            summary="status, pool and concurrency, active, processed, load, last heartbeat",
            usage="workers",
            handler=workers,
            examples=("workers",),
            slow=True,  # asks the workers (inspect stats)
        ),
        CommandSpec(
            name="queues",
            summary="broker queue lengths (Redis and RabbitMQ)",
            usage="queues",
            handler=queues,
            examples=("queues",),
            slow=True,  # asks the workers and the broker
        ),
    ]
    for spec in specs:
        registry.register(spec)
    return registry
