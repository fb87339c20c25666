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
    if element.get("type") == "overflow":  # a row's menu: its choices, in one bracket
        options = element.get("options") or []
        labels = [_plain(str((o.get("text") or {}).get("text", ""))) for o in options]
        return f"[{' · '.join(label for label in labels if label)}]" if labels else ""
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
