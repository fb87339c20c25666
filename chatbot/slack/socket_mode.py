"""Socket Mode (``SLACK_APP_TOKEN`` set): the same Bolt app over Slack's WebSocket.

No inbound Slack traffic reaches our port in this mode, but ``/healthz`` and ``/metrics``
are still served on ``CHATOPS_PORT``. Health also covers the WebSocket: a client that has
been disconnected for longer than a grace period makes ``/healthz`` answer 503, because
the builtin client has been seen to stay silent after reconnects (bolt-python #1529) and a
restart is the only cure an orchestrator can apply.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from slack_bolt import App, BoltRequest, BoltResponse
from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_sdk.socket_mode.builtin import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse

from chatbot.slack.app import run_after_response
from chatbot.slack.gate import payload_problem
from chatbot.slack.http import HttpServer, MountedApp
from chatbot.slack.interfaces import SlackServices
from chatbot.slack.metrics import SlackMetrics

log = logging.getLogger(__name__)

DEFAULT_DISCONNECTED_GRACE = 60.0
# Envelopes handled at once; each handler only acks (slow work goes to the app's executor).
DEFAULT_CONCURRENCY = 10


class AckReportingSocketModeHandler(SocketModeHandler):
    """Bolt's builtin Socket Mode handler, plus a report once each ack has been sent.

    A slow answer waits for that report before it posts to the response_url, so it cannot
    overtake (and then be overwritten by) its own placeholder.
    """

    def handle(self, client: SocketModeClient, req: SocketModeRequest) -> None:  # type: ignore[override]
        headers: dict[str, str | Sequence[str]] = {}
        # Mirrors HTTP mode, where Slack marks Events API retries with these headers.
        if req.retry_attempt is not None:
            headers["x-slack-retry-num"] = str(req.retry_attempt)
        if req.retry_reason is not None:
            headers["x-slack-retry-reason"] = req.retry_reason
        # The same shape check as the HTTP gate (chatbot/slack/gate.py): a payload Bolt's
        # listeners would index blindly is acknowledged (Slack must not redeliver it) and
        # dropped with one log line, not a traceback.
        problem = payload_problem(req.payload)
        if problem is not None:
            log.warning("Socket Mode request refused: %s", problem)
            client.send_socket_mode_response(SocketModeResponse(envelope_id=req.envelope_id))
            return
        request = BoltRequest(mode="socket_mode", body=req.payload, headers=headers or None)
        response: BoltResponse = self.app.dispatch(request)
        if response.status != 200:
            # As in Bolt's own handler: no ack, so Slack shows an error or redelivers.
            log.info("Socket Mode request not handled (status %s)", response.status)
            return
        client.send_socket_mode_response(_ack(req.envelope_id, response))
        run_after_response(request.context)


def _ack(envelope_id: str, response: BoltResponse) -> SocketModeResponse:
    body = response.body or ""
    if not body:
        return SocketModeResponse(envelope_id=envelope_id)
    content_type = (response.headers.get("content-type") or [""])[0]
    if content_type.startswith("application/json"):
        return SocketModeResponse(envelope_id=envelope_id, payload=json.loads(body))
    return SocketModeResponse(envelope_id=envelope_id, payload={"text": body})


class SocketModeRunner:
    """The Socket Mode connection plus the health/metrics listener.

    ``start()`` opens the WebSocket (``apps.connections.open`` through ``app.client``, so on
    ``SLACK_API_URL``) and the HTTP listener; it raises if Slack refuses the app token.
    """

    def __init__(
        self,
        app: App,
        services: SlackServices,
        app_token: str,
        host: str = "0.0.0.0",
        port: int = 3000,
        *,
        metrics: SlackMetrics | None = None,
        disconnected_grace: float = DEFAULT_DISCONNECTED_GRACE,
        concurrency: int = DEFAULT_CONCURRENCY,
        clock: Callable[[], float] = time.monotonic,
        api: MountedApp | None = None,
    ) -> None:
        if not app_token.startswith("xapp-"):
            raise ValueError("SLACK_APP_TOKEN must be an app-level token (xapp-...)")
        self.app = app
        self.services = services
        self.handler = AckReportingSocketModeHandler(app, app_token, concurrency=concurrency)
        self.http = HttpServer(
            None, services, host, port, metrics=metrics, health=self.health, api=api
        )
        self.disconnected_grace = disconnected_grace
        self._clock = clock
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._started = False

    @property
    def port(self) -> int:
        return self.http.port

    @property
    def connected(self) -> bool:
        return self._started and self.handler.client.is_connected()

    def start(self) -> SocketModeRunner:
        self.http.start()
        try:
            self.handler.connect()
        except Exception:
            self.http.stop()
            raise
        self._started = True
        log.info("Socket Mode connected")
        return self

    def stop(self) -> None:
        if self._started:
            self._started = False
            try:
                self.handler.close()
            except Exception:
                log.exception("closing the Socket Mode connection failed")
        self.http.stop()

    def __enter__(self) -> SocketModeRunner:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def health(self) -> dict[str, Any]:
        """The service's health, with the WebSocket's state added (and judged)."""
        report = dict(self.services.health())
        connected = self.connected
        now = self._clock()
        with self._lock:
            if connected:
                self._down_since = None
                down_for = 0.0
            else:
                if self._down_since is None:
                    self._down_since = now
                down_for = now - self._down_since
        report["socket_mode"] = {"connected": connected, "disconnected_for": round(down_for, 1)}
        if not connected and down_for >= self.disconnected_grace and report.get("ok"):
            report["ok"] = False
            report["reason"] = f"Socket Mode disconnected for {down_for:.0f}s"
        return report
