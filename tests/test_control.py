"""FleetControl against real worker subprocesses on the private Redis (and RabbitMQ if up).

Waits poll real state with a generous deadline that only bounds a hang; nothing asserts timing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from chatbot.control import (
    ControlError,
    ControlResult,
    FleetControl,
    WorkerReply,
    validate_rate,
    validate_signal,
)
from chatbot.demo.worker import CeleryWorkerProcess, WorkerStartError
from tests.conftest import REPO_ROOT, unique_hostname
from tests.fleet_app import ADD, HANG, make_app
from tests.support import wait_until

Broadcasts = list[tuple[str, dict[str, Any]]]


def _pid_gone(pid: int) -> bool:
    """No such process, or only a zombie left (a container's init may be slow to reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


@pytest.fixture(scope="module")
def shared_worker(
    redis_url_factory: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CeleryWorkerProcess]:
    """One worker for the tests that leave it as they found it (one start saves seconds)."""
    url = redis_url_factory()
    log: Path = tmp_path_factory.mktemp("shared-worker") / "worker.log"
    worker = CeleryWorkerProcess(
        "tests.fleet_app", url, hostname=unique_hostname("shared"), log_path=log, cwd=REPO_ROOT
    )
    worker.start()
    try:
        worker.wait_ready(timeout=30)
        yield worker
    finally:
        worker.stop(timeout=5)


@pytest.fixture
def sent() -> Broadcasts:
    return []


@pytest.fixture
def fleet_app(shared_worker: CeleryWorkerProcess) -> Iterator[Celery]:
    app = make_app(shared_worker.broker_url)
    yield app
    app.close()


@pytest.fixture
def control(fleet_app: Celery, sent: Broadcasts) -> FleetControl:
    return FleetControl(fleet_app, timeout=3.0, on_broadcast=lambda c, a: sent.append((c, a)))


def _active_ids(control: FleetControl, worker: str) -> set[str]:
    result = control.inspect("active", worker=worker)
    reply = result.replies[worker]
    assert reply.status == "ok", reply
    return {task["id"] for task in reply.value}


def _pool_processes(control: FleetControl, worker: str) -> list[int]:
    reply = control.inspect("stats", worker=worker).replies[worker]
    assert reply.status == "ok", reply
    return list(reply.value["pool"]["processes"])


# -- validation (no broker) --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [("10/m", "10/m"), ("5/s", "5/s"), ("100/h", "100/h"), ("200", "200"), (" 2.5/M ", "2.5/m")],
)
def test_validate_rate_accepts_celery_rates(text: str, canonical: str) -> None:
    assert validate_rate(text) == canonical


@pytest.mark.parametrize("text", ["10/x", "", "ten/m", "/m", "10/", "-1/s", "10/m/s"])
def test_validate_rate_rejects_with_one_line(text: str) -> None:
    with pytest.raises(ValueError) as error:
        validate_rate(text)
    message = str(error.value)
    assert "\n" not in message
    assert message == f"bad rate {text.strip()!r}: expected N, N/s, N/m or N/h"


@pytest.mark.parametrize(
    ("text", "canonical"),
    [("TERM", "SIGTERM"), ("SIGTERM", "SIGTERM"), ("sigkill", "SIGKILL"), ("9", "SIGKILL"),
     (" int ", "SIGINT")],
)  # fmt: skip
def test_validate_signal_canonical_names(text: str, canonical: str) -> None:
    assert validate_signal(text) == canonical


@pytest.mark.parametrize("text", ["FOO", "SIGFOO", "999", "", "-9"])
def test_validate_signal_rejects_unknown(text: str) -> None:
    with pytest.raises(ValueError) as error:
        validate_signal(text)
    assert "\n" not in str(error.value)


def test_arguments_are_validated_before_anything_is_sent(
    control: FleetControl, sent: Broadcasts
) -> None:
    with pytest.raises(ValueError):
        control.rate_limit(ADD, "10/x")
    with pytest.raises(ValueError):
        control.revoke([])
    with pytest.raises(ValueError):
        control.revoke(["abc"], terminate=True, signal="NOPE")
    with pytest.raises(ValueError):
        control.pool_grow("w@h", 0)
    with pytest.raises(ValueError):
        control.autoscale("w@h", max=2, min=3)
    with pytest.raises(ValueError):
        control.time_limit(ADD, soft=10, hard=5)
    with pytest.raises(ValueError):
        control.inspect("conf")  # would echo the broker password
    assert sent == []


def test_result_helpers() -> None:
    result = ControlResult(
        "rate_limit",
        {
            "a@h": WorkerReply("a@h", "ok", "done", "done"),
            "b@h": WorkerReply("b@h", "error", "unknown task", "unknown task"),
            "c@h": WorkerReply("c@h", "no_reply"),
        },
    )
    assert [r.worker for r in result.ok] == ["a@h"]
    assert [r.worker for r in result.errors] == ["b@h"]
    assert [r.worker for r in result.no_reply] == ["c@h"]
    assert not result.all_ok
    assert result.values() == {"a@h": "done"}
    assert not ControlResult("ping", {}).all_ok  # nobody confirmed anything


# -- against a real worker ---------------------------------------------------------------------


def test_ping_and_stats(
    control: FleetControl, shared_worker: CeleryWorkerProcess, sent: Broadcasts
) -> None:
    name = shared_worker.hostname
    ping = control.inspect("ping", worker=name)
    assert ping.all_ok
    assert ping.replies[name].value == "pong"

    stats = control.inspect("stats", worker=name)
    reply = stats.replies[name]
    assert reply.status == "ok"
    assert reply.value["pool"]["max-concurrency"] == 1
    assert reply.value["pid"] == shared_worker.pid
    assert [command for command, _ in sent] == ["ping", "stats"]


def test_inspect_lists_registered_tasks_and_active_queues(
    control: FleetControl, shared_worker: CeleryWorkerProcess
) -> None:
    name = shared_worker.hostname
    registered = control.inspect("registered", worker=name).replies[name]
    assert ADD in registered.value and HANG in registered.value
    queues = control.inspect("active_queues", worker=name).replies[name]
    assert [queue["name"] for queue in queues.value] == ["celery"]


def test_revoke_with_terminate_ends_a_hanging_task(
    control: FleetControl, fleet_app: Celery, shared_worker: CeleryWorkerProcess, sent: Broadcasts
) -> None:
    name = shared_worker.hostname
    task_id = fleet_app.send_task(HANG, args=(120,)).id
    wait_until(lambda: task_id in _active_ids(control, name), what="the hang task to start")

    result = control.revoke([task_id], terminate=True, signal="KILL", destination=[name])
    assert result.all_ok, result
    assert task_id in result.replies[name].message
    assert result.arguments == {"task_id": [task_id], "terminate": True, "signal": "SIGKILL"}
    wait_until(lambda: task_id not in _active_ids(control, name), what="the task to be gone")
    assert sent.count(("revoke", result.arguments)) == 1
    # The pool replaced the killed process: the worker still works.
    assert control.inspect("ping", worker=name).all_ok


def test_revoke_of_an_unknown_id_is_flagged_not_failed(
    control: FleetControl, shared_worker: CeleryWorkerProcess
) -> None:
    name = shared_worker.hostname
    result = control.revoke(["0000-not-a-task"], destination=[name])
    assert result.all_ok
    assert "flagged as revoked" in result.replies[name].message
    revoked = control.inspect("revoked", worker=name).replies[name]
    assert "0000-not-a-task" in revoked.value


def test_rate_limit_and_time_limit_replies(
    control: FleetControl, shared_worker: CeleryWorkerProcess
) -> None:
    name = shared_worker.hostname
    limited = control.rate_limit(ADD, "10/m", worker=name)
    assert limited.all_ok
    assert limited.replies[name].message == "new rate limit set successfully"
    unlimited = control.rate_limit(ADD, "0", worker=name)
    assert unlimited.replies[name].message == "rate limit disabled successfully"

    unknown = control.rate_limit("fleet.no_such_task", "5/s", worker=name)
    assert unknown.replies[name].status == "error"
    assert unknown.replies[name].message == "unknown task"
    assert unknown.errors and not unknown.all_ok

    timed = control.time_limit(ADD, soft=30, hard=60, worker=name)
    assert timed.replies[name].message == "time limits set successfully"
    control.time_limit(ADD, soft=None, hard=None, worker=name)


def test_autoscale_on_a_worker_without_autoscale_is_an_error(
    control: FleetControl, shared_worker: CeleryWorkerProcess
) -> None:
    name = shared_worker.hostname
    result = control.autoscale(name, max=3, min=1)
    reply = result.replies[name]
    assert reply.status == "error"
    assert "Autoscale not enabled" in reply.message


def test_missing_destination_is_no_reply(fleet_app: Celery, sent: Broadcasts) -> None:
    # A short timeout: silence always costs the full wait.
    control = FleetControl(fleet_app, timeout=1.0, on_broadcast=lambda c, a: sent.append((c, a)))
    ghost = "ghost-worker@nowhere"
    result = control.pool_grow(ghost)
    assert result.replies[ghost].status == "no_reply"
    assert result.no_reply and not result.all_ok and result.error is None
    assert "unknown" in result.replies[ghost].message
    assert [command for command, _ in sent] == ["pool_grow"]


def test_broadcast_to_all_marks_silent_expected_workers(
    fleet_app: Celery, shared_worker: CeleryWorkerProcess
) -> None:
    control = FleetControl(fleet_app, timeout=1.0)
    ghost = "ghost-worker@nowhere"
    result = control.inspect("ping", expected=[shared_worker.hostname, ghost])
    assert result.replies[shared_worker.hostname].status == "ok"
    assert result.replies[ghost].status == "no_reply"


def test_add_and_cancel_consumer(
    control: FleetControl, shared_worker: CeleryWorkerProcess, sent: Broadcasts
) -> None:
    name = shared_worker.hostname

    def consumed() -> list[str]:
        reply = control.inspect("active_queues", worker=name).replies[name]
        return [queue["name"] for queue in reply.value]

    added = control.add_consumer("extra", worker=name)
    assert added.all_ok and "extra" in added.replies[name].message
    wait_until(lambda: "extra" in consumed(), what="the worker to consume 'extra'")
    cancelled = control.cancel_consumer("extra", worker=name)
    assert cancelled.all_ok
    wait_until(lambda: "extra" not in consumed(), what="the worker to stop consuming 'extra'")
    assert {"add_consumer", "cancel_consumer"} <= {command for command, _ in sent}


def test_fire_and_forget_broadcasts_are_counted(control: FleetControl, sent: Broadcasts) -> None:
    control.enable_events()
    control.heartbeat()
    assert sent == [("enable_events", {}), ("heartbeat", {})]


def test_a_failing_hook_does_not_stop_the_command(
    fleet_app: Celery, shared_worker: CeleryWorkerProcess
) -> None:
    def broken(command: str, arguments: dict[str, Any]) -> None:
        raise RuntimeError("audit is down")

    control = FleetControl(fleet_app, timeout=3.0, on_broadcast=broken)
    assert control.inspect("ping", worker=shared_worker.hostname).all_ok


# -- workers of their own (these tests change or end the worker) -----------------------------


def test_pool_grow_and_shrink_change_the_process_count(
    redis_url: str, celery_worker: Callable[..., CeleryWorkerProcess], sent: Broadcasts
) -> None:
    worker = celery_worker(redis_url, concurrency=1)
    app = make_app(redis_url)
    try:
        control = FleetControl(app, timeout=3.0, on_broadcast=lambda c, a: sent.append((c, a)))
        name = worker.hostname
        assert len(_pool_processes(control, name)) == 1
        grown = control.pool_grow(name, 1)
        assert grown.all_ok and grown.replies[name].message == "pool will grow"
        wait_until(lambda: len(_pool_processes(control, name)) == 2, what="a second process")
        shrunk = control.pool_shrink(name, 1)
        assert shrunk.all_ok
        wait_until(lambda: len(_pool_processes(control, name)) == 1, what="one process again")
        assert [c for c, _ in sent if c.startswith("pool_")] == ["pool_grow", "pool_shrink"]
    finally:
        app.close()


def test_autoscale_on_an_autoscaling_worker(
    redis_url: str, celery_worker: Callable[..., CeleryWorkerProcess]
) -> None:
    worker = celery_worker(redis_url, autoscale=(2, 1))
    app = make_app(redis_url)
    try:
        control = FleetControl(app, timeout=3.0)
        result = control.autoscale(worker.hostname, max=3, min=1)
        assert result.all_ok
        assert result.replies[worker.hostname].message == "autoscale now max=3 min=1"
        refused = control.pool_grow(worker.hostname)
        assert refused.replies[worker.hostname].status == "error"
    finally:
        app.close()


def test_shutdown_is_sent_not_answered_and_the_worker_exits(
    redis_url: str, celery_worker: Callable[..., CeleryWorkerProcess], sent: Broadcasts
) -> None:
    worker = celery_worker(redis_url)
    app = make_app(redis_url)
    try:
        control = FleetControl(app, timeout=3.0, on_broadcast=lambda c, a: sent.append((c, a)))
        result = control.shutdown(worker.hostname)
        assert result.replies[worker.hostname].status == "sent"
        assert result.all_ok and not result.no_reply
        wait_until(lambda: not worker.running, what="the worker to exit")
        assert worker.returncode == 0
        assert sent == [("shutdown", {})]
    finally:
        app.close()


def test_kill_ends_the_worker_and_its_pool(
    redis_url: str, celery_worker: Callable[..., CeleryWorkerProcess]
) -> None:
    worker = celery_worker(redis_url, concurrency=2)
    app = make_app(redis_url)
    try:
        control = FleetControl(app, timeout=3.0)
        children = _pool_processes(control, worker.hostname)
        main_pid = worker.pid
        assert main_pid is not None and len(children) == 2
        worker.kill()
        assert not worker.running
        for pid in [main_pid, *children]:
            wait_until(partial(_pid_gone, pid), what=f"pid {pid} to end")
        # Now the worker is gone: silence, reported as unknown rather than as a failure.
        quick = FleetControl(app, timeout=1.0)
        reply = quick.inspect("ping", worker=worker.hostname).replies[worker.hostname]
        assert reply.status == "no_reply"
    finally:
        app.close()


# -- broker failures ---------------------------------------------------------------------------


def test_unreachable_broker_is_an_error_of_the_result_not_of_the_workers(
    sent: Broadcasts,
) -> None:
    app = make_app("redis://:topsecret@127.0.0.1:1/0")
    try:
        control = FleetControl(app, timeout=1.0, on_broadcast=lambda c, a: sent.append((c, a)))
        result = control.rate_limit(ADD, "1/s", worker="w@h")
        assert result.error is not None and "topsecret" not in result.error
        assert result.replies["w@h"].status == "no_reply"
        assert not result.all_ok
        with pytest.raises(ControlError) as error:
            control.heartbeat()
        assert "topsecret" not in str(error.value)
        shutdown = control.shutdown("w@h")
        assert shutdown.error is not None and shutdown.replies["w@h"].status == "no_reply"
        # Nothing reached a broker, so nothing was counted as sent.
        assert sent == []
    finally:
        app.close()


# -- RabbitMQ ----------------------------------------------------------------------------------


@pytest.mark.amqp
def test_control_over_rabbitmq(
    amqp_url: str,
    unique_name: Callable[[str], str],
    celery_worker: Callable[..., CeleryWorkerProcess],
) -> None:
    # The vhost is shared: a queue and a node name of our own, and commands addressed to it.
    queue = unique_name("chatops-test")
    worker = celery_worker(amqp_url, queues=[queue], hostname=unique_hostname("amqp"))
    app = make_app(amqp_url)
    try:
        control = FleetControl(app, timeout=3.0)
        assert control.inspect("ping", worker=worker.hostname).all_ok
        limited = control.rate_limit(ADD, "5/s", worker=worker.hostname)
        assert limited.replies[worker.hostname].message == "new rate limit set successfully"
        ghost = unique_hostname("ghost")
        quick = FleetControl(app, timeout=1.0)
        assert quick.pool_grow(ghost).replies[ghost].status == "no_reply"
    finally:
        app.close()


# -- the launcher itself -----------------------------------------------------------------------


def test_worker_that_cannot_start_fails_with_its_log(redis_url: str, tmp_path: Path) -> None:
    worker = CeleryWorkerProcess(
        "tests.no_such_module",
        redis_url,
        hostname="broken@%h",
        log_path=tmp_path / "broken.log",
        cwd=REPO_ROOT,
    )
    assert "%h" not in worker.hostname and worker.hostname.startswith("broken@")
    worker.start()
    try:
        with pytest.raises(WorkerStartError) as error:
            worker.wait_ready(timeout=30)
        assert "exited with" in str(error.value)
        assert "no_such_module" in str(error.value)
    finally:
        worker.stop(timeout=5)
