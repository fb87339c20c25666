"""The REST API's retry and failure groups on the real ``celery-chatops run``, a real worker and
broker (Slack is ``MockSlackAPI``).

- ``POST /api/task/retry/<uuid>`` follows ``/celery retry``: under the default policy it answers
  202, posts the card naming the caller, and re-runs the failed task with the same arguments
  once approved (the approval says the new id); with retry outside the policy it re-runs at
  once and answers the new id. A task whose arguments were redacted, or that did not fail, is
  refused with 409 and the reason (audited), and nothing is sent; a second retry of the same
  failure is refused; unknown ids are 404; a reader's token is 403.
- ``GET /api/tasks/failed`` groups as ``/celery failed``: 11 failures differing only in numbers
  are one group of 11, a different message is another group.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest

from chatbot.approvals import APPROVE_ACTION_ID
from chatbot.audit import AUDIT_LOGGER
from tests.fleet_app import ADD, FAIL, make_app
from tests.support import wait_until
from tests.support.slack_api import MockSlackAPI
from tests.support.slack_payloads import FORM, block_action, post_signed
from tests.test_api import ALERT_CHANNEL, APPROVER, OPERATOR, READER, TOKENS, LiveBot, live_bot
from tests.test_api_control import SIGNING_SECRET

DEADLINE = 30


def _task(bot: LiveBot, task_id: str) -> dict[str, Any] | None:
    answer = bot.get(f"/api/task/info/{task_id}")
    return answer.json() if answer.status_code == 200 else None


def _in_state(bot: LiveBot, task_id: str, state: str) -> dict[str, Any] | None:
    task = _task(bot, task_id)
    return task if task is not None and task["state"] == state else None


def _wait_state(bot: LiveBot, task_id: str, state: str, what: str) -> dict[str, Any]:
    task = wait_until(lambda: _in_state(bot, task_id, state), timeout=DEADLINE, what=what)
    assert task is not None
    return task


def _fail_names(bot: LiveBot) -> set[str]:
    listed = bot.get("/api/tasks", params={"taskname": FAIL, "limit": 1000})
    assert listed.status_code == 200, listed.text
    return set(listed.json())


def _audit_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [
        json.loads(record.getMessage())
        for record in caplog.records
        if record.name == AUDIT_LOGGER and record.getMessage().startswith("{")
    ]


def _drained(bot: LiveBot, send: Callable[..., str]) -> None:
    """Every message sent before now has been taken by the worker: a marker task sent now on
    the same queue to the one-process worker has succeeded."""
    marker = send(ADD, 1, 2)
    _wait_state(bot, marker, "SUCCESS", "the marker")


def test_retry_waits_for_approval_then_reruns_with_the_same_arguments_once(
    redis_url: str, celery_worker: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=AUDIT_LOGGER)
    worker = celery_worker(redis_url, concurrency=1)
    fleet = make_app(redis_url)

    def send(name: str, *args: Any, **kwargs: Any) -> str:
        return str(fleet.send_task(name, args=args, kwargs=kwargs).id)

    with MockSlackAPI() as slack, live_bot(redis_url, slack) as bot:  # default policy
        original = send(FAIL, message="card 8773 for 14813")
        first = _wait_state(bot, original, "FAILURE", "the failure")
        assert first["kwargs"] == "{'message': 'card 8773 for 14813'}"

        refused = bot.call("POST", f"/api/task/retry/{original}", token=TOKENS[READER])
        assert refused.status_code == 403 and "not an operator" in refused.text
        unknown = bot.call("POST", "/api/task/retry/no-such-task", token=TOKENS[OPERATOR])
        assert unknown.status_code == 404 and "Unknown task 'no-such-task'" in unknown.text

        asked = bot.call("POST", f"/api/task/retry/{original}", token=TOKENS[OPERATOR])
        assert asked.status_code == 202, asked.text
        body = asked.json()
        approval_id = body["approval_id"]
        assert body["status_url"] == f"/api/approvals/{approval_id}"
        pending = bot.get(body["status_url"]).json()
        assert pending["status"] == "pending" and pending["kind"] == "retry"
        assert pending["targets"] == [original] and pending["retried"] == {}
        card = slack.wait_for("chat.postMessage", count=1, timeout=15)[-1]
        assert card.params["channel"] == ALERT_CHANNEL
        shown = json.dumps(card.params["blocks"])
        assert f"<@{OPERATOR}>" in shown and "REST API" in shown and "card 8773" in shown

        # While the request waits, a second one for the same failure is refused.
        again = bot.call("POST", f"/api/task/retry/{original}", token=TOKENS[OPERATOR])
        assert again.status_code == 409
        assert "awaits approval" in again.json()["message"]
        before = _fail_names(bot)
        assert before == {original}, "nothing is sent before the approval"

        payload = block_action(
            APPROVE_ACTION_ID,
            approval_id,
            user_id=APPROVER,
            channel_id=ALERT_CHANNEL,
            message_ts=str(card.response["ts"]),
            response_url=slack.response_url("approve"),
            message_blocks=card.params["blocks"],
        )
        clicked = post_signed(
            bot.url + "/slack/events", payload, signing_secret=SIGNING_SECRET, content_type=FORM
        )
        assert clicked.status == 200

        decided = wait_until(
            lambda: (d := bot.get(body["status_url"]).json())["retried"] and d,
            timeout=DEADLINE,
            what="the approved retry's new task id",
        )
        assert decided["status"] == "approved" and decided["decided_by"] == APPROVER
        new_id = decided["retried"][original]
        rerun = _wait_state(bot, new_id, "FAILURE", "the re-run")
        assert (rerun["args"], rerun["kwargs"]) == (first["args"], first["kwargs"])
        assert rerun["worker"] == worker.hostname and rerun["name"] == FAIL

        # Re-sent once: a later request says where it went.
        done = bot.call("POST", f"/api/task/retry/{original}", token=TOKENS[OPERATOR])
        assert done.status_code == 409 and new_id in done.json()["message"]
        _drained(bot, send)
        assert _fail_names(bot) == {original, new_id}
        lines = [e for e in _audit_lines(caplog) if e["approval_id"] == approval_id]
        assert {(e["step"], e["result"]) for e in lines} >= {("request", "pending")}
        assert all(e["channel"] == "api" for e in lines)
        refusals = [e for e in _audit_lines(caplog) if e["action"] == "retry" and
                    e["result"] == "refused" and e["who"] == OPERATOR]  # fmt: skip
        assert len(refusals) == 2 and all(e["channel"] == "api" for e in refusals)


def test_retry_outside_the_policy_runs_at_once_and_refusals_send_nothing(
    redis_url: str, celery_worker: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=AUDIT_LOGGER)
    worker = celery_worker(redis_url, concurrency=1)
    fleet = make_app(redis_url)

    def send(name: str, *args: Any, **kwargs: Any) -> str:
        return str(fleet.send_task(name, args=args, kwargs=kwargs).id)

    with (
        MockSlackAPI() as slack,
        live_bot(redis_url, slack, CHATOPS_APPROVAL_REQUIRED="revoke,shutdown") as bot,
    ):
        original = send(FAIL, "order 5521 rejected")  # a positional argument this time
        secret = send(FAIL, message="password=hunter2")
        succeeded = send(ADD, 2, 3)
        first = _wait_state(bot, original, "FAILURE", "the failure")
        redacted = _wait_state(bot, secret, "FAILURE", "the secret one")
        assert "hunter2" not in json.dumps(redacted)
        _wait_state(bot, succeeded, "SUCCESS", "add")

        answer = bot.call("POST", f"/api/task/retry/{original}", token=TOKENS[OPERATOR])
        assert answer.status_code == 200, answer.text
        new_id = answer.json()["task-id"]
        assert answer.json()["message"] == f"Retried '{original}' as '{new_id}'"
        rerun = _wait_state(bot, new_id, "FAILURE", "the re-run")
        assert (rerun["args"], rerun["kwargs"]) == (first["args"], first["kwargs"])
        assert rerun["args"] == "('order 5521 rejected',)" and rerun["worker"] == worker.hostname

        for task_id, reason in (
            (secret, "its keyword arguments were redacted"),
            (succeeded, "it is SUCCESS, not FAILURE"),
        ):
            no = bot.call("POST", f"/api/task/retry/{task_id}", token=TOKENS[OPERATOR])
            assert no.status_code == 409, no.text
            assert no.json() == {"message": f"Not retried: {reason}"}
        # Nothing was sent for them: once the queue is drained, the only new task is the re-run.
        _drained(bot, send)
        assert _fail_names(bot) == {original, secret, new_id}
        assert not slack.calls("chat.postMessage"), "no card: retry needs no approval here"
        audit = [e for e in _audit_lines(caplog) if e["action"] == "retry"]
        ran = [e for e in audit if e["step"] == "request" and e["result"] == "run"]
        assert len(ran) == 1 and ran[0]["who"] == OPERATOR and ran[0]["channel"] == "api"
        refused = {e["targets"][0]: e["reason"] for e in audit if e["result"] == "refused"}
        assert refused == {
            secret: "its keyword arguments were redacted",
            succeeded: "it is SUCCESS, not FAILURE",
        }


def test_failed_groups_eleven_failures_differing_only_in_numbers_as_one(
    redis_url: str, celery_worker: Callable[..., Any]
) -> None:
    worker = celery_worker(redis_url, concurrency=2)
    fleet = make_app(redis_url)
    with MockSlackAPI() as slack, live_bot(redis_url, slack) as bot:
        # The fingerprint memory starts listening (at the latest) with this first call, so a
        # window opening after it can tell that the groups are new.
        assert bot.get("/api/tasks/failed").status_code == 200
        listening = time.time()
        wait_until(lambda: time.time() > listening + 1, timeout=5, what="a second to pass")
        declined = [
            str(fleet.send_task(FAIL, kwargs={"message": f"card {4000 + n} declined for"
                                              f" {100 * n + 7} cents"}).id)
            for n in range(11)
        ]  # fmt: skip
        other = str(fleet.send_task(FAIL, kwargs={"message": "gateway timed out"}).id)
        wait_until(
            lambda: all(_in_state(bot, t, "FAILURE") for t in [*declined, other]),
            timeout=DEADLINE,
            what="twelve failures",
        )
        window = time.time() - listening - 0.5
        answer = bot.get("/api/tasks/failed", params={"since": window, "limit": 3})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["total"] == 12 and body["grouped"] == 12 and body["group_count"] == 2
        assert [g["count"] for g in body["groups"]] == [11, 1]
        eleven, one = body["groups"]
        assert eleven["name"] == FAIL and eleven["exception_type"] == "ValueError"
        assert eleven["message_shape"] == "card # declined for # cents"
        assert eleven["workers"] == [worker.hostname] and eleven["new"] is True
        assert eleven["example"]["uuid"] in declined
        assert eleven["first_seen"] <= eleven["last_seen"]
        assert one["example"]["uuid"] == other and one["key"] != eleven["key"]
        assert len(body["tasks"]) == 3

        only = bot.get(
            "/api/tasks/failed", params={"since": window, "group": eleven["key"][:5], "limit": 50}
        ).json()
        assert set(only["tasks"]) == set(declined) and only["total"] == 11
        assert [g["key"] for g in only["groups"]] == [eleven["key"]]
        biggest = bot.get("/api/tasks/failed", params={"since": window, "max_groups": 1}).json()
        assert [g["key"] for g in biggest["groups"]] == [eleven["key"]]
        assert biggest["group_count"] == 2
        missing = bot.get("/api/tasks/failed", params={"group": "ffffffff"})
        assert missing.status_code == 404 and "Unknown failure group 'ffffffff'" in missing.text
