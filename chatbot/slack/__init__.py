"""The Slack face: the Bolt app, its HTTP listener, Socket Mode, the App Home tab.

Wiring (``celery-chatops run``)::

    client = web_client_from_settings(settings)
    executor = make_executor()
    metrics = SlackMetrics()
    app = build_app(service, client=client, signing_secret=settings.slack_signing_secret or None,
                    executor=executor, actions=approval_actions.actions(), metrics=metrics)
    server = make_server(app, service, settings, metrics=metrics).start()
    ...
    server.stop(); executor.shutdown()
"""

from __future__ import annotations

from typing import Protocol

from slack_bolt import App

from chatbot.config import Settings
from chatbot.slack.app import (
    ActionClick,
    ActionHandler,
    ActionReply,
    build_app,
    make_executor,
    run_after_response,
)
from chatbot.slack.client import (
    make_web_client,
    make_webhook_client,
    retry_handlers,
    web_client_from_settings,
)
from chatbot.slack.gate import RequestGate
from chatbot.slack.home import home_view, publish_home
from chatbot.slack.http import HttpServer, MountedApp, SlackWsgiApp
from chatbot.slack.interfaces import CommandRunner, SlackServices
from chatbot.slack.metrics import SlackMetrics
from chatbot.slack.socket_mode import SocketModeRunner
from chatbot.store import RecordStore


class SlackServer(Protocol):
    """What :func:`make_server` returns in either mode."""

    @property
    def port(self) -> int: ...

    def start(self) -> SlackServer: ...

    def stop(self) -> None: ...


def make_server(
    app: App,
    services: SlackServices,
    settings: Settings,
    *,
    metrics: SlackMetrics | None = None,
    api: MountedApp | None = None,
    records: RecordStore | None = None,
) -> SlackServer:
    """Socket Mode when ``SLACK_APP_TOKEN`` is set, else HTTP; both on CHATOPS_HOST/PORT,
    with the REST API (``api``) mounted on the same listener.

    In HTTP mode every request to Slack's endpoint passes a :class:`RequestGate` first;
    ``records`` is where it remembers signed requests, so a replay is answered once (across
    replicas on Redis).
    """
    if settings.slack_app_token:
        return SocketModeRunner(
            app,
            services,
            settings.slack_app_token,
            settings.host,
            settings.port,
            metrics=metrics,
            api=api,
        )
    gate = RequestGate(settings.slack_signing_secret, records)
    return HttpServer(
        app, services, settings.host, settings.port, metrics=metrics, api=api, gate=gate
    )


__all__ = [
    "ActionClick",
    "ActionHandler",
    "ActionReply",
    "CommandRunner",
    "HttpServer",
    "RequestGate",
    "SlackMetrics",
    "SlackServer",
    "SlackServices",
    "SlackWsgiApp",
    "SocketModeRunner",
    "build_app",
    "home_view",
    "make_executor",
    "make_server",
    "make_web_client",
    "make_webhook_client",
    "publish_home",
    "retry_handlers",
    "run_after_response",
    "web_client_from_settings",
]
