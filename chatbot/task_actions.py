"""The actions on a task row or a task view, and the command line each click stands for.

Every task listed by ``failed``, ``tasks``, ``active`` and ``stuck`` carries an overflow menu
(:func:`task_menu`): *Details* always; *Revoke* and *Terminate* while it is queued or running;
*Retry* once it failed. The task view carries the same as buttons (:func:`task_buttons`), plus
*Full traceback*. Each option's value is ``verb:task_id``; the Slack layer turns a click into
:func:`command_for`'s command line and runs it through the dispatcher as the *clicking* user,
so a click is exactly the typed command: same operator check, same approvals, same audit.

Before running it, :func:`stale_reason` compares the task as it is now with what the verb
needs: a Revoke on a task that finished since the list was made, or a Retry on one that is no
longer failed, is answered with what changed instead of being sent.

Layer 0 (plain data): the renderer builds the menus with it, the Slack face parses clicks with
it, and neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chatbot.model import FAILURE, FINISHED_STATES, QUEUED_STATES, STARTED, Task

__all__ = [
    "GROUP_ACTION_ID",
    "TASK_ACTION_IDS",
    "TASK_MENU_ACTION_ID",
    "WORKER_MENU_ACTION_ID",
    "TaskClick",
    "command_for",
    "failed_task_menu",
    "group_button",
    "group_command",
    "parse_value",
    "stale_reason",
    "task_buttons",
    "task_menu",
    "worker_command",
    "worker_menu",
]

TASK_MENU_ACTION_ID = "chatops_task_menu"
# The task view's buttons: one action id each (Slack wants them unique within a block).
BUTTON_ACTION_IDS = {
    "revoke": "chatops_task_revoke",
    "terminate": "chatops_task_terminate",
    "retry": "chatops_task_retry",
    "traceback": "chatops_task_traceback",
}
# A failure group's "List" button (`failed`): lists the group's members.
GROUP_ACTION_ID = "chatops_failure_group"
# A worker row's menu (`workers`): its control actions.
WORKER_MENU_ACTION_ID = "chatops_worker_menu"
TASK_ACTION_IDS = (
    TASK_MENU_ACTION_ID,
    *BUTTON_ACTION_IDS.values(),
    GROUP_ACTION_ID,
    WORKER_MENU_ACTION_ID,
)
_WORKER_COMMANDS = {
    "grow": ("Grow pool by 1", "pool grow {worker} 1"),
    "shrink": ("Shrink pool by 1", "pool shrink {worker} 1"),
    "shutdown": ("Shutdown", "shutdown {worker}"),
}

DETAILS, REVOKE, TERMINATE, RETRY, TRACEBACK = (
    "details",
    "revoke",
    "terminate",
    "retry",
    "traceback",
)
_COMMANDS = {
    DETAILS: "task {task_id}",
    REVOKE: "revoke {task_id}",
    TERMINATE: "revoke {task_id} --terminate",
    RETRY: "retry {task_id}",
}
_LABELS = {
    DETAILS: "Details",
    REVOKE: "Revoke",
    TERMINATE: "Terminate",
    RETRY: "Retry",
    TRACEBACK: "Full traceback",
}
# Block Kit: an option's or a button's value is at most 150 characters (2000 for buttons);
# a task id longer than fits gets no actions rather than a cut, wrong id.
_VALUE_MAX = 150
_LIVE_STATES = QUEUED_STATES | {STARTED}


@dataclass(frozen=True)
class TaskClick:
    verb: str
    task_id: str


def _safe_id(task_id: str) -> bool:
    """A plain task id: nothing a command line would read as a flag or a second argument."""
    return (
        bool(task_id)
        and len(task_id) + len(TRACEBACK) + 1 <= _VALUE_MAX
        and not task_id.startswith("-")
        and not any(c.isspace() or c in "\"'\\:<>&`" or not c.isprintable() for c in task_id)
    )


def verbs_for(task: Task, *, view: bool = False) -> list[str]:
    """What can be done to ``task`` now: Details (in a list), Revoke/Terminate, Retry, and
    on the task view the full traceback."""
    verbs = [] if view else [DETAILS]
    if task.state in _LIVE_STATES:
        verbs += [REVOKE, TERMINATE]
    elif task.state == FAILURE:
        verbs.append(RETRY)
    if view and task.traceback:
        verbs.append(TRACEBACK)
    return verbs


def _value(verb: str, task_id: str) -> str:
    return f"{verb}:{task_id}"


def task_menu(task: Task | Any) -> dict[str, Any] | None:
    """The overflow menu of a task row (a section's accessory), or None when its id cannot be
    carried safely."""
    if not isinstance(task, Task) or not _safe_id(task.uuid):
        return None
    return {
        "type": "overflow",
        "action_id": TASK_MENU_ACTION_ID,
        "options": [
            {
                "text": {"type": "plain_text", "text": _LABELS[verb]},
                "value": _value(verb, task.uuid),
            }
            for verb in verbs_for(task)
        ],
    }


def failed_task_menu(task_id: Any) -> dict[str, Any] | None:
    """The menu of a failed task known only by its id (an alert's example failure)."""
    return task_menu(Task(task_id, state=FAILURE)) if isinstance(task_id, str) else None


def task_buttons(task: Task | Any) -> list[dict[str, Any]]:
    """The task view's buttons (an actions block's elements); empty when there are none."""
    if not isinstance(task, Task) or not _safe_id(task.uuid):
        return []
    buttons: list[dict[str, Any]] = []
    for verb in verbs_for(task, view=True):
        button: dict[str, Any] = {
            "type": "button",
            "action_id": BUTTON_ACTION_IDS[verb],
            "text": {"type": "plain_text", "text": _LABELS[verb]},
            "value": _value(verb, task.uuid),
        }
        if verb == TERMINATE:
            button["style"] = "danger"
        buttons.append(button)
    return buttons


def parse_value(value: str) -> TaskClick | None:
    """``verb:task_id`` from a menu option or button; None for anything else."""
    verb, sep, task_id = value.strip().partition(":")
    if not sep or verb not in _LABELS or not _safe_id(task_id):
        return None
    return TaskClick(verb, task_id)


def worker_menu(hostname: Any, online: bool = True) -> dict[str, Any] | None:
    """The overflow menu of a worker row: pool grow/shrink and shutdown while it is online."""
    if not online or not isinstance(hostname, str) or not _safe_id(hostname):
        return None
    return {
        "type": "overflow",
        "action_id": WORKER_MENU_ACTION_ID,
        "options": [
            {"text": {"type": "plain_text", "text": label}, "value": f"{verb}:{hostname}"}
            for verb, (label, _) in _WORKER_COMMANDS.items()
        ],
    }


def worker_command(value: str) -> str | None:
    """``pool grow W 1``, ``pool shrink W 1`` or ``shutdown W`` for a worker menu's value."""
    verb, sep, hostname = value.strip().partition(":")
    if not sep or verb not in _WORKER_COMMANDS or not _safe_id(hostname):
        return None
    return _WORKER_COMMANDS[verb][1].format(worker=hostname)


def group_button(key: str, since: float, count: int) -> dict[str, Any]:
    """The button listing one failure group's members (``failed --group KEY --since D``)."""
    return {
        "type": "button",
        "action_id": GROUP_ACTION_ID,
        "text": {"type": "plain_text", "text": f"List {count}"},
        "value": f"group:{key}:{max(1, round(since))}",
    }


def group_command(value: str) -> str | None:
    """``failed --group KEY --since Ns`` for a group button's value; None for anything else."""
    kind, _, rest = value.strip().partition(":")
    key, _, seconds = rest.partition(":")
    if kind != "group" or not key.isalnum() or len(key) > 16 or not seconds.isdigit():
        return None
    return f"failed --group {key} --since {int(seconds)}s"


def command_for(click: TaskClick) -> str | None:
    """The ``/celery`` line a click stands for; None for the traceback (not a command)."""
    template = _COMMANDS.get(click.verb)
    return template.format(task_id=click.task_id) if template else None


def stale_reason(click: TaskClick, task: Task | None) -> str | None:
    """Why the click no longer applies to the task as it is now (None: it does)."""
    if click.verb == DETAILS:
        return None  # the detail says whatever the task is now
    if task is None:
        return f"task {click.task_id} is no longer in the store (evicted, or the bot restarted)"
    label = f"{task.name or 'task'} {task.uuid}"
    if click.verb in (REVOKE, TERMINATE) and task.state in FINISHED_STATES:
        return f"{label} has finished since: it is {task.state} now, nothing left to revoke"
    if click.verb == RETRY and task.state != FAILURE:
        return f"{label} is {task.state} now, not FAILURE: nothing to retry"
    if click.verb == TRACEBACK and not task.traceback:
        return f"{label} has no traceback in the store"
    return None
