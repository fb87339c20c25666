"""Two clusters on two real brokers, a real worker on each, one bot.

``alpha`` is a database of the session's private redis-server, ``beta`` a redis-server of its
own (a second broker: nothing of alpha's can reach it). Each worker runs ``tests.fleet_app``,
one failing task and one hanging task per cluster. The bot is the real
:class:`~chatbot.service.Service` configured with ``CHATOPS_CLUSTERS``; commands go through its
dispatcher as a face sends them, approvals through its approvals as a button click does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from chatbot.alerts.actions import command_for_click
from chatbot.alerts.manager import REVOKE_ACTION_ID
from chatbot.api.spec import ApiResponse
from chatbot.approvals.clusters import ClusterApprovals
from chatbot.audit import AUDIT_LOGGER
from chatbot.config import load_settings
from chatbot.demo.embedded import EmbeddedRedis
from chatbot.demo.worker import CeleryWorkerProcess
from chatbot.model import FAILURE, REVOKED, STARTED
from chatbot.render import Message
from chatbot.runner import rest_api
from chatbot.service import Service
from chatbot.slack.home import home_view
from tests.conftest import REPO_ROOT, unique_hostname
from tests.fleet_app import FAIL, HANG, make_app
from tests.support import wait_until

DEADLINE = 60.0
OPERATOR = "U0OPERATOR"
APPROVER = "U0APPROVER"
CHANNEL = "C0INCIDENT"
HANG_SECONDS = 600.0
API_TOKEN = "clusters-test-token-0123456789abcdef"


@dataclass
class Side:
    name: str
    worker: CeleryWorkerProcess
    producer: Celery
    failed_id: str = ""
    hanging_id: str = ""


@dataclass
class Bot:
    service: Service
    alpha: Side
    beta: Side

    def run(self, text: str, user: str = OPERATOR, channel: str = CHANNEL) -> Message:
        return self.service.dispatcher.run(text, self.service.context(user, channel))

    def wait_state(self, cluster: str, task_id: str, state: str) -> None:
        store = self.service.clusters[cluster].store

        def reached() -> bool:
            task = store.get_task(task_id)
            return task is not None and task.state == state

        wait_until(reached, timeout=DEADLINE, what=f"{cluster}: task {task_id} in {state}")

    def revoked_on(self, side: Side) -> list[str]:
        """The ids the worker itself says it was told to revoke (its own revoked set)."""
        control = self.service.clusters[side.name].control
        result = control.inspect("revoked", worker=side.worker.hostname)
        reply = result.replies.get(side.worker.hostname)
        # A silent worker would read as "nothing revoked": it must have answered.
        assert reply is not None and reply.ok, result
        return list(reply.value or [])


def shown(message: Message) -> str:
    return json.dumps(message.blocks, ensure_ascii=False) + "\n" + message.text


@pytest.fixture(scope="module")
def bot(
    redis_server: EmbeddedRedis,
    redis_url_factory: Callable[[], str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Bot]:
    logs = tmp_path_factory.mktemp("clusters")
    beta_server = EmbeddedRedis().start()
    alpha_url, beta_url = redis_url_factory(), beta_server.url_for(1)
    settings = load_settings(
        {
            "CHATOPS_CLUSTERS": f"alpha={alpha_url},beta={beta_url}",
            "CHATOPS_OPERATORS": OPERATOR,
            "CHATOPS_APPROVERS": APPROVER,
            "CHATOPS_API_TOKENS": f"{OPERATOR}={API_TOKEN}",
        }
    )
    service = Service(settings)
    sides: list[Side] = []
    try:
        service.start()
        for name, url in (("alpha", alpha_url), ("beta", beta_url)):
            consumer = service.clusters[name].consumer
            assert consumer is not None and consumer.wait_connected(DEADLINE), name
            worker = CeleryWorkerProcess(
                "tests.fleet_app",
                url,
                hostname=unique_hostname(name),
                concurrency=2,
                cwd=REPO_ROOT,
                log_path=logs / f"{name}.log",
            )
            sides.append(Side(name, worker, make_app(url)))
            worker.start()
        for side in sides:
            side.worker.wait_ready(timeout=DEADLINE)
        running = Bot(service, sides[0], sides[1])
        for side in sides:
            side.failed_id = str(side.producer.send_task(FAIL, (f"{side.name} is broken",)).id)
            side.hanging_id = str(side.producer.send_task(HANG, (HANG_SECONDS,)).id)
        for side in sides:
            running.wait_state(side.name, side.failed_id, FAILURE)
            running.wait_state(side.name, side.hanging_id, STARTED)
        yield running
    finally:
        for side in sides:
            side.worker.stop(timeout=5.0)
            side.producer.close()
        service.stop()
        beta_server.stop()


def test_at_alpha_failed_shows_only_alphas_failure(bot: Bot) -> None:
    answer = shown(bot.run("@alpha failed"))
    assert "alpha is broken" in answer
    assert "beta is broken" not in answer
    assert "Cluster *alpha*" in answer


def test_failed_without_a_default_shows_both_clusters_named(bot: Bot) -> None:
    answer = shown(bot.run("failed"))
    assert "alpha is broken" in answer and "beta is broken" in answer
    assert answer.index("Cluster *alpha*") < answer.index("alpha is broken")
    assert answer.index("Cluster *beta*") < answer.index("beta is broken")


def test_task_ids_resolve_within_the_addressed_cluster(bot: Bot) -> None:
    assert "beta is broken" in shown(bot.run(f"@beta task {bot.beta.failed_id}"))
    assert "unknown task" in shown(bot.run(f"@alpha task {bot.beta.failed_id}"))


def test_workers_asks_each_clusters_own_workers(bot: Bot) -> None:
    answer = shown(bot.run("workers"))
    assert bot.alpha.worker.hostname in answer and bot.beta.worker.hostname in answer
    only_beta = shown(bot.run("@beta workers"))
    assert bot.beta.worker.hostname in only_beta
    assert bot.alpha.worker.hostname not in only_beta


def test_a_revoke_with_no_cluster_named_is_refused(bot: Bot) -> None:
    refused = bot.run(f"revoke {bot.beta.hanging_id} --terminate")
    assert refused.approval_id is None
    assert "name its cluster" in shown(refused)
    assert bot.beta.hanging_id not in bot.revoked_on(bot.beta)


def test_at_beta_revoke_terminate_after_approval_reaches_only_betas_worker(
    bot: Bot, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=AUDIT_LOGGER)
    task_id = bot.beta.hanging_id
    card = bot.run(f"@beta revoke {task_id} --terminate")
    assert card.approval_id is not None, shown(card)
    assert "cluster *beta*" in shown(card)
    approvals = bot.service.approvals
    assert isinstance(approvals, ClusterApprovals)
    outcome = approvals.decide(card.approval_id, APPROVER, approve=True)
    assert outcome.approval is not None and outcome.approval.cluster == "beta"
    assert outcome.card is not None and "beta" in shown(outcome.card)
    bot.wait_state("beta", task_id, REVOKED)
    # Beta's worker was told; alpha's worker never heard of it (nothing in its revoked set),
    # and alpha's own hanging task runs on.
    assert task_id in bot.revoked_on(bot.beta)
    assert bot.revoked_on(bot.alpha) == []
    alpha_task = bot.service.clusters["alpha"].store.get_task(bot.alpha.hanging_id)
    assert alpha_task is not None and alpha_task.state == STARTED
    # The audit line of the outcome names the cluster too.
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == AUDIT_LOGGER]
    audited = [line for line in lines if line["approval_id"] == card.approval_id]
    assert {line["step"] for line in audited} >= {"request", "decision", "outcome"}
    assert all(line["cluster"] == "beta" for line in audited)


def test_metrics_carry_both_cluster_labels(bot: Bot) -> None:
    families = {f.name: f for f in text_string_to_metric_families(bot.service.metrics_text())}
    events = families["flower_events"]
    clusters = {sample.labels["cluster"] for sample in events.samples}
    assert clusters == {"alpha", "beta"}
    connected = {
        s.labels["cluster"]: s.value for s in families["celery_chatops_consumer_connected"].samples
    }
    assert connected == {"alpha": 1.0, "beta": 1.0}
    online = {
        (s.labels["cluster"], s.labels["worker"])
        for s in families["flower_worker_online"].samples
        if s.value == 1
    }
    assert ("alpha", bot.alpha.worker.hostname) in online
    assert ("beta", bot.beta.worker.hostname) in online
    assert ("alpha", bot.beta.worker.hostname) not in online


def test_health_reports_each_cluster(bot: Bot) -> None:
    health = bot.service.health()
    assert health["ok"] is True
    assert set(health["clusters"]) == {"alpha", "beta"}
    assert all(facts["ok"] and facts["ingest_here"] for facts in health["clusters"].values())
    assert "worker-discovery:alpha" in health["periodic"]
    assert "worker-discovery:beta" in health["periodic"]


def test_the_app_home_shows_every_cluster_named(bot: Bot) -> None:
    view = home_view(bot.service, OPERATOR)
    text = json.dumps(view["blocks"], ensure_ascii=False)
    assert "Cluster *alpha*" in text and "Cluster *beta*" in text
    assert "alpha is broken" in text and "beta is broken" in text
    assert len(view["blocks"]) <= 100


def test_a_stuck_alert_button_click_addresses_its_cluster(bot: Bot) -> None:
    # What AlertButtons runs for a click on beta's stuck-task alert (value "@beta/<id>"):
    # the request is beta's, for beta's task, whatever channel the alert was posted in.
    command = command_for_click(REVOKE_ACTION_ID, f"@beta/{bot.beta.failed_id}")
    assert command == f"@beta revoke {bot.beta.failed_id}"
    card = bot.service.run_as(command, OPERATOR, CHANNEL)
    assert card.approval_id is not None, shown(card)
    approvals = bot.service.approvals
    assert isinstance(approvals, ClusterApprovals)
    request = approvals.get(card.approval_id)
    assert request is not None and request.cluster == "beta"
    assert bot.service.clusters["alpha"].approvals.get(card.approval_id) is None
    # Denied: nothing is sent anywhere.
    approvals.decide(card.approval_id, APPROVER, approve=False)


def test_the_api_takes_the_cluster_from_the_request(bot: Bot) -> None:
    api = rest_api(bot.service, None).core
    bearer = f"Bearer {API_TOKEN}"

    def failures(**args: str) -> ApiResponse:
        query = {"state": ["FAILURE"], **{k: [v] for k, v in args.items()}}
        return api.handle("GET", "/api/tasks", query, bearer)

    alpha = failures(cluster="alpha")
    assert alpha.status == 200, alpha.body
    assert set(alpha.body) == {bot.alpha.failed_id}
    beta = failures(cluster="beta")
    assert set(beta.body) == {bot.beta.failed_id}
    # Several clusters and none named: refused with the names, after authentication only.
    unnamed = failures()
    assert unnamed.status == 400 and "alpha, beta" in str(unnamed.body)
    assert api.handle("GET", "/api/tasks", {}, None).status == 401
    assert failures(cluster="gamma").status == 400
    # A task id resolves within the named cluster only.
    info = f"/api/task/info/{bot.beta.failed_id}"
    assert api.handle("GET", info, {"cluster": ["beta"]}, bearer).status == 200
    assert api.handle("GET", info, {"cluster": ["alpha"]}, bearer).status == 404
    # Public endpoints need no cluster.
    assert api.handle("GET", "/healthcheck", {}, None).status == 200
