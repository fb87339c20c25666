"""The Celery app that test workers run (``celery -A tests.fleet_app worker``).

Worker subprocesses take the broker from ``FLEET_BROKER_URL`` (and optional kombu transport
options as JSON from ``FLEET_TRANSPORT_OPTIONS``). Tests that send tasks build their own
instance with :func:`make_app` on their own broker URL; task names are explicit (``fleet.add``
...) so both sides agree whatever module path imported them.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from celery import Celery, Task

BROKER_ENV = "FLEET_BROKER_URL"
TRANSPORT_OPTIONS_ENV = "FLEET_TRANSPORT_OPTIONS"

ADD = "fleet.add"
FAIL = "fleet.fail"
FLAKY = "fleet.flaky"
HANG = "fleet.hang"
ECHO = "fleet.echo"
UNREACHABLE = "fleet.publish_unreachable"
TASK_NAMES = (ADD, FAIL, FLAKY, HANG, ECHO, UNREACHABLE)
# Nothing listens on port 1: publishing there fails inside kombu and redis-py.
UNREACHABLE_BROKER = "redis://127.0.0.1:1/0"


def _check_message(message: str) -> None:
    _raise_value_error(message)


def _raise_value_error(message: str) -> None:
    # Two helper frames so the traceback in task-failed has more than the task's own frame.
    raise ValueError(message)


def make_app(
    broker_url: str | None = None, transport_options: dict[str, Any] | None = None
) -> Celery:
    """A fleet app on ``broker_url``; without one it is inert (``memory://``), never 6379."""
    url = broker_url or os.environ.get(BROKER_ENV) or "memory://"
    if transport_options is None and os.environ.get(TRANSPORT_OPTIONS_ENV):
        transport_options = json.loads(os.environ[TRANSPORT_OPTIONS_ENV])
    app = Celery("fleet", broker=url, set_as_current=False)
    app.conf.update(
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_ignore_result=True,
        # One task at a time per pool process: a hanging task must not hold others back.
        worker_prefetch_multiplier=1,
        broker_heartbeat=10,
        broker_connection_timeout=3,
        broker_connection_retry_on_startup=True,
        broker_transport_options=dict(transport_options or {}),
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        # Broker-restart tests: a task must not outlive the connection it was delivered on
        # (and Celery 5 warns at every start unless this is set explicitly).
        worker_cancel_long_running_tasks_on_connection_loss=True,
    )

    @app.task(name=ADD)
    def add(x: float, y: float) -> float:
        return x + y

    @app.task(name=FAIL)
    def fail(message: str = "boom") -> None:
        _check_message(message)

    @app.task(name=FLAKY, bind=True, max_retries=None)
    def flaky(self: Task, attempts: int = 2) -> int:
        """Raises ``attempts`` times (each a task-retried), then succeeds with the retry count."""
        retries = int(self.request.retries or 0)
        if retries < attempts:
            raise self.retry(exc=RuntimeError(f"flaky attempt {retries + 1}"), countdown=0.05)
        return retries

    @app.task(name=HANG)
    def hang(seconds: float = 60.0) -> float:
        time.sleep(seconds)
        return seconds

    @app.task(name=ECHO)
    def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return {"args": list(args), "kwargs": kwargs}

    @app.task(name=UNREACHABLE)
    def publish_unreachable() -> None:
        """Fails the way a task that publishes to a dead broker fails: chained exceptions with
        runs of celery and kombu frames between the task's own frame and redis-py's."""
        other = Celery("unreachable", set_as_current=False)
        other.conf.broker_connection_timeout = 2
        # An explicit connection: the worker's CELERY_BROKER_URL would win over ``broker=``.
        with other.connection_for_write(UNREACHABLE_BROKER) as connection:
            other.send_task(ADD, (1, 2), retry=False, connection=connection)

    return app


app = make_app()
