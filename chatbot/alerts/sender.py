"""The outbound Slack queue for alerts: paced per channel, patient with rate limits, honest
about failures, and the ONE layer that retries an alert's calls.

Slack allows about one message per second per channel, and slack_sdk does not retry a 429
unless told to; ``message_limit_exceeded`` even arrives as HTTP 200 with ``ok: false``. So every
call goes through one FIFO queue per channel, served by its own daemon thread (never a thread
that acks Slack), spaced ``min_interval`` apart.

Retries happen here and nowhere else: the sender's ``WebClient`` must carry no retry handlers
(``make_web_client(..., retries=False)``). Stacked under this queue, the client's handlers
multiplied the tries (3 client tries for each of 5 sender attempts: 15, all while the channel's
lane waits), and they retried a ``chat.postMessage`` that Slack may already have accepted,
which posts the alert twice. Which failures are retried follows from what Slack can have done:

- HTTP 429 and ``ratelimited`` / ``rate_limited`` / ``message_limit_exceeded`` replies: Slack
  refused the call. Wait for ``Retry-After`` (or ``default_retry_after``) and retry the same
  call, keeping the order: a rate limit delays notices but never loses one.
- The request never reached Slack (urllib's ``URLError``: refused, DNS, failure while
  connecting or sending): retried with backoff, up to ``max_attempts``, for either method.
- Slack may have acted (a 5xx or ``internal_error``-like reply, a timeout or reset while waiting
  for the answer): a ``chat.update`` is retried as above (it sets the message to the same text
  again, so a repeat is harmless); a ``chat.postMessage`` is NOT, since a second post would be
  a second alert. It fails with the code and the alert manager posts the alert again on a
  later check (``failed_retry_after``), where a duplicate stays possible but is one per
  minute, not one per try.
- Anything else (``not_in_channel``, ``channel_not_found``, ``is_archived``, ``invalid_blocks``
  ...) fails that call at once: logged once per channel and code, counted, and kept in
  :meth:`SlackSender.health` until the channel works again, for ``status`` and ``/healthz``.
- Edits of one message that wait in the queue are coalesced: only the latest text is sent.
- An urgent post (a critical alert's first message: events are being lost, a queue is far
  past its threshold) goes ahead of every non-urgent call waiting in its channel, and is taken
  even when the queue is full: in a storm of warnings it is the one notice that must not wait
  behind them. It never passes another urgent post, nor a call already tried (that call's
  retry keeps the channel's rate-limit wait).

Every call returns a :class:`concurrent.futures.Future` of a :class:`SendResult`; nothing here
blocks its caller.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any
from urllib.error import URLError

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from chatbot.slackerrors import error_code, retry_after, status_code

log = logging.getLogger(__name__)

POST = "chat.postMessage"
UPDATE = "chat.update"

RATE_LIMIT_ERRORS = frozenset({"ratelimited", "rate_limited", "message_limit_exceeded"})
CHANNEL_ERRORS = frozenset({"not_in_channel", "channel_not_found", "is_archived"})
TRANSIENT_ERRORS = frozenset(
    {"internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)
QUEUE_FULL = "queue_full"
STOPPED = "sender_stopped"
NETWORK_ERROR = "network_error"
MAYBE_POSTED_HINT = "not posted again: Slack may have accepted it (no duplicate alerts)"

_HINTS = {
    "not_in_channel": "invite the bot to the channel (/invite @celery-chatops)",
    "channel_not_found": "check CHATOPS_ALERT_CHANNEL: the bot cannot see that channel",
    "is_archived": "the channel is archived: unarchive it or set another CHATOPS_ALERT_CHANNEL",
    "invalid_auth": "SLACK_BOT_TOKEN is not valid",
    "token_revoked": "SLACK_BOT_TOKEN was revoked",
    "account_inactive": "the bot's token belongs to a deactivated app or user",
    "missing_scope": "the app lacks the chat:write scope: reinstall it from the manifest",
}


@dataclass(frozen=True)
class SendResult:
    ok: bool
    method: str
    channel: str
    ts: str | None = None
    error: str | None = None
    attempts: int = 1


@dataclass(frozen=True)
class SenderHealth:
    """What ``status`` and ``/healthz`` show about posting alerts."""

    last_error: str | None  # e.g. "not_in_channel on C123 (chat.postMessage): invite the bot"
    last_error_at: float | None
    errors_by_code: dict[str, int]
    queued: int
    sent: int
    failed: int
    rate_limited: int  # rate-limit replies waited out (each one a delay, not a loss)
    retries: int
    channel_errors: dict[str, str] = field(default_factory=dict)  # channel -> its current error

    @property
    def ok(self) -> bool:
        """False while some channel is refusing our messages."""
        return not self.channel_errors

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "errors_by_code": dict(self.errors_by_code),
            "queued": self.queued,
            "sent": self.sent,
            "failed": self.failed,
            "rate_limited": self.rate_limited,
            "retries": self.retries,
            "channel_errors": dict(self.channel_errors),
        }


@dataclass(eq=False)
class _Item:
    method: str
    channel: str
    arguments: dict[str, Any]
    future: Future[SendResult]
    coalesce: tuple[str, str] | None = None
    urgent: bool = False
    attempts: int = 0
    not_before: float = 0.0


@dataclass
class _Lane:
    """One channel's queue and the thread that serves it."""

    items: deque[_Item] = field(default_factory=deque)
    thread: threading.Thread | None = None
    next_at: float = 0.0
    busy: bool = False


class SlackSender:
    """Paced, retrying delivery of ``chat.postMessage`` / ``chat.update`` calls.

    ``client`` is a ``slack_sdk.WebClient`` built by the caller (its ``base_url`` is
    ``SLACK_API_URL``) with no retry handlers (``retry_handlers=[]``): this class is the one
    layer that retries, and waits out rate limits without holding up other channels.
    """

    def __init__(
        self,
        client: WebClient,
        *,
        min_interval: float = 1.0,
        default_retry_after: float = 10.0,
        max_retry_after: float = 300.0,
        max_attempts: int = 5,
        backoff: float = 1.0,
        max_queue: int = 1000,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self.min_interval = max(0.0, min_interval)
        self.default_retry_after = default_retry_after
        self.max_retry_after = max_retry_after
        self.max_attempts = max(1, max_attempts)
        self.backoff = backoff
        self.max_queue = max_queue
        self._clock = clock
        self._wall = wall_clock
        self._cond = threading.Condition()
        self._lanes: dict[str, _Lane] = {}
        self._pending_updates: dict[tuple[str, str], _Item] = {}
        self._stopping = False
        # Health counters, guarded by _cond.
        self._sent = 0
        self._failed = 0
        self._rate_limited = 0
        self._retries = 0
        self._errors_by_code: dict[str, int] = {}
        self._channel_errors: dict[str, str] = {}
        self._last_error: str | None = None
        self._last_error_at: float | None = None
        self._logged: set[tuple[str, str]] = set()

    # -- submitting ------------------------------------------------------------------------------
    def post_message(
        self,
        channel: str,
        text: str,
        blocks: list[dict[str, Any]] | None = None,
        *,
        thread_ts: str | None = None,
        urgent: bool = False,
    ) -> Future[SendResult]:
        """Post a message; ``urgent`` puts it ahead of what waits (see the module notes)."""
        arguments: dict[str, Any] = {
            "channel": channel,
            "text": text,
            "blocks": blocks or [],
            # A notice names tasks and hosts, never links worth a preview.
            "unfurl_links": False,
            "unfurl_media": False,
        }
        if thread_ts:
            arguments["thread_ts"] = thread_ts
        return self._submit(_Item(POST, channel, arguments, Future(), urgent=urgent))

    def update_message(
        self, channel: str, ts: str, text: str, blocks: list[dict[str, Any]] | None = None
    ) -> Future[SendResult]:
        """Edit a message; a queued, not yet sent edit of the same message is replaced."""
        arguments = {"channel": channel, "ts": ts, "text": text, "blocks": blocks or []}
        key = (channel, ts)
        with self._cond:
            waiting = self._pending_updates.get(key)
            if waiting is not None and not self._stopping:
                waiting.arguments = arguments  # latest wins; the caller shares its future
                return waiting.future
        return self._submit(_Item(UPDATE, channel, arguments, Future(), coalesce=key))

    def _submit(self, item: _Item) -> Future[SendResult]:
        with self._cond:
            if self._stopping:
                item.future.set_result(SendResult(False, item.method, item.channel, error=STOPPED))
                return item.future
            if not item.urgent and self.queued_locked() >= self.max_queue:
                self._record_failure_locked(item, QUEUE_FULL, "the alert queue is full")
                item.future.set_result(
                    SendResult(False, item.method, item.channel, error=QUEUE_FULL)
                )
                return item.future
            lane = self._lanes.get(item.channel)
            if lane is None:
                lane = self._lanes[item.channel] = _Lane()
            if item.urgent:
                items = lane.items
                at = 0
                while at < len(items) and (items[at].urgent or items[at].attempts):
                    at += 1
                items.insert(at, item)
            else:
                lane.items.append(item)
            if item.coalesce is not None:
                self._pending_updates[item.coalesce] = item
            if lane.thread is None:
                lane.thread = threading.Thread(
                    target=self._serve,
                    args=(item.channel, lane),
                    name=f"chatops-slack-{item.channel}",
                    daemon=True,
                )
                lane.thread.start()
            self._cond.notify_all()
        return item.future

    # -- waiting and stopping ------------------------------------------------------------------
    def queued_locked(self) -> int:
        return sum(len(lane.items) + (1 if lane.busy else 0) for lane in self._lanes.values())

    def flush(self, timeout: float | None = None) -> bool:
        """Block until every queued call finished (sent or failed); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self.queued_locked() == 0, timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the threads; calls still waiting are cancelled (their futures say so)."""
        with self._cond:
            self._stopping = True
            dropped = [item for lane in self._lanes.values() for item in lane.items]
            for lane in self._lanes.values():
                lane.items.clear()
            self._pending_updates.clear()
            threads = [lane.thread for lane in self._lanes.values() if lane.thread is not None]
            self._cond.notify_all()
        for item in dropped:
            item.future.cancel()
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    # -- health ----------------------------------------------------------------------------------
    def health(self) -> SenderHealth:
        with self._cond:
            return SenderHealth(
                last_error=self._last_error,
                last_error_at=self._last_error_at,
                errors_by_code=dict(self._errors_by_code),
                queued=self.queued_locked(),
                sent=self._sent,
                failed=self._failed,
                rate_limited=self._rate_limited,
                retries=self._retries,
                channel_errors=dict(self._channel_errors),
            )

    # -- the lane threads ------------------------------------------------------------------------
    def _serve(self, channel: str, lane: _Lane) -> None:
        while True:
            with self._cond:
                item = self._next_locked(lane)
                if item is None:
                    lane.thread = None
                    self._cond.notify_all()
                    return
                lane.busy = True
                if item.coalesce is not None:
                    # From here on a new edit of this message queues behind this one.
                    self._pending_updates.pop(item.coalesce, None)
            try:
                outcome = self._attempt(item)
            except Exception as exc:  # a bug must not kill the lane and strand the queue
                log.exception("Unexpected error sending %s to %s", item.method, channel)
                outcome = SendResult(
                    False, item.method, channel, error=type(exc).__name__, attempts=item.attempts
                )
            with self._cond:
                lane.busy = False
                lane.next_at = self._clock() + self.min_interval
                if outcome is None:  # retry: back to the head of the lane, order kept
                    lane.items.appendleft(item)
                self._cond.notify_all()
            if outcome is not None and not item.future.done():
                item.future.set_result(outcome)

    def _next_locked(self, lane: _Lane) -> _Item | None:
        """Wait for the lane's next item and its turn; None once stopping or idle."""
        while True:
            if self._stopping:
                return None
            if not lane.items:
                # An idle lane ends its thread; the next submit starts a new one.
                return None
            head = lane.items[0]
            wait = max(lane.next_at, head.not_before) - self._clock()
            if wait <= 0:
                return lane.items.popleft()
            self._cond.wait(wait)

    def _attempt(self, item: _Item) -> SendResult | None:
        """One call. A result ends the item; None means "retry" (``not_before`` is set)."""
        item.attempts += 1
        try:
            if item.method == POST:
                response = self._client.chat_postMessage(**item.arguments)
            else:
                response = self._client.chat_update(**item.arguments)
        except SlackApiError as exc:
            status = status_code(exc)
            error = error_code(exc) or f"http_{status}"
            if status == 429 or error in RATE_LIMIT_ERRORS:
                delay = retry_after(exc.response, self.default_retry_after)
                return self._retry_rate_limited(item, error, delay)
            if (status is not None and status >= 500) or error in TRANSIENT_ERRORS:
                return self._retry_unless_maybe_posted(item, error)
            return self._fail(item, error)
        except URLError as exc:
            # urllib raises it only while connecting or sending: Slack never saw the request.
            return self._retry_transient(item, f"{NETWORK_ERROR}: {type(exc).__name__}")
        except OSError as exc:  # a timeout or reset while waiting for the answer
            return self._retry_unless_maybe_posted(item, f"{NETWORK_ERROR}: {type(exc).__name__}")
        ts = response.get("ts")
        with self._cond:
            self._sent += 1
            if self._channel_errors.pop(item.channel, None) is not None:
                log.info("Slack channel %s accepts alerts again", item.channel)
                self._logged = {k for k in self._logged if k[0] != item.channel}
        return SendResult(
            True,
            item.method,
            str(response.get("channel") or item.channel),
            ts=str(ts) if ts is not None else None,
            attempts=item.attempts,
        )

    def _retry_rate_limited(self, item: _Item, error: str, delay: float) -> SendResult | None:
        delay = min(max(delay, 0.0), self.max_retry_after)
        with self._cond:
            self._rate_limited += 1
            self._retries += 1
            self._count_locked(error)
        log.warning(
            "Slack rate limit (%s) on %s %s: retrying in %.1fs",
            error,
            item.method,
            item.channel,
            delay,
        )
        # Rate limits are waited out however often they come: a notice must not be lost.
        item.not_before = self._clock() + delay
        return None

    def _retry_unless_maybe_posted(self, item: _Item, error: str) -> SendResult | None:
        """Slack may have carried out the call: retry an edit, never a post (a duplicate)."""
        if item.method != POST:
            return self._retry_transient(item, error)
        # Logged once per channel and code by _fail, as every refusal is: a flapping Slack
        # must not flood the log every check.
        return self._fail(item, error.split(":", 1)[0], MAYBE_POSTED_HINT)

    def _retry_transient(self, item: _Item, error: str) -> SendResult | None:
        if item.attempts >= self.max_attempts:
            return self._fail(item, error.split(":", 1)[0])
        with self._cond:
            self._retries += 1
            self._count_locked(error.split(":", 1)[0])
        delay = self.backoff * (2 ** (item.attempts - 1))
        log.warning(
            "Slack %s to %s failed (%s), attempt %d of %d: retrying in %.1fs",
            item.method, item.channel, error, item.attempts, self.max_attempts, delay,
        )  # fmt: skip
        item.not_before = self._clock() + delay
        return None

    def _fail(self, item: _Item, error: str, hint: str | None = None) -> SendResult:
        hint = _HINTS.get(error, "") if hint is None else hint
        with self._cond:
            self._failed += 1
            self._record_failure_locked(item, error, hint)
            if error in CHANNEL_ERRORS:
                self._channel_errors[item.channel] = error
        return SendResult(False, item.method, item.channel, error=error, attempts=item.attempts)

    def _count_locked(self, error: str) -> None:
        self._errors_by_code[error] = self._errors_by_code.get(error, 0) + 1

    def _record_failure_locked(self, item: _Item, error: str, hint: str) -> None:
        self._count_locked(error)
        text = f"{error} on {item.channel} ({item.method})" + (f": {hint}" if hint else "")
        self._last_error = text
        self._last_error_at = self._wall()
        key = (item.channel, error)
        if key in self._logged:
            log.debug("Slack refused an alert message: %s", text)
        else:
            # Once per channel and code: a refusing channel must not flood the log every check.
            self._logged.add(key)
            log.error("Slack refused an alert message: %s", text)
