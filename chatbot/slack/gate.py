"""What every HTTP request to ``/slack/events`` passes before Bolt sees it.

Bolt checks the signature in a middleware, but builds its ``BoltRequest`` (and parses the body
into a dict) before any middleware runs, and its listeners index the payload without looking:
a bad ``X-Slack-Request-Timestamp`` (``int("abc")``), a ``payload`` that is not JSON or not an
object, ``actions: []``, a ``user`` that is a string or a ``view_submission`` nobody listens to
all end as a 500 and a traceback in the log. :class:`RequestGate` answers them first:

1. **401** unless the request carries a well-formed timestamp and ``v0=`` signature, the
   timestamp is inside Slack's 5-minute window and the signature matches (slack_sdk's
   ``SignatureVerifier``, the one Bolt uses). Nothing unauthenticated is parsed.
2. **400** unless the body parses (Bolt's own parser, in a ``try``) into one of the shapes this
   app handles (:func:`payload_problem`), with the types its listeners rely on.
3. **Replays**: a signed request is answered once. Its ``(timestamp, signature)`` is recorded
   with ``RecordStore.create`` (atomic; on Redis, across replicas) for the 5-minute window, and
   a second arrival is acknowledged with an empty 200 and not run: a replayed ``revoke`` posts
   no second card. When the record store cannot be reached, an in-process window (bounded)
   still catches replays to this replica, and the fallback is counted.

Socket Mode requests arrive over the app's own authenticated WebSocket, unsigned; they go
through :func:`payload_problem` only (see ``chatbot/slack/socket_mode.py``).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from slack_bolt import BoltRequest
from slack_sdk.signature import SignatureVerifier

from chatbot.store import RecordStore

log = logging.getLogger(__name__)

# Slack refuses requests older than this; so do slack_sdk's verifier and Bolt.
REPLAY_WINDOW_SECONDS = 300
REPLAY_KIND = "slack-request"
# Seconds since the epoch: Slack sends 10 digits; anything longer is not a timestamp.
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"v0=[0-9a-f]{64}")
# Past this many requests remembered in-process (store down), the oldest are forgotten.
LOCAL_REPLAY_CAPACITY = 100_000
PRUNE_EVERY_SECONDS = 60.0

# The interactive payload types this app has listeners for (buttons only: it opens no modals).
INTERACTIVE_TYPES = frozenset({"block_actions"})
# The JSON (Events API) bodies it answers; Bolt answers url_verification itself.
JSON_TYPES = frozenset({"url_verification", "event_callback", "app_rate_limited"})


@dataclass(frozen=True)
class Verdict:
    """``status`` is None when the request may go to Bolt (then ``request`` is set)."""

    status: int | None
    reason: str = ""
    request: BoltRequest | None = None
    kind: str = ""  # what was refused: unauthenticated, malformed, replayed


def _header(headers: Mapping[str, str | Sequence[str]], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            if isinstance(value, str):
                return value
            values = list(value)
            return str(values[0]) if len(values) == 1 else None
    return None


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _optional(mapping: Mapping[str, Any], key: str, check: Callable[[Any], bool]) -> bool:
    """True when ``key`` is absent, null, or passes ``check``."""
    value = mapping.get(key)
    return value is None or check(value)


def _ref(value: Any) -> bool:
    """How Bolt's context extractors read ``user``, ``channel``, ``team`` and ``enterprise``:
    an id string, or an object whose ``id`` (if any) is a string."""
    if isinstance(value, str):
        return True
    return isinstance(value, dict) and _optional(value, "id", _is_str)


def _refs_problem(container: Mapping[str, Any], where: str) -> str | None:
    for key in ("user", "channel", "team", "enterprise"):
        if not _optional(container, key, _ref):
            return f"{where}{key} is neither an id nor an object with one"
    return None


def _action(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and _is_str(value.get("action_id"))
        and _optional(value, "block_id", _is_str)
        and _optional(value, "value", _is_str)
        and _optional(value, "type", _is_str)
        # An overflow menu's or a select's choice (chatbot/slack/app.py, _click)
        and _optional(
            value,
            "selected_option",
            lambda option: isinstance(option, dict) and _optional(option, "value", _is_str),
        )
    )


def _common(body: Mapping[str, Any]) -> str | None:
    """Fields Bolt reads from every payload (to build its context) before any listener."""
    problem = _refs_problem(body, "")
    if problem:
        return problem
    for key in ("team_id", "enterprise_id", "api_app_id", "token", "type"):
        if not _optional(body, key, _is_str):
            return f"{key} is not a string"
    if not _optional(body, "is_enterprise_install", lambda v: isinstance(v, (bool, str))):
        return "is_enterprise_install is not a boolean"
    authorizations = body.get("authorizations")
    if authorizations is not None and not (
        isinstance(authorizations, list) and all(isinstance(a, dict) for a in authorizations)
    ):
        return "authorizations is not a list of objects"
    return None


def _block_actions_problem(body: Mapping[str, Any]) -> str | None:
    user = body.get("user")
    if not (isinstance(user, dict) and _is_str(user.get("id"))):
        return "user is not an object with an id"
    actions = body.get("actions")
    if not (isinstance(actions, list) and actions and all(_action(a) for a in actions)):
        return "actions is not a non-empty list of actions"
    # Our listener (chatbot/slack/app.py, _click) reads these as objects.
    for key in ("container", "channel", "message"):
        if not _optional(body, key, lambda v: isinstance(v, dict)):
            return f"{key} is not an object"
    for key in ("response_url", "trigger_id"):
        if not _optional(body, key, _is_str):
            return f"{key} is not a string"
    return None


def _event_problem(body: Mapping[str, Any]) -> str | None:
    kind = body.get("type")
    if kind == "url_verification":
        return None if _is_str(body.get("challenge")) else "challenge is not a string"
    if kind == "event_callback":
        event = body.get("event")
        if not (isinstance(event, dict) and _is_str(event.get("type"))):
            return "event is not an object with a type"
        # Bolt's extractors descend into these when they are objects.
        for name, inner in (
            ("event.", event),
            *(
                (f"event.{key}.", event[key])
                for key in ("message", "previous_message", "item", "assistant_thread")
                if isinstance(event.get(key), dict)
            ),
        ):
            problem = _refs_problem(inner, name)
            if problem:
                return problem
        if event["type"] == "app_home_opened" and not (
            _is_str(event.get("user")) and _optional(event, "tab", _is_str)
        ):
            return "app_home_opened without a user id"  # the Home is published for it
    return None


def payload_problem(body: Any) -> str | None:
    """Why Bolt's parsed ``body`` is not a request this app handles, or None when it is.

    Written out by hand: Slack publishes no schema for these payloads, and only the fields
    that Bolt and our listeners (``chatbot/slack/app.py``) read need a type.
    """
    if not isinstance(body, dict):
        return "the body is not an object"
    if not body:
        return "the body is empty"
    problem = _common(body)
    if problem:
        return problem
    if "command" in body:
        for key in ("command", "text", "user_id", "channel_id", "response_url", "trigger_id"):
            if not _optional(body, key, _is_str):
                return f"{key} is not a string"
        return None
    if body.get("ssl_check") is not None:
        return None
    kind = body.get("type")
    if kind in INTERACTIVE_TYPES:
        return _block_actions_problem(body)
    if kind in JSON_TYPES:
        return _event_problem(body)
    return f"a {kind!r} request is not one this app handles" if kind else "no request type"


class _LocalReplays:
    """The replay window of this process alone: used while the record store is unreachable."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._expires: dict[str, float] = {}
        self._order: deque[tuple[float, str, float]] = deque()  # (arrival, key, expires)
        self._lock = threading.Lock()

    def first(self, key: str, now: float, expires: float) -> bool:
        with self._lock:
            # Forget what arrived more than twice the window ago (nothing is kept longer),
            # or the oldest when full.
            while self._order and (
                self._order[0][0] < now - 2 * REPLAY_WINDOW_SECONDS
                or len(self._order) >= self._capacity
            ):
                _, oldest, expires_then = self._order.popleft()
                if self._expires.get(oldest) == expires_then:  # not seen again since
                    del self._expires[oldest]
            known = self._expires.get(key)
            if known is not None and known > now:
                return False
            self._expires[key] = expires
            self._order.append((now, key, expires))
            return True


class RequestGate:
    """Signature, shape and replay checks for ``/slack/events`` (see the module docstring)."""

    def __init__(
        self,
        signing_secret: str,
        records: RecordStore | None,
        *,
        clock: Callable[[], float] = time.time,
        local_capacity: int = LOCAL_REPLAY_CAPACITY,
    ) -> None:
        if not signing_secret:
            raise ValueError("signing_secret is empty (SLACK_SIGNING_SECRET)")
        self._verifier = SignatureVerifier(signing_secret)
        self._records = records
        self._clock = clock
        self._local = _LocalReplays(local_capacity)
        self._lock = threading.Lock()
        self._pruning = False
        self._next_prune = clock() + PRUNE_EVERY_SECONDS
        self.counts: dict[str, int] = {
            "unauthenticated": 0,
            "malformed": 0,
            "replayed": 0,
            "replay_store_unavailable": 0,
        }

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def health(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def check(self, body: str, query: str, headers: Mapping[str, str | Sequence[str]]) -> Verdict:
        timestamp = _header(headers, "x-slack-request-timestamp")
        signature = _header(headers, "x-slack-signature")
        if (
            timestamp is None
            or signature is None
            or not _TIMESTAMP.fullmatch(timestamp)
            or not _SIGNATURE.fullmatch(signature)
            or not self._verifier.is_valid(body=body, timestamp=timestamp, signature=signature)
        ):
            self._count("unauthenticated")
            return Verdict(401, "invalid request signature or timestamp", kind="unauthenticated")
        try:
            request = BoltRequest(body=body, query=query, headers=dict(headers))
        except Exception as exc:  # Bolt's parser: JSONDecodeError, AttributeError, TypeError...
            self._count("malformed")
            return Verdict(
                400, f"the body cannot be parsed ({type(exc).__name__})", kind="malformed"
            )
        problem = payload_problem(request.body)
        if problem:
            self._count("malformed")
            return Verdict(400, problem, kind="malformed")
        if not self._first_arrival(f"{timestamp}:{signature}", int(timestamp)):
            self._count("replayed")
            return Verdict(200, "replayed request; answered once already", kind="replayed")
        return Verdict(None, request=request)

    def _first_arrival(self, key: str, timestamp: int) -> bool:
        now = self._clock()
        # Remembered for as long as Slack's verifier would accept the same request: until its
        # timestamp leaves the window (up to twice the window for a clock running ahead).
        ttl = max(1.0, timestamp + REPLAY_WINDOW_SECONDS - now + 1.0)
        local_first = self._local.first(key, now, now + ttl)
        if self._records is None:
            return local_first
        self._prune_now_and_then(now)
        try:
            return self._records.create(REPLAY_KIND, key, {"at": now}, ttl=ttl)
        except Exception as exc:
            # The shared window is out of reach: this replica's own window still holds.
            self._count("replay_store_unavailable")
            log.warning(
                "replay check: the record store is unavailable (%s); using this process's window",
                type(exc).__name__,
            )
            return local_first

    def _prune_now_and_then(self, now: float) -> None:
        """Expired records leave a kind's index only when the kind is listed (both
        RecordStore backends): list this kind now and then, on a thread of its own (the
        store may be slow), so the index does not grow with every request ever answered."""
        records = self._records
        with self._lock:
            if records is None or self._pruning or now < self._next_prune:
                return
            self._pruning = True
            self._next_prune = now + PRUNE_EVERY_SECONDS

        def prune() -> None:
            try:
                records.list(REPLAY_KIND)
            except Exception as exc:
                log.debug("pruning remembered requests failed: %s", exc)
            finally:
                with self._lock:
                    self._pruning = False

        threading.Thread(target=prune, name="chatops-replay-prune", daemon=True).start()
