"""The settings as a whole: each one was validated when loaded, here their combination.

Every setting that makes the configuration unusable is its own FAIL line (exit status 2), so a
missing broker URL and a missing token are both named in one run.
"""

from __future__ import annotations

from chatbot.check.report import EXIT_CONFIG, Report
from chatbot.cluster_config import parse_cluster_list
from chatbot.config import Settings, redact_url

__all__ = ["check_config"]


def check_config(settings: Settings, report: Report) -> None:
    s = settings
    usable = True
    if not s.broker_url and not s.clusters:
        usable = False
        report.fail(
            "config",
            "CELERY_BROKER_URL: not set; set it to your fleet's broker,"
            " e.g. redis://host:6379/0 or amqp://user:password@host:5672//",
            EXIT_CONFIG,
        )
    if not s.slack_bot_token:
        usable = False
        report.fail(
            "config",
            "SLACK_BOT_TOKEN: not set; copy the Bot User OAuth Token (xoxb-...) from"
            " your Slack app's OAuth & Permissions page",
            EXIT_CONFIG,
        )
    if not s.socket_mode and not s.slack_signing_secret:
        usable = False
        report.fail(
            "config",
            "SLACK_SIGNING_SECRET: required in HTTP mode; copy it from your Slack app's"
            " Basic Information page, or set SLACK_APP_TOKEN (xapp-...) for Socket Mode",
            EXIT_CONFIG,
        )
    if usable:
        if s.socket_mode:
            mode = "Socket Mode (SLACK_APP_TOKEN set)"
        else:
            mode = f"HTTP mode on {s.host}:{s.port}, Slack posts to /slack/events"
        alerts = f"alerts to {s.alert_channel}" if s.alert_channel else "alerts off"
        # One "name url" per cluster, space-separated: the report's URL-password mask stops
        # at whitespace, so each URL is masked on its own.
        listed = parse_cluster_list("CHATOPS_CLUSTERS", s.clusters)
        brokers = (
            "clusters " + ", ".join(f"{name} {redact_url(url)}" for name, url in listed)
            if listed
            else f"broker {redact_url(s.broker_url)}"
        )
        report.ok(
            "config",
            f"{mode}; {brokers}; state {redact_url(s.state_url)}; {alerts}",
        )
    if not s.operators:
        report.warn(
            "operators",
            "CHATOPS_OPERATORS is empty: nobody may run control commands (revoke, pool,"
            " shutdown...); set it to Slack user IDs (U...) or user-group IDs (S...)",
        )
    elif s.approval_required and not s.effective_approvers:
        report.warn(
            "approvers",
            "CHATOPS_APPROVERS is set but empty: nobody can approve"
            f" {', '.join(s.approval_required)}; unset it so the operators approve",
        )
    if not s.alert_channel:
        report.ok(
            "alerts",
            "off; set CHATOPS_ALERT_CHANNEL to a channel ID (C...) for backlog, failure,"
            " stuck-task and worker-offline notices",
        )
    if s.state_url.startswith("memory://") and not s.snapshot_path:
        report.ok(
            "state",
            "in memory: approvals, alerts and the task picture start empty after a restart"
            " (set CHATOPS_STATE_URL=redis://... to keep them, and for several replicas)",
        )
