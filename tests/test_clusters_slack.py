"""Several clusters through the real Slack face: signed slash commands and an Approve click.

The bot of ``tests/test_clusters_live.py`` (two real brokers, a real worker on each) behind the
real Bolt app and HTTP listener, with the local Slack stand-in: the faces are the ones a
one-cluster bot has, and the cluster is taken from each request.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import pytest

from chatbot.approvals import APPROVE_ACTION_ID
from chatbot.model import REVOKED, STARTED
from chatbot.slack import HttpServer, SlackMetrics, build_app, make_executor, make_web_client
from chatbot.slack.approval_actions import ApprovalActions
from chatbot.slack.task_actions import TaskButtons
from chatbot.task_actions import TASK_MENU_ACTION_ID
from tests.fleet_app import HANG
from tests.support.slack_api import MockSlackAPI
from tests.support.slack_payloads import (
    FORM,
    SignedResponse,
    block_action,
    overflow_action_payload,
    post_signed,
    slash_command,
)
from tests.test_clusters_live import APPROVER, HANG_SECONDS, OPERATOR, Bot, bot  # noqa: F401 (bot: the fixture)

SECRET = "clusters-slack-signing-secret"
CHANNEL = "C0INCIDENT"


@dataclass
class Stack:
    bot: Bot
    api: MockSlackAPI
    server: HttpServer

    def command(self, text: str, name: str) -> SignedResponse:
        body = slash_command(
            text, user_id=OPERATOR, channel_id=CHANNEL, response_url=self.api.response_url(name)
        )
        return post_signed(
            self.server.url + "/slack/events", body, signing_secret=SECRET, content_type=FORM
        )

    def later(self, name: str) -> dict[str, Any]:
        (post,) = self.api.wait_for_response(name, timeout=60)
        assert post.status == 200, post.response
        return dict(post.params)


@pytest.fixture(scope="module")
def stack(bot: Bot) -> Iterator[Stack]:  # noqa: F811
    with MockSlackAPI() as api:
        client = make_web_client("xoxb-clusters-test", api.url)
        executor = make_executor(4)
        metrics = SlackMetrics()
        approvals = ApprovalActions(bot.service.approvals, client)
        service = bot.service
        task_buttons = TaskButtons(
            approvals,
            service.run_as,
            service.store.get_task,
            service.renderer,
            get_task_in=service.get_task_in,
        )
        app = build_app(
            service,
            client=client,
            signing_secret=SECRET,
            executor=executor,
            actions=[*approvals.actions(), *task_buttons.actions()],
            metrics=metrics,
        )
        server = HttpServer(app, bot.service, "127.0.0.1", 0, metrics=metrics).start()
        try:
            yield Stack(bot, api, server)
        finally:
            server.stop()
            executor.shutdown(wait=True)


def text_of(message: dict[str, Any]) -> str:
    return str(message.get("text", "")) + json.dumps(message.get("blocks", []))


def test_at_name_through_slack_answers_for_that_cluster(stack: Stack) -> None:
    answer = stack.command("@alpha failed", "alpha-failed")
    assert answer.status == 200
    shown = text_of(answer.json())
    assert "alpha is broken" in shown and "beta is broken" not in shown
    both = text_of(stack.command("failed", "both-failed").json())
    assert "alpha is broken" in both and "beta is broken" in both


def test_a_revoke_through_slack_is_refused_unnamed_and_runs_on_beta_once_approved(
    stack: Stack,
) -> None:
    fleet = stack.bot
    producer = fleet.beta.producer
    task_id = str(producer.send_task(HANG, (HANG_SECONDS,)).id)
    fleet.wait_state("beta", task_id, STARTED)

    stack.command(f"revoke {task_id} --terminate", "unnamed")
    refused = stack.later("unnamed")
    assert "name its cluster" in text_of(refused)
    assert stack.api.calls("chat.postMessage") == []

    stack.command(f"@beta revoke {task_id} --terminate", "named")
    (posted,) = stack.api.wait_for("chat.postMessage", timeout=60)
    card = posted.params
    assert card["channel"] == CHANNEL and "cluster *beta*" in text_of(card)
    approval_id = next(
        element["value"]
        for block in card["blocks"]
        if block["type"] == "actions"
        for element in block["elements"]
        if element["action_id"] == APPROVE_ACTION_ID
    )
    body = block_action(
        APPROVE_ACTION_ID,
        approval_id,
        user_id=APPROVER,
        channel_id=CHANNEL,
        message_ts=str(posted.response["ts"]),
        response_url=stack.api.response_url("click"),
        message_blocks=card["blocks"],
    )
    clicked = post_signed(
        stack.server.url + "/slack/events", body, signing_secret=SECRET, content_type=FORM
    )
    assert clicked.status == 200
    fleet.wait_state("beta", task_id, REVOKED)
    assert task_id in fleet.revoked_on(fleet.beta)
    assert task_id not in fleet.revoked_on(fleet.alpha)


def test_a_row_menu_of_one_clusters_answer_acts_on_that_cluster(stack: Stack) -> None:
    fleet = stack.bot
    answer = stack.command("failed", "menus").json()
    details = f"@beta/details:{fleet.beta.failed_id}"
    offered = [
        block
        for block in answer["blocks"]
        for option in (block.get("accessory") or {}).get("options") or ()
        if option["value"] == details
    ]
    assert offered, "beta's failed row offers its details, addressed to beta"
    payload = overflow_action_payload(
        TASK_MENU_ACTION_ID,
        details,
        user_id=OPERATOR,
        channel_id=CHANNEL,
        message_ts="1700000000.000300",
        response_url=stack.api.response_url("menu-click"),
        message_blocks=answer["blocks"],
        option_text="Details",
    )
    clicked = post_signed(
        stack.server.url + "/slack/events",
        urlencode({"payload": json.dumps(payload)}).encode(),
        signing_secret=SECRET,
        content_type=FORM,
    )
    assert clicked.status == 200
    shown = text_of(stack.later("menu-click"))
    # The task view of beta's task, from beta's store (alpha's would say "unknown task").
    assert "beta is broken" in shown and "unknown task" not in shown
