"""The alert lifecycle: one Slack message per problem, updated in its thread, resolved in place.

For every check the manager gets an :class:`~chatbot.alerts.rules.Evaluation` and reconciles it
with the alerts it keeps in the :class:`~chatbot.store.RecordStore` (kind ``alert``, one record
per key), so a restart with a shared backend neither re-posts nor forgets an open alert:

- a new condition posts one parent message to the alert channel (``pending`` until Slack
  accepted it: the record becomes ``open`` with the message's ``ts`` only then, so a retried
  or failed post never leaves a second message behind);
- while it stays open, a *significant* change (relative to what was last posted) adds one reply
  in the thread and edits the parent with the latest figures; anything less changes nothing
  in Slack: at most one update per alert per check;
- when it clears, a resolved notice goes into the thread and the parent is edited to say so;
- for ``alert_cooldown`` seconds after that, the same key coming back reopens the same message
  (a reply "firing again") instead of a new top-level post: a flapping queue is one thread;
- a key that cannot be judged this check (``Evaluation.held``) is left exactly as it is.

Silences (kind ``silence``, keyed by pattern, with a TTL) stop posting for matching keys: no new
message, no thread replies; they are shown on the parent message of an alert they cover, and a
muted alert that clears still has its parent edited, so the channel never shows a stale alarm.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from chatbot.alerts.rules import (
    CRITICAL,
    KINDS,
    SEVERITY_RANK,
    Condition,
    Evaluation,
    significant_change,
    split_key,
)
from chatbot.alerts.sender import SenderHealth, SendResult
from chatbot.config import Settings
from chatbot.render import Message, Renderer
from chatbot.store import RecordStore

log = logging.getLogger(__name__)

ALERT_RECORD = "alert"
SILENCE_RECORD = "silence"
RECORD_VERSION = 1

PENDING = "pending"  # the parent post is queued or in flight: no ts yet
OPEN = "open"
RESOLVED = "resolved"
FAILED = "failed"  # Slack refused the parent post; tried again after ``failed_retry_after``

PARENT_TEMPLATE = "alert.json.j2"
UPDATE_TEMPLATE = "alert_update.json.j2"
RESOLVED_TEMPLATE = "alert_resolved.json.j2"

# Buttons on a stuck-task alert; ``value`` is the task id. The Slack layer maps a click to a
# ``revoke <id>`` (``revoke <id> --terminate``) request made by the clicking user, which then
# goes through the approval flow like the typed command.
REVOKE_ACTION_ID = "chatops_alert_revoke"
TERMINATE_ACTION_ID = "chatops_alert_revoke_terminate"

MAX_PATTERN_LENGTH = 300
MAX_MUTE = 30 * 86400.0


class MessageSender(Protocol):
    """What the manager needs of :class:`~chatbot.alerts.sender.SlackSender`."""

    def post_message(
        self,
        channel: str,
        text: str,
        blocks: list[dict[str, Any]] | None = None,
        *,
        thread_ts: str | None = None,
        urgent: bool = False,
    ) -> Future[SendResult]: ...

    def update_message(
        self, channel: str, ts: str, text: str, blocks: list[dict[str, Any]] | None = None
    ) -> Future[SendResult]: ...

    def health(self) -> SenderHealth: ...


# -- silences -----------------------------------------------------------------------------------
def pattern_matches(pattern: str, key: str) -> bool:
    """``backlog:celery`` matches itself; ``stuck:*`` every stuck key; ``*`` everything."""
    if pattern.endswith("*"):
        return key.startswith(pattern[:-1])
    return pattern == key


def validate_pattern(text: str) -> str:
    """A silence pattern: an alert key, or a key prefix ending in ``*``; ValueError if not."""
    pattern = text.strip()
    if not pattern or len(pattern) > MAX_PATTERN_LENGTH or any(c.isspace() for c in pattern):
        raise ValueError(f"not an alert key: {text[:60]!r}")
    if "*" in pattern[:-1]:
        raise ValueError("only a trailing * is supported, as in stuck:*")
    if pattern == "*":
        return pattern
    kind, sep, _ = pattern.partition(":")
    if kind.rstrip("*") not in KINDS or (not sep and not kind.endswith("*")):
        raise ValueError(
            f"{text[:60]!r} is not an alert key: expected KIND:NAME with KIND one of"
            f" {', '.join(KINDS)} (e.g. backlog:celery, stuck:*)"
        )
    return pattern


@dataclass(frozen=True)
class Silence:
    pattern: str
    until: float
    by: str
    created_at: float

    def matches(self, key: str) -> bool:
        return pattern_matches(self.pattern, key)

    def as_dict(self) -> dict[str, Any]:
        return {"pattern": self.pattern, "until": self.until, "by": self.by,
                "created_at": self.created_at}  # fmt: skip

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Silence:
        return cls(
            pattern=str(record["pattern"]),
            until=float(record["until"]),
            by=str(record.get("by") or ""),
            created_at=float(record.get("created_at") or 0.0),
        )


def _covering(silences: Iterable[Silence], key: str) -> Silence | None:
    """The matching silence that lasts longest (the one worth showing)."""
    matching = [s for s in silences if s.matches(key)]
    return max(matching, key=lambda s: s.until) if matching else None


# -- what a check did ---------------------------------------------------------------------------
@dataclass
class ReconcileResult:
    opened: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    reopened: list[str] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)
    suppressed: list[str] = field(default_factory=list)  # firing but muted: nothing posted
    deferred: list[str] = field(default_factory=list)  # over max_new_per_check: next check
    held: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # keys whose handling raised (logged)


@dataclass(frozen=True)
class AlertsOverview:
    """What ``/celery alerts`` shows."""

    enabled: bool
    channel: str
    open: list[dict[str, Any]]  # open, pending and failed alert records, most severe first
    recent: list[dict[str, Any]]  # resolved, still within the cooldown
    silences: list[Silence]
    muted: dict[str, Silence]  # open alert key -> the silence covering it
    suppressed: list[str]
    last_check_at: float | None
    sender: SenderHealth | None
    cooldown: float


class AlertManager:
    """Reconciles each check's conditions with the alerts posted in the alert channel.

    One process should drive it (one scheduler): two replicas checking the same fleet would
    both post. Command handlers may call :meth:`mute`, :meth:`unmute` and :meth:`overview`
    from any thread; none of them waits for Slack.
    """

    def __init__(
        self,
        records: RecordStore,
        sender: MessageSender,
        renderer: Renderer,
        settings: Settings,
        *,
        channel: str | None = None,
        clock: Callable[[], float] = time.time,
        failed_retry_after: float = 60.0,
        max_new_per_check: int = 20,
        instance_id: str | None = None,
        cluster: str = "",
    ) -> None:
        self.records = records
        self.sender = sender
        self.renderer = renderer
        self.settings = settings
        self.channel = settings.alert_channel if channel is None else channel
        self.cooldown = settings.alert_cooldown
        self.clock = clock
        self.failed_retry_after = failed_retry_after
        self.max_new_per_check = max(1, max_new_per_check)
        # Tells this process's own in-flight posts from ones a previous process left behind.
        self.instance_id = instance_id or uuid.uuid4().hex
        # With several clusters: the cluster these alerts are about (shown on every notice,
        # and carried by the stuck-task buttons so the click addresses it).
        self.cluster = cluster
        self._lock = threading.RLock()
        self._last_check_at: float | None = None
        self._last_result = ReconcileResult()

    @property
    def enabled(self) -> bool:
        return bool(self.channel)

    # -- reading ---------------------------------------------------------------------------------
    def alert_records(self) -> list[dict[str, Any]]:
        return [r for r in self.records.list(ALERT_RECORD) if isinstance(r.get("key"), str)]

    def get_alert(self, key: str) -> dict[str, Any] | None:
        return self.records.get(ALERT_RECORD, key)

    def open_alerts(self) -> dict[str, float]:
        """Keys of alerts posted and not resolved, with the time each opened (for the rules)."""
        return {
            r["key"]: float(r.get("opened_at") or 0.0)
            for r in self.alert_records()
            if r.get("status") == OPEN
        }

    def silences(self, now: float | None = None) -> list[Silence]:
        moment = self.clock() if now is None else now
        found = []
        for record in self.records.list(SILENCE_RECORD):
            try:
                silence = Silence.from_record(record)
            except (KeyError, TypeError, ValueError):
                continue
            if silence.until > moment:
                found.append(silence)
        return sorted(found, key=lambda s: s.pattern)

    def overview(self) -> AlertsOverview:
        now = self.clock()
        records = self.alert_records()
        active = [r for r in records if r.get("status") in (OPEN, PENDING, FAILED)]
        active.sort(
            key=lambda r: (-SEVERITY_RANK.get(str(r.get("severity")), 0), r.get("opened_at") or 0)
        )
        recent = [
            r
            for r in records
            if r.get("status") == RESOLVED
            and float(r.get("resolved_at") or 0.0) + self.cooldown > now
        ]
        recent.sort(key=lambda r: -(r.get("resolved_at") or 0))
        silences = self.silences(now)
        muted = {
            r["key"]: covering
            for r in active
            if (covering := _covering(silences, r["key"])) is not None
        }
        return AlertsOverview(
            enabled=self.enabled,
            channel=self.channel,
            open=active,
            recent=recent,
            silences=silences,
            muted=muted,
            suppressed=list(self._last_result.suppressed),
            last_check_at=self._last_check_at,
            sender=self.sender.health(),
            cooldown=self.cooldown,
        )

    @property
    def last_result(self) -> ReconcileResult:
        return self._last_result

    # -- silences --------------------------------------------------------------------------------
    def mute(self, pattern: str, duration: float, by: str) -> tuple[Silence, list[str]]:
        """Silence ``pattern`` for ``duration`` seconds; returns it and the open keys it covers.

        The parent messages of those alerts are edited to show the silence.
        """
        pattern = validate_pattern(pattern)
        if not 0 < duration <= MAX_MUTE:
            raise ValueError(f"a mute lasts more than zero and at most {int(MAX_MUTE // 86400)}d")
        now = self.clock()
        silence = Silence(pattern, now + duration, by, now)
        with self._lock:
            self.records.put(SILENCE_RECORD, pattern, silence.as_dict(), ttl=duration)
            covered = self._refresh_parents(lambda key: silence.matches(key), now)
        log.info("Alerts matching %s muted for %.0fs by %s", pattern, duration, by)
        return silence, covered

    def unmute(self, pattern: str) -> tuple[bool, list[str]]:
        """Remove the silence ``pattern``; returns whether it existed and the open keys it
        covered (their parent messages are edited)."""
        pattern = pattern.strip()
        with self._lock:
            existed = self.records.delete(SILENCE_RECORD, pattern)
            covered = (
                self._refresh_parents(lambda key: pattern_matches(pattern, key), self.clock())
                if existed
                else []
            )
        if existed:
            log.info("Silence %s removed", pattern)
        return existed, covered

    def _refresh_parents(self, selects: Callable[[str], bool], now: float) -> list[str]:
        silences = self.silences(now)
        touched: list[str] = []
        for record in self.alert_records():
            key = record["key"]
            if not selects(key) or record.get("status") != OPEN:
                continue
            touched.append(key)
            try:
                self._edit_parent(record, _covering(silences, key), now)
            except Exception:  # one bad record must not stop the others
                log.exception("Could not edit the alert message of %s", key)
        return touched

    # -- one check -------------------------------------------------------------------------------
    def reconcile(self, evaluation: Evaluation, now: float | None = None) -> ReconcileResult:
        """Bring Slack in line with ``evaluation``; returns what was done."""
        moment = self.clock() if now is None else now
        result = ReconcileResult(held=sorted(evaluation.held))
        if not self.enabled:
            return result
        with self._lock:
            records = {r["key"]: r for r in self.alert_records()}
            silences = self.silences(moment)
            conditions = sorted(
                evaluation.conditions.values(),
                key=lambda c: (-SEVERITY_RANK.get(c.severity, 0), c.key),
            )
            for condition in conditions:
                key = condition.key
                try:
                    self._apply_condition(
                        condition, records.get(key), _covering(silences, key), moment, result
                    )
                except Exception:
                    log.exception("Alert %s could not be handled this check", key)
                    result.errors.append(key)
            for key, record in records.items():
                if key in evaluation.conditions or key in evaluation.held:
                    continue
                try:
                    self._apply_absence(
                        record, evaluation.notes.get(key), _covering(silences, key), moment,
                        result,
                    )  # fmt: skip
                except Exception:
                    log.exception("Alert %s could not be resolved this check", key)
                    result.errors.append(key)
            self._last_check_at = moment
            self._last_result = result
        return result

    def _apply_condition(
        self,
        condition: Condition,
        record: dict[str, Any] | None,
        silence: Silence | None,
        now: float,
        result: ReconcileResult,
    ) -> None:
        status = record.get("status") if record is not None else None
        if record is not None and status == RESOLVED:
            if now >= float(record.get("resolved_at") or 0.0) + self.cooldown:
                record = None  # the cooldown is over: a new problem, a new message
        elif record is not None and status == PENDING:
            if record.get("owner") == self.instance_id:
                return  # our own post is on its way
            # A previous process queued this post and died before Slack's answer was recorded:
            # post again; a rare duplicate is better than a notice that never appears.
            record = None
        elif record is not None and status == FAILED:
            if now < float(record.get("retry_at") or 0.0):
                return
            record = None
        if record is None:
            if silence is not None:
                result.suppressed.append(condition.key)
            elif len(result.opened) >= self.max_new_per_check:
                result.deferred.append(condition.key)
            else:
                self._open(condition, now)
                result.opened.append(condition.key)
            return
        if status == RESOLVED:
            if silence is not None:
                result.suppressed.append(condition.key)
            else:
                self._reopen(record, condition, now)
                result.reopened.append(condition.key)
            return
        if self._refresh(record, condition, silence, now):
            result.updated.append(condition.key)
        elif silence is not None:
            result.suppressed.append(condition.key)

    def _apply_absence(
        self,
        record: dict[str, Any],
        note: str | None,
        silence: Silence | None,
        now: float,
        result: ReconcileResult,
    ) -> None:
        status = record.get("status")
        key = record["key"]
        if status == OPEN:
            self._resolve(record, note, silence, now)
            result.resolved.append(key)
        elif status == FAILED or (status == PENDING and record.get("owner") != self.instance_id):
            # Never shown in Slack (or its post was never confirmed): nothing to resolve.
            self.records.delete(ALERT_RECORD, key)
        # PENDING of our own: resolved on a later check, once the parent has its ts.

    # -- transitions -----------------------------------------------------------------------------
    def _open(self, condition: Condition, now: float) -> None:
        figures = condition.figures_dict()
        post_id = uuid.uuid4().hex
        record: dict[str, Any] = {
            "v": RECORD_VERSION,
            "key": condition.key,
            "kind": condition.kind,
            "subject": condition.subject,
            "severity": condition.severity,
            "status": PENDING,
            "channel": self.channel,
            "ts": None,
            "opened_at": now,
            "updated_at": now,
            "resolved_at": None,
            "figures": figures,  # the latest seen
            "posted": figures,  # the latest shown in Slack: debouncing compares with these
            "first": figures,  # as first reported: updates say how far things moved
            "post_id": post_id,
            "owner": self.instance_id,
            "reopened": 0,
            "updates": 0,
            "note": None,
            "error": None,
        }
        message = self._render(PARENT_TEMPLATE, record, None, now)
        self.records.put(ALERT_RECORD, condition.key, record)
        # A critical alert's first post goes ahead of the warnings and edits still waiting.
        future = self.sender.post_message(
            self.channel, message.text, message.blocks, urgent=condition.severity == CRITICAL
        )
        future.add_done_callback(lambda done: self._on_parent_posted(condition.key, post_id, done))
        log.info("Alert %s opened (%s)", condition.key, condition.severity)

    def _on_parent_posted(self, key: str, post_id: str, future: Future[SendResult]) -> None:
        outcome = None if future.cancelled() else future.result()
        if outcome is not None and outcome.ok and outcome.ts:
            done = self.records.transition(
                ALERT_RECORD, key, "post_id", post_id,
                {"status": OPEN, "ts": outcome.ts, "channel": outcome.channel, "post_id": None},
            )  # fmt: skip
            if done is None:
                log.warning("Alert %s was posted (ts %s) but its record changed", key, outcome.ts)
            return
        error = outcome.error if outcome is not None else "cancelled"
        # Cancelled (shutting down): nothing reached Slack, so the next check may post at once.
        retry_at = self.clock() + (self.failed_retry_after if outcome is not None else 0.0)
        self.records.transition(
            ALERT_RECORD, key, "post_id", post_id,
            {"status": FAILED, "error": error, "retry_at": retry_at, "post_id": None},
        )  # fmt: skip

    def _refresh(
        self, record: dict[str, Any], condition: Condition, silence: Silence | None, now: float
    ) -> bool:
        """An open alert still firing: post an update only if it changed significantly."""
        figures = condition.figures_dict()
        previous = dict(record.get("posted") or {})
        change = significant_change(condition.kind, previous, figures)
        old_severity = record.get("severity")
        if change is None and condition.severity != old_severity:
            change = "severity"
        if change is None or silence is not None:
            if figures != record.get("figures"):
                record["figures"] = figures
                self.records.put(ALERT_RECORD, record["key"], record)
            return False
        record.update(
            figures=figures,
            posted=figures,
            severity=condition.severity,
            updated_at=now,
            updates=int(record.get("updates") or 0) + 1,
        )
        reply = self._render(
            UPDATE_TEMPLATE, record, None, now,
            change=change, previous=previous, old_severity=old_severity,
        )  # fmt: skip
        self.records.put(ALERT_RECORD, record["key"], record)
        self._thread_reply(record, reply)
        self._edit_parent(record, None, now)
        return True

    def _reopen(self, record: dict[str, Any], condition: Condition, now: float) -> None:
        figures = condition.figures_dict()
        previous = dict(record.get("posted") or {})
        record.update(
            status=OPEN,
            figures=figures,
            posted=figures,
            severity=condition.severity,
            updated_at=now,
            resolved_at=None,
            note=None,
            reopened=int(record.get("reopened") or 0) + 1,
        )
        reply = self._render(
            UPDATE_TEMPLATE, record, None, now,
            change="reopened", previous=previous, old_severity=condition.severity,
        )  # fmt: skip
        self.records.put(ALERT_RECORD, record["key"], record)  # no TTL: open again
        self._thread_reply(record, reply)
        self._edit_parent(record, None, now)
        log.info("Alert %s firing again within its cooldown", record["key"])

    def _resolve(
        self, record: dict[str, Any], note: str | None, silence: Silence | None, now: float
    ) -> None:
        record.update(status=RESOLVED, resolved_at=now, updated_at=now, note=note)
        reply = self._render(RESOLVED_TEMPLATE, record, silence, now)
        # Kept through the cooldown so a quick return reopens this message; then it goes.
        self.records.put(ALERT_RECORD, record["key"], record, ttl=self.cooldown + 60.0)
        if silence is None:
            self._thread_reply(record, reply)
        self._edit_parent(record, silence, now)
        log.info("Alert %s resolved: %s", record["key"], note or "condition cleared")

    # -- Slack -----------------------------------------------------------------------------------
    def _render(
        self,
        template: str,
        record: Mapping[str, Any],
        silence: Silence | None,
        now: float,
        **extra: Any,
    ) -> Message:
        kind, subject = split_key(str(record["key"]))
        return self.renderer.render(
            template,
            ephemeral=False,
            alert=record,
            kind=kind,
            subject=subject,
            figures=record.get("posted") or record.get("figures") or {},
            first=record.get("first") or {},
            muted=silence.as_dict() if silence is not None else None,
            cooldown=self.cooldown,
            now=now,
            cluster=self.cluster,
            revoke_action_id=REVOKE_ACTION_ID,
            terminate_action_id=TERMINATE_ACTION_ID,
            **extra,
        )

    def _thread_reply(self, record: Mapping[str, Any], message: Message) -> None:
        ts = record.get("ts")
        if not ts:
            return
        self.sender.post_message(
            str(record.get("channel") or self.channel), message.text, message.blocks,
            thread_ts=str(ts),
        )  # fmt: skip

    def _edit_parent(self, record: Mapping[str, Any], silence: Silence | None, now: float) -> None:
        ts = record.get("ts")
        if not ts:
            return
        message = self._render(PARENT_TEMPLATE, record, silence, now)
        self.sender.update_message(
            str(record.get("channel") or self.channel), str(ts), message.text, message.blocks
        )
