"""Actions on task rows and the task view, end to end through Slack's real payloads.

The real Bolt app behind the HTTP listener (and once over Socket Mode) gets signed
``block_actions`` payloads for the overflow menus and buttons the bot itself rendered, against a
real worker: Details answers the clicker with the task; Terminate from a row posts an approval
card and, once approved, terminates the task on the worker; Retry re-runs a failed task with the
same arguments; a retry of a redacted task is refused; a stale click says what changed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import pytest

from chatbot.approvals import APPROVE_ACTION_ID
from chatbot.console_text import to_text
from chatbot.model import FAILURE, REVOKED, STARTED, Task
from chatbot.render import Message
from chatbot.slack import HttpServer, SocketModeRunner, build_app, make_executor, make_web_client
from chatbot.slack.app import ActionClick, ActionHandler
from chatbot.slack.approval_actions import ApprovalActions
from chatbot.slack.task_actions import TaskButtons, traceback_chunks
from chatbot.task_actions import (
    BUTTON_ACTION_IDS,
    TASK_MENU_ACTION_ID,
    WORKER_MENU_ACTION_ID,
    TaskClick,
    command_for,
    parse_value,
    stale_reason,
    task_buttons,
    task_menu,
    worker_command,
    worker_menu,
)
from tests.fleet_app import FAIL, HANG
from tests.support import wait_until
from tests.support.slack_api import Call, MockSlackAPI, validate_blocks
from tests.support.slack_payloads import (
    FORM,
    SignedResponse,
    block_action,
    overflow_action_payload,
    post_signed,
)
from tests.support.socket_mode import MockSocketModeServer
from tests.test_e2e_readonly import Fleet, running_fleet

SECRET = "task-actions-signing-secret"
BOT_TOKEN = "xoxb-task-actions"
APP_TOKEN = "xapp-1-A0CHATOPS1-1-task-actions"
ALICE = "UALICE001"  # operator
BOB = "UBOB00001"  # operator and approver
CHANNEL = "C0INCIDENT"
DEADLINE = 60.0


@dataclass
class Stack:
    fleet: Fleet
    api: MockSlackAPI
    server: HttpServer
    sm: MockSocketModeServer
    clicks: int = 0

    def run(self, line: str, user: str = ALICE) -> Message:
        """What typing ``/celery line`` answers (the rows a person would click on)."""
        return self.fleet.service.run_as(line, user, CHANNEL)

    def _response_name(self) -> str:
        self.clicks += 1
        return f"click-{self.clicks}"

    def choose(self, message: Message, value: str, user: str) -> Call:
        """Choose ``value`` in the overflow menu of ``message`` (signed, over HTTP); returns
        what the bot answered the clicker on the click's response_url."""
        offered = [
            (block["accessory"]["action_id"], option)
            for block in message.blocks
            for option in (block.get("accessory") or {}).get("options") or ()
            if option["value"] == value
        ]
        ((action_id, option),) = offered  # the row really offers it
        name = self._response_name()
        payload = overflow_action_payload(
            action_id,
            value,
            user_id=user,
            channel_id=CHANNEL,
            message_ts="1700000000.000100",
            response_url=self.api.response_url(name),
            message_blocks=message.blocks,
            option_text=option["text"]["text"],
        )
        body = urlencode({"payload": json.dumps(payload)}).encode()
        return self._post_and_wait(body, name)

    def press(self, message: Message, action_id: str, user: str) -> Call:
        """Press the button ``action_id`` of ``message`` (signed, over HTTP)."""
        (button,) = [
            element
            for block in message.blocks
            for element in block.get("elements") or ()
            if isinstance(element, dict) and element.get("action_id") == action_id
        ]
        name = self._response_name()
        body = block_action(
            action_id,
            button["value"],
            user_id=user,
            channel_id=CHANNEL,
            message_ts="1700000000.000200",
            response_url=self.api.response_url(name),
            message_blocks=message.blocks,
        )
        return self._post_and_wait(body, name)

    def _post_and_wait(self, body: bytes, name: str) -> Call:
        response: SignedResponse = post_signed(
            self.server.url + "/slack/events", body, signing_secret=SECRET, content_type=FORM
        )
        assert response.status == 200 and response.body == b""  # acked at once
        (answer,) = self.api.wait_for_response(name, timeout=DEADLINE)
        assert answer.status == 200, answer.response  # the double accepted it: valid Block Kit
        return answer

    def posted_card(self, count: int) -> dict[str, Any]:
        """The ``count``-th message the bot posted in the channel (an approval card)."""
        calls = self.api.wait_for("chat.postMessage", count=count, timeout=DEADLINE)
        card: dict[str, Any] = calls[count - 1].params
        assert card["channel"] == CHANNEL
        return card

    def approve(self, card: dict[str, Any]) -> Call:
        """Bob presses Approve on a posted card."""
        message = Message(card.get("text") or "", card["blocks"], ephemeral=False)
        return self.press(message, APPROVE_ACTION_ID, BOB)

    def wait_state(self, task_id: str, *states: str) -> Task:
        def reached() -> Task | None:
            task = self.fleet.service.store.get_task(task_id)
            return task if task is not None and task.state in states else None

        found = wait_until(reached, timeout=DEADLINE, what=f"task {task_id} in {states}")
        assert found is not None
        return found


def _handlers(fleet: Fleet, api: MockSlackAPI) -> list[tuple[str, ActionHandler]]:
    service = fleet.service
    approvals = ApprovalActions(service.approvals, make_web_client(BOT_TOKEN, api.url))
    buttons = TaskButtons(approvals, service.run_as, service.store.get_task, service.renderer)
    return [*approvals.actions(), *buttons.actions()]


@pytest.fixture(scope="module")
def stack(
    redis_url_factory: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with (
        running_fleet(
            redis_url_factory(),
            tmp_path_factory.mktemp("task-actions"),
            start_hanging=False,
            operators=(ALICE, BOB),
            approvers=(BOB,),
        ) as fleet,
        MockSocketModeServer() as sm,
        MockSlackAPI(socket_mode=sm) as api,
    ):
        executor = make_executor(8)
        http_app = build_app(
            fleet.service,
            client=make_web_client(BOT_TOKEN, api.url),
            signing_secret=SECRET,
            executor=executor,
            actions=_handlers(fleet, api),
        )
        socket_app = build_app(
            fleet.service,
            client=make_web_client(BOT_TOKEN, api.url),
            signing_secret=None,
            executor=executor,
            actions=_handlers(fleet, api),
        )
        server = HttpServer(http_app, fleet.service, "127.0.0.1", 0).start()
        runner = SocketModeRunner(socket_app, fleet.service, APP_TOKEN, "127.0.0.1", 0).start()
        try:
            sm.wait_connected(timeout=DEADLINE)
            yield Stack(fleet, api, server, sm)
        finally:
            runner.stop()
            server.stop()
            executor.shutdown(wait=True)


def shown(params: dict[str, Any]) -> str:
    return str(params.get("text") or "") + "\n" + json.dumps(params.get("blocks") or [])


# -- through Slack, against the real worker -------------------------------------------------


def test_details_from_a_failed_row_answers_the_clicker_with_the_task(stack: Stack) -> None:
    failed = stack.run("failed")
    assert validate_blocks(failed.blocks) == []
    answer = stack.choose(failed, f"details:{stack.fleet.failed_id}", ALICE).params
    assert answer["response_type"] == "ephemeral" and answer["replace_original"] is False
    text = shown(answer)
    assert stack.fleet.failed_id in text and FAIL in text
    # The task view: the readable traceback, and what can be done next.
    assert "framework frame" in text and "^^^^" not in text
    assert BUTTON_ACTION_IDS["retry"] in text and BUTTON_ACTION_IDS["traceback"] in text
    assert stack.api.calls("chat.postMessage") == []  # nothing in the channel


def test_terminate_from_a_row_terminates_after_approval(stack: Stack) -> None:
    hanging = str(stack.fleet.producer.send_task(HANG, (600.0,)).id)
    stack.wait_state(hanging, STARTED)
    active = stack.run("active")
    answer = stack.choose(active, f"terminate:{hanging}", ALICE).params
    assert "for approval" in answer["text"] and answer["response_type"] == "ephemeral"
    card = stack.posted_card(1)
    assert hanging in shown(card) and "terminate" in shown(card).lower()
    assert stack.fleet.service.store.get_task(hanging).state == STARTED  # type: ignore[union-attr]

    stack.approve(card)
    revoked = stack.wait_state(hanging, REVOKED)
    assert revoked.terminated


def test_retry_from_a_failed_row_reruns_it_with_the_same_arguments(stack: Stack) -> None:
    original = stack.fleet.run_failing("card 8773 declined for 14813 cents")
    before = {t.uuid for t in stack.fleet.service.store.tasks(name=FAIL, limit=500)}
    failed = stack.run("failed")
    answer = stack.choose(failed, f"retry:{original}", ALICE).params
    assert "for approval" in answer["text"]
    card = stack.posted_card(2)
    assert original in shown(card) and "card 8773 declined for 14813 cents" in shown(card)

    stack.approve(card)

    def rerun() -> Task | None:
        for task in stack.fleet.service.store.tasks(name=FAIL, limit=500):
            if task.uuid not in before and task.state == FAILURE:
                return task
        return None

    again = wait_until(rerun, timeout=DEADLINE, what="the re-sent task to fail again")
    first = stack.fleet.service.store.get_task(original)
    assert first is not None and again is not None
    assert (again.args, again.kwargs) == (first.args, first.kwargs)
    assert again.worker == stack.fleet.hostname


def test_retry_of_a_redacted_task_is_refused_and_nothing_posted(stack: Stack) -> None:
    secret = stack.fleet.run_failing("password=hunter2")
    posted = len(stack.api.calls("chat.postMessage"))
    answer = stack.choose(stack.run("failed"), f"retry:{secret}", ALICE).params
    assert answer["response_type"] == "ephemeral"
    assert "redacted" in shown(answer) and "nothing to retry" in shown(answer)
    assert len(stack.api.calls("chat.postMessage")) == posted


def test_a_stale_click_says_what_changed_and_sends_nothing(stack: Stack) -> None:
    # A row rendered while the task ran, clicked after it finished.
    hanging = str(stack.fleet.producer.send_task(HANG, (0.5,)).id)
    stack.wait_state(hanging, STARTED)
    rows = stack.run("active")
    stack.wait_state(hanging, "SUCCESS")
    posted = len(stack.api.calls("chat.postMessage"))
    answer = stack.choose(rows, f"revoke:{hanging}", ALICE).params
    assert "Nothing done" in answer["text"] and "finished since" in answer["text"]
    assert "SUCCESS" in answer["text"]
    assert len(stack.api.calls("chat.postMessage")) == posted


def test_full_traceback_from_the_task_view(stack: Stack) -> None:
    view = stack.run(f"task {stack.fleet.failed_id}")
    answer = stack.press(view, BUTTON_ACTION_IDS["traceback"], ALICE).params
    assert answer["response_type"] == "ephemeral"
    task = stack.fleet.service.store.get_task(stack.fleet.failed_id)
    assert task is not None and task.traceback
    text = shown(answer)
    assert "^^^^" in text  # the whole text, markers and framework frames included
    assert "celery/app/trace.py" in text


def test_details_over_a_socket_mode_envelope(stack: Stack) -> None:
    failed = stack.run("failed")
    value = f"details:{stack.fleet.failed_id}"
    payload = overflow_action_payload(
        TASK_MENU_ACTION_ID,
        value,
        user_id=ALICE,
        channel_id=CHANNEL,
        message_ts="1700000000.000300",
        response_url=stack.api.response_url("socket-details"),
        message_blocks=failed.blocks,
        option_text="Details",
    )
    envelope_id = stack.sm.send_envelope("interactive", payload)
    stack.sm.wait_for_ack(envelope_id, timeout=DEADLINE)
    (answer,) = stack.api.wait_for_response("socket-details", timeout=DEADLINE)
    assert answer.status == 200
    assert answer.params["response_type"] == "ephemeral"
    assert stack.fleet.failed_id in shown(answer.params)


# -- the menus themselves -------------------------------------------------------------------


def _task(state: str, **fields: Any) -> Task:
    return Task("5f0c2d4e-8a1b-4c3d-9e2f-0a1b2c3d4e5f", name="shop.charge", state=state, **fields)


@pytest.mark.parametrize(
    ("state", "verbs"),
    [
        ("STARTED", ["details", "revoke", "terminate"]),
        ("RECEIVED", ["details", "revoke", "terminate"]),
        ("FAILURE", ["details", "retry"]),
        ("SUCCESS", ["details"]),
        ("REVOKED", ["details"]),
    ],
)
def test_each_row_offers_what_its_state_allows(state: str, verbs: list[str]) -> None:
    menu = task_menu(_task(state))
    assert menu is not None and menu["action_id"] == TASK_MENU_ACTION_ID
    assert [o["value"].split(":")[0] for o in menu["options"]] == verbs


def test_the_task_view_buttons_and_the_danger_style() -> None:
    running = task_buttons(_task("STARTED"))
    assert [b["text"]["text"] for b in running] == ["Revoke", "Terminate"]
    assert running[1]["style"] == "danger" and "style" not in running[0]
    failed = task_buttons(_task("FAILURE", traceback="Traceback..."))
    assert [b["text"]["text"] for b in failed] == ["Retry", "Full traceback"]


@pytest.mark.parametrize(
    "task_id", ["", "-x --terminate", "a b", "a'b", "x" * 200, "a:b", "a\nb", "<!channel>", "a`b"]
)
def test_ids_that_are_not_plain_get_no_actions_and_parse_to_nothing(task_id: str) -> None:
    assert task_menu(Task(task_id, state="STARTED")) is None
    assert task_buttons(Task(task_id, state="STARTED")) == []
    assert parse_value(f"revoke:{task_id}") is None


def test_values_parse_to_exactly_the_typed_command() -> None:
    uuid = "5f0c2d4e-8a1b-4c3d-9e2f-0a1b2c3d4e5f"
    expected = {
        "details": f"task {uuid}",
        "revoke": f"revoke {uuid}",
        "terminate": f"revoke {uuid} --terminate",
        "retry": f"retry {uuid}",
        "traceback": None,
    }
    for verb, command in expected.items():
        click = parse_value(f"{verb}:{uuid}")
        assert click == TaskClick(verb, uuid)
        assert command_for(click) == command
    assert parse_value("reboot:" + uuid) is None and parse_value(uuid) is None


def test_stale_reasons() -> None:
    uuid = "5f0c2d4e-8a1b-4c3d-9e2f-0a1b2c3d4e5f"
    assert stale_reason(TaskClick("revoke", uuid), None) is not None
    assert "finished since" in (stale_reason(TaskClick("terminate", uuid), _task("SUCCESS")) or "")
    assert "not FAILURE" in (stale_reason(TaskClick("retry", uuid), _task("STARTED")) or "")
    assert stale_reason(TaskClick("retry", uuid), _task("FAILURE")) is None
    assert stale_reason(TaskClick("details", uuid), None) is None  # the detail says it


def test_a_stale_answer_naming_a_hostile_task_is_inert() -> None:
    uuid = "5f0c2d4e-8a1b-4c3d-9e2f-0a1b2c3d4e5f"
    hostile = Task(uuid, name="<!channel> `x`", state="SUCCESS")
    buttons = TaskButtons(
        approvals=None,  # type: ignore[arg-type]  # never reached: the click is stale
        run_command=lambda *_: pytest.fail("a stale click ran a command"),
        get_task=lambda _id: hostile,
        renderer=None,  # type: ignore[arg-type]
    )
    click = ActionClick(TASK_MENU_ACTION_ID, f"revoke:{uuid}", "U1", "C1", "1.2")
    reply = buttons.on_click(click)
    assert reply.message.text.startswith("Nothing done:")
    assert "<!channel>" not in reply.message.text and "&lt;!channel&gt;" in reply.message.text


def test_traceback_chunks_keep_every_character_within_the_size() -> None:
    text = "".join(f'  File "/srv/app/m{i}.py", line {i}, in f\n    x()\n' for i in range(300))
    text += "Z" * 5000 + "\nValueError: boom\n"
    chunks = traceback_chunks(text, size=2000)
    assert all(len(chunk) <= 2000 for chunk in chunks)
    assert "".join(chunks).replace("\n", "") == text.replace("\n", "")


def test_a_worker_row_offers_its_control_actions_and_runs_them_as_the_clicker(
    stack: Stack,
) -> None:
    workers = stack.run("workers")
    hostname = stack.fleet.hostname
    answer = stack.choose(workers, f"grow:{hostname}", ALICE).params
    # Not in CHATOPS_APPROVAL_REQUIRED: it ran at once, and the worker's answer is shown.
    assert answer["response_type"] == "ephemeral"
    assert hostname in shown(answer) and "pool grow" in shown(answer).lower()
    # `workers` then shows the pool's live size, not the concurrency it started with.
    wait_until(
        lambda: "prefork \u00d72" in to_text(stack.run("workers")),
        timeout=DEADLINE,
        what="the grown pool in `workers`",
    )
    shrink = stack.choose(workers, f"shrink:{hostname}", ALICE).params
    assert hostname in shown(shrink)
    wait_until(
        lambda: "prefork \u00d71" in to_text(stack.run("workers")),
        timeout=DEADLINE,
        what="the shrunk pool in `workers`",
    )
    # Shutdown needs an approval: a card in the channel, left undecided here.
    posted = len(stack.api.calls("chat.postMessage"))
    note = stack.choose(workers, f"shutdown:{hostname}", ALICE).params
    assert "for approval" in note["text"]
    card = stack.posted_card(posted + 1)
    assert "shutdown" in shown(card).lower() and hostname in shown(card)
    # Someone who is not an operator is refused, whatever the button.
    refused = stack.choose(workers, f"grow:{hostname}", "UNOBODY01").params
    assert "operator" in shown(refused)


def test_worker_menus_and_their_commands() -> None:
    menu = worker_menu("celery@web-1")
    assert menu is not None and menu["action_id"] == WORKER_MENU_ACTION_ID
    values = [o["value"] for o in menu["options"]]
    assert values == ["grow:celery@web-1", "shrink:celery@web-1", "shutdown:celery@web-1"]
    assert [worker_command(v) for v in values] == [
        "pool grow celery@web-1 1",
        "pool shrink celery@web-1 1",
        "shutdown celery@web-1",
    ]
    assert worker_menu("celery@web-1", online=False) is None
    assert worker_command("grow:-x --all") is None and worker_command("reboot:w1") is None
