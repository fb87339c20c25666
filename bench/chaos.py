"""Chaos run: the fault scenarios of issue 11 against a ``celery-chatops run`` it starts.

Everything is on loopback and private to the run: two redis-servers (broker, state), a Celery
worker of ``tests.fleet_app``, the Slack stand-in ``MockSlackAPI``, and the bot itself as a
child process (``python -m chatbot run``, two replicas sharing the state Redis). Each
scenario is bounded in time; the whole run takes a few minutes at most. Nothing asserts: it
prints, for each probe class, what was tried, what got through and what was lost.

    python -m bench.chaos                  # every scenario
    python -m bench.chaos --only replay,slow-clients --hang 5

What the columns mean:

* hostile probes (``forged``, ``malformed``, ``replay``, ``slow-clients`` connections):
  *got through* counts requests that had an effect they must not have (a 5xx, a second
  approval card, a slow connection the server never closed); *lost* is not applicable (-);
* legitimate probes (``... commands``, ``... healthz``, ``... events``): *got through* counts
  acks answered within Slack's 3 s (``/healthz`` within 1 s), or tasks the bot shows after the
  fault; *lost* counts requests not answered in time, and tasks neither shown nor counted in
  ``event_loss_detected``; *late* counts answers that came, after the deadline.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatbot.approvals import APPROVE_ACTION_ID
from chatbot.demo.embedded import EmbeddedRedis
from chatbot.demo.worker import CeleryWorkerProcess
from tests.fleet_app import ADD, HANG, make_app
from tests.support import wait_until
from tests.support.bot import (
    Bot,
    Trickle,
    bot_environ,
    free_port,
    knows_task,
)
from tests.support.slack_api import MockSlackAPI
from tests.support.slack_payloads import JSON, block_action_payload

REPO = Path(__file__).resolve().parent.parent
ACK_DEADLINE = 3.0  # Slack shows an error past this
HEALTH_DEADLINE = 1.0
SCENARIOS = (
    "forged",
    "malformed",
    "replay",
    "slow-clients",
    "state-hang",
    "broker-hang",
    "worker-kill",
)


@dataclass
class Tally:
    """One probe class: how many were tried, got through, were lost or late."""

    name: str
    hostile: bool
    tried: int = 0
    got_through: int = 0
    lost: int = 0
    late: int = 0
    notes: list[str] = field(default_factory=list)

    def row(self) -> str:
        lost = "-" if self.hostile else str(self.lost)
        late = "-" if self.hostile else str(self.late)
        note = "; ".join(self.notes)
        return f"{self.name:<32} {self.tried:>6} {self.got_through:>12} {lost:>6} {late:>6}  {note}"


class Chaos:
    """The parts of one run, and the probes."""

    def __init__(self, workdir: Path, hang: float, state_hang: float) -> None:
        self.workdir = workdir
        self.hang_seconds = hang
        self.state_hang_seconds = state_hang
        self.tallies: list[Tally] = []
        self.broker = EmbeddedRedis().start()
        self.state = EmbeddedRedis().start()
        self.slack = MockSlackAPI().start()
        self.broker_url = self.broker.url_for(1)
        self.fleet = make_app(self.broker_url)
        self.worker = self._start_worker("chaos-1")
        self.bots: list[tuple[Bot, subprocess.Popen[bytes]]] = []
        for replica in range(2):
            self.bots.append(self._start_bot(replica))
        self.bot = self.bots[0][0]

    # -- the parts ---------------------------------------------------------------------------
    def _start_worker(self, name: str) -> CeleryWorkerProcess:
        worker = CeleryWorkerProcess(
            "tests.fleet_app",
            self.broker_url,
            hostname=f"{name}@chaos",
            concurrency=2,
            cwd=REPO,
            log_path=self.workdir / f"worker-{name}.log",
        )
        worker.start()
        worker.wait_ready(timeout=60)
        return worker

    def _start_bot(self, replica: int) -> tuple[Bot, subprocess.Popen[bytes]]:
        port = free_port()
        environ = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(REPO),
            **bot_environ(
                self.broker_url,
                self.slack,
                port,
                CHATOPS_STATE_URL=self.state.url_for(1),
                CHATOPS_LOG_LEVEL="WARNING",
            ),
        }
        log = (self.workdir / f"bot-{replica}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "chatbot", "run"],
            env=environ,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        bot = Bot(port, self.slack)
        wait_until(lambda: bot.health(2).status in (200, 503), timeout=60, what="the bot up")
        return bot, process

    def close(self) -> None:
        for _bot, process in self.bots:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)
        self.worker.stop(timeout=5)
        self.slack.stop()
        self.state.stop()
        self.broker.stop()

    # -- helpers -----------------------------------------------------------------------------
    def tally(self, name: str, hostile: bool) -> Tally:
        tally = Tally(name, hostile)
        self.tallies.append(tally)
        return tally

    def ack_probe(self, tally: Tally, text: str, bot: Bot | None = None) -> None:
        """One signed command: answered within ACK_DEADLINE, late, or lost."""
        bot = bot or self.bot
        tally.tried += 1
        started = time.monotonic()
        try:
            answer = bot.command(text, f"probe-{tally.name}-{tally.tried}", timeout=30)
            status = answer.status
        except OSError:
            status = 0
        took = time.monotonic() - started
        if status != 200:
            tally.lost += 1
        elif took > ACK_DEADLINE:
            tally.late += 1
        else:
            tally.got_through += 1

    def health_probe(self, tally: Tally, bot: Bot | None = None) -> None:
        bot = bot or self.bot
        tally.tried += 1
        started = time.monotonic()
        answer = bot.health(timeout=30)
        took = time.monotonic() - started
        if answer.status not in (200, 503):
            tally.lost += 1
        elif took > HEALTH_DEADLINE:
            tally.late += 1
        else:
            tally.got_through += 1

    def events_tally(self, name: str, task_ids: list[str], loss_before: int) -> None:
        """Tasks the bot shows after a fault; the rest are lost unless counted as lost."""
        tally = self.tally(name, hostile=False)
        tally.tried = len(task_ids)

        def shown() -> list[str]:
            return [t for t in task_ids if knows_task(self.bot, t, "events")]

        deadline = time.monotonic() + 60
        seen = shown()
        while len(seen) < len(task_ids) and time.monotonic() < deadline:
            time.sleep(2)
            seen = shown()
        tally.got_through = len(seen)
        loss = self.event_loss() - loss_before
        missing = len(task_ids) - len(seen)
        if missing and loss > 0:
            tally.notes.append(f"{missing} missing, counted in event_loss_detected (+{loss})")
        else:
            tally.lost = missing

    def event_loss(self) -> int:
        for bot, _process in self.bots:
            answer = bot.health(timeout=10)
            if answer.status in (200, 503):
                return int(answer.json().get("event_loss_detected") or 0)
        return 0

    def run_tasks(self, count: int) -> list[str]:
        return [self.fleet.send_task(ADD, args=(i, i)).id for i in range(count)]

    # -- scenarios ---------------------------------------------------------------------------
    def forged(self) -> None:
        tally = self.tally("forged requests", hostile=True)
        body = self.bot.command_body("revoke --all", "forged")
        variants: list[dict[str, str]] = [
            {"X-Slack-Signature": "v0=" + "0" * 64},
            {"X-Slack-Request-Timestamp": "abc"},
            {"X-Slack-Request-Timestamp": str(int(time.time()) - 3600)},
            {"X-Slack-Signature": ""},
        ]
        for headers in variants * 25:
            tally.tried += 1
            answer = self.bot.post(body, headers=headers, timeout=10)
            if answer.status not in (401, 403):
                tally.got_through += 1

    def malformed(self) -> None:
        tally = self.tally("malformed signed payloads", hostile=True)
        click = block_action_payload(
            APPROVE_ACTION_ID, "x", user_id="U1", channel_id="C1", message_ts="1.1",
            response_url=self.slack.response_url("malformed"),
        )  # fmt: skip

        def payload(value: Any) -> bytes:
            return urllib.parse.urlencode({"payload": json.dumps(value)}).encode()

        corpus: list[tuple[bytes, str]] = [
            (b"payload={not json", "application/x-www-form-urlencoded"),
            (payload({**click, "actions": []}), "application/x-www-form-urlencoded"),
            (payload({**click, "user": "U1"}), "application/x-www-form-urlencoded"),
            (payload([1, 2, 3]), "application/x-www-form-urlencoded"),
            (
                payload({"type": "view_submission", "user": {"id": "U1"}}),
                "application/x-www-form-urlencoded",
            ),
            (b'{"type":"event_callback","event":"x"}', JSON),
            (b"[1,2,3]", JSON),
        ]
        for body, content_type in corpus * 10:
            tally.tried += 1
            answer = self.bot.post(body, content_type=content_type, timeout=10)
            if answer.status != 400:
                tally.got_through += 1
        big = self.tally("10 MB bodies", hostile=True)
        for _ in range(3):
            big.tried += 1
            try:
                answer = self.bot.post(b"a=" + b"a" * (10 * 1024 * 1024), timeout=30)
                status = answer.status
            except OSError:
                status = 0
            if status != 413:
                big.got_through += 1

    def replay(self) -> None:
        tally = self.tally("replayed revoke", hostile=True)
        task_id = self.fleet.send_task(HANG, args=(120,)).id
        wait_until(lambda: knows_task(self.bot, task_id, "replay-known"), timeout=60)
        self.slack.clear()
        timestamp = int(time.time())
        body = self.bot.command_body(f"revoke {task_id}", "replay")
        self.bot.post(body, timestamp=timestamp)
        self.slack.wait_for("chat.postMessage", count=1, timeout=30)
        for bot, _process in self.bots * 5:  # to either replica: the window is shared
            tally.tried += 1
            bot.post(body, timestamp=timestamp)
        time.sleep(2)
        tally.got_through = len(self.slack.calls("chat.postMessage")) - 1

    def slow_clients(self) -> None:
        hostile = self.tally("slow-client connections", hostile=True)
        commands = self.tally("commands under slow clients", hostile=False)
        health = self.tally("healthz under slow clients", hostile=False)
        trickle = Trickle(self.bot.port, 200)
        try:
            hostile.tried = len(trickle.sockets)
            for _ in range(10):
                self.ack_probe(commands, "help")
                self.health_probe(health)
                time.sleep(0.5)
            with suppress(AssertionError):
                wait_until(lambda: len(trickle.closed_by_server) == hostile.tried, timeout=40)
            hostile.got_through = hostile.tried - len(trickle.closed_by_server)
            hostile.notes.append("got through = never closed by the server")
        finally:
            trickle.close()

    @contextmanager
    def stopped(self, server: EmbeddedRedis) -> Iterator[None]:
        pid = server.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(pid, signal.SIGCONT)

    def _during(self, label: str, seconds: float, probes: Callable[[Tally, Tally], None]) -> None:
        commands = self.tally(f"{label} commands", hostile=False)
        health = self.tally(f"{label} healthz", hostile=False)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            probes(commands, health)
            time.sleep(0.5)

    def state_hang(self) -> None:
        known = self.run_tasks(1)[0]
        wait_until(lambda: knows_task(self.bot, known, "state-known"), timeout=60)
        loss_before = self.event_loss()
        with self.stopped(self.state):
            sent = self.run_tasks(10)

            def probes(commands: Tally, health: Tally) -> None:
                self.ack_probe(commands, f"task {known}")
                self.health_probe(health)

            self._during("state Redis hung:", self.state_hang_seconds, probes)
        self.events_tally("state Redis hung: events", sent, loss_before)

    def broker_hang(self) -> None:
        loss_before = self.event_loss()
        with self.stopped(self.broker):

            def probes(commands: Tally, health: Tally) -> None:
                self.ack_probe(commands, "tasks")
                self.health_probe(health)

            self._during("broker Redis hung:", self.hang_seconds, probes)
        sent = self.run_tasks(10)
        self.events_tally("broker Redis hung: events after", sent, loss_before)

    def worker_kill(self) -> None:
        loss_before = self.event_loss()
        running = self.fleet.send_task(HANG, args=(60,)).id
        wait_until(lambda: knows_task(self.bot, running, "kill-known"), timeout=60)
        self.worker.kill()
        commands = self.tally("worker killed: commands", hostile=False)
        for _ in range(5):
            self.ack_probe(commands, "workers")
        self.worker = self._start_worker("chaos-2")
        sent = self.run_tasks(10)
        self.events_tally("worker killed: events after", sent, loss_before)

    def report(self) -> str:
        header = f"{'probe class':<32} {'tried':>6} {'got through':>12} {'lost':>6} {'late':>6}"
        return "\n".join([header, "-" * len(header), *(t.row() for t in self.tallies)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma-separated: " + ",".join(SCENARIOS))
    parser.add_argument("--hang", type=float, default=8.0, help="seconds the broker hangs")
    parser.add_argument(
        "--state-hang",
        type=float,
        default=14.0,
        help="seconds the state Redis hangs: past the 10 s ingest lease, so the lease may move",
    )
    args = parser.parse_args(argv)
    chosen = [s for s in args.only.split(",") if s] or list(SCENARIOS)
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    with tempfile.TemporaryDirectory(prefix="chaos-") as workdir:
        chaos = Chaos(Path(workdir), args.hang, args.state_hang)
        try:
            for name in chosen:
                started = time.monotonic()
                getattr(chaos, name.replace("-", "_"))()
                print(f"# {name}: {time.monotonic() - started:.1f} s", file=sys.stderr)
        finally:
            chaos.close()
            print(chaos.report())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
