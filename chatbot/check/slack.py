"""Slack: ``auth.test`` with the bot token through ``SLACK_API_URL``; the scopes the token has
(``x-oauth-scopes``) against the ones the bot needs; the app-level token in Socket Mode; and the
alert and audit channels (``conversations.info``: exists, archived, member).

The scopes and channels are asked with the bot token, so they are skipped when ``auth.test``
failed (its FAIL line already says why); the app-level token is its own check either way.
"""

from __future__ import annotations

from collections.abc import Mapping

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from chatbot.check.report import Report
from chatbot.config import Settings
from chatbot.slackerrors import error_code, header

__all__ = ["ESSENTIAL_SCOPES", "REQUIRED_BOT_SCOPES", "check_slack"]

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

_TOKEN_ERRORS = frozenset(
    {"invalid_auth", "not_authed", "token_revoked", "token_expired", "account_inactive"}
)


def _slack_error(exc: SlackApiError) -> str:
    """Slack's error code, or the first line of what slack_sdk said when there is none."""
    text = str(exc)
    return error_code(exc) or (text.splitlines()[0] if text else type(exc).__name__)


class _SlackCheck:
    def __init__(self, settings: Settings, report: Report, timeout: float) -> None:
        self.settings = settings
        self.report = report
        self.timeout = timeout
        self.bot_name = "celery-chatops"
        self.granted_scopes: set[str] | None = None

    def client(self, token: str) -> WebClient:
        return WebClient(
            token=token, base_url=self.settings.slack_api_url, timeout=int(self.timeout)
        )

    def auth_test(self) -> bool:
        """``auth.test`` with the bot token; False (and a FAIL line) when it did not pass."""
        report = self.report
        api = self.settings.slack_api_url
        try:
            response = self.client(self.settings.slack_bot_token).auth_test()
        except SlackApiError as exc:
            error = _slack_error(exc)
            if error in _TOKEN_ERRORS:
                report.fail(
                    "slack",
                    f"SLACK_BOT_TOKEN rejected by Slack ({error}): copy the Bot User OAuth"
                    " Token (xoxb-...) from your app's OAuth & Permissions page; reinstall the"
                    " app if it was revoked",
                )
            else:
                report.fail("slack", f"auth.test failed ({error}) at {api}")
            return False
        except Exception as exc:  # network: DNS, refused, TLS, timeout
            report.fail(
                "slack",
                f"cannot reach the Slack Web API at {api} ({report.error_text(exc)}): check the"
                " network, an HTTPS proxy, or SLACK_API_URL",
            )
            return False
        data = response.data if isinstance(response.data, Mapping) else {}
        self.bot_name = str(data.get("user") or self.bot_name)
        team = data.get("team") or "?"
        report.ok(
            "slack",
            f"SLACK_BOT_TOKEN valid: bot @{self.bot_name} ({data.get('user_id', '?')})"
            f" in {team} ({data.get('team_id', '?')})",
        )
        self.scopes(header(response.headers, "x-oauth-scopes"))
        return True

    def scopes(self, header: str | None) -> None:
        report = self.report
        if header is None:
            report.warn(
                "slack scopes",
                "Slack did not report the token's scopes (no x-oauth-scopes header);"
                f" make sure the app has {', '.join(REQUIRED_BOT_SCOPES)}",
            )
            return
        granted = {scope.strip() for scope in header.split(",") if scope.strip()}
        self.granted_scopes = granted
        missing = [scope for scope in REQUIRED_BOT_SCOPES if scope not in granted]
        if not missing:
            report.ok("slack scopes", f"all {len(REQUIRED_BOT_SCOPES)} the bot needs are granted")
            return
        holders = (*self.settings.operators, *self.settings.effective_approvers)
        groups_used = any(holder.startswith("S") for holder in holders)
        hard = [
            scope
            for scope in missing
            if scope in ESSENTIAL_SCOPES or (scope == "usergroups:read" and groups_used)
        ]
        uses = "; ".join(f"{scope}: {REQUIRED_BOT_SCOPES[scope]}" for scope in missing)
        detail = (
            f"missing {', '.join(missing)} ({uses}); add them under OAuth & Permissions →"
            " Bot Token Scopes (or create the app from manifest.yml) and reinstall the app"
        )
        if hard:
            report.fail("slack scopes", detail)
        else:
            report.warn("slack scopes", detail)

    def app_token(self) -> None:
        report = self.report
        try:
            app_token = self.settings.slack_app_token
            self.client(app_token).apps_connections_open(app_token=app_token)
        except SlackApiError as exc:
            error = _slack_error(exc)
            report.fail(
                "socket mode",
                f"SLACK_APP_TOKEN rejected ({error}): create an app-level token with the"
                " connections:write scope under Basic Information → App-Level Tokens, and"
                " turn on Socket Mode in the app settings",
            )
            return
        except Exception as exc:
            report.fail("socket mode", f"apps.connections.open failed: {report.error_text(exc)}")
            return
        report.ok("socket mode", "SLACK_APP_TOKEN valid: Socket Mode connections can be opened")

    def channel(self, setting: str, channel: str, use: str) -> None:
        report = self.report
        subject = f"{setting} {channel}"
        invite = f"/invite @{self.bot_name}"
        try:
            response = self.client(self.settings.slack_bot_token).conversations_info(
                channel=channel
            )
        except SlackApiError as exc:
            error = _slack_error(exc)
            if error == "channel_not_found":
                report.fail(
                    subject,
                    "channel not found: check the ID (channel details → About, at the bottom);"
                    f" for a private channel, {invite} in it first",
                )
            elif error == "missing_scope":
                report.warn(
                    subject,
                    "cannot check it: the token lacks channels:read / groups:read (see"
                    " the scopes line)",
                )
            else:
                report.fail(subject, f"conversations.info failed ({error})")
            return
        except Exception as exc:
            report.fail(subject, f"conversations.info failed: {report.error_text(exc)}")
            return
        info = response.data.get("channel") if isinstance(response.data, Mapping) else None
        info = info if isinstance(info, Mapping) else {}
        name = f"#{info.get('name')}" if info.get("name") else channel
        if info.get("is_archived"):
            report.fail(
                subject,
                f"{name} is archived: {use} cannot be posted; unarchive it or set {setting}"
                " to another channel",
            )
            return
        if info.get("is_member"):
            report.ok(subject, f"{name}: the bot is a member and can post {use}")
            return
        private = bool(info.get("is_private"))
        public_posting = (
            not private
            and self.granted_scopes is not None
            and "chat:write.public" in self.granted_scopes
        )
        if public_posting:
            report.warn(
                subject,
                f"the bot is not a member of {name}: {use} still post through"
                f" chat:write.public, but {invite} in {name} so it stays a member if that"
                " scope is removed",
            )
            return
        report.fail(
            subject, f"the bot is not a member of {name} and cannot post {use}: {invite} in it"
        )


def check_slack(settings: Settings, report: Report, *, timeout: float) -> None:
    slack = _SlackCheck(settings, report, timeout)
    bot_token_works = bool(settings.slack_bot_token) and slack.auth_test()
    if settings.socket_mode:
        slack.app_token()
    if not bot_token_works:
        return
    for setting, channel, use in (
        ("CHATOPS_ALERT_CHANNEL", settings.alert_channel, "alerts"),
        ("CHATOPS_AUDIT_CHANNEL", settings.audit_channel, "audit entries"),
    ):
        if channel:
            slack.channel(setting, channel, use)
