"""The buttons on alert messages, and the command a click stands for.

A stuck-task alert carries two buttons whose ``value`` is the task id. The Slack layer maps a
click to the command line returned by :func:`command_for_click` and runs it through the
dispatcher as the *clicking* user (``ActionClick.user_id``), so the click is exactly the typed
``/celery revoke <id>`` (``--terminate``): same operator check, same approval flow, same audit.
"""

from __future__ import annotations

from chatbot.alerts.manager import REVOKE_ACTION_ID, TERMINATE_ACTION_ID
from chatbot.cluster_config import split_value

ALERT_ACTION_IDS = (REVOKE_ACTION_ID, TERMINATE_ACTION_ID)

_COMMANDS = {
    REVOKE_ACTION_ID: "revoke {task_id}",
    # A plain revoke only stops a task that has not started; a stuck one needs terminate.
    TERMINATE_ACTION_ID: "revoke {task_id} --terminate",
}
_MAX_TASK_ID = 255


def command_for_click(action_id: str, value: str) -> str | None:
    """``revoke <id>`` or ``revoke <id> --terminate``; None for another action or a value
    that is not a plain task id (a click must never smuggle in flags or a second id)."""
    template = _COMMANDS.get(action_id)
    # With several clusters a button's value is "@CLUSTER/TASK_ID" (templates/alert.json.j2).
    cluster, task_id = split_value(value.strip())
    address = f"@{cluster} " if cluster else ""
    if (
        template is None
        or not task_id
        or len(task_id) > _MAX_TASK_ID
        or task_id.startswith("-")
        or any(c.isspace() or c in "\"'\\" or not c.isprintable() for c in task_id)
    ):
        return None
    return address + template.format(task_id=task_id)
