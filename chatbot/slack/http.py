"""The HTTP listener: Slack's events, ``/healthz`` and ``/metrics`` on one port, under waitress.

:class:`SlackWsgiApp` is a plain WSGI application (usable under any WSGI server);
:class:`HttpServer` runs it on waitress, a production server, in a background thread.

* ``POST /slack/events``: slash commands, button clicks and events, handed to Bolt, whose
  ``RequestVerification`` checks the signature and the 5-minute replay window (401 if not).
* ``GET /healthz``: ``services.health()`` as JSON, 200 when ``ok`` else 503.
* ``GET /metrics``: Prometheus text (the service's, then the Slack face's counters).
* anything else: 404 (405 for a known path with the wrong method).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from slack_bolt import App, BoltRequest, BoltResponse
from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer, create_server

from chatbot.slack.app import run_after_response
from chatbot.slack.interfaces import SlackServices
from chatbot.slack.metrics import SlackMetrics

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Slack's payloads are kilobytes (a big block_actions with view state, tens of KB).
MAX_BODY_BYTES = 1024 * 1024
DEFAULT_THREADS = 16
_LOOP_TIMEOUT = 0.2  # how often the idle server loop looks at the stop flag
_DRAIN_SECONDS = 5.0

HealthCheck = Callable[[], Mapping[str, Any]]


class _Body:
    """A WSGI response body that reports when the server is done writing it.

    WSGI servers call ``close()`` after the last byte was handed to the connection; that is
    when an ack is on its way, and a slow answer may follow it (``run_after_response``).
    """

    def __init__(self, data: bytes, on_close: Callable[[], None] | None = None) -> None:
        self._data = data
        self._on_close = on_close

    def __iter__(self) -> Iterator[bytes]:
        yield self._data

    def close(self) -> None:
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()


class SlackWsgiApp:
    """Routes the three endpoints; ``app=None`` serves only health and metrics (Socket Mode)."""

    def __init__(
        self,
        app: App | None,
        services: SlackServices,
        *,
        metrics: SlackMetrics | None = None,
        health: HealthCheck | None = None,
        events_path: str = EVENTS_PATH,
    ) -> None:
        self.app = app
        self.services = services
        self.metrics = metrics
        self.health = health if health is not None else services.health
        self.events_path = events_path

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        method = str(environ.get("REQUEST_METHOD") or "GET").upper()
        if path == self.events_path and self.app is not None:
            if method != "POST":
                return _plain(start_response, 405, "Method Not Allowed", [("Allow", "POST")])
            return self._slack(self.app, environ, start_response)
        if path in (HEALTH_PATH, METRICS_PATH):
            if method not in ("GET", "HEAD"):
                return _plain(start_response, 405, "Method Not Allowed", [("Allow", "GET, HEAD")])
            if path == HEALTH_PATH:
                status, body, content_type = self._health()
            else:
                status, body, content_type = self._metrics()
            headers = [
                ("Content-Type", content_type),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
            ]
            start_response(_status_line(status), headers)
            return [b""] if method == "HEAD" else [body]
        return _plain(start_response, 404, "Not Found")

    # -- /slack/events --------------------------------------------------------------------
    def _slack(
        self, app: App, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return _plain(start_response, 400, "Bad Request")
        if length < 0 or length > MAX_BODY_BYTES:
            return _plain(start_response, 413, "Payload Too Large")
        raw = environ["wsgi.input"].read(length) if length else b""
        try:
            # The signature covers these exact bytes; Bolt verifies the decoded text as is.
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return _plain(start_response, 400, "Bad Request")
        request = BoltRequest(
            body=text,
            query=str(environ.get("QUERY_STRING") or ""),
            headers=_request_headers(environ),
        )
        try:
            response: BoltResponse = app.dispatch(request)
        except Exception:
            log.exception("Bolt failed to dispatch a request")
            return _plain(start_response, 500, "Internal Server Error")
        body = (response.body or "").encode("utf-8")
        headers = [
            (name, value)
            for name, values in response.headers.items()
            if name.lower() != "content-length"
            for value in values
        ]
        headers.append(("Content-Length", str(len(body))))
        start_response(_status_line(response.status), headers)
        return _Body(body, lambda: run_after_response(request.context))

    # -- /healthz and /metrics ------------------------------------------------------------
    def _health(self) -> tuple[int, bytes, str]:
        try:
            report = dict(self.health())
        except Exception as exc:
            log.exception("the health check failed")
            report = {"ok": False, "reason": f"health check failed: {type(exc).__name__}"}
        ok = bool(report.get("ok"))
        report["ok"] = ok
        body = json.dumps(report, default=str, sort_keys=True).encode("utf-8")
        return (200 if ok else 503), body, "application/json"

    def _metrics(self) -> tuple[int, bytes, str]:
        try:
            parts = [self.services.metrics_text().rstrip("\n")]
            if self.metrics is not None:
                parts.append(self.metrics.text().rstrip("\n"))
            text = "\n".join(p for p in parts if p) + "\n"
        except Exception:
            log.exception("rendering /metrics failed")
            return 500, b"metrics unavailable\n", "text/plain; charset=utf-8"
        return 200, text.encode("utf-8"), METRICS_CONTENT_TYPE


def _status_line(status: int) -> str:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    return f"{status} {phrase}"


def _plain(
    start_response: StartResponse,
    status: int,
    text: str,
    extra: Sequence[tuple[str, str]] = (),
) -> list[bytes]:
    body = (text + "\n").encode("utf-8")
    headers = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        *extra,
    ]
    start_response(_status_line(status), headers)
    return [body]


def _request_headers(environ: WSGIEnvironment) -> dict[str, str | Sequence[str]]:
    headers: dict[str, str | Sequence[str]] = {}
    for key, value in environ.items():
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            headers[key.lower().replace("_", "-")] = str(value)
        elif key.startswith("HTTP_"):
            headers[key[5:].lower().replace("_", "-")] = str(value)
    return headers


class HttpServer:
    """:class:`SlackWsgiApp` on waitress in a background thread.

    ``start()`` returns once the socket listens (``port=0`` picks a free port: see
    :attr:`port`); ``stop()`` stops accepting, lets requests in progress finish (bounded),
    and closes everything.
    """

    def __init__(
        self,
        app: App | None,
        services: SlackServices,
        host: str = "0.0.0.0",
        port: int = 3000,
        *,
        metrics: SlackMetrics | None = None,
        health: HealthCheck | None = None,
        threads: int = DEFAULT_THREADS,
    ) -> None:
        self.wsgi = SlackWsgiApp(app, services, metrics=metrics, health=health)
        self.host = host
        self._requested_port = port
        self.threads = threads
        self._map: dict[int, Any] = {}
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("HttpServer is not started")
        listen = getattr(self._server, "effective_listen", None)
        if listen:
            return int(listen[0][1])
        return int(self._server.effective_port)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> HttpServer:
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = create_server(
            self.wsgi,
            map=self._map,
            host=self.host,
            port=self._requested_port,
            threads=self.threads,
            ident="celery-chatops",
            max_request_body_size=MAX_BODY_BYTES,
            expose_tracebacks=False,
            asyncore_use_poll=True,
        )
        self._thread = threading.Thread(target=self._run, name="chatops-http", daemon=True)
        self._thread.start()
        log.info("HTTP listener on %s:%s", self.host, self.port)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._stopping.set()
        wake = getattr(server, "pull_trigger", None)
        if wake is not None:
            wake()
        thread.join(timeout)
        self._server = None
        self._thread = None

    def __enter__(self) -> HttpServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- the loop (the only thread that touches the socket map) ---------------------------
    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                wasyncore.loop(timeout=_LOOP_TIMEOUT, map=self._map, use_poll=True, count=1)
        except Exception:
            log.exception("the HTTP server loop failed")
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        server = self._server
        # Stop accepting first; the triggers stay so finishing requests can wake the loop.
        for item in list(self._map.values()):
            if isinstance(item, BaseWSGIServer):
                wasyncore.dispatcher.close(item)
        deadline = time.monotonic() + _DRAIN_SECONDS
        while time.monotonic() < deadline and any(
            isinstance(c, HTTPChannel) and (c.requests or c.total_outbufs_len)
            for c in list(self._map.values())
        ):
            try:
                wasyncore.loop(timeout=0.05, map=self._map, use_poll=True, count=1)
            except Exception:
                log.exception("draining HTTP connections failed")
                break
        if server is not None:
            server.task_dispatcher.shutdown(cancel_pending=True, timeout=_DRAIN_SECONDS)
        wasyncore.close_all(self._map, ignore_all=True)
