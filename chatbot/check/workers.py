"""Which workers answer a ping, and which queues they consume and how long each is."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from celery import Celery

from chatbot.broker import BrokerReader, queue_names
from chatbot.check.report import Report, names
from chatbot.config import Settings
from chatbot.control import FleetControl

__all__ = ["Fleet", "check_queues", "check_workers"]


@dataclass
class Fleet:
    """The broker as the checks see it once it accepted a connection."""

    app: Celery
    control: FleetControl
    ping_timeout: float
    workers: list[str] = field(default_factory=list)  # those that answered the ping

    def ask(self, command: str) -> dict[str, Any]:
        """``{worker: reply}`` of a broadcast to the workers that answered the ping.

        Addressed to them by name with a reply limit, so it returns as soon as all have
        answered instead of waiting out the timeout. A failure leaves the answer empty: the
        ping just worked, so what is lost is only this detail.
        """
        if not self.workers:
            return {}
        try:
            replies = self.app.control.broadcast(
                command,
                reply=True,
                timeout=self.ping_timeout,
                destination=self.workers,
                limit=len(self.workers),
            )
        except Exception:
            return {}
        answers: dict[str, Any] = {}
        for entry in replies or ():
            if isinstance(entry, Mapping):
                answers.update({str(worker): reply for worker, reply in entry.items()})
        return answers


def check_workers(fleet: Fleet, report: Report) -> None:
    result = fleet.control.inspect("ping")
    if result.error:
        report.fail("workers", f"could not broadcast a ping through the broker: {result.error}")
        return
    fleet.workers = sorted(reply.worker for reply in result.ok)
    if not fleet.workers:
        report.warn(
            "workers",
            f"none answered a ping within {fleet.ping_timeout:g}s: start a worker on this"
            " broker (the same URL, vhost or Redis db as CELERY_BROKER_URL)",
        )
        return
    report.ok("workers", f"{len(fleet.workers)} answered a ping: {names(fleet.workers)}")


def check_queues(fleet: Fleet, reader: BrokerReader, settings: Settings, report: Report) -> None:
    consumed: dict[str, list[str]] = {}
    for worker, queues in fleet.ask("active_queues").items():
        for queue in queues if isinstance(queues, list) else ():
            name = queue.get("name") if isinstance(queue, Mapping) else None
            if name:
                consumed.setdefault(str(name), []).append(worker)
    lengths = reader.queue_lengths(queue_names((), [*settings.queues, *sorted(consumed)]))
    failed = [q for q in lengths if q.error]
    if failed and len(failed) == len(lengths):
        report.warn("queues", f"could not read queue lengths: {failed[0].error}")
        return
    shown: list[str] = []
    orphaned: list[str] = []
    for queue in lengths:
        if queue.exists is False:
            shown.append(f"{queue.name} (does not exist)")
        elif queue.messages is None:
            shown.append(f"{queue.name} (unknown: {queue.error})")
        else:
            shown.append(f"{queue.name} {queue.messages}")
            if fleet.workers and queue.messages and queue.name not in consumed:
                orphaned.append(f"{queue.name} ({queue.messages})")
    report.ok("queues", "; ".join(shown))
    if orphaned:
        report.warn(
            "queues",
            f"no worker consumes {names(orphaned)}: its messages wait forever; start a"
            " worker with -Q for it, or `/celery consumer add QUEUE WORKER`",
        )
