"""Readable tracebacks (chatbot/tracebacks.py), on tracebacks a real Celery worker sent.

The live tests run real ``celery worker`` processes of ``tests.fleet_app`` and read the
traceback from the task-failed event as the store kept it; the counts they check are computed
from that raw text independently (by path), not from the function under test.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest

from chatbot.model import FAILURE
from chatbot.redaction import ELLIPSIS, clip_tail
from chatbot.tracebacks import readable_traceback
from tests.fleet_app import UNREACHABLE
from tests.test_e2e_readonly import Fleet, running_fleet

FRAMEWORK_FILE = re.compile(r'File "[^"]*site-packages/(celery|kombu|billiard|vine|amqp)/')
MARKER = re.compile(r"^\s*[\^~]+\s*$")


@pytest.fixture(scope="module")
def fleet(
    redis_url_factory: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    with running_fleet(
        redis_url_factory(), tmp_path_factory.mktemp("tracebacks"), start_hanging=False
    ) as running:
        yield running


def _raw_traceback(fleet: Fleet, task_id: str) -> str:
    task = fleet.service.store.get_task(task_id)
    assert task is not None and task.state == FAILURE and task.traceback
    return task.traceback


def _frames(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("File ")]


def test_a_task_failure_keeps_the_application_frames_and_folds_celery(fleet: Fleet) -> None:
    raw = _raw_traceback(fleet, fleet.failed_id)
    assert any(MARKER.match(line) for line in raw.splitlines()), "Python 3.11+ markers expected"
    readable = readable_traceback(raw)

    celery_frames = [f for f in _frames(raw) if FRAMEWORK_FILE.search(f)]
    assert celery_frames, "the worker's own frames open every task traceback"
    assert readable.framework_frames == len(celery_frames)
    assert f"{ELLIPSIS} {len(celery_frames)} framework frames (celery)" in readable.text
    assert not any(MARKER.match(line) for line in readable.text.splitlines())
    assert readable.markers_dropped == sum(1 for line in raw.splitlines() if MARKER.match(line))
    # Every application frame and its code line, in order; the exception line last.
    app_frames = [f for f in _frames(raw) if "fleet_app.py" in f]
    assert len(app_frames) == 3
    assert _frames(readable.text) == app_frames
    assert "raise ValueError(message)" in readable.text
    assert readable.text.rstrip().splitlines()[-1] == raw.rstrip().splitlines()[-1]
    assert readable.text.splitlines()[0] == "Traceback (most recent call last):"
    assert not readable.clipped


def test_a_chained_broker_failure_folds_each_framework_run(fleet: Fleet) -> None:
    task_id = str(fleet.producer.send_task(UNREACHABLE).id)
    fleet.wait_state(task_id, FAILURE)
    raw = _raw_traceback(fleet, task_id)
    readable = readable_traceback(raw)

    framework = [f for f in _frames(raw) if FRAMEWORK_FILE.search(f)]
    others = [f for f in _frames(raw) if not FRAMEWORK_FILE.search(f)]
    assert any("kombu" in f for f in framework)
    assert readable.framework_frames == len(framework)
    folded_lines = [line for line in readable.text.splitlines() if "framework frame" in line]
    counts = [re.search(r"(\d+) framework frames?", line) for line in folded_lines]
    assert sum(int(match[1]) for match in counts if match) == len(framework)
    # Not one framework frame is left, every other frame is (redis-py's included).
    assert not any(FRAMEWORK_FILE.search(f) for f in _frames(readable.text))
    assert _frames(readable.text) == others
    assert any("redis/" in f for f in others)
    # The chain stays readable: its separators and the final exception are there.
    assert raw.rstrip().splitlines()[-1] == readable.text.rstrip().splitlines()[-1]
    for separator in (
        "The above exception was the direct cause of the following exception:",
        "During handling of the above exception, another exception occurred:",
    ):
        assert raw.count(separator) == readable.text.count(separator)
    # The store keeps the tail of a long traceback: the head is marked cut, and the fold
    # counts only what is there.
    assert readable.clipped == raw.startswith(ELLIPSIS)
    assert len(readable.text) < len(raw)


def test_a_traceback_cut_at_its_head_drops_orphan_markers() -> None:
    raw = (
        "Traceback (most recent call last):\n"
        '  File "/srv/app/tasks.py", line 10, in run\n'
        "    result = compute(values)\n"
        "             ^^^^^^^^^^^^^^^\n"
        '  File "/usr/lib/python3/site-packages/celery/app/task.py", line 411, in __call__\n'
        "    return self.run(*args, **kwargs)\n"
        "           ^^^^^^^^^^^^^^^^^^^^^^^^^\n"
        "ZeroDivisionError: division by zero\n"
    )
    cut = clip_tail(raw, 150)
    assert cut is not None and cut.startswith(ELLIPSIS)
    readable = readable_traceback(cut)
    assert readable.clipped
    assert not any(MARKER.match(line) for line in readable.text.splitlines())
    assert readable.text.splitlines()[0] == ELLIPSIS
    assert readable.text.rstrip().endswith("ZeroDivisionError: division by zero")


def test_exception_groups_and_syntax_errors() -> None:
    group = (
        "  + Exception Group Traceback (most recent call last):\n"
        '  |   File "/srv/app/tasks.py", line 3, in run\n'
        "  |     raise ExceptionGroup('batch', errors)\n"
        "  |     ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
        "  | ExceptionGroup: batch (1 sub-exception)\n"
        "  +-+---------------- 1 ----------------\n"
        "    | Traceback (most recent call last):\n"
        '    |   File "/v/lib/python3.12/site-packages/kombu/connection.py", line 9, in f\n'
        "    |     x()\n"
        '    |   File "/v/lib/python3.12/site-packages/kombu/connection.py", line 19, in x\n'
        "    |     y()\n"
        "    |     ~^^\n"
        "    | OSError: refused\n"
        "    +------------------------------------\n"
    )
    readable = readable_traceback(group)
    assert "    |   … 2 framework frames (kombu)" in readable.text.splitlines()
    assert readable.markers_dropped == 2
    assert "  |     raise ExceptionGroup('batch', errors)" in readable.text
    assert readable.text.endswith("    +------------------------------------\n")

    syntax = (
        "Traceback (most recent call last):\n"
        '  File "/srv/app/tasks.py", line 1\n'
        "    def run(:\n"
        "            ^\n"
        "SyntaxError: invalid syntax\n"
    )
    # The caret of a SyntaxError is its message, not decoration.
    assert readable_traceback(syntax).text == syntax


def test_same_named_application_directories_are_not_framework() -> None:
    raw = (
        "Traceback (most recent call last):\n"
        '  File "/srv/shop/celery/tasks.py", line 4, in charge\n'
        "    gateway.charge()\n"
        '  File "/v/lib/python3.11/site-packages/billiard/pool.py", line 362, in workloop\n'
        "    result = (True, prepare_result(fun(*args, **kwargs)))\n"
        "RuntimeError: x\n"
    )
    readable = readable_traceback(raw)
    assert '/srv/shop/celery/tasks.py"' in readable.text
    assert "  … 1 framework frame (billiard)" in readable.text.splitlines()
    assert readable.framework_frames == 1
