"""The REST API's dispatcher: route, credential, typed arguments, handler, error mapping.

:class:`ApiCore` is transport-free: :meth:`ApiCore.handle` takes a method, a path, the raw
arguments, the ``Authorization`` header and a body, and returns an :class:`ApiResponse`. The
WSGI face (:mod:`chatbot.api.wsgi`) only moves bytes in and out. What a handler may use is
:class:`ApiServices`: the store, the control library's inspect, the broker's queue lengths, the
approval service (control endpoints), all passed in.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from chatbot.api.credentials import TokenBook
from chatbot.api.spec import ApiError, ApiRequest, ApiResponse, Endpoint, parse_params
from chatbot.approvals import ApprovalService
from chatbot.audit import AuditLog
from chatbot.broker import QueueLength
from chatbot.config import Settings
from chatbot.control_port import ControlPort
from chatbot.render import Message
from chatbot.store import FleetStore

__all__ = ["API_OFF", "ApiCore", "ApiServices", "WorkerInfoCache"]

logger = logging.getLogger(__name__)

API_OFF = "The REST API is off: set CHATOPS_API_TOKENS (IDENTITY=TOKEN pairs) to enable it."
UNAUTHORIZED = "A valid API token is required: Authorization: Bearer TOKEN, or Basic auth with"
UNAUTHORIZED += " the token as the password."
CHALLENGES = (
    ("WWW-Authenticate", 'Bearer realm="celery-chatops"'),
    ("WWW-Authenticate", 'Basic realm="celery-chatops"'),
)
# Flower's inspector asks every worker for these (2.2.0); a single worker also for its task
# lists. ``conf`` is left out: the control library refuses it (it echoes the broker URL).
WORKER_METHODS = ("stats", "active_queues", "registered")
ONE_WORKER_METHODS = (*WORKER_METHODS, "active", "scheduled", "reserved", "revoked")


class WorkerInfoCache:
    """Flower's inspector cache: ``{worker: {method: reply, ..., "timestamp": t}}``.

    Filled by :meth:`refresh` (``/api/workers?refresh=1``, or the first read); never read from
    events, which carry none of it.
    """

    def __init__(
        self,
        inspector: ControlPort | None,
        store: FleetStore,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._inspector = inspector
        self._store = store
        self._clock = clock
        self._workers: dict[str, dict[str, Any]] = {}
        # Requests run on the listener's threads: one refresh may write while another reads.
        self._lock = threading.Lock()
        self.refreshed = False

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {name: dict(info) for name, info in self._workers.items()}

    def refresh(self, workername: str | None = None) -> None:
        """Inspect every worker (or one) now; RuntimeError when the broker is unreachable."""
        if self._inspector is None:
            raise RuntimeError("no control connection to the workers")
        inspector = self._inspector
        now = self._clock()
        online = [w.hostname for w in self._store.workers() if w.is_online(now)]
        expected = [workername] if workername else online
        methods = ONE_WORKER_METHODS if workername else WORKER_METHODS
        with ThreadPoolExecutor(max_workers=len(methods), thread_name_prefix="api-inspect") as pool:
            results = list(
                pool.map(lambda m: inspector.inspect(m, workername, expected=expected), methods)
            )
        errors = [r.error for r in results if r.error]
        if errors and len(errors) == len(results):
            raise RuntimeError(errors[0])
        stamp = self._clock()
        with self._lock:
            for method, result in zip(methods, results, strict=True):
                for name, reply in result.replies.items():
                    if reply.status != "ok":
                        continue
                    value = _without_secrets(reply.value) if method == "stats" else reply.value
                    self._workers.setdefault(name, {})[method] = value
                    self._workers[name]["timestamp"] = stamp
            self.refreshed = True


def _without_secrets(stats: Any) -> Any:
    """``inspect stats`` without the broker's alternates and transport options.

    Celery already drops the broker password; alternate URLs and transport options (Sentinel
    passwords) can still carry one. Flower 2.2 drops ``alternates`` for the same reason.
    """
    if not isinstance(stats, dict) or not isinstance(stats.get("broker"), dict):
        return stats
    broker = {
        k: v for k, v in stats["broker"].items() if k not in ("alternates", "transport_options")
    }
    return {**stats, "broker": broker}


@dataclass
class ApiServices:
    """What the handlers use; every part is passed in by the wiring."""

    store: FleetStore
    settings: Settings
    inspector: ControlPort | None = None
    queue_lengths: Callable[[], Sequence[QueueLength]] | None = None
    clock: Callable[[], float] = time.time
    # Control: the approval service, where its cards are posted (channel, card) -> ts or None,
    # how a task is sent (name, args, kwargs, options) -> task id, and the audit trail.
    approvals: ApprovalService | None = None
    post_card: Callable[[str, Message], str | None] | None = None
    publish: Callable[[str, list[Any], dict[str, Any], dict[str, Any]], str] | None = None
    audit: AuditLog | None = None
    workers: WorkerInfoCache = field(init=False)
    # The OpenAPI document, set by ApiCore (it is generated from the same table).
    openapi: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workers = WorkerInfoCache(self.inspector, self.store, self.clock)


def _text_response(status: int, text: str, headers: Sequence[tuple[str, str]] = ()) -> ApiResponse:
    return ApiResponse(status, text, headers)


class ApiCore:
    """Dispatches calls to the declared endpoints."""

    def __init__(
        self,
        services: ApiServices,
        endpoints: Sequence[Endpoint],
        tokens: TokenBook,
        openapi: Callable[[Sequence[Endpoint]], dict[str, Any]] | None = None,
    ) -> None:
        self.services = services
        self.endpoints = tuple(endpoints)
        self.tokens = tokens
        if openapi is not None:
            services.openapi = openapi(self.endpoints)

    def handles(self, path: str) -> bool:
        return (
            path == "/api"
            or path.startswith("/api/")
            or any(e.access == "public" and e.pattern.match(path) for e in self.endpoints)
        )

    def handle(
        self,
        method: str,
        path: str,
        args: Mapping[str, Sequence[str]],
        authorization: str | None,
        body: bytes = b"",
        content_type: str = "",
    ) -> ApiResponse:
        method = method.upper()
        matches = [(e, m) for e in self.endpoints if (m := e.pattern.match(path))]
        public = bool(matches) and all(e.access == "public" for e, _ in matches)
        if not public and not self.tokens.enabled:
            return _text_response(403, API_OFF)
        if not matches:
            return _text_response(404, "Not Found")
        chosen = [(e, m) for e, m in matches if e.method == method]
        if not chosen:
            allowed = ", ".join(sorted({e.method for e, _ in matches}))
            return _text_response(405, "Method Not Allowed", [("Allow", allowed)])
        endpoint, match = chosen[0]
        identity = ""
        if endpoint.access != "public":
            found = self.tokens.identify(authorization)
            if found is None:
                return _text_response(401, UNAUTHORIZED, CHALLENGES)
            identity = found
        try:
            typed = parse_params(endpoint.params, match.groupdict(), args)
            payload = _json_body(body, content_type) if endpoint.body is not None else None
            return endpoint.handler(self.services, ApiRequest(identity, typed, payload))
        except ApiError as exc:
            if exc.body is not None:
                return ApiResponse(exc.status, exc.body)
            return _text_response(exc.status, exc.message)
        except Exception:
            reference = uuid.uuid4().hex[:12]
            logger.exception(
                "API handler failed",
                extra={"operation": endpoint.operation_id, "reference": reference},
            )
            return _text_response(500, f"Internal Server Error (reference {reference})")


def _json_body(body: bytes, content_type: str) -> Any:
    """The JSON body, decoded whatever its declared type (as Flower does); None when empty or
    a form (a form's fields are arguments)."""
    if not body.strip() or "x-www-form-urlencoded" in content_type.lower():
        return None
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, f"Invalid JSON body: {str(exc)[:200]}") from None
