"""`/celery retry` end to end: command line -> plans -> approval card -> click -> the failed
tasks run again, with the same arguments, on a real worker; refusals say why and send nothing.

The store is fed by the real worker's events; waits poll real state with generous deadlines.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chatbot.audit import AUDIT_LOGGER
from chatbot.config import Settings
from chatbot.consumer import EventConsumer
from chatbot.control import FleetControl
from chatbot.demo.worker import CeleryWorkerProcess
from chatbot.model import FAILURE, SUCCESS
from chatbot.render import Message
from chatbot.render.blockkit import validate_blocks
from tests.conftest import REPO_ROOT, unique_hostname
from tests.fleet_app import ADD, FAIL
from tests.support.cards import approve_button_value
from tests.test_control_commands import (
    ALICE,
    BOB,
    Bot,
    Fleet,
    first_line,
    is_error,
    make_bot,
    start_fleet,
    text_of,
    wait_state,
)


@pytest.fixture(scope="module")
def fleet(
    redis_url_factory: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    url = redis_url_factory()
    log: Path = tmp_path_factory.mktemp("retry-worker") / "worker.log"
    worker = CeleryWorkerProcess(
        "tests.fleet_app", url, hostname=unique_hostname("retry"), log_path=log, cwd=REPO_ROOT
    )
    worker.start()
    consumer: EventConsumer | None = None
    try:
        worker.wait_ready(timeout=30)
        app, store, consumer = start_fleet(url, worker)
        done = app.send_task(ADD, args=(1, 2)).id
        wait_state(store, done, SUCCESS)
        yield Fleet(worker, app, store, FleetControl(app, timeout=3.0))
        app.close()
    finally:
        if consumer is not None:
            consumer.stop(timeout=10)
        worker.stop(timeout=5)


@pytest.fixture
def bot(fleet: Fleet) -> Bot:
    return make_bot(fleet.app, fleet.store)


def fail_with(fleet: Fleet, *args: object, **kwargs: object) -> str:
    task_id = str(fleet.app.send_task(FAIL, args=args, kwargs=kwargs).id)
    wait_state(fleet.store, task_id, FAILURE)
    return task_id


def test_retry_is_in_the_default_approval_policy() -> None:
    assert "retry" in Settings().approval_required


def test_retry_by_id_needs_approval_then_reruns_with_the_same_arguments(
    bot: Bot, fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    original = fail_with(fleet, "card 8773 declined for 14813 cents")
    card = bot.handler_reply(f"retry {original[:10]}")
    assert not card.ephemeral
    approval_id = approve_button_value(card)
    assert approval_id is not None
    text = text_of(card)
    # The card shows what will be re-sent: the task, its arguments, its queue.
    assert "Retry" in first_line(card) and FAIL in text and original in text
    assert "card 8773 declined for 14813 cents" in text and "to queue `celery`" in text
    assert validate_blocks(card.blocks) == []
    assert bot.sent == [] and fleet.store.count_tasks(name=FAIL, state=FAILURE) >= 1

    with caplog.at_level(logging.INFO, logger=AUDIT_LOGGER):
        outcome = bot.approvals.decide(approval_id, BOB, approve=True)
    assert outcome.result == "approved" and outcome.approval is not None
    executed = outcome.approval
    assert executed.outcome is not None and executed.outcome.result == "ok"
    (reply,) = executed.outcome.replies
    assert reply.worker == original and reply.status == "ok"
    new_id = reply.message.split("re-sent as ", 1)[1].split(" ", 1)[0]
    assert new_id != original
    # The audit line of the outcome names the new task id.
    outcome_lines = [r.getMessage() for r in caplog.records if '"outcome"' in r.getMessage()]
    assert any(new_id in line for line in outcome_lines), outcome_lines

    wait_state(fleet.store, new_id, FAILURE)
    again = fleet.store.get_task(new_id)
    before = fleet.store.get_task(original)
    assert again is not None and before is not None
    assert (again.name, again.args, again.kwargs) == (before.name, before.args, before.kwargs)
    assert again.worker == fleet.worker.hostname
    assert outcome.card is not None and new_id in text_of(outcome.card)


def test_retry_by_name_filters_by_exception_and_lists_the_refused(bot: Bot, fleet: Fleet) -> None:
    declined = [fail_with(fleet, f"card {n} declined") for n in (11, 22)]
    # A ValueError too, but a secret was redacted out of its arguments: never re-sent.
    redacted = fail_with(fleet, message="password=hunter2")
    wrong_type = fail_with(fleet, 1, 2, 3)  # TypeError: filtered out by --exception

    card = bot.handler_reply("retry --name fail --since 10m --exception ValueError")
    text = text_of(card)
    assert approve_button_value(card) is not None
    for task_id in declined:
        assert task_id in text
    assert wrong_type not in text
    assert "Not re-sent" in text and redacted in text and "redacted" in text
    assert validate_blocks(card.blocks) == []


def test_a_redacted_task_alone_is_refused_with_the_reason_and_nothing_sent(
    bot: Bot, fleet: Fleet
) -> None:
    task_id = fail_with(fleet, message="x", password="hunter2")
    reply = bot.run(f"retry {task_id}")
    assert is_error(reply)
    assert "nothing to retry" in first_line(reply) and "redacted" in first_line(reply)
    assert bot.approvals.records.list("approval") == []


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("retry", "give one or more task ids"),
        ("retry --since 1h", "only apply with --name"),
        ("retry --name no_such_task", "unknown task name"),
        ("retry --name add", "nothing to retry"),
    ],
)
def test_bad_retry_requests_are_one_line_errors(bot: Bot, line: str, says: str) -> None:
    reply = bot.run(line)
    assert is_error(reply), text_of(reply)
    assert says in first_line(reply)
    assert bot.approvals.records.list("approval") == []


def test_a_running_task_is_not_retried(bot: Bot, fleet: Fleet) -> None:
    succeeded = str(fleet.app.send_task(ADD, args=(2, 2)).id)
    wait_state(fleet.store, succeeded, SUCCESS)
    reply = bot.run(f"retry {succeeded}")
    assert is_error(reply) and "not FAILURE" in first_line(reply)
    assert json.dumps(reply.blocks).count("Usage:") == 1


def test_an_operator_needs_no_approval_when_the_policy_says_so(fleet: Fleet) -> None:
    bot = make_bot(fleet.app, fleet.store, approval_required=("revoke",))
    original = fail_with(fleet, "once more")
    card = bot.handler_reply(f"retry {original}")
    assert approve_button_value(card) is None  # ran at once
    assert "Ran: Retry" in first_line(card) and "re-sent as" in text_of(card)
    assert ALICE in text_of(card)


def test_the_console_shows_the_card_and_warns_when_the_target_already_finished(
    fleet: Fleet,
) -> None:
    questions: list[str] = []

    def no(question: str) -> bool:
        questions.append(question)
        return False

    bot = make_bot(fleet.app, fleet.store, approvers=None, self_approval=True)
    done = str(fleet.app.send_task(ADD, args=(4, 4)).id)
    wait_state(fleet.store, done, SUCCESS)
    bot.run(f"revoke {done}", confirm=no)
    (question,) = questions
    assert "Approval needed: Revoke" in question  # the card, as text, before the question
    assert f"(!) {done} already finished (SUCCESS): nothing left to revoke" in question
    assert question.rstrip().endswith("Approve: revoke 1 task?")
    assert bot.sent == []  # answered no


def test_the_destructive_choice_carries_the_danger_style(bot: Bot, fleet: Fleet) -> None:
    def styles(card: Message) -> dict[str, str | None]:
        (actions,) = [b for b in card.blocks if b.get("type") == "actions"]
        return {e["text"]["text"]: e.get("style") for e in actions["elements"]}

    failed = fail_with(fleet, "styles")
    assert styles(bot.handler_reply(f"retry {failed}")) == {"Approve": "primary", "Deny": "danger"}
    terminate = bot.handler_reply(f"revoke {failed} --terminate")
    assert styles(terminate) == {"Approve": "danger", "Deny": None}
    shutdown = bot.handler_reply(f"shutdown {fleet.worker.hostname}")
    assert styles(shutdown) == {"Approve": "danger", "Deny": None}


def test_one_failure_is_retried_once_whoever_asks_again(bot: Bot, fleet: Fleet) -> None:
    original = fail_with(fleet, "retry me once")
    card = bot.handler_reply(f"retry {original}")
    approval_id = approve_button_value(card)
    assert approval_id is not None
    # A second request while the first awaits approval: refused, nothing stored.
    again = bot.run(f"retry {original}", user=BOB)
    assert is_error(again) and "awaits approval" in first_line(again)
    outcome = bot.approvals.decide(approval_id, BOB, approve=True)
    assert outcome.result == "approved"
    # And once it went out, a later request says where it went.
    later = bot.run(f"retry {original}")
    assert is_error(later) and "already re-sent as" in first_line(later)
    assert len(bot.approvals.records.list("approval")) == 1
