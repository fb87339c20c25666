"""The Bolt app: ``/celery``, button clicks and the App Home, as a thin face over the commands.

Acknowledging is the one thing that must never wait. The app runs with Bolt's
``process_before_response=True``, so each listener runs on the thread that received the
request (a waitress thread in HTTP mode, a Socket Mode worker thread) and its ack is the
response as soon as the listener returns: no executor hop and no 10 ms ack polling, and an
ack can never queue behind slow work. Anything that may block (asking workers or the
broker, a button's action, publishing the Home view) is handed to ``executor`` after the
ack and answers through the request's ``response_url`` or the Web API.

* Usage errors and commands that only read the in-memory store are answered in the ack
  itself: one message, no response_url use.
* Commands marked ``slow`` (``status``, ``workers``, ``queues``...) are acked with a short
  "asking the workers" line and the answer replaces it through the response_url.
* Replies are ephemeral unless the command line says ``--share``.
* Identity is only ever what the signed payload says: ``user_id`` of a command, ``user.id``
  of a click.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from slack_bolt import Ack, App, BoltContext
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from chatbot.commands.registry import Prepared
from chatbot.render import Message, unescape_mrkdwn
from chatbot.slack.client import make_webhook_client
from chatbot.slack.home import publish_home
from chatbot.slack.interfaces import SlackServices
from chatbot.slack.metrics import SlackMetrics
from chatbot.slackerrors import error_code
from chatbot.store.redis.connection import StoreUnavailable

log = logging.getLogger(__name__)

COMMAND = "/celery"
DEFAULT_EXECUTOR_THREADS = 32
# Slow answers waiting for a worker thread or a reply; beyond this a new slow command is
# refused at once rather than answered minutes later.
DEFAULT_MAX_PENDING = 64
_ANY = re.compile(r".*")
# Callables a transport runs once the ack has been written (see ``run_after_response``).
AFTER_RESPONSE_KEY = "chatops_after_response"
# How long a finished slow answer waits for its ack to go out when no transport reports it
# (a direct ``App.dispatch``); in HTTP and Socket Mode the transport reports it.
ACK_SENT_WAIT = 3.0


# -- buttons ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ActionClick:
    """One button click, as the signed ``block_actions`` payload describes it."""

    action_id: str
    value: str
    user_id: str  # who clicked: ``user.id`` of the signed payload, the only identity to trust
    channel_id: str
    message_ts: str
    response_url: str | None = None


@dataclass(frozen=True)
class ActionReply:
    """What to answer a click with: an ephemeral note to the clicker (``Message.ephemeral``)
    or, with ``replace_original``, a new version of the clicked message."""

    message: Message
    replace_original: bool = False


# Runs on the executor after the click was acknowledged; may block (it may ask the workers).
ActionHandler = Callable[[ActionClick], "ActionReply | None"]

# Slack user-group events: a changed membership must reach the authorizer's cache at once
# (a removed operator would otherwise keep their rights until the cache expires).
GROUP_EVENTS = ("subteam_members_changed", "subteam_updated")


def make_executor(max_workers: int = DEFAULT_EXECUTOR_THREADS) -> ThreadPoolExecutor:
    """The executor for work done after an ack; bigger than Bolt's default of 5 threads
    because each slow answer may wait seconds on workers that do not reply."""
    return ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="chatops-slack")


# -- the app ------------------------------------------------------------------------------------
def build_app(
    services: SlackServices,
    *,
    client: WebClient,
    signing_secret: str | None,
    executor: Executor,
    actions: Iterable[tuple[str, ActionHandler]] = (),
    metrics: SlackMetrics | None = None,
    command: str = COMMAND,
    max_pending: int = DEFAULT_MAX_PENDING,
    token_verification: bool = True,
) -> App:
    """A Bolt app answering ``command``, button clicks and the App Home.

    ``actions`` are ``(action_id, handler)`` pairs, each registered with Bolt's
    ``app.action()``: the click is acked at once and the handler runs on ``executor``. Clicks on
    other buttons (link buttons, retired layouts) are acked and ignored.

    ``signing_secret`` is required for HTTP mode. ``None`` (Socket Mode) still verifies HTTP
    requests, against a random secret: an app built for Socket Mode that is put behind the
    HTTP listener by mistake rejects everything instead of trusting unsigned requests.
    ``token_verification`` calls ``auth.test`` now, so a bad token fails at start-up.
    """
    if signing_secret is None:
        signing_secret = uuid.uuid4().hex + uuid.uuid4().hex
    if not signing_secret:
        raise ValueError("signing_secret is empty (SLACK_SIGNING_SECRET)")
    app = App(
        name="celery-chatops",
        client=client,
        signing_secret=signing_secret,
        token_verification_enabled=token_verification,
        process_before_response=True,
        listener_executor=executor,
        logger=logging.getLogger("chatbot.slack.bolt"),
    )
    face = _SlackFace(
        services,
        client=client,
        executor=executor,
        metrics=metrics if metrics is not None else SlackMetrics(),
        max_pending=max_pending,
    )
    app.command(command)(face.on_command)
    registered: set[str] = set()
    for action_id, handler in actions:
        if not action_id or len(action_id) > 255:
            raise ValueError("an action_id is 1 to 255 characters")
        if action_id in registered:
            raise ValueError(f"action {action_id!r} already has a handler")
        registered.add(action_id)
        app.action(action_id)(face.action_listener(action_id, handler))
    # Bolt runs the first listener that matches: this one only sees the ids nobody handles.
    app.block_action(_ANY)(face.on_unhandled_action)
    app.event("app_home_opened")(face.on_home_opened)
    for event in GROUP_EVENTS:
        app.event(event)(face.on_group_changed)
    # Events we are subscribed to but do not use (app_mention, message.im...) get a 200:
    # Bolt would answer 404, and Slack retries and eventually disables failing subscriptions.
    app.event(_ANY)(face.on_other_event)
    return app


def _response_type(message: Message) -> str:
    return "ephemeral" if message.ephemeral else "in_channel"


def _reference() -> str:
    return uuid.uuid4().hex[:8]


class _SlackFace:
    """The listeners; one instance per app, holding what they share."""

    def __init__(
        self,
        services: SlackServices,
        *,
        client: WebClient,
        executor: Executor,
        metrics: SlackMetrics,
        max_pending: int,
    ) -> None:
        self.services = services
        self.client = client
        self.executor = executor
        self.metrics = metrics
        self.max_pending = max_pending
        self._pending = 0
        self._pending_lock = threading.Lock()

    # -- /celery --------------------------------------------------------------------------
    def on_command(self, ack: Ack, body: dict[str, Any], context: BoltContext) -> None:
        started = time.perf_counter()
        user_id = str(body.get("user_id") or "")
        channel_id = str(body.get("channel_id") or "")
        response_url = body.get("response_url") or None
        # Slack sends the typed text HTML-escaped (&amp; &lt; &gt;); the parser wants it raw.
        text = unescape_mrkdwn(str(body.get("text") or ""))
        name = "unknown"
        acked = False
        try:
            prepared = self.services.dispatcher.prepare(text)
            name = prepared.name or "unknown"
            if prepared.reply is not None:
                self._ack_message(ack, prepared.reply)
                acked = True
                self.metrics.command(name, "ack", "usage")
            elif prepared.slow:
                acked = self._ack_slow(ack, context, prepared, user_id, channel_id, response_url)
            else:
                message = self.services.dispatcher.execute(
                    prepared, self.services.context(user_id, channel_id)
                )
                self._ack_message(ack, message)
                acked = True
                self.metrics.command(name, "ack", "ok")
        except Exception:
            reference = _reference()
            log.exception(
                "/celery %r failed (ref %s, user %s, channel %s)",
                name,
                reference,
                user_id,
                channel_id,
            )
            self.metrics.command(name, "ack", "error")
            if not acked:
                self._ack_message(ack, self._internal_error(name, reference))
        finally:
            self.metrics.ack_seconds("command", time.perf_counter() - started)

    def _ack_slow(
        self,
        ack: Ack,
        context: BoltContext,
        prepared: Prepared,
        user_id: str,
        channel_id: str,
        response_url: str | None,
    ) -> bool:
        name = prepared.name
        share = prepared.share
        if not response_url:
            # Nowhere to answer later; say so rather than block the ack on workers.
            ack(text=f"`/celery {name}` needs a response_url to answer, and Slack sent none.")
            self.metrics.command(name, "ack", "error")
            return True
        if not self._reserve():
            self.metrics.refused_busy()
            ack(
                text=f":hourglass: Too many answers in progress to run `/celery {name}` now;"
                " try again in a minute.",
                response_type="ephemeral",
            )
            self.metrics.command(name, "ack", "busy")
            return True
        # The answer may be ready before the ack has left (the broker answers in a millisecond);
        # posted first, it would be overwritten by the placeholder. It waits for the ack.
        ack_sent = threading.Event()
        context.setdefault(AFTER_RESPONSE_KEY, []).append(ack_sent.set)
        try:
            self.executor.submit(
                self._answer_later, prepared, user_id, channel_id, response_url, ack_sent
            )
        except Exception:
            self._release()  # the executor is shutting down: nothing will answer
            raise
        # The placeholder has the answer's visibility, so the answer can replace it.
        ack(
            text=f":hourglass: Asking the workers and the broker for `/celery {name}`…",
            response_type="in_channel" if share else "ephemeral",
        )
        return True

    def _answer_later(
        self,
        prepared: Prepared,
        user_id: str,
        channel_id: str,
        response_url: str,
        ack_sent: threading.Event,
    ) -> None:
        name = prepared.name
        try:
            try:
                message = self.services.dispatcher.execute(
                    prepared, self.services.context(user_id, channel_id)
                )
                outcome = "ok"
            except Exception:
                reference = _reference()
                log.exception(
                    "/celery %r failed after the ack (ref %s, user %s)", name, reference, user_id
                )
                message = self._internal_error(name, reference)
                outcome = "error"
            ack_sent.wait(ACK_SENT_WAIT)
            if message.approval_id and channel_id:
                posted = self._post_in_channel(message, channel_id, response_url, name)
            else:
                posted = self._post(response_url, message, replace_original=True, what=name)
            self.metrics.command(name, "response_url", outcome if posted else "undelivered")
        finally:
            self._release()

    # -- buttons --------------------------------------------------------------------------
    def action_listener(
        self, action_id: str, handler: ActionHandler
    ) -> Callable[[Ack, dict[str, Any], dict[str, Any]], None]:
        """The Bolt listener for one ``action_id``: ack now, ``handler`` on the executor."""

        def on_action(ack: Ack, body: dict[str, Any], action: dict[str, Any]) -> None:
            started = time.perf_counter()
            # Acknowledged at once, before anything else, or Slack shows the clicker an error.
            ack()
            self.metrics.ack_seconds("action", time.perf_counter() - started)
            click = _click(body, action)
            if not click.user_id:
                log.warning("block_actions payload without user.id for %r; ignored", action_id)
                self.metrics.action(action_id, "ignored")
                return
            self._submit(self._run_action, action_id, handler, click)

        return on_action

    def on_unhandled_action(self, ack: Ack, action: dict[str, Any]) -> None:
        started = time.perf_counter()
        # Every click is acknowledged, handled or not, or Slack shows an error.
        ack()
        self.metrics.ack_seconds("action", time.perf_counter() - started)
        # Link buttons and buttons of retired layouts land here; nothing to do.
        log.debug("no handler for action %r", action.get("action_id"))
        self.metrics.action("unregistered", "ignored")

    def _run_action(self, action_id: str, handler: ActionHandler, click: ActionClick) -> None:
        try:
            reply = handler(click)
            outcome = "ok"
        except Exception:
            reference = _reference()
            log.exception(
                "action %r failed (ref %s, user %s, channel %s)",
                action_id,
                reference,
                click.user_id,
                click.channel_id,
            )
            reply = ActionReply(self._internal_error(action_id, reference))
            outcome = "error"
        self.metrics.action(action_id, outcome)
        if reply is None:
            return
        if not click.response_url:
            log.warning("action %r produced a reply but the click had no response_url", action_id)
            return
        self._post(
            click.response_url,
            reply.message,
            replace_original=reply.replace_original,
            what=action_id,
        )

    # -- App Home and other events --------------------------------------------------------
    def on_home_opened(self, event: dict[str, Any]) -> None:
        started = time.perf_counter()
        user_id = str(event.get("user") or "")
        if event.get("tab", "home") == "home" and user_id:
            self._submit(self._publish_home, user_id)
        self.metrics.ack_seconds("event", time.perf_counter() - started)

    def _publish_home(self, user_id: str) -> None:
        try:
            publish_home(self.services, self.client, user_id)
        except StoreUnavailable as exc:  # a dependency down, not a bug: no traceback
            log.warning("publishing the App Home for %s: %s", user_id, exc)
            self.metrics.home_publish("unavailable")
        except Exception:
            log.exception("publishing the App Home for %s failed", user_id)
            self.metrics.home_publish("error")
        else:
            self.metrics.home_publish("ok")

    def on_group_changed(self, event: dict[str, Any]) -> None:
        """A user group changed: drop cached memberships, so rights follow it at once."""
        started = time.perf_counter()
        subteam = event.get("subteam") or {}
        group = event.get("subteam_id") or (subteam.get("id") if isinstance(subteam, dict) else "")
        log.info(
            "user group %s changed (%s): forgetting cached memberships",
            group or "?",
            event.get("type"),
        )
        # In memory and cheap: done in the ack, so the next check already asks Slack.
        self.services.authorizer.forget_groups()
        self.metrics.ack_seconds("event", time.perf_counter() - started)

    def on_other_event(self, event: dict[str, Any]) -> None:
        log.debug("ignoring event %r", event.get("type"))

    # -- plumbing -------------------------------------------------------------------------
    def _ack_message(self, ack: Ack, message: Message) -> None:
        ack(
            text=message.text,
            blocks=message.blocks or None,
            response_type=_response_type(message),
        )

    def _post(
        self, response_url: str, message: Message, *, replace_original: bool, what: str
    ) -> bool:
        """Post to a response_url; failures are logged, never raised (no one is listening)."""
        try:
            webhook = make_webhook_client(response_url, like=self.client)
            response = webhook.send(
                text=message.text,
                blocks=message.blocks or None,
                response_type=_response_type(message),
                replace_original=replace_original,
            )
        except Exception:
            log.exception("posting the answer to %r to its response_url failed", what)
            self.metrics.response_post("error")
            return False
        if response.status_code != 200:
            # 404 used_url/expired_url: past 5 uses or 30 minutes; 400: the message itself.
            log.warning(
                "response_url refused the answer to %r: HTTP %s %s",
                what,
                response.status_code,
                (response.body or "")[:300],
            )
            self.metrics.response_post(f"http_{response.status_code}")
            return False
        self.metrics.response_post("ok")
        return True

    def _post_in_channel(
        self, message: Message, channel_id: str, response_url: str, what: str
    ) -> bool:
        """Post as the app (its ts lets the card be updated later), then tell the asker.

        Where the app may not post (a private channel it is not in), the card still goes out
        through the response_url, and can then be updated only when someone clicks it.
        """
        try:
            response = self.client.chat_postMessage(
                channel=channel_id, text=message.text, blocks=message.blocks or None
            )
        except SlackApiError as exc:
            code = error_code(exc) or "error"
            log.warning("could not post %r in %s (%s); answering in place", what, channel_id, code)
            return self._post(response_url, message, replace_original=True, what=what)
        ts = str(response.get("ts") or "")
        try:
            if message.approval_id and ts:
                self.services.approvals.attach_message(message.approval_id, channel_id, ts)
        except Exception:
            log.exception("recording where %r was posted failed", what)
        note = Message(text=f"Posted in this channel: `/celery {what}` is waiting there.")
        return self._post(response_url, note, replace_original=True, what=what)

    def _internal_error(self, name: str, reference: str) -> Message:
        try:
            return self.services.dispatcher.internal_error(name, reference)
        except Exception:
            log.exception("rendering the internal error message failed")
            return Message(text=f"Internal error; it has been logged (ref {reference}).")

    def _submit(self, fn: Callable[..., None], *args: Any) -> None:
        def run() -> None:
            try:
                fn(*args)
            except Exception:  # a bug in the plumbing itself; the executor would swallow it
                log.exception("background Slack work failed")
            finally:
                self.metrics.pending(-1)

        self.metrics.pending(1)
        try:
            self.executor.submit(run)
        except Exception:
            self.metrics.pending(-1)
            log.exception("could not schedule background Slack work (shutting down?)")

    def _reserve(self) -> bool:
        with self._pending_lock:
            if self._pending >= self.max_pending:
                return False
            self._pending += 1
        self.metrics.pending(1)
        return True

    def _release(self) -> None:
        with self._pending_lock:
            self._pending -= 1
        self.metrics.pending(-1)


def run_after_response(context: Mapping[str, Any]) -> None:
    """Tell listeners that the response to their request has been written.

    Transports call it with ``BoltRequest.context`` once the ack is on its way to Slack.
    """
    callbacks = context.get(AFTER_RESPONSE_KEY) or ()
    for callback in callbacks:
        try:
            callback()
        except Exception:
            log.exception("an after-response callback failed")


def _click(body: Mapping[str, Any], action: Mapping[str, Any]) -> ActionClick:
    user = body.get("user") or {}
    container = body.get("container") or {}
    channel = body.get("channel") or {}
    message = body.get("message") or {}
    return ActionClick(
        action_id=str(action.get("action_id") or ""),
        # A button carries ``value``; an overflow menu the chosen option's.
        value=str(action.get("value") or (action.get("selected_option") or {}).get("value") or ""),
        user_id=str(user.get("id") or ""),
        channel_id=str(channel.get("id") or container.get("channel_id") or ""),
        message_ts=str(container.get("message_ts") or message.get("ts") or ""),
        response_url=body.get("response_url") or None,
    )
