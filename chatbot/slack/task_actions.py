"""The actions on task rows and on the task view: a click is the typed command, as the clicker.

:mod:`chatbot.task_actions` says what each menu option and button stands for; here a click is
checked against the task as it is now (a stale click is answered with what changed, nothing
sent), then run through the dispatcher as the *clicking* user (``ActionClick.user_id`` of the
signed payload) with ``run_command``, so it meets the same operator check, approval flow and
audit as typing it. Details answer the clicker alone (ephemeral); an approval card is posted
in the channel, like a typed control command's; "Full traceback" answers the clicker with the
whole text the store kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from chatbot.cluster_config import split_value
from chatbot.model import Task
from chatbot.redaction import ELLIPSIS
from chatbot.render import Message, Renderer, mrkdwn
from chatbot.slack.app import ActionClick, ActionHandler, ActionReply
from chatbot.slack.approval_actions import ApprovalActions
from chatbot.task_actions import (
    GROUP_ACTION_ID,
    TASK_ACTION_IDS,
    TRACEBACK,
    WORKER_MENU_ACTION_ID,
    command_for,
    group_command,
    parse_value,
    stale_reason,
    worker_command,
)

__all__ = ["TaskButtons", "traceback_chunks"]

# A section's text is at most 3000 characters; escaping may grow a chunk (&, <, > become
# entities), and the code fence takes a few: pieces of this many raw characters fit.
CHUNK_CHARS = 2000


def traceback_chunks(text: str, size: int = CHUNK_CHARS) -> list[str]:
    """``text`` in pieces of at most ``size`` characters, cut at line ends where possible."""
    chunks: list[str] = []
    current = ""
    for line in text.splitlines(keepends=True):
        while len(line) > size:  # one line longer than a piece: cut it plainly
            if current:
                chunks.append(current)
                current = ""
            chunks.append(line[:size])
            line = line[size:]
        if len(current) + len(line) > size:
            chunks.append(current)
            current = ""
        current += line
    if current.strip():
        chunks.append(current)
    return [chunk.rstrip("\n") for chunk in chunks]


class TaskButtons:
    """Handlers for the task menus and buttons (``chatbot.task_actions.TASK_ACTION_IDS``)."""

    def __init__(
        self,
        approvals: ApprovalActions,
        run_command: Callable[[str, str, str], Message],
        get_task: Callable[[str], Task | None],
        renderer: Renderer,
        *,
        get_task_in: Callable[[str, str], Task | None] | None = None,
    ) -> None:
        """``get_task_in(cluster, task_id)``: with several clusters, a task of the cluster a
        click's value names (``@NAME/VALUE``, see ``cluster_config.split_value``)."""
        self.approvals = approvals
        self.run_command = run_command
        self.get_task = get_task
        self.get_task_in = get_task_in
        self.renderer = renderer

    def actions(self) -> list[tuple[str, ActionHandler]]:
        """The ``(action_id, handler)`` pairs to give ``build_app``."""
        return [(action_id, self.on_click) for action_id in TASK_ACTION_IDS]

    def on_click(self, click: ActionClick) -> ActionReply:
        # With several clusters the value names the cluster the row came from: the click's
        # command is addressed to it, and the task looked up there.
        cluster, value = split_value(click.value)
        click = replace(click, value=value)
        address = f"@{cluster} " if cluster else ""
        if click.action_id == GROUP_ACTION_ID:
            listing = group_command(click.value)
            if listing is None:
                return ActionReply(Message(text="This button carries no failure group."))
            listed = self.run_command(address + listing, click.user_id, click.channel_id)
            return ActionReply(replace(listed, ephemeral=True))
        if click.action_id == WORKER_MENU_ACTION_ID:
            control = worker_command(click.value)
            if control is None:
                return ActionReply(Message(text="This menu carries no worker to act on."))
            return self._run_control(address + control, click)
        chosen = parse_value(click.value)
        if chosen is None:
            return ActionReply(Message(text="This button carries no task id to act on."))
        if cluster is not None and self.get_task_in is not None:
            task = self.get_task_in(cluster, chosen.task_id)
        else:
            task = self.get_task(chosen.task_id)
        stale = stale_reason(chosen, task)
        if stale is not None:
            # The reason names the task (its name came from the fleet): escaped.
            return ActionReply(Message(text=f"Nothing done: {mrkdwn(stale)}."))
        if chosen.verb == TRACEBACK:
            assert task is not None and task.traceback  # stale_reason said so
            return ActionReply(self.full_traceback(task))
        command = command_for(chosen)
        assert command is not None
        return self._run_control(address + command, click)

    def _run_control(self, command: str, click: ActionClick) -> ActionReply:
        message = self.run_command(command, click.user_id, click.channel_id)
        if not message.approval_id or not click.channel_id:
            # Details, a refusal, a result: to the clicker alone. Only approval cards are
            # posted in the channel from a click.
            return ActionReply(replace(message, ephemeral=True))
        ts = self.approvals.post_card(click.channel_id, message)
        if ts is None:
            return ActionReply(message)
        return ActionReply(Message(text=f"Posted `/celery {mrkdwn(command)}` for approval here."))

    def full_traceback(self, task: Task) -> Message:
        text = task.traceback or ""
        clipped = text.startswith(ELLIPSIS)
        return self.renderer.render(
            "traceback.json.j2",
            ephemeral=True,
            task=task,
            chunks=traceback_chunks(text),
            clipped=clipped,
        )
