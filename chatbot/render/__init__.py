"""Rendering: Jinja2 templates in, a :class:`Message` of valid Block Kit out.

The parts, one concern each:

- :mod:`chatbot.render.message`: :class:`Message`, what commands return and faces show;
- :mod:`chatbot.render.text`: escaping of untrusted text (``mrkdwn``) and the text filters;
- :mod:`chatbot.render.blockkit`: Block Kit's limits, enforced (``fit_message``) and validated
  (``validate_blocks``);
- :mod:`chatbot.render.renderer`: the Jinja2 :class:`Renderer` over ``templates/``.

Terminal text is :func:`chatbot.console_text.to_text`. The names below are re-exported so
``from chatbot.render import Message, Renderer`` keeps working; the modules are their homes.
"""

from chatbot.render.blockkit import (
    BUTTON_TEXT_MAX,
    BUTTON_VALUE_MAX,
    FALLBACK_TEXT_MAX,
    HEADER_TEXT_MAX,
    MESSAGE_MAX_BLOCKS,
    MESSAGE_TEXT_BUDGET,
    SECTION_TEXT_MAX,
    VIEW_MAX_BLOCKS,
    fit_message,
    validate_blocks,
)
from chatbot.render.message import Message
from chatbot.render.renderer import (
    PACKAGE_TEMPLATES,
    REPO_TEMPLATES,
    Renderer,
    RenderError,
    default_template_dirs,
)
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
    unescape_mrkdwn,
    utc_time,
)

__all__ = [
    "BUTTON_TEXT_MAX",
    "BUTTON_VALUE_MAX",
    "FALLBACK_TEXT_MAX",
    "HEADER_TEXT_MAX",
    "MESSAGE_MAX_BLOCKS",
    "MESSAGE_TEXT_BUDGET",
    "PACKAGE_TEMPLATES",
    "REPO_TEMPLATES",
    "SECTION_TEXT_MAX",
    "VIEW_MAX_BLOCKS",
    "Message",
    "RenderError",
    "Renderer",
    "ago",
    "default_template_dirs",
    "duration",
    "fit_message",
    "mrkdwn",
    "oneline",
    "plural",
    "shortid",
    "tail",
    "truncate",
    "truncate_middle",
    "unescape_mrkdwn",
    "utc_time",
    "validate_blocks",
]
