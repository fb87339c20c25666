"""Retry core (chatbot/retry.py): rebuilding arguments from Celery's reprs, exactly or not at all.

The property: for any literal arguments, what Celery's ``saferepr`` shows of them is either
rebuilt to the very same value or refused, never rebuilt to something else. The live tests
re-send failed tasks through the bot's own Celery app to a real worker that consumes only one
queue, and read what the worker ran from its events.
"""

from __future__ import annotations

import uuid as uuid_module
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.utils.saferepr import saferepr
from hypothesis import given, settings
from hypothesis import strategies as st

from chatbot.config import Settings
from chatbot.demo.worker import CeleryWorkerProcess
from chatbot.model import FAILURE, STARTED, Task
from chatbot.redaction import ELLIPSIS, WITHHELD, Redactor, clip
from chatbot.retry import (
    RebuildError,
    Resent,
    RetryPlan,
    RetryRefusal,
    TaskResender,
    plan_retries,
    plan_retry,
    rebuild,
)
from chatbot.service import Service
from tests.conftest import FLEET_APP_MODULE, REPO_ROOT, unique_hostname
from tests.fleet_app import ECHO, FAIL, HANG, make_app
from tests.support import wait_until

DEADLINE = 60.0
QUEUE = "retry-only"


def failed_task(args: str | None, kwargs: str | None = "{}", **fields: Any) -> Task:
    values: dict[str, Any] = {"name": FAIL, "state": FAILURE, "queue": "celery"}
    values.update(fields)
    return Task(str(uuid_module.uuid4()), args=args, kwargs=kwargs, **values)


# -- rebuilding -----------------------------------------------------------------------------


def test_plain_arguments_are_rebuilt_exactly() -> None:
    args = (1, "two", [3.5, None], {"k": True, "n": -0.0}, (7,), "it's", 1e16)
    kwargs = {"when": "2026-01-01", "ids": [1, 2, 3], "nested": {"a": {"b": 1}}}
    task = failed_task(saferepr(args, 1024), saferepr(kwargs, 1024))
    plan = plan_retry(task)
    assert isinstance(plan, RetryPlan)
    assert plan.args == args and type(plan.args) is tuple
    assert repr(plan.args) == repr(args)
    assert plan.kwargs == kwargs
    assert plan.queue == "celery" and plan.name == FAIL and plan.task_id == task.uuid
    # A producer that passed a list keeps its list.
    listed = plan_retry(failed_task("[1, 2]"))
    assert isinstance(listed, RetryPlan) and listed.args == [1, 2]


@pytest.mark.parametrize(
    ("args", "kwargs", "reason"),
    [
        (None, "{}", "never seen"),
        ("('[redacted]',)", "{}", "redacted"),
        ("()", "{'password': '[redacted]'}", "redacted"),
        (WITHHELD, "{}", "redacted"),
        (clip("('" + "x" * 2000 + "',)", 1024), "{}", "were cut"),
        (saferepr(("x" * 2000,), 1024), "{}", "were cut"),
        (saferepr(("a" * 1000, "b" * 100), 1024), "{}", "were cut"),
        (saferepr((list(range(400)),), 1024), "{}", "were cut"),
        (saferepr(({"a": {"b": {"c": 1}}},), 1024), "{}", "levels of nesting"),
        ("([1, ...], 2)", "{}", "were cut"),
        # saferepr cuts a string at a word boundary: shorter than the limit, still cut.
        (saferepr(("a" * 1010 + " " + "b" * 500,), 1024), "{}", "were cut"),
        ("('Loading...',)", "{}", "were cut"),  # cannot be told apart from a cut
        (saferepr((b"\xff",), 1024), "{}", "bytes"),
        ("('a\\nb',)", "{}", "cannot be rebuilt exactly"),  # a newline or backslash-n?
        ("(<Order id=3>,)", "{}", "not Python literals"),
        ("(datetime.datetime(2026, 1, 1, 0, 0),)", "{}", "not Python literals"),
        ("(nan,)", "{}", "not Python literals"),
        ("(1,  2)", "{}", "cannot be rebuilt exactly"),  # not how saferepr writes it
        ("'just a string'", "{}", "not a list"),
        ("()", "[1]", "not a mapping"),
        ("()", "{1: 2}", "not a mapping"),
    ],
)
def test_refused_with_the_reason(args: str | None, kwargs: str, reason: str) -> None:
    refusal = plan_retry(failed_task(args, kwargs))
    assert isinstance(refusal, RetryRefusal), refusal
    assert reason in refusal.reason


def test_arguments_redacted_at_ingest_are_refused() -> None:
    # What the store holds after ingest for a task called with an api_key keyword.
    redactor = Redactor()
    kwargs = redactor.kwargs(saferepr({"api_key": "sk-live-1234", "amount": 5}, 1024))
    args = redactor.args(saferepr(("redis://user:hunter2@cache:6379/0",), 1024))
    for task in (failed_task("()", kwargs), failed_task(args)):
        refusal = plan_retry(task)
        assert isinstance(refusal, RetryRefusal) and "redacted" in refusal.reason


def test_only_failed_tasks_with_a_known_queue() -> None:
    running = plan_retry(failed_task("()", state=STARTED))
    assert isinstance(running, RetryRefusal) and "STARTED" in running.reason
    nameless = plan_retry(failed_task("()", name=None))
    assert isinstance(nameless, RetryRefusal) and "name" in nameless.reason
    # No task-sent event: the worker's only queue is the original one; two queues are not.
    task = failed_task("()", queue=None, worker="w1@h")
    assert plan_retry(task, worker_queues={"w1@h": ["emails"]}) == RetryPlan(
        task.uuid, FAIL, (), {}, "emails", "()", "{}"
    )
    two = plan_retry(task, worker_queues={"w1@h": ["celery", "emails"]})
    assert isinstance(two, RetryRefusal) and "consumes celery, emails" in two.reason
    unknown = plan_retry(task)
    assert isinstance(unknown, RetryRefusal) and "queue is unknown" in unknown.reason


def test_plan_retries_splits_plans_and_refusals() -> None:
    good, bad = failed_task("(1,)"), failed_task("(<x>,)")
    plans, refusals = plan_retries([good, bad])
    assert [p.task_id for p in plans] == [good.uuid]
    assert [r.task_id for r in refusals] == [bad.uuid]


def _values(leaf: st.SearchStrategy[Any], keys: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaf,
        lambda children: (
            st.lists(children, max_size=6)
            | st.tuples(children, children)
            | st.dictionaries(keys, children, max_size=5)
        ),
        max_leaves=40,
    )


_ANY_LEAF = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=60)
    | st.binary(max_size=20)
)
_FRIENDLY_TEXT = st.text(
    alphabet=st.characters(
        blacklist_characters="'\\\"", blacklist_categories=["Cc", "Cs", "Zl", "Zp"]
    ),
    max_size=60,
).filter(lambda text: not text.endswith("..."))
_FRIENDLY_LEAF = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | _FRIENDLY_TEXT
)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(_values(_ANY_LEAF, st.text(max_size=10)), max_size=6).map(tuple),
    st.sampled_from([40, 200, 1024]),
)
def test_a_rebuild_is_exact_or_refused(args: tuple[Any, ...], maxsize: int) -> None:
    shown = saferepr(args, maxsize, maxlevels=3)
    try:
        value = rebuild(shown, "arguments", maxsize=maxsize)
    except RebuildError:
        return  # refusing is always safe; the property below says it is not overused
    assert value == args
    assert repr(value) == repr(args)  # 1 is not 1.0, not True; a tuple stays a tuple


@settings(max_examples=300, deadline=None)
@given(st.lists(_values(_FRIENDLY_LEAF, _FRIENDLY_TEXT), max_size=6).map(tuple))
def test_arguments_celery_shows_whole_are_rebuilt(args: tuple[Any, ...]) -> None:
    shown = saferepr(args, 1024, maxlevels=3)
    whole = saferepr(args, 10**9, maxlevels=10**6)
    if shown != whole:  # cut by length or nesting: the other property covers those
        return
    assert rebuild(shown, "arguments") == args


# -- re-sending to a real worker ------------------------------------------------------------


@dataclass
class RetryFleet:
    service: Service
    worker: CeleryWorkerProcess
    producer: Celery  # sends task-sent events: the store learns each task's queue
    quiet_producer: Celery  # does not: the queue comes from the worker's queues

    def wait_state(self, task_id: str, *states: str) -> Task:
        def reached() -> Task | None:
            task = self.service.store.get_task(task_id)
            return task if task is not None and task.state in states else None

        task = wait_until(reached, timeout=DEADLINE, what=f"task {task_id} in {states}")
        assert task is not None
        return task


@pytest.fixture(scope="module")
def fleet(
    redis_url_factory: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RetryFleet]:
    url = redis_url_factory()
    log_dir: Path = tmp_path_factory.mktemp("retry")
    service = Service(Settings(broker_url=url))
    worker = CeleryWorkerProcess(
        FLEET_APP_MODULE,
        url,
        hostname=unique_hostname("retry"),
        queues=(QUEUE,),
        concurrency=1,
        cwd=REPO_ROOT,
        log_path=log_dir / "worker.log",
    )
    producer = make_app(url)
    quiet = make_app(url)
    quiet.conf.task_send_sent_event = False
    try:
        service.start()
        assert service.consumer is not None and service.consumer.wait_connected(DEADLINE)
        worker.start()
        worker.wait_ready(timeout=DEADLINE)
        yield RetryFleet(service, worker, producer, quiet)
    finally:
        worker.stop(timeout=5.0)
        service.stop()
        producer.close()
        quiet.close()


def test_a_failed_task_is_resent_with_the_same_arguments_to_its_queue(fleet: RetryFleet) -> None:
    # fleet.fail takes one argument: called with these it fails with a TypeError, every time.
    # (Celery shows three levels of nesting: a fourth would be cut, and refused.)
    args = (8773, "card", [1.5, None, {"k": True}], {"nested": [1, 2]})
    kwargs = {"amount_cents": 14813, "tags": ["a", "b"]}
    original = str(fleet.producer.send_task(FAIL, args, kwargs, queue=QUEUE).id)
    failed = fleet.wait_state(original, FAILURE)
    assert failed.queue == QUEUE

    plan = plan_retry(failed)
    assert isinstance(plan, RetryPlan), plan
    (resent,) = TaskResender(fleet.service.app).resend([plan])
    assert resent.ok and resent.new_id and resent.new_id != original and resent.queue == QUEUE

    # The worker consumes only QUEUE: that it ran the new task at all shows where it went.
    again = fleet.wait_state(resent.new_id, FAILURE)
    assert again.worker == fleet.worker.hostname
    assert again.name == FAIL
    assert again.args == failed.args and again.kwargs == failed.kwargs
    assert again.exception == failed.exception  # the same call fails the same way


def test_without_task_sent_events_the_workers_only_queue_is_used(fleet: RetryFleet) -> None:
    original = str(fleet.quiet_producer.send_task(FAIL, ("card 2251 declined",), queue=QUEUE).id)
    failed = fleet.wait_state(original, FAILURE)
    assert failed.queue is None  # nothing said which queue it came from

    refused = plan_retry(failed)
    assert isinstance(refused, RetryRefusal) and "queue is unknown" in refused.reason
    plan = plan_retry(failed, worker_queues={fleet.worker.hostname: [QUEUE]})
    assert isinstance(plan, RetryPlan) and plan.queue == QUEUE
    (resent,) = TaskResender(fleet.service.app).resend([plan])
    assert resent.new_id is not None
    again = fleet.wait_state(resent.new_id, FAILURE)
    assert again.args == "('card 2251 declined',)"


def test_a_redacted_task_is_refused_and_nothing_is_sent(fleet: RetryFleet) -> None:
    original = str(
        fleet.producer.send_task(FAIL, (), {"message": "x", "api_key": "sk-1"}, queue=QUEUE).id
    )
    failed = fleet.wait_state(original, FAILURE)
    assert failed.kwargs is not None and "[redacted]" in failed.kwargs
    plans, refusals = plan_retries([failed])
    assert plans == [] and "redacted" in refusals[0].reason
    assert TaskResender(fleet.service.app).resend(plans) == []


def test_unsendable_arguments_and_a_dead_broker_are_reported_per_task(
    fleet: RetryFleet,
) -> None:
    # A set is a literal, but the JSON serializer cannot send it: an error, not a crash.
    plan = RetryPlan("t-1", ECHO, ({1, 2},), {}, QUEUE, "({1, 2},)", "{}")
    (result,) = TaskResender(fleet.service.app).resend([plan])
    assert result == Resent("t-1", None, QUEUE, result.error) and result.error
    assert "serializ" in result.error.lower() or "encode" in result.error.lower()

    dead = Celery("dead", broker="redis://127.0.0.1:1/0", set_as_current=False)
    dead.conf.broker_connection_timeout = 1
    dead.conf.broker_connection_retry = False
    try:
        plans = [RetryPlan(f"t-{i}", HANG, (0.1,), {}, QUEUE, "(0.1,)", "{}") for i in range(2)]
        results = TaskResender(dead).resend(plans)
    finally:
        dead.close()
    assert [r.task_id for r in results] == ["t-0", "t-1"]
    assert all(not r.ok and r.error for r in results)


def test_store_clipped_arguments_never_reach_the_broker() -> None:
    text = clip(saferepr(("y" * 5000,), 10**6), 1024)
    assert text is not None and text.endswith(ELLIPSIS)
    refusal = plan_retry(failed_task(text))
    assert isinstance(refusal, RetryRefusal) and "were cut" in refusal.reason
