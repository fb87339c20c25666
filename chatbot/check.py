"""``celery-chatops check``: is this configuration going to work, and if not, what to fix.

One line per check, ``ok``, ``warn`` or ``FAIL``, each failure naming the fix; the run stops at
the first failure, because what follows usually depends on it (no broker, no workers to ask).
In order:

1. the settings as a whole (each one was validated when loaded; here their combination:
   HTTP mode needs the signing secret, group operators need ``usergroups:read``...);
2. the state store, when it is Redis;
3. the broker: connect with a short timeout; which workers answer a ping; which queues they
   consume and how long each is (and whether anybody consumes it); whether their heartbeats
   reach the bot's event consumer and whether they send task events;
4. Slack: ``auth.test`` with the bot token through ``SLACK_API_URL``; the scopes the token has
   (``x-oauth-scopes``) against the ones the bot needs; the app-level token in Socket Mode;
   and the alert and audit channels (``conversations.info``: exists, archived, member).

Secrets never appear: tokens are not printed, the broker password is masked everywhere,
including in error texts quoted from libraries.

Exit status: 0 when nothing failed (warnings allowed), 2 for a configuration that cannot work
as set (as for any configuration error on the command line), 1 for a broker or Slack failure.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TextIO
from urllib.parse import unquote, urlsplit

from celery import Celery
from kombu import Connection
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from chatbot.broker import BrokerReader, queue_names
from chatbot.config import Settings, redact_url
from chatbot.consumer import EventConsumer
from chatbot.control import FleetControl
from chatbot.store.memory import MemoryStore

__all__ = [
    "ESSENTIAL_SCOPES",
    "EXIT_CONFIG",
    "EXIT_FAILED",
    "EXIT_OK",
    "REQUIRED_BOT_SCOPES",
    "CheckLine",
    "Checker",
    "run_checks",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2

# The bot scopes of manifest.yml and why the bot needs each; tests/test_manifest.py keeps the
# manifest and this table identical.
REQUIRED_BOT_SCOPES: dict[str, str] = {
    "commands": "the /celery slash command",
    "chat:write": "approval requests, alerts and audit entries",
    "chat:write.public": "posting in public channels the bot was not invited to",
    "usergroups:read": "operators and approvers given as user groups (S...)",
    "channels:read": "checking public alert and audit channels",
    "groups:read": "checking private alert and audit channels",
}
# Without these nothing works at all; the others cost one feature each.
ESSENTIAL_SCOPES = ("commands", "chat:write")

BROKER_TIMEOUT = 3.0
PING_TIMEOUT = 1.0
# Long enough for a heartbeat at Celery's default 2 s interval if the wake-up request is lost.
EVENT_WAIT = 3.0
SLACK_TIMEOUT = 5.0
_MAX_DETAIL = 400
_MIN_SCRUBBED_SECRET = 6
_URL_CREDENTIALS = re.compile(r"(\w[\w+.-]*://[^:/@\s]*:)[^@\s]+@")
_NAMES_SHOWN = 5

_TOKEN_ERRORS = frozenset(
    {"invalid_auth", "not_authed", "token_revoked", "token_expired", "account_inactive"}
)

Status = Literal["ok", "warn", "FAIL"]


@dataclass(frozen=True)
class CheckLine:
    status: Status
    subject: str
    detail: str
    exit_code: int = EXIT_FAILED  # only read for FAIL

    def render(self) -> str:
        detail = " ".join(self.detail.split())
        if len(detail) > _MAX_DETAIL:
            detail = detail[: _MAX_DETAIL - 1] + "…"
        return f"{self.status:<4}  {self.subject}: {detail}"


class _Stop(Exception):
    """A hard failure was printed: the remaining checks depend on what failed."""

    def __init__(self, exit_code: int) -> None:
        super().__init__(exit_code)
        self.exit_code = exit_code


def _names(items: Iterable[str], shown: int = _NAMES_SHOWN) -> str:
    listed = list(items)
    text = ", ".join(listed[:shown])
    return text + (f" and {len(listed) - shown} more" if len(listed) > shown else "")


def _header(headers: Any, name: str) -> str | None:
    if not isinstance(headers, Mapping):
        return None
    for key, value in headers.items():
        if str(key).lower() == name:
            return str(value[0] if isinstance(value, list) and value else value)
    return None


def _slack_error(exc: SlackApiError) -> str:
    response = exc.response
    data = response.data if response is not None else None
    if isinstance(data, Mapping) and data.get("error"):
        return str(data["error"])
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


class Checker:
    """The checks of one configuration; :meth:`run` prints them and returns the exit status."""

    def __init__(
        self,
        settings: Settings,
        out: TextIO,
        *,
        broker_timeout: float = BROKER_TIMEOUT,
        ping_timeout: float = PING_TIMEOUT,
        event_wait: float = EVENT_WAIT,
        slack_timeout: float = SLACK_TIMEOUT,
    ) -> None:
        self.settings = settings
        self.out = out
        self.broker_timeout = broker_timeout
        self.ping_timeout = ping_timeout
        self.event_wait = event_wait
        self.slack_timeout = slack_timeout
        parts = urlsplit(settings.broker_url)
        self._broker_password = unquote(parts.password) if parts.password else ""
        self._state_password = unquote(urlsplit(settings.state_url).password or "")
        self._workers: list[str] = []
        self._granted_scopes: set[str] | None = None
        self._bot_name = "celery-chatops"
        self.lines: list[CheckLine] = []

    # -- output --------------------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        text = _URL_CREDENTIALS.sub(r"\1***@", text)
        for secret in (
            self._broker_password,
            self._state_password,
            self.settings.slack_bot_token,
            self.settings.slack_app_token,
            self.settings.slack_signing_secret,
        ):
            # A very short "secret" would mask ordinary letters all over the line; URLs
            # are handled by the pattern above whatever their password's length.
            if len(secret) >= _MIN_SCRUBBED_SECRET:
                text = text.replace(secret, "***")
        return text

    def _emit(self, line: CheckLine) -> None:
        line = CheckLine(line.status, line.subject, self._scrub(line.detail), line.exit_code)
        self.lines.append(line)
        self.out.write(line.render() + "\n")
        self.out.flush()

    def ok(self, subject: str, detail: str) -> None:
        self._emit(CheckLine("ok", subject, detail))

    def warn(self, subject: str, detail: str) -> None:
        self._emit(CheckLine("warn", subject, detail))

    def fail(self, subject: str, detail: str, exit_code: int = EXIT_FAILED) -> _Stop:
        """Print the failure; the caller raises what this returns."""
        self._emit(CheckLine("FAIL", subject, detail, exit_code))
        return _Stop(exit_code)

    def _error_text(self, exc: BaseException) -> str:
        text = str(exc).strip()
        first = text.splitlines()[0] if text else ""
        return self._scrub(f"{type(exc).__name__}: {first}" if first else type(exc).__name__)

    # -- the run -------------------------------------------------------------------------
    def run(self) -> int:
        steps: Sequence[Callable[[], None]] = (
            self.check_config,
            self.check_state_store,
            self.check_broker,
            self.check_slack,
        )
        try:
            for step in steps:
                step()
        except _Stop as stop:
            return stop.exit_code
        return EXIT_OK

    # -- 1. configuration ----------------------------------------------------------------
    def check_config(self) -> None:
        s = self.settings
        if not s.broker_url:
            raise self.fail(
                "config",
                "CELERY_BROKER_URL: not set; set it to your fleet's broker,"
                " e.g. redis://host:6379/0 or amqp://user:password@host:5672//",
                EXIT_CONFIG,
            )
        if not s.slack_bot_token:
            raise self.fail(
                "config",
                "SLACK_BOT_TOKEN: not set; copy the Bot User OAuth Token (xoxb-...) from"
                " your Slack app's OAuth & Permissions page",
                EXIT_CONFIG,
            )
        if not s.socket_mode and not s.slack_signing_secret:
            raise self.fail(
                "config",
                "SLACK_SIGNING_SECRET: required in HTTP mode; copy it from your Slack app's"
                " Basic Information page, or set SLACK_APP_TOKEN (xapp-...) for Socket Mode",
                EXIT_CONFIG,
            )
        if s.socket_mode:
            mode = "Socket Mode (SLACK_APP_TOKEN set)"
        else:
            mode = f"HTTP mode on {s.host}:{s.port}, Slack posts to /slack/events"
        alerts = f"alerts to {s.alert_channel}" if s.alert_channel else "alerts off"
        self.ok(
            "config",
            f"{mode}; broker {redact_url(s.broker_url)}; state {redact_url(s.state_url)};"
            f" {alerts}",
        )
        if not s.operators:
            self.warn(
                "operators",
                "CHATOPS_OPERATORS is empty: nobody may run control commands (revoke, pool,"
                " shutdown...); set it to Slack user IDs (U...) or user-group IDs (S...)",
            )
        elif s.approval_required and not s.effective_approvers:
            self.warn(
                "approvers",
                "CHATOPS_APPROVERS is set but empty: nobody can approve"
                f" {', '.join(s.approval_required)}; unset it so the operators approve",
            )
        if not s.alert_channel:
            self.ok(
                "alerts",
                "off; set CHATOPS_ALERT_CHANNEL to a channel ID (C...) for backlog, failure,"
                " stuck-task and worker-offline notices",
            )
        if s.state_url.startswith("memory://") and not s.snapshot_path:
            self.ok(
                "state",
                "in memory: approvals, alerts and the task picture start empty after a restart"
                " (set CHATOPS_STATE_URL=redis://... to keep them, and for several replicas)",
            )

    # -- 2. state store ------------------------------------------------------------------
    def check_state_store(self) -> None:
        url = self.settings.state_url
        if not url.startswith(("redis://", "rediss://")):
            return
        import redis

        shown = redact_url(url)
        client = redis.Redis.from_url(
            url, socket_timeout=self.broker_timeout, socket_connect_timeout=self.broker_timeout
        )
        try:
            client.ping()
        except Exception as exc:  # whatever the client raises, the store is unusable
            raise self.fail(
                "state",
                f"cannot reach CHATOPS_STATE_URL {shown}: {self._error_text(exc)}; check the"
                " URL, its password and that the Redis server is running",
            ) from None
        finally:
            client.close()
        self.ok("state", f"{shown} reachable")

    # -- 3. broker, workers, queues, events ----------------------------------------------
    def _app(self) -> Celery:
        app = Celery("celery-chatops-check", broker=self.settings.broker_url, set_as_current=False)
        app.conf.broker_connection_timeout = self.broker_timeout
        app.conf.broker_connection_retry_on_startup = False
        return app

    def check_broker(self) -> None:
        url = self.settings.broker_url
        reader = BrokerReader(url, timeout=self.broker_timeout)
        where = reader.broker_name
        app = self._app()
        try:
            started = time.monotonic()
            try:
                with Connection(
                    url,
                    connect_timeout=self.broker_timeout,
                    transport_options={"max_retries": 0, "socket_timeout": self.broker_timeout},
                ) as connection:
                    connection.ensure_connection(max_retries=0, timeout=self.broker_timeout)
            except Exception as exc:  # refused, DNS, login, TLS: one line either way
                raise self.fail(
                    "broker",
                    f"cannot connect to {where} within {self.broker_timeout:g}s"
                    f" ({self._error_text(exc)}); check CELERY_BROKER_URL (host, port,"
                    " password, vhost or db) and that the broker is running",
                ) from None
            elapsed_ms = (time.monotonic() - started) * 1000
            self.ok("broker", f"{where} reachable ({elapsed_ms:.0f} ms)")
            control = FleetControl(app, timeout=self.ping_timeout)
            self._check_workers(control)
            self._check_queues(app, reader)
            if self._workers:
                self._check_events(app, control)
        finally:
            reader.close()
            app.close()

    def _check_workers(self, control: FleetControl) -> None:
        result = control.inspect("ping")
        if result.error:
            raise self.fail(
                "workers", f"could not broadcast a ping through the broker: {result.error}"
            )
        self._workers = sorted(reply.worker for reply in result.ok)
        if not self._workers:
            self.warn(
                "workers",
                f"none answered a ping within {self.ping_timeout:g}s: start a worker on this"
                " broker (the same URL, vhost or Redis db as CELERY_BROKER_URL)",
            )
            return
        self.ok("workers", f"{len(self._workers)} answered a ping: {_names(self._workers)}")

    def _check_queues(self, app: Celery, reader: BrokerReader) -> None:
        consumed: dict[str, list[str]] = {}
        for worker, queues in self._ask_workers(app, "active_queues").items():
            for queue in queues if isinstance(queues, list) else ():
                name = queue.get("name") if isinstance(queue, Mapping) else None
                if name:
                    consumed.setdefault(str(name), []).append(worker)
        names = queue_names((), [*self.settings.queues, *sorted(consumed)])
        lengths = reader.queue_lengths(names)
        failed = [q for q in lengths if q.error]
        if failed and len(failed) == len(lengths):
            self.warn("queues", f"could not read queue lengths: {failed[0].error}")
            return
        shown: list[str] = []
        orphaned: list[str] = []
        for queue in lengths:
            if queue.exists is False:
                shown.append(f"{queue.name} (does not exist)")
            elif queue.messages is None:
                shown.append(f"{queue.name} (unknown: {queue.error})")
            else:
                shown.append(f"{queue.name} {queue.messages}")
                if self._workers and queue.messages and queue.name not in consumed:
                    orphaned.append(f"{queue.name} ({queue.messages})")
        self.ok("queues", "; ".join(shown))
        if orphaned:
            self.warn(
                "queues",
                f"no worker consumes {_names(orphaned)}: its messages wait forever; start a"
                " worker with -Q for it, or `/celery consumer add QUEUE WORKER`",
            )

    def _check_events(self, app: Celery, control: FleetControl) -> None:
        settings = self.settings
        store = MemoryStore(max_tasks=1000, max_workers=max(100, len(self._workers) * 2))
        # enable_events is left to the explicit reply-bearing broadcast below: a check that
        # changes the fleet only does what the running bot would do anyway.
        consumer = EventConsumer(
            settings.broker_url,
            store,
            app=app,
            enable_events=lambda: None,
            heartbeat=control.heartbeat,
            enable_events_interval=0,
            connect_timeout=self.broker_timeout,
        )
        consumer.start()
        try:
            if not consumer.wait_connected(self.broker_timeout):
                health = consumer.health_into(store.health())
                reason = health.last_error or "no connection"
                raise self.fail(
                    "events",
                    f"the event consumer could not subscribe to the broker's event stream"
                    f" ({reason})",
                )
            heard = self._wait_for_heartbeats(store)
        finally:
            consumer.stop(timeout=2.0)
        silent = [name for name in self._workers if name not in heard]
        if len(silent) == len(self._workers):
            self.warn(
                "events",
                f"workers answer pings but no event reached the bot in {self.event_wait:g}s:"
                " they may run with --without-heartbeat, or publish events elsewhere"
                " (another event_exchange or Redis db than CELERY_BROKER_URL)",
            )
            return
        task_events = self._task_events_state(app, settings)
        off = sorted(name for name, on in task_events.items() if on is False)
        heartbeats = f"heartbeats of {len(heard)} of {len(self._workers)} workers reach the bot"
        if silent:
            heartbeats += f" (none yet from {_names(silent)})"
        if not off:
            state = "task events on" if task_events else "task events not checked"
            self.ok("events", f"{heartbeats}; {state}")
            return
        if settings.enable_events_interval > 0:
            fix = (
                f"turned on now, and the bot re-sends enable_events every"
                f" {settings.enable_events_interval:g}s, but a restarted worker sends none until"
                " then: start workers with -E (or worker_send_task_events = True)"
            )
        else:
            fix = (
                "start workers with -E (or worker_send_task_events = True);"
                " CHATOPS_ENABLE_EVENTS_INTERVAL=0 stops the bot from turning them on"
            )
        self.warn("events", f"{heartbeats}; {_names(off)} had task events off (no -E): {fix}")

    def _wait_for_heartbeats(self, store: MemoryStore) -> set[str]:
        wanted = set(self._workers)
        deadline = time.monotonic() + self.event_wait
        heard: set[str] = set()
        while True:
            heard = {w.hostname for w in store.workers() if w.last_heartbeat is not None}
            if wanted <= heard or time.monotonic() >= deadline:
                return heard & wanted
            time.sleep(0.05)

    def _ask_workers(self, app: Celery, command: str) -> dict[str, Any]:
        """``{worker: reply}`` of a broadcast to the workers that answered the ping.

        Addressed to them by name with a reply limit, so it returns as soon as all have
        answered instead of waiting out the timeout. A failure leaves the answer empty: the
        ping just worked, so what is lost is only this detail.
        """
        if not self._workers:
            return {}
        try:
            replies = app.control.broadcast(
                command,
                reply=True,
                timeout=self.ping_timeout,
                destination=self._workers,
                limit=len(self._workers),
            )
        except Exception:
            return {}
        answers: dict[str, Any] = {}
        for entry in replies or ():
            if isinstance(entry, Mapping):
                answers.update({str(worker): reply for worker, reply in entry.items()})
        return answers

    def _task_events_state(self, app: Celery, settings: Settings) -> dict[str, bool | None]:
        """Per worker: were task events on? None when it cannot be known without a change.

        A worker answers ``enable_events`` with "task events already enabled" or "task events
        enabled" (it just turned them on): the only way to ask. When the bot is configured
        never to send it, neither does the check.
        """
        if settings.enable_events_interval <= 0:
            return {}
        state: dict[str, bool | None] = {}
        for worker, answer in self._ask_workers(app, "enable_events").items():
            text = str(answer.get("ok", "")) if isinstance(answer, Mapping) else ""
            state[worker] = "already" in text if text else None
        return state

    # -- 4. Slack ------------------------------------------------------------------------
    def _client(self, token: str) -> WebClient:
        return WebClient(
            token=token, base_url=self.settings.slack_api_url, timeout=int(self.slack_timeout)
        )

    def check_slack(self) -> None:
        settings = self.settings
        api = settings.slack_api_url
        try:
            response = self._client(settings.slack_bot_token).auth_test()
        except SlackApiError as exc:
            error = _slack_error(exc)
            if error in _TOKEN_ERRORS:
                raise self.fail(
                    "slack",
                    f"SLACK_BOT_TOKEN rejected by Slack ({error}): copy the Bot User OAuth"
                    " Token (xoxb-...) from your app's OAuth & Permissions page; reinstall the"
                    " app if it was revoked",
                ) from None
            raise self.fail("slack", f"auth.test failed ({error}) at {api}") from None
        except Exception as exc:  # network: DNS, refused, TLS, timeout
            raise self.fail(
                "slack",
                f"cannot reach the Slack Web API at {api} ({self._error_text(exc)}): check the"
                " network, an HTTPS proxy, or SLACK_API_URL",
            ) from None
        data = response.data if isinstance(response.data, Mapping) else {}
        self._bot_name = str(data.get("user") or self._bot_name)
        team = data.get("team") or "?"
        self.ok(
            "slack",
            f"SLACK_BOT_TOKEN valid: bot @{self._bot_name} ({data.get('user_id', '?')})"
            f" in {team} ({data.get('team_id', '?')})",
        )
        self._check_scopes(_header(response.headers, "x-oauth-scopes"))
        if settings.socket_mode:
            self._check_app_token()
        for setting, channel, use in (
            ("CHATOPS_ALERT_CHANNEL", settings.alert_channel, "alerts"),
            ("CHATOPS_AUDIT_CHANNEL", settings.audit_channel, "audit entries"),
        ):
            if channel:
                self._check_channel(setting, channel, use)

    def _check_scopes(self, header: str | None) -> None:
        if header is None:
            self.warn(
                "slack scopes",
                "Slack did not report the token's scopes (no x-oauth-scopes header);"
                f" make sure the app has {', '.join(REQUIRED_BOT_SCOPES)}",
            )
            return
        granted = {scope.strip() for scope in header.split(",") if scope.strip()}
        self._granted_scopes = granted
        missing = [scope for scope in REQUIRED_BOT_SCOPES if scope not in granted]
        if not missing:
            self.ok("slack scopes", f"all {len(REQUIRED_BOT_SCOPES)} the bot needs are granted")
            return
        groups_used = any(i.startswith("S") for i in self._group_holders())
        hard = [s for s in missing if s in ESSENTIAL_SCOPES or (s == "usergroups:read"
                                                                 and groups_used)]  # fmt: skip
        uses = "; ".join(f"{scope}: {REQUIRED_BOT_SCOPES[scope]}" for scope in missing)
        detail = (
            f"missing {', '.join(missing)} ({uses}); add them under OAuth & Permissions →"
            " Bot Token Scopes (or create the app from manifest.yml) and reinstall the app"
        )
        if hard:
            raise self.fail("slack scopes", detail)
        self.warn("slack scopes", detail)

    def _group_holders(self) -> tuple[str, ...]:
        return (*self.settings.operators, *self.settings.effective_approvers)

    def _check_app_token(self) -> None:
        try:
            app_token = self.settings.slack_app_token
            self._client(app_token).apps_connections_open(app_token=app_token)
        except SlackApiError as exc:
            error = _slack_error(exc)
            raise self.fail(
                "socket mode",
                f"SLACK_APP_TOKEN rejected ({error}): create an app-level token with the"
                " connections:write scope under Basic Information → App-Level Tokens, and"
                " turn on Socket Mode in the app settings",
            ) from None
        except Exception as exc:
            raise self.fail(
                "socket mode", f"apps.connections.open failed: {self._error_text(exc)}"
            ) from None
        self.ok("socket mode", "SLACK_APP_TOKEN valid: Socket Mode connections can be opened")

    def _check_channel(self, setting: str, channel: str, use: str) -> None:
        subject = f"{setting} {channel}"
        invite = f"/invite @{self._bot_name}"
        try:
            response = self._client(self.settings.slack_bot_token).conversations_info(
                channel=channel
            )
        except SlackApiError as exc:
            error = _slack_error(exc)
            if error == "channel_not_found":
                raise self.fail(
                    subject,
                    "channel not found: check the ID (channel details → About, at the bottom);"
                    f" for a private channel, {invite} in it first",
                ) from None
            if error == "missing_scope":
                self.warn(
                    subject,
                    "cannot check it: the token lacks channels:read / groups:read (see"
                    " the scopes line)",
                )
                return
            raise self.fail(subject, f"conversations.info failed ({error})") from None
        except Exception as exc:
            raise self.fail(
                subject, f"conversations.info failed: {self._error_text(exc)}"
            ) from None
        info = response.data.get("channel") if isinstance(response.data, Mapping) else None
        info = info if isinstance(info, Mapping) else {}
        name = f"#{info.get('name')}" if info.get("name") else channel
        if info.get("is_archived"):
            raise self.fail(
                subject,
                f"{name} is archived: {use} cannot be posted; unarchive it or set {setting}"
                " to another channel",
            )
        if info.get("is_member"):
            self.ok(subject, f"{name}: the bot is a member and can post {use}")
            return
        private = bool(info.get("is_private"))
        public_posting = (
            not private
            and self._granted_scopes is not None
            and "chat:write.public" in self._granted_scopes
        )
        if public_posting:
            self.warn(
                subject,
                f"the bot is not a member of {name}: {use} still post through"
                f" chat:write.public, but {invite} in {name} so it stays a member if that"
                " scope is removed",
            )
            return
        raise self.fail(
            subject, f"the bot is not a member of {name} and cannot post {use}: {invite} in it"
        )


def run_checks(settings: Settings, out: TextIO) -> int:
    """``celery-chatops check``: print one line per check, return the exit status."""
    return Checker(settings, out).run()

