"""The `/celery` command core: grammar, dispatch, and every read-only answer.

Store-backed tests use the real MemoryStore fed Celery-shaped events on a fixed clock. The
slow commands run against the real BrokerReader and FleetControl (a real worker on the
private Redis, events through the real EventConsumer); a few failure paths that the real
classes cannot be made to produce on demand (an inspect call that raises) use small recorded
doubles of the Protocols in ``chatbot.commands.context``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from celery import Celery

from chatbot.broker import BrokerReader
from chatbot.broker import QueueLength as Length
from chatbot.commands import (
    CommandContext,
    CommandSpec,
    Dispatcher,
    Registry,
    UsageError,
    build_registry,
)
from chatbot.commands.parser import (
    ArgSpec,
    Flag,
    Positional,
    parse_args,
    parse_duration,
    parse_limit,
    parse_state,
    split_command_line,
)
from chatbot.config import Settings
from chatbot.console_text import to_text
from chatbot.consumer import EventConsumer
from chatbot.control import FleetControl
from chatbot.demo.worker import CeleryWorkerProcess
from chatbot.model import FAILURE, RETRY, STARTED, SUCCESS, StreamHealth
from chatbot.render import Message, Renderer
from chatbot.store.memory import MemoryStore
from tests.conftest import REPO_ROOT, unique_hostname
from tests.fleet_app import FAIL, HANG, make_app
from tests.support import wait_until
from tests.test_render import HOSTILE, assert_valid

NOW = 1_700_000_000.0
X = "\u00d7"  # the multiplication sign of "x5 ValueError"
W1 = "celery@web-1"
W2 = "celery@web-2"

SLOW_ID = "5c0ffee0-0000-4000-8000-000000000001"
OUTLIER_ID = "0a1b2c3d-0000-4000-8000-000000000002"
FRESH_ID = "0a1b2c3d-9999-4000-8000-000000000003"  # shares an 8-char prefix with OUTLIER_ID
SECRET_ID = "beefcafe-0000-4000-8000-000000000004"


# -- a realistic fleet -----------------------------------------------------------------------
def task_events(
    name: str,
    uuid: str,
    t0: float,
    *,
    worker: str = W1,
    args: str = "(1, 2)",
    kwargs: str = "{}",
    runtime: float = 0.5,
    outcome: str | None = "success",
    exception: str = "",
    traceback: str = "",
    retries: int = 0,
    sent: bool = False,
) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    if sent:
        events.append(
            {
                "type": "task-sent",
                "uuid": uuid,
                "name": name,
                "args": args,
                "kwargs": kwargs,
                "queue": "reports",
                "routing_key": "reports",
                "hostname": "gen@web",
                "timestamp": t0 - 2,
                "local_received": t0 - 2,
            }
        )
    events += [
        {
            "type": "task-received",
            "uuid": uuid,
            "name": name,
            "args": args,
            "kwargs": kwargs,
            "hostname": worker,
            "timestamp": t0,
            "retries": retries,
            "local_received": t0,
        },
        {
            "type": "task-started",
            "uuid": uuid,
            "hostname": worker,
            "timestamp": t0 + 0.01,
            "local_received": t0 + 0.01,
        },
    ]
    end = t0 + 0.01 + runtime
    if outcome == "success":
        events.append(
            {
                "type": "task-succeeded",
                "uuid": uuid,
                "result": "3",
                "runtime": runtime,
                "hostname": worker,
                "timestamp": end,
                "local_received": end,
            }
        )
    elif outcome == "failure":
        events.append(
            {
                "type": "task-failed",
                "uuid": uuid,
                "exception": exception,
                "traceback": traceback,
                "hostname": worker,
                "timestamp": end,
                "local_received": end,
            }
        )
    return events


def traceback_for(message: str) -> str:
    return (
        "Traceback (most recent call last):\n"
        '  File "/app/billing/tasks.py", line 41, in charge\n'
        "    gateway.charge(card, amount)\n"
        '  File "/app/billing/gateway.py", line 88, in charge\n'
        f"    raise {message}\n"
        f"{message}"
    )


def build_fleet(store: MemoryStore) -> MemoryStore:
    heartbeat = {
        "type": "worker-heartbeat",
        "freq": 2.0,
        "sw_ident": "py-celery",
        "sw_ver": "5.4.0",
        "sw_sys": "Linux",
    }
    store.apply(
        [
            {
                **heartbeat,
                "hostname": W2,
                "active": 0,
                "processed": 7,
                "loadavg": [0.5, 0.4, 0.3],
                "timestamp": NOW - 900,
                "local_received": NOW - 900,
            },
            {
                **heartbeat,
                "hostname": W1,
                "active": 0,
                "processed": 0,
                "loadavg": [0.0, 0.0, 0.0],
                "timestamp": NOW - 3600,
                "local_received": NOW - 3600,
            },
        ]
    )
    events: list[dict[str, Any]] = []
    # History: 40 quick successful runs of proj.tasks.add (p99 ~0.8s).
    for i in range(40):
        events += task_events(
            "proj.tasks.add",
            f"add00000-{i:04d}-4000-8000-000000000000",
            NOW - 3000 + i * 10,
            runtime=0.4 + (i % 5) * 0.1,
        )
    # Failures: 5 ValueError, 3 KeyError, 40 s apart, the newest 2m20s ago.
    for i in range(8):
        exc = "ValueError('card declined')" if i % 3 else "KeyError('amount')"
        events += task_events(
            "proj.billing.charge",
            f"cha{i:05d}-0000-4000-8000-000000000000",
            NOW - 420 + i * 40,
            outcome="failure",
            exception=exc,
            traceback=traceback_for(exc),
            retries=i % 2,
            worker=W1 if i % 2 else W2,
        )
    # An old failure outside every window.
    events += task_events(
        "proj.mail.send_email",
        "mail0000-0000-4000-8000-000000000000",
        NOW - 7200,
        outcome="failure",
        exception="SMTPError('421')",
    )
    # Running: a report for 25 minutes, an add for 90 s (far past its p99), a fresh add.
    events += task_events(
        "proj.reports.build",
        SLOW_ID,
        NOW - 1500,
        outcome=None,
        sent=True,
        args="('report-2024', 'eu')",
    )
    events += task_events("proj.tasks.add", OUTLIER_ID, NOW - 90, outcome=None)
    events += task_events("proj.tasks.add", FRESH_ID, NOW - 5, outcome=None)
    # A task with a secret kwarg (redacted by the store) and a retry.
    events += task_events(
        "proj.users.login",
        SECRET_ID,
        NOW - 40,
        outcome=None,
        kwargs="{'user': 'ann', 'password': 'hunter2'}",
    )
    events.append(
        {
            "type": "task-retried",
            "uuid": SECRET_ID,
            "exception": "Timeout()",
            "traceback": "",
            "hostname": W1,
            "timestamp": NOW - 35,
            "local_received": NOW - 35,
        }
    )
    events += task_events(
        "proj.users.login",
        SECRET_ID,
        NOW - 34,
        outcome=None,
        retries=1,
        kwargs="{'user': 'ann', 'password': 'hunter2'}",
    )
    events.append(
        {
            **heartbeat,
            "hostname": W1,
            "active": 3,
            "processed": 52,
            "loadavg": [0.11, 0.2, 0.3],
            "timestamp": NOW - 1,
            "local_received": NOW - 1,
        }
    )
    # Delivered in the order they happened, as the event stream does.
    store.apply(sorted(events, key=lambda e: e["local_received"]))
    return store


@pytest.fixture
def store() -> MemoryStore:
    return build_fleet(MemoryStore(clock=lambda: NOW))


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer()


@pytest.fixture(scope="module")
def dispatcher(renderer: Renderer) -> Dispatcher:
    return Dispatcher(build_registry(), renderer)


def make_ctx(store: Any, renderer: Renderer, **changes: Any) -> CommandContext:
    values: dict[str, Any] = {
        "settings": Settings(),
        "user_id": "U1",
        "channel_id": "C1",
        "clock": lambda: NOW,
    }
    return CommandContext(store=store, renderer=renderer, **{**values, **changes})


@pytest.fixture
def ctx(store: MemoryStore, renderer: Renderer) -> CommandContext:
    return make_ctx(store, renderer)


def run(dispatcher: Dispatcher, ctx: CommandContext, text: str) -> Message:
    message = dispatcher.run(text, ctx)
    assert_valid(message)
    return message


def shown(message: Message) -> str:
    return to_text(message)


def first_line(message: Message) -> str:
    return str(message.blocks[0]["text"]["text"])


def assert_usage_error(message: Message, usage: str, *fragments: str) -> None:
    """One readable line, then the usage; never a traceback."""
    line = first_line(message)
    assert "\n" not in line
    assert line.startswith(":warning: ")
    for fragment in fragments:
        assert fragment in line, line
    usage_text = message.blocks[1]["elements"][0]["text"]
    assert usage in usage_text, usage_text
    assert "Traceback" not in json.dumps(message.blocks)


# -- grammar -----------------------------------------------------------------------------------
def test_split_command_line() -> None:
    line = split_command_line('/celery failed "proj.mail.send" --since 1h --share')
    assert (line.subcommand, line.argv, line.share) == (
        "failed",
        ("proj.mail.send", "--since", "1h"),
        True,
    )
    assert split_command_line("STATUS").subcommand == "status"
    # Typographic quotes from Slack clients group like ASCII quotes.
    assert split_command_line("tasks --name \u201cmy task\u201d").argv == ("--name", "my task")
    assert split_command_line("").subcommand == ""
    with pytest.raises(UsageError, match="closing quotation"):
        split_command_line("task 'abc")


def test_parse_args_flags_and_positionals() -> None:
    spec = ArgSpec(
        positionals=(Positional("name", "n", "NAME"),),
        flags=(
            Flag("since", "s", parse_duration, "D"),
            Flag("limit", "l", parse_limit, "N"),
            Flag("terminate", "t"),
        ),
    )
    args = parse_args(spec, ["x", "--since=2h", "--limit", "5", "--terminate"])
    assert dict(args) == {"name": "x", "since": 7200.0, "limit": 5, "terminate": True}
    assert dict(parse_args(spec, [])) == {
        "name": None,
        "since": None,
        "limit": None,
        "terminate": None,
    }
    assert parse_args(spec, ["--", "--literal"])["name"] == "--literal"
    for argv, error in [
        (["--bogus"], "unknown flag --bogus"),
        (["--since"], "--since needs a value"),
        (["--since", "--limit", "3"], "--since needs a value"),
        (["--terminate=yes"], "--terminate takes no value"),
        (["a", "b"], "unexpected argument 'b'"),
        (["--limit", "0"], "--limit: must be between 1 and"),
        (["--limit", "many"], "--limit: expected a whole number"),
    ]:
        with pytest.raises(UsageError, match=error):
            parse_args(spec, argv)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("15m", 900),
        ("2h", 7200),
        ("1d", 86400),
        ("1h30m", 5400),
        ("90", 90),
        (" 2H ", 7200),
        ("1.5m", 90),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "0s", "-5m", "5x", "m5", "1h 30"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "state"),
    [
        ("failure", FAILURE),
        ("FAILURE", FAILURE),
        ("failed", FAILURE),
        ("Succeeded", SUCCESS),
        ("active", STARTED),
        ("running", STARTED),
        ("retried", RETRY),
        ("star", STARTED),
    ],
)
def test_parse_state(text: str, state: str) -> None:
    assert parse_state(text) == state


def test_parse_state_refuses_to_guess() -> None:
    with pytest.raises(ValueError, match="could be RECEIVED, REJECTED, RETRY, REVOKED"):
        parse_state("re")
    with pytest.raises(ValueError, match="unknown state 'queued'"):
        parse_state("queued")


# -- dispatch ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "usage", "fragments"),
    [
        ("stauts", "/celery COMMAND", ("Unknown command 'stauts'", "Did you mean status?")),
        ("failed --since soon", "/celery failed [NAME] [--since 15m]", ("--since:", "'soon'")),
        ("tasks --state queued", "/celery tasks [--state S]", ("unknown state 'queued'",)),
        ("tasks --colour red", "/celery tasks", ("unknown flag --colour",)),
        ("task", "/celery task UUID", ("missing UUID",)),
        ("task abc", "/celery task UUID", ("at least 8 characters",)),
        ("task 0a1b2c3d", "/celery task UUID", ("matches several tasks",)),
        ("task ffffffff-dead", "/celery task UUID", ("unknown task 'ffffffff-dead'",)),
        ("active web-9", "/celery active [WORKER]", ("unknown worker 'web-9'", W1)),
        ("active web", "/celery active [WORKER]", ("ambiguous",)),
        ("stuck --over=-5m", "/celery stuck [--over 10m]", ("--over:",)),
        ("help nope", "/celery help [COMMAND]", ("no command 'nope'",)),
        ("task 'open", "/celery COMMAND", ("no closing quotation",)),
    ],
)
def test_bad_input_is_one_line_plus_usage(
    dispatcher: Dispatcher, ctx: CommandContext, text: str, usage: str, fragments: Sequence[str]
) -> None:
    message = run(dispatcher, ctx, text)
    assert_usage_error(message, usage, *fragments)
    assert message.ephemeral


def test_user_input_echoed_in_an_error_is_escaped(
    dispatcher: Dispatcher, ctx: CommandContext
) -> None:
    message = run(dispatcher, ctx, "active '<!channel>'")
    assert "&lt;!channel&gt;" in first_line(message)


def test_share_makes_the_reply_visible_in_channel(
    dispatcher: Dispatcher, ctx: CommandContext
) -> None:
    assert run(dispatcher, ctx, "failed").ephemeral is True
    assert run(dispatcher, ctx, "failed --share").ephemeral is False
    assert run(dispatcher, ctx, "--share /celery failed").ephemeral is False


def test_handler_exception_is_one_line_and_logged(
    renderer: Renderer, ctx: CommandContext, caplog: pytest.LogCaptureFixture
) -> None:
    registry = Registry()

    def broken(args: Any, ctx: CommandContext) -> Message:
        raise RuntimeError("database on fire")

    registry.register(CommandSpec("boom", "explodes", "boom", broken))
    with caplog.at_level(logging.ERROR):
        message = Dispatcher(registry, renderer).run("boom", ctx)
    assert_valid(message)
    line = first_line(message)
    assert "Internal error while running 'boom'" in line and "logged (ref " in line
    assert "database on fire" not in json.dumps(message.blocks)  # details stay in the log
    record = next(r for r in caplog.records if "boom" in r.getMessage())
    assert record.exc_info is not None and "database on fire" in str(record.exc_info[1])
    assert record.getMessage().split("ref ")[1][:8] in line


def test_prepare_parses_without_running_and_tells_slow_from_fast(
    dispatcher: Dispatcher, ctx: CommandContext
) -> None:
    calls: list[str] = []
    registry = build_registry()
    registry.register(
        CommandSpec("probe", "records", "probe", lambda a, c: calls.append("ran") or Message("x"))  # type: ignore[func-returns-value]
    )
    local = Dispatcher(registry, dispatcher.renderer)
    prepared = local.prepare("probe")
    assert prepared.reply is None and not prepared.slow and calls == []
    local.execute(prepared, ctx)
    assert calls == ["ran"]
    assert {n for n in ("status", "workers", "queues") if local.prepare(n).slow} == {
        "status",
        "workers",
        "queues",
    }
    assert not any(
        local.prepare(n).slow for n in ("failed", "task x", "tasks", "active", "stuck", "help")
    )
    bad = local.prepare("workers --bogus")
    assert bad.reply is not None and not bad.slow  # an error is answered at once, never deferred


def test_registry_is_open_and_help_follows_it(dispatcher: Dispatcher, ctx: CommandContext) -> None:
    registry = build_registry()
    registry.register(
        CommandSpec(
            "mute",
            "silence a notice",
            "mute KEY DURATION",
            lambda a, c: Message("muted"),
            args=ArgSpec(
                positionals=(
                    Positional("key", "the notice key", "KEY", required=True),
                    Positional(
                        "duration", "how long", "DURATION", required=True, convert=parse_duration
                    ),
                )
            ),
            examples=("mute backlog:celery 30m",),
            control=True,
            group="Alerts",
        )
    )
    with pytest.raises(ValueError, match="already registered"):
        registry.register(CommandSpec("mute", "again", "mute", lambda a, c: Message("x")))
    local = Dispatcher(registry, dispatcher.renderer)
    overview = shown(run(local, ctx, "help"))
    for spec in registry:
        assert f"/celery {spec.usage}" in overview
    assert "Alerts" in overview
    detail = shown(run(local, ctx, "help mute"))
    assert "/celery mute backlog:celery 30m" in detail and "operators only" in detail
    assert "DURATION  how long" in detail
    assert_usage_error(run(local, ctx, "mute k soon"), "/celery mute KEY DURATION", "DURATION:")
    assert run(local, ctx, "failures").blocks == run(local, ctx, "failed").blocks  # alias


def test_empty_command_is_help(dispatcher: Dispatcher, ctx: CommandContext) -> None:
    assert run(dispatcher, ctx, "/celery").blocks == run(dispatcher, ctx, "help").blocks


def test_help_for_one_command_lists_flags_and_examples(
    dispatcher: Dispatcher, ctx: CommandContext
) -> None:
    text = shown(run(dispatcher, ctx, "help failed"))
    assert "/celery failed [NAME] [--since 15m] [--group KEY] [--limit N]" in text
    assert "--since D" in text and "--limit N" in text and "--share" in text
    assert "/celery failed send_email --since 1h" in text
    assert "answer follows" in shown(run(dispatcher, ctx, "help workers"))


# -- answers -----------------------------------------------------------------------------------
def test_status_one_screen(dispatcher: Dispatcher, ctx: CommandContext) -> None:
    message = run(dispatcher, ctx, "status")
    text = shown(message)
    assert "Workers: ● 1 up · ○ 1 down" in text
    assert "Active: 4 running · (!) 1 over 10m" in text
    assert "Failures: ✗ 5 in the last 5m" in text  # CHATOPS_FAILURE_WINDOW
    assert f"{X}5  proj.billing.charge" in text
    assert "Event stream: events last seen 1s ago" in text
    assert "○ celery@web-2 last heartbeat 15m ago" in text
    assert "Backlog  unknown: no broker reader" in text
    assert message.text.startswith("Celery: 1 worker up, 1 down, 4 active")


def test_status_says_when_the_stream_is_silent_or_lossy(
    store: MemoryStore, renderer: Renderer, dispatcher: Dispatcher
) -> None:
    def lossy() -> StreamHealth:
        health = store.health()
        health.connected, health.broker = False, "redis://:***@broker:6379/0"
        health.disconnects_by_server, health.last_error = (
            2,
            "ConnectionError: Connection closed by server.",
        )
        health.malformed = 4
        health.intake_restarts = 1
        health.intake_problem = "the event applier is not running <!here>"
        health.changes_lost = 3
        return health

    later = make_ctx(store, renderer, clock=lambda: NOW + 1200, health=lossy)
    message = run(dispatcher, later, "status")
    text = shown(message)
    assert "No events for 20m" in text and "control enable_events" in text and "-E" in text
    assert "Events were lost: the broker closed the event subscription 2 times" in text
    assert "fell behind" not in text  # the consumer cannot know that was the cause
    assert "3 task or worker changes never reached the state store" in text
    assert (
        "The event consumer is not connected: ConnectionError: Connection closed by server." in text
    )
    assert "4 malformed events dropped." in text
    assert "Event intake is not applying events: the event applier is not running" in text
    assert "<!here>" not in str(message.blocks) and "died and was restarted 1 time." in text
    # Workers judged by heartbeat expiry: 20 minutes later, nobody is up.
    assert "Workers: ● 0 up · ○ 2 down" in text


def test_status_shows_the_bots_own_problems_escaped(
    store: MemoryStore, renderer: Renderer, dispatcher: Dispatcher
) -> None:
    problems = ["Alerts cannot be posted: not_in_channel in C0ALERTS (invite the bot) <!here>"]
    troubled = make_ctx(store, renderer, problems=lambda: problems)
    message = run(dispatcher, troubled, "status")
    text = shown(message)
    assert "Alerts cannot be posted: not_in_channel in C0ALERTS (invite the bot)" in text
    assert "<!here>" not in str(message.blocks)
    assert "Alerts cannot be posted" not in shown(
        run(dispatcher, make_ctx(store, renderer), "status")
    )


def test_failed_newest_first_grouped(dispatcher: Dispatcher, ctx: CommandContext) -> None:
    message = run(dispatcher, ctx, "failed")
    items = [b["text"]["text"] for b in message.blocks if b.get("block_id", "").startswith("item-")]
    assert len(items) == 8
    assert "cha00007" in items[0] and "cha00000" in items[-1]
    assert items[0].startswith("*ValueError*  `proj.billing.charge`")
    assert "on `celery@web-1`" in items[0] and "retries 1" in items[0]
    assert "`ValueError('card declined')`" in items[0]
    text = shown(message)
    # Groups first: same task, same exception, same message shape.
    groups = [
        b["text"]["text"] for b in message.blocks if b.get("block_id", "").startswith("group-")
    ]
    assert len(groups) == 2
    assert groups[0].startswith(f"{X}5  *ValueError*  `proj.billing.charge`  group `")
    assert groups[1].startswith(f"{X}3  *KeyError*  `proj.billing.charge`  group `")
    assert "2 groups, then the newest" in text
    assert "send_email" not in text  # two hours old: outside the default 15m
    assert message.text == "8 failures in the last 15m"


def test_failed_by_name_since_and_limit(dispatcher: Dispatcher, ctx: CommandContext) -> None:
    text = shown(run(dispatcher, ctx, "failed send_email --since 3h"))
    assert "1 failure of proj.mail.send_email in the last 3h" in text
    assert "SMTPError('421')" in text
    limited = run(dispatcher, ctx, "failed charge --limit 2")
    assert sum(1 for b in limited.blocks if b.get("block_id", "").startswith("item-")) == 2
    assert "6 more not shown — narrow with NAME, --group, --since or --limit" in shown(limited)
    recent = shown(run(dispatcher, ctx, "failed --since 3m"))
    assert "2 failures in the last 3m" in recent and "cha00005" not in recent


def test_failed_empty_state_helps(dispatcher: Dispatcher, ctx: CommandContext) -> None:
    message = run(dispatcher, ctx, "failed --since 30s")
    assert first_line(message) == "No failures in the last 30s (events last seen 1s ago)."
    unknown = shown(run(dispatcher, ctx, "failed charj"))
    assert "No task named charj seen recently; did you mean proj.billing.charge?" in unknown


def test_active_longest_first_with_runtime_and_args(
    dispatcher: Dispatcher, ctx: CommandContext
) -> None:
    message = run(dispatcher, ctx, "active")
    items = [b["text"]["text"] for b in message.blocks if b.get("block_id", "").startswith("item-")]
    assert [i.split("*")[1] for i in items] == ["25m", "1m 30s", "34s", "5.0s"]
    assert f"`{SLOW_ID}`" in items[0] and "on `celery@web-1`" in items[0]
    assert "args `('report-2024', 'eu')`" in items[0]
    assert f":warning: 112{X} its usual p99 of 800ms (40 runs)" in items[1]
    only_w2 = shown(run(dispatcher, ctx, "active web-2"))
    assert "Nothing running on celery@web-2 right now (events last seen 1s ago)." in only_w2


def test_stuck_threshold_and_own_history(dispatcher: Dispatcher, ctx: CommandContext) -> None:
    text = shown(run(dispatcher, ctx, "stuck"))
    assert SLOW_ID in text  # over CHATOPS_STUCK_AFTER (10m)
    assert OUTLIER_ID in text  # 90s, but 112x its own p99
    assert FRESH_ID not in text and SECRET_ID not in text
    wide = shown(run(dispatcher, ctx, "stuck --over 30s"))
    assert SECRET_ID in wide and FRESH_ID not in wide
    none = run(dispatcher, ctx, "stuck --over 2h")
    assert OUTLIER_ID in shown(none)  # still flagged by its own history
    calm = MemoryStore(clock=lambda: NOW)
    calm.apply(task_events("proj.reports.build", SLOW_ID, NOW - 300, outcome=None))
    quiet = shown(run(dispatcher, dataclasses.replace(ctx, store=calm), "stuck"))
    assert quiet.startswith(
        "Nothing running longer than 10m or far past its usual runtime"
        " (1 task running, longest 5m; events last seen 5m ago).\n"
    )
    # Five silent minutes: "nothing stuck" must not read as "all clear".
    assert "No events for 5m: this picture may be stale" in quiet


def test_task_detail(dispatcher: Dispatcher, ctx: CommandContext) -> None:
    message = run(dispatcher, ctx, "task cha00007")  # a unique prefix of 8 characters
    text = shown(message)
    # Opens with the task's name; the state is the line below.
    assert text.startswith("proj.billing.charge\n===")
    assert "✗ FAILURE  proj.billing.charge" in text
    assert "cha00007-0000-4000-8000-000000000000" in text
    assert "Worker: celery@web-1 ● online" in text
    assert "Queue: unknown (needs task-sent events)" in text
    assert "Retries: 1" in text
    # One second, four steps: one line.
    assert "• received, started, failed  2023-11-14 22:11:00 UTC  (2m 20s ago)" in text
    assert "raise ValueError('card declined')" in text  # the traceback tail
    assert "Exception" in text and "Runtime: 500ms" in text


def test_task_shows_redacted_kwargs_queue_and_history(
    dispatcher: Dispatcher, ctx: CommandContext
) -> None:
    secret = shown(run(dispatcher, ctx, f"task {SECRET_ID.upper()}"))  # case-insensitive prefix
    assert "hunter2" not in secret and "[redacted]" in secret and "'user': 'ann'" in secret
    assert "• retried  " in secret and "34s so far" in secret
    assert "Last retry reason" in secret and "Timeout()" in secret
    report = shown(run(dispatcher, ctx, f"task {SLOW_ID}"))
    assert "Queue: reports" in report and "• sent  " in report
    add = shown(run(dispatcher, ctx, f"task {OUTLIER_ID}"))
    assert "proj.tasks.add usually: p50 600ms · p95 800ms · p99 800ms over 40 runs" in add


def test_tasks_query(dispatcher: Dispatcher, ctx: CommandContext) -> None:
    message = run(dispatcher, ctx, "tasks --state failed --worker web-2 --limit 3")
    text = shown(message)
    assert "4 tasks · state FAILURE, worker celery@web-2 · newest first · showing 3" in text
    assert "1 more not shown — narrow with --state, --name, --worker or --limit" in text
    assert text.count("✗ FAILURE") == 3
    by_name = shown(run(dispatcher, ctx, "tasks --name proj.tasks.add"))
    assert "42 tasks · name proj.tasks.add" in by_name
    empty = shown(run(dispatcher, ctx, "tasks --state revoked"))
    assert empty.startswith(
        "No tasks match state REVOKED among the 53 retained (events last seen 1s ago)."
    )


def test_a_blind_bot_never_claims_all_clear(renderer: Renderer, dispatcher: Dispatcher) -> None:
    empty = make_ctx(MemoryStore(clock=lambda: NOW), renderer)
    for text in ("failed", "active", "stuck", "tasks", "status"):
        answer = shown(run(dispatcher, empty, text))
        assert "No events received yet: this picture may be stale" in answer, text
        assert "enable_events" in answer and "-E" in answer, text
    assert first_line(run(dispatcher, empty, "tasks")) == (
        "No tasks retained yet (no events received yet)."
    )
    workers = shown(run(dispatcher, empty, "workers"))
    assert workers.startswith("No workers seen yet (no events received yet).")
    assert workers.count("enable_events") == 1  # said once, not twice


def test_hostile_names_everywhere_stay_inert(renderer: Renderer, dispatcher: Dispatcher) -> None:
    store = MemoryStore(clock=lambda: NOW)
    evil_worker = "<!channel>@`host`"
    events = task_events(
        "proj.<!here>",
        "e0000000-0000-4000-8000-000000000000",
        NOW - 700,
        worker=evil_worker,
        outcome=None,
        args=repr((HOSTILE,)),
        kwargs=repr({"note": HOSTILE}),
    )
    events += task_events(
        "proj.<@U999>",
        "e1111111-0000-4000-8000-000000000000",
        NOW - 60,
        worker=evil_worker,
        outcome="failure",
        exception=f"ValueError({HOSTILE!r})",
        traceback="x\n" * 20000 + HOSTILE,
    )
    events.append(
        {
            "type": "worker-heartbeat",
            "hostname": evil_worker,
            "freq": 2.0,
            "active": 1,
            "timestamp": NOW - 1,
            "local_received": NOW - 1,
        }
    )
    store.apply(events)
    hostile_ctx = make_ctx(store, renderer)
    for text in (
        "status",
        "failed",
        "active",
        "stuck",
        "tasks",
        "workers",
        "queues",
        "task e0000000",
        "task e1111111",
        "failed '<!here>'",
    ):
        message = run(dispatcher, hostile_ctx, text)  # run() asserts validity and inertness
        assert "&lt;" in json.dumps(message.to_response()) or text in ("queues",), text


def test_500_failures_fit_one_message(renderer: Renderer, dispatcher: Dispatcher) -> None:
    store = MemoryStore(clock=lambda: NOW)
    events: list[dict[str, Any]] = []
    for i in range(500):
        exc = f"ValueError('row {i} & <{i}>')"
        events += task_events(
            f"proj.etl.load_{i % 7}",
            f"{i:08x}-0000-4000-8000-000000000000",
            NOW - 800 + i,
            outcome="failure",
            exception=exc,
            traceback=traceback_for(exc) * 20,
        )
    store.apply(events)
    message = run(dispatcher, make_ctx(store, renderer), "failed --limit 500")
    items = [b for b in message.blocks if b.get("block_id", "").startswith("item-")]
    assert 0 < len(items) < 500
    assert f"{500 - len(items)} more not shown" in shown(message)
    # Seven task names, one message shape each: seven groups, whatever the row numbers.
    groups = [b for b in message.blocks if b.get("block_id", "").startswith("group-")]
    assert len(groups) == 7
    counts = [int(g["text"]["text"].split()[0].lstrip(X)) for g in groups]
    assert sum(counts) == 500


# -- slow commands: recorded doubles for what the real classes cannot be made to do --------------
@dataclass(frozen=True)
class Reply:
    worker: str
    status: str
    value: Any = None
    message: str = ""


@dataclass(frozen=True)
class Result:
    command: str
    replies: dict[str, Reply]
    error: str | None = None


@dataclass
class RecordedControl:
    result: Result | Exception
    calls: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)

    def inspect(
        self, method: str, worker: str | None = None, expected: Sequence[str] = (), **kw: Any
    ) -> Result:
        self.calls.append((method, tuple(expected)))
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


@dataclass
class RecordedBroker:
    lengths: list[Length] | Exception
    broker_name: str = "redis 10.0.0.5:6379/0"
    asked: list[list[str]] = field(default_factory=list)

    def queue_lengths(self, names: Sequence[str]) -> list[Length]:
        self.asked.append(list(names))
        if isinstance(self.lengths, Exception):
            raise self.lengths
        return self.lengths


STATS = {"pool": {"implementation": "celery.concurrency.prefork:TaskPool", "max-concurrency": 8}}


def test_workers_refreshes_pool_and_says_no_reply(
    store: MemoryStore, renderer: Renderer, dispatcher: Dispatcher
) -> None:
    control = RecordedControl(
        Result(
            "stats",
            {
                W1: Reply(W1, "no_reply", None, "no reply within 2s"),
                W2: Reply(W2, "ok", STATS),
                "celery@ghost": Reply("celery@ghost", "ok", STATS),
            },
        )
    )
    text = shown(run(dispatcher, make_ctx(store, renderer, control=control), "workers"))
    assert control.calls == [("stats", (W1,))]  # only online workers are expected to answer
    assert "● celery@web-1  pool ?" in text
    assert "no reply to inspect" in text and "○ celery@web-1" not in text  # not "down"
    assert "○ celery@web-2  offline" in text and f"prefork {X}8" in text  # refreshed into the store
    assert store.get_worker(W2).pool == "prefork"  # type: ignore[union-attr]
    assert "active 3 · processed 52 · load 0.11 0.2 0.3 · heartbeat 1s ago" in text
    assert "Answered inspect but sent no events: celery@ghost" in text


def test_workers_when_asking_fails(
    store: MemoryStore, renderer: Renderer, dispatcher: Dispatcher
) -> None:
    unreachable = RecordedControl(
        Result(
            "stats",
            {W1: Reply(W1, "no_reply", None, "unknown")},
            error="broker unreachable: Error 111 connecting to redis://u:pw@x:1",
        )
    )
    text = shown(run(dispatcher, make_ctx(store, renderer, control=unreachable), "workers"))
    assert "could not ask the workers: broker unreachable" in text and "pw@" not in text
    assert "no reply to inspect" not in text  # the broker failed, not the worker
    raising = RecordedControl(TimeoutError("inspect timed out"))
    text = shown(run(dispatcher, make_ctx(store, renderer, control=raising), "workers"))
    assert "could not ask the workers: TimeoutError: inspect timed out" in text
    assert "● celery@web-1" in text  # the event-based picture is still shown


def test_queues_unknown_is_never_zero(
    store: MemoryStore, renderer: Renderer, dispatcher: Dispatcher
) -> None:
    broker = RecordedBroker(
        [
            Length("celery", 3),
            Length("reports", None, error="timeout"),
            Length("bulk", 250, consumers=2),
            Length("gone", None, exists=False),
        ]
    )
    settings = dataclasses.replace(Settings(), queues=("reports", "bulk", "gone"))
    queues_ctx = make_ctx(store, renderer, broker=broker, settings=settings)
    message = run(dispatcher, queues_ctx, "queues")
    text = shown(message)
    assert broker.asked == [["celery", "reports", "bulk", "gone"]]
    assert "Queues on redis 10.0.0.5:6379/0" in text
    items = [b["text"]["text"] for b in message.blocks if b.get("block_id", "").startswith("item-")]
    # The ones that need a look first (unknown, missing), then the longest backlog.
    assert [item.split("`")[1] for item in items] == ["gone", "reports", "bulk", "celery"]
    assert "? reports  unknown (timeout)" in text and "reports  0" not in text
    assert "(!) bulk  250 waiting · 2 consumers" in text  # at or over the backlog threshold
    assert "gone  no such queue on the broker" in text
    status = shown(run(dispatcher, queues_ctx, "status"))
    assert "reports unknown (timeout)" in status and "bulk 250 waiting" in status
    failing = RecordedBroker(ConnectionError("redis://:s3cret@10.0.0.5:6379 refused"))
    text = shown(run(dispatcher, make_ctx(store, renderer, broker=failing), "queues"))
    assert "Could not read queue lengths from redis 10.0.0.5:6379/0: ConnectionError" in text
    assert "s3cret" not in text


# -- end to end: a real worker, the real consumer, BrokerReader and FleetControl -----------------
@dataclass
class LiveFleet:
    store: MemoryStore
    worker: CeleryWorkerProcess
    app: Celery
    ctx: CommandContext


@pytest.fixture(scope="module")
def live(
    redis_url_factory: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveFleet]:
    url = redis_url_factory()
    worker = CeleryWorkerProcess(
        "tests.fleet_app",
        url,
        hostname=unique_hostname("cmd"),
        concurrency=2,
        log_path=tmp_path_factory.mktemp("cmd-worker") / "worker.log",
        cwd=REPO_ROOT,
    )
    worker.start()
    app = make_app(url)
    store = MemoryStore()
    consumer = EventConsumer(url, store, app=app, enable_events_interval=0)
    broker = BrokerReader(url, timeout=3.0)
    try:
        worker.wait_ready(timeout=30)
        consumer.start()
        assert consumer.wait_connected(30)
        ctx = CommandContext(
            store=store,
            settings=dataclasses.replace(Settings(), queues=("backlog-e2e",)),
            renderer=Renderer(),
            broker=broker,
            control=FleetControl(app, timeout=3.0),
            health=lambda: consumer.health_into(store.health()),
        )
        yield LiveFleet(store, worker, app, ctx)
    finally:
        consumer.stop()
        broker.close()
        worker.stop(timeout=5)
        app.close()


def test_live_fleet_answers(live: LiveFleet, dispatcher: Dispatcher) -> None:
    failing = live.app.send_task(FAIL, kwargs={"message": "<!channel> bad `input` & more"})
    hanging = live.app.send_task(HANG, args=(120,))
    for _ in range(3):
        live.app.send_task(FAIL, queue="backlog-e2e")  # nobody consumes it: a backlog of 3
    wait_until(
        lambda: (t := live.store.get_task(failing.id)) and t.state == FAILURE,
        30,
        what="failure event",
    )
    wait_until(
        lambda: (t := live.store.get_task(hanging.id)) and t.state == STARTED,
        30,
        what="start event",
    )
    hostname = live.worker.hostname
    try:
        failed = run(dispatcher, live.ctx, "failed")
        assert failing.id in shown(failed) and "&lt;!channel&gt;" in json.dumps(failed.blocks)
        detail = shown(run(dispatcher, live.ctx, f"task {failing.id[:10]}"))
        assert "raise ValueError(message)" in detail and "ValueError: <!channel> bad" in detail
        assert f"Worker: {hostname} ● online" in detail and "Queue: celery" in detail
        active = shown(run(dispatcher, live.ctx, "active"))
        assert hanging.id in active and "args (120,)" in active
        workers = shown(run(dispatcher, live.ctx, "workers"))
        assert f"● {hostname}  prefork {X}2" in workers  # from a real `inspect stats`
        queues = shown(run(dispatcher, live.ctx, "queues"))
        broker = live.ctx.broker
        assert broker is not None and f"Queues on {broker.broker_name}" in queues
        assert "(!)" not in queues and "backlog-e2e  3 waiting" in queues
        assert "celery  0 waiting" in queues  # read, so 0 is a real 0 here
        status = shown(run(dispatcher, live.ctx, "status"))
        assert "Workers: ● 1 up" in status and "backlog-e2e 3 waiting" in status
        assert "Events were lost" not in status and "not connected" not in status
    finally:
        live.app.control.revoke(hanging.id, terminate=True, destination=[hostname])


def test_live_unreachable_broker_is_unknown_not_zero(
    live: LiveFleet, dispatcher: Dispatcher
) -> None:
    dead = make_app("redis://127.0.0.1:1/0")
    try:
        ctx = dataclasses.replace(
            live.ctx,
            broker=BrokerReader("redis://127.0.0.1:1/0", timeout=0.5),
            control=FleetControl(dead, timeout=0.5),
        )
        queues = shown(run(dispatcher, ctx, "queues"))
        assert "unknown" in queues and " 0 waiting" not in queues
        workers = shown(run(dispatcher, ctx, "workers"))
        assert "could not ask the workers: broker unreachable" in workers
    finally:
        dead.close()
