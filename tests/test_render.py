"""Renderer: escaping of untrusted task data, Block Kit limits for any input.

slack_sdk's Block Kit models are the independent oracle: what the enforcer produces must pass
them, and what the validator rejects they must reject too. Terminal text: tests/test_console.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jinja2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slack_sdk.errors import SlackObjectFormationError
from slack_sdk.models.blocks import Block, BlockElement
from slack_sdk.models.views import View

from chatbot.failures import group_failures
from chatbot.model import FAILURE, STARTED, StreamHealth, Task
from chatbot.render import (
    BUTTON_TEXT_MAX,
    BUTTON_VALUE_MAX,
    FALLBACK_TEXT_MAX,
    HEADER_TEXT_MAX,
    MESSAGE_MAX_BLOCKS,
    MESSAGE_TEXT_BUDGET,
    SECTION_TEXT_MAX,
    VIEW_MAX_BLOCKS,
    Message,
    Renderer,
    RenderError,
    duration,
    fit_message,
    mrkdwn,
    shortid,
    tail,
    truncate_middle,
    utc_time,
    validate_blocks,
)
from chatbot.render.blockkit import (
    ACTIONS_ELEMENTS_MAX,
    BUTTON_URL_MAX,
    CONTEXT_ELEMENTS_MAX,
    CONTEXT_TEXT_MAX,
    FIELD_TEXT_MAX,
    ID_MAX,
    IMAGE_ALT_TEXT_MAX,
    MARKDOWN_BLOCK_MAX,
    SECTION_FIELDS_MAX,
)

NOW = 1_700_000_000.0
HOSTILE = "<!channel> <@U123> <https://evil.example|click> & `rm -rf /` ```x``` <!here>"


def all_texts(node: Any) -> list[str]:
    """Every text string in a block tree."""
    if isinstance(node, dict):
        found = [node["text"]] if isinstance(node.get("text"), str) else []
        return found + [
            t for k, v in node.items() if k != "text" or not found for t in all_texts(v)
        ]
    if isinstance(node, list):
        return [t for v in node for t in all_texts(v)]
    return []


def slack_sdk_errors(blocks: list[dict[str, Any]]) -> list[str]:
    """What slack_sdk's Block Kit models reject in ``blocks``: the independent oracle.

    ``Block.validate_json`` checks a block's own fields; the interactive elements inside it
    (a section's accessory, an actions block's buttons) are validated one by one as well.
    """
    errors: list[str] = []
    for index, raw in enumerate(blocks):
        try:
            block = Block.parse(raw)
            if block is None:
                errors.append(f"/blocks/{index}: not a block")
                continue
            block.validate_json()
            inner = [raw["accessory"]] if "accessory" in raw else []
            if raw.get("type") == "actions":
                inner += raw.get("elements") or []
            for element in inner:
                parsed = BlockElement.parse(element)
                if parsed is None:
                    errors.append(f"/blocks/{index}: not an element")
                else:
                    parsed.validate_json()
        except (SlackObjectFormationError, TypeError, KeyError) as exc:
            errors.append(f"/blocks/{index}: {exc}")
    return errors


def assert_valid(message: Message, max_blocks: int = MESSAGE_MAX_BLOCKS) -> None:
    """Valid for Slack: our own limit check, slack_sdk's validators, and no live markup."""
    assert (
        validate_blocks(message.blocks, max_blocks=max_blocks, text_budget=MESSAGE_TEXT_BUDGET)
        == []
    )
    assert slack_sdk_errors(message.blocks) == []
    assert len(message.blocks) <= max_blocks
    assert message.text.strip() and len(message.text) <= FALLBACK_TEXT_MAX
    for text in [message.text, *all_texts(message.blocks)]:
        # No raw angle bracket survives: Slack cannot see a mention, a broadcast or a link.
        assert "<" not in text and ">" not in text, text
        assert text.count("```") % 2 == 0, text  # every code block closed
    # The payload survives a JSON round trip unchanged (what Slack receives is what we built).
    payload = message.to_response()
    assert json.loads(json.dumps(payload)) == payload


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer(clock=lambda: NOW)


def hostile_task(**changes: Any) -> Task:
    traceback = "Traceback (most recent call last):\n" + "".join(
        f'  File "/app/deep_{i}.py", line {i}, in f{i}\n    g({i}) # <!channel> & `\n'
        for i in range(700)
    )
    traceback += "ValueError: <@U123> final line"
    assert len(traceback) > 50_000
    task = Task(
        uuid="d1e2f3a4-0000-4000-8000-<!here>`",
        name="proj.tasks.<!everyone>`evil`",
        state=FAILURE,
        args=f"({HOSTILE!r},)",
        kwargs=f"{{'note': {HOSTILE!r}}}",
        worker="celery@<https://evil|host>",
        queue="q<!channel>",
        received=NOW - 30,
        started=NOW - 29,
        finished=NOW - 1,
        runtime=28.0,
        retries=2,
        exception=f"ValueError({HOSTILE!r})",
        traceback=traceback,
        result=HOSTILE,
        parent_id="parent<@U1>",
        root_id="root&id",
        state_ts=NOW - 1,
    )
    for name, value in changes.items():
        setattr(task, name, value)
    return task


def stream(now: float = NOW) -> dict[str, Any]:
    return {
        "health": StreamHealth(last_event_at=now - 3, events_total=10),
        "events_age": 3.0,
        "stream_stale": False,
    }


# -- escaping ------------------------------------------------------------------------------------
def test_mrkdwn_escapes_control_characters_and_backticks() -> None:
    assert mrkdwn("a & b <!channel> <@U1> `x`") == (
        "a &amp; b &lt;!channel&gt; &lt;@U1&gt; \u02cbx\u02cb"
    )
    assert mrkdwn("&lt;") == "&amp;lt;"  # already-escaped-looking text is escaped again
    assert mrkdwn(None) == ""


def test_hostile_task_detail_is_inert_and_fits(renderer: Renderer) -> None:
    task = hostile_task()
    message = renderer.render(
        "task.json.j2",
        task=task,
        timeline=[("received", task.received), ("started", task.started), ("failed", NOW - 1)],
        runtime=28.0,
        finished=True,
        worker=None,
        worker_online=None,
        stats=None,
        **stream(),
    )
    assert_valid(message)
    body = json.dumps(message.blocks)
    assert "&lt;!channel&gt;" in body and "&lt;@U123&gt;" in body
    assert "&lt;https://evil.example|click&gt;" in body
    assert "&amp;" in body
    # The traceback keeps its LAST lines: the raising frame is what matters.
    traceback_text = next(t for t in all_texts(message.blocks) if t.startswith("*Traceback*"))
    assert "ValueError: &lt;@U123&gt; final line" in traceback_text
    assert "deep_0.py" not in traceback_text
    assert "earlier lines cut" in traceback_text


def test_a_secret_that_bypassed_ingest_is_caught_on_the_way_out(renderer: Renderer) -> None:
    # A record written without the ingest redaction (an older store, a bug): the mrkdwn
    # filter every task-derived string passes through removes the secret all the same.
    task = Task(uuid="7d1c4a4e-0000-4000-8000-000000000001", name="billing.charge", state=FAILURE)
    task.args = "('password=hunter2', 'redis://bob:s3cr3tpw@db:6379/0')"
    task.kwargs = "{'api_key': 'AKIAIOSFODNN7EXAMPLE'}"
    task.exception = "AuthError('token xoxb-1234567890-abcdefghij rejected')"
    task.traceback = 'Traceback:\n  headers = "Authorization: Bearer abc.def"\n'
    task.result = "{'secret': 'opensesame'}"
    message = renderer.render(
        "task.json.j2", task=task, timeline=[], runtime=None, finished=True, worker=None,
        worker_online=None, stats=None, **stream(),
    )  # fmt: skip
    body = json.dumps(message.blocks)
    for secret in ("hunter2", "s3cr3tpw", "AKIAIOSFODNN7EXAMPLE", "xoxb-1234567890", "abc.def",
                   "opensesame"):  # fmt: skip
        assert secret not in body, secret
    assert "[redacted]" in body and "billing.charge" in body


def test_escaped_text_survives_json_round_trip(renderer: Renderer) -> None:
    message = renderer.render(
        "error.json.j2", error=f'bad "quote" \\ {HOSTILE}', usage="/celery x", help_hint=""
    )
    assert_valid(message)
    restored = json.loads(json.dumps(message.to_response()))
    assert restored["blocks"][0]["text"]["text"].endswith(mrkdwn(f'bad "quote" \\ {HOSTILE}'))
    assert restored["response_type"] == "ephemeral"


def test_untrusted_text_cannot_close_a_code_span(renderer: Renderer) -> None:
    task = hostile_task(state=STARTED, finished=None, exception=None, traceback=None)
    message = renderer.render(
        "task.json.j2",
        task=task,
        timeline=[],
        runtime=29.0,
        finished=False,
        worker=None,
        worker_online=None,
        stats=None,
        **stream(),
    )
    assert_valid(message)
    args_section = next(t for t in all_texts(message.blocks) if t.startswith("*Args*"))
    # Exactly the template's own fences remain; the task's ``` and ` became inert.
    assert args_section.count("```") == 4
    assert args_section.count("`") == 12


# -- limits --------------------------------------------------------------------------------------
def failures(count: int) -> list[Task]:
    return [
        hostile_task(uuid=f"{i:08x}-aaaa-4bbb-8ccc-{i:012x}", state_ts=NOW - i, finished=NOW - i)
        for i in range(count)
    ]


def test_500_failures_are_paged_not_dropped(renderer: Renderer) -> None:
    tasks = failures(500)
    message = renderer.render(
        "failed.json.j2",
        failures=tasks,  # more than the command would pass: the enforcer must cope
        total=500,
        more=0,
        since=900.0,
        lookup=None,
        group=None,
        groups=group_failures(tasks)[:8],
        more_groups=0,
        grouped_of=None,
        narrow_hint="narrow with NAME, --group, --since or --limit",
        **stream(),
    )
    assert_valid(message)
    items = [b for b in message.blocks if str(b.get("block_id", "")).startswith("item-")]
    hint = next(b for b in message.blocks if b.get("block_id") == "more")
    hint_text = hint["elements"][0]["text"]
    assert f"{500 - len(items)} more not shown" in hint_text
    assert "--since" in hint_text
    assert 0 < len(items) < 500
    # The footer after the list survives the paging.
    assert message.blocks[-1]["type"] == "context"
    assert "events last seen" in message.blocks[-1]["elements"][0]["text"]


def test_template_more_count_adds_to_what_the_enforcer_drops() -> None:
    section = {"type": "section", "text": {"type": "mrkdwn", "text": "x" * 100}}
    document = {
        "text": "t",
        "blocks": [{**section, "block_id": f"item-{i}"} for i in range(60)]
        + [{"type": "context", "block_id": "more", "elements": [{"type": "mrkdwn", "text": "…"}]}],
    }
    _, blocks = fit_message(document, more=40)
    kept = sum(1 for b in blocks if b.get("block_id", "").startswith("item-"))
    hint = blocks[-1]["elements"][0]["text"]
    assert kept == MESSAGE_MAX_BLOCKS - 1
    assert f"{40 + 60 - kept} more not shown" in hint


def test_any_input_is_fitted_to_every_limit() -> None:
    long = "&<>`" * 2000
    document = {
        "text": "fallback " * 10_000,
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": "H" * 500}},
            {
                "type": "section",
                "block_id": "b" * 300,
                "text": {"type": "mrkdwn", "text": "```" + "y" * 9000 + "```"},
            },
            {
                "type": "section",
                "block_id": "b" * 300,
                "fields": [{"type": "mrkdwn", "text": "f" * 5000}] * 25,
            },
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": f"c{i}"} for i in range(15)],
            },
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "action_id": "a" * 400,
                        "text": {"type": "plain_text", "text": "B" * 100},
                        "value": "v" * 5000,
                    }
                ],
            },
            {"type": "section", "text": {"type": "mrkdwn", "text": ""}},
            "not a block",
            *[{"type": "section", "text": {"type": "mrkdwn", "text": long}} for _ in range(200)],
        ],
    }
    # Per-element limits first (no cumulative budget, so every kind of block stays in view)...
    text, blocks = fit_message(document, text_budget=None)
    message = Message(text=text, blocks=blocks)
    assert validate_blocks(blocks) == []
    assert slack_sdk_errors(blocks) == []
    assert len(text) <= FALLBACK_TEXT_MAX
    assert (
        blocks[0]["text"]["text"].endswith("…")
        and len(blocks[0]["text"]["text"]) <= HEADER_TEXT_MAX
    )
    code = blocks[1]["text"]["text"]
    assert len(code) <= SECTION_TEXT_MAX and code.count("```") == 2  # cut, and closed again
    buttons = next(b for b in blocks if b["type"] == "actions")["elements"]
    assert len(buttons[0]["text"]["text"]) <= BUTTON_TEXT_MAX
    assert len(buttons[0]["value"]) == BUTTON_VALUE_MAX
    context = next(b for b in blocks if b["type"] == "context")
    assert len(context["elements"]) == 10 and "c14" in context["elements"][-1]["text"]
    # 25 fields become three sections, none dropped.
    assert sum(len(b.get("fields", [])) for b in blocks) == 25
    # Cut text never ends in half an entity.
    for t in all_texts(message.blocks):
        assert not re.search(r"&[a-z]{0,3}…", t), t[-20:]
    # ...then with the cumulative budget as well.
    _, budgeted = fit_message(document)
    assert validate_blocks(budgeted, text_budget=MESSAGE_TEXT_BUDGET) == []
    assert "cut to fit" in budgeted[-1]["elements"][0]["text"]


def test_home_views_may_hold_100_blocks(renderer: Renderer) -> None:
    document = {
        "blocks": [
            {"type": "section", "block_id": f"item-{i}", "text": {"type": "mrkdwn", "text": "ok"}}
            for i in range(150)
        ]
    }
    _, view_blocks = fit_message(document, max_blocks=VIEW_MAX_BLOCKS, text_budget=None)
    _, message_blocks = fit_message(document)
    assert len(view_blocks) == VIEW_MAX_BLOCKS
    assert len(message_blocks) == MESSAGE_MAX_BLOCKS
    assert validate_blocks(view_blocks, max_blocks=VIEW_MAX_BLOCKS) == []
    View(type="home", blocks=view_blocks).validate_json()  # slack_sdk's own view limit
    with pytest.raises(SlackObjectFormationError):
        View(type="home", blocks=[*view_blocks, {"type": "divider"}]).validate_json()
    assert validate_blocks([*view_blocks, {"type": "divider"}], max_blocks=VIEW_MAX_BLOCKS)
    assert "51 more" in view_blocks[-1]["elements"][0]["text"]


def test_cumulative_text_budget_is_enforced() -> None:
    document = {
        "blocks": [
            {
                "type": "section",
                "block_id": f"item-{i}",
                "text": {"type": "mrkdwn", "text": "z" * 2900},
            }
            for i in range(10)
        ]
    }
    _, blocks = fit_message(document)
    assert validate_blocks(blocks, text_budget=MESSAGE_TEXT_BUDGET) == []
    assert sum(len(t) for t in all_texts(blocks)) <= MESSAGE_TEXT_BUDGET
    assert "more not shown" in blocks[-1]["elements"][0]["text"]


# -- the one limits module against slack_sdk's models ---------------------------------------------
def _button(**fields: Any) -> dict[str, Any]:
    return {"type": "button", "text": {"type": "plain_text", "text": "b"}, **fields}


def _mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text}


# (what, a block with n of it, the limit, where the validator reports it, slack_sdk checks it)
LIMIT_CASES: list[tuple[str, Callable[[int], dict[str, Any]], int, str, bool]] = [
    (
        "section text",
        lambda n: {"type": "section", "text": _mrkdwn("x" * n)},
        SECTION_TEXT_MAX,
        "/blocks/0/text/text",
        True,
    ),
    (
        "section fields",
        lambda n: {"type": "section", "fields": [_mrkdwn("f")] * n},
        SECTION_FIELDS_MAX,
        "/blocks/0/fields",
        True,
    ),
    (
        "field text",
        lambda n: {"type": "section", "fields": [_mrkdwn("x" * n)]},
        FIELD_TEXT_MAX,
        "/blocks/0/fields/0/text",
        False,  # slack_sdk does not check a field's length; Slack rejects one over 2,000
    ),
    (
        "header text",
        lambda n: {"type": "header", "text": {"type": "plain_text", "text": "x" * n}},
        HEADER_TEXT_MAX,
        "/blocks/0/text/text",
        True,
    ),
    (
        "context elements",
        lambda n: {"type": "context", "elements": [_mrkdwn("c")] * n},
        CONTEXT_ELEMENTS_MAX,
        "/blocks/0/elements",
        True,
    ),
    (
        "context text",
        lambda n: {"type": "context", "elements": [_mrkdwn("x" * n)]},
        CONTEXT_TEXT_MAX,
        "/blocks/0/elements/0/text",
        False,  # not checked by slack_sdk either
    ),
    (
        "actions elements",
        lambda n: {"type": "actions", "elements": [_button(action_id=f"a{i}") for i in range(n)]},
        ACTIONS_ELEMENTS_MAX,
        "/blocks/0/elements",
        True,
    ),
    (
        "button text",
        lambda n: {
            "type": "actions",
            "elements": [_button(text={"type": "plain_text", "text": "x" * n})],
        },
        BUTTON_TEXT_MAX,
        "/blocks/0/elements/0/text/text",
        True,
    ),
    (
        "button value",
        lambda n: {"type": "actions", "elements": [_button(value="v" * n)]},
        BUTTON_VALUE_MAX,
        "/blocks/0/elements/0/value",
        True,
    ),
    (
        "button url",
        lambda n: {
            "type": "actions",
            "elements": [_button(url="https://e.example/" + "u" * (n - 18))],
        },
        BUTTON_URL_MAX,
        "/blocks/0/elements/0/url",
        True,
    ),
    (
        "action_id",
        lambda n: {
            "type": "section",
            "text": _mrkdwn("s"),
            "accessory": _button(action_id="a" * n),
        },
        ID_MAX,
        "/blocks/0/accessory/action_id",
        True,
    ),
    (
        "block_id",
        lambda n: {"type": "divider", "block_id": "b" * n},
        ID_MAX,
        "/blocks/0/block_id",
        True,
    ),
    (
        "markdown text",
        lambda n: {"type": "markdown", "text": "x" * n},
        MARKDOWN_BLOCK_MAX,
        "/blocks/0/text",
        True,
    ),
    (
        "image alt text",
        lambda n: {"type": "image", "image_url": "https://e.example/i.png", "alt_text": "a" * n},
        IMAGE_ALT_TEXT_MAX,
        "/blocks/0/alt_text",
        True,
    ),
]


@pytest.mark.parametrize(
    ("build", "limit", "pointer", "slack_sdk_checks"),
    [case[1:] for case in LIMIT_CASES],
    ids=[case[0] for case in LIMIT_CASES],
)
def test_validator_and_slack_sdk_agree_at_each_limit(
    build: Callable[[int], dict[str, Any]], limit: int, pointer: str, slack_sdk_checks: bool
) -> None:
    at_limit, over = [build(limit)], [build(limit + 1)]
    assert validate_blocks(at_limit) == []
    assert slack_sdk_errors(at_limit) == []
    (problem,) = validate_blocks(over)
    assert problem.startswith("[ERROR] ") and problem.endswith(f"[json-pointer:{pointer}]")
    if slack_sdk_checks:
        assert slack_sdk_errors(over), "slack_sdk accepts what our validator rejects"
    # The enforcer brings the over-limit block back within every limit.
    _, fitted = fit_message({"blocks": over}, text_budget=None)
    assert fitted and validate_blocks(fitted) == [] and slack_sdk_errors(fitted) == []


def test_validator_reports_what_slack_rejects_beyond_lengths() -> None:
    button = _button(action_id="same")
    cases: list[tuple[Any, str]] = [
        ("blocks", "must be an array [json-pointer:/blocks]"),
        ([{"type": "divider"}] * (MESSAGE_MAX_BLOCKS + 1), "no more than 50 items allowed"),
        ([{"type": "carousel"}], "unsupported type: carousel [json-pointer:/blocks/0/type]"),
        ([{"text": "no type"}], "missing required field: type [json-pointer:/blocks/0]"),
        ([{"type": "section"}], "must provide either text or fields [json-pointer:/blocks/0]"),
        ([{"type": "section", "text": _mrkdwn("  ")}], "more than 0 characters"),
        ([{"type": "header", "text": _mrkdwn("h")}], "[json-pointer:/blocks/0/text/type]"),
        ([{"type": "context", "elements": []}], "between 1 and 10 items"),
        ([{"type": "actions", "elements": [button, button]}], "duplicate action_id same"),
        ([{"type": "actions", "elements": [_button(style="loud")]}], "one of primary, danger"),
        ([{"type": "divider", "block_id": "d"}] * 2, "duplicate block_id d"),
        ([{"type": "image", "alt_text": "a"}], "missing required field: image_url"),
    ]
    for blocks, expected in cases:
        problems = validate_blocks(blocks)
        assert any(expected in problem for problem in problems), (blocks, problems)
    sized = [{"type": "section", "text": _mrkdwn("z" * 600)}] * 2
    assert validate_blocks(sized, text_budget=1200) == []
    assert validate_blocks(sized, text_budget=1199) == [
        "[ERROR] block texts must add up to at most 1199 [json-pointer:/blocks]"
    ]
    assert validate_blocks([{"type": "divider"}] * VIEW_MAX_BLOCKS) != []
    assert (
        validate_blocks([{"type": "divider"}] * VIEW_MAX_BLOCKS, max_blocks=VIEW_MAX_BLOCKS) == []
    )


# Texts that stress the cuts: entities, backticks and fences, multi-byte characters.
_TEXTS = st.builds(
    lambda unit, count: unit * count,
    st.sampled_from(["x", "&<>`", "```", "é ", "*b* ", " ", "a\n"]),
    st.integers(min_value=0, max_value=4000),
)
_IDS = st.one_of(
    st.none(), st.builds(lambda c, n: c * n, st.sampled_from("ab"), st.integers(0, 300))
)


def _text_object(kinds: Sequence[str] = ("plain_text", "mrkdwn", "other")) -> Any:
    return st.builds(
        lambda kind, text: {"type": kind, "text": text}, st.sampled_from(kinds), _TEXTS
    )


def _without_none(**fields: Any) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not None}


_BUTTONS = st.builds(
    lambda text, action_id, value, style: _without_none(
        type="button", text=text, action_id=action_id, value=value, style=style
    ),
    _text_object(),
    _IDS,
    st.one_of(st.none(), _TEXTS),
    st.sampled_from([None, "primary", "danger", "loud"]),
)
_IMAGES = st.builds(
    lambda url, alt: _without_none(type="image", image_url=url, alt_text=alt),
    st.sampled_from([None, "https://e.example/i.png", "https://e.example/" + "u" * 3000]),
    st.one_of(st.none(), _TEXTS),
)
_BLOCKS = st.one_of(
    st.builds(lambda t, b: _without_none(type="header", text=t, block_id=b), _text_object(), _IDS),
    st.builds(
        lambda t, f, a, b: _without_none(type="section", text=t, fields=f, accessory=a, block_id=b),
        st.one_of(st.none(), _text_object()),
        st.one_of(st.none(), st.lists(_text_object(), max_size=25)),
        st.one_of(st.none(), _BUTTONS, _IMAGES),
        _IDS,
    ),
    st.builds(
        lambda e: {"type": "context", "elements": e},
        st.lists(st.one_of(_text_object(), _IMAGES), max_size=15),
    ),
    st.builds(lambda e: {"type": "actions", "elements": e}, st.lists(_BUTTONS, max_size=30)),
    st.builds(lambda t: {"type": "markdown", "text": t}, _TEXTS),
    _IMAGES,
    st.just({"type": "divider"}),
    st.builds(lambda b: _without_none(type="divider", block_id=b), _IDS),
)


# No deadline: this project asserts no timing (a slow example is not a failure).
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    blocks=st.lists(_BLOCKS, max_size=70),
    text=_TEXTS,
    view=st.booleans(),
)
def test_any_document_is_fitted_to_what_both_validators_accept(
    blocks: list[dict[str, Any]], text: str, view: bool
) -> None:
    max_blocks = VIEW_MAX_BLOCKS if view else MESSAGE_MAX_BLOCKS
    budget = None if view else MESSAGE_TEXT_BUDGET
    fallback, fitted = fit_message(
        {"text": text, "blocks": blocks}, max_blocks=max_blocks, text_budget=budget
    )
    assert validate_blocks(fitted, max_blocks=max_blocks, text_budget=budget) == []
    assert slack_sdk_errors(fitted) == []
    if view and fitted:
        View(type="home", blocks=fitted).validate_json()
    assert fallback.strip() and len(fallback) <= FALLBACK_TEXT_MAX


# -- filters -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (None, "—"),
        (0.053, "53ms"),
        (3.21, "3.2s"),
        (42, "42s"),
        (192, "3m 12s"),
        (120, "2m"),
        (7500, "2h 5m"),
        (97200, "1d 3h"),
    ],
)
def test_duration(seconds: float | None, shown: str) -> None:
    assert duration(seconds) == shown


def test_time_filters(renderer: Renderer) -> None:
    template = renderer.env.from_string(
        "{{ a|ago }}|{{ b|ago }}|{{ c|ago }}|{{ none|ago }}|{{ a|ts }}|{{ id|shortid }}"
    )
    rendered = template.render(now=NOW, a=NOW - 3.4, b=NOW - 192, c=NOW + 5, id="0123456789abcdef")
    assert rendered == "3s ago|3m 12s ago|in 5s|never|2023-11-14 22:13:16 UTC|01234567"
    assert utc_time(None) == "—" and shortid(None) == ""


def test_truncate_middle_keeps_both_ends_and_entities_whole() -> None:
    text = mrkdwn("<" * 100)
    cut = truncate_middle(text, 51)
    assert len(cut) <= 51 and "…" in cut
    assert not re.search(r"&[a-z]{0,3}…|…[a-z]{1,3};", cut)
    assert truncate_middle("start-" + "x" * 100 + "-end", 20).endswith("-end")


def test_tail_keeps_last_lines() -> None:
    lines = [f"line {i}" for i in range(1000)]
    kept = tail("\n".join(lines), 200)
    assert len(kept) <= 200
    assert kept.endswith("line 999") and "earlier lines cut" in kept
    assert tail("x" * 5000 + "END", 100).endswith("END")


# -- templates and renderer behaviour ------------------------------------------------------------
def test_strict_undefined_catches_missing_values(renderer: Renderer) -> None:
    with pytest.raises(jinja2.UndefinedError):
        renderer.render("error.json.j2", error="x")


def test_invalid_json_from_a_template_is_a_render_error(tmp_path: Path) -> None:
    (tmp_path / "broken.json.j2").write_text('{"text": {{ value }}}')
    renderer = Renderer([tmp_path])
    with pytest.raises(RenderError):
        renderer.render("broken.json.j2", value='"unquoted')


def test_explicit_template_dirs_override_the_shipped_ones(tmp_path: Path) -> None:
    (tmp_path / "error.json.j2").write_text('{"text": "custom", "blocks": [{"type": "divider"},]}')
    message = Renderer([tmp_path]).render("error.json.j2")
    assert message.text == "custom" and message.blocks == [{"type": "divider"}]


def test_trailing_commas_inside_strings_are_kept(tmp_path: Path) -> None:
    (tmp_path / "t.json.j2").write_text(
        '{"text": {{ v|tojson }}, "blocks": [{"type": "section", "text": {"type": "mrkdwn",'
        ' "text": {{ v|tojson }}},},]}'
    )
    message = Renderer([tmp_path]).render("t.json.j2", v='a ,] b ,} "c",]')
    assert message.text == 'a ,] b ,} "c",]'
    assert message.blocks[0]["text"]["text"] == 'a ,] b ,} "c",]'


def test_ago_reads_a_second_of_clock_skew_as_just_now() -> None:
    from chatbot.render import ago

    assert ago(100.0, 100.4) == "just now"
    assert ago(101.5, 100.0) == "just now"  # another host's clock, a little ahead
    assert ago(110.0, 100.0) == "in 10s"  # far ahead is worth saying
    assert ago(40.0, 100.0) == "1m ago"
    assert ago(None, 100.0) == "never"


@pytest.mark.parametrize("value", [-1e12, 1e308, float("nan"), float("inf"), -float("inf")])
def test_time_filters_never_raise_on_a_stored_value(value: float) -> None:
    # Intake and the loaders keep such values out; a renderer still never raises on one
    # (a stuck alert that cannot render, every check, is a blind bot).
    from chatbot.render.text import ago, duration, utc_time

    for shown in (utc_time(value), ago(value, 1_700_000_000.0), duration(value)):
        assert isinstance(shown, str) and shown
