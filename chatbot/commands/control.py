"""Control subcommands: revoke, retry, pool, autoscale, rate-limit, time-limit, consumer,
shutdown.

Every handler does the same three things, in this order, before anything reaches a worker:

1. is the signed user an operator? (with no operators configured, nobody is, and the answer
   names ``CHATOPS_OPERATORS``);
2. are the targets real? task ids, workers and task names are resolved against the store,
   values (rate, signal, N, limits) are checked; any problem is one line with the usage;
3. hand the :class:`~chatbot.approvals.ControlAction` to the
   :class:`~chatbot.approvals.ApprovalService`, which either posts an approval card (revoke,
   shutdown by default) or runs it at once and shows what each worker answered.

Faces with an interactive prompt (the console) answer the card right away through
``CommandContext.confirm``; in Slack the buttons do, via ``ApprovalService.decide``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chatbot.approvals import (
    PREVIEW_LIMIT,
    ApprovalService,
    ControlAction,
    PermissionDenied,
    StateStoreUnavailable,
)
from chatbot.commands.context import CommandContext
from chatbot.commands.parser import (
    ArgSpec,
    Flag,
    ParsedArgs,
    Positional,
    UsageError,
    parse_duration,
    parse_name,
    parse_state,
    parse_task_id,
)
from chatbot.commands.registry import CommandSpec, Registry
from chatbot.commands.resolve import resolve_task_id, resolve_task_name, resolve_worker
from chatbot.console_text import to_text
from chatbot.control import validate_rate, validate_signal
from chatbot.model import FINISHED_STATES, PENDING, RECEIVED, RETRY, STARTED, Task
from chatbot.render import Message
from chatbot.retry import RetryRefusal, plan_retries
from chatbot.store import FleetStore

__all__ = [
    "CONTROL_COMMANDS",
    "MAX_AUTOSCALE",
    "MAX_LISTED_IDS",
    "MAX_POOL_STEP",
    "MAX_TIME_LIMIT",
    "UNFINISHED_STATES",
    "bulk_targets",
    "register_control_commands",
]

# Sane upper bounds: a typo (`pool grow w1 500`) must not fork hundreds of processes.
MAX_POOL_STEP = 32
MAX_AUTOSCALE = 256
MAX_TIME_LIMIT = 7 * 86400.0
MAX_LISTED_IDS = 50
# `retry --name`: how far back by default, and at most how many failures one request re-sends.
DEFAULT_RETRY_SINCE = 3600.0
MAX_RETRY = 100
# States a bulk revoke takes by default: everything that has not finished yet.
UNFINISHED_STATES = (STARTED, RECEIVED, RETRY, PENDING)

CONTROL_COMMANDS = (
    "revoke",
    "retry",
    "pool",
    "autoscale",
    "rate-limit",
    "time-limit",
    "consumer",
    "shutdown",
)


# -- value converters (ValueError with a readable reason; the parser adds the argument name) --
def _int_between(low: int, high: int) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"expected a whole number, got {text!r}") from None
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, got {value}")
        return value

    return convert


def _seconds(text: str) -> float:
    """``30``, ``30s``, ``5m``, ``1h``: a time limit, more than zero, at most a week."""
    value = parse_duration(text)
    if value > MAX_TIME_LIMIT:
        raise ValueError(f"at most {MAX_TIME_LIMIT / 86400:g} days, got {text!r}")
    return value


def _choice(*choices: str) -> Callable[[str], str]:
    def convert(text: str) -> str:
        word = text.strip().lower()
        if word not in choices:
            raise ValueError(f"expected {' or '.join(choices)}, got {text!r}")
        return word

    return convert


def _rate(text: str) -> str:
    return validate_rate(text)


def _signal(text: str) -> str:
    return validate_signal(text)


# -- target resolution -------------------------------------------------------------------------
def _known_task_name(ctx: CommandContext, raw: str) -> str:
    lookup = resolve_task_name(ctx, raw)
    if lookup.known:
        return lookup.name
    hint = f"; did you mean {', '.join(lookup.suggestions)}?" if lookup.suggestions else ""
    raise UsageError(f"unknown task name {raw!r}: not seen in the retained events{hint}")


def _optional_worker(ctx: CommandContext, raw: str | None) -> str | None:
    return resolve_worker(ctx, raw) if raw else None


def bulk_targets(store: FleetStore, name: str, state: str | None) -> list[Task]:
    """Every retained task of ``name`` in ``state`` (default: not finished), running first.

    What ``revoke --name`` acts on; the REST API's bulk revoke takes the same.
    """
    states = (state,) if state else UNFINISHED_STATES
    found: list[Task] = []
    for wanted in states:
        count = store.count_tasks(state=wanted, name=name)
        if count:
            found.extend(store.tasks(state=wanted, name=name, limit=count))
    rank = {s: i for i, s in enumerate(UNFINISHED_STATES)}
    found.sort(key=lambda t: (rank.get(t.state, len(rank)), t.started or t.state_ts))
    return list({t.uuid: t for t in found}.values())


# -- the handlers ------------------------------------------------------------------------------
class ControlCommands:
    """Handlers bound to one :class:`ApprovalService`."""

    def __init__(self, approvals: ApprovalService) -> None:
        self.approvals = approvals

    # The common path: authorise, build (validates), submit, present.
    def _run(
        self,
        ctx: CommandContext,
        command: str,
        raw_targets: list[str],
        build: Callable[[], ControlAction],
    ) -> Message:
        decision = self.approvals.authorize_request(
            ctx.user_id, command=command, channel=ctx.channel_id, targets=raw_targets
        )
        if not decision.allowed:
            return self.approvals.refused(decision.reason)
        try:
            action = build()
        except ValueError as exc:
            if isinstance(exc, UsageError):
                raise
            raise UsageError(str(exc), command=command) from None
        try:
            approval = self.approvals.submit(action, ctx.user_id, ctx.channel_id)
        except PermissionDenied as exc:  # lost the permission between the two checks
            return self.approvals.refused(str(exc))
        except StateStoreUnavailable as exc:
            # Without a stored request there is nothing a click could approve: say so.
            return self.approvals.refused(f"Not requested: {exc}.")
        if approval.pending and ctx.confirm is not None:
            return self._confirm_here(ctx, action, approval.id)
        return self.approvals.card(approval)

    def _confirm_here(
        self, ctx: CommandContext, action: ControlAction, approval_id: str
    ) -> Message:
        """The console's approval: the same decide() a button click makes, same rules."""
        assert ctx.confirm is not None
        # The same card Slack would post, then the question: what is approved is on screen.
        card = self.approvals.get(approval_id)
        shown = to_text(self.approvals.card(card)) + "\n" if card is not None else ""
        for task_id in action.targets if action.kind == "revoke" else ():
            task = ctx.store.get_task(task_id)
            if task is not None and task.state in FINISHED_STATES:
                shown += f"(!) {task_id} already finished ({task.state}): nothing left to revoke\n"
        approve = ctx.confirm(f"{shown}Approve: {action.summary()}?")
        outcome = self.approvals.decide(approval_id, ctx.user_id, approve=approve)
        if outcome.needs_confirmation:
            try:
                confirmed = self.approvals.confirm_revoke(approval_id)
            except StateStoreUnavailable:
                confirmed = None  # the decided card below still says what the workers did
            if confirmed is not None:
                return self.approvals.card(confirmed)
        if outcome.card is not None:
            return outcome.card
        return self.approvals.refused(outcome.notice)

    def revoke(self, args: ParsedArgs, ctx: CommandContext) -> Message:
        ids: list[str] = list(args["ids"] or [])
        name: str | None = args["name"]
        state: str | None = args["state"]
        terminate = bool(args["terminate"])
        signal: str | None = args["signal"]

        def build() -> ControlAction:
            if ids and name:
                raise UsageError("give task ids or --name, not both")
            if state and not name:
                raise UsageError("--state only applies with --name")
            if not ids and not name:
                raise UsageError("give one or more task ids, or --name NAME")
            if signal and not terminate:
                raise UsageError("--signal only applies with --terminate")
            now = ctx.clock()
            if ids:
                if len(ids) > MAX_LISTED_IDS:
                    raise UsageError(
                        f"at most {MAX_LISTED_IDS} ids at once; for more use --name NAME"
                    )
                resolved = list(dict.fromkeys(resolve_task_id(ctx, raw) for raw in ids))
                return ControlAction.revoke(
                    resolved,
                    store=ctx.store,
                    now=now,
                    terminate=terminate,
                    signal=signal or "SIGTERM",
                )
            assert name is not None
            task_name = _known_task_name(ctx, name)
            if state in FINISHED_STATES:
                raise UsageError(f"tasks in state {state} have finished: nothing to revoke")
            tasks = bulk_targets(ctx.store, task_name, state)
            which = f"state {state}" if state else "queued or running"
            if not tasks:
                raise UsageError(
                    f"no retained {task_name} task is {which.replace('state ', 'in state ')}:"
                    " nothing to revoke"
                )
            return ControlAction.revoke(
                [t.uuid for t in tasks],
                store=ctx.store,
                now=now,
                terminate=terminate,
                signal=signal or "SIGTERM",
                selector=f"name {task_name}, {which}",
                preview_limit=PREVIEW_LIMIT,
            )

        return self._run(ctx, "revoke", ids or [name or ""], build)

    def retry(self, args: ParsedArgs, ctx: CommandContext) -> Message:
        ids: list[str] = list(args["ids"] or [])
        name: str | None = args["name"]
        since: float | None = args["since"]
        exception: str | None = args["exception"]

        def build() -> ControlAction:
            if ids and name:
                raise UsageError("give task ids or --name, not both")
            if (since or exception) and not name:
                raise UsageError("--since and --exception only apply with --name")
            if not ids and not name:
                raise UsageError("give one or more task ids, or --name NAME")
            now = ctx.clock()
            selector = ""
            if ids:
                if len(ids) > MAX_LISTED_IDS:
                    raise UsageError(
                        f"at most {MAX_LISTED_IDS} ids at once; for more use --name NAME"
                    )
                resolved = list(dict.fromkeys(resolve_task_id(ctx, raw) for raw in ids))
                tasks = [t for t in (ctx.store.get_task(i) for i in resolved) if t is not None]
            else:
                assert name is not None
                task_name = _known_task_name(ctx, name)
                window = since or DEFAULT_RETRY_SINCE
                tasks = ctx.store.recent_failures(task_name, window, now)
                if exception:
                    tasks = [t for t in tasks if t.exception_type == exception]
                which = f" with {exception}" if exception else ""
                if not tasks:
                    raise UsageError(
                        f"no {task_name} task failed{which} in the last {_span(window)}:"
                        " nothing to retry"
                    )
                if len(tasks) > MAX_RETRY:
                    raise UsageError(
                        f"{len(tasks)} {task_name} tasks failed{which} in the last"
                        f" {_span(window)}; at most {MAX_RETRY} at once: narrow with --since"
                        " or --exception"
                    )
                selector = f"name {task_name}{which}, failed in the last {_span(window)}"
            queues = {w.hostname: w.queues for w in ctx.store.workers() if w.queues}
            plans, refused = plan_retries(tasks, worker_queues=queues)
            # One retry per failure: a second request (a second click) must not run it twice.
            claims = self.approvals.retry_claims()
            refused += [
                RetryRefusal(p.task_id, p.name, claims[p.task_id])
                for p in plans
                if p.task_id in claims
            ]
            plans = [p for p in plans if p.task_id not in claims]
            if not plans:
                raise UsageError("nothing to retry: " + _refusal_lines(refused))
            return ControlAction.retry(
                plans, store=ctx.store, now=now, refused=refused, selector=selector
            )

        return self._run(ctx, "retry", ids or [name or ""], build)

    def pool(self, args: ParsedArgs, ctx: CommandContext) -> Message:
        op: str = args["op"]
        n: int = args["n"] or 1

        def build() -> ControlAction:
            worker = resolve_worker(ctx, args["worker"])
            return ControlAction.pool(worker, grow=op == "grow", n=n)

        return self._run(ctx, "pool", [args["worker"]], build)

    def autoscale(self, args: ParsedArgs, ctx: CommandContext) -> Message:
        def build() -> ControlAction:
            maximum: int = args["max"]
            minimum: int = args["min"]
            if maximum < minimum:
                raise UsageError(f"MAX ({maximum}) must not be below MIN ({minimum})")
            worker = resolve_worker(ctx, args["worker"])
            return ControlAction.autoscale(worker, max=maximum, min=minimum)

        return self._run(ctx, "autoscale", [args["worker"]], build)

    def rate_limit(self, args: ParsedArgs, ctx: CommandContext) -> Message:
        def build() -> ControlAction:
            name = _known_task_name(ctx, args["name"])
            worker = _optional_worker(ctx, args["worker"])
            return ControlAction.rate_limit(name, args["rate"], worker)

        return self._run(ctx, "rate-limit", [args["name"]], build)

    def time_limit(self, args: ParsedArgs, ctx: CommandContext) -> Message:
        def build() -> ControlAction:
            soft: float = args["soft"]
            hard: float = args["hard"]
            if soft > hard:
                # The hard limit would kill the task before the soft one could warn it.
                raise UsageError(f"SOFT ({soft:g}s) must not exceed HARD ({hard:g}s)")
            name = _known_task_name(ctx, args["name"])
            worker = _optional_worker(ctx, args["worker"])
            return ControlAction.time_limit(name, soft, hard, worker)

        return self._run(ctx, "time-limit", [args["name"]], build)

    def consumer(self, args: ParsedArgs, ctx: CommandContext) -> Message:
        def build() -> ControlAction:
            worker = _optional_worker(ctx, args["worker"])
            return ControlAction.consumer(args["queue"], add=args["op"] == "add", worker=worker)

        return self._run(ctx, "consumer", [args["queue"]], build)

    def shutdown(self, args: ParsedArgs, ctx: CommandContext) -> Message:
        def build() -> ControlAction:
            return ControlAction.shutdown(resolve_worker(ctx, args["worker"]))

        return self._run(ctx, "shutdown", [args["worker"]], build)


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _refusal_lines(refused: list[RetryRefusal], limit: int = 5) -> str:
    lines = [f"{r.task_id[:8]} ({r.name or 'unknown task'}): {r.reason}" for r in refused[:limit]]
    more = f"; and {len(refused) - limit} more" if len(refused) > limit else ""
    return "; ".join(lines) + more


def _worker_arg(required: bool = True) -> Positional:
    return Positional(
        "worker",
        "worker hostname, or a unique part of it",
        "WORKER",
        required=required,
        convert=parse_name,
    )


def _task_name_arg() -> Positional:
    return Positional(
        "name", "task name, or its last part", "NAME", required=True, convert=parse_name
    )


def register_control_commands(registry: Registry, approvals: ApprovalService) -> Registry:
    """Add the control subcommands, bound to ``approvals``, to ``registry``."""
    handlers = ControlCommands(approvals)
    common: dict[str, Any] = {"slow": True, "control": True, "group": "Control"}
    specs = [
        CommandSpec(
            name="revoke",
            summary="revoke tasks by id, or every retained task of a name"
            " (needs approval by default)",
            usage="revoke UUID... [--terminate] [--signal SIG] | revoke --name NAME [--state S]"
            " [--terminate]",
            handler=handlers.revoke,
            args=ArgSpec(
                positionals=(
                    Positional(
                        "ids",
                        "task ids, or unique prefixes of 8+ characters",
                        "UUID",
                        variadic=True,
                        convert=parse_task_id,
                    ),
                ),
                flags=(
                    Flag("terminate", "also kill the pool process running it"),
                    Flag("signal", "signal for --terminate (TERM, KILL, ...)", _signal, "SIG"),
                    Flag("name", "every retained task of this name", parse_name, "NAME"),
                    Flag("state", "with --name: only tasks in this state", parse_state, "S"),
                ),
            ),
            examples=(
                "revoke 3f2a9c1e",
                "revoke 3f2a9c1e --terminate --signal KILL",
                "revoke --name send_email --state RECEIVED",
            ),
            **common,
        ),
        CommandSpec(
            name="retry",
            summary="re-send failed tasks with their original arguments to their original queue"
            " (needs approval by default)",
            usage="retry UUID... | retry --name NAME [--since D] [--exception TYPE]",
            handler=handlers.retry,
            args=ArgSpec(
                positionals=(
                    Positional(
                        "ids",
                        "failed task ids, or unique prefixes of 8+ characters",
                        "UUID",
                        variadic=True,
                        convert=parse_task_id,
                    ),
                ),
                flags=(
                    Flag("name", "the failures of this task name", parse_name, "NAME"),
                    Flag(
                        "since",
                        "with --name: how far back (30s, 15m, 2h, 1d); default 1h",
                        parse_duration,
                        "D",
                    ),
                    Flag(
                        "exception",
                        "with --name: only failures with this exception type",
                        parse_name,
                        "TYPE",
                    ),
                ),
            ),
            examples=(
                "retry 3f2a9c1e",
                "retry --name charge_card --since 30m --exception CardDeclined",
            ),
            **common,
        ),
        CommandSpec(
            name="pool",
            summary="grow or shrink a worker's pool by N processes (default 1)",
            usage="pool grow|shrink WORKER [N]",
            handler=handlers.pool,
            args=ArgSpec(
                positionals=(
                    Positional(
                        "op",
                        "grow or shrink",
                        "grow|shrink",
                        required=True,
                        convert=_choice("grow", "shrink"),
                    ),
                    _worker_arg(),
                    Positional(
                        "n",
                        f"processes, 1 to {MAX_POOL_STEP}",
                        "N",
                        convert=_int_between(1, MAX_POOL_STEP),
                    ),
                )
            ),
            examples=("pool grow celery@web-1 2", "pool shrink celery@web-1"),
            **common,
        ),
        CommandSpec(
            name="autoscale",
            summary="set a worker's autoscaler bounds",
            usage="autoscale WORKER MAX MIN",
            handler=handlers.autoscale,
            args=ArgSpec(
                positionals=(
                    _worker_arg(),
                    Positional(
                        "max",
                        f"most processes, 1 to {MAX_AUTOSCALE}",
                        "MAX",
                        required=True,
                        convert=_int_between(1, MAX_AUTOSCALE),
                    ),
                    Positional(
                        "min",
                        f"fewest processes, 0 to {MAX_AUTOSCALE}",
                        "MIN",
                        required=True,
                        convert=_int_between(0, MAX_AUTOSCALE),
                    ),
                )
            ),
            examples=("autoscale celery@web-1 10 3",),
            **common,
        ),
        CommandSpec(
            name="rate-limit",
            summary="limit how often a task may start (per worker), e.g. 10/m; 0 removes it",
            usage="rate-limit NAME RATE [WORKER]",
            handler=handlers.rate_limit,
            args=ArgSpec(
                positionals=(
                    _task_name_arg(),
                    Positional(
                        "rate",
                        "N, N/s, N/m or N/h; 0 for no limit",
                        "RATE",
                        required=True,
                        convert=_rate,
                    ),
                    _worker_arg(required=False),
                )
            ),
            examples=("rate-limit send_email 10/m", "rate-limit send_email 0 celery@web-1"),
            aliases=("rate_limit",),
            **common,
        ),
        CommandSpec(
            name="time-limit",
            summary="set a task's soft and hard time limits (new runs only)",
            usage="time-limit NAME SOFT HARD [WORKER]",
            handler=handlers.time_limit,
            args=ArgSpec(
                positionals=(
                    _task_name_arg(),
                    Positional(
                        "soft", "seconds (or 30s, 5m)", "SOFT", required=True, convert=_seconds
                    ),
                    Positional(
                        "hard", "seconds (or 30s, 5m)", "HARD", required=True, convert=_seconds
                    ),
                    _worker_arg(required=False),
                )
            ),
            examples=("time-limit send_email 30 60",),
            aliases=("time_limit",),
            **common,
        ),
        CommandSpec(
            name="consumer",
            summary="start or stop consuming a queue (one worker, or all)",
            usage="consumer add|cancel QUEUE [WORKER]",
            handler=handlers.consumer,
            args=ArgSpec(
                positionals=(
                    Positional(
                        "op",
                        "add or cancel",
                        "add|cancel",
                        required=True,
                        convert=_choice("add", "cancel"),
                    ),
                    Positional("queue", "queue name", "QUEUE", required=True, convert=parse_name),
                    _worker_arg(required=False),
                )
            ),
            examples=("consumer add priority celery@web-1", "consumer cancel bulk"),
            **common,
        ),
        CommandSpec(
            name="shutdown",
            summary="warm shutdown of one worker (needs approval by default)",
            usage="shutdown WORKER",
            handler=handlers.shutdown,
            args=ArgSpec(positionals=(_worker_arg(),)),
            examples=("shutdown celery@web-1",),
            **common,
        ),
    ]
    for spec in specs:
        registry.register(spec)
    return registry
