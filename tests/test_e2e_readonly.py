"""End to end: every read-only command against a real worker, from the console.

This module also holds :func:`running_fleet`, the fleet the Slack end-to-end modules
(``test_slack_http``, ``test_slack_socket_mode``, ``test_slack_home``) share the shape of:
a private Redis database, one real ``celery worker`` of ``tests.fleet_app``, the real
:class:`~chatbot.service.Service` (event consumer, store, broker reader, control) and three
tasks with known outcomes: one succeeded, one failed with hostile text in its argument and
exception, one hanging. Nothing is timed; waits have generous deadlines.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from celery import Celery

from chatbot.config import Settings
from chatbot.console import Console
from chatbot.demo.worker import CeleryWorkerProcess
from chatbot.model import FAILURE, STARTED, SUCCESS
from chatbot.render import Message
from chatbot.service import Service
from tests.conftest import FLEET_APP_MODULE, REPO_ROOT, unique_hostname
from tests.fleet_app import ADD, FAIL, HANG, make_app
from tests.support import wait_until

DEADLINE = 60.0
# Task data that must never become a mention, a ping or a link in Slack.
HOSTILE = "<!channel> <@U123> <https://x|y> & co"
HANG_SECONDS = 600.0  # longer than any test module; the worker is killed at teardown


@dataclass
class Fleet:
    service: Service
    worker: CeleryWorkerProcess
    producer: Celery
    succeeded_id: str
    failed_id: str
    hanging_id: str

    @property
    def hostname(self) -> str:
        return self.worker.hostname

    def wait_state(self, task_id: str, state: str) -> None:
        def reached() -> bool:
            task = self.service.store.get_task(task_id)
            return task is not None and task.state == state

        wait_until(reached, timeout=DEADLINE, what=f"task {task_id} in {state}")

    def run_failing(self, message: str) -> str:
        """Run one more failing task (the worker's pool must be free); returns its id."""
        task_id = str(self.producer.send_task(FAIL, (message,)).id)
        self.wait_state(task_id, FAILURE)
        return task_id


@contextlib.contextmanager
def running_fleet(
    broker_url: str, log_dir: Path, *, start_hanging: bool = True, **settings: object
) -> Iterator[Fleet]:
    """A started Service and worker with the three known tasks; everything stopped after.

    ``start_hanging=False`` leaves the worker's single pool process free (for modules that
    run more tasks); ``hanging_id`` is then empty.
    """
    service = Service(Settings(broker_url=broker_url, **settings))  # type: ignore[arg-type]
    worker = CeleryWorkerProcess(
        FLEET_APP_MODULE,
        broker_url,
        hostname=unique_hostname(),
        concurrency=1,
        cwd=REPO_ROOT,
        log_path=log_dir / "worker.log",
    )
    producer = make_app(broker_url)
    try:
        service.start()
        assert service.consumer is not None
        assert service.consumer.wait_connected(DEADLINE), "event consumer did not connect"
        worker.start()
        worker.wait_ready(timeout=DEADLINE)
        wait_until(
            lambda: any(
                w.hostname == worker.hostname and w.is_online(service.clock())
                for w in service.store.workers()
            ),
            timeout=DEADLINE,
            what="the worker's heartbeat in the store",
        )
        fleet = Fleet(service, worker, producer, "", "", "")
        fleet.succeeded_id = str(producer.send_task(ADD, (2, 3)).id)
        fleet.wait_state(fleet.succeeded_id, SUCCESS)
        fleet.failed_id = fleet.run_failing(HOSTILE)
        if start_hanging:
            fleet.hanging_id = str(producer.send_task(HANG, (HANG_SECONDS,)).id)
            fleet.wait_state(fleet.hanging_id, STARTED)
        yield fleet
    finally:
        # The hanging task keeps a warm shutdown waiting: the worker is killed after 5 s.
        worker.stop(timeout=5.0)
        service.stop()
        producer.close()


def wait_running_for(fleet: Fleet, seconds: float) -> None:
    """Until the hanging task has run at least ``seconds`` (so ``stuck --over`` sees it)."""

    def long_enough() -> bool:
        task = fleet.service.store.get_task(fleet.hanging_id)
        runtime = task.runtime_so_far(fleet.service.clock()) if task else None
        return runtime is not None and runtime >= seconds

    wait_until(long_enough, timeout=DEADLINE, what=f"the hanging task to run {seconds}s")


# -- the console against the real worker --------------------------------------------------------
@pytest.fixture(scope="module")
def fleet(
    redis_url_factory: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    with running_fleet(redis_url_factory(), tmp_path_factory.mktemp("e2e-console")) as running:
        wait_running_for(running, 1.5)
        yield running


def console_answers(fleet: Fleet, *lines: str) -> list[str]:
    """Type ``lines`` into the console; one rendered answer per line."""

    def run_command(text: str) -> Message:
        service = fleet.service
        return service.dispatcher.run(text, service.context(user_id="console"))

    stdout = io.StringIO()
    prompt = "celery> "
    console = Console(run_command, io.StringIO("\n".join(lines) + "\n"), stdout, prompt=prompt)
    assert console.run() == 0
    answers = stdout.getvalue().split(prompt)[1:]  # [0] is the banner
    assert len(answers) == len(lines) + 1  # the last prompt met the end of input
    return answers[:-1]


def test_every_readonly_command_answers_from_the_console(fleet: Fleet) -> None:
    (
        help_,
        status,
        tasks,
        failed,
        active,
        stuck,
        task_failed,
        task_by_prefix,
        workers,
        queues,
    ) = console_answers(
        fleet,
        "help",
        "status",
        "tasks",
        "failed",
        "active",
        "stuck --over 1s",
        f"task {fleet.failed_id}",
        f"task {fleet.succeeded_id[:8]}",
        "workers",
        "queues",
    )
    assert "/celery commands" in help_
    for name in ("status", "tasks", "failed", "active", "stuck", "task", "workers", "queues"):
        assert f"/celery {name}" in help_

    assert "Celery status" in status
    assert "1 up" in status
    assert "celery" in status  # the backlog line names the queue

    for task_id in (fleet.succeeded_id, fleet.failed_id, fleet.hanging_id):
        assert task_id in tasks

    assert fleet.failed_id in failed
    assert "ValueError" in failed
    assert fleet.hostname in failed
    # A terminal shows task data as it is: no Slack escaping left in it.
    assert "<!channel>" in failed
    assert "&lt;" not in failed

    assert fleet.hanging_id in active
    assert "fleet.hang" in active
    assert fleet.hostname in active

    assert fleet.hanging_id in stuck
    assert fleet.succeeded_id not in stuck

    assert "Traceback (most recent call last)" in task_failed
    assert "ValueError" in task_failed
    assert fleet.failed_id in task_failed

    assert fleet.succeeded_id in task_by_prefix
    assert "fleet.add" in task_by_prefix
    assert "(2, 3)" in task_by_prefix

    assert fleet.hostname in workers
    assert "prefork" in workers  # from inspect stats: the worker was asked

    assert "celery" in queues
    assert "waiting" in queues


def test_console_errors_are_one_readable_line(fleet: Fleet) -> None:
    unknown, bad_flag, no_task = console_answers(
        fleet, "frobnicate", "failed --since soon", "task 00000000-dead"
    )
    for answer in (unknown, bad_flag, no_task):
        assert "Traceback" not in answer
        assert "Usage" in answer
    assert "frobnicate" in unknown
    assert "failed" in bad_flag
    assert "00000000-dead" in no_task
