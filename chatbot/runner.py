"""Running the bot: the startup banner, the console face, and (in HTTP or Socket Mode) Slack."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any, TextIO

from slack_bolt.error import BoltError
from slack_sdk.errors import SlackApiError

from chatbot.api import ApiServices, ApiWsgiApp, build_api, build_cluster_api
from chatbot.cluster import ClusterParts
from chatbot.config import Settings, redact_url
from chatbot.console import BANNER, Console
from chatbot.periodic import EVERY
from chatbot.render import Message
from chatbot.service import Service
from chatbot.slack import SlackMetrics, build_app, make_executor, make_server
from chatbot.slack.approval_actions import DEFAULT_EXPIRY_SWEEP, AlertButtons, ApprovalActions
from chatbot.slack.client import web_client_from_settings
from chatbot.slack.task_actions import TaskButtons
from chatbot.slackerrors import error_code

logger = logging.getLogger("chatbot")

CONSOLE_USER = "console"
CONNECT_WAIT_SECONDS = 5.0
APPROVAL_EXPIRY_JOB = "approval-expiry"


def log_banner(settings: Settings, mode: str) -> None:
    """One line that says what this process is about to do, without secrets."""
    logger.info(
        "celery-chatops starting",
        extra={
            "mode": mode,
            "broker": redact_url(settings.broker_url),
            **({"clusters": settings.describe()["CHATOPS_CLUSTERS"]} if settings.clusters else {}),
            "state": redact_url(settings.state_url),
            "alert_channel": settings.alert_channel or "(alerts off)",
            "audit_channel": settings.audit_channel or "(none)",
            "operators": len(settings.operators),
            "max_tasks": settings.max_tasks,
        },
    )


def console_runner(
    service: Service,
    user_id: str = CONSOLE_USER,
    confirm: Callable[[str], bool] | None = None,
) -> Callable[[str], Message]:
    """Commands typed in a terminal; ``confirm`` is the terminal's yes/no prompt (approvals)."""

    def run_command(text: str) -> Message:
        return service.dispatcher.run(text, service.context(user_id=user_id, confirm=confirm))

    return run_command


def _not_wired(_text: str) -> Message:
    raise RuntimeError("the console's commands are wired right after it is built")


def make_console(
    service: Service, stdin: TextIO, stdout: TextIO, banner: str | None = BANNER
) -> Console:
    """A console whose commands can ask its own yes/no prompt (e.g. to approve a revoke)."""
    console = Console(_not_wired, stdin, stdout, banner=banner)
    # The runner needs the console's prompt and the console needs the runner: tie the knot.
    user = service.settings.console_user or CONSOLE_USER
    console.run_command = console_runner(service, user_id=user, confirm=console.confirm)
    return console


def run_console(settings: Settings, stdin: TextIO, stdout: TextIO) -> int:
    """``celery-chatops console``: the /celery commands in a terminal against a live fleet."""
    log_banner(settings, "console")
    # The terminal is the console's screen: routine JSON log lines (INFO, the audit's) would
    # land between the answers. Warnings still show; CHATOPS_LOG_LEVEL=DEBUG shows all.
    quieted: list[tuple[logging.Handler, int]] = []
    if settings.log_level != "DEBUG":
        for handler in logging.getLogger().handlers:
            quieted.append((handler, handler.level))
            handler.setLevel(max(handler.level, logging.WARNING))
    service = Service(settings)
    service.start()
    try:
        for name, parts in service.clusters.items():
            consumer = parts.consumer
            if consumer is not None and not consumer.wait_connected(CONNECT_WAIT_SECONDS):
                where = f"cluster {name}: " if len(service.clusters) > 1 else ""
                stdout.write(
                    f"Not connected to the broker yet; answers may be empty until events arrive"
                    f" ({where}{redact_url(parts.settings.broker_url)}).\n"
                )
        return make_console(service, stdin, stdout).run()
    finally:
        service.stop()
        for handler, level in quieted:
            handler.setLevel(level)


def run(settings: Settings, stop: threading.Event | None = None) -> int:
    """``celery-chatops run``: consume events and serve Slack (HTTP, or Socket Mode)."""
    mode = "socket-mode" if settings.socket_mode else "http"
    log_banner(settings, mode)
    client = web_client_from_settings(settings)
    service = Service(settings, web_client=client)
    executor = make_executor()
    approval_actions = ApprovalActions(service.approvals, client)
    alert_buttons = AlertButtons(approval_actions, service.run_as)
    task_buttons = TaskButtons(
        approval_actions,
        service.run_as,
        service.store.get_task,
        service.renderer,
        get_task_in=service.get_task_in,
    )
    metrics = SlackMetrics()
    try:
        app = build_app(
            service,
            client=client,
            signing_secret=None if settings.socket_mode else settings.slack_signing_secret,
            executor=executor,
            actions=[
                *approval_actions.actions(),
                *alert_buttons.actions(),
                *task_buttons.actions(),
            ],
            metrics=metrics,
        )
    except (SlackApiError, BoltError) as exc:
        # Bolt calls auth.test at start: a wrong or revoked token stops here, in one line.
        reason = error_code(exc) or str(exc)
        logger.error("Slack refused the bot token (SLACK_BOT_TOKEN): %s", reason)
        executor.shutdown(wait=False)
        return 1
    api = rest_api(service, approval_actions.post_card)
    server = make_server(
        app, service, settings, metrics=metrics, api=api, records=service.records
    )
    # On the service's one scheduler (the table of periodic jobs is in chatbot/service.py):
    # every replica takes expired cards' buttons away; each request is expired by one only.
    service.jobs.add(
        APPROVAL_EXPIRY_JOB,
        approval_actions.sweep_expired,
        every=DEFAULT_EXPIRY_SWEEP,
        replicas=EVERY,
    )
    service.start()
    try:
        server.start()
        logger.info("serving", extra={"mode": mode, "port": server.port})
        if stop is None:
            wait_for_shutdown_signal()
        else:
            stop.wait()
    finally:
        server.stop()
        service.stop()
        executor.shutdown(wait=False)
    return 0


def rest_api(
    service: Service, post_card: Callable[[str, Message], str | None] | None
) -> ApiWsgiApp:
    """Flower's REST API over the service's store, control and approvals (403 until
    ``CHATOPS_API_TOKENS`` is set); ``post_card`` posts an approval card as the app. With
    several clusters each has its own (``?cluster=NAME``) over its own parts only."""

    def services_of(parts: ClusterParts) -> ApiServices:
        app = parts.app

        def publish(
            name: str, args: list[Any], kwargs: dict[str, Any], options: dict[str, Any]
        ) -> str:
            return str(app.send_task(name, args=args, kwargs=kwargs, **options).id)

        return ApiServices(
            parts.store,
            parts.settings,
            inspector=parts.control,
            queue_lengths=parts.queue_lengths,
            clock=service.clock,
            approvals=parts.approvals,
            post_card=post_card,
            publish=publish,
            audit=service.audit,
        )

    tokens = service.settings.api_tokens
    if len(service.clusters) == 1:
        return build_api(services_of(service.first), tokens)
    return build_cluster_api(
        {name: services_of(parts) for name, parts in service.clusters.items()}, tokens
    )


def wait_for_shutdown_signal() -> None:
    """Block until SIGTERM or SIGINT (Ctrl-C)."""
    stop = threading.Event()

    def handle(signum: int, _frame: object) -> None:
        logger.info("stopping", extra={"signal": signal.Signals(signum).name})
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        stop.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
