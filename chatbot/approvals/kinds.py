"""The kinds of control action: for each, its /celery subcommand, its summary line and how it
is sent to the workers. One table, so a new kind is one entry and an unknown kind is refused
when the action is built (never sent as whatever the last branch of a chain was).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from chatbot.control import ControlResult
from chatbot.control_port import ControlPort
from chatbot.retry import RetryPlan

if TYPE_CHECKING:
    from chatbot.approvals.action import ControlAction

__all__ = ["KINDS", "Kind"]

# ``expected``: the workers a broadcast waits for (those believed online), so a silent one
# is reported as "no reply" rather than left out; empty when the action names its worker.
Send = Callable[[ControlPort, "ControlAction", Sequence[str]], ControlResult]


@dataclass(frozen=True)
class Kind:
    """One kind of control action."""

    # The /celery subcommand, as named in CHATOPS_APPROVAL_REQUIRED.
    command: str
    # One plain line for notices and logs (not escaped: templates escape it).
    summary: Callable[[ControlAction], str]
    send: Send


def _where(action: ControlAction) -> str:
    return f" on {action.worker}" if action.worker else " on every worker"


def _revoke_summary(action: ControlAction) -> str:
    count = len(action.targets)
    what = f"{count} task{'s' if count != 1 else ''}"
    if action.selector:
        what += f" ({action.selector})"
    signal = action.parameters.get("signal", "SIGTERM")
    how = f" with terminate ({signal})" if action.terminate else ""
    return f"revoke {what}{how}"


def _send_revoke(
    control: ControlPort, action: ControlAction, expected: Sequence[str]
) -> ControlResult:
    p = action.parameters
    # To every worker, not only the ones that ran them: a queued id must be refused by
    # whichever worker picks it up later.
    return control.revoke(
        list(action.targets),
        terminate=bool(p.get("terminate")),
        signal=str(p.get("signal") or "SIGTERM"),
        expected=expected,
    )


def _retry_summary(action: ControlAction) -> str:
    count = len(action.targets)
    what = f"retry {count} failed task{'s' if count != 1 else ''}"
    if action.selector:
        what += f" ({action.selector})"
    return what + " with the same arguments"


def _send_retry(
    control: ControlPort, action: ControlAction, _expected: Sequence[str]
) -> ControlResult:
    # Rebuilt from the reprs the card showed (RebuildError if they no longer rebuild: then
    # nothing is sent, and the approval's outcome says why).
    plans = [RetryPlan.from_dict(task) for task in action.parameters.get("tasks") or ()]
    return control.resend(plans)


def _pool_summary(verb: str) -> Callable[[ControlAction], str]:
    def summary(action: ControlAction) -> str:
        return f"pool {verb} {action.targets[0]} by {action.parameters.get('n', 1)}"

    return summary


def _consumer_summary(verb: str) -> Callable[[ControlAction], str]:
    def summary(action: ControlAction) -> str:
        return f"{verb} consuming queue {action.targets[0]}{_where(action)}"

    return summary


def _time_limit_summary(action: ControlAction) -> str:
    p = action.parameters
    return (
        f"time limits of {action.targets[0]}: soft {p.get('soft'):g}s,"
        f" hard {p.get('hard'):g}s{_where(action)}"
    )


KINDS: Mapping[str, Kind] = {
    "revoke": Kind("revoke", _revoke_summary, _send_revoke),
    "retry": Kind("retry", _retry_summary, _send_retry),
    "pool_grow": Kind(
        "pool",
        _pool_summary("grow"),
        lambda control, a, _expected: control.pool_grow(
            a.targets[0], int(a.parameters.get("n", 1))
        ),
    ),
    "pool_shrink": Kind(
        "pool",
        _pool_summary("shrink"),
        lambda control, a, _expected: control.pool_shrink(
            a.targets[0], int(a.parameters.get("n", 1))
        ),
    ),
    "autoscale": Kind(
        "autoscale",
        lambda a: (
            f"autoscale {a.targets[0]} to max {a.parameters.get('max')}"
            f" min {a.parameters.get('min')}"
        ),
        lambda control, a, _expected: control.autoscale(
            a.targets[0], max=int(a.parameters["max"]), min=int(a.parameters["min"])
        ),
    ),
    "rate_limit": Kind(
        "rate-limit",
        lambda a: f"rate limit {a.targets[0]} to {a.parameters.get('rate')}{_where(a)}",
        lambda control, a, expected: control.rate_limit(
            a.targets[0], str(a.parameters["rate"]), a.worker, expected=expected
        ),
    ),
    "time_limit": Kind(
        "time-limit",
        _time_limit_summary,
        lambda control, a, expected: control.time_limit(
            a.targets[0],
            float(a.parameters["soft"]),
            float(a.parameters["hard"]),
            a.worker,
            expected=expected,
        ),
    ),
    "add_consumer": Kind(
        "consumer",
        _consumer_summary("start"),
        lambda control, a, expected: control.add_consumer(
            a.targets[0], a.worker, expected=expected
        ),
    ),
    "cancel_consumer": Kind(
        "consumer",
        _consumer_summary("stop"),
        lambda control, a, expected: control.cancel_consumer(
            a.targets[0], a.worker, expected=expected
        ),
    ),
    "shutdown": Kind(
        "shutdown",
        lambda a: f"warm shutdown of {a.targets[0]}",
        lambda control, a, _expected: control.shutdown(a.targets[0]),
    ),
}
