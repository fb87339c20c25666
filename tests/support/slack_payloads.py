"""Request bodies shaped the way Slack sends them, signed with the signing secret.

Field names follow Slack's payload references and the payloads bolt-python uses in its own
scenario tests. The bytes builders return exactly what goes on the wire; the ``*_payload`` /
``*_fields`` builders return the same data as a dict, which is what a Socket Mode envelope
carries (Slack sends a slash command over Socket Mode as a JSON object of the form fields).

Typical use against a running HTTP endpoint::

    body = slash_command("status", user_id="U1", channel_id="C1",
                         response_url=api.response_url("status"))
    resp = post_signed(url, body, signing_secret="secret", content_type=FORM)
    assert resp.status == 200

or against ``slack_bolt.App.dispatch``::

    app.dispatch(BoltRequest(body=body.decode(), headers=signed_headers(
        body, signing_secret="secret", content_type=FORM)))
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import string
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

# One imaginary workspace shared by every double, so that ids in request payloads agree with
# what MockSlackAPI's auth.test reports (Bolt compares them in places, e.g. self-event ignoring).
TEAM_ID = "T0CHATOPS1"
TEAM_DOMAIN = "chatops-test"
TEAM_NAME = "Celery ChatOps Test"
APP_ID = "A0CHATOPS1"
BOT_ID = "B0CHATOPS1"
BOT_USER_ID = "U0CHATBOT1"
BOT_USER_NAME = "celery-triage"
# The deprecated per-app verification token Slack still puts in every payload.
VERIFICATION_TOKEN = "vErIfIcAtIoNtOkEn0123456"

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"

_ALNUM = string.ascii_uppercase + string.digits


def _rand_id(prefix: str, length: int = 10) -> str:
    return prefix + "".join(secrets.choice(_ALNUM) for _ in range(length))


def _trigger_id() -> str:
    # Slack's trigger ids look like "13345224609.738474920.8088930838d88f008e0".
    return (
        f"{secrets.randbelow(10**11):011d}.{secrets.randbelow(10**9):09d}.{secrets.token_hex(10)}"
    )


def _now_ts() -> str:
    return f"{time.time():.6f}"


# --------------------------------------------------------------------------- signing


def sign(body: bytes, signing_secret: str, timestamp: int) -> str:
    """Slack's v0 request signature: ``v0=`` + hex HMAC-SHA256 of ``v0:{ts}:{body}``."""
    base = b"v0:" + str(int(timestamp)).encode() + b":" + body
    digest = hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()
    return f"v0={digest}"


def _signature_headers(body: bytes, signing_secret: str, timestamp: int | None) -> dict[str, str]:
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return {
        "X-Slack-Request-Timestamp": str(ts),
        "X-Slack-Signature": sign(body, signing_secret, ts),
    }


def signed_headers(
    body: bytes,
    *,
    signing_secret: str,
    content_type: str,
    timestamp: int | None = None,
) -> dict[str, str | Sequence[str]]:
    """The headers Slack attaches to a request: content type, timestamp and signature.

    Typed for ``slack_bolt.BoltRequest(headers=...)``; ``timestamp`` defaults to now.
    """
    headers: dict[str, str | Sequence[str]] = {"Content-Type": content_type}
    headers.update(_signature_headers(body, signing_secret, timestamp))
    return headers


# --------------------------------------------------------------------------- slash commands


def slash_command_fields(
    text: str,
    *,
    user_id: str,
    channel_id: str,
    response_url: str,
    command: str = "/celery",
    team_id: str = TEAM_ID,
    team_domain: str = TEAM_DOMAIN,
    user_name: str | None = None,
    channel_name: str = "incidents",
    trigger_id: str | None = None,
    api_app_id: str = APP_ID,
) -> dict[str, str]:
    """The fields of a slash command invocation, in the order Slack sends them."""
    return {
        "token": VERIFICATION_TOKEN,
        "team_id": team_id,
        "team_domain": team_domain,
        "channel_id": channel_id,
        "channel_name": channel_name,
        "user_id": user_id,
        "user_name": user_name if user_name is not None else user_id.lower(),
        "command": command,
        "text": text,
        "api_app_id": api_app_id,
        # Slack sends booleans in this form as the strings "true"/"false".
        "is_enterprise_install": "false",
        "response_url": response_url,
        "trigger_id": trigger_id if trigger_id is not None else _trigger_id(),
    }


def slash_command(
    text: str,
    *,
    user_id: str,
    channel_id: str,
    response_url: str,
    command: str = "/celery",
    team_id: str = TEAM_ID,
    team_domain: str = TEAM_DOMAIN,
    user_name: str | None = None,
    channel_name: str = "incidents",
    trigger_id: str | None = None,
    api_app_id: str = APP_ID,
) -> bytes:
    """A form-encoded slash command body (send with ``content_type=FORM``)."""
    fields = slash_command_fields(
        text,
        user_id=user_id,
        channel_id=channel_id,
        response_url=response_url,
        command=command,
        team_id=team_id,
        team_domain=team_domain,
        user_name=user_name,
        channel_name=channel_name,
        trigger_id=trigger_id,
        api_app_id=api_app_id,
    )
    return urlencode(fields).encode()


# --------------------------------------------------------------------------- interactivity


def _find_block_id(blocks: list[dict[str, Any]], action_id: str) -> str | None:
    for block in blocks:
        elements = block.get("elements")
        if isinstance(elements, list):
            for element in elements:
                if isinstance(element, dict) and element.get("action_id") == action_id:
                    bid = block.get("block_id")
                    return bid if isinstance(bid, str) else None
        accessory = block.get("accessory")
        if isinstance(accessory, dict) and accessory.get("action_id") == action_id:
            bid = block.get("block_id")
            return bid if isinstance(bid, str) else None
    return None


def block_action_payload(
    action_id: str,
    value: str,
    *,
    user_id: str,
    channel_id: str,
    message_ts: str,
    response_url: str,
    block_id: str | None = None,
    message_blocks: list[dict[str, Any]] | None = None,
    message_text: str = "",
    button_text: str = "Button",
    style: str | None = None,
    is_ephemeral: bool = False,
    user_name: str | None = None,
    channel_name: str = "incidents",
    team_id: str = TEAM_ID,
    team_domain: str = TEAM_DOMAIN,
    api_app_id: str = APP_ID,
    trigger_id: str | None = None,
) -> dict[str, Any]:
    """A ``block_actions`` payload for a button click on a message.

    ``block_id`` defaults to the block of ``message_blocks`` that holds ``action_id`` (as it
    would be on Slack), else a random Slack-style id. Without ``message_blocks`` the message
    is given one actions block holding the clicked button, so the payload stays consistent.
    """
    if block_id is None and message_blocks is not None:
        block_id = _find_block_id(message_blocks, action_id)
    if block_id is None:
        block_id = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(5))
    action: dict[str, Any] = {
        "action_id": action_id,
        "block_id": block_id,
        "text": {"type": "plain_text", "text": button_text, "emoji": True},
        "value": value,
        "type": "button",
        "action_ts": _now_ts(),
    }
    if style is not None:
        action["style"] = style
    if message_blocks is None:
        button = {k: action[k] for k in ("type", "action_id", "text", "value")}
        if style is not None:
            button["style"] = style
        message_blocks = [{"type": "actions", "block_id": block_id, "elements": [button]}]
    name = user_name if user_name is not None else user_id.lower()
    payload: dict[str, Any] = {
        "type": "block_actions",
        "user": {"id": user_id, "username": name, "name": name, "team_id": team_id},
        "api_app_id": api_app_id,
        "token": VERIFICATION_TOKEN,
        "container": {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": channel_id,
            "is_ephemeral": is_ephemeral,
        },
        "trigger_id": trigger_id if trigger_id is not None else _trigger_id(),
        "team": {"id": team_id, "domain": team_domain},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": channel_id, "name": channel_name},
        "state": {"values": {}},
        "response_url": response_url,
        "actions": [action],
    }
    # Slack leaves the message out of the payload when the clicked message is ephemeral.
    if not is_ephemeral:
        payload["message"] = {
            "bot_id": BOT_ID,
            "type": "message",
            "text": message_text,
            "user": BOT_USER_ID,
            "ts": message_ts,
            "app_id": api_app_id,
            "blocks": message_blocks,
            "team": team_id,
        }
    return payload


def block_action(
    action_id: str,
    value: str,
    *,
    user_id: str,
    channel_id: str,
    message_ts: str,
    response_url: str,
    block_id: str | None = None,
    message_blocks: list[dict[str, Any]] | None = None,
    message_text: str = "",
    button_text: str = "Button",
    style: str | None = None,
    is_ephemeral: bool = False,
    user_name: str | None = None,
    channel_name: str = "incidents",
    team_id: str = TEAM_ID,
    team_domain: str = TEAM_DOMAIN,
    api_app_id: str = APP_ID,
    trigger_id: str | None = None,
) -> bytes:
    """``payload=<urlencoded JSON>`` of a ``block_actions`` click (send with ``FORM``)."""
    payload = block_action_payload(
        action_id,
        value,
        user_id=user_id,
        channel_id=channel_id,
        message_ts=message_ts,
        response_url=response_url,
        block_id=block_id,
        message_blocks=message_blocks,
        message_text=message_text,
        button_text=button_text,
        style=style,
        is_ephemeral=is_ephemeral,
        user_name=user_name,
        channel_name=channel_name,
        team_id=team_id,
        team_domain=team_domain,
        api_app_id=api_app_id,
        trigger_id=trigger_id,
    )
    return urlencode({"payload": json.dumps(payload)}).encode()


def overflow_action_payload(
    action_id: str,
    value: str,
    *,
    user_id: str,
    channel_id: str,
    message_ts: str,
    response_url: str,
    message_blocks: list[dict[str, Any]],
    option_text: str = "Option",
) -> dict[str, Any]:
    """A ``block_actions`` payload for a choice in an overflow menu of ``message_blocks``.

    Slack sends the chosen option as ``selected_option`` (an overflow has no ``value``); the
    block is the one whose menu offers ``value``, as on Slack.
    """
    block_id = next(
        (
            str(block.get("block_id"))
            for block in message_blocks
            if any(
                option.get("value") == value
                for option in (block.get("accessory") or {}).get("options") or ()
            )
        ),
        None,
    )
    payload = block_action_payload(
        action_id,
        value,
        user_id=user_id,
        channel_id=channel_id,
        message_ts=message_ts,
        response_url=response_url,
        block_id=block_id,
        message_blocks=message_blocks,
    )
    clicked = payload["actions"][0]
    payload["actions"] = [
        {
            "type": "overflow",
            "action_id": action_id,
            "block_id": clicked["block_id"],
            "selected_option": {
                "text": {"type": "plain_text", "text": option_text, "emoji": True},
                "value": value,
            },
            "action_ts": clicked["action_ts"],
        }
    ]
    return payload


# --------------------------------------------------------------------------- Events API


def event_callback_payload(
    event: Mapping[str, Any],
    *,
    team_id: str = TEAM_ID,
    api_app_id: str = APP_ID,
    event_id: str | None = None,
    event_time: int | None = None,
) -> dict[str, Any]:
    """The ``event_callback`` envelope around ``event``, as Slack wraps every event."""
    return {
        "token": VERIFICATION_TOKEN,
        "team_id": team_id,
        "api_app_id": api_app_id,
        "event": dict(event),
        "type": "event_callback",
        "event_id": event_id if event_id is not None else _rand_id("Ev"),
        "event_time": int(time.time()) if event_time is None else event_time,
        "authorizations": [
            {
                "enterprise_id": None,
                "team_id": team_id,
                "user_id": BOT_USER_ID,
                "is_bot": True,
                "is_enterprise_install": False,
            }
        ],
        "is_ext_shared_channel": False,
    }


def event_callback(
    event: Mapping[str, Any],
    *,
    team_id: str = TEAM_ID,
    api_app_id: str = APP_ID,
    event_id: str | None = None,
    event_time: int | None = None,
) -> bytes:
    """A JSON ``event_callback`` body (send with ``content_type=JSON``)."""
    return json.dumps(
        event_callback_payload(
            event,
            team_id=team_id,
            api_app_id=api_app_id,
            event_id=event_id,
            event_time=event_time,
        )
    ).encode()


def app_home_opened_event(
    user_id: str, *, channel_id: str | None = None, tab: str = "home"
) -> dict[str, Any]:
    """The inner ``app_home_opened`` event. Slack omits ``view`` until a view was published."""
    return {
        "type": "app_home_opened",
        "user": user_id,
        "channel": channel_id if channel_id is not None else _rand_id("D"),
        "tab": tab,
        "event_ts": _now_ts(),
    }


def app_home_opened(user_id: str, *, channel_id: str | None = None, tab: str = "home") -> bytes:
    """A JSON ``event_callback`` body carrying an ``app_home_opened`` event."""
    return event_callback(app_home_opened_event(user_id, channel_id=channel_id, tab=tab))


def url_verification(challenge: str) -> bytes:
    """The JSON body Slack sends when a Request URL is saved (send with ``JSON``)."""
    return json.dumps(
        {"token": VERIFICATION_TOKEN, "challenge": challenge, "type": "url_verification"}
    ).encode()


# --------------------------------------------------------------------------- client


@dataclass(frozen=True)
class SignedResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


# Tests talk to loopback servers only; an HTTP(S)_PROXY in the environment must not reroute
# them, so this opener deliberately ignores proxy settings.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def post_signed(
    url: str,
    body: bytes,
    *,
    signing_secret: str,
    content_type: str,
    timestamp: int | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> SignedResponse:
    """POST ``body`` signed like Slack does; non-2xx statuses are returned, not raised.

    ``timestamp`` defaults to now; pass an old one to exercise the replay window. ``headers``
    are added last, so they can override the signature to test rejection paths.
    """
    all_headers = {"Content-Type": content_type}
    all_headers.update(_signature_headers(body, signing_secret, timestamp))
    all_headers["User-Agent"] = "Slackbot 1.0 (+https://api.slack.com/robots)"
    if headers:
        all_headers.update(headers)
    request = urllib.request.Request(url, data=body, method="POST", headers=all_headers)
    try:
        with _opener.open(request, timeout=timeout) as resp:
            return SignedResponse(
                status=resp.status,
                headers={k.lower(): v for k, v in resp.headers.items()},
                body=resp.read(),
            )
    except urllib.error.HTTPError as err:
        return SignedResponse(
            status=err.code,
            headers={k.lower(): v for k, v in err.headers.items()},
            body=err.read(),
        )
