"""Web API and response_url clients with the retries slack_sdk leaves out by default.

slack_sdk retries only connection resets out of the box: a 429 raises at once, and a 5xx
from Slack's edge is not retried either. Alerts and approvals must survive both, so every
client made here retries, with slack_sdk's own handlers (``slack_sdk.http_retry``):

* connection errors (reset, refused, remote disconnect): ``ConnectionErrorRetryHandler``, told
  about refused and aborted connections too;
* HTTP 500, 502, 503 and 504 with backoff: ``ServerErrorRetryHandler``, widened to the gateway
  errors of Slack's edge;
* HTTP 429 after the ``Retry-After`` Slack sends: the one handler of our own, for what the
  built-in lacks (see :class:`RateLimitRetryHandler`).

The alert sender's client is the exception: it is made with ``retries=False``, because the
sender alone retries alert posts (see ``chatbot/alerts/sender.py``).
"""

from __future__ import annotations

import logging
import random
import time
from http.client import RemoteDisconnected
from ssl import SSLContext
from typing import TYPE_CHECKING
from urllib.error import URLError

from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.http_retry.builtin_interval_calculators import BackoffRetryIntervalCalculator
from slack_sdk.http_retry.handler import RetryHandler
from slack_sdk.http_retry.interval_calculator import RetryIntervalCalculator
from slack_sdk.http_retry.jitter import RandomJitter
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.webhook import WebhookClient

from chatbot.slackerrors import retry_after

if TYPE_CHECKING:
    from chatbot.config import Settings

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://slack.com/api/"
RETRYABLE_SERVER_STATUSES = frozenset({500, 502, 503, 504})
# Slack's usual penalties are a few seconds; anything longer is a sign to give up and report.
DEFAULT_MAX_RATE_LIMIT_WAIT = 30.0
USER_AGENT_PREFIX = "celery-chatops"
# The built-in handler's list names ConnectionResetError only; a refused or aborted connection
# (a restarting proxy) is as worth a retry.
CONNECTION_ERRORS: list[type[Exception]] = [URLError, ConnectionError, RemoteDisconnected]


def _backoff() -> RetryIntervalCalculator:
    return BackoffRetryIntervalCalculator(backoff_factor=0.5, jitter=RandomJitter())


class RateLimitRetryHandler(RateLimitErrorRetryHandler):
    """slack_sdk's 429 handler, with what it lacks: a cap on the wait, and any ``Retry-After``.

    The built-in sleeps ``int(Retry-After)`` however long that is (a worker thread held for
    minutes) and raises on an HTTP-date value. Here a wait over ``max_wait`` gives up at once,
    and the header is read by :func:`chatbot.slackerrors.retry_after` (seconds or date; about a
    second when missing or garbled).
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
        if not super()._can_retry(state=state, request=request, response=response, error=error):
            return False
        wait = retry_after(response)
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
        # A little jitter so that replicas penalised together do not retry together.
        time.sleep(retry_after(response) + random.random() * 0.5)
        state.next_attempt_requested = True
        state.increment_current_attempt()


class GatewayErrorRetryHandler(ServerErrorRetryHandler):
    """slack_sdk's 5xx handler (500 and 503) widened to 502 and 504 from Slack's edge."""

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


def retry_handlers(
    *, max_retries: int = 2, max_rate_limit_wait: float = DEFAULT_MAX_RATE_LIMIT_WAIT
) -> list[RetryHandler]:
    """A fresh set of handlers (they keep no state, but clients must not share a list)."""
    return [
        ConnectionErrorRetryHandler(
            max_retry_count=max_retries,
            interval_calculator=_backoff(),
            error_types=list(CONNECTION_ERRORS),
        ),
        RateLimitRetryHandler(max_retry_count=max_retries, max_wait=max_rate_limit_wait),
        GatewayErrorRetryHandler(max_retry_count=max_retries),
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
    retries: bool = True,
) -> WebClient:
    """The bot's Web API client, on ``base_url`` (``SLACK_API_URL``), with retries.

    ``retries=False``: no retry handler at all (an empty list; None would mean slack_sdk's
    defaults), for a caller that retries by itself, as the alert sender does.
    """
    handlers = (
        retry_handlers(max_retries=max_retries, max_rate_limit_wait=max_rate_limit_wait)
        if retries
        else []
    )
    return WebClient(
        token=token,
        base_url=base_url if base_url.endswith("/") else base_url + "/",
        timeout=timeout,
        proxy=proxy,
        ssl=ssl,
        user_agent_prefix=USER_AGENT_PREFIX,
        retry_handlers=handlers,
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
