"""Control subcommands end to end: command line -> validation -> approval card -> click ->
real worker's reply in the updated card. The store is fed by the real workers' events.

Waits poll real state with generous deadlines; nothing asserts timing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from chatbot.approvals import ApprovalService
from chatbot.audit import AuditLog
from chatbot.auth import Authorizer
from chatbot.commands import CommandContext, Dispatcher, build_registry
from chatbot.commands.control import register_control_commands
from chatbot.config import Settings
from chatbot.consumer import EventConsumer
from chatbot.control import FleetControl
from chatbot.demo.worker import CeleryWorkerProcess
from chatbot.model import REVOKED, SUCCESS
from chatbot.render import Message, Renderer
from chatbot.store.memory import MemoryStore
from chatbot.store.records import MemoryRecordStore
from tests.conftest import REPO_ROOT, unique_hostname
from tests.fleet_app import ADD, HANG, make_app
from tests.support import wait_until
from tests.support.cards import approve_button_value

ALICE = "UALICE01"  # operator
BOB = "UBOB0001"  # operator and approver
MALLORY = "UMALLORY"  # nobody
CHANNEL = "C0INCIDENT"

Broadcasts = list[tuple[str, dict[str, Any]]]


@dataclass
class Bot:
    """The transport-free bot around one fleet: what a face (Slack, console) would hold."""

    app: Celery
    store: MemoryStore
    control: FleetControl
    sent: Broadcasts
    settings: Settings
    approvals: ApprovalService
    dispatcher: Dispatcher
    renderer: Renderer

    def ctx(self, user: str = ALICE, **changes: Any) -> CommandContext:
        context = CommandContext(
            store=self.store,
            settings=self.settings,
            renderer=self.renderer,
            control=self.control,
            user_id=user,
            channel_id=CHANNEL,
        )
        return replace(context, **changes) if changes else context

    def run(self, line: str, user: str = ALICE, **changes: Any) -> Message:
        return self.dispatcher.run(line, self.ctx(user, **changes))

    def handler_reply(self, line: str, user: str = ALICE) -> Message:
        """The handler's own message, before the dispatcher applies --share."""
        prepared = self.dispatcher.prepare(line)
        assert prepared.spec is not None and prepared.args is not None, prepared.reply
        return prepared.spec.handler(prepared.args, self.ctx(user))

    def commands_sent(self) -> list[str]:
        return [command for command, _ in self.sent]


def make_bot(app: Celery, store: MemoryStore, **overrides: Any) -> Bot:
    values: dict[str, Any] = {"operators": (ALICE, BOB), "approvers": (BOB,)}
    values.update(overrides)
    settings = Settings(**values)
    sent: Broadcasts = []
    control = FleetControl(app, timeout=2.0, on_broadcast=lambda c, a: sent.append((c, a)))
    renderer = Renderer()
    approvals = ApprovalService(
        MemoryRecordStore(),
        control,
        store,
        Authorizer.from_settings(settings),
        AuditLog(),
        settings,
        renderer=renderer,
        confirm_timeout=30,
    )
    registry = register_control_commands(build_registry(), approvals)
    dispatcher = Dispatcher(registry, renderer)
    return Bot(app, store, control, sent, settings, approvals, dispatcher, renderer)


def text_of(message: Message) -> str:
    return json.dumps(message.blocks, ensure_ascii=False)


def first_line(message: Message) -> str:
    return str(message.blocks[0]["text"]["text"])


def summary_of(card: Message) -> str:
    """The card's line under its header: the action and how many targets."""
    return str(card.blocks[1]["text"]["text"])


def is_error(message: Message) -> bool:
    return first_line(message).startswith(":warning:")


@dataclass
class Fleet:
    worker: CeleryWorkerProcess
    app: Celery
    store: MemoryStore
    inspector: FleetControl

    def pool_processes(self) -> int:
        name = self.worker.hostname
        reply = self.inspector.inspect("stats", worker=name).replies[name]
        assert reply.status == "ok", reply
        return len(reply.value["pool"]["processes"])


def start_fleet(url: str, worker: CeleryWorkerProcess) -> tuple[Celery, MemoryStore, EventConsumer]:
    app = make_app(url)
    store = MemoryStore()
    consumer = EventConsumer(url, store, app=app, enable_events_interval=0)
    consumer.start()
    assert consumer.wait_connected(30)
    wait_until(
        lambda: (w := store.get_worker(worker.hostname)) is not None and w.is_online(time.time()),
        timeout=30,
        what="the worker's heartbeat in the store",
    )
    return app, store, consumer


def wait_state(store: MemoryStore, task_id: str, *states: str) -> None:
    def reached() -> bool:
        task = store.get_task(task_id)
        return task is not None and task.state in states

    try:
        wait_until(reached, timeout=60, what=f"task {task_id} in {states}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the store has {store.get_task(task_id)!r}") from None


def wait_running(store: MemoryStore, task_id: str) -> None:
    """Started and not finished. Judged by the task-started time rather than the state: the
    client's task-sent can arrive after the worker's task-started (the store currently lets
    it move the state back to PENDING; reported, not ours to change)."""

    def running() -> bool:
        task = store.get_task(task_id)
        return task is not None and task.started is not None and task.finished is None

    wait_until(running, timeout=60, what=f"task {task_id} to run")


@pytest.fixture(scope="module")
def fleet(
    redis_url_factory: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    url = redis_url_factory()
    log: Path = tmp_path_factory.mktemp("commands-worker") / "worker.log"
    worker = CeleryWorkerProcess(
        "tests.fleet_app", url, hostname=unique_hostname("cmd"), log_path=log, cwd=REPO_ROOT
    )
    worker.start()
    consumer: EventConsumer | None = None
    app: Celery | None = None
    try:
        worker.wait_ready(timeout=30)
        app, store, consumer = start_fleet(url, worker)
        # Task names are known from events: run one of each name the tests refer to.
        done = app.send_task(ADD, args=(1, 2)).id
        wait_state(store, done, SUCCESS)
        yield Fleet(worker, app, store, FleetControl(app, timeout=3.0))
    finally:
        if consumer is not None:
            consumer.stop(timeout=10)
        worker.stop(timeout=5)
        if app is not None:
            app.close()


@pytest.fixture
def bot(fleet: Fleet) -> Bot:
    return make_bot(fleet.app, fleet.store)


# -- refused before anything is asked ---------------------------------------------------------


def test_no_operators_refuses_every_control_command_naming_the_setting(fleet: Fleet) -> None:
    bot = make_bot(fleet.app, fleet.store, operators=(), approvers=None)
    for line in (
        "revoke 00000000-dead-beef",
        f"pool grow {fleet.worker.hostname}",
        "rate-limit add 10/m",
        f"shutdown {fleet.worker.hostname}",
        "consumer add extra",
    ):
        reply = bot.run(line)
        assert "CHATOPS_OPERATORS" in first_line(reply), line
        assert reply.ephemeral
    assert bot.sent == []


def test_a_non_operator_is_refused_with_nothing_sent(bot: Bot, fleet: Fleet) -> None:
    for line in (f"pool grow {fleet.worker.hostname}", "rate-limit add 10/m"):
        reply = bot.run(line, user=MALLORY)
        assert "not an operator" in first_line(reply)
    assert bot.sent == [] and bot.approvals.records.list("approval") == []


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("revoke", "give one or more task ids"),
        ("revoke abc", "at least 8 characters"),
        ("revoke 0123456789abcdef", "unknown task"),
        ("revoke --name no_such_task", "unknown task name"),
        ("revoke --name add", "nothing to revoke"),
        ("revoke --name add --state SUCCESS", "finished"),
        ("revoke --state STARTED", "--state only applies with --name"),
        ("revoke --name add --terminate --signal NOPE", "unknown signal"),
        ("pool grow ghost-worker", "unknown worker"),
        ("pool grow {worker} 0", "between 1 and 32"),
        ("pool grow {worker} 1000", "between 1 and 32"),
        ("pool widen {worker}", "expected grow or shrink"),
        ("autoscale {worker} 2 5", "MAX (2) must not be below MIN (5)"),
        ("autoscale {worker} 0 0", "between 1 and 256"),
        ("rate-limit add 10/x", "bad rate"),
        ("rate-limit no_such_task 10/m", "unknown task name"),
        ("rate-limit add 10/m ghost-worker", "unknown worker"),
        ("time-limit add 60 30", "SOFT (60s) must not exceed HARD (30s)"),
        ("time-limit add soon 30", "expected a duration"),
        ("consumer join extra", "expected add or cancel"),
        ("shutdown ghost-worker", "unknown worker"),
    ],
)
def test_bad_targets_are_one_line_errors_and_nothing_is_sent(
    bot: Bot, fleet: Fleet, line: str, says: str
) -> None:
    reply = bot.run(line.format(worker=fleet.worker.hostname))
    assert is_error(reply), text_of(reply)
    assert says in first_line(reply)
    assert "\n" not in first_line(reply)
    assert any("Usage:" in json.dumps(b) for b in reply.blocks)  # the usage follows
    assert bot.sent == [] and bot.approvals.records.list("approval") == []


# -- revoke ------------------------------------------------------------------------------------


def test_revoke_by_prefix_posts_an_approval_card_and_the_click_terminates(
    bot: Bot, fleet: Fleet
) -> None:
    task_id = fleet.app.send_task(HANG, kwargs={"seconds": 300}).id
    wait_running(fleet.store, task_id)
    card = bot.handler_reply(f"revoke {task_id[:10]} --terminate --signal KILL")
    assert not card.ephemeral  # posted in the channel
    approval_id = approve_button_value(card)
    assert approval_id is not None
    text = text_of(card)
    assert HANG in text and task_id in text and fleet.worker.hostname in text
    assert f"<@{ALICE}>" in text and "Expires" in text and "SIGKILL" in text
    assert "{'seconds': 300}" in text  # the args preview
    assert bot.sent == []

    outcome = bot.approvals.decide(approval_id, BOB, approve=True)
    assert outcome.result == "approved" and outcome.card is not None
    assert approve_button_value(outcome.card) is None  # the buttons are gone
    assert bot.commands_sent() == ["revoke"]
    assert f"terminate: {task_id}" in text_of(outcome.card)  # the worker's own answer
    assert outcome.needs_confirmation
    confirmed = bot.approvals.confirm_revoke(approval_id)
    assert confirmed is not None and confirmed.confirmation is not None
    assert confirmed.confirmation.status == "confirmed"
    assert "confirmed" in text_of(bot.approvals.card(confirmed))
    wait_state(fleet.store, task_id, REVOKED)


def test_bulk_revoke_by_name_revokes_exactly_the_retained_matching_tasks(
    redis_url: str, celery_worker: Callable[..., CeleryWorkerProcess]
) -> None:
    # One process: the first hang runs, the rest wait in line behind it with the adds.
    worker = celery_worker(redis_url, concurrency=1)
    app, store, consumer = start_fleet(redis_url, worker)
    try:
        bot = make_bot(app, store)
        hangs = [app.send_task(HANG, args=(300 + i,)).id for i in range(3)]
        adds = [app.send_task(ADD, args=(i, i)).id for i in range(2)]
        wait_running(store, hangs[0])
        every = [*hangs, *adds]
        wait_until(lambda: all(store.get_task(t) for t in every), what="every task in the store")

        card = bot.handler_reply("revoke --name hang --terminate")
        assert "3 tasks" in summary_of(card) and "fleet.hang" in summary_of(card)
        text = text_of(card)
        assert all(task_id in text for task_id in hangs)
        assert not any(task_id in text for task_id in adds)
        approval_id = approve_button_value(card)
        assert approval_id is not None and bot.sent == []

        outcome = bot.approvals.decide(approval_id, BOB, approve=True)
        assert outcome.result == "approved"
        revokes = [args for command, args in bot.sent if command == "revoke"]
        assert len(revokes) == 1 and sorted(revokes[0]["task_id"]) == sorted(hangs)
        for task_id in hangs:
            wait_state(store, task_id, REVOKED)
        for task_id in adds:
            wait_state(store, task_id, SUCCESS)
        confirmed = bot.approvals.confirm_revoke(approval_id)
        assert confirmed is not None and confirmed.confirmation is not None
        assert confirmed.confirmation.status == "confirmed"
    finally:
        consumer.stop(timeout=10)
        app.close()


def test_a_bulk_preview_is_capped_and_says_how_many_more(fleet: Fleet) -> None:
    store = MemoryStore()
    now = time.time()
    store.apply(
        [
            {
                "type": "task-sent",
                "uuid": f"bulk-{i:04d}-0000-0000",
                "name": "fleet.bulk",
                "timestamp": now,
                "args": "()",
                "kwargs": "{}",
                "queue": "celery",
            }
            for i in range(40)
        ]
    )
    bot = make_bot(fleet.app, store)
    card = bot.handler_reply("revoke --name fleet.bulk")
    assert "40 tasks" in summary_of(card)
    items = [b for b in card.blocks if str(b.get("block_id", "")).startswith("item-")]
    assert len(items) == 10
    assert "30 more not shown" in text_of(card)
    approval_id = approve_button_value(card)
    assert approval_id is not None
    approval = bot.approvals.get(approval_id)
    assert approval is not None and len(approval.action.targets) == 40


# -- actions that run at once for an operator ---------------------------------------------------


def test_pool_grow_changes_the_pool_size_the_worker_reports(bot: Bot, fleet: Fleet) -> None:
    before = fleet.pool_processes()
    name = fleet.worker.hostname
    reply = bot.run(f"pool grow {name.split('@')[0]} 1")
    assert "pool will grow" in text_of(reply)
    assert bot.commands_sent() == ["pool_grow"]
    wait_until(lambda: fleet.pool_processes() == before + 1, what="one more pool process")
    reply = bot.run(f"pool shrink {name} 1")
    assert "pool will shrink" in text_of(reply)
    wait_until(lambda: fleet.pool_processes() == before, what="the pool back to its size")


def test_a_rate_limit_is_applied_and_the_workers_reply_shown(bot: Bot, fleet: Fleet) -> None:
    name = fleet.worker.hostname
    try:
        reply = bot.handler_reply(f"rate-limit add 10/m {name}")
        assert not reply.ephemeral
        text = text_of(reply)
        assert "new rate limit set successfully" in text and ADD in text
        registered = fleet.inspector.inspect(
            "registered", worker=name, taskinfoitems=["rate_limit"]
        )
        assert f"{ADD} [rate_limit=10/m]" in registered.replies[name].value
    finally:
        reply = bot.run(f"rate-limit add 0 {name}")
    assert "rate limit disabled successfully" in text_of(reply)


def test_time_limit_and_consumer_run_and_show_each_worker(bot: Bot, fleet: Fleet) -> None:
    name = fleet.worker.hostname
    reply = bot.run(f"time-limit add 30 1m {name}")
    assert "time limits set successfully" in text_of(reply)
    bot.run(f"time-limit add 1h 2h {name}")
    added = bot.run("consumer add extra-queue")  # every worker; the known ones are awaited
    assert "extra-queue" in text_of(added) and name in text_of(added)
    cancelled = bot.run(f"consumer cancel extra-queue {name}")
    assert "no longer consuming" in text_of(cancelled)
    assert bot.commands_sent() == ["time_limit", "time_limit", "add_consumer", "cancel_consumer"]


def test_approval_required_can_cover_any_action(fleet: Fleet) -> None:
    bot = make_bot(fleet.app, fleet.store, approval_required=("pool",))
    card = bot.handler_reply(f"pool grow {fleet.worker.hostname}")
    assert approve_button_value(card) is not None and bot.sent == []
    approval_id = approve_button_value(card)
    assert approval_id is not None
    assert bot.approvals.decide(approval_id, BOB, approve=False).result == "denied"
    assert bot.sent == []


# -- shutdown and the console --------------------------------------------------------------------


def test_shutdown_is_approved_then_the_worker_exits(
    redis_url: str, celery_worker: Callable[..., CeleryWorkerProcess]
) -> None:
    worker = celery_worker(redis_url)
    app, store, consumer = start_fleet(redis_url, worker)
    try:
        bot = make_bot(app, store)
        card = bot.handler_reply(f"shutdown {worker.hostname}")
        approval_id = approve_button_value(card)
        assert approval_id is not None and worker.running and bot.sent == []
        outcome = bot.approvals.decide(approval_id, BOB, approve=True)
        assert outcome.result == "approved" and outcome.card is not None
        assert "shutdown sent" in text_of(outcome.card)
        wait_until(lambda: not worker.running, timeout=30, what="the worker to exit")
        assert bot.commands_sent() == ["shutdown"]
    finally:
        consumer.stop(timeout=10)
        app.close()


def test_the_console_approves_interactively_under_the_same_rules(fleet: Fleet) -> None:
    questions: list[str] = []

    def yes(question: str) -> bool:
        questions.append(question)
        return True

    task_id = fleet.app.send_task(HANG, args=(300,)).id
    wait_running(fleet.store, task_id)
    strict = make_bot(fleet.app, fleet.store)
    refused = strict.run(f"revoke {task_id} --terminate", confirm=yes)
    assert "CHATOPS_SELF_APPROVAL" in first_line(refused) and strict.sent == []

    # The demo's set-up: one local operator who is also the approver, self-approval on.
    console = make_bot(fleet.app, fleet.store, approvers=None, self_approval=True)
    done = console.run(f"revoke {task_id} --terminate", confirm=yes)
    # The card first, as Slack would show it, then the question.
    assert "Approve: revoke 1 task with terminate" in questions[-1]
    assert questions[-1].index("Revoke and terminate") < questions[-1].index("Approve:")
    text = text_of(done)
    assert "Approved" in text and f"terminate: {task_id}" in text and "confirmed" in text
    wait_state(fleet.store, task_id, REVOKED)

    immediate = console.run("rate-limit add 5/s", confirm=lambda q: False)
    assert "new rate limit" in text_of(immediate)  # runs at once: no question asked
    console.run("rate-limit add 0")


def test_help_lists_the_control_commands(bot: Bot) -> None:
    text = text_of(bot.run("help"))
    for command in ("revoke", "pool", "autoscale", "rate-limit", "time-limit", "consumer"):
        assert command in text
    assert "Control" in text
