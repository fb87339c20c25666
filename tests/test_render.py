"""Renderer: escaping of untrusted task data, Block Kit limits for any input.

slack_sdk's Block Kit models are the independent oracle: what the enforcer produces must pass
them, and what the validator rejects they must reject too. Terminal text: tests/test_console.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jinja2
import pytest
from slack_sdk.models.blocks import Block

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


def assert_valid(message: Message, max_blocks: int = MESSAGE_MAX_BLOCKS) -> None:
    """Valid for Slack: our own limit check, slack_sdk's validators, and no live markup."""
    assert (
        validate_blocks(message.blocks, max_blocks=max_blocks, text_budget=MESSAGE_TEXT_BUDGET)
        == []
    )
    for raw in message.blocks:
        block = Block.parse(raw)
        assert block is not None, raw
        block.validate_json()
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
        by_type=[("ValueError", 500)],
        by_name=[("proj.tasks.charge", 500)],
        narrow_hint="narrow with NAME, --since or --limit",
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
    for raw in blocks:
        Block.parse(raw).validate_json()  # type: ignore[union-attr]
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
