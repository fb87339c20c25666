"""``celery-chatops check`` against a real private Redis broker, a real worker and the local
Slack Web API double: every failure is one line that names the fix, and nothing secret shows.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chatbot.check import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, REQUIRED_BOT_SCOPES, run_checks
from chatbot.config import Settings, load_settings
from chatbot.demo.embedded import _free_port
from chatbot.demo.worker import CeleryWorkerProcess
from tests.conftest import FLEET_APP_MODULE, REPO_ROOT, unique_hostname
from tests.support.slack_api import MockSlackAPI

BOT_TOKEN = "xoxb-check-test-token"
SIGNING_SECRET = "check-test-signing-secret"
ALERT_CHANNEL = "C0ALERTS1"
AUDIT_CHANNEL = "G0AUDIT01"
OPERATOR = "U0OPERATOR1"
STATUSES = ("ok", "warn", "FAIL")


@pytest.fixture(scope="module")
def fleet(redis_url_factory: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[str, CeleryWorkerProcess]]:  # fmt: skip
    """One broker database and one worker shared by the module's checks (they only read)."""
    url = redis_url_factory()
    log = tmp_path_factory.mktemp("check-worker") / "worker.log"
    worker = CeleryWorkerProcess(
        FLEET_APP_MODULE, url, hostname=unique_hostname("chk"), cwd=REPO_ROOT, log_path=log
    )
    worker.start()
    try:
        worker.wait_ready(timeout=30)
        yield url, worker
    finally:
        worker.stop(timeout=5.0)


@pytest.fixture
def slack() -> Iterator[MockSlackAPI]:
    with MockSlackAPI() as api:
        api.set_channel(ALERT_CHANNEL, name="ops-alerts")
        api.set_channel(AUDIT_CHANNEL, name="chatops-audit")
        yield api


def make_settings(broker_url: str, slack: MockSlackAPI | None, **env: str) -> Settings:
    environ = {
        "CELERY_BROKER_URL": broker_url,
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": slack.url if slack is not None else "http://127.0.0.1:9/api/",
        "CHATOPS_ALERT_CHANNEL": ALERT_CHANNEL,
        "CHATOPS_AUDIT_CHANNEL": AUDIT_CHANNEL,
        "CHATOPS_OPERATORS": OPERATOR,
    }
    environ.update(env)
    return load_settings(environ={k: v for k, v in environ.items() if v is not None})


def check(settings: Settings) -> tuple[int, list[str]]:
    out = io.StringIO()
    code = run_checks(settings, out)
    lines = out.getvalue().splitlines()
    for line in lines:
        assert line.split(" ", 1)[0] in STATUSES, f"not a check line: {line!r}"
    return code, lines


def with_status(lines: list[str], status: str) -> list[str]:
    return [line for line in lines if line.startswith(status + " ")]


def assert_no_secrets(lines: list[str], *secrets: str) -> None:
    text = "\n".join(lines)
    for secret in (BOT_TOKEN, SIGNING_SECRET, *secrets):
        assert secret not in text


def assert_one_failure(code: int, lines: list[str], *words: str) -> str:
    """Exactly one FAIL line, naming ``words``; the checks after it ran too."""
    assert code != EXIT_OK
    failures = with_status(lines, "FAIL")
    assert len(failures) == 1, lines
    for word in words:
        assert word in failures[0], failures[0]
    return failures[0]


class ClosingListener:
    """A TCP port that accepts and at once closes every connection, counting them: a broker
    that is there but never answers, to see how often the check tries it."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self._lock = threading.Lock()
        self._accepted = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return
            with self._lock:
                self._accepted += 1
            connection.close()

    @property
    def accepted(self) -> int:
        with self._lock:
            return self._accepted

    def close(self) -> None:
        self._socket.close()
        self._thread.join(timeout=5)


@pytest.fixture
def closing_listener() -> Iterator[ClosingListener]:
    listener = ClosingListener()
    yield listener
    listener.close()


# -- everything in order -------------------------------------------------------------------------
def test_all_ok_against_a_real_broker_worker_and_slack(
    fleet: tuple[str, CeleryWorkerProcess], slack: MockSlackAPI
) -> None:
    url, worker = fleet
    code, lines = check(make_settings(url, slack))
    assert code == EXIT_OK, lines
    assert with_status(lines, "FAIL") == [] and with_status(lines, "warn") == [], lines
    text = "\n".join(lines)
    assert f"workers: 1 answered a ping: {worker.hostname}" in text
    assert "queues: celery 0" in text
    assert "events: heartbeats of 1 of 1 workers reach the bot; task events on" in text
    assert "SLACK_BOT_TOKEN valid" in text
    assert f"all {len(REQUIRED_BOT_SCOPES)} the bot needs are granted" in text
    assert f"CHATOPS_ALERT_CHANNEL {ALERT_CHANNEL}: #ops-alerts: the bot is a member" in text
    assert f"CHATOPS_AUDIT_CHANNEL {AUDIT_CHANNEL}: #chatops-audit: the bot is a member" in text
    assert_no_secrets(lines)
    assert [call.method for call in slack.calls()] == [
        "auth.test",
        "conversations.info",
        "conversations.info",
    ]


def test_queue_nobody_consumes_is_named(
    fleet: tuple[str, CeleryWorkerProcess], slack: MockSlackAPI
) -> None:
    import redis

    url, _ = fleet
    client = redis.Redis.from_url(url)
    try:
        client.lpush("reports", b"m1", b"m2", b"m3")
        code, lines = check(make_settings(url, slack, CHATOPS_QUEUES="reports"))
    finally:
        client.delete("reports")
        client.close()
    assert code == EXIT_OK
    assert any(line.startswith("ok    queues:") and "reports 3" in line for line in lines)
    (warning,) = [line for line in with_status(lines, "warn") if "queues" in line]
    assert "no worker consumes reports (3)" in warning and "-Q" in warning


# -- broker failures -----------------------------------------------------------------------------
def test_unreachable_broker_is_one_clear_line_without_the_password(slack: MockSlackAPI) -> None:
    password = "hunter2-broker-secret"
    url = f"redis://:{password}@127.0.0.1:{_free_port()}/0"
    code, lines = check(make_settings(url, slack))
    assert code == EXIT_FAILED
    failure = assert_one_failure(code, lines, "broker", "cannot connect", "CELERY_BROKER_URL")
    assert "127.0.0.1" in failure
    assert_no_secrets(lines, password)
    # What needs the broker is not asked; Slack does not, and is checked all the same.
    assert not any(line.split()[1] in {"workers:", "queues:", "events:"} for line in lines)
    assert "SLACK_BOT_TOKEN valid" in "\n".join(with_status(lines, "ok"))
    assert [call.method for call in slack.calls()] == [
        "auth.test",
        "conversations.info",
        "conversations.info",
    ]


@pytest.mark.parametrize("scheme", ["redis", "amqp"])
def test_a_dead_broker_is_tried_once_not_retried(
    scheme: str, closing_listener: ClosingListener, slack: MockSlackAPI
) -> None:
    # kombu's default is to retry a dead broker for a long time; the check reports at once.
    url = f"{scheme}://guest:guest@127.0.0.1:{closing_listener.port}/0"
    code, lines = check(make_settings(url, slack))
    assert_one_failure(code, lines, "broker", "cannot connect")
    assert closing_listener.accepted == 1


def test_broker_down_and_a_wrong_token_are_both_reported_in_one_run(
    slack: MockSlackAPI,
) -> None:
    slack.revoke_token(BOT_TOKEN, error="invalid_auth")
    url = f"redis://127.0.0.1:{_free_port()}/0"
    code, lines = check(make_settings(url, slack))
    assert code == EXIT_FAILED
    failures = with_status(lines, "FAIL")
    assert len(failures) == 2, lines
    broker, token = failures
    assert broker.startswith("FAIL  broker: cannot connect") and "CELERY_BROKER_URL" in broker
    assert token.startswith("FAIL  slack: SLACK_BOT_TOKEN rejected") and "invalid_auth" in token
    # The channels are looked up with that token: nothing to learn from them now.
    assert [call.method for call in slack.calls()] == ["auth.test"]
    assert_no_secrets(lines)


@pytest.mark.amqp
def test_rabbitmq_broker_worker_and_events(
    amqp_url: str,
    unique_name: Callable[[str], str],
    celery_worker: Callable[..., CeleryWorkerProcess],
    slack: MockSlackAPI,
) -> None:
    queue = unique_name("chk-q")
    worker = celery_worker(amqp_url, hostname=f"{unique_name('chk')}@amqp", queues=(queue,))
    code, lines = check(make_settings(amqp_url, slack, CHATOPS_QUEUES=queue))
    assert code == EXIT_OK, lines
    text = "\n".join(lines)
    assert "broker: amqp 127.0.0.1:5672/ reachable" in text
    assert worker.hostname in text and f"{queue} 0" in text
    # The vhost is shared with other test runs: their workers may answer too, in any state.
    assert any("events: heartbeats of" in line for line in lines), lines
    assert_no_secrets(lines, "guest:guest")


def test_wrong_rabbitmq_password_is_one_line(amqp_url: str, slack: MockSlackAPI) -> None:
    url = amqp_url.replace("guest:guest", "guest:not-the-password")
    code, lines = check(make_settings(url, slack))
    assert_one_failure(code, lines, "broker", "ACCESS_REFUSED")
    assert_no_secrets(lines, "not-the-password")


def test_no_worker_answering_is_a_warning_that_says_what_to_do(
    redis_url: str, slack: MockSlackAPI
) -> None:
    code, lines = check(make_settings(redis_url, slack))
    assert code == EXIT_OK
    (warning,) = [line for line in with_status(lines, "warn") if "workers:" in line]
    assert "none answered a ping" in warning and "start a worker" in warning


def test_worker_without_task_events_is_told_how_to_enable_them(
    redis_url: str,
    slack: MockSlackAPI,
    celery_worker: Callable[..., CeleryWorkerProcess],
    tmp_path: Path,
) -> None:
    # A fleet app whose workers send heartbeats but no task events (no -E, setting off).
    (tmp_path / "quiet_fleet.py").write_text(
        "from tests.fleet_app import make_app\n"
        "app = make_app()\n"
        "app.conf.worker_send_task_events = False\n",
        encoding="utf-8",
    )
    worker = celery_worker(
        redis_url,
        app_module="quiet_fleet",
        events=False,
        cwd=tmp_path,
        env={"PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])},
    )
    code, lines = check(make_settings(redis_url, slack))
    assert code == EXIT_OK
    (warning,) = [line for line in with_status(lines, "warn") if "events:" in line]
    assert worker.hostname in warning
    assert "-E" in warning and "worker_send_task_events = True" in warning
    # The bot turns them on as Flower does; the check said so and did the same.
    code, lines = check(make_settings(redis_url, slack))
    assert any("task events on" in line for line in with_status(lines, "ok"))


# -- Slack failures ------------------------------------------------------------------------------
def test_wrong_token_is_one_clear_line(
    fleet: tuple[str, CeleryWorkerProcess], slack: MockSlackAPI
) -> None:
    slack.revoke_token(BOT_TOKEN, error="invalid_auth")
    code, lines = check(make_settings(fleet[0], slack))
    assert code == EXIT_FAILED
    failure = assert_one_failure(code, lines, "SLACK_BOT_TOKEN", "invalid_auth")
    assert "OAuth & Permissions" in failure
    assert_no_secrets(lines)
    # The broker, workers and events are still checked, and pass.
    assert any(line.startswith("ok    events: heartbeats of 1 of 1") for line in lines), lines


def test_revoked_token_names_the_error_slack_gave(
    fleet: tuple[str, CeleryWorkerProcess], slack: MockSlackAPI
) -> None:
    slack.revoke_token(BOT_TOKEN, error="token_revoked")
    code, lines = check(make_settings(fleet[0], slack))
    assert_one_failure(code, lines, "SLACK_BOT_TOKEN", "token_revoked", "reinstall")


def test_slack_unreachable_is_one_clear_line(fleet: tuple[str, CeleryWorkerProcess]) -> None:
    code, lines = check(make_settings(fleet[0], None))
    assert_one_failure(code, lines, "cannot reach the Slack Web API", "SLACK_API_URL")


def test_missing_optional_scopes_are_named_with_what_they_cost(
    fleet: tuple[str, CeleryWorkerProcess], slack: MockSlackAPI
) -> None:
    granted = [s for s in REQUIRED_BOT_SCOPES if s not in {"usergroups:read", "groups:read"}]
    slack.set_scopes(granted)
    code, lines = check(make_settings(fleet[0], slack))
    assert code == EXIT_OK
    (warning,) = [line for line in with_status(lines, "warn") if "slack scopes:" in line]
    assert "missing usergroups:read, groups:read" in warning
    assert "reinstall" in warning
    # Without groups:read the private audit channel cannot be looked at: said, not failed.
    (audit,) = [line for line in lines if AUDIT_CHANNEL in line]
    assert audit.startswith("warn") and "groups:read" in audit


def test_missing_essential_scope_fails(
    fleet: tuple[str, CeleryWorkerProcess], slack: MockSlackAPI
) -> None:
    slack.set_scopes([s for s in REQUIRED_BOT_SCOPES if s != "chat:write"])
    code, lines = check(make_settings(fleet[0], slack))
    failure = assert_one_failure(code, lines, "slack scopes", "missing chat:write")
    assert "manifest.yml" in failure
    # The channels are still looked up after the scopes failed.
    assert any(line.startswith(f"ok    CHATOPS_ALERT_CHANNEL {ALERT_CHANNEL}") for line in lines)


def test_a_long_fix_is_printed_whole(
    fleet: tuple[str, CeleryWorkerProcess], slack: MockSlackAPI
) -> None:
    slack.set_scopes([])
    code, lines = check(make_settings(fleet[0], slack))
    failure = assert_one_failure(code, lines, "slack scopes")
    for scope, use in REQUIRED_BOT_SCOPES.items():
        assert f"{scope}: {use}" in failure
    assert failure.endswith("(or create the app from manifest.yml) and reinstall the app")
    assert len(failure) > 400  # what was cut at 400 characters before


def test_usergroups_scope_is_essential_when_operators_are_groups(
    fleet: tuple[str, CeleryWorkerProcess], slack: MockSlackAPI
) -> None:
    slack.set_scopes([s for s in REQUIRED_BOT_SCOPES if s != "usergroups:read"])
    code, lines = check(make_settings(fleet[0], slack, CHATOPS_OPERATORS="S0ONCALL01"))
    assert_one_failure(code, lines, "missing usergroups:read")


def test_bot_not_in_the_alert_channel_warns_with_the_invite(
    fleet: tuple[str, CeleryWorkerProcess], slack: MockSlackAPI
) -> None:
    slack.set_channel(ALERT_CHANNEL, name="ops-alerts", is_member=False)
    code, lines = check(make_settings(fleet[0], slack))
    assert code == EXIT_OK
    (warning,) = [line for line in lines if f"CHATOPS_ALERT_CHANNEL {ALERT_CHANNEL}:" in line]
    assert warning.startswith("warn")
    assert "not a member of #ops-alerts" in warning and "/invite @" in warning


def test_bot_not_in_the_alert_channel_fails_without_chat_write_public(
    fleet: tuple[str, CeleryWorkerProcess], slack: MockSlackAPI
) -> None:
    slack.set_scopes([s for s in REQUIRED_BOT_SCOPES if s != "chat:write.public"])
    slack.set_channel(ALERT_CHANNEL, name="ops-alerts", is_member=False)
    code, lines = check(make_settings(fleet[0], slack))
    failure = assert_one_failure(code, lines, ALERT_CHANNEL, "cannot post alerts")
    assert "/invite @" in failure and "#ops-alerts" in failure


def test_archived_or_unknown_alert_channel_fails(
    fleet: tuple[str, CeleryWorkerProcess], slack: MockSlackAPI
) -> None:
    slack.set_channel(ALERT_CHANNEL, name="ops-alerts", is_archived=True)
    code, lines = check(make_settings(fleet[0], slack))
    assert_one_failure(code, lines, "archived", "CHATOPS_ALERT_CHANNEL")

    slack.set_handler("conversations.info", lambda _params: {"ok": False,
                                                             "error": "channel_not_found"})
    code, lines = check(make_settings(fleet[0], slack))
    # Both channels are unknown now, and each is named: the first does not hide the second.
    alert, audit = with_status(lines, "FAIL")
    assert alert.startswith(f"FAIL  CHATOPS_ALERT_CHANNEL {ALERT_CHANNEL}: channel not found")
    assert audit.startswith(f"FAIL  CHATOPS_AUDIT_CHANNEL {AUDIT_CHANNEL}: channel not found")
    assert "/invite" in alert and "/invite" in audit


def test_socket_mode_checks_the_app_token(
    fleet: tuple[str, CeleryWorkerProcess], slack: MockSlackAPI
) -> None:
    app_token = "xapp-1-check-test-app-token"
    settings = make_settings(fleet[0], slack, SLACK_APP_TOKEN=app_token, SLACK_SIGNING_SECRET="")
    slack.set_handler("apps.connections.open", lambda _params: {"ok": True, "url": "wss://x"})
    code, lines = check(settings)
    assert code == EXIT_OK, lines
    assert any(line.startswith("ok    socket mode:") for line in lines)
    slack.revoke_token(app_token)
    code, lines = check(settings)
    assert_one_failure(code, lines, "SLACK_APP_TOKEN", "connections:write")
    assert_no_secrets(lines, app_token)


# -- configuration -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SLACK_SIGNING_SECRET": ""}, "SLACK_SIGNING_SECRET"),
        ({"SLACK_BOT_TOKEN": ""}, "SLACK_BOT_TOKEN"),
        ({"CELERY_BROKER_URL": ""}, "CELERY_BROKER_URL"),
    ],
)
def test_a_configuration_that_cannot_work_fails_first_with_exit_2(
    env: dict[str, Any], named: str
) -> None:
    code, lines = check(make_settings("redis://127.0.0.1:1/0", None, **env))
    assert code == EXIT_CONFIG
    assert lines[0].startswith("FAIL  config: " + named)
    assert [line for line in lines if line.startswith("FAIL  config:")] == [lines[0]]
    assert not any(line.startswith("ok    config:") for line in lines)


def test_every_missing_setting_is_named_in_one_run() -> None:
    code, lines = check(
        make_settings("", None, SLACK_BOT_TOKEN="", SLACK_SIGNING_SECRET="")
    )
    assert code == EXIT_CONFIG
    named = [line.split()[2] for line in with_status(lines, "FAIL")]
    assert named == ["CELERY_BROKER_URL:", "SLACK_BOT_TOKEN:", "SLACK_SIGNING_SECRET:"], lines


def test_config_warns_when_nobody_is_an_operator(
    fleet: tuple[str, CeleryWorkerProcess], slack: MockSlackAPI
) -> None:
    code, lines = check(make_settings(fleet[0], slack, CHATOPS_OPERATORS=""))
    assert code == EXIT_OK
    assert any(line.startswith("warn  operators: CHATOPS_OPERATORS is empty") for line in lines)


def test_cli_bad_setting_is_one_line_and_exit_2(tmp_path: Path) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CHATOPS_", "SLACK_", "CELERY_"))
    }
    env.update(
        CELERY_BROKER_URL="redis://127.0.0.1:1/0",
        SLACK_BOT_TOKEN=BOT_TOKEN,
        CHATOPS_PORT="not-a-port",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
    )
    result = subprocess.run(
        [sys.executable, "-m", "chatbot", "check"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert "CHATOPS_PORT" in line
    assert BOT_TOKEN not in result.stderr


# -- several clusters ----------------------------------------------------------------------------
def test_each_cluster_is_checked_and_named(
    fleet: tuple[str, CeleryWorkerProcess], slack: MockSlackAPI
) -> None:
    url, worker = fleet
    password = "beta-broker-secret"
    dead = f"redis://:{password}@127.0.0.1:{_free_port()}/0"
    settings = make_settings("", slack, CHATOPS_CLUSTERS=f"alpha={url},beta={dead}")
    code, lines = check(settings)
    text = "\n".join(lines)
    assert f"alpha workers: 1 answered a ping: {worker.hostname}" in text
    assert "alpha events: heartbeats of 1 of 1 workers reach the bot" in text
    failure = assert_one_failure(code, lines, "beta broker", "cannot connect")
    assert "alpha" not in failure
    assert not any(line.split()[1:3] == ["beta", "workers:"] for line in lines)
    assert f"clusters alpha {url}, beta redis://:***@127.0.0.1" in text
    assert_no_secrets(lines, password)
