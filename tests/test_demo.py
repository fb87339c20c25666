"""``celery-chatops demo`` as a user runs it: a real subprocess, nothing configured, and nothing
of what it started left running afterwards.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

# Generous: the demo starts a redis-server and a Celery worker, and the script waits on purpose.
DEMO_TIMEOUT = 150.0
FIRST_SCREEN = "Leave with quit, Ctrl-D or Ctrl-C"
_PIDS = re.compile(r"^\s+(broker|worker)\s.*?\bpid (\d+)\b", re.MULTILINE)


def demo_env() -> dict[str, str]:
    """The environment of a fresh install: none of the bot's or Celery's settings."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CHATOPS_", "SLACK_", "CELERY_", "FLEET_"))
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def started_pids(output: str) -> dict[str, int]:
    found = {name: int(pid) for name, pid in _PIDS.findall(output)}
    assert set(found) == {"broker", "worker"}, output
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie no longer runs anything; it only waits for its parent to collect it.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def in_session(session_id: int) -> list[int]:
    """Live processes of the session the worker leads: its prefork pool children too."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
        except OSError:
            continue
        # Fields after the name: state ppid pgrp session ...
        if int(fields[3]) == session_id and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def assert_nothing_left(pids: dict[str, int]) -> None:
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        left = [pid for pid in pids.values() if alive(pid)] + in_session(pids["worker"])
        if not left:
            return
        time.sleep(0.1)
    pytest.fail(f"processes the demo started are still running: {left}")


@pytest.fixture
def kill_leftovers() -> Iterator[list[int]]:
    """Pids a failed test must not leave behind (the demo's own clean-up is what is tested).

    Each one leads its own session and process group (the demo, its worker, its server).
    """
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def test_scripted_demo_shows_failures_a_stuck_task_and_an_approved_revoke(
    tmp_path: Path, kill_leftovers: list[int]
) -> None:
    script = tmp_path / "tour.txt"
    script.write_text(
        "# what a newcomer tries first\n"
        "failed\n"
        "sleep 6\n"
        "stuck --over 5s\n"
        "revoke --name inventory.sync_supplier_feed --terminate\n"
        "y\n"
        "stuck --over 5s\n"
        "quit\n",
        encoding="utf-8",
    )
    result = subprocess.run(
        [sys.executable, "-m", "chatbot", "demo", "--script", str(script)],
        cwd=tmp_path,
        env=demo_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT,
    )
    out = result.stdout
    pids = started_pids(out)
    kill_leftovers.extend(pids.values())
    assert result.returncode == 0, f"{out}\n--- stderr ---\n{result.stderr}"

    # The first screen already names a failure and the hanging task, and says what to try.
    first_screen = out.split("celery> ", 1)[0]
    assert "failed   shop.charge_card" in first_screen and "CardDeclined" in first_screen
    assert "hanging  inventory.sync_supplier_feed" in first_screen
    assert FIRST_SCREEN in first_screen
    # The first screen waited for those two events, not for its timeout to run out: the hints
    # carry their ids (a timed-out wait leaves "<id>" placeholders).
    assert "<id>" not in first_screen
    hanging_id = re.search(r"hanging  inventory\.sync_supplier_feed (\w{8}):", first_screen)
    assert hanging_id is not None and f"revoke {hanging_id[1]} --terminate" in first_screen

    sections = out.split("celery> ")
    failed = next(s for s in sections if s.startswith("failed\n"))
    assert "shop.charge_card" in failed and "CardDeclined" in failed
    assert "declined by issuer" in failed

    stuck_before, stuck_after = (s for s in sections if s.startswith("stuck --over 5s\n"))
    assert "inventory.sync_supplier_feed" in stuck_before and "1 stuck" in stuck_before

    revoke = next(s for s in sections if s.startswith("revoke --name"))
    assert "Approve: revoke 1 task" in revoke and "[y/N] y" in revoke
    assert "Approved" in revoke and "confirmed" in revoke
    assert "inventory.sync_supplier_feed" not in stuck_after

    assert "demo stopped" in out
    assert "Traceback" not in out + result.stderr
    assert_nothing_left(pids)


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "term"])
def test_interactive_demo_stops_everything_on_a_signal(
    tmp_path: Path, kill_leftovers: list[int], stop_signal: signal.Signals
) -> None:
    if stop_signal == signal.SIGINT and signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        pytest.skip("SIGINT is ignored in this process, so the demo would inherit that")
    process = subprocess.Popen(
        [sys.executable, "-m", "chatbot", "demo"],
        cwd=tmp_path,
        env=demo_env(),
        stdin=subprocess.PIPE,  # kept open: the console waits at its prompt
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    kill_leftovers.append(process.pid)
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    output: list[str] = []
    deadline = time.monotonic() + DEMO_TIMEOUT
    try:
        while not any(FIRST_SCREEN in line for line in output):
            assert time.monotonic() < deadline, "".join(output)
            assert process.poll() is None, "".join(output)
            try:
                output.append(lines.get(timeout=1.0))
            except queue.Empty:
                continue
        pids = started_pids("".join(output))
        kill_leftovers.extend(pids.values())
        assert all(alive(pid) for pid in pids.values())
        process.send_signal(stop_signal)
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stdin is not None
        process.stdin.close()
    reader.join(timeout=5)
    while not lines.empty():
        output.append(lines.get())
    text = "".join(output)
    assert code == 0, text
    assert "demo stopped" in text
    assert_nothing_left(pids)
