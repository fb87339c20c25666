"""The Slack doubles exercised with the real clients: slack_sdk, slack_bolt and its adapters.

If these pass, a test that points the app at MockSlackAPI / MockSocketModeServer and feeds it
slack_payloads bodies is exercising the same wire format the app meets in production.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from slack_bolt import App, BoltRequest
from slack_bolt.adapter.socket_mode import SocketModeHandler
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
from slack_sdk.signature import SignatureVerifier
from slack_sdk.webhook import WebhookClient

from tests.support.slack_api import DEFAULT_SCOPES, MockSlackAPI
from tests.support.slack_payloads import (
    BOT_ID,
    BOT_USER_ID,
    FORM,
    JSON,
    TEAM_ID,
    app_home_opened,
    app_home_opened_event,
    block_action,
    event_callback_payload,
    post_signed,
    sign,
    signed_headers,
    slash_command,
    slash_command_fields,
    url_verification,
)
from tests.support.socket_mode import MockSocketModeServer

SECRET = "test-signing-secret"
BOT_TOKEN = "xoxb-test"
APP_TOKEN = "xapp-1-A0CHATOPS1-1-test"


def _blocks(text: str) -> list[dict[str, Any]]:
    return [
        {"type": "section", "block_id": "summary", "text": {"type": "mrkdwn", "text": text}},
        {
            "type": "actions",
            "block_id": "decision",
            "elements": [
                {
                    "type": "button",
                    "action_id": "approve",
                    "text": {"type": "plain_text", "text": "Approve"},
                    "value": "req-1",
                    "style": "primary",
                }
            ],
        },
    ]


@pytest.fixture
def api() -> Iterator[MockSlackAPI]:
    with MockSlackAPI() as server:
        yield server


@pytest.fixture
def client(api: MockSlackAPI) -> WebClient:
    return WebClient(token=BOT_TOKEN, base_url=api.url)


def _bolt_app(api: MockSlackAPI) -> App:
    return App(signing_secret=SECRET, client=WebClient(token=BOT_TOKEN, base_url=api.url))


# --------------------------------------------------------------------------- Web API


def test_url_is_a_base_for_slack_api_url(api: MockSlackAPI) -> None:
    assert api.url.startswith("http://127.0.0.1:")
    assert api.url.endswith("/")


def test_post_message_is_recorded_with_decoded_blocks(api: MockSlackAPI, client: WebClient) -> None:
    blocks = _blocks("*task failed*")
    resp = client.chat_postMessage(channel="C0ALERTS", text="task failed", blocks=blocks)

    (call,) = api.wait_for("chat.postMessage")
    assert call.params["channel"] == "C0ALERTS"
    assert call.params["blocks"] == blocks
    assert call.headers["authorization"] == f"Bearer {BOT_TOKEN}"
    assert call.token == BOT_TOKEN
    assert resp["channel"] == "C0ALERTS"
    assert resp["message"]["blocks"] == blocks
    assert resp["message"]["bot_id"] == BOT_ID
    assert call.response["ts"] == resp["ts"]
    assert api.message("C0ALERTS", resp["ts"])["text"] == "task failed"  # type: ignore[index]


def test_form_encoded_json_fields_are_decoded(api: MockSlackAPI, client: WebClient) -> None:
    # Some callers (and older slack_sdk methods) send blocks as a JSON string inside a form.
    blocks = _blocks("form")
    client.api_call(
        "chat.postMessage",
        params={"channel": "C1", "text": "form", "blocks": json.dumps(blocks)},
    )
    (call,) = api.calls("chat.postMessage")
    assert call.headers["content-type"].startswith(FORM)
    assert call.params["blocks"] == blocks
    assert call.params["text"] == "form"


def test_get_with_query_string(api: MockSlackAPI) -> None:
    # slack_sdk always POSTs, but Slack (and curl-style callers) also accept GET.
    api.set_usergroup("S0ONCALL", ["U1", "U2"])
    request = urllib.request.Request(
        api.url + "usergroups.users.list?usergroup=S0ONCALL",
        headers={"Authorization": f"Bearer {BOT_TOKEN}"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=30) as resp:
        body = json.loads(resp.read())
    (call,) = api.calls("usergroups.users.list")
    assert call.http_method == "GET"
    assert call.params["usergroup"] == "S0ONCALL"
    assert body["users"] == ["U1", "U2"]


def test_ts_values_are_unique_and_increasing(client: WebClient) -> None:
    stamps = [client.chat_postMessage(channel="C1", text=str(i))["ts"] for i in range(20)]
    assert len(set(stamps)) == len(stamps)
    assert [float(ts) for ts in stamps] == sorted(float(ts) for ts in stamps)


def test_auth_test_reports_identity_and_scopes(api: MockSlackAPI, client: WebClient) -> None:
    resp = client.auth_test()
    assert resp["ok"] is True
    assert resp["user_id"] == BOT_USER_ID
    assert resp["bot_id"] == BOT_ID
    assert resp["team_id"] == TEAM_ID
    assert resp["url"].startswith("https://")
    assert resp.headers["x-oauth-scopes"].split(",") == list(DEFAULT_SCOPES)

    api.set_scopes(["chat:write", "commands"])
    assert client.auth_test().headers["x-oauth-scopes"] == "chat:write,commands"


def test_missing_scope(api: MockSlackAPI, client: WebClient) -> None:
    api.set_scopes(["commands"])
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel="C1", text="x")
    assert err.value.response["error"] == "missing_scope"
    assert err.value.response["needed"] == "chat:write"


def test_rate_limited_call_is_retried_by_the_sdk_handler(api: MockSlackAPI) -> None:
    client = WebClient(
        token=BOT_TOKEN,
        base_url=api.url,
        retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=1)],
    )
    api.rate_limit_next("chat.postMessage", retry_after=1)

    resp = client.chat_postMessage(channel="C1", text="after a 429")

    assert resp["ok"] is True
    first, second = api.wait_for("chat.postMessage", count=2)
    assert (first.status, first.response["error"]) == (429, "ratelimited")
    assert second.status == 200
    assert second.params == first.params


def test_rate_limit_without_handler_raises_with_retry_after(
    api: MockSlackAPI, client: WebClient
) -> None:
    api.rate_limit_next("chat.update", retry_after=7)
    with pytest.raises(SlackApiError) as err:
        client.chat_update(channel="C1", ts="1.000001", text="x")
    assert err.value.response.status_code == 429
    assert err.value.response.headers["retry-after"] == "7"


@pytest.mark.parametrize(
    "error", ["not_in_channel", "channel_not_found", "is_archived", "message_limit_exceeded"]
)
def test_fail_next_gives_the_error_code_once(
    api: MockSlackAPI, client: WebClient, error: str
) -> None:
    api.fail_next("chat.postMessage", error=error)
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel="C1", text="x")
    assert err.value.response.status_code == 200
    assert err.value.response["error"] == error
    assert client.chat_postMessage(channel="C1", text="x")["ok"] is True


def test_fail_next_count_and_other_methods_unaffected(api: MockSlackAPI, client: WebClient) -> None:
    api.fail_next("chat.update", "message_not_found", count=2)
    client.chat_postMessage(channel="C1", text="unaffected")
    for _ in range(2):
        with pytest.raises(SlackApiError):
            client.chat_update(channel="C1", ts="1.000001", text="x")
    assert client.chat_update(channel="C1", ts="1.000001", text="x")["ok"] is True


@pytest.mark.parametrize("token", ["bogus", "xoxp-user-token", ""])
def test_invalid_auth(api: MockSlackAPI, token: str) -> None:
    client = WebClient(token=token or None, base_url=api.url)
    with pytest.raises(SlackApiError) as err:
        client.auth_test()
    assert err.value.response["error"] == ("not_authed" if not token else "invalid_auth")


def test_revoked_token(api: MockSlackAPI, client: WebClient) -> None:
    api.revoke_token(BOT_TOKEN)
    with pytest.raises(SlackApiError) as err:
        client.auth_test()
    assert err.value.response["error"] == "invalid_auth"


def test_app_token_only_opens_connections(api: MockSlackAPI, client: WebClient) -> None:
    app_client = WebClient(token=APP_TOKEN, base_url=api.url)
    with pytest.raises(SlackApiError) as err:
        app_client.chat_postMessage(channel="C1", text="x")
    assert err.value.response["error"] == "not_allowed_token_type"
    with pytest.raises(SlackApiError) as err:
        client.apps_connections_open(app_token=BOT_TOKEN)
    assert err.value.response["error"] == "not_allowed_token_type"


def test_unknown_method(client: WebClient) -> None:
    with pytest.raises(SlackApiError) as err:
        client.api_call("celery.revoke")
    assert err.value.response["error"] == "unknown_method"


def test_channel_state(api: MockSlackAPI, client: WebClient) -> None:
    api.set_channel("C0OLD", is_archived=True)
    api.set_channel("C0PRIV", is_member=False, is_private=True)
    api.set_channel("C0PUB", is_member=False)

    info = client.conversations_info(channel="C0OLD")["channel"]
    assert (info["is_archived"], info["is_member"]) == (True, True)
    assert client.conversations_info(channel="C0PRIV")["channel"]["is_member"] is False

    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel="C0OLD", text="x")
    assert err.value.response["error"] == "is_archived"
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel="C0PRIV", text="x")
    assert err.value.response["error"] == "channel_not_found"

    # chat:write.public lets a bot post to a public channel it has not joined...
    assert client.chat_postMessage(channel="C0PUB", text="x")["ok"] is True
    # ...and without it Slack answers not_in_channel.
    api.set_scopes([s for s in DEFAULT_SCOPES if s != "chat:write.public"])
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel="C0PUB", text="x")
    assert err.value.response["error"] == "not_in_channel"

    with pytest.raises(SlackApiError) as err:
        client.conversations_info(channel="not-a-channel")
    assert err.value.response["error"] == "channel_not_found"


def test_usergroups(api: MockSlackAPI, client: WebClient) -> None:
    api.set_usergroup("S0APPROVE", ["U0ALICE"])
    assert client.usergroups_users_list(usergroup="S0APPROVE")["users"] == ["U0ALICE"]
    with pytest.raises(SlackApiError) as err:
        client.usergroups_users_list(usergroup="S0NOPE")
    assert err.value.response["error"] == "no_such_subteam"


def test_update_ephemeral_delete(api: MockSlackAPI, client: WebClient) -> None:
    posted = client.chat_postMessage(channel="C1", text="pending", blocks=_blocks("pending"))
    updated = client.chat_update(
        channel="C1", ts=posted["ts"], text="approved", blocks=_blocks("approved by <@U1>")
    )
    assert updated["ts"] == posted["ts"]
    current = api.message("C1", posted["ts"])
    assert current is not None
    assert current["text"] == "approved"
    assert current["blocks"][0]["text"]["text"] == "approved by <@U1>"
    # The reply recorded for the original post keeps what was posted then.
    assert api.calls("chat.postMessage")[0].response["message"]["text"] == "pending"

    eph = client.chat_postEphemeral(channel="C1", user="U2", text="not allowed")
    assert float(eph["message_ts"]) > float(posted["ts"])

    client.chat_delete(channel="C1", ts=posted["ts"])
    assert api.message("C1", posted["ts"]) is None
    with pytest.raises(SlackApiError) as err:
        client.chat_update(channel="C1", ts=posted["ts"], text="again")
    assert err.value.response["error"] == "message_not_found"


def test_views_publish(api: MockSlackAPI, client: WebClient) -> None:
    view = {"type": "home", "blocks": _blocks("fleet")}
    resp = client.views_publish(user_id="U1", view=view)
    assert resp["view"]["type"] == "home"
    assert api.calls("views.publish")[0].params["view"] == view
    assert api.home_view("U1")["blocks"] == view["blocks"]  # type: ignore[index]


def test_block_kit_limits(client: WebClient) -> None:
    too_many = [{"type": "divider"}] * 51
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel="C1", text="x", blocks=too_many)
    assert err.value.response["error"] == "invalid_blocks"

    long_section = [{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}]
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel="C1", text="x", blocks=long_section)
    assert "/blocks/0/text" in err.value.response["errors"][0]


# slack_sdk warns client-side about the missing text before Slack rejects it.
@pytest.mark.filterwarnings("ignore:The top-level `text` argument is missing")
def test_message_needs_content(client: WebClient) -> None:
    with pytest.raises(SlackApiError) as err:
        client.chat_postMessage(channel="C1")
    assert err.value.response["error"] == "no_text"


def test_custom_handler(api: MockSlackAPI, client: WebClient) -> None:
    api.set_handler("team.info", lambda params: {"ok": True, "team": {"id": TEAM_ID}})
    assert client.team_info()["team"]["id"] == TEAM_ID


def test_wait_for_reports_what_was_received(api: MockSlackAPI, client: WebClient) -> None:
    client.auth_test()
    with pytest.raises(AssertionError, match=r"auth\.test"):
        api.wait_for("chat.postMessage", timeout=0.2)


def test_clear(api: MockSlackAPI, client: WebClient) -> None:
    api.fail_next("auth.test")
    api.clear()
    assert client.auth_test()["ok"] is True
    api.clear()
    assert api.calls() == []


# --------------------------------------------------------------------------- response_url


def test_response_url_posts_are_recorded_separately(api: MockSlackAPI) -> None:
    hook = WebhookClient(api.response_url("cmd-1"))
    resp = hook.send(text="done", response_type="ephemeral", replace_original=True)
    assert resp.status_code == 200
    (post,) = api.wait_for_response("cmd-1")
    assert post.params["text"] == "done"
    assert post.params["replace_original"] is True
    assert api.calls() == []
    assert api.responses("other") == []


def test_response_url_faults_and_use_limit(api: MockSlackAPI) -> None:
    hook = WebhookClient(api.response_url("cmd-2"))
    api.fail_next("response_url", "expired_url", status=404)
    failed = hook.send(text="late")
    assert failed.status_code == 404
    assert json.loads(failed.body)["error"] == "expired_url"

    statuses = [hook.send(text=str(i)).status_code for i in range(5)]
    # The failed post above counted as a use, as it would on Slack.
    assert statuses == [200, 200, 200, 200, 404]
    assert api.responses("cmd-2")[-1].response["error"] == "used_url"


# --------------------------------------------------------------------------- signed payloads


def test_sign_matches_slack_sdk() -> None:
    body = slash_command("status", user_id="U1", channel_id="C1", response_url="http://x/")
    ts = int(time.time())
    expected = SignatureVerifier(SECRET).generate_signature(timestamp=str(ts), body=body)
    assert sign(body, SECRET, ts) == expected


def test_slash_command_has_every_field_slack_sends() -> None:
    body = slash_command(
        "revoke abc --terminate", user_id="U1", channel_id="C1", response_url="http://r/"
    )
    fields = {k: v[0] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}
    assert set(fields) == {
        "token",
        "team_id",
        "team_domain",
        "channel_id",
        "channel_name",
        "user_id",
        "user_name",
        "command",
        "text",
        "api_app_id",
        "is_enterprise_install",
        "response_url",
        "trigger_id",
    }
    assert fields["command"] == "/celery"
    assert fields["text"] == "revoke abc --terminate"


def test_block_action_payload_is_consistent() -> None:
    body = block_action(
        "approve",
        "req-1",
        user_id="U1",
        channel_id="C1",
        message_ts="1700000000.000100",
        response_url="http://r/",
        message_blocks=_blocks("pending"),
    )
    (raw,) = parse_qs(body.decode())["payload"]
    payload = json.loads(raw)
    assert payload["type"] == "block_actions"
    assert payload["container"]["message_ts"] == payload["message"]["ts"]
    (action,) = payload["actions"]
    assert (action["action_id"], action["value"], action["type"]) == ("approve", "req-1", "button")
    # The block id is taken from the block that holds the button, as on Slack.
    assert action["block_id"] == "decision"


def test_bolt_dispatch_accepts_signed_and_rejects_forged(api: MockSlackAPI) -> None:
    app = _bolt_app(api)
    seen: list[str] = []

    @app.command("/celery")
    def celery(ack: Any, command: dict[str, Any]) -> None:
        seen.append(command["text"])
        ack(text=f"working on {command['text']}")

    body = slash_command(
        "failed", user_id="U1", channel_id="C1", response_url=api.response_url("failed")
    )

    def dispatch(headers: dict[str, str | Sequence[str]]) -> Any:
        return app.dispatch(BoltRequest(body=body.decode(), headers=headers))

    ok = dispatch(signed_headers(body, signing_secret=SECRET, content_type=FORM))
    assert ok.status == 200
    assert "working on failed" in ok.body
    assert seen == ["failed"]

    forged = dispatch(signed_headers(body, signing_secret="wrong", content_type=FORM))
    assert forged.status == 401
    stale = dispatch(
        signed_headers(
            body, signing_secret=SECRET, content_type=FORM, timestamp=int(time.time()) - 301
        )
    )
    assert stale.status == 401
    assert seen == ["failed"]


def test_bolt_dispatch_block_action_and_home(api: MockSlackAPI) -> None:
    app = _bolt_app(api)
    clicked: list[tuple[str, str]] = []

    @app.action("approve")
    def approve(ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        ack()
        clicked.append((body["user"]["id"], action["value"]))

    @app.event("app_home_opened")
    def home(event: dict[str, Any], client: WebClient) -> None:
        client.views_publish(user_id=event["user"], view={"type": "home", "blocks": []})

    click = block_action(
        "approve",
        "req-9",
        user_id="U7",
        channel_id="C1",
        message_ts="1700000000.000100",
        response_url=api.response_url("approval"),
    )
    resp = app.dispatch(
        BoltRequest(
            body=click.decode(),
            headers=signed_headers(click, signing_secret=SECRET, content_type=FORM),
        )
    )
    assert resp.status == 200

    opened = app_home_opened("U7")
    resp = app.dispatch(
        BoltRequest(
            body=opened.decode(),
            headers=signed_headers(opened, signing_secret=SECRET, content_type=JSON),
        )
    )
    assert resp.status == 200
    (publish,) = api.wait_for("views.publish")
    assert publish.params["user_id"] == "U7"
    assert clicked == [("U7", "req-9")]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def bolt_http(api: MockSlackAPI) -> Iterator[str]:
    """A Bolt app behind a real HTTP listener, so post_signed goes over the wire."""
    app = _bolt_app(api)

    @app.command("/celery")
    def celery(ack: Any, command: dict[str, Any]) -> None:
        ack(text=f"working on {command['text']}")

    server: WSGIServer = make_server(
        "127.0.0.1", 0, SlackRequestHandler(app), handler_class=_QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/slack/events"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_post_signed_over_http(api: MockSlackAPI, bolt_http: str) -> None:
    body = slash_command(
        "status", user_id="U1", channel_id="C1", response_url=api.response_url("s")
    )
    ok = post_signed(bolt_http, body, signing_secret=SECRET, content_type=FORM)
    assert ok.status == 200
    assert "working on status" in ok.text

    stale = post_signed(
        bolt_http,
        body,
        signing_secret=SECRET,
        content_type=FORM,
        timestamp=int(time.time()) - 301,
    )
    assert stale.status == 401

    forged = post_signed(
        bolt_http,
        body,
        signing_secret=SECRET,
        content_type=FORM,
        headers={"X-Slack-Signature": "v0=" + "0" * 64},
    )
    assert forged.status == 401

    challenge = post_signed(
        bolt_http, url_verification("abc123"), signing_secret=SECRET, content_type=JSON
    )
    assert challenge.status == 200
    assert challenge.json() == {"challenge": "abc123"}


# --------------------------------------------------------------------------- Socket Mode


@pytest.fixture
def socket_mode() -> Iterator[tuple[MockSocketModeServer, MockSlackAPI]]:
    with MockSocketModeServer() as sm, MockSlackAPI(socket_mode=sm) as api:
        yield sm, api


@pytest.fixture
def bolt_socket(
    socket_mode: tuple[MockSocketModeServer, MockSlackAPI],
) -> Iterator[tuple[App, SocketModeHandler, MockSocketModeServer, MockSlackAPI]]:
    sm, api = socket_mode
    app = App(client=WebClient(token=BOT_TOKEN, base_url=api.url))
    handler = SocketModeHandler(app, APP_TOKEN)
    try:
        yield app, handler, sm, api
    finally:
        # Closed before the servers stop, or the client would try to reconnect to them.
        handler.close()


def test_socket_mode_slash_command_ack_carries_response(
    bolt_socket: tuple[App, SocketModeHandler, MockSocketModeServer, MockSlackAPI],
) -> None:
    app, handler, sm, api = bolt_socket

    @app.command("/celery")
    def celery(ack: Any, command: dict[str, Any]) -> None:
        ack(text=f"working on {command['text']}", response_type="ephemeral")

    handler.connect()
    sm.wait_connected()
    (opened,) = api.calls("apps.connections.open")
    assert opened.token == APP_TOKEN

    fields = slash_command_fields(
        "stuck --over 10m", user_id="U1", channel_id="C1", response_url=api.response_url("x")
    )
    envelope_id = sm.send_envelope("slash_commands", fields)
    ack = sm.wait_for_ack(envelope_id, timeout=30)
    assert ack["envelope_id"] == envelope_id
    assert ack["payload"]["text"] == "working on stuck --over 10m"
    assert ack["payload"]["response_type"] == "ephemeral"


def test_socket_mode_event_reaches_listener(
    bolt_socket: tuple[App, SocketModeHandler, MockSocketModeServer, MockSlackAPI],
) -> None:
    app, handler, sm, api = bolt_socket

    @app.event("app_home_opened")
    def home(event: dict[str, Any], client: WebClient) -> None:
        client.views_publish(user_id=event["user"], view={"type": "home", "blocks": []})

    handler.connect()
    envelope_id = sm.send_envelope(
        "events_api", event_callback_payload(app_home_opened_event("U5"))
    )
    ack = sm.wait_for_ack(envelope_id, timeout=30)
    assert "payload" not in ack
    (publish,) = api.wait_for("views.publish", timeout=30)
    assert publish.params["user_id"] == "U5"


def test_socket_mode_disconnect_makes_the_client_reconnect(
    bolt_socket: tuple[App, SocketModeHandler, MockSocketModeServer, MockSlackAPI],
) -> None:
    app, handler, sm, api = bolt_socket

    @app.command("/celery")
    def celery(ack: Any) -> None:
        ack(text="still here")

    handler.connect()
    sm.wait_connected()
    sm.send_disconnect()
    sm.wait_connected(timeout=30, total=2)
    api.wait_for("apps.connections.open", count=2, timeout=30)

    fields = slash_command_fields("help", user_id="U1", channel_id="C1", response_url="http://r/")
    envelope_id = sm.send_envelope("slash_commands", fields)
    assert sm.wait_for_ack(envelope_id, timeout=30)["payload"]["text"] == "still here"
