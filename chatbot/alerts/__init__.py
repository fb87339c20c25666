"""Channel alerts: rules over the fleet's picture, one grouped Slack message per problem.

Wiring (the service does this when ``CHATOPS_ALERT_CHANNEL`` is set)::

    sender = SlackSender(web_client)    # base_url = SLACK_API_URL, retry_handlers=[]
    manager = AlertManager(records, sender, renderer, settings)
    scheduler = AlertScheduler(
        manager, store, settings,
        broker=broker_reader,
        health=lambda: consumer.health_into(store.health()),
    )
    scheduler.start(jobs)               # jobs: the process's one PeriodicJobs
    register_alert_commands(registry, manager, authorizer)   # chatbot.commands.alerts
    ...
    scheduler.stop(); sender.stop()

``sender.health()`` and ``scheduler.health()`` (both with ``as_dict()``) are what ``status`` and
``/healthz`` show about alerting. The stuck-task alert carries buttons with ``action_id``
:data:`REVOKE_ACTION_ID` / :data:`TERMINATE_ACTION_ID` and the task id as ``value``;
:func:`command_for_click` turns a click into the ``revoke`` command line to run as the clicker.
"""

from __future__ import annotations

from chatbot.alerts.actions import ALERT_ACTION_IDS, command_for_click
from chatbot.alerts.facts import QueueHistory, collect_facts
from chatbot.alerts.manager import (
    REVOKE_ACTION_ID,
    TERMINATE_ACTION_ID,
    AlertManager,
    AlertsOverview,
    ReconcileResult,
    Silence,
    pattern_matches,
    validate_pattern,
)
from chatbot.alerts.rules import Condition, Evaluation, FleetFacts, evaluate
from chatbot.alerts.scheduler import AlertScheduler, CheckResult, SchedulerHealth
from chatbot.alerts.sender import SenderHealth, SendResult, SlackSender

__all__ = [
    "ALERT_ACTION_IDS",
    "REVOKE_ACTION_ID",
    "TERMINATE_ACTION_ID",
    "AlertManager",
    "AlertScheduler",
    "AlertsOverview",
    "CheckResult",
    "Condition",
    "Evaluation",
    "FleetFacts",
    "QueueHistory",
    "ReconcileResult",
    "SchedulerHealth",
    "SendResult",
    "SenderHealth",
    "Silence",
    "SlackSender",
    "collect_facts",
    "command_for_click",
    "evaluate",
    "pattern_matches",
    "validate_pattern",
]
