"""Validation of decoded Celery events before they reach the store: reject or coerce, never crash.

Everything in an event came from the fleet's broker, where anything may publish. The store
trusts what it is given (``float(timestamp)``, ``int(retries)``, ``sorted(..., key=state_ts)``),
so one event with ``timestamp: "yesterday"``, NaN, 1e308 or -1e12, or ``runtime: "fast"``
could poison it for good (issue 11, finding 2). :class:`EventChecker` looks at the fields the
store keeps, and only those, and either lets the event through, clipped to bounded sizes, or
raises :class:`RejectedEvent` with a reason from a small fixed set (:data:`REASONS`) that the
consumer counts.

The rules:

* ``type``: a printable string of at most :data:`TYPE_MAX` characters. A task event needs a
  ``uuid``; a worker event needs a ``hostname``.
* ``timestamp``: a finite number between 2000-01-01 and one day past this host's clock;
  ``utcoffset``: a number of hours within +-24 (it shifts the timestamp); ``clock``: a
  non-negative integer below 2**62 (it feeds the consumer's Lamport clock).
* counts (``retries``, ``active``, ``processed``, ``pid``) are non-negative integers;
  ``runtime`` and ``freq`` finite non-negative numbers within a bound; ``loadavg`` at most a few
  finite numbers. Booleans are not numbers here.
* identifiers and names (``uuid``, ``hostname``, ``name``, ``queue``, ...) are strings of at most
  :data:`NAME_MAX` characters; longer is rejected, not clipped, because a clipped identifier
  would silently merge two tasks.
* payload texts (``args``, ``kwargs``, ``result``, ``exception``, ``traceback``) are strings,
  clipped to :data:`TEXT_CAPS` (a traceback keeps its end, where the raising frame is). A
  string field of more than :data:`FIELD_MAX` characters, known or not, rejects the event: a
  1 MB field is an attack or a bug, not something to keep a piece of.
* ``None`` means absent, as the store reads it. Fields the store does not keep are not looked
  at beyond their size, and event types the store does not know pass once the common fields
  are valid (the store only counts them).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, Final

from chatbot.eventwire import MalformedMessage
from chatbot.redaction import clip, clip_tail

YEAR_2000: Final = 946_684_800.0
MAX_FUTURE: Final = 86_400.0  # seconds past this host's clock a timestamp may claim
MAX_UTCOFFSET: Final = 24.0  # hours; real zones are within -12..+14
MAX_CLOCK: Final = 2**62
MAX_COUNT: Final = 2**62
MAX_RUNTIME: Final = 1e9  # seconds (about 31 years)
MAX_FREQ: Final = 86_400.0  # heartbeat interval, seconds
MAX_LOADAVG_ITEMS: Final = 16
TYPE_MAX: Final = 64
NAME_MAX: Final = 256
FIELD_MAX: Final = 256 * 1024
# Wider than the store's own FieldLimits (which clips after redaction): this only bounds
# what an event may carry into the process, so redaction still sees whole key=value pairs.
TEXT_CAPS: Final[dict[str, int]] = {
    "args": 4096,
    "kwargs": 4096,
    "result": 4096,
    "exception": 16 * 1024,
    "traceback": 32 * 1024,
}

# Field kinds (small ints: compared in the hot loop).
_TIMESTAMP, _OFFSET, _COUNT, _SECONDS, _NAME = range(5)
_TEXT, _TAIL_TEXT, _FLAG, _SCALAR, _LOADAVG = range(5, 10)

_FIELDS: Final[dict[str, int]] = {
    "timestamp": _TIMESTAMP,
    "utcoffset": _OFFSET,
    "clock": _COUNT,  # feeds the Lamport clock: an integer, bounded
    "retries": _COUNT,
    "active": _COUNT,
    "processed": _COUNT,
    "pid": _COUNT,
    "runtime": _SECONDS,
    "freq": _SECONDS,
    "uuid": _NAME,
    "hostname": _NAME,
    "name": _NAME,
    "state": _NAME,
    "queue": _NAME,
    "routing_key": _NAME,
    "exchange": _NAME,
    "parent_id": _NAME,
    "root_id": _NAME,
    "sw_ident": _NAME,
    "sw_ver": _NAME,
    "sw_sys": _NAME,
    "args": _TEXT,
    "kwargs": _TEXT,
    "result": _TEXT,
    "exception": _TEXT,
    "traceback": _TAIL_TEXT,
    "terminated": _FLAG,
    "requeue": _FLAG,
    "expired": _FLAG,
    # Celery sends ISO 8601 strings; a number (or a signal number for signum) is kept as is.
    "eta": _SCALAR,
    "expires": _SCALAR,
    "signum": _SCALAR,
    "loadavg": _LOADAVG,
}
_MAX_BY_FIELD: Final[dict[str, float]] = {"runtime": MAX_RUNTIME, "freq": MAX_FREQ}

# Every reason a decoded event is rejected with: bounded, so it can be a metrics label.
REASONS: Final = frozenset(
    {"not-an-event", "type", "missing-uuid", "missing-hostname", "oversized", *_FIELDS}
)


class RejectedEvent(MalformedMessage):
    """A decoded event that must not reach the store; ``reason`` is one of :data:`REASONS`.

    The detail names the field and the rule, never the value (a value may be a secret).
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}", reason)


def _number(value: object) -> bool:
    kind = type(value)
    return kind is float or kind is int


class EventChecker:
    """Validates events in place (clipping long texts); one instance per consumer thread.

    ``clock`` is read by :meth:`refresh`, once per batch, not once per event.
    """

    __slots__ = ("_clock", "latest")

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.latest = clock() + MAX_FUTURE

    def refresh(self) -> None:
        """Move the future bound along with this host's clock."""
        self.latest = self._clock() + MAX_FUTURE

    def check(self, event: object) -> dict[str, Any]:
        """``event`` itself once valid (texts clipped in place); else :class:`RejectedEvent`."""
        if type(event) is not dict:
            raise RejectedEvent("not-an-event", f"a {type(event).__name__}, not an object")
        kind = event.get("type")
        if type(kind) is not str or not 0 < len(kind) <= TYPE_MAX or not kind.isprintable():
            raise RejectedEvent("type", "type is not a short printable string")
        fields = _FIELDS
        clipped: list[tuple[str, str]] | None = None
        for key, value in event.items():
            if value is None:
                continue
            field = fields.get(key)
            if field is None:
                if type(value) is str and len(value) > FIELD_MAX:
                    raise RejectedEvent("oversized", f"field of {len(value)} characters")
                continue
            if field == _NAME:
                if type(value) is not str or len(value) > NAME_MAX:
                    raise RejectedEvent(key, "not a string of at most 256 characters")
            elif field == _TIMESTAMP:
                if not (_number(value) and YEAR_2000 <= value <= self.latest):
                    raise RejectedEvent(key, "not a time between 2000 and tomorrow")
            elif field in (_TEXT, _TAIL_TEXT):
                if type(value) is not str:
                    raise RejectedEvent(key, "not a string")
                size = len(value)
                if size > FIELD_MAX:
                    raise RejectedEvent("oversized", f"{key} of {size} characters")
                cap = TEXT_CAPS[key]
                if size > cap:
                    cut = clip_tail(value, cap) if field == _TAIL_TEXT else clip(value, cap)
                    if clipped is None:
                        clipped = []
                    clipped.append((key, cut or ""))
            elif field == _COUNT:
                if type(value) is not int or not 0 <= value < MAX_COUNT:
                    raise RejectedEvent(key, "not a non-negative integer")
            elif field == _OFFSET:
                if not (_number(value) and -MAX_UTCOFFSET <= value <= MAX_UTCOFFSET):
                    raise RejectedEvent(key, "not a number of hours within +-24")
            elif field == _SECONDS:
                if not (_number(value) and 0 <= value <= _MAX_BY_FIELD[key]):
                    raise RejectedEvent(key, "not a finite non-negative number of seconds")
            elif field == _FLAG:
                if type(value) is not bool and type(value) is not int:
                    raise RejectedEvent(key, "not a boolean")
            elif field == _SCALAR:
                if type(value) is str:
                    if len(value) > NAME_MAX:
                        raise RejectedEvent(key, "a string of more than 256 characters")
                elif not (_number(value) and math.isfinite(value)):
                    raise RejectedEvent(key, "not a string or a finite number")
            elif field == _LOADAVG and not _loadavg(value):
                raise RejectedEvent(key, "not a short list of finite numbers")
        if clipped is not None:
            for key, cut in clipped:
                event[key] = cut
        if kind.startswith("task-"):
            if not event.get("uuid"):
                raise RejectedEvent("missing-uuid", "a task event without a uuid")
        elif kind.startswith("worker-") and not event.get("hostname"):
            raise RejectedEvent("missing-hostname", "a worker event without a hostname")
        return event


def _loadavg(value: object) -> bool:
    if not isinstance(value, (list, tuple)):
        return False
    return len(value) <= MAX_LOADAVG_ITEMS and all(_number(x) and math.isfinite(x) for x in value)
