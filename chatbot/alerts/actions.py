"""The buttons on alert messages, and the command a click stands for.

A stuck-task alert carries two buttons whose ``value`` is the task id. The Slack layer maps a
click to the command line returned by :func:`command_for_click` and runs it through the
dispatcher as the *clicking* user (``ActionClick.user_id``), so the click is exactly the typed
``/celery revoke <id>`` (``--terminate``): same operator check, same approval flow, same audit.
"""

from __future__ import annotations

import re

from chatbot.alerts.manager import REVOKE_ACTION_ID, TERMINATE_ACTION_ID

ALERT_ACTION_IDS = (REVOKE_ACTION_ID, TERMINATE_ACTION_ID)

_COMMANDS = {
    REVOKE_ACTION_ID: "revoke {task_id}",
    # A plain revoke only stops a task that has not started; a stuck one needs terminate.
    TERMINATE_ACTION_ID: "revoke {task_id} --terminate",
}
_MAX_TASK_ID = 255
# With several clusters a button's value is "@CLUSTER/TASK_ID" (templates/alert.json.j2).
_CLUSTER_VALUE = re.compile(r"^@([a-z0-9][a-z0-9_-]{0,31})/(.+)$", re.DOTALL)


def command_for_click(action_id: str, value: str) -> str | None:
    """``revoke <id>`` or ``revoke <id> --terminate``; None for another action or a value
    that is not a plain task id (a click must never smuggle in flags or a second id)."""
    template = _COMMANDS.get(action_id)
    task_id = value.strip()
    address = ""
    found = _CLUSTER_VALUE.match(task_id)
    if found is not None:
        address, task_id = f"@{found.group(1)} ", found.group(2)
    if (
        template is None
        or not task_id
        or len(task_id) > _MAX_TASK_ID
        or task_id.startswith("-")
        or any(c.isspace() or c in "\"'\\" or not c.isprintable() for c in task_id)
    ):
        return None
    return address + template.format(task_id=task_id)
