"""``celery-chatops demo``: a misbehaving Celery fleet and the bot, in one terminal, no set-up.

It starts, in this order, and stops in reverse (Ctrl-C, end of input, ``quit``, SIGTERM):

1. a private ``redis-server`` (:class:`~chatbot.demo.embedded.EmbeddedRedis`) on a free loopback
   port, its directory removed on exit;
2. a Celery worker subprocess running :mod:`chatbot.demo.tasks` (a card charge that is
   sometimes declined, a slow report, a supplier sync that hangs);
3. a producer thread that keeps submitting a mix of those tasks, plus receipts routed to the
   ``emails`` queue that no worker consumes, so it builds a backlog;
4. the bot's :class:`~chatbot.service.Service` (store and event consumer), and the alert
   scheduler when the alerts package provides one, its notices printed here instead of Slack;
5. the console, whose user is an operator allowed to approve their own requests, so
   ``revoke`` asks for the approval right in the terminal.

The worker and the server run in their own sessions, so a Ctrl-C reaches only this process,
which then stops them by pid, the worker first (it must not outlive its broker and spin on
reconnects). ``--script FILE`` reads the console lines from a file instead of the terminal,
echoing them as if typed; a script line ``sleep SECONDS`` pauses, for tests and recordings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, TextIO, cast

from chatbot.alerts.console import start_console_alerts
from chatbot.commands.alerts import register_alert_commands
from chatbot.config import Settings
from chatbot.console import Console
from chatbot.demo import tasks as demo_tasks
from chatbot.demo.embedded import EmbeddedRedis, EmbeddedRedisError
from chatbot.demo.worker import CeleryWorkerProcess, WorkerStartError
from chatbot.model import Task
from chatbot.render import Message
from chatbot.runner import console_runner
from chatbot.service import Service

__all__ = ["DEMO_USER", "DemoFleet", "demo_settings", "run_demo"]

logger = logging.getLogger(__name__)

# The console user of the demo. It must look like a Slack user ID: the authorizer only ever
# matches IDs (a name could be forged), and the demo makes this user the one operator.
DEMO_USER = "U0DEMOCONSOLE"
DEMO_WORKER = "demo@%h"
DEMO_CONCURRENCY = 4
PROMPT = "celery> "

WORKER_READY_TIMEOUT = 60.0
CONSUMER_CONNECT_TIMEOUT = 10.0
# How long the first screen waits for a failure and the hanging task to show up. They
# normally do within a couple of seconds of the worker being ready.
FIRST_EVENTS_TIMEOUT = 30.0
WORKER_STOP_TIMEOUT = 5.0

EXIT_STARTUP_FAILED = 1
_SLEEP_LINE = re.compile(r"^sleep\s+(\d+(?:\.\d+)?)\s*s?$", re.IGNORECASE)


def demo_settings(base: Settings, broker_url: str) -> Settings:
    """The user's settings with everything the demo needs forced on, at demo speed.

    Typed overrides (not environment strings): the demo's operator is :data:`DEMO_USER`, and
    the broker, the state, Slack and the channels are the demo's own whatever the environment
    says, so the demo never touches a real fleet, a real state store or a real workspace.
    """
    return dataclasses.replace(
        base,
        broker_url=broker_url,
        state_url="memory://",
        snapshot_path="",
        slack_bot_token="",
        slack_signing_secret="",
        slack_app_token="",
        alert_channel="",
        audit_channel="",
        queues=(demo_tasks.EMAIL_QUEUE,),
        stuck_after=20.0,
        check_interval=5.0,
        backlog_threshold=15,
        failure_spike_threshold=5,
        failure_window=300.0,
        alert_cooldown=60.0,
        operators=(DEMO_USER,),
        approvers=None,
        # One person at the keyboard: they ask and they approve.
        self_approval=True,
        approval_ttl=300.0,
        control_timeout=1.0,
        enable_events_interval=30.0,
    )


class _Terminal:
    """stdout shared by the console and background notices (alerts): one write at a time."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._at_prompt = False

    def write(self, text: str) -> int:
        with self._lock:
            written = self._stream.write(text)
            self._stream.flush()
            self._at_prompt = text.endswith(PROMPT)
        return written

    def prompt(self) -> None:
        """The prompt again, unless a notice just printed one."""
        with self._lock:
            again = not self._at_prompt
        if again:
            self.write(PROMPT)

    def flush(self) -> None:
        with self._lock:
            self._stream.flush()

    def notice(self, text: str) -> None:
        """A line from a background thread, on its own line, followed by a fresh prompt."""
        self.write(f"\n{text}\n{PROMPT}")


class _ScriptReader:
    """A script file read as if typed: each line is echoed after the prompt.

    ``sleep SECONDS`` lines pause (the hanging task needs time to become stuck) and ``#``
    lines are comments; neither reaches the console.
    """

    def __init__(self, lines: list[str], out: _Terminal, stop: threading.Event) -> None:
        self._lines = iter(lines)
        self._out = out
        self._stop = stop

    def readline(self) -> str:
        for raw in self._lines:
            line = raw.rstrip("\n")
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            pause = _SLEEP_LINE.match(stripped)
            self._out.write(stripped + "\n")
            if pause:
                self._stop.wait(float(pause.group(1)))
                self._out.prompt()
                continue
            return line + "\n"
        return ""


class DemoFleet:
    """Everything the demo starts, stoppable from any state, in reverse order, by pid."""

    def __init__(self, base: Settings, out: _Terminal) -> None:
        self._base = base
        self._out = out
        self.redis = EmbeddedRedis()
        self.worker: CeleryWorkerProcess | None = None
        self.producer: demo_tasks.Producer | None = None
        self.service: Service | None = None
        self.settings: Settings | None = None
        self._alerts_stop: Callable[[], None] | None = None

    def start(self) -> None:
        out = self._out
        self.redis.start()
        self.settings = demo_settings(self._base, self.redis.url)
        out.write(
            f"  broker    redis-server pid {self.redis.pid} on {self.redis.url}"
            " (private, removed on exit)\n"
        )
        worker = CeleryWorkerProcess(
            demo_tasks.__name__,
            self.redis.url,
            hostname=DEMO_WORKER,
            queues=demo_tasks.WORKER_QUEUES,
            concurrency=DEMO_CONCURRENCY,
            heartbeat_interval=2.0,
            loglevel="WARNING",
            broker_env="",
        )
        self.worker = worker
        worker.start()
        out.write(
            f"  worker    {worker.hostname} pid {worker.pid}, {DEMO_CONCURRENCY} processes,"
            f" consuming {', '.join(worker.queues)}\n"
        )
        self.service = Service(self.settings)
        self.service.start()
        self._alerts_stop = _start_alerts(self.service, out)
        started = time.monotonic()
        worker.wait_ready(timeout=WORKER_READY_TIMEOUT)
        out.write(f"  ready     worker answered a ping after {time.monotonic() - started:.1f}s\n")
        # Subscribed before the first task is sent, so the first failure is not missed.
        if self.service.consumer is not None:
            self.service.consumer.wait_connected(CONSUMER_CONNECT_TIMEOUT)
        self.producer = demo_tasks.Producer(self.redis.url)
        self.producer.start()
        out.write(
            "  producer  a task a second: card charges (1 in 4 declined), daily reports,"
            f" one supplier sync that hangs, receipts to queue {demo_tasks.EMAIL_QUEUE!r}"
            " (no worker consumes it)\n"
        )

    def stop(self) -> None:
        # Each step runs whatever happened before: a half-started demo still cleans up.
        if self.producer is not None:
            with _logged("producer"):
                self.producer.stop()
        if self._alerts_stop is not None:
            with _logged("alerts"):
                self._alerts_stop()
        if self.service is not None:
            with _logged("service"):
                self.service.stop()
        if self.worker is not None:
            # Cold shutdown: a warm one would wait for the hanging task to finish.
            with _logged("worker"):
                self.worker.stop(timeout=WORKER_STOP_TIMEOUT, graceful=False)
                self.worker.close()
        with _logged("redis-server"):
            self.redis.stop()

    def wait_for_first_events(self, timeout: float) -> tuple[Task | None, Task | None]:
        """The first failure and the hanging task once both were seen (or None after timeout)."""
        assert self.service is not None and self.producer is not None
        store = self.service.store
        deadline = time.monotonic() + timeout
        failure: Task | None = None
        hanging: Task | None = None
        while time.monotonic() < deadline:
            failures = store.recent_failures(None, 3600.0, self.service.clock())
            failure = failures[0] if failures else None
            hanging_id = self.producer.hanging_task_id
            hanging = store.get_task(hanging_id) if hanging_id else None
            if failure is not None and hanging is not None and hanging.started is not None:
                break
            time.sleep(0.2)
        return failure, hanging


@contextlib.contextmanager
def _logged(part: str) -> Iterator[None]:
    """Shutdown must go on past a part that fails to stop; say which one did."""
    try:
        yield
    except Exception:
        logger.exception("demo: stopping the %s failed", part)


def _start_alerts(service: Service, out: _Terminal) -> Callable[[], None] | None:
    """The real alert scheduler and manager, with a sender that prints here instead of Slack."""
    alerts = start_console_alerts(service, lambda text: out.notice(_indent_notice(text)))
    if "alerts" not in service.registry:
        register_alert_commands(service.registry, alerts.manager)
    return alerts


def _indent_notice(text: str) -> str:
    """An alert set off from the console's answers: tagged, indented, without blank lines."""
    lines = [line for line in text.split("\n") if line.strip()]
    return "\n".join(("[alert] " if index == 0 else "        ") + line
                     for index, line in enumerate(lines))  # fmt: skip


def _first_screen(failure: Task | None, hanging: Task | None, stuck_after: float) -> str:
    lines = ["", "Ready. The fleet is misbehaving already:"]
    if failure is not None:
        lines.append(
            f"  failed   {failure.name} {failure.uuid[:8]}: {failure.exception_type or 'error'}"
        )
    if hanging is not None:
        lines.append(
            f"  hanging  {hanging.name} {hanging.uuid[:8]}: running, stuck after"
            f" {stuck_after:g}s"
        )
    hang_id = hanging.uuid[:8] if hanging is not None else "<id>"
    fail_id = failure.uuid[:8] if failure is not None else "<id>"
    lines += [
        "",
        "Try (as in Slack, with or without the /celery prefix):",
        "  failed                       the declined card charges, with their exception",
        f"  task {fail_id}                one task: args (api_key redacted), timeline, traceback",
        "  stuck --over 5s              the supplier sync that never returns",
        "  queues                       the emails queue growing: nobody consumes it",
        f"  revoke {hang_id} --terminate  end the stuck task, after you approve it here",
        "  status · workers · active · tasks · alerts · help",
        "Leave with quit, Ctrl-D or Ctrl-C: the worker and Redis stop with the demo.",
        "",
    ]
    return "\n".join(lines)


def _ignore_stop_signals() -> Callable[[], None]:
    """While stopping: a second Ctrl-C must not cut the clean-up short and orphan the worker."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous: dict[signal.Signals, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError, OSError):
            previous[sig] = signal.signal(sig, signal.SIG_IGN)

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


def _install_stop_signals() -> Callable[[], None]:
    """SIGTERM and SIGHUP end the demo like Ctrl-C does, so the clean-up always runs."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous: dict[signal.Signals, Any] = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError, OSError):
            previous[sig] = signal.signal(sig, interrupt)

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


def _not_wired(_text: str) -> Message:
    raise RuntimeError("the demo console's commands are wired right after it is built")


def run_demo(
    settings: Settings,
    script: str | None = None,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
) -> int:
    """Start the demo fleet and the console; return the exit code once everything stopped."""
    out = _Terminal(stdout or sys.stdout)
    script_lines: list[str] | None = None
    if script is not None:
        try:
            with open(script, encoding="utf-8") as file:
                script_lines = file.readlines()
        except OSError as exc:
            print(f"celery-chatops demo: cannot read --script {script}: {exc.strerror}",
                  file=sys.stderr)  # fmt: skip
            return EXIT_STARTUP_FAILED
    if settings.log_level == "INFO":
        # The terminal is the demo's screen: routine JSON log lines would bury the prompt.
        # CHATOPS_LOG_LEVEL=DEBUG shows everything.
        logging.getLogger().setLevel(logging.WARNING)
        # The approval card already says "audited"; its JSON lines would only repeat it.
        logging.getLogger("chatbot.audit").setLevel(logging.WARNING)
    out.write("celery-chatops demo: a sample Celery fleet on a private Redis, and the bot.\n")
    stop_event = threading.Event()
    restore_signals = _install_stop_signals()
    fleet = DemoFleet(settings, out)
    try:
        try:
            fleet.start()
        except (EmbeddedRedisError, WorkerStartError) as exc:
            out.write(f"celery-chatops demo: could not start: {exc}\n")
            return EXIT_STARTUP_FAILED
        assert fleet.service is not None and fleet.settings is not None
        out.write("  waiting   for the first failure and the hanging task...\n")
        failure, hanging = fleet.wait_for_first_events(FIRST_EVENTS_TIMEOUT)
        out.write(_first_screen(failure, hanging, fleet.settings.stuck_after) + "\n")
        service = fleet.service
        reader: TextIO | _ScriptReader = (
            _ScriptReader(script_lines, out, stop_event)
            if script_lines is not None
            else (stdin or sys.stdin)
        )
        # The console only calls readline() and write()/flush() on its streams.
        console = Console(
            _not_wired, cast(TextIO, reader), cast(TextIO, out), prompt=PROMPT, banner=None
        )
        # Commands need the console's yes/no prompt (approvals), the console needs them.
        console.run_command = console_runner(service, user_id=DEMO_USER, confirm=console.confirm)
        return console.run()
    except KeyboardInterrupt:
        out.write("\nstopping...\n")
        return 0
    finally:
        allow_signals = _ignore_stop_signals()
        stop_event.set()
        try:
            fleet.stop()
        finally:
            allow_signals()
            restore_signals()
        out.write("demo stopped: worker and redis-server are gone.\n")
