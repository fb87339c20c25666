"""Jinja2 templates in, a :class:`~chatbot.render.message.Message` that fits Slack's limits out.

A template renders a JSON document ``{"text": ..., "blocks": [...]}``. Templates JSON-encode
every interpolation with ``tojson`` and pass every value that came from a task or a worker
through the one escaping filter, ``mrkdwn`` (:mod:`chatbot.render.text`). The renderer parses
the document and hands it to the limit enforcer (:func:`chatbot.render.blockkit.fit_message`),
which makes ANY rendered document valid for Slack.

Layout lives in ``templates/`` only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2

from chatbot.render.blockkit import (
    DEFAULT_NARROW_HINT,
    MESSAGE_MAX_BLOCKS,
    MESSAGE_TEXT_BUDGET,
    VIEW_MAX_BLOCKS,
    fit_message,
)
from chatbot.render.message import Message
from chatbot.render.text import (
    ago,
    duration,
    mrkdwn,
    oneline,
    plural,
    shortid,
    tail,
    truncate,
    truncate_middle,
    utc_time,
)
from chatbot.task_actions import (
    failed_task_menu,
    group_button,
    task_buttons,
    task_menu,
    worker_menu,
)
from chatbot.tracebacks import readable_traceback

# Installed, the templates are chatbot/templates (pyproject's force-include); in a checkout,
# templates/ at the repository root.
PACKAGE_TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
REPO_TEMPLATES = Path(__file__).resolve().parent.parent.parent / "templates"


class RenderError(RuntimeError):
    """A template produced something that is not a message document (a bug in the template)."""


@jinja2.pass_context
def _ago_filter(context: jinja2.runtime.Context, timestamp: float | None) -> str:
    # Commands pass `now` from their clock, so "3s ago" is exact and testable.
    return ago(timestamp, float(context["now"]))


def _readable_traceback(text: str | None) -> str:
    return readable_traceback(text).text if text else ""


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
            readable_traceback=_readable_traceback,
            task_menu=task_menu,
            task_buttons=task_buttons,
        )
        self.env.globals.update(
            group_button=group_button, worker_menu=worker_menu, failed_task_menu=failed_task_menu
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
