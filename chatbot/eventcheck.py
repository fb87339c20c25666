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

import time
from collections.abc import Callable
from typing import Any, Final

from chatbot.eventwire import MalformedMessage
from chatbot.redaction import clip, clip_tail

YEAR_2000: Final = 946_684_800.0
MAX_FUTURE: Final = 86_400.0  # seconds past this host's clock a timestamp may claim
MAX_UTCOFFSET: Final = 24.0  # hours; real zones are within -12..+14
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

# Where a string is allowed: its longest length. Identifiers and names are refused past it,
# payload texts (TEXT_CAPS) clipped, up to FIELD_MAX.
_STRING_MAX: Final[dict[str, int]] = {
    **dict.fromkeys(
        ("uuid", "hostname", "name", "state", "queue", "routing_key", "exchange", "parent_id",
         "root_id", "sw_ident", "sw_ver", "sw_sys", "eta", "expires", "signum"),
        NAME_MAX,
    ),
    **TEXT_CAPS,
}  # fmt: skip
_TAIL_TEXTS: Final = frozenset({"traceback"})  # keeps its end, where the raising frame is
_FINITE = 1.7976931348623157e308  # the largest float: NaN and the infinities fall outside
# Where a number is allowed: its range (``timestamp``'s upper bound moves with the clock).
_NUMBER_RANGE: Final[dict[str, tuple[float, float]]] = {
    "timestamp": (YEAR_2000, YEAR_2000),  # set by EventChecker.refresh
    "utcoffset": (-MAX_UTCOFFSET, MAX_UTCOFFSET),
    "runtime": (0.0, MAX_RUNTIME),
    "freq": (0.0, MAX_FREQ),
    **dict.fromkeys(("clock", "retries", "active", "processed", "pid"), (0, MAX_COUNT - 1)),
    # Celery sends ISO 8601 strings; a number (or a signal number for signum) is kept as is.
    **dict.fromkeys(("eta", "expires", "signum"), (-_FINITE, _FINITE)),
    **dict.fromkeys(("terminated", "requeue", "expired"), (0, 1)),
}
_INTEGERS: Final = frozenset({"clock", "retries", "active", "processed", "pid"})
_FLAGS: Final = frozenset({"terminated", "requeue", "expired"})
_FIELDS: Final = frozenset({*_STRING_MAX, *_NUMBER_RANGE, "loadavg"})

_CELERY_TYPES: Final = frozenset(
    {"task-sent", "task-received", "task-started", "task-succeeded", "task-failed",
     "task-retried", "task-revoked", "task-rejected", "worker-online", "worker-heartbeat",
     "worker-offline"}
)  # fmt: skip

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


class EventChecker:
    """Validates events in place (clipping long texts); one instance per consumer thread.

    ``clock`` is read by :meth:`refresh`, once per batch, not once per event.
    """

    __slots__ = ("_clock", "_ranges", "latest")

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._ranges = dict(_NUMBER_RANGE)
        self.latest = 0.0
        self.refresh()

    def refresh(self) -> None:
        """Move the future bound along with this host's clock."""
        self.latest = self._clock() + MAX_FUTURE
        self._ranges["timestamp"] = (YEAR_2000, self.latest)

    def check(self, event: object) -> dict[str, Any]:
        """``event`` itself once valid (texts clipped in place); else :class:`RejectedEvent`."""
        if type(event) is not dict:
            raise RejectedEvent("not-an-event", f"a {type(event).__name__}, not an object")
        kind = event.get("type")
        if type(kind) is not str or (
            kind not in _CELERY_TYPES and not (0 < len(kind) <= TYPE_MAX and kind.isprintable())
        ):
            raise RejectedEvent("type", "type is not a short printable string")
        # Dispatched on the value's type first: one dictionary look-up per field in the
        # common case, because this runs for every event (issue 12 budgets 5 us per event).
        string_max = _STRING_MAX.get
        number_range = self._ranges.get
        clipped: list[tuple[str, str]] | None = None
        for key, value in event.items():
            kind_of_value = type(value)
            if kind_of_value is str:
                limit = string_max(key)
                if limit is None:
                    if key in _FIELDS:
                        raise RejectedEvent(key, "a string where a number is expected")
                    if len(value) > FIELD_MAX:
                        raise RejectedEvent("oversized", f"field of {len(value)} characters")
                elif len(value) > limit:
                    if key not in TEXT_CAPS:
                        raise RejectedEvent(key, f"a string of more than {limit} characters")
                    if len(value) > FIELD_MAX:
                        raise RejectedEvent("oversized", f"{key} of {len(value)} characters")
                    if clipped is None:
                        clipped = []
                    tail = key in _TAIL_TEXTS
                    clipped.append((key, (clip_tail if tail else clip)(value, limit) or ""))
            elif kind_of_value is int or kind_of_value is float:
                bounds = number_range(key)
                if bounds is None:
                    if key in _FIELDS:
                        raise RejectedEvent(key, "a number where a string is expected")
                elif not bounds[0] <= value <= bounds[1]:
                    raise RejectedEvent(key, f"not a number within {bounds[0]:g}..{bounds[1]:g}")
                elif kind_of_value is float and key in _INTEGERS:
                    raise RejectedEvent(key, "not an integer")
            elif value is None or key not in _FIELDS:
                continue  # absent, as the store reads None; or a field the store never reads
            elif kind_of_value is bool:
                if key not in _FLAGS:
                    raise RejectedEvent(key, "a boolean where something else is expected")
            elif key != "loadavg" or not _loadavg(value):
                raise RejectedEvent(key, f"a {kind_of_value.__name__} is not valid here")
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
    return len(value) <= MAX_LOADAVG_ITEMS and all(
        (type(x) is float or type(x) is int) and -_FINITE <= x <= _FINITE for x in value
    )
