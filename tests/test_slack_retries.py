"""Who retries a Slack call, and how Slack's failures are read, against the local Web API double.

The bot's WebClient retries with slack_sdk's handlers; the alert sender's client retries
nothing, so the sender is the one layer that retries alert posts, and never re-sends a post
Slack may already have accepted.
"""

from __future__ import annotations

import email.utils
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.http_retry.response import HttpResponse

from chatbot.alerts.sender import SlackSender
from chatbot.config import Settings
from chatbot.service import Service
from chatbot.slack.client import make_web_client, retry_handlers
from chatbot.slackerrors import error_code, retry_after, status_code
from chatbot.store.memory import MemoryStore
from tests.support.slack_api import MockSlackAPI

BOT_TOKEN = "xoxb-retries"
CHANNEL = "C0RETRY"
NOW = 1_800_000_000.0


@pytest.fixture
def api() -> Iterator[MockSlackAPI]:
    with MockSlackAPI() as server:
        yield server


@pytest.fixture
def sender(api: MockSlackAPI) -> Iterator[SlackSender]:
    client = make_web_client(BOT_TOKEN, api.url, retries=False)
    sender = SlackSender(client, min_interval=0.0, backoff=0.01, default_retry_after=0.2)
    yield sender
    sender.stop()


def _refused_url() -> str:
    """A local port nobody listens on: connecting is refused, nothing is sent."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/api/"


# -- reading Slack's failures --------------------------------------------------------------
def _with_retry_after(value: str) -> HttpResponse:
    return HttpResponse(status_code=429, headers={"Retry-After": [value]})


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after(_with_retry_after("7")) == 7.0
    date = email.utils.formatdate(NOW + 30, usegmt=True)
    assert retry_after(_with_retry_after(date), clock=lambda: NOW) == 30.0
    past = email.utils.formatdate(NOW - 30, usegmt=True)
    assert retry_after(_with_retry_after(past), clock=lambda: NOW) == 0.0


def test_retry_after_falls_back_when_missing_or_garbled() -> None:
    assert retry_after(HttpResponse(status_code=429, headers={}), 4.0) == 4.0
    assert retry_after(_with_retry_after("soon"), 4.0) == 4.0
    assert retry_after(None, 2.5) == 2.5


def test_error_code_and_status_of_a_refused_call(api: MockSlackAPI) -> None:
    api.fail_next("chat.postMessage", "channel_not_found")
    client = WebClient(token=BOT_TOKEN, base_url=api.url)
    with pytest.raises(SlackApiError) as refused:
        client.chat_postMessage(channel=CHANNEL, text="x")
    assert error_code(refused.value) == "channel_not_found"
    assert status_code(refused.value) == 200
    assert error_code(ValueError("no response")) is None
    assert status_code(ValueError("no response")) is None


# -- the bot's client: slack_sdk's handlers ------------------------------------------------
def test_the_bot_client_uses_slack_sdks_handlers() -> None:
    kinds = [type(handler) for handler in retry_handlers()]
    assert issubclass(kinds[0], ConnectionErrorRetryHandler)
    assert issubclass(kinds[1], RateLimitErrorRetryHandler)
    assert issubclass(kinds[2], ServerErrorRetryHandler)
    assert make_web_client(BOT_TOKEN, retries=False).retry_handlers == []


def test_the_bot_client_retries_a_gateway_error(api: MockSlackAPI) -> None:
    api.fail_next("chat.update", "bad_gateway", status=502)
    client = make_web_client(BOT_TOKEN, api.url)
    posted = client.chat_postMessage(channel=CHANNEL, text="first")
    client.chat_update(channel=CHANNEL, ts=str(posted["ts"]), text="edited")
    assert [c.status for c in api.calls("chat.update")] == [502, 200]


# -- the alert sender: the one retry layer -------------------------------------------------
def test_a_post_slack_may_have_accepted_is_not_sent_again(
    api: MockSlackAPI, sender: SlackSender
) -> None:
    api.fail_next("chat.postMessage", "internal_error", status=503)
    result = sender.post_message(CHANNEL, "disk full").result(10)
    assert not result.ok and result.error == "internal_error" and result.attempts == 1
    assert [c.status for c in api.calls("chat.postMessage")] == [503]
    health = sender.health()
    assert health.failed == 1 and health.retries == 0
    assert health.last_error is not None and "may have accepted" in health.last_error


def test_a_post_whose_answer_timed_out_is_not_sent_again(api: MockSlackAPI) -> None:
    def slow_post(params: dict[str, Any]) -> dict[str, Any]:
        answer.wait(30)  # Slack took the post, but answers after the client gave up
        return {"ok": True, "channel": params["channel"], "ts": "1800000000.000100"}

    answer = threading.Event()
    api.set_handler("chat.postMessage", slow_post)
    client = make_web_client(BOT_TOKEN, api.url, timeout=1, retries=False)
    sender = SlackSender(client, min_interval=0.0, backoff=0.01)
    try:
        result = sender.post_message(CHANNEL, "stuck task").result(30)
    finally:
        answer.set()
        sender.stop()
    assert not result.ok and result.error == "network_error" and result.attempts == 1
    assert len(api.wait_for("chat.postMessage", count=1)) == 1


def test_an_edit_is_retried_after_a_server_error(api: MockSlackAPI, sender: SlackSender) -> None:
    ts = sender.post_message(CHANNEL, "parent").result(10).ts
    assert ts is not None
    api.fail_next("chat.update", "internal_error", status=503)
    result = sender.update_message(CHANNEL, ts, "resolved").result(10)
    assert result.ok and result.attempts == 2
    assert [c.status for c in api.calls("chat.update")] == [503, 200]
    assert api.message(CHANNEL, ts)["text"] == "resolved"  # type: ignore[index]


def test_a_rate_limited_post_is_retried_by_the_sender_alone(
    api: MockSlackAPI, sender: SlackSender
) -> None:
    api.rate_limit_next("chat.postMessage", retry_after=1, count=2)
    result = sender.post_message(CHANNEL, "backlog").result(30)
    assert result.ok and result.attempts == 3
    assert [c.status for c in api.calls("chat.postMessage")] == [429, 429, 200]
    assert sender.health().rate_limited == 2


def test_a_post_that_never_reached_slack_is_retried_up_to_max_attempts() -> None:
    client = make_web_client(BOT_TOKEN, _refused_url(), retries=False)
    sender = SlackSender(client, min_interval=0.0, backoff=0.01, max_attempts=3)
    try:
        result = sender.post_message(CHANNEL, "worker offline").result(30)
    finally:
        sender.stop()
    assert not result.ok and result.error == "network_error" and result.attempts == 3
    assert sender.health().retries == 2


def test_the_services_alert_sender_tries_a_failing_post_once(
    api: MockSlackAPI, redis_url: str
) -> None:
    # With the client's handlers stacked under the sender's retries, this 503 was posted
    # again by the client (and again by the sender): one alert could land several times.
    settings = Settings(
        broker_url=redis_url,
        slack_bot_token=BOT_TOKEN,
        slack_api_url=api.url,
        alert_channel=CHANNEL,
    )
    service = Service(
        settings,
        store=MemoryStore(),
        consume_events=False,
        web_client=make_web_client(BOT_TOKEN, api.url),
    )
    try:
        assert service.alert_sender is not None
        api.fail_next("chat.postMessage", "internal_error", status=503)
        result = service.alert_sender.post_message(CHANNEL, "stuck task").result(10)
        assert not result.ok
        assert [c.status for c in api.calls("chat.postMessage")] == [503]
    finally:
        service.stop()
