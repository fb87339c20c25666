"""Remote control of Celery workers: revoke, pool size, limits, consumers, shutdown, inspect.

Every command is a broadcast with ``reply=True``, an explicit timeout, and, when it names its
targets, ``limit=len(destination)`` so it returns as soon as they all answered. What comes
back is a :class:`ControlResult` with one :class:`WorkerReply` per worker:

- ``ok``: the worker answered and did it (``{'ok': ...}`` or inspect data);
- ``error``: the worker answered that it could not (``{'error': ...}``: unknown task,
  autoscale not enabled, ...);
- ``no_reply``: a worker we expected did not answer in time. That is "unknown", not "down":
  a busy, slow or partitioned worker looks the same as a dead one;
- ``sent``: the command went out but workers never reply to it (``shutdown``: the worker
  raises ``WorkerShutdown`` inside the command handler, before any reply).

A broker that cannot be reached is not a worker's answer: the result carries ``error`` and
every expected worker is ``no_reply``. Nothing here talks to Slack.
"""

from __future__ import annotations

import logging
import re
import signal as signal_module
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from celery import Celery

from chatbot.retry import RetryPlan, TaskResender

__all__ = [
    "INSPECT_METHODS",
    "ControlError",
    "ControlResult",
    "FleetControl",
    "ReplyStatus",
    "WorkerReply",
    "validate_rate",
    "validate_signal",
]

logger = logging.getLogger(__name__)

ReplyStatus = Literal["ok", "error", "no_reply", "sent"]

# Read-only inspect commands we let through. ``conf`` and ``report`` are left out on purpose:
# they echo the worker's configuration, broker URL and password included.
INSPECT_METHODS = frozenset(
    {
        "active",
        "reserved",
        "scheduled",
        "stats",
        "registered",
        "ping",
        "active_queues",
        "revoked",
        "query_task",
        "clock",
    }
)

_RATE = re.compile(r"^(\d+(?:\.\d+)?)(?:/([smh]))?$")
_MAX_MESSAGE = 300


class ControlError(RuntimeError):
    """A fire-and-forget broadcast could not be handed to the broker (one-line message)."""


@dataclass(frozen=True)
class WorkerReply:
    worker: str
    status: ReplyStatus
    value: Any = None  # the worker's reply payload: 'ok' text, inspect data, error text
    message: str = ""  # one human line

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "sent")


@dataclass(frozen=True)
class ControlResult:
    command: str
    # One entry per worker that answered, plus a no_reply entry per expected silent worker.
    replies: dict[str, WorkerReply]
    arguments: dict[str, Any] = field(default_factory=dict)
    # Set when the broker could not be reached: then nothing is known about the workers.
    error: str | None = None

    @property
    def ok(self) -> list[WorkerReply]:
        return [reply for reply in self.replies.values() if reply.status in ("ok", "sent")]

    @property
    def errors(self) -> list[WorkerReply]:
        return [reply for reply in self.replies.values() if reply.status == "error"]

    @property
    def no_reply(self) -> list[WorkerReply]:
        return [reply for reply in self.replies.values() if reply.status == "no_reply"]

    @property
    def all_ok(self) -> bool:
        """At least one worker confirmed, and nobody failed or stayed silent."""
        return (
            self.error is None
            and bool(self.replies)
            and all(reply.status in ("ok", "sent") for reply in self.replies.values())
        )

    def values(self) -> dict[str, Any]:
        """``{worker: payload}`` of the workers that answered ok (inspect data, texts)."""
        return {reply.worker: reply.value for reply in self.ok}


def validate_rate(text: str) -> str:
    """``'10/m'``, ``'5/s'``, ``'100/h'``, ``'200'`` (per second), ``'0'`` (no limit).

    Returns the canonical spelling (stripped, lower-case unit); ValueError otherwise.
    """
    candidate = text.strip().lower()
    if not _RATE.match(candidate):
        raise ValueError(f"bad rate {text.strip()!r}: expected N, N/s, N/m or N/h")
    return candidate


def validate_signal(text: str) -> str:
    """``'TERM'``, ``'sigterm'``, ``'15'`` -> ``'SIGTERM'``; ValueError for anything else."""
    candidate = text.strip().upper()
    signum: signal_module.Signals | None = None
    if candidate.isdigit():
        try:
            signum = signal_module.Signals(int(candidate))
        except ValueError:
            signum = None
    else:
        name = candidate if candidate.startswith("SIG") else f"SIG{candidate}"
        signum = signal_module.Signals.__members__.get(name)
    if signum is None:
        raise ValueError(f"unknown signal {text.strip()!r}: expected a name such as TERM or KILL")
    return signum.name


def _one_line(value: Any, limit: int = _MAX_MESSAGE) -> str:
    text = str(value).strip()
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _require_name(what: str, value: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty name")
    return value.strip()


def _interpret(worker: str, reply: Any) -> WorkerReply:
    """Turn one worker's raw reply into a WorkerReply."""
    if isinstance(reply, Mapping) and len(reply) == 1 and "error" in reply:
        error = reply["error"]
        return WorkerReply(worker, "error", error, _one_line(error))
    if isinstance(reply, Mapping) and len(reply) == 1 and "ok" in reply:
        value = reply["ok"]
        return WorkerReply(worker, "ok", value, _one_line(value) if value is not None else "ok")
    # Inspect commands answer with bare data (stats dict, list of tasks, ...).
    if isinstance(reply, list):
        message = f"{len(reply)} item{'s' if len(reply) != 1 else ''}"
    else:
        message = "replied"
    return WorkerReply(worker, "ok", reply, message)


class FleetControl:
    """Sends control commands to the workers of ``app``'s broker and collects the answers.

    ``on_broadcast(command, arguments)`` is called once for every broadcast handed to the
    broker: after validation and after the connection is up, right before publishing. A call
    refused by validation or by an unreachable broker is not counted; a publish that fails
    after that point still is (it may have gone out). An exception in the hook is logged and
    does not stop the command. Thread-safe: each call uses its own broker connection.
    """

    def __init__(
        self,
        app: Celery,
        timeout: float = 2.0,
        on_broadcast: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        self.app = app
        self.timeout = timeout
        self._on_broadcast = on_broadcast

    # -- control commands --------------------------------------------------------------------
    def revoke(
        self,
        task_ids: Sequence[str],
        *,
        terminate: bool = False,
        signal: str = "SIGTERM",
        destination: Sequence[str] | None = None,
        expected: Sequence[str] = (),
    ) -> ControlResult:
        """Revoke (and with ``terminate`` kill the process running) the given task ids.

        Without ``destination`` every worker gets it (a worker that never saw the task still
        has to refuse it later); the result then waits the full timeout for replies.
        """
        ids = [task_id.strip() for task_id in task_ids if task_id and task_id.strip()]
        if not ids:
            raise ValueError("revoke needs at least one task id")
        arguments = {
            "task_id": ids,
            "terminate": bool(terminate),
            "signal": validate_signal(signal),
        }
        return self._call("revoke", arguments, destination, expected)

    def pool_grow(self, worker: str, n: int = 1) -> ControlResult:
        return self._call("pool_grow", {"n": self._positive("n", n)}, [worker], ())

    def pool_shrink(self, worker: str, n: int = 1) -> ControlResult:
        return self._call("pool_shrink", {"n": self._positive("n", n)}, [worker], ())

    def autoscale(self, worker: str, max: int, min: int) -> ControlResult:
        if not isinstance(max, int) or not isinstance(min, int) or min < 0 or max < 1:
            raise ValueError("autoscale needs whole numbers MAX >= 1 and MIN >= 0")
        if min > max:
            raise ValueError(f"autoscale MIN ({min}) must not exceed MAX ({max})")
        return self._call("autoscale", {"max": max, "min": min}, [worker], ())

    def rate_limit(
        self,
        task_name: str,
        rate: str,
        worker: str | None = None,
        expected: Sequence[str] = (),
    ) -> ControlResult:
        """``rate`` as :func:`validate_rate` takes it; a zero rate removes the limit."""
        canonical = validate_rate(rate)
        # Workers only say "disabled" for an empty limit; the string "0" would read as a new
        # limit even though Celery treats it as none.
        limit: str | None = None if float(canonical.split("/")[0]) == 0 else canonical
        arguments = {"task_name": _require_name("task name", task_name), "rate_limit": limit}
        return self._call("rate_limit", arguments, self._targets(worker), expected)

    def time_limit(
        self,
        task_name: str,
        soft: float | None,
        hard: float | None,
        worker: str | None = None,
        expected: Sequence[str] = (),
    ) -> ControlResult:
        for label, value in (("soft", soft), ("hard", hard)):
            if value is not None and value < 0:
                raise ValueError(f"{label} time limit must be >= 0 seconds, got {value:g}")
        if soft is not None and hard is not None and soft > hard:
            # The hard limit would kill the task before the soft one could warn it.
            raise ValueError(
                f"soft time limit ({soft:g}s) must not exceed the hard one ({hard:g}s)"
            )
        arguments = {"task_name": _require_name("task name", task_name), "soft": soft, "hard": hard}
        return self._call("time_limit", arguments, self._targets(worker), expected)

    def shutdown(self, worker: str) -> ControlResult:
        """Warm shutdown of one worker. Workers never reply to it: the result says ``sent``."""
        name = _require_name("worker", worker)
        arguments: dict[str, Any] = {}
        error = self._send_without_reply("shutdown", arguments, [name])
        if error is not None:
            reply = WorkerReply(name, "no_reply", None, "not sent: the broker is unreachable")
            return ControlResult("shutdown", {name: reply}, arguments, error)
        message = "shutdown sent; workers do not reply to it (watch for worker-offline)"
        return ControlResult(
            "shutdown", {name: WorkerReply(name, "sent", None, message)}, arguments
        )

    def resend(self, plans: Sequence[RetryPlan]) -> ControlResult:
        """Re-send failed tasks (:mod:`chatbot.retry`): one reply per failed task, keyed by
        its id, ``ok`` with the new task's id as its value, or ``error`` saying why not."""
        replies: dict[str, WorkerReply] = {}
        for sent in TaskResender(self.app).resend(plans):
            if sent.new_id is not None:
                message = f"re-sent as {sent.new_id} to queue {sent.queue}"
                replies[sent.task_id] = WorkerReply(sent.task_id, "ok", sent.new_id, message)
            else:
                message = f"not re-sent: {sent.error}"
                replies[sent.task_id] = WorkerReply(sent.task_id, "error", None, message)
        arguments = {"tasks": [plan.task_id for plan in plans]}
        return ControlResult("retry", replies, arguments)

    def add_consumer(
        self, queue: str, worker: str | None = None, expected: Sequence[str] = ()
    ) -> ControlResult:
        arguments = {
            "queue": _require_name("queue", queue),
            "exchange": None,
            "exchange_type": "direct",
            "routing_key": None,
        }
        return self._call("add_consumer", arguments, self._targets(worker), expected)

    def cancel_consumer(
        self, queue: str, worker: str | None = None, expected: Sequence[str] = ()
    ) -> ControlResult:
        arguments = {"queue": _require_name("queue", queue)}
        return self._call("cancel_consumer", arguments, self._targets(worker), expected)

    def inspect(
        self,
        method: str,
        worker: str | None = None,
        expected: Sequence[str] = (),
        **arguments: Any,
    ) -> ControlResult:
        """A read-only inspect command (see :data:`INSPECT_METHODS`); data is in ``value``."""
        if method not in INSPECT_METHODS:
            allowed = ", ".join(sorted(INSPECT_METHODS))
            raise ValueError(f"unknown inspect method {method!r}: expected one of {allowed}")
        return self._call(method, dict(arguments), self._targets(worker), expected)

    # -- fire and forget ---------------------------------------------------------------------
    def enable_events(self) -> None:
        """Ask every worker to send task events (workers started without ``-E``)."""
        self._raise_on_error(self._send_without_reply("enable_events", {}, None))

    def heartbeat(self) -> None:
        """Ask every worker for a heartbeat now (a fresh liveness picture after a restart)."""
        self._raise_on_error(self._send_without_reply("heartbeat", {}, None))

    # -- internals ---------------------------------------------------------------------------
    @staticmethod
    def _positive(label: str, value: int) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{label} must be a whole number >= 1, got {value!r}")
        return value

    @staticmethod
    def _targets(worker: str | None) -> list[str] | None:
        return None if worker is None else [_require_name("worker", worker)]

    @staticmethod
    def _raise_on_error(error: str | None) -> None:
        if error is not None:
            raise ControlError(error)

    def _notify(self, command: str, arguments: dict[str, Any]) -> None:
        if self._on_broadcast is None:
            return
        try:
            self._on_broadcast(command, dict(arguments))
        except Exception:  # an audit or metrics hook must not stop the command itself
            logger.exception("on_broadcast hook failed for %s", command)

    def _describe_error(self, exc: BaseException) -> str:
        text = f"broker unreachable: {_one_line(exc) or type(exc).__name__}"
        password = urlsplit(str(self.app.conf.broker_url or "")).password
        return text.replace(unquote(password), "***") if password else text

    def _connection(self) -> Any:
        # One attempt, bounded by the timeout: a control call must fail fast and say why,
        # not retry the broker for as long as a worker would. Every socket operation is
        # bounded too: a hung broker (stopped, or a network dropping packets) accepts the
        # connection and then answers nothing, and without a socket timeout the call waited
        # forever. Redis's transport reads socket_timeout / socket_connect_timeout, py-amqp's
        # read_timeout / write_timeout; each ignores the other's.
        return self.app.connection_for_write(
            connect_timeout=self.timeout,
            transport_options={
                "max_retries": 0,
                "socket_timeout": self.timeout,
                "socket_connect_timeout": self.timeout,
                "read_timeout": self.timeout,
                "write_timeout": self.timeout,
            },
        )

    def _send_without_reply(
        self, command: str, arguments: dict[str, Any], destination: list[str] | None
    ) -> str | None:
        """Publish a broadcast nobody answers; returns an error line or None."""
        try:
            with self._connection() as connection:
                connection.ensure_connection(max_retries=0)
                self._notify(command, arguments)
                self.app.control.broadcast(
                    command,
                    arguments=arguments,
                    destination=destination,
                    connection=connection,
                    reply=False,
                )
        except Exception as exc:  # every broker failure ends up as the same one-line error
            return self._describe_error(exc)
        return None

    def _call(
        self,
        command: str,
        arguments: dict[str, Any],
        destination: Sequence[str] | None,
        expected: Sequence[str],
    ) -> ControlResult:
        targets = None if destination is None else [_require_name("worker", d) for d in destination]
        if targets is not None and not targets:
            raise ValueError(f"{command}: the destination list is empty")
        # Everyone we address must answer; with a broadcast to all, only who the caller names.
        waiting_for = list(dict.fromkeys([*(targets or ()), *expected]))
        try:
            with self._connection() as connection:
                connection.ensure_connection(max_retries=0)
                self._notify(command, arguments)
                raw = self.app.control.broadcast(
                    command,
                    arguments=arguments,
                    destination=targets,
                    connection=connection,
                    reply=True,
                    timeout=self.timeout,
                    limit=len(targets) if targets else None,
                )
        except Exception as exc:  # the broker, not a worker, failed: nothing is known
            error = self._describe_error(exc)
            silent = {
                name: WorkerReply(name, "no_reply", None, "unknown: the broker is unreachable")
                for name in waiting_for
            }
            return ControlResult(command, silent, arguments, error)
        return ControlResult(command, self._collect(raw, waiting_for), arguments)

    def _collect(self, raw: Any, waiting_for: Sequence[str]) -> dict[str, WorkerReply]:
        replies: dict[str, WorkerReply] = {}
        answers: dict[str, int] = {}
        for entry in raw or ():
            if not isinstance(entry, Mapping):
                continue
            for worker, reply in entry.items():
                name = str(worker)
                answers[name] = answers.get(name, 0) + 1
                # Two workers sharing a node name both answer: keep the first, say so below.
                replies.setdefault(name, _interpret(name, reply))
        for name, count in answers.items():
            if count > 1:
                first = replies[name]
                note = f"{first.message} ({count} replies: several workers share this name)"
                replies[name] = WorkerReply(name, first.status, first.value, note)
        for name in waiting_for:
            if name not in replies:
                message = f"no reply within {self.timeout:g}s: busy, unreachable or gone (unknown)"
                replies[name] = WorkerReply(name, "no_reply", None, message)
        return replies


def pool_facts(stats: Mapping[str, Any]) -> tuple[str | None, int | None]:
    """``("prefork", 8)`` from an ``inspect stats`` reply: the pool and its size now."""
    pool = stats.get("pool")
    if not isinstance(pool, Mapping):
        return None, None
    implementation = pool.get("implementation")
    name = None
    if isinstance(implementation, str) and implementation:
        # "celery.concurrency.prefork:TaskPool" -> "prefork"
        name = implementation.split(":", 1)[0].rsplit(".", 1)[-1]
    # The live process count when the pool lists its processes (prefork does): after a pool
    # grow or shrink, "max-concurrency" still says what the worker started with.
    processes = pool.get("processes")
    if isinstance(processes, list):
        return name, len(processes)
    concurrency = pool.get("max-concurrency")
    return name, concurrency if isinstance(concurrency, int) else None


def consumed_queues(active_queues: Any) -> list[str] | None:
    """Queue names from an ``inspect active_queues`` reply (None: not such a reply)."""
    if not isinstance(active_queues, list):
        return None
    return [str(q["name"]) for q in active_queues if isinstance(q, Mapping) and "name" in q]
