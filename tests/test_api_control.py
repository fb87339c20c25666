"""The REST API's control endpoints on the real ``celery-chatops run``, a real worker and broker.

- With revoke outside ``CHATOPS_APPROVAL_REQUIRED``, Flower's runbook lines work with only a
  credential added: list the running tasks, revoke-and-terminate one, grow a pool by 4, and a
  Python loop revoking every RECEIVED task of one name.
- A reader's token (not an operator) is refused control, audited, and nothing is broadcast.
- Under the default policy the same revoke answers 202, posts the approval card in the alert
  channel naming the caller, runs once an approver clicks, and runs exactly once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import pytest

from chatbot.approvals import APPROVE_ACTION_ID
from chatbot.audit import AUDIT_LOGGER
from chatbot.control import FleetControl
from tests.fleet_app import ECHO, HANG, make_app
from tests.support import wait_until
from tests.support.slack_api import MockSlackAPI
from tests.support.slack_payloads import FORM, block_action, post_signed
from tests.test_api import (
    ALERT_CHANNEL,
    APPROVER,
    OPERATOR,
    READER,
    TOKENS,
    LiveBot,
    live_bot,
)

SIGNING_SECRET = "api-test-signing-secret"


def _state(bot: LiveBot, task_id: str) -> str | None:
    answer = bot.get(f"/api/task/info/{task_id}")
    return str(answer.json()["state"]) if answer.status_code == 200 else None


def _audit_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [
        json.loads(record.getMessage())
        for record in caplog.records
        if record.name == AUDIT_LOGGER and record.getMessage().startswith("{")
    ]


def _pool_size(control: FleetControl, hostname: str) -> int:
    reply = control.inspect("stats", hostname).replies[hostname]
    assert reply.status == "ok", reply
    return len(reply.value["pool"]["processes"])


def test_flower_runbook_lines_work_with_only_a_credential(
    redis_url: str, celery_worker: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=AUDIT_LOGGER)
    worker = celery_worker(redis_url, concurrency=2)
    hostname = worker.hostname
    fleet = make_app(redis_url)
    control = FleetControl(fleet, timeout=2.0)
    with (
        MockSlackAPI() as slack,
        live_bot(redis_url, slack, CHATOPS_APPROVAL_REQUIRED="shutdown") as bot,
    ):
        operator = TOKENS[OPERATOR]
        # Both pool processes busy; the queued tasks the worker prefetched are RECEIVED.
        hanging = [str(fleet.send_task(HANG, args=(300,)).id) for _ in range(2)]
        queued = [str(fleet.send_task(ECHO, args=(n,)).id) for n in range(4)]

        # curl -H "Authorization: Bearer $TOKEN" "$CHATOPS/api/tasks?state=STARTED"
        def running() -> bool:
            listed = bot.get("/api/tasks?state=STARTED").json()
            return all(task_id in listed for task_id in hanging)

        wait_until(running, timeout=30, what="both hanging tasks listed as STARTED")

        def received() -> list[str]:
            listed = bot.get("/api/tasks", params={"taskname": ECHO, "state": "RECEIVED"}).json()
            return list(listed)

        wait_until(received, timeout=30, what="prefetched echo tasks listed as RECEIVED")

        # A non-operator's token reads, but is refused control, and nothing is broadcast.
        refused = bot.call(
            "POST", f"/api/task/revoke/{hanging[0]}?terminate=true", token=TOKENS[READER]
        )
        assert refused.status_code == 403 and "not an operator" in refused.text
        grow_refused = bot.call(
            "POST", f"/api/worker/pool/grow/{hostname}", data={"n": "4"}, token=TOKENS[READER]
        )
        assert grow_refused.status_code == 403
        revoked_on_worker = control.inspect("revoked", hostname).replies[hostname].value
        assert hanging[0] not in (revoked_on_worker or [])
        assert _pool_size(control, hostname) == 2
        assert _state(bot, hanging[0]) == "STARTED"
        refusals = [e for e in _audit_lines(caplog) if e["who"] == READER]
        assert {e["result"] for e in refusals} == {"refused"}
        assert all(e["channel"] == "api" for e in refusals) and len(refusals) == 2

        # A Python loop revoking every RECEIVED task of one name, as against Flower.
        revoked: list[str] = []
        for task_id in received():
            answer = bot.call("POST", f"/api/task/revoke/{task_id}", token=operator)
            assert answer.status_code == 200, answer.text
            assert answer.json() == {"message": f"Revoked '{task_id}'"}
            revoked.append(task_id)
        assert revoked and set(revoked) <= set(queued)

        # curl -X POST "$CHATOPS/api/task/revoke/$UUID?terminate=true"
        answer = bot.call("POST", f"/api/task/revoke/{hanging[0]}?terminate=true", token=operator)
        assert answer.status_code == 200 and answer.json() == {"message": f"Revoked '{hanging[0]}'"}
        wait_until(
            lambda: _state(bot, hanging[0]) == "REVOKED",
            timeout=30,
            what="the terminated task REVOKED",
        )

        # The freed process takes the next message: a revoked one is discarded, not run.
        def all_revoked() -> bool:
            return all(_state(bot, task_id) == "REVOKED" for task_id in revoked)

        wait_until(all_revoked, timeout=30, what="the queued ones discarded as REVOKED")

        # curl -X POST "$CHATOPS/api/worker/pool/grow/$WORKER" -d n=4
        grown = bot.call(
            "POST", f"/api/worker/pool/grow/{hostname}", data={"n": "4"}, token=operator
        )
        assert grown.status_code == 200, grown.text
        assert grown.json() == {"message": f"Growing '{hostname}' worker's pool by 4"}
        wait_until(lambda: _pool_size(control, hostname) == 6, timeout=30, what="6 processes")

        unknown = bot.call("POST", "/api/worker/pool/grow/celery@nowhere", token=operator)
        assert unknown.status_code == 404 and "Unknown worker 'celery@nowhere'" in unknown.text
        run_lines = [
            e
            for e in _audit_lines(caplog)
            if e["who"] == OPERATOR and e["step"] == "request" and e["result"] == "run"
        ]
        assert run_lines and all(e["channel"] == "api" for e in run_lines)


def test_revoke_under_the_default_policy_waits_for_approval_and_runs_once(
    redis_url: str, celery_worker: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=AUDIT_LOGGER)
    worker = celery_worker(redis_url, concurrency=1)
    fleet = make_app(redis_url)
    control = FleetControl(fleet, timeout=2.0)
    with MockSlackAPI() as slack, live_bot(redis_url, slack) as bot:
        task_id = str(fleet.send_task(HANG, args=(300,)).id)
        wait_until(lambda: _state(bot, task_id) == "STARTED", timeout=30, what="running")

        asked = bot.call(
            "POST", f"/api/task/revoke/{task_id}?terminate=true", token=TOKENS[OPERATOR]
        )
        assert asked.status_code == 202, asked.text
        body = asked.json()
        approval_id = body["approval_id"]
        assert body["status_url"] == f"/api/approvals/{approval_id}"
        status = bot.get(body["status_url"]).json()
        assert status["status"] == "pending" and status["requester"] == OPERATOR

        card = slack.wait_for("chat.postMessage", count=1, timeout=15)[-1]
        assert card.params["channel"] == ALERT_CHANNEL
        assert f"<@{OPERATOR}>" in json.dumps(card.params["blocks"])
        assert "REST API" in json.dumps(card.params["blocks"])
        assert _state(bot, task_id) == "STARTED", "nothing runs before the approval"

        def click(user: str, name: str) -> None:
            payload = block_action(
                APPROVE_ACTION_ID,
                approval_id,
                user_id=user,
                channel_id=ALERT_CHANNEL,
                message_ts=str(card.response["ts"]),
                response_url=slack.response_url(name),
                message_blocks=card.params["blocks"],
            )
            sent = post_signed(
                bot.url + "/slack/events", payload, signing_secret=SIGNING_SECRET, content_type=FORM
            )
            assert sent.status == 200

        click(APPROVER, "approve")
        wait_until(lambda: _state(bot, task_id) == "REVOKED", timeout=30, what="terminated")
        # The outcome is stored once the workers' replies are in (the broadcast's timeout).
        decided = wait_until(
            lambda: (d := bot.get(body["status_url"]).json())["outcome"] and d,
            timeout=30,
            what="the approved revoke's outcome",
        )
        assert decided["status"] == "approved" and decided["decided_by"] == APPROVER
        assert decided["outcome"]["result"] == "ok"
        assert any(r["worker"] == worker.hostname for r in decided["outcome"]["replies"])

        # A second click changes nothing: the revoke ran exactly once.
        click(APPROVER, "again")
        notice = slack.wait_for_response("again", timeout=15)[-1]
        assert "already" in json.dumps(notice.params).lower()
        outcomes = [
            e
            for e in _audit_lines(caplog)
            if e["approval_id"] == approval_id and e["step"] == "outcome"
        ]
        assert len(outcomes) == 1 and outcomes[0]["channel"] == "api"
        revoked = control.inspect("revoked", worker.hostname).replies[worker.hostname].value
        assert list(revoked).count(task_id) == 1
