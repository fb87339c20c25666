"""What events do not say about workers: their pool, concurrency and the queues they consume.

Backlog alerts and ``status`` watch the queues workers consume; only the workers can say which
those are (``inspect active_queues``). The writer replica asks the online workers soon after it
takes the lease and then every ``interval`` seconds (:meth:`WorkerDiscovery.refresh` is a
periodic job of the service, see ``chatbot/service.py``), and records the answers in the store.
A worker that does not answer keeps what it said last.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from chatbot.control import consumed_queues, pool_facts
from chatbot.control_port import ControlPort
from chatbot.store import FleetStore

DEFAULT_INTERVAL = 60.0
# A first look soon after start, once heartbeats have said who is online.
FIRST_LOOK_AFTER = 5.0


class WorkerDiscovery:
    def __init__(
        self,
        control: ControlPort,
        store: FleetStore,
        *,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.control = control
        self.store = store
        self.interval = interval
        self.clock = clock
        self.refreshes = 0

    def refresh(self) -> int:
        """Ask the online workers once; returns how many answered something usable."""
        now = self.clock()
        online = [w.hostname for w in self.store.workers() if w.is_online(now)]
        if not online:
            return 0
        queues = self.control.inspect("active_queues", expected=online).replies
        stats = self.control.inspect("stats", expected=online).replies
        answered = 0
        for hostname in set(queues) | set(stats):
            names: list[str] | None = None
            pool: str | None = None
            concurrency: int | None = None
            queue_reply, stats_reply = queues.get(hostname), stats.get(hostname)
            if queue_reply is not None and queue_reply.status == "ok":
                names = consumed_queues(queue_reply.value)
            if (
                stats_reply is not None
                and stats_reply.status == "ok"
                and isinstance(stats_reply.value, dict)
            ):
                pool, concurrency = pool_facts(stats_reply.value)
            if names is None and pool is None and concurrency is None:
                continue  # no reply, or nothing usable: keep what it said last
            # One update per worker: a reader never sees its queues without its pool.
            self.store.update_worker_info(
                hostname, pool=pool, concurrency=concurrency, queues=names
            )
            answered += 1
        self.refreshes += 1
        return answered
