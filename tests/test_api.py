"""The REST API on the real ``celery-chatops run``: Flower's read endpoints, credentials, the
OpenAPI description, and schemathesis fuzzing every endpoint on the live listener.

Everything is real except Slack (``MockSlackAPI``): the runner builds the service, the listener
and the API itself; a real worker runs the tasks on the test's private Redis.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from chatbot.api import ApiServices, build_api, describe
from chatbot.api.serializers import TASK_FIELDS
from chatbot.config import load_settings
from chatbot.demo.worker import CeleryWorkerProcess
from chatbot.runner import run
from chatbot.store.memory import MemoryStore
from tests.conftest import REPO_ROOT, unique_hostname
from tests.fleet_app import FAIL, HANG, make_app
from tests.support import wait_until
from tests.support.slack_api import MockSlackAPI

OPERATOR = "U0OPERATOR1"
APPROVER = "U0APPROVER1"
READER = "U0READER01"
TOKENS = {
    OPERATOR: "operator-token-0123456789",
    APPROVER: "approver-token-0123456789",
    READER: "reader-token-0123456789abc",
}
ALERT_CHANNEL = "C0ALERTS01"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveBot:
    """A running ``celery-chatops run`` and a client for its REST API."""

    url: str
    slack: MockSlackAPI
    session: requests.Session

    def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = TOKENS[READER],
        **kwargs: Any,
    ) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.session.request(method, self.url + path, headers=headers, timeout=30, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.call("GET", path, **kwargs)


def api_tokens() -> str:
    return ",".join(f"{who}={token}" for who, token in TOKENS.items())


@contextmanager
def live_bot(broker_url: str, slack: MockSlackAPI, **env: str) -> Iterator[LiveBot]:
    """``run()`` in a thread with the API on, operators OPERATOR and APPROVER; ``env`` adds or
    overrides settings. Stopped (and checked to exit 0) on leaving."""
    port = free_port()
    slack.set_channel(ALERT_CHANNEL, is_member=True)
    settings = load_settings(
        environ={
            "CELERY_BROKER_URL": broker_url,
            "SLACK_BOT_TOKEN": "xoxb-api-test",
            "SLACK_SIGNING_SECRET": "api-test-signing-secret",
            "SLACK_API_URL": slack.url,
            "CHATOPS_HOST": "127.0.0.1",
            "CHATOPS_PORT": str(port),
            "CHATOPS_OPERATORS": f"{OPERATOR},{APPROVER}",
            "CHATOPS_ALERT_CHANNEL": ALERT_CHANNEL,
            "CHATOPS_API_TOKENS": api_tokens(),
            "CHATOPS_ENABLE_EVENTS_INTERVAL": "0",
            **env,
        }
    )
    stop = threading.Event()
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(run(settings, stop=stop)))
    runner.start()
    session = requests.Session()
    session.trust_env = False  # never through a proxy from the environment
    bot = LiveBot(f"http://127.0.0.1:{port}", slack, session)
    try:
        wait_until(lambda: _healthy(bot), timeout=30, what="the bot's /healthz 200")
        yield bot
    finally:
        stop.set()
        runner.join(30)
        session.close()
    assert result == [0]


def _healthy(bot: LiveBot) -> bool:
    try:
        return bot.get("/healthz", token=None).status_code == 200
    except requests.ConnectionError:
        return False


@dataclass
class Fleet:
    bot: LiveBot
    worker: CeleryWorkerProcess
    send: Callable[..., str]


@pytest.fixture(scope="module")
def fleet(redis_url_factory: Callable[[], str], tmp_path_factory: Any) -> Iterator[Fleet]:
    """One bot (every control action needs approval: the fuzzer's calls only post cards) and
    one worker, shared by this module's read tests and the schemathesis run."""
    broker = redis_url_factory()
    logs = tmp_path_factory.mktemp("api-worker")
    name = unique_hostname("api")
    worker = CeleryWorkerProcess(
        "tests.fleet_app",
        broker,
        hostname=name,
        concurrency=2,
        cwd=REPO_ROOT,
        log_path=logs / "worker.log",
    )
    worker.start()
    app = make_app(broker)
    try:
        worker.wait_ready(timeout=30)
        with (
            MockSlackAPI() as slack,
            live_bot(
                broker, slack, CHATOPS_APPROVAL_REQUIRED="all", CHATOPS_CONTROL_TIMEOUT="0.5"
            ) as bot,
        ):

            def send(task: str, *args: Any, **kwargs: Any) -> str:
                return str(app.send_task(task, args=args, kwargs=kwargs).id)

            yield Fleet(bot, worker, send)
    finally:
        worker.stop(timeout=5.0)


def _listed(bot: LiveBot, query: str, task_id: str) -> dict[str, Any] | None:
    answer = bot.get("/api/tasks" + query)
    assert answer.status_code == 200, answer.text
    tasks: dict[str, Any] = answer.json()
    return tasks.get(task_id)


# -- Flower's read endpoints ----------------------------------------------------------------
def test_running_task_is_listed_by_state_started_in_flowers_shape(fleet: Fleet) -> None:
    bot = fleet.bot
    task_id = fleet.send(HANG, 120)
    task = wait_until(
        lambda: _listed(bot, "?state=STARTED", task_id), timeout=30, what="listed as STARTED"
    )
    assert task is not None
    assert list(task) == list(TASK_FIELDS)
    assert task["uuid"] == task_id and task["name"] == HANG and task["state"] == "STARTED"
    assert task["worker"] == fleet.worker.hostname
    assert task["started"] is not None and task["succeeded"] is None
    # Flower's state filter is case-insensitive; "All" means any state.
    assert _listed(bot, "?state=started", task_id) is not None
    assert _listed(bot, f"?state=All&workername={fleet.worker.hostname}", task_id) is not None
    assert _listed(bot, "?state=SUCCESS", task_id) is None

    info = bot.get(f"/api/task/info/{task_id}")
    assert info.status_code == 200 and info.json()["uuid"] == task_id
    unknown = bot.get("/api/task/info/no-such-task")
    assert unknown.status_code == 404 and "Unknown task 'no-such-task'" in unknown.text
    result = bot.get(f"/api/task/result/{task_id}").json()
    assert result == {"task-id": task_id, "state": "STARTED"}


def test_failures_searchable_grouped_and_with_result(fleet: Fleet) -> None:
    bot = fleet.bot
    failed_id = fleet.send(FAIL, message="card-7731-declined")
    wait_until(
        lambda: _listed(bot, f"?state=FAILURE&taskname={FAIL}", failed_id),
        timeout=30,
        what="the failure listed",
    )
    # Flower's search syntax: an exact kwargs pair, a qualified substring, a plain word, OR.
    for query in (
        "kwargs:message=card-7731-declined",
        "kwargs:7731",
        "card-7731",
        "state:failure name:fail",
        "(nothing-like-it OR card-7731)",
    ):
        assert _listed(bot, "?" + _qs(search=query), failed_id) is not None, query
    assert _listed(bot, "?" + _qs(search="kwargs:message=card-0000-declined"), failed_id) is None
    bad = bot.get("/api/tasks", params={"search": "NOT card"})
    assert bad.status_code == 400 and "NOT is not supported" in bad.json()["error"]

    grouped = bot.get("/api/tasks/failed", params={"taskname": FAIL}).json()
    assert grouped["total"] >= 1 and failed_id in grouped["tasks"]
    mine = [g for g in grouped["groups"] if g["message_shape"] == "card-#-declined"]
    assert len(mine) == 1 and mine[0]["exception_type"] == "ValueError"
    assert mine[0]["name"] == FAIL and mine[0]["count"] >= 1
    result = bot.get(f"/api/task/result/{failed_id}").json()
    assert result["state"] == "FAILURE" and "ValueError" in result["result"]
    assert "Traceback" in (result["traceback"] or "")
    types = bot.get("/api/task/types").json()
    assert FAIL in types["task-types"]


def test_sorting_paging_and_bad_queries(fleet: Fleet) -> None:
    bot = fleet.bot
    ids = [fleet.send(FAIL, message=f"page-{n}") for n in range(3)]
    wait_until(
        lambda: all(_listed(bot, f"?taskname={FAIL}&state=FAILURE&limit=1000", i) for i in ids),
        timeout=30,
        what="three failures listed",  # finished: their order no longer changes
    )
    newest_first = list(bot.get("/api/tasks", params={"taskname": FAIL, "limit": 1000}).json())
    by_received = list(
        bot.get("/api/tasks", params={"taskname": FAIL, "sort_by": "received"}).json()
    )
    assert set(ids) <= set(newest_first) and set(ids) <= set(by_received)
    page = list(bot.get("/api/tasks", params={"taskname": FAIL, "limit": 1, "offset": 1}).json())
    assert page == newest_first[1:2]
    for params, text in (
        ({"sort_by": "bogus"}, "Invalid sort_by 'bogus'"),
        ({"limit": "many"}, "Invalid argument 'many' of type 'int'"),
        ({"received_start": "yesterday"}, "expected format 'YYYY-MM-DD HH:MM'"),
    ):
        answer = bot.get("/api/tasks", params=params)
        assert answer.status_code == 400 and text in answer.text, (params, answer.text)


def test_workers_queues_and_health(fleet: Fleet) -> None:
    bot, hostname = fleet.bot, fleet.worker.hostname
    workers = bot.get("/api/workers", params={"refresh": "true"}).json()
    assert set(workers[hostname]) >= {"stats", "active_queues", "registered", "timestamp"}
    assert HANG in workers[hostname]["registered"]
    assert "password" not in json.dumps(workers)
    one = bot.get("/api/workers", params={"workername": hostname, "refresh": "1"}).json()
    assert list(one) == [hostname] and "active" in one[hostname]
    assert bot.get("/api/workers", params={"status": "yes"}).json() == {hostname: True}
    missing = bot.get("/api/workers", params={"workername": "celery@nowhere"})
    assert missing.status_code == 404 and "Unknown worker 'celery@nowhere'" in missing.text
    queues = bot.get("/api/queues/length").json()["active_queues"]
    assert any(q["name"] == "celery" and isinstance(q["messages"], int) for q in queues)
    health = bot.get("/healthcheck", token=None)
    assert health.status_code == 200 and health.text.strip() == "OK"


# -- credentials ------------------------------------------------------------------------------
def test_credentials_bearer_basic_and_refusals(fleet: Fleet) -> None:
    bot = fleet.bot
    assert bot.get("/api/task/types").status_code == 200
    basic = base64.b64encode(f"flower:{TOKENS[READER]}".encode()).decode()
    assert (
        bot.get(
            "/api/task/types", token=None, headers={"Authorization": f"Basic {basic}"}
        ).status_code
        == 200
    )
    for headers in (
        {},
        {"Authorization": "Bearer wrong-token-0123456789"},
        {"Authorization": f"Bearer {TOKENS[READER]}x"},
        {"Authorization": "Basic " + base64.b64encode(f"{TOKENS[READER]}:".encode()).decode()},
        {"Authorization": "Basic not-base64!"},
        {"Authorization": TOKENS[READER]},
    ):
        refused = bot.get("/api/task/types", token=None, headers=headers)
        assert refused.status_code == 401, headers
        assert "Bearer" in refused.headers["WWW-Authenticate"]
        assert TOKENS[READER] not in refused.text


def test_openapi_served_is_the_declarations(fleet: Fleet) -> None:
    served = fleet.bot.get("/api/openapi.json").json()
    assert served == json.loads(json.dumps(describe()))
    assert served["openapi"].startswith("3.1")
    assert "/api/tasks" in served["paths"] and "/api/task/info/{uuid}" in served["paths"]


def test_api_off_answers_403_and_tokens_are_masked() -> None:
    settings = load_settings(environ={})
    app = build_api(ApiServices(MemoryStore(), settings), settings.api_tokens)
    core = app.core
    off = core.handle("GET", "/api/tasks", {}, f"Bearer {TOKENS[READER]}")
    assert off.status == 403 and "CHATOPS_API_TOKENS" in str(off.body)
    assert core.handle("GET", "/healthcheck", {}, None).status == 200
    configured = load_settings(environ={"CHATOPS_API_TOKENS": api_tokens()})
    assert configured.api_tokens[0] == (OPERATOR, TOKENS[OPERATOR])
    assert all(token not in repr(configured) for token in TOKENS.values())
    assert configured.describe()["CHATOPS_API_TOKENS"] == "(set)"


def _qs(**params: str) -> str:
    return "&".join(f"{k}={requests.utils.quote(v)}" for k, v in params.items())


# -- schemathesis against the live listener ---------------------------------------------------
schema = schemathesis.openapi.from_dict(describe())
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def _bounded(query: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not query:
        return None if query is None else {}
    bounded = dict(query)
    if "timeout" in bounded:
        bounded["timeout"] = 0.05  # a result wait would only make the run slow
    return bounded


@schema.parametrize()
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_schemathesis_finds_no_server_error_and_no_schema_break(case: Any, fleet: Fleet) -> None:
    case.query = _bounded(case.query)
    case.call_and_validate(
        base_url=fleet.bot.url,
        session=fleet.bot.session,
        headers={"Authorization": f"Bearer {TOKENS[OPERATOR]}"},
        checks=CHECKS,
    )


def test_api_is_served_in_socket_mode_beside_healthz(
    redis_url: str, celery_worker: Callable[..., CeleryWorkerProcess]
) -> None:
    from tests.support.socket_mode import MockSocketModeServer

    worker = celery_worker(redis_url, concurrency=1)
    with (
        MockSocketModeServer() as socket_mode,
        MockSlackAPI(socket_mode=socket_mode) as slack,
        live_bot(redis_url, slack, SLACK_APP_TOKEN="xapp-1-A0API-1-secret") as bot,
    ):
        assert bot.get("/slack/events", token=None).status_code == 404  # no HTTP events here
        assert bot.get("/api/task/types", token=None).status_code == 401
        wait_until(
            lambda: bot.get("/api/workers", params={"status": "1"}).json().get(worker.hostname),
            timeout=30,
            what="the worker online through the API",
        )
