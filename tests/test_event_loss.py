"""Event loss is told, not hidden (issue 12, item 5): the rule, /healthz's report, `status`.

The end-to-end case (a real Redis cut-off ending in an alert posted to the Slack stand-in)
is at the bottom.
"""

from __future__ import annotations

from typing import Any

from chatbot.alerts.rules import (
    CRITICAL,
    EVENT_LOSS_KEY,
    LOSS,
    LOSS_QUIET_AFTER,
    FleetFacts,
    evaluate,
    loss_condition,
    loss_report,
    significant_change,
)
from chatbot.commands import CommandContext, Dispatcher, build_registry
from chatbot.config import Settings
from chatbot.console_text import to_text
from chatbot.model import StreamHealth
from chatbot.render import Renderer
from chatbot.store.memory import MemoryStore

NOW = 1_800_000_000.0


def lossy(**changes: Any) -> StreamHealth:
    values: dict[str, Any] = {
        "broker": "redis://broker:6379/0",
        "connected": True,
        "last_event_at": NOW - 1,
        "disconnects_by_server": 2,
        "last_loss_at": NOW - 30,
    }
    values.update(changes)
    return StreamHealth(**values)


def test_a_recent_cut_off_is_a_critical_loss_condition_with_its_count_and_time() -> None:
    condition = loss_condition(lossy(events_dropped=7, lag_events=12), now=NOW)
    assert condition is not None
    assert (condition.key, condition.kind, condition.severity) == (EVENT_LOSS_KEY, LOSS, CRITICAL)
    figures = condition.figures_dict()
    assert figures["cutoffs"] == 2 and figures["dropped"] == 7
    assert figures["last_loss_at"] == NOW - 30 and figures["lag_events"] == 12


def test_no_loss_or_an_old_one_is_no_condition_and_an_open_alert_resolves() -> None:
    assert loss_condition(StreamHealth(broker="redis://b/0", connected=True), now=NOW) is None
    old = lossy(last_loss_at=NOW - LOSS_QUIET_AFTER - 1)
    assert loss_condition(old, now=NOW) is None
    evaluation = evaluate(
        FleetFacts(now=NOW, health=old), Settings(), {EVENT_LOSS_KEY: NOW - 2000}
    )
    assert EVENT_LOSS_KEY not in evaluation.conditions
    assert "no events lost" in evaluation.notes[EVENT_LOSS_KEY]
    fresh = evaluate(FleetFacts(now=NOW, health=lossy()), Settings(), {})
    assert EVENT_LOSS_KEY in fresh.conditions


def test_a_further_loss_is_worth_a_thread_reply_the_same_count_is_not() -> None:
    before = {"cutoffs": 1, "dropped": 0}
    assert significant_change(LOSS, before, {"cutoffs": 2, "dropped": 0}) == "more"
    assert significant_change(LOSS, before, {"cutoffs": 1, "dropped": 5}) == "more"
    assert significant_change(LOSS, before, dict(before)) is None


def test_healthz_report_is_degraded_while_a_loss_is_recent_with_count_and_time() -> None:
    report = loss_report(lossy(events_dropped=3), NOW)
    assert report["degraded"] is True
    assert report["event_loss"] == {
        "cutoffs": 2, "dropped": 3, "last_at": NOW - 30, "last_age": 30.0,
    }  # fmt: skip
    assert "closed the event subscription 2 time(s)" in report["degraded_reason"]
    later = loss_report(lossy(), NOW + LOSS_QUIET_AFTER)
    assert later["degraded"] is False and "degraded_reason" not in later
    assert later["event_loss"]["cutoffs"] == 2  # the history stays visible
    assert loss_report(StreamHealth(), NOW)["degraded"] is False


def test_status_names_the_cut_offs_the_drops_and_the_time_of_the_latest() -> None:
    store = MemoryStore(clock=lambda: NOW)
    renderer = Renderer()
    ctx = CommandContext(
        store=store,
        renderer=renderer,
        settings=Settings(),
        user_id="U1",
        channel_id="C1",
        clock=lambda: NOW,
        health=lambda: lossy(events_dropped=40),
    )
    text = to_text(Dispatcher(build_registry(), renderer).run("status", ctx))
    assert "Events were lost: the broker closed the event subscription 2 times" in text
    assert "Events were lost: 40 received messages dropped" in text
    assert text.count("the latest at") == 2
