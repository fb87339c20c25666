"""`/celery alerts`, `mute` and `unmute` through the dispatcher, as a face would run them."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from slack_sdk import WebClient

from chatbot.alerts.actions import command_for_click
from chatbot.alerts.manager import REVOKE_ACTION_ID, TERMINATE_ACTION_ID, AlertManager
from chatbot.alerts.rules import Evaluation, backlog_conditions
from chatbot.alerts.sender import SlackSender
from chatbot.auth import Authorizer
from chatbot.broker import QueueLength
from chatbot.commands import CommandContext, Dispatcher, build_registry
from chatbot.commands.alerts import register_alert_commands
from chatbot.config import Settings
from chatbot.console_text import to_text
from chatbot.render import Message, Renderer
from chatbot.store.memory import MemoryStore
from chatbot.store.records import MemoryRecordStore
from tests.support.slack_api import MockSlackAPI

CHANNEL = "C0ALERTS"
OPERATOR = "U0OPERATOR"
GROUP_MEMBER = "U0MEMBER1"
STRANGER = "U0STRANGER"


class Bot:
    def __init__(self, api: MockSlackAPI, operators: tuple[str, ...] = (OPERATOR, "S0ONCALL")):
        self.settings = Settings(alert_channel=CHANNEL, backlog_threshold=5, operators=operators)
        self.renderer = Renderer()
        self.sender = SlackSender(WebClient(token="xoxb-t", base_url=api.url), min_interval=0)
        self.manager = AlertManager(MemoryRecordStore(), self.sender, self.renderer, self.settings)
        groups = {"S0ONCALL": [GROUP_MEMBER]}

        class Resolver:
            def members(self, group_id: str) -> list[str]:
                return groups[group_id]

        authorizer = Authorizer(operators, operators, Resolver())
        registry = register_alert_commands(build_registry(), self.manager, authorizer)
        self.dispatcher = Dispatcher(registry, self.renderer)
        self.store = MemoryStore()

    def run(self, text: str, user: str = OPERATOR) -> Message:
        ctx = CommandContext(
            store=self.store, settings=self.settings, renderer=self.renderer, user_id=user,
            channel_id="C0INCIDENT",
        )  # fmt: skip
        return self.dispatcher.run(text, ctx)


@pytest.fixture
def api() -> Iterator[MockSlackAPI]:
    with MockSlackAPI() as server:
        yield server


@pytest.fixture
def bot(api: MockSlackAPI) -> Iterator[Bot]:
    bot = Bot(api)
    yield bot
    bot.sender.stop()


def fire(bot: Bot, length: int = 10) -> None:
    (condition,) = backlog_conditions([QueueLength("celery", length)], threshold=5, now=0.0)
    bot.manager.reconcile(Evaluation({condition.key: condition}))
    assert bot.sender.flush(10)


def test_alerts_lists_open_alerts_and_silences(bot: Bot) -> None:
    assert "No open alerts" in to_text(bot.run("alerts"))
    fire(bot)
    bot.run("mute stuck:* 2h")
    text = to_text(bot.run("/celery alerts"))
    assert "1 open alert" in text and "backlog:celery" in text and "10 waiting" in text
    assert "stuck:*" in text and "Silences" in text


def test_operators_mute_and_unmute_and_the_alert_message_shows_it(
    bot: Bot, api: MockSlackAPI
) -> None:
    fire(bot)
    reply = to_text(bot.run("mute backlog:celery 1h"))
    assert "Muted backlog:celery for 1h" in reply and "Covers 1 open alert" in reply
    assert "muted until" in to_text(bot.run("alerts"))
    assert bot.sender.flush(10)
    (edit,) = api.calls("chat.update")
    assert "muted until" in json.dumps(edit.params["blocks"])
    assert [s.pattern for s in bot.manager.silences()] == ["backlog:celery"]

    assert "Unmuted" in to_text(bot.run("unmute backlog:celery"))
    assert bot.manager.silences() == []
    assert "No silence" in to_text(bot.run("unmute backlog:celery"))


def test_a_user_group_member_is_an_operator_and_others_are_refused(bot: Bot) -> None:
    assert "Muted" in to_text(bot.run("mute worker:* 10m", user=GROUP_MEMBER))
    refused = to_text(bot.run("mute worker:* 10m", user=STRANGER))
    assert "Only operators" in refused
    assert "Only operators" in to_text(bot.run("unmute worker:*", user=STRANGER))
    assert [s.pattern for s in bot.manager.silences()] == ["worker:*"]


def test_bad_keys_and_durations_get_a_usage_line(bot: Bot) -> None:
    assert "not an alert key" in to_text(bot.run("mute nonsense 1h"))
    assert "duration" in to_text(bot.run("mute backlog:celery soon"))
    assert "missing" in to_text(bot.run("mute backlog:celery"))
    assert "at most" in to_text(bot.run("mute backlog:celery 400d"))


def test_alerts_off_without_a_channel(api: MockSlackAPI) -> None:
    bot = Bot(api)
    bot.manager.channel = ""
    try:
        assert "Alerts are off" in to_text(bot.run("alerts"))
    finally:
        bot.sender.stop()


def test_a_button_click_is_the_typed_revoke_command() -> None:
    assert command_for_click(REVOKE_ACTION_ID, "9f1c-task") == "revoke 9f1c-task"
    assert command_for_click(TERMINATE_ACTION_ID, "9f1c") == "revoke 9f1c --terminate"
    for forged in ("a --terminate", "--name x", "", "a\nb", "x'y"):
        assert command_for_click(REVOKE_ACTION_ID, forged) is None
    assert command_for_click("chatops_approve", "9f1c") is None
