"""HTTP mode end to end: signed requests over the wire to the real listener and Bolt app.

Real parts everywhere but Slack: a real worker on a private Redis, the real Service, the
Bolt app behind waitress. Slack's side is ``MockSlackAPI`` (the Web API on SLACK_API_URL and
every response_url), which applies Block Kit validation to everything posted to it; ack
bodies are validated here with the same checks.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from slack_bolt import App, BoltRequest
from slack_sdk.errors import SlackApiError

from chatbot.commands import CommandSpec
from chatbot.config import Settings
from chatbot.render import Message
from chatbot.service import Service
from chatbot.slack import (
    ActionClick,
    ActionHandler,
    ActionReply,
    HttpServer,
    SlackMetrics,
    build_app,
    make_executor,
    make_web_client,
    run_after_response,
)
from chatbot.slack.http import MAX_HEADER_BYTES
from tests.support import wait_until
from tests.support.slack_api import Call, MockSlackAPI, validate_blocks
from tests.support.slack_payloads import (
    FORM,
    JSON,
    SignedResponse,
    block_action,
    event_callback,
    post_signed,
    signed_headers,
    slash_command,
    url_verification,
)
from tests.test_e2e_readonly import HOSTILE, Fleet, running_fleet, wait_running_for

SECRET = "http-test-signing-secret"
BOT_TOKEN = "xoxb-http-test"
USER = "U0ONCALL01"
CHANNEL = "C0INCIDENT"
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Stack:
    fleet: Fleet
    api: MockSlackAPI
    server: HttpServer
    clicks: list[ActionClick]
    metrics: SlackMetrics
    app: App

    @property
    def events_url(self) -> str:
        return self.server.url + "/slack/events"

    def command(
        self, text: str, name: str, *, user_id: str = USER, timestamp: int | None = None, **kw: Any
    ) -> SignedResponse:
        """POST ``/celery text`` signed; its response_url is recorded under ``name``."""
        body = slash_command(
            text, user_id=user_id, channel_id=CHANNEL, response_url=self.api.response_url(name)
        )
        return post_signed(
            self.events_url,
            body,
            signing_secret=SECRET,
            content_type=FORM,
            timestamp=timestamp,
            **kw,
        )

    def later(self, name: str) -> Call:
        """The one answer posted to response_url ``name`` (waits for it)."""
        (post,) = self.api.wait_for_response(name, timeout=60)
        assert post.status == 200, post.response  # the double accepted it: valid Block Kit
        return post


def button_handlers(fleet: Fleet, clicks: list[ActionClick]) -> list[tuple[str, ActionHandler]]:
    """The test buttons: approve (replaces the card), refuse (a note), broken (raises)."""

    def approve(click: ActionClick) -> ActionReply:
        clicks.append(click)
        done = fleet.service.renderer.render(
            "error.json.j2", error=f"approved {click.value}", usage="", help_hint=""
        )
        return ActionReply(Message(done.text, done.blocks, ephemeral=False), replace_original=True)

    def refuse(click: ActionClick) -> ActionReply:
        return ActionReply(Message(text="Only approvers may approve.", ephemeral=True))

    def broken(click: ActionClick) -> ActionReply:
        raise RuntimeError("secret internals")

    return [("test.approve", approve), ("test.refuse", refuse), ("test.broken", broken)]


@pytest.fixture(scope="module")
def stack(
    redis_url_factory: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with (
        running_fleet(redis_url_factory(), tmp_path_factory.mktemp("slack-http")) as fleet,
        MockSlackAPI() as api,
    ):
        executor = make_executor(8)
        clicks: list[ActionClick] = []
        metrics = SlackMetrics()
        app = build_app(
            fleet.service,
            client=make_web_client(BOT_TOKEN, api.url),
            signing_secret=SECRET,
            executor=executor,
            actions=button_handlers(fleet, clicks),
            metrics=metrics,
        )
        server = HttpServer(app, fleet.service, "127.0.0.1", 0, metrics=metrics).start()
        try:
            wait_running_for(fleet, 1.5)
            yield Stack(fleet, api, server, clicks, metrics, app)
        finally:
            server.stop()
            executor.shutdown(wait=True)


def ack_of(response: SignedResponse) -> dict[str, Any]:
    """The ack body of a slash command, checked as Slack would check it."""
    assert response.status == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert body["text"]
    assert validate_blocks(body.get("blocks", [])) == []
    return body


def shown(message: dict[str, Any]) -> str:
    """Everything a reader sees in a message: its text and every block's text."""
    return message["text"] + "\n" + json.dumps(message.get("blocks", []), ensure_ascii=False)


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with _opener.open(url, timeout=30) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


# -- the read-only commands, each against the real worker ----------------------------------------
def test_help_is_answered_in_the_ack(stack: Stack) -> None:
    ack = ack_of(stack.command("help", "help"))
    assert ack["response_type"] == "ephemeral"
    text = shown(ack)
    assert "/celery commands" in text
    for name in ("status", "tasks", "failed", "active", "stuck", "task", "workers", "queues"):
        assert f"/celery {name}" in text


def test_status_is_acked_then_answered_through_the_response_url(stack: Stack) -> None:
    ack = ack_of(stack.command("status", "status"))
    assert ack["response_type"] == "ephemeral"
    assert "blocks" not in ack  # a one-line placeholder
    assert "status" in ack["text"]
    answer = stack.later("status").params
    assert answer["replace_original"] is True
    assert answer["response_type"] == "ephemeral"
    text = shown(answer)
    assert "Celery status" in text
    assert "1 up" in text
    assert "fleet.fail" in text  # failing in the window
    assert "celery" in text  # the backlog of the worker's queue


def test_tasks(stack: Stack) -> None:
    text = shown(ack_of(stack.command("tasks", "tasks")))
    fleet = stack.fleet
    for task_id in (fleet.succeeded_id, fleet.failed_id, fleet.hanging_id):
        assert task_id in text


def test_failed_escapes_task_data(stack: Stack) -> None:
    ack = ack_of(stack.command("failed", "failed"))
    text = shown(ack)
    assert stack.fleet.failed_id in text
    assert "ValueError" in text
    assert stack.fleet.hostname in text
    # The hostile argument and exception text can ping, mention or link nobody.
    for raw in ("<!channel>", "<@U123>", "<https://x|y>"):
        assert raw not in text
    assert "&lt;!channel&gt;" in text
    assert "&lt;@U123&gt;" in text
    assert HOSTILE not in text


def test_active(stack: Stack) -> None:
    text = shown(ack_of(stack.command("active", "active")))
    assert stack.fleet.hanging_id in text
    assert "fleet.hang" in text
    assert stack.fleet.hostname in text


def test_stuck(stack: Stack) -> None:
    text = shown(ack_of(stack.command("stuck --over 1s", "stuck")))
    assert stack.fleet.hanging_id in text
    assert stack.fleet.succeeded_id not in text


def test_task_by_full_id_and_by_prefix(stack: Stack) -> None:
    fleet = stack.fleet
    full = shown(ack_of(stack.command(f"task {fleet.failed_id}", "task-full")))
    assert fleet.failed_id in full
    assert "Traceback" in full
    assert "<!channel>" not in full

    by_prefix = shown(ack_of(stack.command(f"task {fleet.succeeded_id[:8]}", "task-prefix")))
    assert fleet.succeeded_id in by_prefix
    assert "fleet.add" in by_prefix
    assert "(2, 3)" in by_prefix


def test_workers_asks_the_workers_after_the_ack(stack: Stack) -> None:
    ack = ack_of(stack.command("workers", "workers"))
    assert "blocks" not in ack
    text = shown(stack.later("workers").params)
    assert stack.fleet.hostname in text
    assert "prefork" in text  # inspect stats answered


def test_queues_reads_the_broker_after_the_ack(stack: Stack) -> None:
    ack_of(stack.command("queues", "queues"))
    text = shown(stack.later("queues").params)
    assert "celery" in text
    assert "waiting" in text
    assert "redis 127.0.0.1" in text  # the broker's name, without credentials


def test_share_posts_in_the_channel(stack: Stack) -> None:
    fast = ack_of(stack.command("failed --share", "failed-share"))
    assert fast["response_type"] == "in_channel"
    assert stack.fleet.failed_id in shown(fast)

    slow = ack_of(stack.command("workers --share", "workers-share"))
    assert slow["response_type"] == "in_channel"  # the placeholder, replaced by the answer
    answer = stack.later("workers-share").params
    assert answer["response_type"] == "in_channel"
    assert answer["replace_original"] is True


def test_usage_errors_are_one_line_and_stay_private(stack: Stack) -> None:
    for text in ("frobnicate --share", "failed --since soon", "task 00000000-dead"):
        ack = ack_of(stack.command(text, "usage"))
        assert ack["response_type"] == "ephemeral", text
        assert "Traceback" not in shown(ack)
        assert "Usage" in shown(ack)
    assert stack.api.responses("usage") == []


def test_slack_entities_in_the_typed_text_are_decoded(stack: Stack) -> None:
    # Slack sends what was typed HTML-escaped; `&lt;` must reach the parser as `<`.
    ack = ack_of(stack.command("tasks --name a&lt;b", "entities"))
    assert "a&lt;b" in shown(ack)  # echoed once escaped by the template, not twice


# -- signatures --------------------------------------------------------------------------------
def test_forged_and_replayed_requests_are_rejected_and_change_nothing(stack: Stack) -> None:
    before = stack.metrics.text()
    forged = stack.command("status", "forged", headers={"X-Slack-Signature": "v0=" + "0" * 64})
    assert forged.status == 401
    six_minutes_ago = int(time.time()) - 6 * 60
    replayed = stack.command("status", "replayed", timestamp=six_minutes_ago)
    assert replayed.status == 401
    wrong_secret = post_signed(
        stack.events_url,
        slash_command(
            "status",
            user_id=USER,
            channel_id=CHANNEL,
            response_url=stack.api.response_url("wrong-secret"),
        ),
        signing_secret="not-the-secret",
        content_type=FORM,
    )
    assert wrong_secret.status == 401
    # A valid request sent afterwards is answered; the rejected ones never were.
    ack_of(stack.command("status", "after-rejects"))
    stack.later("after-rejects")
    for name in ("forged", "replayed", "wrong-secret"):
        assert stack.api.responses(name) == []
    assert "forged" not in stack.metrics.text()
    assert before != stack.metrics.text()  # only the valid command was counted


def test_url_verification_challenge(stack: Stack) -> None:
    resp = post_signed(
        stack.events_url, url_verification("chal-123"), signing_secret=SECRET, content_type=JSON
    )
    assert resp.status == 200
    assert resp.json() == {"challenge": "chal-123"}


# -- health, metrics, routing ---------------------------------------------------------------
def test_healthz_is_200_with_json_once_connected(stack: Stack) -> None:
    status, headers, body = get(stack.server.url + "/healthz")
    assert status == 200
    assert headers["content-type"] == "application/json"
    report = json.loads(body)
    assert report["ok"] is True
    assert report["events_total"] > 0


def test_healthz_is_503_with_the_reason_until_the_consumer_connects(
    redis_url_factory: Callable[[], str],
) -> None:
    service = Service(Settings(broker_url=redis_url_factory()))
    server = HttpServer(None, service, "127.0.0.1", 0).start()
    try:
        status, headers, body = get(server.url + "/healthz")
        assert status == 503
        assert headers["content-type"] == "application/json"
        report = json.loads(body)
        assert report["ok"] is False
        assert "not connected" in report["reason"]

        service.start()
        wait_until(lambda: get(server.url + "/healthz")[0] == 200, timeout=60, what="200")
        assert json.loads(get(server.url + "/healthz")[2])["ok"] is True
    finally:
        server.stop()
        service.stop()


def test_metrics_is_prometheus_text(stack: Stack) -> None:
    ack_of(stack.command("failed", "metrics-failed"))
    status, headers, body = get(stack.server.url + "/metrics")
    assert status == 200
    assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = body.decode()
    assert "# TYPE flower_events_total counter" in text  # the service's
    for line in text.splitlines():
        assert line.startswith("#") or len(line.split(" ")) >= 2, line
    # The two registries' texts, joined, are one exposition: every family appears once.
    types = [line.split(" ")[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(types) == len(set(types)) and "chatops_slack_commands_total" in types
    families = {f.name: f for f in text_string_to_metric_families(text)}
    commands = {
        (s.labels["command"], s.labels["answer"], s.labels["outcome"]): s.value
        for s in families["chatops_slack_commands"].samples
        if s.name == "chatops_slack_commands_total"
    }
    assert commands[("failed", "ack", "ok")] >= 1
    ack_counts = {
        s.labels["kind"]: s.value
        for s in families["chatops_slack_ack_seconds"].samples
        if s.name == "chatops_slack_ack_seconds_count"
    }
    assert ack_counts["command"] >= 1


def test_other_paths_and_methods(stack: Stack) -> None:
    assert get(stack.server.url + "/")[0] == 404
    assert get(stack.server.url + "/slack/install")[0] == 404
    assert get(stack.server.url + "/slack/events")[0] == 405
    request = urllib.request.Request(stack.server.url + "/healthz", data=b"", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        _opener.open(request, timeout=30)
    assert err.value.code == 405


def test_a_socket_mode_app_behind_http_rejects_every_request(stack: Stack) -> None:
    # Built without a signing secret (Socket Mode), Bolt still verifies HTTP requests, against
    # a secret nobody knows: nothing unsigned or signed with a guess gets through.
    with ThreadPoolExecutor(2) as executor:
        app = build_app(
            stack.fleet.service,
            client=make_web_client(BOT_TOKEN, stack.api.url),
            signing_secret=None,
            executor=executor,
        )
        with HttpServer(app, stack.fleet.service, "127.0.0.1", 0) as server:
            body = slash_command("help", user_id=USER, channel_id=CHANNEL, response_url="x")
            for secret in ("", SECRET):
                resp = post_signed(
                    server.url + "/slack/events", body, signing_secret=secret, content_type=FORM
                )
                assert resp.status == 401


# -- buttons ----------------------------------------------------------------------------------
def click(stack: Stack, action_id: str, value: str, name: str, user_id: str) -> SignedResponse:
    body = block_action(
        action_id,
        value,
        user_id=user_id,
        channel_id=CHANNEL,
        message_ts="1700000000.000100",
        response_url=stack.api.response_url(name),
    )
    return post_signed(stack.events_url, body, signing_secret=SECRET, content_type=FORM)


def test_registered_button_handlers_get_the_signed_identity(stack: Stack) -> None:
    (approve, *_) = button_handlers(stack.fleet, [])
    with make_executor(1) as executor, pytest.raises(ValueError, match="already has a handler"):
        build_app(
            stack.fleet.service,
            client=make_web_client(BOT_TOKEN, stack.api.url),
            signing_secret=SECRET,
            executor=executor,
            actions=[approve, approve],
        )

    resp = click(stack, "test.approve", "req-42", "approve", "U0APPROVER")
    assert resp.status == 200
    assert resp.body == b""  # acknowledged at once, empty
    replaced = stack.later("approve").params
    assert replaced["replace_original"] is True
    assert replaced["response_type"] == "in_channel"
    assert "approved req-42" in replaced["text"]
    (seen,) = stack.clicks
    assert (seen.user_id, seen.value, seen.channel_id) == ("U0APPROVER", "req-42", CHANNEL)
    assert seen.message_ts == "1700000000.000100"

    assert click(stack, "test.refuse", "req-42", "refuse", "U0SOMEONE").status == 200
    note = stack.later("refuse").params
    assert note["replace_original"] is False
    assert note["response_type"] == "ephemeral"


def test_unhandled_and_failing_buttons_are_acknowledged(stack: Stack) -> None:
    assert click(stack, "nobody.handles.this", "v", "unhandled", USER).status == 200
    assert click(stack, "test.broken", "v", "broken", USER).status == 200
    note = stack.later("broken").params
    assert note["response_type"] == "ephemeral"
    assert "Internal error" in note["text"]
    assert "secret internals" not in shown(note)
    assert "Traceback" not in shown(note)
    assert stack.api.responses("unhandled") == []


# -- failures never reach the user as tracebacks ----------------------------------------------
def test_a_failing_command_is_one_line_with_a_reference(stack: Stack) -> None:
    def explode(args: Any, ctx: Any) -> Message:
        raise RuntimeError("secret internals")

    registry = stack.fleet.service.registry
    registry.register(CommandSpec("explode", "raises", "explode", explode), replace=True)
    registry.register(
        CommandSpec("explode-later", "raises", "explode-later", explode, slow=True), replace=True
    )
    fast = shown(ack_of(stack.command("explode", "explode")))
    assert "Internal error" in fast
    assert "secret internals" not in fast
    ack_of(stack.command("explode-later", "explode-later"))
    later = shown(stack.later("explode-later").params)
    assert "Internal error" in later
    assert "secret internals" not in later


# -- the Web API client --------------------------------------------------------------------
def test_rate_limited_response_url_is_retried_after_retry_after(stack: Stack) -> None:
    stack.api.rate_limit_next("response/ratelimited", retry_after=1)
    ack_of(stack.command("queues", "ratelimited"))
    first, second = stack.api.wait_for_response("ratelimited", count=2, timeout=60)
    assert first.status == 429
    assert second.status == 200
    assert second.params == first.params


def test_web_client_retries_429_and_5xx(stack: Stack) -> None:
    client = make_web_client(BOT_TOKEN, stack.api.url)
    stack.api.rate_limit_next("chat.postMessage", retry_after=1)
    stack.api.fail_next("chat.postMessage", "internal_error", status=503)
    assert client.chat_postMessage(channel=CHANNEL, text="after a 429 and a 503")["ok"] is True
    statuses = [c.status for c in stack.api.calls("chat.postMessage")[-3:]]
    assert statuses == [429, 503, 200]


def test_web_client_gives_up_on_a_long_retry_after(stack: Stack) -> None:
    client = make_web_client(BOT_TOKEN, stack.api.url, max_rate_limit_wait=0.5)
    stack.api.rate_limit_next("chat.update", retry_after=120)
    with pytest.raises(SlackApiError) as err:
        client.chat_update(channel=CHANNEL, ts="1.000001", text="x")
    assert err.value.response.status_code == 429


def test_the_answer_waits_for_its_ack(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    # Dispatched without a transport, nothing reports the ack as sent: the answer is held
    # until a transport would have said so (here: by hand), not for the fallback wait.
    monkeypatch.setattr("chatbot.slack.app.ACK_SENT_WAIT", 600.0)
    body = slash_command(
        "queues", user_id=USER, channel_id=CHANNEL, response_url=stack.api.response_url("held")
    )
    request = BoltRequest(
        body=body.decode(), headers=signed_headers(body, signing_secret=SECRET, content_type=FORM)
    )
    assert stack.app.dispatch(request).status == 200
    run_after_response(request.context)
    stack.later("held")


def test_events_the_app_does_not_use_still_get_a_200(stack: Stack) -> None:
    # A 404 would make Slack retry, and disable a subscription that keeps failing.
    mention = event_callback(
        {"type": "app_mention", "user": USER, "text": "<@U0CHATBOT1> hi", "channel": CHANNEL}
    )
    resp = post_signed(stack.events_url, mention, signing_secret=SECRET, content_type=JSON)
    assert resp.status == 200


def test_stop_lets_a_request_in_progress_finish(stack: Stack) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow_health() -> dict[str, Any]:
        entered.set()
        release.wait(30)
        return {"ok": True}

    server = HttpServer(None, stack.fleet.service, "127.0.0.1", 0, health=slow_health).start()
    url = server.url + "/healthz"
    with ThreadPoolExecutor(2) as pool:
        answer = pool.submit(get, url)
        assert entered.wait(30)
        port = server.port
        stopping = pool.submit(server.stop)
        # No new connections any more, while the one in progress is still being served.
        wait_until(lambda: not _accepts(port), timeout=30, what="the listener to close")
        assert not answer.done()
        release.set()
        status, _, body = answer.result(timeout=30)
        stopping.result(timeout=30)
    assert status == 200
    report = json.loads(body)
    assert report["ok"] is True and set(report) == {"ok", "http"}  # http: the listener's counts
    with pytest.raises(urllib.error.URLError):
        _opener.open(url, timeout=5)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return True
    except OSError:
        return False


def test_slow_commands_are_refused_at_once_when_too_many_are_pending(stack: Stack) -> None:
    metrics = SlackMetrics()
    with ThreadPoolExecutor(2) as executor:
        app = build_app(
            stack.fleet.service,
            client=make_web_client(BOT_TOKEN, stack.api.url),
            signing_secret=SECRET,
            executor=executor,
            metrics=metrics,
            max_pending=0,
        )
        body = slash_command(
            "workers", user_id=USER, channel_id=CHANNEL, response_url=stack.api.response_url("busy")
        )
        response = app.dispatch(
            BoltRequest(
                body=body.decode(),
                headers=signed_headers(body, signing_secret=SECRET, content_type=FORM),
            )
        )
    assert response.status == 200
    assert "try again" in json.loads(response.body)["text"]
    (refusals,) = (
        s.value
        for f in text_string_to_metric_families(metrics.text())
        for s in f.samples
        if s.name == "chatops_slack_busy_refusals_total"
    )
    assert refusals == 1
    assert stack.api.responses("busy") == []


def test_stop_ends_the_server_with_an_idle_keep_alive_connection_open(stack: Stack) -> None:
    before = set(threading.enumerate())
    server = HttpServer(None, stack.fleet.service, "127.0.0.1", 0).start()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as idle:
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
        received = b""
        while b"\r\n\r\n" not in received or not received.endswith(b"}"):
            received += idle.recv(65536)
        assert received.startswith(b"HTTP/1.1 200 ")
        # This server's loop thread and waitress's worker threads.
        started = {
            thread
            for thread in set(threading.enumerate()) - before
            if thread.name == "chatops-http" or thread.name.startswith("waitress-")
        }
        assert any(thread.name == "chatops-http" for thread in started)
        # The connection stays open and idle: it must not keep the server's loop alive.
        server.stop()
        assert [thread for thread in started if thread.is_alive()] == []
        assert idle.recv(65536) == b""  # closed by the server, not left hanging


def test_oversized_headers_are_refused_before_the_app(stack: Stack) -> None:
    request = urllib.request.Request(
        stack.server.url + "/healthz", headers={"X-Padding": "a" * (MAX_HEADER_BYTES + 1)}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        _opener.open(request, timeout=30)
    assert refused.value.code == 431
    assert get(stack.server.url + "/healthz")[0] == 200  # the server still answers
