"""The App Home tab: the triage overview, rebuilt for the user each time they open it.

The tab shows the answers of existing commands (``status``, ``stuck``, ``failed``) through
the dispatcher, so it can never disagree with what ``/celery status`` says in a channel and
needs no data gathering of its own; ``templates/home.json.j2`` only arranges them.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from slack_sdk import WebClient

from chatbot.slack.interfaces import SlackServices

log = logging.getLogger(__name__)

HOME_TEMPLATE = "home.json.j2"
# Command lines whose answers make up the tab, in order. `status` reads the broker, so the
# whole view is built off the request thread.
HOME_COMMANDS: tuple[str, ...] = ("status", "stuck --limit 5", "failed --limit 10")


def home_view(services: SlackServices, user_id: str) -> dict[str, Any]:
    """The ``home`` view for ``user_id`` (at most 100 blocks, Block Kit limits applied)."""
    ctx = services.context(user_id, "")
    dispatcher = services.dispatcher
    sections = []
    for line in HOME_COMMANDS:
        message = dispatcher.execute(dispatcher.prepare(line), ctx)
        sections.append({"command": line, "blocks": message.blocks})
    try:
        blocks = services.renderer.render_view_blocks(HOME_TEMPLATE, sections=sections)
    except Exception:
        reference = uuid.uuid4().hex[:8]
        log.exception("rendering the App Home failed (ref %s, user %s)", reference, user_id)
        blocks = dispatcher.internal_error("home", reference).blocks
    return {"type": "home", "blocks": blocks}


def publish_home(services: SlackServices, client: WebClient, user_id: str) -> None:
    """Build and publish the view; raises what ``views.publish`` raises (the caller logs)."""
    client.views_publish(user_id=user_id, view=home_view(services, user_id))
