"""``celery-chatops run`` for fault tests and ``bench/chaos.py``: the real runner, on loopback.

:func:`running_bot` starts :func:`chatbot.runner.run` (the same wiring as the command line)
in a thread with the given environment, waits until ``/healthz`` answers, and stops it on
exit. :class:`Bot` sends Slack's signed requests to it and reads ``/healthz``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from chatbot.config import load_settings
from chatbot.demo.embedded import EmbeddedRedis
from chatbot.runner import run
from tests.support import wait_until
from tests.support.slack_api import MockSlackAPI
from tests.support.slack_payloads import (
    FORM,
    SignedResponse,
    block_action,
    post_signed,
    slash_command,
)

SECRET = "faults-test-signing-secret"
BOT_TOKEN = "xoxb-faults-test"
OPERATOR = "U0OPERATOR1"
APPROVER = "U0APPROVER1"
CHANNEL = "C0INCIDENT1"
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class HttpAnswer:
    status: int  # 0: no answer (connection refused, reset or timed out)
    body: bytes = b""
    error: str = ""

    def json(self) -> Any:
        return json.loads(self.body)


def http_get(url: str, timeout: float = 10.0) -> HttpAnswer:
    try:
        with _opener.open(url, timeout=timeout) as response:
            return HttpAnswer(int(response.status), response.read())
    except urllib.error.HTTPError as exc:
        return HttpAnswer(int(exc.code), exc.read())
    except OSError as exc:
        return HttpAnswer(0, error=f"{type(exc).__name__}: {exc}")


@dataclass
class Bot:
    port: int
    slack: MockSlackAPI

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def events_url(self) -> str:
        return self.url + "/slack/events"

    def health(self, timeout: float = 10.0) -> HttpAnswer:
        return http_get(self.url + "/healthz", timeout=timeout)

    def post(
        self,
        body: bytes,
        *,
        timestamp: int | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        content_type: str = FORM,
    ) -> SignedResponse:
        return post_signed(
            self.events_url,
            body,
            signing_secret=SECRET,
            content_type=content_type,
            timestamp=timestamp,
            headers=headers,
            timeout=timeout,
        )

    def command_body(self, text: str, name: str, user_id: str = OPERATOR) -> bytes:
        """A signed-ready ``/celery text`` whose answers go to response_url ``name``."""
        return slash_command(
            text, user_id=user_id, channel_id=CHANNEL, response_url=self.slack.response_url(name)
        )

    def command(self, text: str, name: str, user_id: str = OPERATOR, **kw: Any) -> SignedResponse:
        return self.post(self.command_body(text, name, user_id), **kw)

    def click_body(
        self, action_id: str, value: str, name: str, *, user_id: str, message_ts: str = ""
    ) -> bytes:
        return block_action(
            action_id,
            value,
            user_id=user_id,
            channel_id=CHANNEL,
            message_ts=message_ts or "1700000000.000100",
            response_url=self.slack.response_url(name),
        )


def bot_environ(broker_url: str, slack: MockSlackAPI, port: int, **extra: str) -> dict[str, str]:
    environ = {
        "CELERY_BROKER_URL": broker_url,
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SECRET,
        "SLACK_API_URL": slack.url,
        "CHATOPS_HOST": "127.0.0.1",
        "CHATOPS_PORT": str(port),
        "CHATOPS_OPERATORS": f"{OPERATOR},{APPROVER}",
        "CHATOPS_ENABLE_EVENTS_INTERVAL": "0",
    }
    environ.update(extra)
    return environ


@contextmanager
def running_bot(
    broker_url: str, slack: MockSlackAPI, *, wait_healthy: bool = True, **extra: str
) -> Iterator[Bot]:
    """The real ``run()`` on a free loopback port; ``extra`` are more environment settings."""
    port = free_port()
    settings = load_settings(environ=bot_environ(broker_url, slack, port, **extra))
    stop = threading.Event()
    result: list[int] = []
    runner = threading.Thread(
        target=lambda: result.append(run(settings, stop=stop)), name="bot-under-test", daemon=True
    )
    runner.start()
    bot = Bot(port, slack)
    try:
        wanted = (200,) if wait_healthy else (200, 503)
        wait_until(lambda: bot.health(5).status in wanted, timeout=60, what="/healthz answering")
        yield bot
    finally:
        stop.set()
        runner.join(60)
    assert not runner.is_alive(), "run() did not return after stop"
    assert result == [0], result


class Trickle:
    """``count`` connections each sending one more byte of a request line every second."""

    REQUEST = b"POST /slack/events HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 4096

    def __init__(self, port: int, count: int) -> None:
        self.sockets: list[socket.socket] = []
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.setblocking(False)
            self.sockets.append(sock)
        self.closed_by_server: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        offset = 0
        while not self._stop.is_set() and offset < len(self.REQUEST):
            byte = self.REQUEST[offset : offset + 1]
            for index, sock in enumerate(self.sockets):
                if index in self.closed_by_server:
                    continue
                try:
                    sock.send(byte)
                    if sock.recv(1024) == b"":
                        self.closed_by_server.add(index)
                except BlockingIOError:
                    continue
                except OSError:
                    self.closed_by_server.add(index)
            offset += 1
            self._stop.wait(1.0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for sock in self.sockets:
            sock.close()


def answer_text(answer: SignedResponse) -> str:
    return answer.body.decode("utf-8", errors="replace")


def knows_task(bot: Bot, task_id: str, name: str, timeout: float = 30.0) -> bool:
    """``/celery task ID`` shows the task (an unknown id is echoed in a usage error)."""
    answer = bot.command(f"task {task_id}", name, timeout=timeout)
    text = answer_text(answer).lower()
    return (
        answer.status == 200
        and task_id in text
        and "unknown task" not in text
        and "unavailable" not in text
    )


@contextmanager
def stopped(server: EmbeddedRedis) -> Iterator[None]:
    """``server`` hung (SIGSTOP) inside the block, resumed (SIGCONT) on the way out."""
    pid = server.pid
    assert pid is not None, "the server is not running"
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)
