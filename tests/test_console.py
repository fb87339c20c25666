"""The terminal face, driven through io.StringIO with the real dispatcher and MemoryStore, and
the terminal text it prints (``to_text``)."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest

from chatbot.commands import CommandContext, Dispatcher, build_registry
from chatbot.config import Settings
from chatbot.console import BANNER, Console
from chatbot.console_text import to_text
from chatbot.render import Message, Renderer
from chatbot.store.memory import MemoryStore
from tests.test_commands import NOW, build_fleet

PROMPT = "celery> "


@pytest.fixture(scope="module")
def run_command() -> Callable[[str], Message]:
    store = build_fleet(MemoryStore(clock=lambda: NOW))
    renderer = Renderer()
    dispatcher = Dispatcher(build_registry(), renderer)
    ctx = CommandContext(store=store, settings=Settings(), renderer=renderer, clock=lambda: NOW)
    return lambda text: dispatcher.run(text, ctx)


def session(run_command: Callable[[str], Message], typed: str, banner: str | None = BANNER) -> str:
    stdout = io.StringIO()
    console = Console(run_command, io.StringIO(typed), stdout, banner=banner)
    assert console.run() == 0
    return stdout.getvalue()


def test_a_session_answers_commands_with_or_without_the_slash_prefix(
    run_command: Callable[[str], Message],
) -> None:
    out = session(run_command, "failed --limit 1\n/celery failed --limit 1\n\nquit\nstatus\n")
    answers = out.split(PROMPT)
    assert answers[0].startswith("celery-chatops console")
    assert answers[1] == answers[2]  # `failed` and `/celery failed` are the same command
    assert "8 failures in the last 15m" in answers[1]
    assert "cha00007-0000-4000-8000-000000000000" in answers[1]
    assert "7 more not shown" in answers[1]
    assert answers[3] == ""  # an empty line just prompts again
    assert "Celery status" not in out  # nothing runs after quit
    assert len(answers) == 5


def test_output_is_plain_text(run_command: Callable[[str], Message]) -> None:
    out = session(run_command, "task cha00007\n")
    assert "proj.billing.charge\n===================\n\n✗ FAILURE" in out
    assert "  Worker: celery@web-1 ● online" in out
    assert "    raise ValueError('card declined')" in out  # traceback as an indented block
    for markup in ("*", "`", "&lt;", "&gt;", ":x:", '"blocks"'):
        assert markup not in out, markup


def test_help_and_errors_are_readable(run_command: Callable[[str], Message]) -> None:
    out = session(run_command, "help\nstauts\ntask abc\n", banner=None)
    assert out.startswith(PROMPT + "/celery commands\n")
    assert "/celery failed [NAME] [--since 15m] [--group KEY] [--limit N]" in out
    assert "(!) Unknown command 'stauts'. Did you mean status?" in out
    assert "(!) no task with id 'abc'; give the full id or at least 8 characters" in out
    assert "Usage: /celery task UUID" in out
    assert "Traceback" not in out


@pytest.mark.parametrize("typed", ["", "exit\n", "EXIT\n", "q\n"])
def test_end_of_input_and_exit_words_leave_cleanly(
    run_command: Callable[[str], Message], typed: str
) -> None:
    out = session(run_command, typed, banner=None)
    assert out.startswith(PROMPT) and out.count(PROMPT) == 1


def test_a_failing_runner_is_reported_and_the_session_continues() -> None:
    calls: list[str] = []

    def flaky(text: str) -> Message:
        calls.append(text)
        if text == "boom":
            raise ConnectionError("broker went away")
        return Message(text="fine", blocks=[])

    out = session(flaky, "boom\nok\n", banner=None)
    assert "error: ConnectionError: broker went away" in out
    assert out.split(PROMPT)[2] == "fine\n"
    assert calls == ["boom", "ok"]


def test_confirm_asks_on_the_same_streams() -> None:
    stdout = io.StringIO()
    console = Console(lambda t: Message("x"), io.StringIO("y\nno\n"), stdout)
    assert console.confirm("Revoke 3 tasks?") is True
    assert console.confirm("Revoke 3 tasks?") is False
    assert console.confirm("Again?") is False  # end of input is a no
    assert stdout.getvalue().count("[y/N] ") == 3


def test_confirm_hook_can_be_injected() -> None:
    asked: list[str] = []

    def approve(question: str) -> bool:
        asked.append(question)
        return True

    console = Console(lambda t: Message("x"), io.StringIO(""), io.StringIO(), confirm=approve)
    assert console.confirm("Shut down celery@web-1?") is True
    assert asked == ["Shut down celery@web-1?"]


# -- terminal text (chatbot/console_text.py) -------------------------------------------------------
def test_to_text_is_readable() -> None:
    message = Message(
        text="fallback",
        blocks=[
            {"type": "header", "text": {"type": "plain_text", "text": "Celery status"}},
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": "*3 failures* in `proj.a` &lt;!channel&gt; &amp; 2*3*4",
                },
            },
            {"type": "section", "fields": [{"type": "mrkdwn", "text": "*Worker*\n`w1@host`"}]},
            {"type": "divider"},
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": "*Traceback*\n```\nline *1*\nline 2\n```"},
            },
            {
                "type": "context",
                "elements": [
                    {"type": "mrkdwn", "text": ":warning: a"},
                    {"type": "mrkdwn", "text": "b"},
                ],
            },
        ],
    )
    text = to_text(message)
    assert text.startswith("Celery status\n=============\n")
    assert "3 failures in proj.a <!channel> & 2*3*4" in text
    assert "  Worker: w1@host" in text
    assert "-" * 20 in text
    assert "    line *1*\n    line 2" in text  # code keeps its characters, indented
    assert "(!) a · b" in text
    assert "`" not in text


def test_to_text_of_a_message_without_blocks_uses_the_fallback() -> None:
    assert to_text(Message(text="only &lt;text&gt;")) == "only <text>\n"


def test_rows_are_numbered_and_details_n_acts_on_row_n(
    run_command: Callable[[str], Message],
) -> None:
    out = session(run_command, "failed --limit 3\ndetails 2\nretry 2\nrevoke 2\ndetails 9\n")
    answers = out.split(PROMPT)
    listing = answers[1]
    assert "[1: Details · Retry]" in listing and "[3: Details · Retry]" in listing
    second = listing.split("[1: Details · Retry]", 1)[1].split("[2: Details · Retry]", 1)[0]
    (second_id,) = [w for w in second.split() if w.count("-") == 4]  # the row's task id
    assert answers[2].startswith(f"/celery task {second_id}\n")
    assert second_id in answers[2] and "FAILURE" in answers[2]
    assert answers[3].startswith(f"/celery retry {second_id}\n")  # then retry's own answer
    assert answers[4] == "row 2 offers: details, retry\n"  # a failed task has no revoke
    assert answers[5] == "no row 9 (the last list had 3)\n"


def test_mentions_and_emoji_codes_read_as_text() -> None:
    message = Message(
        text="x",
        blocks=[
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": ":raised_hand: asked by <@U0ALICE01> in <#C0INCIDENT|incidents>"
                    " :new: &lt;@U0FAKE&gt; `<@U0CODE>`",
                },
            }
        ],
    )
    text = to_text(message)
    assert text == "(?) asked by @U0ALICE01 in #incidents (new) <@U0FAKE> <@U0CODE>\n"
