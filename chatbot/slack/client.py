"""Web API and response_url clients with the retries slack_sdk leaves out by default.

slack_sdk retries only connection resets out of the box: a 429 raises at once, and a 5xx
from Slack's edge is not retried either. Alerts and approvals must survive both, so every
client made here retries:

* HTTP 429, after the ``Retry-After`` Slack sends (capped, so a long penalty fails fast
  instead of holding a worker thread for minutes);
* connection errors (reset, refused, remote disconnect);
* HTTP 500, 502, 503 and 504 (with backoff).
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from http.client import RemoteDisconnected
from ssl import SSLContext
from typing import TYPE_CHECKING
from urllib.error import URLError

from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_interval_calculators import BackoffRetryIntervalCalculator
from slack_sdk.http_retry.handler import RetryHandler
from slack_sdk.http_retry.interval_calculator import RetryIntervalCalculator
from slack_sdk.http_retry.jitter import RandomJitter
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.webhook import WebhookClient

if TYPE_CHECKING:
    from chatbot.config import Settings

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://slack.com/api/"
RETRYABLE_SERVER_STATUSES = frozenset({500, 502, 503, 504})
# Slack's usual penalties are a few seconds; anything longer is a sign to give up and report.
DEFAULT_MAX_RATE_LIMIT_WAIT = 30.0
USER_AGENT_PREFIX = "celery-chatops"


def _backoff() -> RetryIntervalCalculator:
    return BackoffRetryIntervalCalculator(backoff_factor=0.5, jitter=RandomJitter())


class RateLimitRetryHandler(RetryHandler):
    """Retries HTTP 429 after ``Retry-After`` seconds; gives up when that exceeds ``max_wait``.

    Unlike slack_sdk's builtin handler it also understands an HTTP-date ``Retry-After`` and
    a missing or garbled header (then it waits about a second, as Slack's docs suggest).
    """

    def __init__(self, max_retry_count: int = 2, max_wait: float = DEFAULT_MAX_RATE_LIMIT_WAIT):
        super().__init__(max_retry_count=max_retry_count)
        self.max_wait = max_wait

    def _can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        if response is None or response.status_code != 429:
            return False
        wait = retry_after_seconds(response)
        if wait > self.max_wait:
            log.warning(
                "Slack rate limit: Retry-After %gs exceeds %gs; not retrying %s",
                wait,
                self.max_wait,
                request.url,
            )
            return False
        return True

    def prepare_for_next_attempt(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> None:
        wait = retry_after_seconds(response) if response is not None else 1.0
        # A little jitter so that replicas penalised together do not retry together.
        time.sleep(wait + random.random() * 0.5)
        state.next_attempt_requested = True
        state.increment_current_attempt()


class ServerErrorRetryHandler(RetryHandler):
    """Retries 500, 502, 503 and 504 with exponential backoff (slack_sdk's covers 500/503)."""

    def __init__(self, max_retry_count: int = 2) -> None:
        super().__init__(max_retry_count=max_retry_count, interval_calculator=_backoff())

    def _can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        return response is not None and response.status_code in RETRYABLE_SERVER_STATUSES


class ConnectionRetryHandler(RetryHandler):
    """Retries a request that never got an HTTP answer (reset, refused, remote disconnect)."""

    def __init__(self, max_retry_count: int = 2) -> None:
        super().__init__(max_retry_count=max_retry_count, interval_calculator=_backoff())

    def _can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        if error is None or response is not None:
            return False  # an HTTP status is an answer; the other handlers judge it
        return isinstance(error, URLError | ConnectionError | RemoteDisconnected)


def retry_after_seconds(response: HttpResponse) -> float:
    """``Retry-After`` as seconds (delta or HTTP-date); 1 when missing or unreadable."""
    raw: str | None = None
    for name, values in response.headers.items():
        if name.lower() == "retry-after":
            raw = values[0] if isinstance(values, list | tuple) and values else str(values)
            break
    if raw is None:
        return 1.0
    raw = raw.strip()
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return 1.0
    return max(0.0, when.timestamp() - time.time())


def retry_handlers(
    *, max_retries: int = 2, max_rate_limit_wait: float = DEFAULT_MAX_RATE_LIMIT_WAIT
) -> list[RetryHandler]:
    """A fresh set of handlers (they keep no state, but clients must not share a list)."""
    return [
        ConnectionRetryHandler(max_retry_count=max_retries),
        RateLimitRetryHandler(max_retry_count=max_retries, max_wait=max_rate_limit_wait),
        ServerErrorRetryHandler(max_retry_count=max_retries),
    ]


def make_web_client(
    token: str,
    base_url: str = DEFAULT_API_URL,
    *,
    timeout: int = 30,
    max_retries: int = 2,
    max_rate_limit_wait: float = DEFAULT_MAX_RATE_LIMIT_WAIT,
    proxy: str | None = None,
    ssl: SSLContext | None = None,
) -> WebClient:
    """The bot's Web API client, on ``base_url`` (``SLACK_API_URL``), with retries."""
    return WebClient(
        token=token,
        base_url=base_url if base_url.endswith("/") else base_url + "/",
        timeout=timeout,
        proxy=proxy,
        ssl=ssl,
        user_agent_prefix=USER_AGENT_PREFIX,
        retry_handlers=retry_handlers(
            max_retries=max_retries, max_rate_limit_wait=max_rate_limit_wait
        ),
    )


def web_client_from_settings(settings: Settings) -> WebClient:
    """``SLACK_BOT_TOKEN`` on ``SLACK_API_URL``."""
    return make_web_client(settings.slack_bot_token, settings.slack_api_url)


def make_webhook_client(
    url: str,
    *,
    like: WebClient | None = None,
    timeout: int = 10,
    max_retries: int = 2,
    max_rate_limit_wait: float = DEFAULT_MAX_RATE_LIMIT_WAIT,
) -> WebhookClient:
    """A client for one ``response_url``, with the same retries and the same proxy/TLS
    settings as ``like`` (the bot's WebClient), so a proxied deployment reaches it too."""
    return WebhookClient(
        url,
        timeout=timeout,
        proxy=like.proxy if like is not None else None,
        ssl=like.ssl if like is not None else None,
        user_agent_prefix=USER_AGENT_PREFIX,
        retry_handlers=retry_handlers(
            max_retries=max_retries, max_rate_limit_wait=max_rate_limit_wait
        ),
    )
