"""Re-sending failed tasks with their original arguments, or saying exactly why not.

The bot never sees a task's arguments, only what Celery's events carry: ``args`` and ``kwargs``
as *reprs* the producer made with ``celery.utils.saferepr.saferepr`` (cut at
``argsrepr_maxsize``/``kwargsrepr_maxsize``, 1024 characters, and at ``task_repr_maxlevels``
nesting levels, 3), which the store then redacted and clipped (:mod:`chatbot.redaction`).
:func:`plan_retry` rebuilds them with :func:`ast.literal_eval` and refuses, with the reason,
whenever the rebuilt arguments might differ from the ones the task was called with:

- no ``task-received``/``task-sent`` event was seen, so there are no reprs at all;
- a secret was redacted out of them, or they were withheld;
- they were cut: the store clipped them (they end with ``…``), or Celery did (a ``...``
  placeholder where deeper levels were, a string or a list cut short: saferepr cuts a string
  at a word boundary, so a cut text can be shorter than the limit, but it always ends in
  ``...`` and closing brackets; an argument that really ends in ``...`` is refused with it);
- they are not Python literals (an object's repr, a ``datetime``, ``nan``), or hold bytes
  (saferepr shows them decoded, or as hex: ``b'ff'`` may have been ``b'\\xff'``).

The last check is what makes a rebuild exact: ``saferepr`` of the rebuilt value, with the
producer's limits, must give back the very text the event carried. A task whose producer
passed its own ``argsrepr`` (Celery's way to hide arguments) is refused by the same test
unless that text happens to be a literal that renders to itself, which cannot be told apart
from the real thing; the store keeps no other trace of the arguments.

The queue is the one the ``task-sent`` event named; without it (the producer does not send
``task-sent``: ``task_send_sent_event`` is off) the queue of the worker that ran the task, when
that worker consumes exactly one. :class:`TaskResender` sends the plans with the Celery app's
``send_task`` to that queue (Celery's router then uses that queue's own exchange and routing
key, so a message never goes out on a routing key no queue is bound to).
"""

from __future__ import annotations

import ast
import logging
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from celery import Celery
from celery.utils.saferepr import saferepr

from chatbot.model import FAILURE, Task
from chatbot.redaction import ELLIPSIS, REDACTED_TEXT, WITHHELD

__all__ = [
    "REPR_MAXLEVELS",
    "REPR_MAXSIZE",
    "RebuildError",
    "Resent",
    "RetryPlan",
    "RetryRefusal",
    "TaskResender",
    "plan_retries",
    "plan_retry",
    "rebuild",
]

logger = logging.getLogger(__name__)

# Celery's defaults: ``AMQP.argsrepr_maxsize``/``kwargsrepr_maxsize`` and task_repr_maxlevels.
REPR_MAXSIZE = 1024
REPR_MAXLEVELS = 3
_MAX_ERROR = 300
# The end of a text saferepr cut: "..." (a cut value's suffix, or the ", ..." standing for what
# was left out), maybe its closing quote, then only closing brackets.
_CELERY_CUT = re.compile(r"\.\.\.['\"]?[\s,)\]}]*\Z")


class RebuildError(ValueError):
    """The reprs cannot be turned back into the exact arguments; the message says why."""


@dataclass(frozen=True, slots=True)
class RetryPlan:
    """What will be re-sent: the same task name and arguments, to the original queue."""

    task_id: str  # the failed task
    name: str
    args: tuple[Any, ...] | list[Any]  # as the producer passed them (the repr tells which)
    kwargs: dict[str, Any]
    queue: str
    args_repr: str  # as the event carried them: what the approval card shows
    kwargs_repr: str

    def as_dict(self) -> dict[str, Any]:
        """Plain data for an approval record: the reprs, not the values (JSON would turn a
        tuple into a list); :meth:`from_dict` rebuilds the values from them again."""
        return {
            "id": self.task_id,
            "name": self.name,
            "queue": self.queue,
            "args": self.args_repr,
            "kwargs": self.kwargs_repr,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RetryPlan:
        """The plan stored by :meth:`as_dict`; :class:`RebuildError` if it no longer rebuilds."""
        args_repr, kwargs_repr = str(data["args"]), str(data["kwargs"])
        args = rebuild(args_repr, "positional arguments")
        kwargs = rebuild(kwargs_repr, "keyword arguments")
        if not isinstance(args, tuple | list) or not isinstance(kwargs, dict):
            raise RebuildError("the stored arguments are not a list and a mapping")
        return cls(
            str(data["id"]),
            str(data["name"]),
            args,
            kwargs,
            str(data["queue"]),
            args_repr,
            kwargs_repr,
        )


@dataclass(frozen=True, slots=True)
class RetryRefusal:
    task_id: str
    name: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class Resent:
    task_id: str  # the failed task
    new_id: str | None  # the new task's id; None when sending failed
    queue: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.new_id is not None


def _contains(value: Any, test: Callable[[Any], bool], depth: int = 0) -> bool:
    if test(value):
        return True
    if depth > 100:
        return True  # deeper than any repr Celery sends (maxlevels): treat as not rebuildable
    if isinstance(value, dict):
        return any(
            _contains(k, test, depth + 1) or _contains(v, test, depth + 1) for k, v in value.items()
        )
    if isinstance(value, list | tuple | set | frozenset):
        return any(_contains(item, test, depth + 1) for item in value)
    return False


def rebuild(
    text: str | None,
    what: str,
    *,
    maxsize: int = REPR_MAXSIZE,
    maxlevels: int = REPR_MAXLEVELS,
) -> Any:
    """The value whose ``saferepr`` is ``text``, exactly; :class:`RebuildError` otherwise."""
    if text is None:
        raise RebuildError(f"its {what} were never seen (no task-received or task-sent event)")
    if REDACTED_TEXT in text or text == WITHHELD:
        raise RebuildError(f"its {what} were redacted")
    cut = RebuildError(
        f"its {what} were cut (Celery's events show at most {maxsize} characters"
        f" and {maxlevels} levels of nesting of them)"
    )
    if text.endswith(ELLIPSIS):  # clipped by the store, which keeps as much as Celery shows
        raise cut
    if _CELERY_CUT.search(text) or len(text) > maxsize:
        # saferepr's cut always ends the text: the value it cut (at a word boundary, so the
        # text may stay shorter than the limit) or ", ...", then closing brackets only. A
        # value that really ends in "..." looks the same, and is refused with it.
        raise cut
    try:
        with warnings.catch_warnings():
            # saferepr does not escape backslashes: "\d" in a shown string is a backslash
            # and a d, which literal_eval reads the same way, with a warning nobody needs.
            warnings.simplefilter("ignore", category=SyntaxWarning)
            warnings.simplefilter("ignore", category=DeprecationWarning)
            value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise RebuildError(
            f"its {what} are not Python literals (an object's repr cannot be rebuilt)"
        ) from None
    if _contains(value, lambda item: item is Ellipsis):
        raise cut
    if _contains(value, lambda item: isinstance(item, bytes)):
        # saferepr shows bytes decoded (or as hex when they are not UTF-8): b'ff' may have
        # been the single byte 0xff.
        raise RebuildError(f"its {what} hold bytes, which Celery does not show exactly")
    if saferepr(value, maxsize, maxlevels=maxlevels) != text:
        raise RebuildError(f"its {what} cannot be rebuilt exactly from what Celery showed")
    return value


def plan_retry(
    task: Task,
    *,
    worker_queues: Mapping[str, Sequence[str]] | None = None,
    maxsize: int = REPR_MAXSIZE,
    maxlevels: int = REPR_MAXLEVELS,
) -> RetryPlan | RetryRefusal:
    """The plan to re-send ``task``, or the reason it cannot be re-sent unchanged.

    ``worker_queues`` (worker hostname -> the queues it consumes) is the fallback for the
    queue when no task-sent event named it.
    """

    def refuse(reason: str) -> RetryRefusal:
        return RetryRefusal(task.uuid, task.name, reason)

    if task.state != FAILURE:
        return refuse(f"it is {task.state}, not FAILURE")
    if not task.name:
        return refuse("its task name was never seen")
    try:
        args = rebuild(task.args, "positional arguments", maxsize=maxsize, maxlevels=maxlevels)
        kwargs = rebuild(task.kwargs, "keyword arguments", maxsize=maxsize, maxlevels=maxlevels)
    except RebuildError as error:
        return refuse(str(error))
    if not isinstance(args, tuple | list):
        return refuse("its positional arguments are not a list")
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        return refuse("its keyword arguments are not a mapping of names")
    queue = task.queue
    if not queue:
        consumed = (worker_queues or {}).get(task.worker or "", ())
        if len(consumed) != 1:
            why = (
                f"its worker consumes {', '.join(consumed)}"
                if consumed
                else "its worker's queues are unknown"
            )
            return refuse(
                "its queue is unknown (no task-sent event: the producer runs without"
                f" task_send_sent_event) and {why}"
            )
        queue = consumed[0]
    assert task.args is not None and task.kwargs is not None  # rebuild() refused None
    return RetryPlan(task.uuid, task.name, args, kwargs, queue, task.args, task.kwargs)


def plan_retries(
    tasks: Iterable[Task],
    *,
    worker_queues: Mapping[str, Sequence[str]] | None = None,
    maxsize: int = REPR_MAXSIZE,
    maxlevels: int = REPR_MAXLEVELS,
) -> tuple[list[RetryPlan], list[RetryRefusal]]:
    plans: list[RetryPlan] = []
    refusals: list[RetryRefusal] = []
    for task in tasks:
        planned = plan_retry(
            task, worker_queues=worker_queues, maxsize=maxsize, maxlevels=maxlevels
        )
        if isinstance(planned, RetryPlan):
            plans.append(planned)
        else:
            refusals.append(planned)
    return plans, refusals


class TaskResender:
    """Sends retry plans through ``app``'s broker, one producer for the whole batch."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def resend(self, plans: Sequence[RetryPlan]) -> list[Resent]:
        if not plans:
            return []
        results: list[Resent] = []
        try:
            with self.app.producer_or_acquire() as producer:
                for plan in plans:
                    results.append(self._send(plan, producer))
        except Exception as error:  # the broker could not be reached at all
            message = _one_line(error)
            logger.warning("retry: could not reach the broker: %s", message)
            done = {r.task_id for r in results}
            results.extend(
                Resent(plan.task_id, None, plan.queue, f"broker unreachable: {message}")
                for plan in plans
                if plan.task_id not in done
            )
        return results

    def _send(self, plan: RetryPlan, producer: Any) -> Resent:
        try:
            result = self.app.send_task(
                plan.name,
                # The same container the producer used, so the new task's argsrepr reads the
                # same as the failed one's.
                args=plan.args,
                kwargs=plan.kwargs,
                queue=plan.queue,
                producer=producer,
            )
        except Exception as error:  # e.g. arguments the serializer cannot encode
            return Resent(plan.task_id, None, plan.queue, _one_line(error))
        return Resent(plan.task_id, str(result.id), plan.queue)


def _one_line(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".replace("\n", " ")
    return text if len(text) <= _MAX_ERROR else text[: _MAX_ERROR - 1] + ELLIPSIS
