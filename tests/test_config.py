"""Settings: every contract variable is read, validated up front, and secrets never echoed."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from chatbot.config import (
    TOPICS,
    ConfigError,
    Settings,
    load_settings,
    redact_url,
    setting_table,
)


def test_defaults_follow_the_spec() -> None:
    settings = load_settings(environ={})
    assert settings.max_tasks == 10000 and settings.max_workers == 5000
    assert settings.state_url == "memory://"
    assert settings.slack_api_url == "https://slack.com/api/"
    assert (settings.host, settings.port) == ("0.0.0.0", 3000)
    assert settings.check_interval == 30 and settings.backlog_threshold == 100
    assert settings.failure_spike_threshold == 10 and settings.failure_window == 300
    assert settings.stuck_after == 600 and settings.approval_ttl == 900
    assert settings.operators == () and settings.effective_approvers == ()
    assert settings.self_approval is False
    assert "password" in settings.redact_keys and "credentials" in settings.redact_keys


def test_environment_values_are_parsed() -> None:
    settings = load_settings(
        environ={
            "CELERY_BROKER_URL": "amqp://guest:guest@localhost:5672//",
            "CHATOPS_MAX_TASKS": "500",
            "CHATOPS_QUEUES": "celery, io ,, reports",
            "CHATOPS_OPERATORS": "U01ABC,S02GROUP",
            "CHATOPS_SELF_APPROVAL": "yes",
            "CHATOPS_ALERT_CHANNEL": "C0123ALERT",
            "SLACK_API_URL": "http://127.0.0.1:9999/api",
        }
    )
    assert settings.max_tasks == 500
    assert settings.queues == ("celery", "io", "reports")
    assert settings.operators == ("U01ABC", "S02GROUP")
    assert settings.effective_approvers == ("U01ABC", "S02GROUP")  # approvers default
    assert settings.self_approval is True
    assert settings.slack_api_url == "http://127.0.0.1:9999/api/"


def test_explicitly_empty_approvers_means_nobody() -> None:
    settings = load_settings(environ={"CHATOPS_OPERATORS": "U01ABC", "CHATOPS_APPROVERS": ""})
    assert settings.effective_approvers == ()


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"CHATOPS_MAX_TASKS": "lots"}, "CHATOPS_MAX_TASKS"),
        ({"CHATOPS_MAX_TASKS": "0"}, "CHATOPS_MAX_TASKS"),
        ({"CHATOPS_PORT": "70000"}, "CHATOPS_PORT"),
        ({"CELERY_BROKER_URL": "sqs://queue"}, "CELERY_BROKER_URL"),
        ({"CHATOPS_STATE_URL": "postgres://x"}, "CHATOPS_STATE_URL"),
        ({"CHATOPS_OPERATORS": "alice"}, "CHATOPS_OPERATORS"),
        ({"CHATOPS_ALERT_CHANNEL": "#alerts"}, "CHATOPS_ALERT_CHANNEL"),
        ({"CHATOPS_SELF_APPROVAL": "maybe"}, "CHATOPS_SELF_APPROVAL"),
        ({"CHATOPS_CHECK_INTERVAL": "-1"}, "CHATOPS_CHECK_INTERVAL"),
        ({"CHATOPS_CONSOLE_USER": "alice"}, "CHATOPS_CONSOLE_USER"),
        ({"SLACK_API_URL": "slack.com"}, "SLACK_API_URL"),
        ({"CHATOPS_SNAPSHOT_PATH": "/tmp/x", "CHATOPS_STATE_URL": "redis://h/0"},
         "CHATOPS_SNAPSHOT_PATH"),
    ],
)
def test_a_malformed_setting_is_one_line_naming_it(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(environ=env)
    message = str(err.value)
    assert message.startswith(names + ":")
    assert "\n" not in message


def test_a_malformed_token_is_reported_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(environ={"SLACK_BOT_TOKEN": "xoxp-very-secret-user-token"})
    assert "SLACK_BOT_TOKEN" in str(err.value)
    assert "very-secret" not in str(err.value)


def test_run_requires_broker_token_and_signing_secret_in_http_mode() -> None:
    with pytest.raises(ConfigError, match=r"^CELERY_BROKER_URL: required"):
        load_settings(environ={}).require_for_run()
    with pytest.raises(ConfigError, match=r"^SLACK_SIGNING_SECRET: required"):
        load_settings(
            environ={"CELERY_BROKER_URL": "redis://h/0", "SLACK_BOT_TOKEN": "xoxb-1"}
        ).require_for_run()
    socket_mode = load_settings(
        environ={
            "CELERY_BROKER_URL": "redis://h/0",
            "SLACK_BOT_TOKEN": "xoxb-1",
            "SLACK_APP_TOKEN": "xapp-1",
        }
    )
    socket_mode.require_for_run()  # no signing secret needed in Socket Mode
    assert socket_mode.socket_mode


def test_config_file_holds_the_same_keys_and_the_environment_wins(tmp_path: Path) -> None:
    config = tmp_path / "chatops.env"
    config.write_text(
        "# comment\nCELERY_BROKER_URL=redis://file-host:6379/0\n"
        "export CHATOPS_MAX_TASKS='2000'\nCHATOPS_QUEUES=\"a,b\"\n"
    )
    settings = load_settings(environ={"CHATOPS_MAX_TASKS": "3000"}, config_path=config)
    assert settings.broker_url == "redis://file-host:6379/0"
    assert settings.max_tasks == 3000
    assert settings.queues == ("a", "b")
    via_env = load_settings(environ={"CHATOPS_CONFIG": str(config)})
    assert via_env.max_tasks == 2000


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("CHATOPS_NOPE=1\n", "unknown setting CHATOPS_NOPE"),
        ("just words\n", "expected KEY=VALUE"),
    ],
)
def test_a_bad_config_file_names_the_line(tmp_path: Path, text: str, expected: str) -> None:
    config = tmp_path / "bad.env"
    config.write_text(text)
    with pytest.raises(ConfigError, match=expected):
        load_settings(environ={}, config_path=config)
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(environ={}, config_path=tmp_path / "missing.env")


def test_describe_masks_secrets_and_broker_passwords() -> None:
    settings = Settings(
        broker_url="amqp://user:pa55word@rabbit:5672//",
        slack_bot_token="xoxb-123-secret",
        slack_signing_secret="shh",
    )
    shown = settings.describe()
    assert shown["SLACK_BOT_TOKEN"] == "(set)" and shown["SLACK_APP_TOKEN"] == "(unset)"
    assert shown["CELERY_BROKER_URL"] == "amqp://user:***@rabbit:5672//"
    assert "pa55word" not in repr(settings) and "shh" not in repr(settings)
    assert "xoxb-123-secret" not in repr(settings)
    assert redact_url("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"


def test_the_setting_table_documents_every_setting() -> None:
    rows = setting_table()
    assert [row.env for row in rows] == [f.metadata["env"] for f in fields(Settings)]
    for row in rows:
        assert row.topic in TOPICS, row.env
        assert row.help.strip() and "\n" not in row.help, row.env


def test_the_default_shown_is_the_default() -> None:
    by_env = {f.metadata["env"]: f for f in fields(Settings)}
    for row in setting_table():
        if row.default in {"unset", "the operators"}:
            assert by_env[row.env].default in {"", (), None}, row.env
            continue
        settings = load_settings(environ={row.env: row.default})
        assert getattr(settings, by_env[row.env].name) == by_env[row.env].default, row.env
