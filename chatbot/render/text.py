"""Text filters for untrusted values: mrkdwn escaping, entity-safe truncation, durations, times.

Everything that came from a task or a worker goes through :func:`mrkdwn` (escaping, and a last
look for secrets) before Slack sees it;
the cutting functions never split the ``&amp;``/``&lt;``/``&gt;`` entities that escaping made.
Templates use these as Jinja filters (:mod:`chatbot.render.renderer`); the Block Kit limit
enforcer (:mod:`chatbot.render.blockkit`) cuts with the same entity-safe helpers.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from chatbot.redaction import scrub

ELLIPSIS = "…"

# Untrusted backticks would close our code spans; U+02CB looks the same and is inert.
_INERT_BACKTICK = "\u02cb"
_ENTITY_TAIL = re.compile(r"&[a-z]{0,3}$")  # a cut that split &amp; &lt; or &gt;
_ENTITY_HEAD = re.compile(r"^[a-z]{0,3};")


def mrkdwn(value: Any) -> str:
    """Escape untrusted text for Slack mrkdwn: no mention, no link, no broken code span.

    It is also the second look for secrets (:func:`chatbot.redaction.scrub`): the store
    redacts at ingest, and whatever reaches a message anyway is caught here.
    """
    if value is None:
        return ""
    text = scrub(value)
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("`", _INERT_BACKTICK)
    )


def unescape_mrkdwn(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def entity_safe_end(text: str, cut: int) -> int:
    """Move a cut position left so it does not split an escaped entity."""
    match = _ENTITY_TAIL.search(text[max(0, cut - 4) : cut])
    return cut - len(match.group(0)) if match else cut


def entity_safe_start(text: str, start: int) -> int:
    """Move a start position right so the kept part does not begin mid-entity."""
    match = _ENTITY_HEAD.match(text[start : start + 4])
    return start + len(match.group(0)) if match else start


def truncate(value: Any, limit: int) -> str:
    """At most ``limit`` characters, keeping the start."""
    text = "" if value is None else str(value)
    if len(text) <= limit:
        return text
    cut = entity_safe_end(text, max(0, limit - len(ELLIPSIS)))
    return text[:cut] + ELLIPSIS


def truncate_middle(value: Any, limit: int = 200) -> str:
    """At most ``limit`` characters, keeping the start and the end (both say something)."""
    text = "" if value is None else str(value)
    if len(text) <= limit:
        return text
    keep = max(0, limit - len(ELLIPSIS))
    head_len = (keep + 1) // 2
    tail_len = keep - head_len
    head_end = entity_safe_end(text, head_len)
    tail_start = entity_safe_start(text, len(text) - tail_len) if tail_len else len(text)
    return text[:head_end] + ELLIPSIS + text[tail_start:]


def tail(value: Any, limit: int = 2500) -> str:
    """The last lines that fit in ``limit`` characters: a traceback's raising frame is last."""
    text = "" if value is None else str(value).rstrip("\n")
    if len(text) <= limit:
        return text
    lines = text.split("\n")
    kept: list[str] = []
    size = 0
    for line in reversed(lines):
        marker = f"{ELLIPSIS} {len(lines) - len(kept) - 1} earlier lines cut\n"
        if size + len(line) + 1 + len(marker) > limit:
            break
        kept.append(line)
        size += len(line) + 1
    if not kept:
        # One enormous last line: keep its end.
        last = lines[-1]
        start = entity_safe_start(last, max(0, len(last) - (limit - len(ELLIPSIS))))
        return ELLIPSIS + last[start:]
    cut_lines = len(lines) - len(kept)
    return f"{ELLIPSIS} {cut_lines} earlier lines cut\n" + "\n".join(reversed(kept))


def oneline(value: Any) -> str:
    """Whitespace runs become one space: an inline code span cannot cross a line."""
    return " ".join(("" if value is None else str(value)).split())


def duration(seconds: float | None) -> str:
    """``53ms``, ``3.2s``, ``42s``, ``3m 12s``, ``2h 5m``, ``3d 4h``."""
    if seconds is None:
        return "—"
    value = max(0.0, float(seconds))
    if value == float("inf"):
        return "(invalid duration)"
    if value < 1:
        return f"{value * 1000:.0f}ms"
    if value < 10:
        return f"{value:.1f}s"
    whole = round(value)  # 59.99s is "1m", as the "ago" next to it would say
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60}s" if whole % 60 else f"{whole // 60}m"
    if whole < 86400:
        hours, minutes = whole // 3600, (whole % 3600) // 60
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    days, hours = whole // 86400, (whole % 86400) // 3600
    return f"{days}d {hours}h" if hours else f"{days}d"


FUTURE_SKEW_TOLERATED = 2.0


def ago(timestamp: float | None, now: float) -> str:
    if timestamp is None:
        return "never"
    delta = now - timestamp
    if delta != delta or abs(delta) == float("inf"):
        return "(invalid time)"
    if -FUTURE_SKEW_TOLERATED < delta < 1:
        return "just now"  # a host's clock a second ahead is not news
    whole = round(abs(delta))
    # Whole seconds read better here than duration()'s "3.2s": an age is not a runtime.
    span = f"{whole}s" if whole < 60 else duration(whole)
    return f"in {span}" if delta < 0 else f"{span} ago"  # "in": a clock ahead of ours


def utc_time(timestamp: float | None) -> str:
    if timestamp is None:
        return "—"
    try:
        moment = dt.datetime.fromtimestamp(timestamp, tz=dt.timezone.utc)
    except (OverflowError, OSError, ValueError, TypeError):
        # Intake and the loaders keep such times out of the store; a renderer still never
        # raises on a stored value (a message that cannot render is a blind bot).
        return "(invalid time)"
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def shortid(value: Any) -> str:
    return "" if value is None else str(value)[:8]


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    word = singular if count == 1 else (plural_form or singular + "s")
    return f"{count} {word}"
