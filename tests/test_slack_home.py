"""The App Home tab: published on app_home_opened, rebuilt on each open, within Home limits.

The live part opens the tab through a signed HTTP event against a real worker; the size
part fills a store with a pathological fleet and checks the view still fits (100 blocks,
every text within Block Kit's limits) as the Web API double validates it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

from chatbot.approvals import ApprovalService
from chatbot.approvals.clusters import ClusterApprovals
from chatbot.auth import Authorizer
from chatbot.commands import CommandContext
from chatbot.config import Settings
from chatbot.render import Renderer
from chatbot.service import Service
from chatbot.slack import (
    HttpServer,
    SlackMetrics,
    build_app,
    home_view,
    make_web_client,
    publish_home,
)
from chatbot.slack.interfaces import CommandRunner
from tests.support import wait_until
from tests.support.slack_api import Call, MockSlackAPI, validate_blocks
from tests.support.slack_payloads import JSON, app_home_opened, post_signed
from tests.test_commands import task_events, traceback_for
from tests.test_e2e_readonly import HOSTILE, Fleet, running_fleet

SECRET = "home-test-signing-secret"
BOT_TOKEN = "xoxb-home-test"
HOME_MAX_BLOCKS = 100


@dataclass
class Stack:
    fleet: Fleet
    api: MockSlackAPI
    server: HttpServer
    metrics: SlackMetrics

    def open_home(self, user_id: str, tab: str = "home") -> None:
        resp = post_signed(
            self.server.url + "/slack/events",
            app_home_opened(user_id, tab=tab),
            signing_secret=SECRET,
            content_type=JSON,
        )
        assert resp.status == 200

    def publishes(self, user_id: str, count: int = 1) -> list[Call]:
        """The views.publish calls for ``user_id``, once there are at least ``count``."""

        def mine() -> list[Call]:
            calls = [c for c in self.api.calls("views.publish") if c.params["user_id"] == user_id]
            return calls if len(calls) >= count else []

        found: list[Call] = wait_until(mine, timeout=60, what=f"{count} publish(es) for {user_id}")
        return found

    def published(self, user_id: str, count: int = 1) -> Call:
        """The ``count``-th views.publish for ``user_id``, which the double accepted."""
        call = self.publishes(user_id, count)[count - 1]
        assert call.status == 200 and call.response["ok"], call.response
        return call


@pytest.fixture(scope="module")
def stack(
    redis_url_factory: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with (
        # No hanging task: the single pool process must stay free for more failures.
        running_fleet(
            redis_url_factory(), tmp_path_factory.mktemp("slack-home"), start_hanging=False
        ) as fleet,
        MockSlackAPI() as api,
        ThreadPoolExecutor(4) as executor,
    ):
        metrics = SlackMetrics()
        app = build_app(
            fleet.service,
            client=make_web_client(BOT_TOKEN, api.url),
            signing_secret=SECRET,
            executor=executor,
            metrics=metrics,
        )
        with HttpServer(app, fleet.service, "127.0.0.1", 0, metrics=metrics) as server:
            yield Stack(fleet, api, server, metrics)


def shown(blocks: list[dict[str, Any]]) -> str:
    return json.dumps(blocks, ensure_ascii=False)


def test_opening_the_home_tab_publishes_the_status_view(stack: Stack) -> None:
    stack.open_home("U0HOME0001")
    view = stack.published("U0HOME0001").params["view"]
    assert view["type"] == "home"
    blocks = view["blocks"]
    assert len(blocks) <= HOME_MAX_BLOCKS
    assert validate_blocks(blocks, max_blocks=HOME_MAX_BLOCKS) == []
    text = shown(blocks)
    assert "Celery status" in text  # workers up/down, backlog, failures, freshness
    assert "1 up" in text
    assert "Backlog" in text
    assert "events last seen" in text
    assert stack.fleet.failed_id in text  # the recent failures list
    assert "<!channel>" not in text
    assert "&lt;!channel&gt;" in text


def test_the_view_is_rebuilt_each_time_it_is_opened(stack: Stack) -> None:
    stack.open_home("U0HOME0002")
    first = shown(stack.published("U0HOME0002").params["view"]["blocks"])
    newer = stack.fleet.run_failing("a newer failure")
    assert newer not in first
    stack.open_home("U0HOME0002")
    second = shown(stack.published("U0HOME0002", count=2).params["view"]["blocks"])
    assert newer in second


def test_the_messages_tab_publishes_nothing(stack: Stack) -> None:
    stack.open_home("U0HOME0003", tab="messages")
    stack.open_home("U0HOME0004")
    stack.published("U0HOME0004")  # handled after the messages-tab event was
    assert not [c for c in stack.api.calls("views.publish") if c.params["user_id"] == "U0HOME0003"]


def test_a_rate_limited_publish_is_retried(stack: Stack) -> None:
    stack.api.rate_limit_next("views.publish", retry_after=1)
    stack.open_home("U0HOME0005")
    first, second = stack.publishes("U0HOME0005", count=2)[:2]
    assert (first.status, second.status) == (429, 200)
    assert second.params == first.params


# -- any fleet fits ---------------------------------------------------------------------------
@pytest.fixture
def huge_service(redis_url: str) -> Service:
    """A service whose store holds a pathological fleet (no consumer: fed directly)."""
    service = Service(Settings(broker_url=redis_url, stuck_after=60.0), consume_events=False)
    now = time.time()
    long_hostile = (HOSTILE + " ") * 400
    events: list[dict[str, Any]] = []
    for i in range(300):
        age = 5 if i % 2 else 3600  # half of them offline
        events.append(
            {
                "type": "worker-heartbeat",
                "hostname": f"celery@{'w' * 60}-{i:04d}-{HOSTILE}",
                "freq": 2.0,
                "active": 1,
                "processed": i,
                "loadavg": [0.1, 0.2, 0.3],
                "timestamp": now - age,
                "local_received": now - age,
            }
        )
    for i in range(1500):
        exception = f"ValueError({long_hostile!r})"
        events += task_events(
            f"proj.{HOSTILE}.task_{i % 40}",
            f"f{i:07d}-0000-4000-8000-000000000000",
            now - 200 + i * 0.1,
            worker=f"celery@{'w' * 60}-{i % 300:04d}-{HOSTILE}",
            args=repr((long_hostile,)),
            outcome="failure",
            exception=exception,
            traceback=traceback_for(exception) * 20,
        )
    for i in range(200):
        events += task_events(
            f"proj.slow_{i % 7}",
            f"a{i:07d}-0000-4000-8000-000000000000",
            now - 3000 + i,
            worker=f"celery@{'w' * 60}-{i % 300:04d}-{HOSTILE}",
            args=repr((long_hostile,)),
            outcome=None,
        )
    service.store.apply(sorted(events, key=lambda e: e["local_received"]))
    return service


def test_any_fleet_fits_the_home_tab(huge_service: Service) -> None:
    with MockSlackAPI() as api:
        publish_home(huge_service, make_web_client(BOT_TOKEN, api.url), "U0HOME0009")
        (call,) = api.wait_for("views.publish")
    assert call.status == 200 and call.response["ok"], call.response
    blocks = call.params["view"]["blocks"]
    assert len(blocks) <= HOME_MAX_BLOCKS
    assert validate_blocks(blocks, max_blocks=HOME_MAX_BLOCKS) == []
    text = shown(blocks)
    assert "<!channel>" not in text
    assert "more not shown" in text  # long lists are paged, not dropped silently
    huge_service.stop()


class _BrokenRenderer(Renderer):
    def render_view_blocks(self, template: str, /, **context: Any) -> list[dict[str, Any]]:
        raise RuntimeError("secret internals")


@dataclass
class _BrokenHome:
    """The real service's commands, but a renderer whose Home template fails."""

    service: Service
    renderer: Renderer

    @property
    def dispatcher(self) -> CommandRunner:
        return self.service.dispatcher

    def context(self, user_id: str, channel_id: str) -> CommandContext:
        return self.service.context(user_id, channel_id)

    def health(self) -> dict[str, Any]:
        return self.service.health()

    def metrics_text(self) -> str:
        return ""

    @property
    def approvals(self) -> ApprovalService | ClusterApprovals:
        return self.service.approvals

    @property
    def authorizer(self) -> Authorizer:
        return self.service.authorizer


def test_a_failing_home_template_publishes_an_error_not_a_traceback(redis_url: str) -> None:
    service = Service(Settings(broker_url=redis_url), consume_events=False)
    view = home_view(_BrokenHome(service, _BrokenRenderer()), "U0HOME0010")
    text = shown(view["blocks"])
    assert view["type"] == "home"
    assert "Internal error" in text
    assert "secret internals" not in text
    service.stop()
