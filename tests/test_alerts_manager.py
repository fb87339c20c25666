"""The alert lifecycle and the Slack send queue against the local Web API double.

Conditions are built by the real rules from synthetic figures; Slack is MockSlackAPI; the
manager's clock is a fake one so cooldowns and silences need no waiting.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from slack_sdk import WebClient

from chatbot.alerts.actions import command_for_click
from chatbot.alerts.manager import (
    ALERT_RECORD,
    FAILED,
    OPEN,
    PENDING,
    RESOLVED,
    REVOKE_ACTION_ID,
    TERMINATE_ACTION_ID,
    AlertManager,
    pattern_matches,
    validate_pattern,
)
from chatbot.alerts.rules import (
    Condition,
    Evaluation,
    backlog_conditions,
    failure_conditions,
    stuck_conditions,
)
from chatbot.alerts.sender import SlackSender
from chatbot.broker import QueueLength
from chatbot.config import Settings
from chatbot.model import FAILURE, STARTED, Task
from chatbot.render import Renderer
from chatbot.store.records import MemoryRecordStore
from tests.support.slack_api import Call, MockSlackAPI

CHANNEL = "C0ALERTS"
T0 = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def api() -> Iterator[MockSlackAPI]:
    with MockSlackAPI() as server:
        yield server


@pytest.fixture
def client(api: MockSlackAPI) -> WebClient:
    # As the service builds it: the sender is the one layer that retries.
    return WebClient(token="xoxb-test", base_url=api.url, retry_handlers=[])


@pytest.fixture
def sender(client: WebClient) -> Iterator[SlackSender]:
    # Pacing is Slack's 1/s in production; the tests need no pacing to be meaningful.
    sender = SlackSender(client, min_interval=0.0, default_retry_after=0.2, backoff=0.05)
    yield sender
    sender.stop()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def settings() -> Settings:
    return Settings(alert_channel=CHANNEL, backlog_threshold=5, alert_cooldown=300.0)


@pytest.fixture
def records(clock: Clock) -> MemoryRecordStore:
    return MemoryRecordStore(clock=clock)


def make_manager(
    records: MemoryRecordStore, sender: SlackSender, settings: Settings, clock: Clock
) -> AlertManager:
    return AlertManager(records, sender, Renderer(clock=clock), settings, clock=clock)


@pytest.fixture
def manager(
    records: MemoryRecordStore, sender: SlackSender, settings: Settings, clock: Clock
) -> AlertManager:
    return make_manager(records, sender, settings, clock)


def backlog(length: int, queue: str = "celery") -> Condition:
    (condition,) = backlog_conditions([QueueLength(queue, length)], threshold=5, now=T0)
    return condition


def evaluation(*conditions: Condition, held: tuple[str, ...] = (),
               notes: dict[str, str] | None = None) -> Evaluation:  # fmt: skip
    return Evaluation({c.key: c for c in conditions}, frozenset(held), notes or {})


def check(manager: AlertManager, sender: SlackSender, *conditions: Condition, **kw: Any) -> None:
    manager.reconcile(evaluation(*conditions, **kw))
    assert sender.flush(10), "the send queue did not drain"


def top_level_posts(api: MockSlackAPI) -> list[Call]:
    return [c for c in api.calls("chat.postMessage") if c.response.get("ok") and
            not c.params.get("thread_ts")]  # fmt: skip


def thread_replies(api: MockSlackAPI, ts: str) -> list[Call]:
    return [c for c in api.calls("chat.postMessage") if c.params.get("thread_ts") == ts]


def texts(call: Call) -> str:
    return json.dumps(call.params.get("blocks")) + call.params.get("text", "")


# -- one message per problem ---------------------------------------------------------------------
def test_one_parent_message_then_thread_updates_then_resolved_in_place(
    api: MockSlackAPI, manager: AlertManager, sender: SlackSender, clock: Clock
) -> None:
    check(manager, sender, backlog(10))
    (parent,) = top_level_posts(api)
    assert parent.params["channel"] == CHANNEL
    ts = parent.response["ts"]
    record = manager.get_alert("backlog:celery")
    assert record is not None and record["status"] == OPEN and record["ts"] == ts

    # Not enough change: nothing at all reaches Slack.
    clock.now += 30
    check(manager, sender, backlog(11))
    assert len(api.calls()) == 1

    # A significant change: one thread reply and one edit of the parent, per check.
    clock.now += 30
    check(manager, sender, backlog(40))
    (reply,) = thread_replies(api, ts)
    assert "40" in reply.params["text"]
    (edit,) = api.calls("chat.update")
    assert edit.params["ts"] == ts and "40" in texts(edit)
    assert "40" in json.dumps(api.message(CHANNEL, ts))

    clock.now += 30
    check(manager, sender, notes={"backlog:celery": "3 waiting, under the threshold of 5"})
    replies = thread_replies(api, ts)
    assert len(replies) == 2 and "Resolved" in replies[-1].params["text"]
    assert "under the threshold" in replies[-1].params["text"]
    assert "Resolved" in json.dumps(api.message(CHANNEL, ts))
    assert manager.get_alert("backlog:celery")["status"] == RESOLVED  # type: ignore[index]
    assert len(top_level_posts(api)) == 1
    assert all(c.response.get("ok") for c in api.calls()), "Slack rejected a message"


def test_a_return_within_the_cooldown_reopens_the_same_thread(
    api: MockSlackAPI, manager: AlertManager, sender: SlackSender, clock: Clock
) -> None:
    check(manager, sender, backlog(10))
    check(manager, sender)  # resolved
    clock.now += 60
    check(manager, sender, backlog(12))
    (parent,) = top_level_posts(api)
    replies = thread_replies(api, parent.response["ts"])
    assert "Firing again" in replies[-1].params["text"]
    assert manager.get_alert("backlog:celery")["reopened"] == 1  # type: ignore[index]

    check(manager, sender)  # resolved again
    clock.now += 301  # past the cooldown: a new problem gets a new message
    check(manager, sender, backlog(12))
    assert len(top_level_posts(api)) == 2


def test_held_keys_are_neither_updated_nor_resolved(
    api: MockSlackAPI, manager: AlertManager, sender: SlackSender
) -> None:
    check(manager, sender, backlog(10))
    check(manager, sender, held=("backlog:celery",))
    assert len(api.calls()) == 1
    assert manager.get_alert("backlog:celery")["status"] == OPEN  # type: ignore[index]


def test_severity_change_is_an_update(
    api: MockSlackAPI, manager: AlertManager, sender: SlackSender
) -> None:
    check(manager, sender, backlog(10))
    check(manager, sender, backlog(60))  # 10 x threshold: critical
    (parent,) = top_level_posts(api)
    (reply,) = thread_replies(api, parent.response["ts"])
    assert manager.get_alert("backlog:celery")["severity"] == "critical"  # type: ignore[index]
    assert reply.response["ok"]


# -- restarts ------------------------------------------------------------------------------------
def test_a_restarted_manager_neither_reposts_nor_forgets(
    api: MockSlackAPI,
    records: MemoryRecordStore,
    client: WebClient,
    settings: Settings,
    clock: Clock,
) -> None:
    first_sender = SlackSender(client, min_interval=0.0)
    first = make_manager(records, first_sender, settings, clock)
    check(first, first_sender, backlog(10))
    first_sender.stop()

    second_sender = SlackSender(client, min_interval=0.0)
    try:
        second = make_manager(records, second_sender, settings, clock)
        assert second.open_alerts() == {"backlog:celery": T0}
        check(second, second_sender, backlog(10))
        assert len(api.calls()) == 1  # nothing re-posted
        check(second, second_sender)
        (parent,) = top_level_posts(api)
        (resolved,) = thread_replies(api, parent.response["ts"])
        assert "Resolved" in resolved.params["text"]
    finally:
        second_sender.stop()


def test_a_post_left_pending_by_a_dead_process_is_posted_again(
    api: MockSlackAPI, manager: AlertManager, sender: SlackSender, records: MemoryRecordStore
) -> None:
    records.put(ALERT_RECORD, "backlog:celery", {
        "key": "backlog:celery", "kind": "backlog", "status": PENDING, "owner": "dead",
        "post_id": "x", "opened_at": T0 - 60,
    })  # fmt: skip
    check(manager, sender, backlog(10))
    assert len(top_level_posts(api)) == 1
    assert manager.get_alert("backlog:celery")["status"] == OPEN  # type: ignore[index]


# -- silences ------------------------------------------------------------------------------------
def test_a_muted_key_posts_nothing_until_unmuted(
    api: MockSlackAPI, manager: AlertManager, sender: SlackSender, clock: Clock
) -> None:
    manager.mute("backlog:*", 3600, "U0OPERATOR")
    check(manager, sender, backlog(10))
    assert api.calls() == []
    assert manager.last_result.suppressed == ["backlog:celery"]
    assert manager.overview().suppressed == ["backlog:celery"]

    existed, _ = manager.unmute("backlog:*")
    assert existed
    check(manager, sender, backlog(10))
    assert len(top_level_posts(api)) == 1


def test_a_silence_expires_by_itself(
    api: MockSlackAPI, manager: AlertManager, sender: SlackSender, clock: Clock
) -> None:
    manager.mute("backlog:celery", 60, "U0OPERATOR")
    check(manager, sender, backlog(10))
    assert api.calls() == []
    clock.now += 61
    check(manager, sender, backlog(10))
    assert len(top_level_posts(api)) == 1


def test_muting_an_open_alert_shows_on_its_message_and_stops_thread_updates(
    api: MockSlackAPI, manager: AlertManager, sender: SlackSender
) -> None:
    check(manager, sender, backlog(10))
    (parent,) = top_level_posts(api)
    ts = parent.response["ts"]
    _, covered = manager.mute("backlog:celery", 3600, "U0OPERATOR")
    assert covered == ["backlog:celery"]
    assert sender.flush(10)
    assert "muted until" in json.dumps(api.message(CHANNEL, ts))

    check(manager, sender, backlog(100))
    assert thread_replies(api, ts) == []

    # Clearing while muted: the parent says so (no stale alarm), the thread stays quiet.
    check(manager, sender)
    assert thread_replies(api, ts) == []
    assert "Resolved" in json.dumps(api.message(CHANNEL, ts))


def test_silence_patterns() -> None:
    assert pattern_matches("stuck:*", "stuck:abc")
    assert not pattern_matches("stuck:*", "worker:abc")
    assert pattern_matches("*", "stream:silent")
    assert pattern_matches("backlog:celery", "backlog:celery")
    assert not pattern_matches("backlog:celery", "backlog:celery2")
    for bad in ("nonsense", "foo:bar", "stuck:*:x", "", "a b"):
        with pytest.raises(ValueError):
            validate_pattern(bad)


# -- what the messages carry ---------------------------------------------------------------------
def test_stuck_alert_buttons_carry_the_task_id_and_disappear_when_resolved(
    api: MockSlackAPI, manager: AlertManager, sender: SlackSender
) -> None:
    task = Task(uuid="9f1c-task", name="app.sync", state=STARTED, worker="w1",
                started=T0 - 900, args="('<@U0BOSS>',)")  # fmt: skip
    (condition,) = stuck_conditions([task], stuck_after=600, now=T0)
    check(manager, sender, condition)
    (parent,) = top_level_posts(api)
    buttons = [
        element
        for block in parent.params["blocks"]
        if block["type"] == "actions"
        for element in block["elements"]
    ]
    assert {(b["action_id"], b["value"]) for b in buttons} == {
        (REVOKE_ACTION_ID, "9f1c-task"),
        (TERMINATE_ACTION_ID, "9f1c-task"),
    }
    # Task arguments are data: they can never ping anyone.
    assert "<@U0BOSS>" not in texts(parent) and "&lt;@U0BOSS&gt;" in texts(parent)

    check(manager, sender, notes={"stuck:9f1c-task": "the task is now REVOKED"})
    final = api.message(CHANNEL, parent.response["ts"])
    assert final is not None
    assert not [b for b in final["blocks"] if b["type"] == "actions"]


def test_failure_spike_names_the_exception_and_escapes_its_text(
    api: MockSlackAPI, manager: AlertManager, sender: SlackSender
) -> None:
    failures = [
        Task(uuid=f"f{i}", name="app.pay", state=FAILURE, worker="w1",
             exception="ValueError('<!channel> card declined')", finished=T0 - i)
        for i in range(3)
    ]  # fmt: skip
    (condition,) = failure_conditions({"app.pay": 3}, {"app.pay": failures}, threshold=3,
                                      window=300)  # fmt: skip
    check(manager, sender, condition)
    (parent,) = top_level_posts(api)
    body = texts(parent)
    assert "ValueError" in body and "f0" in body
    assert "<!channel>" not in body
    # The group's example carries the same menu as a `failed` row: Details, Retry.
    menus = [b["accessory"] for b in parent.params["blocks"] if "accessory" in b]
    assert [[o["value"] for o in m["options"]] for m in menus] == [["details:f0", "retry:f0"]]


# -- Slack limits --------------------------------------------------------------------------------
def test_a_429_delays_but_loses_no_notice(
    api: MockSlackAPI, manager: AlertManager, sender: SlackSender
) -> None:
    api.rate_limit_next("chat.postMessage", retry_after=1)
    check(manager, sender, backlog(10), backlog(10, "other"))
    statuses = [c.status for c in api.calls("chat.postMessage")]
    assert statuses.count(429) == 1 and statuses.count(200) == 2
    assert len(top_level_posts(api)) == 2
    assert set(manager.open_alerts()) == {"backlog:celery", "backlog:other"}
    health = sender.health()
    assert health.rate_limited == 1 and health.failed == 0 and health.ok


def test_message_limit_exceeded_with_http_200_is_a_rate_limit(
    api: MockSlackAPI, manager: AlertManager, sender: SlackSender
) -> None:
    api.fail_next("chat.postMessage", "message_limit_exceeded")
    check(manager, sender, backlog(10))
    assert len(top_level_posts(api)) == 1
    assert sender.health().rate_limited == 1


def test_not_in_channel_is_surfaced_and_the_alert_is_tried_again_later(
    api: MockSlackAPI, manager: AlertManager, sender: SlackSender, clock: Clock
) -> None:
    api.set_scopes(["chat:write"])  # no chat:write.public: membership is required
    api.set_channel(CHANNEL, is_member=False)
    check(manager, sender, backlog(10))
    health = sender.health()
    assert health.errors_by_code == {"not_in_channel": 1}
    assert not health.ok and health.channel_errors == {CHANNEL: "not_in_channel"}
    assert health.last_error is not None and "invite" in health.last_error
    assert manager.get_alert("backlog:celery")["status"] == FAILED  # type: ignore[index]

    check(manager, sender, backlog(10))  # before retry_at: no hammering
    assert len(api.calls("chat.postMessage")) == 1

    api.set_channel(CHANNEL, is_member=True)
    clock.now += 61
    check(manager, sender, backlog(10))
    assert len(top_level_posts(api)) == 1
    assert sender.health().ok


def test_queued_edits_of_one_message_are_coalesced(client: WebClient, api: MockSlackAPI) -> None:
    sender = SlackSender(client, min_interval=0.3)
    try:
        ts = sender.post_message(CHANNEL, "parent").result(10).ts
        assert ts is not None
        sender.post_message(CHANNEL, "holds the lane")  # the edits below wait behind it
        futures = [sender.update_message(CHANNEL, ts, f"edit {i}") for i in range(5)]
        assert sender.flush(10)
        (edit,) = api.calls("chat.update")
        assert edit.params["text"] == "edit 4"
        assert all(f.result().ok for f in futures)
    finally:
        sender.stop()


def test_stopping_cancels_what_is_still_queued(client: WebClient, api: MockSlackAPI) -> None:
    sender = SlackSender(client, min_interval=60.0)
    first = sender.post_message(CHANNEL, "one")
    assert first.result(10).ok
    second = sender.post_message(CHANNEL, "two")  # waits a minute for its turn
    sender.stop()
    assert second.cancelled()
    assert sender.post_message(CHANNEL, "three").result(1).error == "sender_stopped"


def test_a_critical_alert_is_posted_ahead_of_the_warnings_waiting_in_its_channel(
    client: WebClient, api: MockSlackAPI, records: MemoryRecordStore, settings: Settings,
    clock: Clock,
) -> None:
    sender = SlackSender(client, min_interval=0.5)  # Slack's pacing, shortened
    try:
        manager = make_manager(records, sender, settings, clock)
        warnings = [backlog(10, f"q{i}") for i in range(4)]
        manager.reconcile(evaluation(*warnings))  # one is sent, three wait their turn
        critical = backlog(500, "payments")
        assert critical.severity == "critical" and warnings[0].severity == "warning"
        manager.reconcile(evaluation(*warnings, critical))
        assert sender.flush(15)
        subjects = [call.params["text"] for call in top_level_posts(api)]
        assert len(subjects) == 5
        assert "payments" in subjects[1], subjects  # right after the one already on its way
        assert all("payments" not in text for text in subjects[2:])
    finally:
        sender.stop()


def test_an_urgent_post_is_taken_when_the_queue_is_full_and_never_passes_a_tried_call(
    client: WebClient, api: MockSlackAPI
) -> None:
    sender = SlackSender(client, min_interval=0.0, default_retry_after=1.0, max_queue=2)
    try:
        api.rate_limit_next("chat.postMessage", retry_after=1)
        first = sender.post_message(CHANNEL, "tried first")
        api.wait_for("chat.postMessage")  # refused with a 429: it waits at the head
        second = sender.post_message(CHANNEL, "waiting")
        refused = sender.post_message(CHANNEL, "one too many")
        assert refused.result(1).error == "queue_full"
        urgent = sender.post_message(CHANNEL, "events are being lost", urgent=True)
        assert all(f.result(15).ok for f in (first, second, urgent))
        sent = [c.params["text"] for c in api.calls("chat.postMessage") if c.status == 200]
        assert sent == ["tried first", "events are being lost", "waiting"]
    finally:
        sender.stop()


# -- one of several clusters --------------------------------------------------------------------
def test_a_stuck_alert_names_its_cluster_and_its_buttons_address_it(
    api: MockSlackAPI, sender: SlackSender, clock: Clock
) -> None:
    manager = AlertManager(
        MemoryRecordStore(clock=clock),
        sender,
        Renderer(clock=clock),
        Settings(alert_channel=CHANNEL),
        clock=clock,
        cluster="beta",
    )
    task = Task(uuid="9f1c-task", name="app.sync", state=STARTED, worker="w1", started=T0 - 900)
    (condition,) = stuck_conditions([task], stuck_after=600, now=T0)
    check(manager, sender, condition)
    (parent,) = top_level_posts(api)
    assert parent.params["text"].split(" ", 2)[1] == "[beta]"
    assert "cluster *beta*" in json.dumps(parent.params["blocks"])
    values = {
        element["value"]
        for block in parent.params["blocks"]
        if block["type"] == "actions"
        for element in block["elements"]
    }
    assert values == {"@beta/9f1c-task"}
    assert command_for_click(REVOKE_ACTION_ID, "@beta/9f1c-task") == "@beta revoke 9f1c-task"
    assert (
        command_for_click(TERMINATE_ACTION_ID, "@beta/9f1c-task")
        == "@beta revoke 9f1c-task --terminate"
    )


def test_a_click_value_still_cannot_smuggle_flags_or_a_second_id() -> None:
    assert command_for_click(REVOKE_ACTION_ID, "9f1c-task") == "revoke 9f1c-task"
    for bad in ("@beta/--terminate", "@beta/a b", "@Beta/x y", "@beta/", "@beta/'x'"):
        command = command_for_click(REVOKE_ACTION_ID, bad)
        assert command is None or command.split() == ["revoke", bad], bad
