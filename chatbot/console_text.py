"""A :class:`~chatbot.render.message.Message` as terminal text: what the console face prints.

Beside the console (``chatbot/console.py``) but one layer lower than it: the demo's console
alerts (``chatbot/alerts/console.py``) print messages with it too, and may not import a face.
Code spans and blocks keep their characters; bold markers, entities and the templates' emoji
codes become plain text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from chatbot.render.message import Message
from chatbot.render.text import unescape_mrkdwn

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
    ":no_bell:": "(muted)",
    ":bell:": "(!)",
    ":rotating_light:": "(!!)",
    ":electric_plug:": "(plug)",
    ":raised_hand:": "(?)",
    ":outbox_tray:": "↑",
    ":no_entry:": "⊘",
    ":new:": "(new)",
    ":mute:": "(silent)",
    ":hourglass_flowing_sand:": "⌛",
    ":chart_with_upwards_trend:": "↗",
    ":chart_with_downwards_trend:": "↘",
}
# Slack's own markup outside code: a mention or a channel link as the text it stands for.
# (Untrusted text is escaped, ``&lt;@U1&gt;``, so only the bot's own markup matches here.)
_MENTION = re.compile(r"<@([UW][A-Z0-9]+)(?:\|[^>]*)?>")
_CHANNEL = re.compile(r"<#([CG][A-Z0-9]+)(?:\|([^>]*))?>")
_SPECIAL = re.compile(r"<!(here|channel|everyone)(?:\|[^>]*)?>")
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
            part = _MENTION.sub(r"@\1", part)
            part = _CHANNEL.sub(lambda m: "#" + (m.group(2) or m.group(1)), part)
            part = _SPECIAL.sub(r"@\1", part)
            out.append(_BOLD.sub(r"\1", part))
    return unescape_mrkdwn("".join(out)).strip("\n")


def _element_text(element: Mapping[str, Any], row: int | None = None) -> str:
    if element.get("type") in ("mrkdwn", "plain_text"):
        return _plain(str(element.get("text", "")))
    if element.get("type") == "button":
        label = element.get("text") or {}
        return f"[{_plain(str(label.get('text', '')))}]"
    if element.get("type") == "overflow":  # a row's menu: its choices, in one bracket
        options = element.get("options") or []
        labels = [_plain(str((o.get("text") or {}).get("text", ""))) for o in options]
        shown = " · ".join(label for label in labels if label)
        if not shown:
            return ""
        # Numbered, the console lets `details 3`, `revoke 3` act on the row.
        return f"[{row}: {shown}]" if row is not None else f"[{shown}]"
    return ""


def to_text(message: Message, width: int = 78, *, numbered: bool = False) -> str:
    """A readable terminal rendering of a Block Kit message.

    ``numbered``: row menus read ``[3: Details · Retry]``, numbered in order (as
    :func:`row_menus` lists them), for a console that acts on rows by number.
    """
    lines: list[str] = []
    row = 0
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
                number = None
                if numbered and accessory.get("type") == "overflow":
                    row += 1
                    number = row
                lines.append("  " + _element_text(accessory, number))
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


def row_menus(message: Message) -> list[list[str]]:
    """The option values of each row menu (overflow accessory), in the order shown."""
    menus: list[list[str]] = []
    for block in message.blocks or []:
        accessory = block.get("accessory") if block.get("type") == "section" else None
        if isinstance(accessory, Mapping) and accessory.get("type") == "overflow":
            menus.append([str(o.get("value") or "") for o in accessory.get("options") or []])
    return menus
