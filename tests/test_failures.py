"""Failure fingerprints and groups (chatbot/failures.py): what makes two failures one group.

Property tests: whatever numbers, hex ids, uuids and quoted values fill a message's slots, the
failures stay one group; a different task name or exception type never joins it. The memory
of first-seen fingerprints runs on both record stores (memory and the private Redis).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid as uuid_module
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatbot.failures import (
    FingerprintMemory,
    exception_message,
    find_group,
    fingerprint,
    group_failures,
    message_shape,
)
from chatbot.model import FAILURE, Task
from chatbot.redaction import ELLIPSIS
from chatbot.store import RecordStore
from chatbot.store.records import MemoryRecordStore
from chatbot.store.redis import RedisRecordStore
from tests.conftest import REPO_ROOT


def failed(
    name: str,
    exception: str,
    at: float,
    worker: str | None = "w1@host",
    task_id: str | None = None,
) -> Task:
    return Task(
        task_id or str(uuid_module.uuid4()),
        name=name,
        state=FAILURE,
        worker=worker,
        exception=exception,
        finished=at,
        state_ts=at,
    )


def card_declined(card: int, cents: int, at: float, worker: str = "w1@host") -> Task:
    return failed(
        "shop.charge_card",
        f"CardDeclined('card {card} declined by the gateway for {cents} cents')",
        at,
        worker,
    )


def test_the_issue_example_is_one_group_of_eleven() -> None:
    cards = [8773, 2251, 1, 99999, 4242, 1234, 7, 31337, 5555, 6006, 12]
    tasks = [
        card_declined(card, 10000 + 613 * i, 1000.0 + i, f"w{i % 3}@host")
        for i, card in enumerate(cards)
    ]
    tasks.reverse()  # newest first, as the store hands them out
    groups = group_failures(tasks)
    assert len(groups) == 1
    (group,) = groups
    assert group.count == 11
    assert group.name == "shop.charge_card"
    assert group.exception_type == "CardDeclined"
    assert group.first_seen == 1000.0
    assert group.last_seen == 1010.0
    assert group.workers == ("w0@host", "w1@host", "w2@host")
    assert group.example.exception == tasks[0].exception  # the newest one
    assert group.members == tuple(t.uuid for t in tasks)
    assert group.new is None  # no window, no memory: unknown, not guessed


def test_groups_are_ordered_biggest_first_then_most_recent() -> None:
    tasks = [
        *(card_declined(i, i, 100.0 + i) for i in range(3)),
        failed("shop.send_receipt", "TimeoutError('smtp timed out after 30s')", 500.0),
        failed("reports.build", "KeyError('region')", 50.0),
    ]
    groups = group_failures(tasks)
    assert [(g.name, g.count) for g in groups] == [
        ("shop.charge_card", 3),
        ("shop.send_receipt", 1),
        ("reports.build", 1),
    ]


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (
            "user 5f0c2d4e-8a1b-4c3d-9e2f-0a1b2c3d4e5f not found",
            "user 0e0e0e0e-aaaa-bbbb-cccc-dddddddddddd not found",
        ),
        ("object at 0x7f3a2b1c9d00 is closed", "object at 0x55d1e2f3a4b5 is closed"),
        ("commit a3f9c2d1e4 missing", "commit 0b1c2d3e4f missing"),
        ("no such key 'eu-west-1'", "no such key 'us-east-2'"),
        ('column "total" is null', 'column "amount_cents" is null'),
        ("took -1.5e+10 ms", "took 42 ms"),
        ("worker-3 lost", "worker-17 lost"),
        ("token deadbeefcafebabe expired", "token 1234567890abcdef expired"),
    ],
)
def test_varying_parts_are_masked(one: str, other: str) -> None:
    assert message_shape(one) == message_shape(other)


def test_the_words_still_tell_failures_apart() -> None:
    assert message_shape("card 1 declined") != message_shape("card 1 expired")
    assert message_shape("connection refused") != message_shape("connection reset")


def test_exception_message_reads_the_repr() -> None:
    assert exception_message("CardDeclined('card 8773 declined')") == "card 8773 declined"
    assert exception_message("KeyError(3, 'x')") == "3, x"
    assert exception_message("TimeoutError()") == ""
    # Not a literal (an object's repr inside): taken as it stands.
    assert exception_message("Foo(<Conn at 0x1f>)") == "<Conn at 0x1f>"
    # Clipped by the store: the ellipsis goes, the rest stays.
    assert exception_message(f"ValueError('card 1 declined {ELLIPSIS}") == "card 1 declined"
    assert exception_message("plain text, no repr") == "plain text, no repr"
    assert exception_message(None) == ""


def test_clipped_messages_of_one_failure_stay_one_group() -> None:
    # The store clips exception texts at a limit: long messages cut at different points keep
    # the prefix that decides their group.
    tail = "x" * 600
    one = failed("t", f"ValueError('row 1 is bad: {tail}{ELLIPSIS}", 1.0)
    other = failed("t", f"ValueError('row 123456 is bad: {tail[:-40]}{ELLIPSIS}", 2.0)
    assert len(group_failures([one, other])) == 1


def test_keys_are_stable_across_processes() -> None:
    task = card_declined(8773, 14813, 1.0)
    key = fingerprint(task).key
    assert len(key) == 8 and int(key, 16) >= 0
    code = (
        "from chatbot.failures import fingerprint; from chatbot.model import Task;"
        "print(fingerprint(Task('x', name='shop.charge_card', exception="
        f"{task.exception!r})).key)"
    )
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO_ROOT)}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == key


def test_find_group_by_key_or_unique_prefix() -> None:
    groups = group_failures([card_declined(1, 2, 1.0), failed("other", "ValueError('x')", 2.0)])
    first = groups[0]
    assert find_group(groups, first.key) is first
    assert find_group(groups, first.key.upper()) is first
    assert find_group(groups, first.key[:5]) in (first, None)  # unique prefixes only
    assert find_group(groups, first.key[:3]) is None  # too short to mean one group
    assert find_group(groups, "zzzzzzzz") is None


# -- properties -----------------------------------------------------------------------------

_WORD = st.text(alphabet="ghijklmnopqrstuvwxyz", min_size=1, max_size=8)
_SEPARATOR = st.sampled_from([" ", ": ", ", ", " (", ") ", " = ", " / "])
_SLOT_KINDS = ("int", "float", "uuid", "hex", "hexaddr", "quoted", "dquoted")


def _slot_value(kind: str) -> st.SearchStrategy[str]:
    if kind == "int":
        return st.integers(min_value=-(10**12), max_value=10**12).map(str)
    if kind == "float":
        return st.floats(allow_nan=False, allow_infinity=False).map(repr)
    if kind == "uuid":
        return st.uuids().map(str)
    if kind == "hex":
        return st.text(alphabet="0123456789abcdef", min_size=8, max_size=40)
    if kind == "hexaddr":
        return st.integers(min_value=0, max_value=2**48).map(hex)
    inner = st.text(
        alphabet=st.characters(blacklist_characters="'\"\n\\", blacklist_categories=["Cs"]),
        max_size=30,
    )
    quote = "'" if kind == "quoted" else '"'
    return inner.map(lambda text: f"{quote}{text}{quote}")


@st.composite
def _templates(draw: st.DrawFn) -> list[tuple[str, str]]:
    """A message template: ``[("word", "card"), ("slot", "int"), ...]``, parts separated."""
    parts: list[tuple[str, str]] = [("word", draw(_WORD))]
    for _ in range(draw(st.integers(min_value=1, max_value=5))):
        parts.append(("sep", draw(_SEPARATOR)))
        if draw(st.booleans()):
            parts.append(("slot", draw(st.sampled_from(_SLOT_KINDS))))
        else:
            parts.append(("word", draw(_WORD)))
    return parts


def _fill(draw: st.DrawFn, template: list[tuple[str, str]]) -> str:
    return "".join(
        draw(_slot_value(value)) if kind == "slot" else value for kind, value in template
    )


@st.composite
def _two_fills(draw: st.DrawFn) -> tuple[str, str]:
    template = draw(_templates())
    return _fill(draw, template), _fill(draw, template)


@settings(max_examples=300, deadline=None)
@given(_two_fills())
def test_numbers_ids_and_quoted_values_never_split_a_group(fills: tuple[str, str]) -> None:
    one, other = fills
    tasks = [
        failed("shop.charge_card", f"CardDeclined({one!r})", 1.0),
        failed("shop.charge_card", f"CardDeclined({other!r})", 2.0),
    ]
    groups = group_failures(tasks)
    assert len(groups) == 1, (one, other, [g.fingerprint.shape for g in groups])
    assert groups[0].count == 2


_NAME = st.from_regex(r"[a-z]{1,8}\.[a-z_]{1,12}", fullmatch=True)
_TYPE = st.from_regex(r"[A-Z][A-Za-z]{0,15}(Error|Exception)?", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(_NAME, _NAME, _TYPE, _TYPE, _two_fills())
def test_different_names_or_types_never_merge(
    name: str, other_name: str, kind: str, other_kind: str, fills: tuple[str, str]
) -> None:
    one, other = fills
    tasks = [
        failed(name, f"{kind}({one!r})", 1.0),
        failed(other_name, f"{other_kind}({other!r})", 2.0),
    ]
    groups = group_failures(tasks)
    if name != other_name or kind != other_kind:
        assert len(groups) == 2
        assert groups[0].key != groups[1].key
    else:
        assert len(groups) == 1


# -- the memory of fingerprints seen before the window --------------------------------------


@pytest.fixture(params=["memory", "redis"])
def records(request: pytest.FixtureRequest, redis_url: str) -> Iterator[RecordStore]:
    if request.param == "memory":
        yield MemoryRecordStore()
        return
    store = RedisRecordStore(redis_url, prefix=f"test-failures-{uuid_module.uuid4().hex[:6]}")
    try:
        yield store
    finally:
        store.close()


def test_a_group_first_seen_inside_the_window_is_new(records: RecordStore) -> None:
    memory = FingerprintMemory(records, now=0.0)
    # An hour before the window: a card failure is seen and remembered.
    memory.group([card_declined(1, 100, 10.0)], window_start=0.0, now=20.0)
    # The window opens at 3600: the card failure again, and a failure never seen before.
    window = [
        failed("shop.send_receipt", "TimeoutError('smtp timed out after 30s')", 3700.0),
        card_declined(2, 200, 3650.0),
    ]
    groups = {g.name: g for g in memory.group(window, window_start=3600.0, now=3800.0)}
    assert groups["shop.charge_card"].new is False
    assert groups["shop.send_receipt"].new is True
    # And the memory kept the card failure's first sighting, not the window's.
    assert memory.first_seen([groups["shop.charge_card"].key]) == {
        groups["shop.charge_card"].key: 10.0
    }


def test_a_memory_younger_than_the_window_does_not_guess(records: RecordStore) -> None:
    memory = FingerprintMemory(records, now=5000.0)  # began after the window opened
    (group,) = memory.group([card_declined(1, 1, 5100.0)], window_start=3600.0, now=5200.0)
    assert group.new is None
    # A second memory on the same records agrees on when remembering began.
    assert FingerprintMemory(records, now=9999.0).since == 5000.0


def test_the_memory_forgets_after_its_time_to_live() -> None:
    now = [0.0]
    clock: Callable[[], float] = lambda: now[0]  # noqa: E731
    records = MemoryRecordStore(clock=clock)
    memory = FingerprintMemory(records, now=0.0, ttl=100.0)
    (first,) = memory.group([card_declined(1, 1, 1.0)], window_start=0.0, now=1.0)
    assert first.new is True
    now[0] = 500.0  # not seen for longer than the time to live
    assert memory.first_seen([first.key]) == {}
    (again,) = memory.group([card_declined(2, 2, 450.0)], window_start=400.0, now=500.0)
    assert again.new is True
