"""`failed` groups failures (chatbot/failures.py): groups first, newest after, `--group KEY`.

The store is fed with Celery's event shapes; the fingerprint memory lives in a real record
store, so "new" is decided the way the running bot decides it.
"""

from __future__ import annotations

from typing import Any

from chatbot.commands import Dispatcher, build_registry
from chatbot.failures import FingerprintMemory, group_failures
from chatbot.render import Message, Renderer
from chatbot.store.memory import MemoryStore
from chatbot.store.records import MemoryRecordStore
from chatbot.task_actions import GROUP_ACTION_ID, group_command
from tests.test_commands import NOW, make_ctx, task_events, traceback_for
from tests.test_render import assert_valid

CHARGE = "shop.charge_card"
X = "\u00d7"


def declined(store: MemoryStore, count: int, start: float, worker: str = "celery@web-1") -> None:
    events: list[dict[str, Any]] = []
    for i in range(count):
        card, cents = 1000 + 37 * i, 10_000 + 613 * i
        exc = f"CardDeclined('card {card} declined by the gateway for {cents} cents')"
        events += task_events(
            CHARGE,
            f"{i:08x}-c0de-4000-8000-{int(start):012d}",
            start + i,
            worker=worker,
            args=f"({card}, {cents})",
            outcome="failure",
            exception=exc,
            traceback=traceback_for(exc),
        )
    store.apply(events)


def run(store: MemoryStore, text: str, **changes: Any) -> Message:
    renderer = Renderer()
    message = Dispatcher(build_registry(), renderer).run(text, make_ctx(store, renderer, **changes))
    assert_valid(message)
    return message


def groups_of(message: Message) -> list[dict[str, Any]]:
    return [b for b in message.blocks if str(b.get("block_id", "")).startswith("group-")]


def items_of(message: Message) -> list[dict[str, Any]]:
    return [b for b in message.blocks if str(b.get("block_id", "")).startswith("item-")]


def test_eleven_failures_differing_only_in_numbers_are_one_group_of_eleven() -> None:
    store = MemoryStore(clock=lambda: NOW)
    declined(store, 11, NOW - 300)
    store.apply(
        task_events(CHARGE, "dead0000-0000-4000-8000-000000000001", NOW - 100, outcome="failure",
                    exception="TimeoutError('gateway timed out after 30s')")
    )  # fmt: skip
    message = run(store, "failed")
    (eleven, one) = groups_of(message)
    assert eleven["text"]["text"].startswith(f"{X}11  *CardDeclined*  `{CHARGE}`  group `")
    assert "first " in eleven["text"]["text"] and "`celery@web-1`" in eleven["text"]["text"]
    assert "declined by the gateway" in eleven["text"]["text"]  # one example message
    assert one["text"]["text"].startswith(f"{X}1  *TimeoutError*")
    # Then the newest examples, each with its actions.
    rows = items_of(message)
    assert rows and all(row["accessory"]["type"] == "overflow" for row in rows)
    assert "12 failures" in message.text


def test_failed_group_lists_one_groups_members_and_its_button_says_so() -> None:
    store = MemoryStore(clock=lambda: NOW)
    declined(store, 11, NOW - 300)
    store.apply(
        task_events(CHARGE, "dead0000-0000-4000-8000-000000000001", NOW - 100, outcome="failure",
                    exception="TimeoutError('gateway timed out after 30s')")
    )  # fmt: skip
    message = run(store, "failed")
    button = groups_of(message)[0]["accessory"]
    assert button["action_id"] == GROUP_ACTION_ID and button["text"]["text"] == "List 11"
    command = group_command(button["value"])
    assert command is not None and command.startswith("failed --group ")

    members = run(store, command + " --limit 50")
    assert groups_of(members) == []  # one group's own listing needs no summary of itself
    rows = items_of(members)
    assert len(rows) == 11
    assert all("CardDeclined" in row["text"]["text"] for row in rows)
    assert "in group `" in members.blocks[0]["text"]["text"]

    key = group_failures(store.recent_failures(None, 900, NOW))[0].key
    assert len(items_of(run(store, f"failed --group {key[:5]}"))) == 11  # a unique prefix


def test_an_unknown_group_is_a_one_line_error() -> None:
    store = MemoryStore(clock=lambda: NOW)
    declined(store, 2, NOW - 60)
    message = run(store, "failed --group 0000ffff")
    line = message.blocks[0]["text"]["text"]
    assert line.startswith(":warning:") and "no failure group '0000ffff'" in line


def test_a_group_first_seen_inside_the_window_is_marked_new() -> None:
    store = MemoryStore(clock=lambda: NOW)
    records = MemoryRecordStore(clock=lambda: NOW)
    memory = FingerprintMemory(records, NOW - 7200)  # remembering for two hours
    declined(store, 3, NOW - 3000)  # seen 50 minutes ago, outside a 15m window
    old_window = run(store, "failed --since 1h", failure_memory=memory)
    assert ":new: new" in groups_of(old_window)[0]["text"]["text"]  # new within the hour
    declined(store, 3, NOW - 120)  # the same failure again, inside the 15m window
    store.apply(
        task_events(CHARGE, "dead0000-0000-4000-8000-000000000002", NOW - 60, outcome="failure",
                    exception="KeyError('region')")
    )  # fmt: skip
    texts = [g["text"]["text"] for g in groups_of(run(store, "failed", failure_memory=memory))]
    (card,) = [t for t in texts if "CardDeclined" in t]
    (key_error,) = [t for t in texts if "KeyError" in t]
    assert ":new:" not in card  # remembered from before the window
    assert ":new: new" in key_error


def test_without_a_memory_old_enough_nothing_is_called_new() -> None:
    store = MemoryStore(clock=lambda: NOW)
    memory = FingerprintMemory(MemoryRecordStore(clock=lambda: NOW), NOW - 60)  # just started
    declined(store, 2, NOW - 30)
    texts = [g["text"]["text"] for g in groups_of(run(store, "failed", failure_memory=memory))]
    assert texts and not any(":new:" in t for t in texts)


def test_a_flag_without_its_value_says_what_the_value_is() -> None:
    message = run(MemoryStore(clock=lambda: NOW), "failed --since")
    line = message.blocks[0]["text"]["text"]
    assert "--since needs a value: how far back (30s, 15m, 2h, 1d)" in line
