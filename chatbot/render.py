"""Block Kit rendering: Jinja2 templates in, a `Message` that fits Slack's limits out.

A template renders a JSON document ``{"text": ..., "blocks": [...]}``. Templates JSON-encode
every interpolation with ``tojson`` and pass every value that came from a task or a worker
through the one escaping filter, ``mrkdwn``. The renderer parses the document and hands it
to the limit enforcer (:func:`fit_message`), which makes ANY rendered document valid for Slack:
counts, lengths, ids and the cumulative text budget; a list that does not fit is paged with a
"N more" hint instead of being dropped silently.

Layout lives in ``templates/`` only; this module knows block *types* and their limits, never a
particular message's layout.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

# -- Block Kit limits (chatops research §2.5; slack_sdk.models.blocks) ------------------------
MESSAGE_MAX_BLOCKS = 50
VIEW_MAX_BLOCKS = 100
SECTION_TEXT_MAX = 3000
SECTION_FIELDS_MAX = 10
FIELD_TEXT_MAX = 2000
HEADER_TEXT_MAX = 150
CONTEXT_ELEMENTS_MAX = 10
CONTEXT_TEXT_MAX = 3000
MARKDOWN_BLOCK_MAX = 12000
ACTIONS_ELEMENTS_MAX = 25
BUTTON_TEXT_MAX = 75
BUTTON_VALUE_MAX = 2000
BUTTON_URL_MAX = 3000
ID_MAX = 255  # action_id and block_id
# Slack cuts `text` beyond 40,000 characters; a notification preview needs far less.
FALLBACK_TEXT_MAX = 3000
# chat.postMessage rejects messages whose block texts add up to about 12,000 characters
# (msg_blocks_too_long, slackapi/bolt-js#2509 and #2867: rejected even at 11,341); keep a margin.
MESSAGE_TEXT_BUDGET = 10000

ELLIPSIS = "…"
ITEM_BLOCK_PREFIX = "item-"
MORE_BLOCK_ID = "more"
DEFAULT_NARROW_HINT = "narrow with --limit, --name or --since"

# Untrusted backticks would close our code spans; U+02CB looks the same and is inert.
_INERT_BACKTICK = "\u02cb"
_ENTITY_TAIL = re.compile(r"&[a-z]{0,3}$")  # a cut that split &amp; &lt; or &gt;
_ENTITY_HEAD = re.compile(r"^[a-z]{0,3};")

PACKAGE_TEMPLATES = Path(__file__).resolve().parent / "templates"
REPO_TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


class RenderError(RuntimeError):
    """A template produced something that is not a message document (a bug in the template)."""


@dataclass
class Message:
    """What every command returns and every face (Slack, console) shows.

    ``text`` is the plain fallback used for notifications; ``blocks`` is Block Kit.
    """

    text: str
    blocks: list[dict[str, Any]] = field(default_factory=list)
    ephemeral: bool = True
    # Set on a pending approval card: a face posts it in the channel as the app
    # (chat.postMessage) rather than as a reply, and reports the channel and ts back to the
    # approvals, which update the card by its ts later (expiry, decision, confirmation).
    approval_id: str | None = None

    def to_response(self) -> dict[str, Any]:
        """The body for ``respond()`` / a response_url."""
        return {
            "response_type": "ephemeral" if self.ephemeral else "in_channel",
            "text": self.text,
            "blocks": self.blocks,
        }


# -- escaping and text filters ------------------------------------------------------------------
def mrkdwn(value: Any) -> str:
    """Escape untrusted text for Slack mrkdwn: no mention, no link, no broken code span."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("`", _INERT_BACKTICK)
    )


def unescape_mrkdwn(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _safe_end(text: str, cut: int) -> int:
    """Move a cut position left so it does not split an escaped entity."""
    match = _ENTITY_TAIL.search(text[max(0, cut - 4) : cut])
    return cut - len(match.group(0)) if match else cut


def _safe_start(text: str, start: int) -> int:
    """Move a start position right so the kept part does not begin mid-entity."""
    match = _ENTITY_HEAD.match(text[start : start + 4])
    return start + len(match.group(0)) if match else start


def truncate(value: Any, limit: int) -> str:
    """At most ``limit`` characters, keeping the start."""
    text = "" if value is None else str(value)
    if len(text) <= limit:
        return text
    cut = _safe_end(text, max(0, limit - len(ELLIPSIS)))
    return text[:cut] + ELLIPSIS


def truncate_middle(value: Any, limit: int = 200) -> str:
    """At most ``limit`` characters, keeping the start and the end (both say something)."""
    text = "" if value is None else str(value)
    if len(text) <= limit:
        return text
    keep = max(0, limit - len(ELLIPSIS))
    head_len = (keep + 1) // 2
    tail_len = keep - head_len
    head_end = _safe_end(text, head_len)
    tail_start = _safe_start(text, len(text) - tail_len) if tail_len else len(text)
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
        start = _safe_start(last, max(0, len(last) - (limit - len(ELLIPSIS))))
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
    if -FUTURE_SKEW_TOLERATED < delta < 1:
        return "just now"  # a host's clock a second ahead is not news
    whole = round(abs(delta))
    # Whole seconds read better here than duration()'s "3.2s": an age is not a runtime.
    span = f"{whole}s" if whole < 60 else duration(whole)
    return f"in {span}" if delta < 0 else f"{span} ago"  # "in": a clock ahead of ours


def utc_time(timestamp: float | None) -> str:
    if timestamp is None:
        return "—"
    moment = dt.datetime.fromtimestamp(timestamp, tz=dt.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def shortid(value: Any) -> str:
    return "" if value is None else str(value)[:8]


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    word = singular if count == 1 else (plural_form or singular + "s")
    return f"{count} {word}"


@jinja2.pass_context
def _ago_filter(context: jinja2.runtime.Context, timestamp: float | None) -> str:
    # Commands pass `now` from their clock, so "3s ago" is exact and testable.
    return ago(timestamp, float(context["now"]))


# -- the limit enforcer -----------------------------------------------------------------------
def _fit_text(text: str, limit: int) -> str:
    """Cut mrkdwn text to ``limit`` without splitting an entity or leaving a code span open."""
    if len(text) <= limit:
        return text
    suffix = ""
    for _ in range(3):  # the suffix depends on the cut and the cut on the suffix: settle it
        cut = _safe_end(text, max(0, limit - len(suffix) - len(ELLIPSIS)))
        kept = text[:cut]
        fences = kept.count("```")
        singles = kept.replace("```", "").count("`")
        needed = ("`" if singles % 2 else "") + ("\n```" if fences % 2 else "")
        if needed == suffix:
            break
        suffix = needed
    return kept + ELLIPSIS + suffix


def _fit_text_object(obj: Any, limit: int) -> dict[str, Any] | None:
    if not isinstance(obj, Mapping):
        return None
    fitted = dict(obj)
    text = str(fitted.get("text") or "")
    if not text.strip():
        return None  # Slack rejects empty text objects
    if fitted.get("type") not in ("mrkdwn", "plain_text"):
        fitted["type"] = "mrkdwn"
    fitted["text"] = _fit_text(text, limit)
    return fitted


def _fit_id(value: Any) -> str | None:
    if value is None:
        return None
    return str(value)[:ID_MAX] or None


def _fit_element(element: Any) -> dict[str, Any] | None:
    """Interactive elements (buttons mostly): text, value, url and action_id within limits."""
    if not isinstance(element, Mapping):
        return None
    fitted = dict(element)
    if "action_id" in fitted:
        fitted["action_id"] = _fit_id(fitted["action_id"])
    if fitted.get("type") == "button":
        label = _fit_text_object(fitted.get("text"), BUTTON_TEXT_MAX)
        if label is None:
            return None
        label["type"] = "plain_text"
        fitted["text"] = label
        if "value" in fitted:
            # A value is data, not prose: an ellipsis would corrupt it, so it is cut plainly.
            fitted["value"] = str(fitted["value"])[:BUTTON_VALUE_MAX]
        if "url" in fitted:
            fitted["url"] = str(fitted["url"])[:BUTTON_URL_MAX]
    return fitted


def _fit_block(block: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One block made valid; may become zero blocks (nothing to show) or several (fields)."""
    fitted = dict(block)
    kind = fitted.get("type")
    if "block_id" in fitted:
        fitted["block_id"] = _fit_id(fitted["block_id"])
        if fitted["block_id"] is None:
            del fitted["block_id"]
    if kind == "header":
        text = _fit_text_object(fitted.get("text"), HEADER_TEXT_MAX)
        if text is None:
            return []
        text["type"] = "plain_text"
        text.pop("verbatim", None)
        fitted["text"] = text
        return [fitted]
    if kind == "section":
        text = _fit_text_object(fitted.get("text"), SECTION_TEXT_MAX)
        raw_fields = fitted.get("fields") or []
        fields = [
            f for f in (_fit_text_object(f, FIELD_TEXT_MAX) for f in raw_fields) if f is not None
        ]
        if "accessory" in fitted:
            accessory = _fit_element(fitted["accessory"])
            if accessory is None:
                del fitted["accessory"]
            else:
                fitted["accessory"] = accessory
        if text is None:
            fitted.pop("text", None)
        else:
            fitted["text"] = text
        if not fields:
            fitted.pop("fields", None)
            return [fitted] if text is not None else []
        # More than ten fields: carry the rest in following sections rather than drop them.
        fitted["fields"] = fields[:SECTION_FIELDS_MAX]
        out = [fitted]
        for start in range(SECTION_FIELDS_MAX, len(fields), SECTION_FIELDS_MAX):
            out.append({"type": "section", "fields": fields[start : start + SECTION_FIELDS_MAX]})
        return out
    if kind == "context":
        elements = []
        for element in fitted.get("elements") or []:
            if isinstance(element, Mapping) and element.get("type") in ("mrkdwn", "plain_text"):
                fitted_element = _fit_text_object(element, CONTEXT_TEXT_MAX)
                if fitted_element is not None:
                    elements.append(fitted_element)
            elif isinstance(element, Mapping):
                elements.append(dict(element))
        if not elements:
            return []
        if len(elements) > CONTEXT_ELEMENTS_MAX:
            # Merge the overflow into the last element so nothing vanishes.
            rest = elements[CONTEXT_ELEMENTS_MAX - 1 :]
            merged = " · ".join(str(e.get("text", "")) for e in rest if "text" in e)
            overflow = {"type": "mrkdwn", "text": _fit_text(merged or ELLIPSIS, CONTEXT_TEXT_MAX)}
            elements = [*elements[: CONTEXT_ELEMENTS_MAX - 1], overflow]
        fitted["elements"] = elements
        return [fitted]
    if kind == "actions":
        elements = [
            e for e in (_fit_element(e) for e in fitted.get("elements") or []) if e is not None
        ]
        if not elements:
            return []
        fitted["elements"] = elements[:ACTIONS_ELEMENTS_MAX]
        return [fitted]
    if kind == "markdown":
        body = str(fitted.get("text") or "")
        if not body.strip():
            return []
        fitted["text"] = _fit_text(body, MARKDOWN_BLOCK_MAX)
        return [fitted]
    if kind == "divider":
        return [fitted]
    # Unknown types pass through: Slack knows more blocks than this enforcer does.
    return [fitted] if kind else []


def _text_size(node: Any) -> int:
    """Characters of every text in a block tree (what Slack's cumulative limit counts)."""
    if isinstance(node, Mapping):
        return sum(
            len(value) if key == "text" and isinstance(value, str) else _text_size(value)
            for key, value in node.items()
        )
    if isinstance(node, list):
        return sum(_text_size(value) for value in node)
    return 0


def _is_item(block: Mapping[str, Any]) -> bool:
    return str(block.get("block_id", "")).startswith(ITEM_BLOCK_PREFIX)


def _more_block(count: int, hint: str) -> dict[str, Any]:
    text = (
        f"{ELLIPSIS} {count} more not shown — {hint}"
        if count
        else f"{ELLIPSIS} cut to fit Slack's message limits"
    )
    return {
        "type": "context",
        "block_id": MORE_BLOCK_ID,
        "elements": [{"type": "mrkdwn", "text": text}],
    }


def _page(
    blocks: list[dict[str, Any]],
    over: Callable[[list[dict[str, Any]]], bool],
    more: int,
    narrow_hint: str,
) -> list[dict[str, Any]]:
    """Drop the last list items (then trailing blocks) until the message fits, with a hint.

    The hint goes right after the last item kept, so a footer after the list survives.
    """
    blocks = list(blocks)
    gap: int | None = None  # where the list ended, once items or the template's hint are gone
    for index in reversed(range(len(blocks))):
        if blocks[index].get("block_id") == MORE_BLOCK_ID:
            del blocks[index]
            gap = index
    dropped_items = dropped_other = 0
    while True:
        items = [i for i, b in enumerate(blocks) if _is_item(b)]
        trial = list(blocks)
        if more or dropped_items or dropped_other:
            position = items[-1] + 1 if items else (len(blocks) if gap is None else gap)
            trial.insert(min(position, len(blocks)), _more_block(more + dropped_items, narrow_hint))
        if not over(trial) or not blocks:
            return trial
        victim = items[-1] if items else len(blocks) - 1
        if items:
            dropped_items += 1
        else:
            dropped_other += 1
        del blocks[victim]
        gap = victim if gap is None else min(gap, victim)


def _unique_block_ids(blocks: list[dict[str, Any]]) -> None:
    seen: set[str] = set()
    for block in blocks:
        block_id = block.get("block_id")
        if block_id is None:
            continue
        candidate, n = block_id, 2
        while candidate in seen:
            suffix = f"-{n}"
            candidate = block_id[: ID_MAX - len(suffix)] + suffix
            n += 1
        block["block_id"] = candidate
        seen.add(candidate)


def fit_message(
    document: Mapping[str, Any],
    *,
    max_blocks: int = MESSAGE_MAX_BLOCKS,
    text_budget: int | None = MESSAGE_TEXT_BUDGET,
    more: int = 0,
    narrow_hint: str = DEFAULT_NARROW_HINT,
) -> tuple[str, list[dict[str, Any]]]:
    """Make a rendered document valid Block Kit: returns ``(text, blocks)``.

    List entries are blocks whose ``block_id`` starts with ``item-``. When blocks must go (more
    than ``max_blocks``, or more text than ``text_budget``), the last items go first, and one
    "N more not shown" context replaces them (and replaces the template's own ``more`` block;
    ``more`` is how many the template already left out).
    """
    blocks: list[dict[str, Any]] = []
    for raw in document.get("blocks") or []:
        if isinstance(raw, Mapping):
            blocks.extend(_fit_block(raw))

    def over(candidate: list[dict[str, Any]]) -> bool:
        if len(candidate) > max_blocks:
            return True
        return text_budget is not None and _text_size(candidate) > text_budget

    if over(blocks):
        blocks = _page(blocks, over, more, narrow_hint)
    _unique_block_ids(blocks)

    text = str(document.get("text") or "").strip()
    if not text:
        text = _first_text(blocks) or "celery-chatops"
    return _fit_text(text, FALLBACK_TEXT_MAX), blocks


def _first_text(blocks: Iterable[Mapping[str, Any]]) -> str:
    for block in blocks:
        text = block.get("text")
        if isinstance(text, Mapping) and text.get("text"):
            return str(text["text"])
    return ""


def check_limits(
    blocks: Sequence[Mapping[str, Any]],
    *,
    max_blocks: int = MESSAGE_MAX_BLOCKS,
    text_budget: int | None = MESSAGE_TEXT_BUDGET,
) -> list[str]:
    """Every Block Kit limit ``blocks`` break (empty when valid); for tests and logging."""
    problems: list[str] = []
    if len(blocks) > max_blocks:
        problems.append(f"{len(blocks)} blocks > {max_blocks}")
    if text_budget is not None and _text_size(list(blocks)) > text_budget:
        problems.append(f"{_text_size(list(blocks))} text characters > {text_budget}")
    seen: set[str] = set()

    def text_of(obj: Any) -> str:
        return str(obj.get("text", "")) if isinstance(obj, Mapping) else ""

    def check_text(where: str, obj: Any, limit: int) -> None:
        text = text_of(obj)
        if not text.strip():
            problems.append(f"{where}: empty text")
        elif len(text) > limit:
            problems.append(f"{where}: {len(text)} characters > {limit}")

    def check_elements(where: str, elements: Sequence[Any]) -> None:
        for element in elements:
            if not isinstance(element, Mapping) or element.get("type") != "button":
                continue
            check_text(f"{where} button", element.get("text"), BUTTON_TEXT_MAX)
            if len(str(element.get("value", ""))) > BUTTON_VALUE_MAX:
                problems.append(f"{where}: button value > {BUTTON_VALUE_MAX}")
            if len(str(element.get("action_id", ""))) > ID_MAX:
                problems.append(f"{where}: action_id > {ID_MAX}")

    for index, block in enumerate(blocks):
        where = f"block {index} ({block.get('type')})"
        block_id = block.get("block_id")
        if block_id is not None:
            if len(str(block_id)) > ID_MAX:
                problems.append(f"{where}: block_id > {ID_MAX}")
            if block_id in seen:
                problems.append(f"{where}: duplicate block_id {block_id!r}")
            seen.add(str(block_id))
        kind = block.get("type")
        if kind == "header":
            check_text(where, block.get("text"), HEADER_TEXT_MAX)
        elif kind == "section":
            fields = block.get("fields") or []
            if "text" in block:
                check_text(where, block["text"], SECTION_TEXT_MAX)
            elif not fields:
                problems.append(f"{where}: neither text nor fields")
            if len(fields) > SECTION_FIELDS_MAX:
                problems.append(f"{where}: {len(fields)} fields > {SECTION_FIELDS_MAX}")
            for field_obj in fields:
                check_text(f"{where} field", field_obj, FIELD_TEXT_MAX)
            if isinstance(block.get("accessory"), Mapping):
                check_elements(where, [block["accessory"]])
        elif kind == "context":
            elements = block.get("elements") or []
            if not elements or len(elements) > CONTEXT_ELEMENTS_MAX:
                problems.append(f"{where}: {len(elements)} elements")
            for element in elements:
                if isinstance(element, Mapping) and "text" in element:
                    check_text(f"{where} element", element, CONTEXT_TEXT_MAX)
        elif kind == "actions":
            elements = block.get("elements") or []
            if not elements or len(elements) > ACTIONS_ELEMENTS_MAX:
                problems.append(f"{where}: {len(elements)} elements")
            check_elements(where, elements)
        elif kind == "markdown":
            check_text(where, block, MARKDOWN_BLOCK_MAX)
    return problems


# -- JSON produced by templates ----------------------------------------------------------------
def _strip_trailing_commas(source: str) -> str:
    """Drop commas that precede ``]`` or ``}``, outside strings.

    Templates end every block with a comma so loops and conditionals need no comma logic.
    """
    out: list[str] = []
    in_string = escaped = False
    length = len(source)
    i = 0
    while i < length:
        char = source[i]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == ",":
            j = i + 1
            while j < length and source[j] in " \t\r\n":
                j += 1
            if j < length and source[j] in "]}":
                i += 1
                continue
        out.append(char)
        i += 1
    return "".join(out)


def default_template_dirs() -> list[Path]:
    return [d for d in (PACKAGE_TEMPLATES, REPO_TEMPLATES) if d.is_dir()]


class Renderer:
    """Jinja2 templates (``<name>.json.j2``) to :class:`Message`."""

    def __init__(
        self,
        template_dirs: Sequence[str | Path] | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # Explicit directories first, so a deployment can override a single template.
        dirs = [Path(d) for d in template_dirs or ()] + default_template_dirs()
        if not dirs:
            raise RenderError(f"no template directory found (looked in {REPO_TEMPLATES})")
        self._clock = clock
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader([str(d) for d in dirs]),
            undefined=jinja2.StrictUndefined,
            autoescape=False,  # the output is JSON; escaping is tojson's and mrkdwn's job
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=["jinja2.ext.do"],
        )
        self.env.filters.update(
            mrkdwn=mrkdwn,
            truncate_middle=truncate_middle,
            truncate_end=truncate,
            tail=tail,
            oneline=oneline,
            duration=duration,
            ago=_ago_filter,
            ts=utc_time,
            shortid=shortid,
            plural=plural,
        )

    def render_document(self, template: str, context: Mapping[str, Any]) -> dict[str, Any]:
        """The template's JSON document, before limits are applied."""
        values = dict(context)
        values.setdefault("now", self._clock())
        source = self.env.get_template(template).render(values)
        try:
            document = json.loads(_strip_trailing_commas(source))
        except json.JSONDecodeError as exc:
            raise RenderError(f"{template} rendered invalid JSON: {exc}") from None
        if not isinstance(document, dict):
            raise RenderError(f"{template} rendered {type(document).__name__}, not an object")
        return document

    def render(
        self,
        template: str,
        /,
        *,
        ephemeral: bool = True,
        max_blocks: int = MESSAGE_MAX_BLOCKS,
        text_budget: int | None = MESSAGE_TEXT_BUDGET,
        **context: Any,
    ) -> Message:
        """Render ``template`` with ``context``; ``more`` and ``narrow_hint`` feed paging."""
        document = self.render_document(template, context)
        text, blocks = fit_message(
            document,
            max_blocks=max_blocks,
            text_budget=text_budget,
            more=int(context.get("more", 0) or 0),
            narrow_hint=str(context.get("narrow_hint") or DEFAULT_NARROW_HINT),
        )
        return Message(text=text, blocks=blocks, ephemeral=ephemeral)

    def render_view_blocks(self, template: str, /, **context: Any) -> list[dict[str, Any]]:
        """Blocks for a Home tab or modal (100 blocks, no cumulative message budget)."""
        document = self.render_document(template, context)
        _, blocks = fit_message(
            document,
            max_blocks=VIEW_MAX_BLOCKS,
            text_budget=None,
            more=int(context.get("more", 0) or 0),
            narrow_hint=str(context.get("narrow_hint") or DEFAULT_NARROW_HINT),
        )
        return blocks


# -- terminal rendering ------------------------------------------------------------------------
# Slack emoji the templates use, as terminal-friendly symbols.
_TERMINAL_EMOJI = {
    ":large_green_circle:": "●",
    ":red_circle:": "○",
    ":warning:": "(!)",
    ":x:": "✗",
    ":white_check_mark:": "✓",
    ":arrow_forward:": "▶",
    ":hourglass:": "⌛",
    ":repeat:": "↻",
    ":no_entry_sign:": "⊘",
    ":grey_question:": "?",
    ":inbox_tray:": "↓",
}
_EMOJI = re.compile("|".join(re.escape(code) for code in _TERMINAL_EMOJI))
_BOLD = re.compile(r"(?<![\w*])\*(?=\S)([^*\n]+?)(?<=\S)\*(?![\w*])")
_CODE_SPAN = re.compile(r"(```.*?```|`[^`\n]*`)", re.DOTALL)


def _plain(text: str) -> str:
    """mrkdwn to terminal text: bold markers dropped outside code, entities unescaped."""
    parts = _CODE_SPAN.split(text)
    out: list[str] = []
    for index, part in enumerate(parts):
        if index % 2:  # a code span or block: keep literally, minus the fences
            if part.startswith("```"):
                body = part[3:-3].strip("\n")
                out.append("\n" + "\n".join("    " + line for line in body.split("\n")) + "\n")
            else:
                out.append(part[1:-1])
        else:
            part = _EMOJI.sub(lambda m: _TERMINAL_EMOJI[m.group(0)], part)
            out.append(_BOLD.sub(r"\1", part))
    return unescape_mrkdwn("".join(out)).strip("\n")


def _element_text(element: Mapping[str, Any]) -> str:
    if element.get("type") in ("mrkdwn", "plain_text"):
        return _plain(str(element.get("text", "")))
    if element.get("type") == "button":
        label = element.get("text") or {}
        return f"[{_plain(str(label.get('text', '')))}]"
    return ""


def to_text(message: Message, width: int = 78) -> str:
    """A readable terminal rendering of a Block Kit message."""
    lines: list[str] = []
    for block in message.blocks or []:
        kind = block.get("type")
        if kind == "section" and lines and lines[-1] != "":
            lines.append("")  # sections are paragraphs in Slack; keep them apart here too
        if kind == "header":
            title = _plain(str((block.get("text") or {}).get("text", "")))
            lines += [title, "=" * min(width, max(3, len(title)))]
        elif kind == "section":
            if block.get("text"):
                lines.append(_plain(str(block["text"].get("text", ""))))
            for item in block.get("fields") or []:
                # Fields are "label\nvalue": one "label: value" line each reads best in a terminal.
                label_and_value = _plain(str(item.get("text", ""))).strip()
                lines.append("  " + label_and_value.replace("\n", ": ", 1).replace("\n", " "))
            accessory = block.get("accessory")
            if isinstance(accessory, Mapping):
                lines.append("  " + _element_text(accessory))
        elif kind == "context":
            parts = [_element_text(e) for e in block.get("elements") or []]
            lines.append("  " + " · ".join(p for p in parts if p))
        elif kind == "divider":
            lines.append("-" * width)
        elif kind == "actions":
            lines.append("  " + "  ".join(_element_text(e) for e in block.get("elements") or []))
        elif kind == "markdown":
            lines.append(_plain(str(block.get("text", ""))))
    if not lines:
        lines.append(unescape_mrkdwn(message.text))
    return "\n".join(lines).strip("\n") + "\n"
