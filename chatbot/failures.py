"""Failure groups: which failures are "the same failure", the way an error tracker groups them.

A failure's fingerprint is its task name, its exception type and the *shape* of its exception
message: the message with everything that varies from one occurrence to the next masked
(uuids, numbers, hex ids and any token with a digit in it, quoted values). So
``CardDeclined('card 8773 declined for 14813 cents')`` and
``CardDeclined('card 2251 declined for 16592 cents')`` are one group, while a different
exception type, or the same exception raised by another task, is another.

:func:`group_failures` turns a list of failed :class:`~chatbot.model.Task` records (one
window of them, newest first as the store returns them) into :class:`FailureGroup` s, biggest
first. Each group has a short stable key (``failed --group <key>``, a button's value): the same
failure gets the same key in every process and every run, so a key typed from yesterday's
answer still names the group.

"New" needs a memory that outlives the window: a group is new when its fingerprint was first
seen inside the window. :class:`FingerprintMemory` keeps first-seen times in the
:class:`~chatbot.store.RecordStore` (one small record per fingerprint, forgotten after
``ttl`` seconds without being seen, so it is bounded by the number of distinct failures in that
time; ``create`` makes "first" hold across replicas sharing a Redis store). A memory younger
than the window cannot tell what happened before it began: then ``new`` is ``None``
(unknown), never a guess.

Everything here is pure but the memory, and nothing here talks to Slack or Celery.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from chatbot.model import Task
from chatbot.redaction import ELLIPSIS
from chatbot.store import RecordStore

__all__ = [
    "FailureGroup",
    "Fingerprint",
    "FingerprintMemory",
    "exception_message",
    "find_group",
    "fingerprint",
    "group_failures",
    "message_shape",
]

KEY_LENGTH = 8  # hex digits: 32 bits, ample for the distinct failures of one fleet's window
# The shape keeps this many characters: messages clipped at different points (the store cuts
# exception texts at a limit) still share the prefix that decides their group.
SHAPE_LIMIT = 240
NUMBER_MASK = "#"
QUOTED_MASK = "'*'"

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# A quoted value: a short run between matching quotes on one line.
_QUOTED = re.compile(r"'[^'\n]{0,200}'|\"[^\"\n]{0,200}\"")
# A number with its sign, fraction and exponent ("-1.5e+10"), as one token.
_NUMBER = re.compile(
    r"(?<![A-Za-z0-9_])[-+]?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?(?![A-Za-z0-9_])", re.ASCII
)
# What remains that names one thing, as a whole word: any word with a digit in it
# (``card8773``, ``0x7f3a``, ``a3f9c2d1``) or a long run of hex letters only (an id that happens
# to have no digit: ``deadbeefcafe``). One pattern, no callback: this runs for every failure.
_ID_WORD = re.compile(
    r"(?<![A-Za-z0-9_])(?:[A-Za-z_]*[0-9][A-Za-z0-9_]*|[a-fA-F]{8,})(?![A-Za-z0-9_])", re.ASCII
)
# Uuids, numbers and id-like words in one pass (tried in that order at each position).
_VARYING = re.compile(
    "|".join(f"(?:{pattern.pattern})" for pattern in (_UUID, _NUMBER, _ID_WORD)), re.ASCII
)
_SPACES = re.compile(r"\s+")
# ``CardDeclined('card 8773 declined')``: Celery's events carry the exception's repr.
_EXCEPTION_REPR = re.compile(r"^\s*([A-Za-z_][\w.]*)\((.*)\)\s*$", re.S)
_ONE_STRING = re.compile(r"^'([^'\\\n]*)'$")
_CLIPPED_REPR = re.compile(r"^\s*([A-Za-z_][\w.]*)\((.*)$", re.S)


def exception_message(exception: str | None) -> str:
    """The message inside an exception's repr: ``card 8773`` for ``ValueError('card 8773')``.

    Several arguments read as their reprs joined by ", "; a repr that is not literal (or was
    clipped) is taken as it stands between the parentheses.
    """
    if not exception:
        return ""
    clipped = exception.endswith(ELLIPSIS)
    text = exception.removesuffix(ELLIPSIS)
    match = _EXCEPTION_REPR.match(text)
    if match is None and clipped:
        # Cut before its closing parenthesis: the message is what follows the opening one.
        opened = _CLIPPED_REPR.match(text)
        if opened is not None:
            return opened.group(2).strip().lstrip("'\"")
    if match is None:
        return text.strip()
    inner = match.group(2)
    plain = _ONE_STRING.match(inner)
    if plain is not None:  # ``'text'``, the common case: no parsing needed
        return plain.group(1)
    try:
        # Exception reprs are small (the store clips them), so parsing is cheap here.
        parsed = ast.literal_eval(f"({inner},)") if inner.strip() else ()
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return inner.strip()
    if not isinstance(parsed, tuple):
        return inner.strip()
    return ", ".join(part if isinstance(part, str) else repr(part) for part in parsed)


def message_shape(message: str) -> str:
    """``message`` with what varies between occurrences masked, whitespace folded."""
    shape = _QUOTED.sub(QUOTED_MASK, message)
    shape = _VARYING.sub(NUMBER_MASK, shape)
    shape = _SPACES.sub(" ", shape).strip()
    return shape[:SHAPE_LIMIT]


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What makes two failures the same failure."""

    name: str
    exception_type: str
    shape: str

    @property
    def key(self) -> str:
        """Short, stable across processes and runs (a hash, not Python's salted ``hash``)."""
        digest = hashlib.blake2b(
            "\x00".join((self.name, self.exception_type, self.shape)).encode(),
            digest_size=8,
        ).hexdigest()
        return digest[:KEY_LENGTH]


def fingerprint(task: Task) -> Fingerprint:
    return _fingerprint(task.name or "unknown", task.exception_type or "unknown", task.exception)


# Fleets repeat the same exception text (``TimeoutError()``, the same message for every retry
# of one call), and `failed` and the alert checks group the same window again and again: a
# bounded cache (sized above the store's default task cap) saves the regex work for those.
@functools.lru_cache(maxsize=16384)
def _fingerprint(name: str, exception_type: str, exception: str | None) -> Fingerprint:
    return Fingerprint(name, exception_type, message_shape(exception_message(exception)))


def _failed_at(task: Task) -> float:
    if task.finished is not None:
        return task.finished
    return task.state_ts


@dataclass(frozen=True, slots=True)
class FailureGroup:
    fingerprint: Fingerprint
    count: int
    first_seen: float  # within the failures given
    last_seen: float
    workers: tuple[str, ...]  # sorted
    example: Task  # the newest member
    members: tuple[str, ...]  # task ids, newest first
    # First seen inside the window (True), before it (False), or unknown: the memory of
    # earlier failures does not reach back to the window's start.
    new: bool | None = None

    @property
    def key(self) -> str:
        return self.fingerprint.key

    @property
    def name(self) -> str:
        return self.fingerprint.name

    @property
    def exception_type(self) -> str:
        return self.fingerprint.exception_type


@dataclass(slots=True)
class _Accumulator:
    fingerprint: Fingerprint
    first_seen: float
    last_seen: float
    example: Task
    workers: set[str]
    members: list[tuple[float, str]]


def group_failures(
    failures: Iterable[Task],
    *,
    window_start: float | None = None,
    first_seen: Mapping[str, float] | None = None,
    memory_since: float | None = None,
) -> list[FailureGroup]:
    """Failures grouped by fingerprint: biggest group first, then the most recent.

    ``first_seen`` (key -> time) is what a :class:`FingerprintMemory` knows of earlier
    failures, remembered since ``memory_since``; with ``window_start`` they decide ``new``.
    """
    groups: dict[Fingerprint, _Accumulator] = {}
    for task in failures:
        at = _failed_at(task)
        key = fingerprint(task)
        group = groups.get(key)
        if group is None:
            group = groups[key] = _Accumulator(key, at, at, task, set(), [])
        else:
            group.first_seen = min(group.first_seen, at)
            if at > group.last_seen:
                group.last_seen = at
                group.example = task
        if task.worker:
            group.workers.add(task.worker)
        group.members.append((at, task.uuid))
    result = [
        FailureGroup(
            fingerprint=group.fingerprint,
            count=len(group.members),
            first_seen=group.first_seen,
            last_seen=group.last_seen,
            workers=tuple(sorted(group.workers)),
            example=group.example,
            members=tuple(uuid for _, uuid in sorted(group.members, key=lambda m: -m[0])),
            new=_is_new(
                group.first_seen,
                None if first_seen is None else first_seen.get(group.fingerprint.key),
                window_start,
                memory_since if first_seen is not None else None,
            ),
        )
        for group in groups.values()
    ]
    result.sort(key=lambda g: (-g.count, -g.last_seen, g.key))
    return result


def _is_new(
    first_in_window: float,
    remembered: float | None,
    window_start: float | None,
    memory_since: float | None,
) -> bool | None:
    if window_start is None:
        return None
    earliest = first_in_window if remembered is None else min(first_in_window, remembered)
    if earliest < window_start:
        return False
    # Nothing remembered before the window: only a memory that was already listening when
    # the window opened can say the failure did not happen earlier.
    if memory_since is None or memory_since > window_start:
        return None
    return True


def find_group(groups: Sequence[FailureGroup], key: str) -> FailureGroup | None:
    """The group whose key is ``key`` (case-insensitive; a unique prefix of 4+ also works)."""
    wanted = key.strip().lower()
    exact = [g for g in groups if g.key == wanted]
    if exact:
        return exact[0]
    if len(wanted) < 4:
        return None
    matches = [g for g in groups if g.key.startswith(wanted)]
    return matches[0] if len(matches) == 1 else None


FINGERPRINT_KIND = "failure-fingerprint"
_SINCE_KEY = "since"  # never a group key (those are hex digits)
DEFAULT_MEMORY_TTL = 7 * 24 * 3600.0


class FingerprintMemory:
    """First-seen times of failure fingerprints, kept in a :class:`RecordStore`.

    One record per fingerprint (``{"first_seen": t, "name": ..., "type": ...}``) with a time to
    live refreshed whenever the fingerprint is seen again, plus one record holding when the
    memory began. ``observe`` is called with every grouping (the command and the alert
    scheduler both group), so the memory follows the fleet as long as either runs.
    """

    def __init__(
        self,
        records: RecordStore,
        now: float | Callable[[], float],
        ttl: float = DEFAULT_MEMORY_TTL,
    ) -> None:
        self._records = records
        self.ttl = ttl
        self._now = now
        self._since: float | None = None

    @property
    def since(self) -> float:
        """When remembering began (read once; the first reader of a shared store sets it)."""
        if self._since is None:
            now = self._now() if callable(self._now) else self._now
            # Created once: every replica and restart of a shared store agrees on the start.
            self._records.create(FINGERPRINT_KIND, _SINCE_KEY, {"since": now}, ttl=None)
            stored = self._records.get(FINGERPRINT_KIND, _SINCE_KEY)
            self._since = float(stored["since"]) if stored else now
        return self._since

    def first_seen(self, keys: Iterable[str]) -> dict[str, float]:
        known: dict[str, float] = {}
        for key in keys:
            record = self._records.get(FINGERPRINT_KIND, key)
            if record is not None and isinstance(record.get("first_seen"), int | float):
                known[key] = float(record["first_seen"])
        return known

    def observe(self, groups: Iterable[FailureGroup], now: float) -> dict[str, float]:
        """Remember the groups; returns each one's first-seen time (the earliest known).

        A known fingerprint is written again only when its first-seen time moves earlier or
        its time to live is an eighth used up, so grouping the same window again (every
        ``failed``, every alert evaluation) costs reads, not writes.
        """
        known: dict[str, float] = {}
        for group in groups:
            value: dict[str, Any] = {
                "first_seen": group.first_seen,
                "refreshed": now,
                "name": group.name,
                "type": group.exception_type,
            }
            record = self._records.get(FINGERPRINT_KIND, group.key)
            if record is None and self._records.create(
                FINGERPRINT_KIND, group.key, value, ttl=self.ttl
            ):
                known[group.key] = group.first_seen
                continue
            if record is None:  # another replica created it between our read and create
                record = self._records.get(FINGERPRINT_KIND, group.key) or {}
            stored = _as_float(record.get("first_seen"))
            refreshed = _as_float(record.get("refreshed"))
            first = group.first_seen if stored is None else min(stored, group.first_seen)
            stale = refreshed is None or now - refreshed >= self.ttl / 8
            if stored is None or first < stored or stale:
                value["first_seen"] = first
                self._records.put(FINGERPRINT_KIND, group.key, value, ttl=self.ttl)
            known[group.key] = first
        return known

    def group(
        self, failures: Sequence[Task], window_start: float, now: float
    ) -> list[FailureGroup]:
        """:func:`group_failures` with ``new`` decided by (and fed into) this memory."""
        groups = group_failures(failures)
        first = self.first_seen(g.key for g in groups)
        marked = [
            replace(g, new=_is_new(g.first_seen, first.get(g.key), window_start, self.since))
            for g in groups
        ]
        self.observe(marked, now)
        return marked


def _as_float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None
