"""A local stand-in for Slack's Web API that records every call.

Start it, point ``SLACK_API_URL`` (or ``WebClient(base_url=...)``) at ``api.url`` and assert on
what the code under test sent::

    with MockSlackAPI() as api:
        client = WebClient(token="xoxb-test", base_url=api.url)
        client.chat_postMessage(channel="C1", text="hi", blocks=[...])
        (call,) = api.wait_for("chat.postMessage")
        assert call.params["blocks"][0]["type"] == "section"

The server speaks the wire format slack_sdk uses: ``POST``/``GET`` ``/api/<method>`` with a
form-encoded or JSON body and ``Authorization: Bearer <token>``; replies are JSON with ``ok``.
Behaviour that real Slack enforces and that our code must cope with is enforced here too:
token types, OAuth scopes (``missing_scope``), archived channels and channel membership,
Block Kit limits (``invalid_blocks``, checked by the product's own validator,
:func:`chatbot.render.blockkit.validate_blocks`, which the tests hold to slack_sdk's models),
and the five-use limit of a ``response_url``.
Faults are injected per method with :meth:`MockSlackAPI.fail_next` and
:meth:`MockSlackAPI.rate_limit_next`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

from chatbot.check import REQUIRED_BOT_SCOPES
from chatbot.render.blockkit import SLACK_TEXT_MAX, VIEW_MAX_BLOCKS, validate_blocks
from tests.support.slack_payloads import (
    APP_ID,
    BOT_ID,
    BOT_USER_ID,
    BOT_USER_NAME,
    TEAM_DOMAIN,
    TEAM_ID,
    TEAM_NAME,
)

__all__ = [
    "DEFAULT_SCOPES",
    "Call",
    "MockSlackAPI",
    "SocketModeEndpoint",
    "validate_blocks",
]

# The bot scopes of manifest.yml (tests/test_manifest.py keeps the two identical), so that by
# default the double grants what a correctly installed app has, and no more: a call that needs
# another scope fails here as it would in a real workspace.
DEFAULT_SCOPES: tuple[str, ...] = tuple(REQUIRED_BOT_SCOPES)

# slack_sdk JSON-encodes these arguments when it sends a form body; they are decoded for
# recording so tests see the same structure whichever encoding the client picked.
_JSON_VALUED_FIELDS = frozenset(
    {
        "attachments",
        "blocks",
        "dialog",
        "metadata",
        "option_groups",
        "options",
        "profile",
        "unfurls",
        "user_auth_blocks",
        "view",
    }
)

# Scopes Slack accepts for each method (any one suffices); methods absent need none.
_METHOD_SCOPES: dict[str, tuple[str, ...]] = {
    "chat.postMessage": ("chat:write",),
    "chat.update": ("chat:write",),
    "chat.postEphemeral": ("chat:write",),
    "chat.delete": ("chat:write",),
    "usergroups.users.list": ("usergroups:read",),
}
_CONVERSATION_READ_SCOPE = {"C": "channels:read", "G": "groups:read", "D": "im:read"}

_APP_TOKEN_METHODS = frozenset({"apps.connections.open"})

_USER_ID_RE = re.compile(r"^[UW][A-Z0-9]{2,}$")
_CONVERSATION_ID_RE = re.compile(r"^[CGD][A-Z0-9]{2,}$")


class SocketModeEndpoint(Protocol):
    """What ``apps.connections.open`` needs from a Socket Mode server."""

    def connection_url(self) -> str: ...


@dataclass(frozen=True)
class Call:
    """One recorded request.

    For Web API calls ``method`` is the API method (``chat.postMessage``); for posts to a
    ``response_url`` it is the name given to :meth:`MockSlackAPI.response_url`. ``params`` merges
    the query string, form fields and JSON body, with JSON-valued form fields (``blocks``...)
    decoded; other form values stay strings as sent (slack_sdk sends booleans as ``"1"``/``"0"``).
    ``headers`` has lower-cased names. ``status`` and ``response`` are what the double answered.
    """

    method: str
    params: dict[str, Any]
    headers: dict[str, str]
    time: float
    http_method: str = "POST"
    token: str | None = None
    status: int = 200
    response: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Fault:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]


@dataclass
class _Channel:
    id: str
    name: str
    is_member: bool = True
    is_archived: bool = False
    is_private: bool = False


@dataclass
class _Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def _err(error: str, **extra: Any) -> dict[str, Any]:
    return {"ok": False, "error": error, **extra}


def _invalid_blocks(errors: list[str]) -> dict[str, Any]:
    return _err("invalid_blocks", errors=errors, response_metadata={"messages": errors})


# --------------------------------------------------------------------------- HTTP plumbing


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    api: MockSlackAPI


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        # Test output stays readable; the recording is the log.
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, http_method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        reply = self.server.api._dispatch(http_method, self.path, raw, headers)
        data = json.dumps(reply.body).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        # One request per connection: no idle keep-alive threads outlive stop().
        self.send_header("Connection", "close")
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
        self.close_connection = True


def _parse_params(query: str, raw: bytes, content_type: str) -> dict[str, Any]:
    params: dict[str, Any] = dict(parse_qsl(query, keep_blank_values=True))
    if not raw:
        return params
    if content_type.startswith("application/json"):
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if isinstance(body, dict):
            params.update(body)
        return params
    if content_type.startswith("application/x-www-form-urlencoded") or not content_type:
        for key, value in parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True):
            params[key] = value
    else:
        # Multipart uploads are not modelled; keep the size so a test can still see them.
        params["_raw_body_bytes"] = len(raw)
    for key in _JSON_VALUED_FIELDS & params.keys():
        value = params[key]
        if isinstance(value, str) and value[:1] in ("[", "{"):
            with contextlib.suppress(ValueError):
                params[key] = json.loads(value)
    return params


# --------------------------------------------------------------------------- the double


class MockSlackAPI:
    """Slack's Web API and ``response_url`` endpoint on a loopback port.

    ``socket_mode``: a server whose URL ``apps.connections.open`` hands out.
    ``scopes``: the bot token's granted scopes (default :data:`DEFAULT_SCOPES`).
    ``validate_blocks``: apply Block Kit limits to posted messages and views.
    ``response_url_max_uses``: Slack accepts a response_url this many times (``None``: no limit).
    """

    def __init__(
        self,
        *,
        socket_mode: SocketModeEndpoint | None = None,
        scopes: Iterable[str] | None = None,
        validate_blocks: bool = True,
        response_url_max_uses: int | None = 5,
    ) -> None:
        self._socket_mode = socket_mode
        self._scopes: list[str] = list(DEFAULT_SCOPES if scopes is None else scopes)
        self._validate = validate_blocks
        self._response_url_max_uses = response_url_max_uses
        self._cond = threading.Condition()
        self._calls: list[Call] = []
        self._responses: list[Call] = []
        self._faults: dict[str, deque[_Fault]] = {}
        self._revoked: dict[str, str] = {}
        self._usergroups: dict[str, list[str]] = {}
        self._channels: dict[str, _Channel] = {}
        self._messages: dict[tuple[str, str], dict[str, Any]] = {}
        self._deleted: set[tuple[str, str]] = set()
        self._home_views: dict[str, dict[str, Any]] = {}
        self._handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {}
        self._last_ts_us = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> MockSlackAPI:
        if self._server is not None:
            return self
        server = _Server(("127.0.0.1", 0), _Handler)
        server.api = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"MockSlackAPI:{server.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> MockSlackAPI:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("MockSlackAPI is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL for ``SLACK_API_URL`` / ``WebClient(base_url=...)``; ends with ``/``."""
        return f"http://127.0.0.1:{self.port}/api/"

    def response_url(self, name: str) -> str:
        """A ``response_url`` whose posts are recorded under ``name`` (see :meth:`responses`)."""
        return f"http://127.0.0.1:{self.port}/response/{name}"

    # ------------------------------------------------------------------ recording

    def calls(self, method: str | None = None) -> list[Call]:
        with self._cond:
            return [c for c in self._calls if method is None or c.method == method]

    def responses(self, name: str | None = None) -> list[Call]:
        with self._cond:
            return [c for c in self._responses if name is None or c.method == name]

    def wait_for(self, method: str, count: int = 1, timeout: float = 10.0) -> list[Call]:
        """Block until ``method`` was called ``count`` times; returns all its calls so far."""
        with self._cond:
            done = self._cond.wait_for(
                lambda: sum(c.method == method for c in self._calls) >= count, timeout
            )
            found = [c for c in self._calls if c.method == method]
            if not done:
                raise AssertionError(
                    f"expected {count} call(s) of {method} within {timeout}s, got {len(found)}; "
                    f"received: {self._summary(self._calls)}"
                )
            return found

    def wait_for_response(
        self, name: str | None = None, count: int = 1, timeout: float = 10.0
    ) -> list[Call]:
        """Block until ``count`` posts reached response_url ``name`` (any name if ``None``)."""

        def matching() -> list[Call]:
            return [c for c in self._responses if name is None or c.method == name]

        with self._cond:
            done = self._cond.wait_for(lambda: len(matching()) >= count, timeout)
            found = matching()
            if not done:
                raise AssertionError(
                    f"expected {count} post(s) to response_url {name or '(any)'} within "
                    f"{timeout}s, got {len(found)}; received: {self._summary(self._responses)}"
                )
            return found

    @staticmethod
    def _summary(calls: list[Call]) -> str:
        if not calls:
            return "nothing"
        parts = []
        for c in calls:
            error = "" if c.response.get("ok", True) else f" {c.response.get('error')}"
            parts.append(f"{c.method}({c.status}{error})")
        return ", ".join(parts)

    def clear(self) -> None:
        """Forget recorded calls and pending faults; configured state is kept."""
        with self._cond:
            self._calls.clear()
            self._responses.clear()
            self._faults.clear()

    # ------------------------------------------------------------------ configuration

    def fail_next(
        self, method: str, error: str = "not_in_channel", count: int = 1, *, status: int = 200
    ) -> None:
        """The next ``count`` calls of ``method`` answer ``{"ok": false, "error": error}``.

        ``method`` may be ``"response_url"`` (any response_url post) or
        ``"response/<name>"`` (one of them).
        """
        fault = _Fault(status, _err(error), {})
        with self._cond:
            self._faults.setdefault(method, deque()).extend([fault] * count)

    def rate_limit_next(self, method: str, retry_after: int = 1, count: int = 1) -> None:
        """The next ``count`` calls of ``method`` get HTTP 429 with ``Retry-After``."""
        fault = _Fault(429, _err("ratelimited"), {"Retry-After": str(retry_after)})
        with self._cond:
            self._faults.setdefault(method, deque()).extend([fault] * count)

    def set_scopes(self, scopes: Iterable[str]) -> None:
        with self._cond:
            self._scopes = list(scopes)

    def revoke_token(self, token: str, error: str = "invalid_auth") -> None:
        """Calls with ``token`` fail with ``error`` (Slack also uses ``token_revoked``)."""
        with self._cond:
            self._revoked[token] = error

    def set_usergroup(self, group_id: str, members: Iterable[str]) -> None:
        with self._cond:
            self._usergroups[group_id] = list(members)

    def set_channel(
        self,
        channel_id: str,
        *,
        is_member: bool = True,
        is_archived: bool = False,
        name: str | None = None,
        is_private: bool | None = None,
    ) -> None:
        """Channel state seen by ``conversations.info`` and enforced when posting.

        Without ``chat:write.public`` (or for a private channel) a bot that is not a member gets
        ``not_in_channel``; an archived channel gives ``is_archived``. Unconfigured channels
        behave as public channels the bot is a member of.
        """
        with self._cond:
            self._channels[channel_id] = _Channel(
                id=channel_id,
                name=name if name is not None else channel_id.lower(),
                is_member=is_member,
                is_archived=is_archived,
                is_private=channel_id.startswith("G") if is_private is None else is_private,
            )

    def set_handler(
        self, method: str, handler: Callable[[dict[str, Any]], dict[str, Any]] | None
    ) -> None:
        """Answer ``method`` with ``handler(params)``; also adds methods not modelled here."""
        with self._cond:
            if handler is None:
                self._handlers.pop(method, None)
            else:
                self._handlers[method] = handler

    # ------------------------------------------------------------------ observed state

    def message(self, channel: str, ts: str) -> dict[str, Any] | None:
        """The current state of a message posted through the double (after updates)."""
        with self._cond:
            msg = self._messages.get((channel, ts))
            return copy.deepcopy(msg) if msg is not None else None

    def messages(self, channel: str | None = None) -> list[dict[str, Any]]:
        """Current (undeleted) messages, oldest first."""
        with self._cond:
            found = [m for (ch, _), m in self._messages.items() if channel is None or ch == channel]
            found.sort(key=lambda m: float(m["ts"]))
            return copy.deepcopy(found)

    def home_view(self, user_id: str) -> dict[str, Any] | None:
        """The App Home view last published for ``user_id``."""
        with self._cond:
            view = self._home_views.get(user_id)
            return copy.deepcopy(view) if view is not None else None

    # ------------------------------------------------------------------ dispatch

    def _dispatch(
        self, http_method: str, target: str, raw: bytes, headers: dict[str, str]
    ) -> _Reply:
        parts = urlsplit(target)
        content_type = headers.get("content-type", "")
        params = _parse_params(parts.query, raw, content_type)
        if parts.path.startswith("/response/"):
            name = unquote(parts.path[len("/response/") :])
            return self._serve_response(name, http_method, raw, content_type, params, headers)
        if not parts.path.startswith("/api/"):
            return _Reply(404, _err("not_found"))
        method = parts.path[len("/api/") :]
        token: str | None = None
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            token = auth[len("bearer ") :].strip()
        elif isinstance(params.get("token"), str):
            token = params["token"]
        params.pop("token", None)
        with self._cond:
            reply = self._answer(method, params, token)
            self._calls.append(
                Call(
                    method=method,
                    params=params,
                    headers=headers,
                    time=time.time(),
                    http_method=http_method,
                    token=token,
                    status=reply.status,
                    response=reply.body,
                )
            )
            self._cond.notify_all()
        reply.headers.setdefault("X-Slack-Req-Id", secrets.token_hex(16))
        return reply

    def _pop_fault(self, *keys: str) -> _Fault | None:
        for key in keys:
            queue = self._faults.get(key)
            if queue:
                return queue.popleft()
        return None

    def _answer(self, method: str, params: dict[str, Any], token: str | None) -> _Reply:
        headers: dict[str, str] = {}
        if not token:
            return _Reply(200, _err("not_authed"))
        if token in self._revoked:
            return _Reply(200, _err(self._revoked[token]))
        is_bot, is_app = token.startswith("xoxb-"), token.startswith("xapp-")
        if not (is_bot or is_app):
            return _Reply(200, _err("invalid_auth"))
        # Slack reports the token's scopes on every response; slack_sdk and Bolt read them.
        headers["x-oauth-scopes"] = ",".join(self._scopes) if is_bot else "connections:write"
        if is_app != (method in _APP_TOKEN_METHODS):
            return _Reply(200, _err("not_allowed_token_type"), headers)
        needed = self._needed_scopes(method, params)
        if needed:
            headers["x-accepted-oauth-scopes"] = ",".join(needed)
            if is_bot and not set(needed) & set(self._scopes):
                return _Reply(
                    200,
                    _err(
                        "missing_scope",
                        needed=",".join(needed),
                        provided=",".join(self._scopes),
                    ),
                    headers,
                )
        fault = self._pop_fault(method)
        if fault is not None:
            return _Reply(fault.status, dict(fault.body), {**headers, **fault.headers})
        custom = self._handlers.get(method)
        if custom is not None:
            return _Reply(200, custom(params), headers)
        builtin = getattr(self, "_m_" + method.replace(".", "_"), None)
        if builtin is None:
            return _Reply(200, _err("unknown_method", req_method=method), headers)
        body: dict[str, Any] = builtin(params)
        return _Reply(200, body, headers)

    def _needed_scopes(self, method: str, params: Mapping[str, Any]) -> tuple[str, ...]:
        if method == "conversations.info":
            scope = _CONVERSATION_READ_SCOPE.get(str(params.get("channel", ""))[:1])
            return (scope,) if scope else ()
        return _METHOD_SCOPES.get(method, ())

    def _next_ts(self) -> str:
        # Slack's ts is seconds.microseconds, unique per channel; unique overall is stricter.
        now_us = int(time.time() * 1_000_000)
        self._last_ts_us = max(now_us, self._last_ts_us + 1)
        return f"{self._last_ts_us // 1_000_000}.{self._last_ts_us % 1_000_000:06d}"

    # ------------------------------------------------------------------ methods

    def _m_auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": f"https://{TEAM_DOMAIN}.slack.com/",
            "team": TEAM_NAME,
            "user": BOT_USER_NAME,
            "team_id": TEAM_ID,
            "user_id": BOT_USER_ID,
            "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }

    def _m_apps_connections_open(self, params: dict[str, Any]) -> dict[str, Any]:
        if self._socket_mode is None:
            return _err("internal_error", detail="no Socket Mode server attached to MockSlackAPI")
        return {"ok": True, "url": self._socket_mode.connection_url()}

    def _resolve_channel(self, channel: str) -> str:
        # Posting to a user id lands in the DM with that user.
        if _USER_ID_RE.match(channel):
            return "D" + channel[1:]
        return channel

    def _post_check(self, channel: str, *, ephemeral: bool = False) -> dict[str, Any] | None:
        if not channel:
            return _err("channel_not_found")
        state = self._channels.get(channel)
        if state is None:
            return None
        if state.is_archived:
            return _err("is_archived")
        if not state.is_member:
            if state.is_private:
                return _err("channel_not_found")
            if ephemeral or "chat:write.public" not in self._scopes:
                return _err("not_in_channel")
        return None

    def _content_check(
        self, params: Mapping[str, Any], *, allow_empty: bool = False
    ) -> dict[str, Any] | None:
        text = params.get("text")
        blocks = params.get("blocks")
        if not allow_empty and not text and not blocks and not params.get("attachments"):
            return _err("no_text")
        if isinstance(text, str) and len(text) > SLACK_TEXT_MAX:
            return _err("msg_too_long")
        if self._validate and blocks is not None:
            errors = validate_blocks(blocks)
            if errors:
                return _invalid_blocks(errors)
        return None

    def _bot_message(self, params: Mapping[str, Any], ts: str) -> dict[str, Any]:
        msg: dict[str, Any] = {
            "user": BOT_USER_ID,
            "type": "message",
            "ts": ts,
            "bot_id": BOT_ID,
            "app_id": APP_ID,
            "text": params.get("text") or "",
            "team": TEAM_ID,
            "bot_profile": {
                "id": BOT_ID,
                "app_id": APP_ID,
                "name": BOT_USER_NAME,
                "deleted": False,
                "team_id": TEAM_ID,
            },
        }
        for key in ("blocks", "attachments", "thread_ts", "metadata"):
            if params.get(key):
                msg[key] = params[key]
        return msg

    def _m_chat_postMessage(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._resolve_channel(str(params.get("channel") or ""))
        problem = self._post_check(channel) or self._content_check(params)
        if problem is not None:
            return problem
        ts = self._next_ts()
        msg = self._bot_message(params, ts)
        # Stored apart from the recorded reply, so a later chat.update cannot rewrite history.
        self._messages[(channel, ts)] = copy.deepcopy(msg)
        return {"ok": True, "channel": channel, "ts": ts, "message": msg}

    def _m_chat_update(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = str(params.get("channel") or "")
        ts = str(params.get("ts") or "")
        if not channel:
            return _err("channel_not_found")
        if not ts or (channel, ts) in self._deleted:
            return _err("message_not_found")
        problem = self._post_check(channel) or self._content_check(params, allow_empty=True)
        if problem is not None:
            return problem
        # Messages the double never saw (e.g. from a hand-built payload) are accepted, so that
        # tests need not post a message first just to update it.
        current = self._messages.get((channel, ts)) or self._bot_message({}, ts)
        for key in ("text", "blocks", "attachments", "metadata"):
            if key in params:
                current[key] = params[key]
        current["edited"] = {"user": BOT_USER_ID, "ts": self._next_ts()}
        self._messages[(channel, ts)] = current
        echo = copy.deepcopy(current)
        return {"ok": True, "channel": channel, "ts": ts, "text": echo["text"], "message": echo}

    def _m_chat_postEphemeral(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = str(params.get("channel") or "")
        if not params.get("user"):
            return _err("user_not_found")
        problem = self._post_check(channel, ephemeral=True) or self._content_check(params)
        if problem is not None:
            return problem
        return {"ok": True, "message_ts": self._next_ts()}

    def _m_chat_delete(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = str(params.get("channel") or "")
        ts = str(params.get("ts") or "")
        if not channel:
            return _err("channel_not_found")
        if not ts or (channel, ts) in self._deleted:
            return _err("message_not_found")
        self._messages.pop((channel, ts), None)
        self._deleted.add((channel, ts))
        return {"ok": True, "channel": channel, "ts": ts}

    def _m_views_publish(self, params: dict[str, Any]) -> dict[str, Any]:
        user_id = str(params.get("user_id") or "")
        view = params.get("view")
        if not user_id:
            return _err("invalid_arguments", response_metadata={"messages": ["user_id required"]})
        if not isinstance(view, dict) or view.get("type") != "home":
            return _err(
                "invalid_arguments",
                response_metadata={"messages": ["[ERROR] view.type must be home"]},
            )
        if self._validate:
            errors = validate_blocks(view.get("blocks", []), max_blocks=VIEW_MAX_BLOCKS)
            if errors:
                return _err("invalid_arguments", response_metadata={"messages": errors})
        previous = self._home_views.get(user_id)
        given_hash = params.get("hash")
        if given_hash and previous is not None and previous["hash"] != given_hash:
            return _err("hash_conflict")
        published = {
            "id": previous["id"] if previous else "V" + secrets.token_hex(5).upper(),
            "team_id": TEAM_ID,
            "type": "home",
            "blocks": view.get("blocks", []),
            "private_metadata": view.get("private_metadata", ""),
            "callback_id": view.get("callback_id", ""),
            "external_id": view.get("external_id", ""),
            "state": {"values": {}},
            "hash": f"{int(time.time())}.{secrets.token_hex(4)}",
            "app_id": APP_ID,
            "bot_id": BOT_ID,
        }
        self._home_views[user_id] = published
        return {"ok": True, "view": published}

    def _m_usergroups_users_list(self, params: dict[str, Any]) -> dict[str, Any]:
        group = str(params.get("usergroup") or "")
        members = self._usergroups.get(group)
        if members is None:
            # Slack's actual error code for an unknown user group id.
            return _err("no_such_subteam")
        return {"ok": True, "users": list(members)}

    def _channel_object(self, channel_id: str) -> dict[str, Any]:
        state = self._channels.get(channel_id) or _Channel(
            id=channel_id, name=channel_id.lower(), is_private=channel_id.startswith("G")
        )
        is_im = channel_id.startswith("D")
        return {
            "id": channel_id,
            "name": state.name,
            "name_normalized": state.name,
            "is_channel": not state.is_private and not is_im,
            "is_group": state.is_private and not is_im,
            "is_im": is_im,
            "is_mpim": False,
            "is_private": state.is_private or is_im,
            "is_archived": state.is_archived,
            "is_general": False,
            "is_shared": False,
            "is_ext_shared": False,
            "is_org_shared": False,
            "is_member": state.is_member,
            "created": 1_700_000_000,
            "creator": "U0CREATOR1",
            "context_team_id": TEAM_ID,
        }

    def _m_conversations_info(self, params: dict[str, Any]) -> dict[str, Any]:
        channel_id = str(params.get("channel") or "")
        if channel_id not in self._channels and not _CONVERSATION_ID_RE.match(channel_id):
            return _err("channel_not_found")
        return {"ok": True, "channel": self._channel_object(channel_id)}

    # ------------------------------------------------------------------ response_url

    def _serve_response(
        self,
        name: str,
        http_method: str,
        raw: bytes,
        content_type: str,
        params: dict[str, Any],
        headers: dict[str, str],
    ) -> _Reply:
        # Slack also accepts the webhook style ``payload=<json>`` form body.
        if isinstance(params.get("payload"), str):
            try:
                decoded = json.loads(params["payload"])
            except ValueError:
                decoded = None
            if isinstance(decoded, dict):
                params = decoded
        with self._cond:
            uses = sum(c.method == name for c in self._responses)
            fault = self._pop_fault(f"response/{name}", "response_url")
            if fault is not None:
                reply = _Reply(fault.status, dict(fault.body), dict(fault.headers))
            elif http_method != "POST" or (raw and not params):
                reply = _Reply(400, _err("invalid_payload"))
            elif self._response_url_max_uses is not None and uses >= self._response_url_max_uses:
                reply = _Reply(404, _err("used_url"))
            else:
                problem = self._content_check(
                    params, allow_empty=bool(params.get("delete_original"))
                )
                reply = _Reply(400, problem) if problem else _Reply(200, {"ok": True})
            self._responses.append(
                Call(
                    method=name,
                    params=params,
                    headers=headers,
                    time=time.time(),
                    http_method=http_method,
                    status=reply.status,
                    response=reply.body,
                )
            )
            self._cond.notify_all()
        return reply
