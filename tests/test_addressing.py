"""Addressing a cluster: ``@NAME``, the channel's default, every cluster for read-only answers.

Two clusters of real parts (a MemoryStore fed Celery-shaped events, the real read-only and
control commands, a real ApprovalService and FleetControl on a Celery app per cluster whose
broadcasts are recorded); no broker is reached here: the refusals happen before any is asked.
The same routing against two real brokers and workers is in ``tests/test_clusters_live.py``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from celery import Celery

from chatbot.approvals import APPROVE_ACTION_ID, ApprovalService
from chatbot.audit import AuditLog
from chatbot.auth import Authorizer
from chatbot.cluster_config import Clusters, load_clusters, split_value
from chatbot.commands import CommandContext, Dispatcher, UsageError, build_registry
from chatbot.commands.addressing import (
    AddressedPrepared,
    ClusterDispatcher,
    addressed_blocks,
    split_address,
)
from chatbot.commands.control import register_control_commands
from chatbot.config import Settings, load_settings
from chatbot.control import FleetControl
from chatbot.render import Message, Renderer, validate_blocks
from chatbot.store.memory import MemoryStore
from chatbot.store.records import MemoryRecordStore
from tests.test_commands import task_events

NOW = 1_700_000_000.0
TEXT = {"type": "plain_text", "text": "Go"}
OPERATOR = "U0ALICE"
ALPHA_CHANNEL = "C0ALPHA"
OTHER_CHANNEL = "C0OTHER"
ALPHA_FAILED = "a1a1a1a1-0000-4000-8000-000000000001"
BETA_FAILED = "b2b2b2b2-0000-4000-8000-000000000002"


@pytest.mark.parametrize(
    ("text", "cluster", "rest"),
    [
        ("@prod failed", "prod", "failed"),
        ("/celery @prod failed --since 1h", "prod", "/celery failed --since 1h"),
        ("--share @Billing-EU status", "billing-eu", "--share status"),
        ("@all status", "all", "status"),
        ("failed @prod", None, "failed @prod"),  # only the first word addresses
        ("failed", None, "failed"),
        ("", None, ""),
    ],
)
def test_split_address(text: str, cluster: str | None, rest: str) -> None:
    address = split_address(text)
    assert (address.cluster, address.text) == (cluster, rest)


@pytest.mark.parametrize("text", ["@ failed", "@<!here> failed", "@pr.od status"])
def test_a_malformed_address_is_an_error_not_the_default_cluster(text: str) -> None:
    with pytest.raises(UsageError, match="is not a cluster"):
        split_address(text)


@dataclass
class Cluster:
    name: str
    settings: Settings
    store: MemoryStore
    control: FleetControl
    dispatcher: Dispatcher
    approvals: ApprovalService
    sent: list[tuple[str, Any]] = field(default_factory=list)


@dataclass
class Bot:
    clusters: Clusters
    parts: dict[str, Cluster]
    dispatcher: ClusterDispatcher

    def run(self, text: str, channel: str = OTHER_CHANNEL) -> Message:
        base = CommandContext(
            store=MemoryStore(),  # a face's context: replaced by the cluster's below
            settings=Settings(),
            renderer=Renderer(),
            user_id=OPERATOR,
            channel_id=channel,
            clock=lambda: NOW,
        )
        return self.dispatcher.run(text, base)


def _fed_store(task_id: str, name: str, exception: str) -> MemoryStore:
    store = MemoryStore(clock=lambda: NOW)
    store.apply(task_events(name, task_id, NOW - 60, outcome="failure", exception=exception))
    return store


def _recorder(sent: list[tuple[str, Any]]) -> Callable[[str, Any], None]:
    def record(command: str, arguments: Any) -> None:
        sent.append((command, arguments))

    return record


def make_bot(environ: dict[str, str], failures: dict[str, tuple[str, str, str]]) -> Bot:
    clusters = load_clusters(load_settings(environ))
    renderer = Renderer(clock=lambda: NOW)
    parts: dict[str, Cluster] = {}
    for config in clusters:
        settings = dataclasses.replace(config.settings, operators=(OPERATOR,))
        task_id, name, exception = failures[config.name]
        store = _fed_store(task_id, name, exception)
        app = Celery(f"chatops-{config.name}", broker=settings.broker_url, set_as_current=False)
        sent: list[tuple[str, Any]] = []
        control = FleetControl(app, timeout=0.5, on_broadcast=_recorder(sent))
        approvals = ApprovalService(
            MemoryRecordStore(),
            control,
            store,
            Authorizer.from_settings(settings),
            AuditLog(),
            settings,
            renderer=renderer,
            cluster=config.name if clusters.several else "",
        )
        registry = register_control_commands(build_registry(), approvals)
        parts[config.name] = Cluster(
            config.name, settings, store, control, Dispatcher(registry, renderer), approvals, sent
        )

    def context_for(name: str, ctx: CommandContext) -> CommandContext:
        part = parts[name]
        return dataclasses.replace(
            ctx, store=part.store, settings=part.settings, control=part.control
        )

    dispatcher = ClusterDispatcher(
        {name: part.dispatcher for name, part in parts.items()}, clusters, context_for
    )
    return Bot(clusters, parts, dispatcher)


TWO = {
    "CHATOPS_CLUSTERS": "alpha=redis://127.0.0.1:1/1,beta=redis://127.0.0.1:1/2",
    "CHATOPS_CHANNEL_CLUSTERS": f"{ALPHA_CHANNEL}=alpha",
}
FAILURES = {
    "alpha": (ALPHA_FAILED, "proj.alpha.charge", "ValueError('alpha declined')"),
    "beta": (BETA_FAILED, "proj.beta.sync", "KeyError('beta missing')"),
    "default": (ALPHA_FAILED, "proj.alpha.charge", "ValueError('alpha declined')"),
}


@pytest.fixture
def bot() -> Iterator[Bot]:
    yield make_bot(TWO, FAILURES)


def shown(message: Message) -> str:
    return json.dumps(message.blocks, ensure_ascii=False) + message.text


def test_at_name_answers_from_that_cluster_only(bot: Bot) -> None:
    answer = bot.run("@alpha failed")
    assert "alpha declined" in shown(answer)
    assert "beta missing" not in shown(answer)
    assert "Cluster *alpha*" in shown(answer)
    assert validate_blocks(answer.blocks) == []


def test_without_a_default_read_only_answers_cover_every_cluster_each_named(bot: Bot) -> None:
    answer = bot.run("failed")
    text = shown(answer)
    assert "alpha declined" in text and "beta missing" in text
    assert text.index("Cluster *alpha*") < text.index("alpha declined")
    assert text.index("Cluster *beta*") < text.index("beta missing")
    assert "[alpha]" in answer.text and "[beta]" in answer.text
    assert validate_blocks(answer.blocks) == []
    # "status" is one section per cluster too.
    status = shown(bot.run("status"))
    assert "Cluster *alpha*" in status and "Cluster *beta*" in status


def test_a_channel_default_addresses_its_cluster_and_at_all_widens_it(bot: Bot) -> None:
    answer = shown(bot.run("failed", channel=ALPHA_CHANNEL))
    assert "alpha declined" in answer and "beta missing" not in answer
    widened = shown(bot.run("@all failed", channel=ALPHA_CHANNEL))
    assert "alpha declined" in widened and "beta missing" in widened
    # Naming a cluster wins over the channel's default.
    named = shown(bot.run("@beta failed", channel=ALPHA_CHANNEL))
    assert "beta missing" in named and "alpha declined" not in named


def test_task_ids_resolve_within_the_addressed_cluster_only(bot: Bot) -> None:
    found = shown(bot.run(f"@beta task {BETA_FAILED}"))
    assert "beta missing" in found
    elsewhere = shown(bot.run(f"@alpha task {BETA_FAILED}"))
    assert "unknown task" in elsewhere and "beta missing" not in elsewhere


def test_control_without_a_cluster_is_refused_and_reaches_no_worker(bot: Bot) -> None:
    for channel in (OTHER_CHANNEL,):
        refused = bot.run(f"revoke {ALPHA_FAILED}", channel=channel)
        assert "name its cluster" in shown(refused)
        assert "@alpha revoke" in shown(refused)
        assert refused.approval_id is None
    assert "name its cluster" in shown(bot.run(f"@all revoke {ALPHA_FAILED}"))
    assert all(not part.sent for part in bot.parts.values())


def test_control_in_a_bound_channel_addresses_the_channel_cluster(bot: Bot) -> None:
    card = bot.run(f"revoke {ALPHA_FAILED}", channel=ALPHA_CHANNEL)
    # An approval card for alpha's task (the task is known there: resolved in alpha's store).
    assert card.approval_id is not None
    assert ALPHA_FAILED in shown(card)
    refused = bot.run(f"@beta revoke {ALPHA_FAILED}", channel=ALPHA_CHANNEL)
    assert refused.approval_id is None and "unknown task" in shown(refused)


def test_a_request_is_made_by_the_addressed_clusters_own_approvals(bot: Bot) -> None:
    # The line is parsed by the first cluster's dispatcher; the handler that runs must still
    # be beta's (bound to beta's approvals and control), never alpha's.
    card = bot.run(f"@beta revoke {BETA_FAILED}")
    assert card.approval_id is not None
    assert "cluster *beta*" in shown(card)
    assert bot.parts["beta"].approvals.get(card.approval_id) is not None
    assert bot.parts["alpha"].approvals.get(card.approval_id) is None


def test_unknown_cluster_is_a_usage_error_listing_the_clusters(bot: Bot) -> None:
    answer = shown(bot.run("@gamma failed"))
    assert "unknown cluster 'gamma' (clusters: alpha, beta)" in answer
    prepared = bot.dispatcher.prepare("@alpha failed --since 1h")
    assert isinstance(prepared, AddressedPrepared) and prepared.cluster == "alpha"
    assert prepared.name == "failed" and prepared.reply is None


def test_help_is_answered_once(bot: Bot) -> None:
    answer = bot.run("help")
    assert "Cluster *" not in shown(answer)
    assert "@NAME" in shown(answer)


def test_one_cluster_answers_exactly_as_a_plain_dispatcher() -> None:
    single = make_bot({"CELERY_BROKER_URL": "redis://127.0.0.1:1/1"}, FAILURES)
    part = single.parts["default"]
    for line in ("failed", "status", f"task {ALPHA_FAILED}", "tasks --state failed", "help"):
        routed = single.run(line)
        direct = part.dispatcher.run(
            line,
            CommandContext(
                store=part.store,
                settings=part.settings,
                renderer=Renderer(),
                control=part.control,
                user_id=OPERATOR,
                channel_id=OTHER_CHANNEL,
                clock=lambda: NOW,
            ),
        )
        assert routed == direct, line
    # @default is accepted too.
    assert "alpha declined" in shown(single.run("@default failed"))


def test_the_buttons_and_menus_of_a_clusters_answer_address_it() -> None:
    blocks: list[dict[str, Any]] = [
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": "a task"},
            "accessory": {
                "type": "overflow",
                "action_id": "task_menu",
                "options": [
                    {"text": {"type": "plain_text", "text": "Details"}, "value": "details:t1"},
                    {"text": {"type": "plain_text", "text": "Retry"}, "value": "retry:t1"},
                ],
            },
        },
        {
            "type": "actions",
            "elements": [
                {"type": "button", "action_id": "group", "value": "g1", "text": TEXT},
                {"type": "button", "action_id": APPROVE_ACTION_ID, "value": "a" * 32, "text": TEXT},
            ],
        },
    ]
    addressed = addressed_blocks(blocks, "beta")
    options = addressed[0]["accessory"]["options"]
    assert [o["value"] for o in options] == ["@beta/details:t1", "@beta/retry:t1"]
    group, approve = addressed[1]["elements"]
    assert group["value"] == "@beta/g1"
    assert approve["value"] == "a" * 32  # an approval id finds its cluster by itself
    split = [split_value(o["value"]) for o in options]
    assert split == [("beta", "details:t1"), ("beta", "retry:t1")]
    assert split_value("details:t1") == (None, "details:t1")
    assert blocks[1]["elements"][0]["value"] == "g1"  # the original is left as it was
    assert validate_blocks(addressed) == []
