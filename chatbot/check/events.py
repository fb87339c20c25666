"""Whether the workers' heartbeats reach the bot's event consumer and whether they send task
events: the running bot's own consumer, started for a few seconds against the broker.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from chatbot.check.report import Report, names
from chatbot.check.workers import Fleet
from chatbot.config import Settings
from chatbot.consumer import EventConsumer
from chatbot.store.memory import MemoryStore

__all__ = ["check_events"]

_CONSUMER_STOP_TIMEOUT = 2.0
_POLL_INTERVAL = 0.05


def check_events(
    fleet: Fleet, settings: Settings, report: Report, *, connect_timeout: float, wait: float
) -> None:
    store = MemoryStore(max_tasks=1000, max_workers=max(100, len(fleet.workers) * 2))
    # enable_events is left to the explicit reply-bearing broadcast below: a check that
    # changes the fleet only does what the running bot would do anyway.
    consumer = EventConsumer(
        settings.broker_url,
        store,
        app=fleet.app,
        enable_events=lambda: None,
        heartbeat=fleet.control.heartbeat,
        enable_events_interval=0,
        connect_timeout=connect_timeout,
    )
    consumer.start()
    try:
        if not consumer.wait_connected(connect_timeout):
            health = consumer.health_into(store.health())
            reason = health.last_error or "no connection"
            report.fail(
                "events",
                f"the event consumer could not subscribe to the broker's event stream"
                f" ({reason})",
            )
            return
        heard = _wait_for_heartbeats(store, set(fleet.workers), wait)
    finally:
        consumer.stop(timeout=_CONSUMER_STOP_TIMEOUT)
    silent = [name for name in fleet.workers if name not in heard]
    if len(silent) == len(fleet.workers):
        report.warn(
            "events",
            f"workers answer pings but no event reached the bot in {wait:g}s:"
            " they may run with --without-heartbeat, or publish events elsewhere"
            " (another event_exchange or Redis db than CELERY_BROKER_URL)",
        )
        return
    task_events = _task_events_state(fleet, settings)
    off = sorted(name for name, on in task_events.items() if on is False)
    heartbeats = f"heartbeats of {len(heard)} of {len(fleet.workers)} workers reach the bot"
    if silent:
        heartbeats += f" (none yet from {names(silent)})"
    if not off:
        state = "task events on" if task_events else "task events not checked"
        report.ok("events", f"{heartbeats}; {state}")
        return
    if settings.enable_events_interval > 0:
        fix = (
            f"turned on now, and the bot re-sends enable_events every"
            f" {settings.enable_events_interval:g}s, but a restarted worker sends none until"
            " then: start workers with -E (or worker_send_task_events = True)"
        )
    else:
        fix = (
            "start workers with -E (or worker_send_task_events = True);"
            " CHATOPS_ENABLE_EVENTS_INTERVAL=0 stops the bot from turning them on"
        )
    report.warn("events", f"{heartbeats}; {names(off)} had task events off (no -E): {fix}")


def _wait_for_heartbeats(store: MemoryStore, wanted: set[str], wait: float) -> set[str]:
    deadline = time.monotonic() + wait
    while True:
        heard = {w.hostname for w in store.workers() if w.last_heartbeat is not None}
        if wanted <= heard or time.monotonic() >= deadline:
            return heard & wanted
        time.sleep(_POLL_INTERVAL)


def _task_events_state(fleet: Fleet, settings: Settings) -> dict[str, bool | None]:
    """Per worker: were task events on? None when it cannot be known without a change.

    A worker answers ``enable_events`` with "task events already enabled" or "task events
    enabled" (it just turned them on): the only way to ask. When the bot is configured never
    to send it, neither does the check.
    """
    if settings.enable_events_interval <= 0:
        return {}
    state: dict[str, bool | None] = {}
    for worker, answer in fleet.ask("enable_events").items():
        text = str(answer.get("ok", "")) if isinstance(answer, Mapping) else ""
        state[worker] = "already" in text if text else None
    return state
