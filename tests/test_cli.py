"""The command line: ``--config`` before or after the subcommand, and each subcommand's
``--help`` describing it and the settings it uses, from chatbot.config's setting table.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from chatbot.cli import EXIT_CONFIG, SUBCOMMANDS, Subcommand, main
from chatbot.config import CONSOLE, OUTPUT, TOPICS, setting_table


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No setting from the developer's shell: the environment would win over the file."""
    for key in list(os.environ):
        if key.startswith(("CHATOPS_", "SLACK_", "CELERY_")):
            monkeypatch.delenv(key)


def config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bot.env"
    path.write_text(text, encoding="utf-8")
    return path


def run_cli(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    code = main(list(argv), stderr=err)
    return code, err.getvalue()


@pytest.mark.parametrize("command", [s.name for s in SUBCOMMANDS])
@pytest.mark.parametrize("where", ["before", "after"])
def test_config_is_read_before_or_after_the_subcommand(
    tmp_path: Path, command: str, where: str
) -> None:
    # A malformed value stops every subcommand before it starts anything: that it is named
    # shows the file was read.
    path = str(config_file(tmp_path, "CHATOPS_PORT=not-a-port\n"))
    argv = ["--config", path, command] if where == "before" else [command, "--config", path]
    code, err = run_cli(*argv)
    assert code == EXIT_CONFIG
    assert err.strip() == (
        "celery-chatops: configuration error: CHATOPS_PORT: expected a whole number,"
        " got 'not-a-port'"
    )


def test_config_after_the_subcommand_wins_over_one_before(tmp_path: Path) -> None:
    before = config_file(tmp_path, "CHATOPS_PORT=not-a-port\n")
    after = tmp_path / "after.env"
    after.write_text("CHATOPS_MAX_TASKS=0\n", encoding="utf-8")
    code, err = run_cli("--config", str(before), "check", "--config", str(after))
    assert code == EXIT_CONFIG
    assert "CHATOPS_MAX_TASKS" in err and "CHATOPS_PORT" not in err


def test_a_missing_config_file_after_the_subcommand_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.env"
    code, err = run_cli("console", "--config", str(missing))
    assert code == EXIT_CONFIG
    assert f"CHATOPS_CONFIG: cannot read {missing}" in err


def help_text(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    assert exited.value.code == 0
    return capsys.readouterr().out


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("subcommand", SUBCOMMANDS, ids=lambda s: s.name)
def test_each_subcommand_help_describes_it_and_the_settings_it_uses(
    capsys: pytest.CaptureFixture[str], subcommand: Subcommand
) -> None:
    text = help_text(capsys, subcommand.name, "--help")
    assert f"usage: celery-chatops {subcommand.name}" in text
    assert "--config FILE" in text
    assert flat(subcommand.description) in flat(text)
    shown = flat(text)
    for row in setting_table():
        line = flat(f"{row.env} {row.help} [default: {row.default}]")
        if row.topic in subcommand.topics:
            assert line in shown, row.env
        else:
            assert row.env + " " not in shown, row.env
    for topic in subcommand.topics:
        assert f"\n{topic}:\n" in text


def test_run_and_check_list_every_setting_but_the_console_user(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows = setting_table()
    for command in ("run", "check"):
        shown = flat(help_text(capsys, command, "--help"))
        listed = {row.env for row in rows if f" {row.env} " in shown}
        assert listed == {row.env for row in rows if row.topic != CONSOLE}
    console = flat(help_text(capsys, "console", "--help"))
    assert " CHATOPS_CONSOLE_USER " in console and " SLACK_BOT_TOKEN " not in console
    demo = flat(help_text(capsys, "demo", "--help"))
    assert " CHATOPS_LOG_LEVEL " in demo and " CELERY_BROKER_URL " not in demo
    assert "--script FILE" in demo


def test_top_level_help_lists_the_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text(capsys, "--help")
    for subcommand in SUBCOMMANDS:
        assert subcommand.name in text and flat(subcommand.summary) in flat(text)
    assert {topic for s in SUBCOMMANDS for topic in s.topics} == set(TOPICS)
    assert OUTPUT in TOPICS
