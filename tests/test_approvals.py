"""ApprovalService: the state machine with a recording control, then against real workers.

Real-worker tests poll real state with generous deadlines; nothing asserts timing.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from chatbot.approvals import (
    APPROVE_ACTION_ID,
    DENY_ACTION_ID,
    KINDS,
    UNKNOWN_REQUEST,
    Approval,
    ApprovalService,
    ControlAction,
    PermissionDenied,
    StateStoreUnavailable,
)
from chatbot.audit import AUDIT_LOGGER, AuditLog
from chatbot.auth import Authorizer
from chatbot.config import Settings
from chatbot.consumer import EventConsumer
from chatbot.control import ControlResult, FleetControl, WorkerReply
from chatbot.demo.worker import CeleryWorkerProcess
from chatbot.model import REVOKED, STARTED
from chatbot.render import BUTTON_VALUE_MAX, Message
from chatbot.retry import RetryPlan
from chatbot.store.memory import MemoryStore
from chatbot.store.records import MemoryRecordStore
from chatbot.store.redis import RedisRecordStore
from tests.conftest import REPO_ROOT, unique_hostname
from tests.fleet_app import HANG, make_app
from tests.support import wait_until
from tests.support.cards import approve_button_value

ALICE = "UALICE01"  # operator
BOB = "UBOB0001"  # operator and approver
CAROL = "UCAROL01"  # approver
MALLORY = "UMALLORY"  # nobody
WORKER = "celery@w1"
TASK_ID = "aaaaaaaa-1111-2222-3333-444444444444"

Broadcasts = list[tuple[str, dict[str, Any]]]


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class RecordingControl:
    """Stands in for FleetControl: records calls, answers ok, optionally slowly."""

    delay: float = 0.0
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _answer(self, command: str, *args: Any, **kwargs: Any) -> ControlResult:
        with self.lock:
            self.calls.append((command, args, kwargs))
        if self.delay:
            time.sleep(self.delay)
        reply = WorkerReply(WORKER, "ok", "done", "done")
        return ControlResult(command, {WORKER: reply})

    def revoke(self, task_ids: Sequence[str], **kwargs: Any) -> ControlResult:
        return self._answer("revoke", list(task_ids), **kwargs)

    def pool_grow(self, worker: str, n: int = 1) -> ControlResult:
        return self._answer("pool_grow", worker, n)

    def pool_shrink(self, worker: str, n: int = 1) -> ControlResult:
        return self._answer("pool_shrink", worker, n)

    def autoscale(self, worker: str, max: int, min: int) -> ControlResult:
        return self._answer("autoscale", worker, max, min)

    def rate_limit(
        self, task_name: str, rate: str, worker: str | None = None, expected: Sequence[str] = ()
    ) -> ControlResult:
        return self._answer("rate_limit", task_name, rate, worker)

    def time_limit(
        self,
        task_name: str,
        soft: float | None,
        hard: float | None,
        worker: str | None = None,
        expected: Sequence[str] = (),
    ) -> ControlResult:
        return self._answer("time_limit", task_name, soft, hard, worker)

    def shutdown(self, worker: str) -> ControlResult:
        return self._answer("shutdown", worker)

    def resend(self, plans: Sequence[RetryPlan]) -> ControlResult:
        return self._answer("retry", [plan.task_id for plan in plans])

    def add_consumer(
        self, queue: str, worker: str | None = None, expected: Sequence[str] = ()
    ) -> ControlResult:
        return self._answer("add_consumer", queue, worker)

    def cancel_consumer(
        self, queue: str, worker: str | None = None, expected: Sequence[str] = ()
    ) -> ControlResult:
        return self._answer("cancel_consumer", queue, worker)

    def inspect(
        self, method: str, worker: str | None = None, expected: Sequence[str] = (), **kw: Any
    ) -> ControlResult:
        return self._answer(method, worker, **kw)

    def commands(self) -> list[str]:
        with self.lock:
            return [command for command, _, _ in self.calls]


def fed_store(now: float) -> MemoryStore:
    store = MemoryStore(clock=lambda: now)
    base = {"hostname": WORKER, "uuid": TASK_ID}
    store.apply(
        [
            {"type": "worker-online", "hostname": WORKER, "timestamp": now, "freq": 2.0},
            {
                **base,
                "type": "task-received",
                "name": HANG,
                "timestamp": now - 30,
                "args": "('<!channel> <https://evil|click>',)",
                "kwargs": "{'api_key': 'sekrit'}",
            },
            {**base, "type": "task-started", "timestamp": now - 20},
        ]
    )
    return store


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"operators": (ALICE, BOB), "approvers": (BOB, CAROL)}
    values.update(overrides)
    return Settings(**values)


@dataclass
class Rig:
    service: ApprovalService
    control: RecordingControl
    records: MemoryRecordStore
    store: MemoryStore
    clock: FakeClock
    posted: list[Message]

    def revoke_action(self, terminate: bool = True) -> ControlAction:
        return ControlAction.revoke(
            [TASK_ID], store=self.store, now=self.clock(), terminate=terminate, signal="KILL"
        )


def make_rig(**setting_overrides: Any) -> Rig:
    clock = FakeClock()
    store = fed_store(clock())
    records = MemoryRecordStore(clock=clock)
    control = RecordingControl()
    posted: list[Message] = []
    config = settings(**setting_overrides)
    service = ApprovalService(
        records,
        control,
        store,
        Authorizer.from_settings(config),
        AuditLog(channel_poster=posted.append),
        config,
        clock,
        confirm_timeout=0.3,
    )
    return Rig(service, control, records, store, clock, posted)


@pytest.fixture
def rig() -> Rig:
    return make_rig()


def audit_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    lines = [r.getMessage() for r in caplog.records if r.name == AUDIT_LOGGER]
    assert all("\n" not in line for line in lines)
    parsed: list[dict[str, Any]] = [json.loads(line) for line in lines]
    return parsed


# -- requesting ------------------------------------------------------------------------------


def test_a_revoke_waits_for_approval_and_previews_its_target(rig: Rig) -> None:
    approval = rig.service.submit(rig.revoke_action(), ALICE, "C0INCIDENT")
    assert approval.pending
    assert approval.expires_at == rig.clock() + rig.service.settings.approval_ttl
    assert rig.control.calls == []
    preview = approval.action.preview[0]
    assert (preview.name, preview.state, preview.worker) == (HANG, STARTED, WORKER)
    assert preview.runtime == pytest.approx(20.0)
    assert "sekrit" not in json.dumps(approval.as_record())  # the store's redacted preview
    # Stored, so another replica sharing the records sees the same request.
    assert rig.records.get("approval", approval.id) == approval.as_record()


def test_a_non_operator_is_refused_and_nothing_is_stored_or_sent(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=AUDIT_LOGGER)
    with pytest.raises(PermissionDenied, match="not an operator"):
        rig.service.submit(rig.revoke_action(), MALLORY, "C0INCIDENT")
    with pytest.raises(PermissionDenied):
        rig.service.submit(ControlAction.pool(WORKER, grow=True), MALLORY, "C0INCIDENT")
    assert rig.control.calls == [] and rig.records.list("approval") == []
    lines = audit_lines(caplog)
    assert [(e["step"], e["result"], e["who"]) for e in lines] == [
        ("request", "refused", MALLORY),
        ("request", "refused", MALLORY),
    ]


def test_no_operators_configured_refuses_with_the_setting_named() -> None:
    rig = make_rig(operators=(), approvers=None)
    with pytest.raises(PermissionDenied, match="CHATOPS_OPERATORS"):
        rig.service.submit(rig.revoke_action(), ALICE, "C0INCIDENT")
    assert rig.control.calls == []


@pytest.mark.parametrize(
    ("required", "action", "needed"),
    [
        (("revoke", "shutdown"), ControlAction.pool(WORKER, grow=True), False),
        (("revoke", "shutdown"), ControlAction.shutdown(WORKER), True),
        (("revoke",), ControlAction.rate_limit(HANG, "10/m"), False),
        (("rate-limit",), ControlAction.rate_limit(HANG, "10/m"), True),
        (("rate_limit",), ControlAction.rate_limit(HANG, "10/m"), True),
        (("pool",), ControlAction.pool(WORKER, grow=False), True),
        (("all",), ControlAction.consumer("q", add=True), True),
        ((), ControlAction.shutdown(WORKER), False),
    ],
)
def test_which_actions_need_approval(
    required: tuple[str, ...], action: ControlAction, needed: bool
) -> None:
    rig = make_rig(approval_required=required)
    assert rig.service.needs_approval(action) is needed


def test_terminate_can_be_required_on_its_own() -> None:
    rig = make_rig(approval_required=("terminate",))
    assert rig.service.needs_approval(rig.revoke_action(terminate=True))
    assert not rig.service.needs_approval(rig.revoke_action(terminate=False))


def test_an_action_without_approval_runs_at_once_and_is_audited(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=AUDIT_LOGGER)
    done = rig.service.submit(ControlAction.pool(WORKER, grow=True, n=2), ALICE, "C0INCIDENT")
    assert done.status == "direct" and done.outcome is not None
    assert rig.control.calls == [("pool_grow", (WORKER, 2), {})]
    assert [(e["step"], e["result"]) for e in audit_lines(caplog)] == [
        ("request", "run"),
        ("outcome", "ok"),
    ]


EVERY_KIND_BUT_REVOKE = [
    (ControlAction.pool(WORKER, grow=True, n=2), (WORKER, 2), f"pool grow {WORKER} by 2"),
    (ControlAction.pool(WORKER, grow=False), (WORKER, 1), f"pool shrink {WORKER} by 1"),
    (
        ControlAction.autoscale(WORKER, max=4, min=1),
        (WORKER, 4, 1),
        f"autoscale {WORKER} to max 4 min 1",
    ),
    (
        ControlAction.rate_limit(HANG, "10/m", WORKER),
        (HANG, "10/m", WORKER),
        f"rate limit {HANG} to 10/m on {WORKER}",
    ),
    (
        ControlAction.time_limit(HANG, 5, 10),
        (HANG, 5.0, 10.0, None),
        f"time limits of {HANG}: soft 5s, hard 10s on every worker",
    ),
    (
        ControlAction.consumer("q1", add=True),
        ("q1", None),
        "start consuming queue q1 on every worker",
    ),
    (
        ControlAction.consumer("q1", add=False, worker=WORKER),
        ("q1", WORKER),
        f"stop consuming queue q1 on {WORKER}",
    ),
    (ControlAction.shutdown(WORKER), (WORKER,), f"warm shutdown of {WORKER}"),
    (
        ControlAction.retry(
            [RetryPlan("t-1", HANG, (1,), {}, "celery", "(1,)", "{}")],
            store=MemoryStore(),
            now=0.0,
        ),
        (["t-1"],),
        "retry 1 failed task with the same arguments",
    ),
]


def test_the_kinds_table_covers_every_builder() -> None:
    built = {action.kind for action, _, _ in EVERY_KIND_BUT_REVOKE} | {"revoke"}
    assert built == set(KINDS)


@pytest.mark.parametrize(
    ("action", "arguments", "summary"),
    EVERY_KIND_BUT_REVOKE,
    ids=[action.kind for action, _, _ in EVERY_KIND_BUT_REVOKE],
)
def test_each_kind_is_sent_as_itself_with_its_own_summary(
    action: ControlAction, arguments: tuple[Any, ...], summary: str
) -> None:
    # One table entry per kind: none may fall through to another kind's call (a shutdown).
    rig = make_rig(approval_required=())
    done = rig.service.submit(action, ALICE, "C0INCIDENT")
    assert done.status == "direct" and done.outcome is not None
    assert rig.control.calls == [(action.kind, arguments, {})]
    assert action.summary() == summary


def test_an_unknown_kind_is_refused_when_built() -> None:
    with pytest.raises(ValueError, match="unknown control action"):
        ControlAction(kind="reboot", targets=(WORKER,))


# -- deciding --------------------------------------------------------------------------------


def test_self_approval_is_refused_and_the_request_stays_open() -> None:
    rig = make_rig(approvers=(ALICE, BOB))  # ALICE may approve, only not her own request
    approval = rig.service.submit(rig.revoke_action(), ALICE, "C0INCIDENT")
    outcome = rig.service.decide(approval.id, ALICE, approve=True)
    assert outcome.result == "refused"
    assert "CHATOPS_SELF_APPROVAL" in outcome.notice and outcome.card is None
    assert rig.control.calls == []
    assert rig.service.get(approval.id).pending  # type: ignore[union-attr]


def test_self_approval_when_allowed_runs_it() -> None:
    rig = make_rig(self_approval=True, approvers=(ALICE,))
    approval = rig.service.submit(rig.revoke_action(), ALICE, "C0INCIDENT")
    assert rig.service.decide(approval.id, ALICE, approve=True).result == "approved"
    assert rig.control.commands() == ["revoke"]


def test_a_click_by_someone_not_allowed_is_refused(rig: Rig) -> None:
    approval = rig.service.submit(rig.revoke_action(), ALICE, "C0INCIDENT")
    for approve in (True, False):
        outcome = rig.service.decide(approval.id, MALLORY, approve=approve)
        assert outcome.result == "refused" and "not an approver" in outcome.notice
    # An operator who is not an approver may not approve either.
    other = make_rig(approvers=(CAROL,))
    mine = other.service.submit(other.revoke_action(), ALICE, "C0INCIDENT")
    assert other.service.decide(mine.id, BOB, approve=True).result == "refused"
    assert rig.control.calls == [] and other.control.calls == []


def test_the_clicker_is_checked_again_on_every_click() -> None:
    class Groups:
        members_now = [CAROL]

        def members(self, group_id: str) -> list[str]:
            return list(self.members_now)

    groups = Groups()
    rig = make_rig(approvers=("SAPPROVE",))
    rig.service.authorizer = Authorizer(
        operators=(ALICE,), approvers=("SAPPROVE",), resolver=groups, cache_ttl=0
    )
    first = rig.service.submit(rig.revoke_action(), ALICE, "C0INCIDENT")
    groups.members_now = []  # CAROL left the approvers' group after the request was made
    assert rig.service.decide(first.id, CAROL, approve=True).result == "refused"
    groups.members_now = [CAROL]
    assert rig.service.decide(first.id, CAROL, approve=True).result == "approved"


def test_first_approval_wins_and_a_later_click_is_told_who_and_when(rig: Rig) -> None:
    approval = rig.service.submit(rig.revoke_action(), ALICE, "C0INCIDENT")
    first = rig.service.decide(approval.id, BOB, approve=True)
    assert first.result == "approved" and first.card is not None
    assert first.approval is not None and first.approval.decided_by == BOB
    assert first.needs_confirmation
    rig.clock.now += 5
    for clicker, approve in ((CAROL, True), (CAROL, False), (BOB, True)):
        late = rig.service.decide(approval.id, clicker, approve=approve)
        assert late.result == "already_decided" and late.card is None
        assert f"approved by <@{BOB}>" in late.notice
        assert "UTC" in late.notice
    assert rig.control.commands() == ["revoke"]
    sent = rig.control.calls[0]
    assert sent[1] == ([TASK_ID],)
    assert sent[2]["terminate"] is True and sent[2]["signal"] == "SIGKILL"
    assert sent[2]["expected"] == [WORKER]  # the online workers, so silence is reported


def test_deny_by_an_approver_and_cancel_by_the_requester(rig: Rig) -> None:
    denied = rig.service.submit(rig.revoke_action(), ALICE, "C0INCIDENT")
    outcome = rig.service.decide(denied.id, CAROL, approve=False)
    assert outcome.result == "denied" and outcome.notice.startswith("Denied")
    assert outcome.card is not None and approve_button_value(outcome.card) is None  # no buttons
    cancelled = rig.service.submit(rig.revoke_action(), ALICE, "C0INCIDENT")
    outcome = rig.service.decide(cancelled.id, ALICE, approve=False)
    assert outcome.result == "denied" and outcome.notice.startswith("Cancelled")
    assert "Cancelled by" in json.dumps(outcome.card.blocks)  # type: ignore[union-attr]
    assert rig.control.calls == []
    late = rig.service.decide(cancelled.id, BOB, approve=True)
    assert late.result == "already_decided" and "cancelled by" in late.notice


def test_expiry_with_an_injected_clock(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=AUDIT_LOGGER)
    approval = rig.service.submit(rig.revoke_action(), ALICE, "C0INCIDENT")
    rig.clock.now += rig.service.settings.approval_ttl - 1
    assert rig.service.get(approval.id).pending  # type: ignore[union-attr]
    rig.clock.now += 1
    outcome = rig.service.decide(approval.id, BOB, approve=True)
    assert outcome.result == "expired" and "expired at" in outcome.notice
    assert outcome.card is not None and approve_button_value(outcome.card) is None
    assert rig.service.get(approval.id).status == "expired"  # type: ignore[union-attr]
    again = rig.service.decide(approval.id, CAROL, approve=True)
    assert again.result == "already_decided" and "expired at" in again.notice
    assert rig.control.calls == []
    results = [(e["step"], e["result"]) for e in audit_lines(caplog)]
    assert results == [("request", "pending"), ("decision", "expired"), ("decision", "ignored")]


def test_expire_due_sweeps_unclicked_requests(rig: Rig) -> None:
    old = rig.service.submit(rig.revoke_action(), ALICE, "C0INCIDENT")
    rig.clock.now += 600
    fresh = rig.service.submit(rig.revoke_action(), ALICE, "C0INCIDENT")
    rig.clock.now += rig.service.settings.approval_ttl - 300
    swept = rig.service.expire_due()
    assert [a.id for a in swept] == [old.id]
    assert rig.service.get(fresh.id).pending  # type: ignore[union-attr]
    assert rig.service.expire_due() == []


def test_an_unknown_or_forged_approval_id(rig: Rig) -> None:
    for value in ("0" * 32, "not-an-id", "", "x" * 3000):
        outcome = rig.service.decide(value, BOB, approve=True)
        assert outcome.result == "unknown" and outcome.notice == UNKNOWN_REQUEST
    assert "restarted without a Redis state store" in UNKNOWN_REQUEST


def test_a_restart_with_the_memory_store_forgets_pending_requests(rig: Rig) -> None:
    approval = rig.service.submit(rig.revoke_action(), ALICE, "C0INCIDENT")
    restarted = make_rig()  # a new process: a new, empty memory RecordStore
    assert restarted.service.decide(approval.id, BOB, approve=True).result == "unknown"
    assert restarted.control.calls == []


def test_concurrent_clicks_in_two_replicas_run_it_once() -> None:
    rig = make_rig()
    rig.control.delay = 0.05  # keep the winner busy while the others arrive
    replica = ApprovalService(
        rig.records,
        rig.control,
        rig.store,
        rig.service.authorizer,
        AuditLog(),
        rig.service.settings,
        rig.clock,
    )
    approval = rig.service.submit(rig.revoke_action(), ALICE, "C0INCIDENT")
    barrier = threading.Barrier(8)
    results: list[str] = []
    lock = threading.Lock()

    def click(service: ApprovalService, who: str) -> None:
        barrier.wait()
        outcome = service.decide(approval.id, who, approve=True)
        with lock:
            results.append(outcome.result)

    threads = [
        threading.Thread(target=click, args=(svc, who))
        for svc in (rig.service, replica)
        for who in (BOB, CAROL, BOB, CAROL)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(results) == ["already_decided"] * 7 + ["approved"]
    assert rig.control.commands() == ["revoke"]


# -- presenting and auditing -----------------------------------------------------------------


def test_the_card_carries_only_the_id_and_escapes_task_data(rig: Rig) -> None:
    approval = rig.service.submit(rig.revoke_action(), ALICE, "C0INCIDENT")
    card = rig.service.card(approval)
    assert not card.ephemeral
    buttons = [e for b in card.blocks if b["type"] == "actions" for e in b["elements"]]
    assert [b["action_id"] for b in buttons] == [APPROVE_ACTION_ID, DENY_ACTION_ID]
    assert all(b["value"] == approval.id and len(b["value"]) <= BUTTON_VALUE_MAX for b in buttons)
    assert approve_button_value(card) == approval.id
    text = json.dumps(card.blocks)
    assert f"<@{ALICE}>" in text and "Expires" in text
    assert "<!channel>" not in text and "<https://evil" not in text
    assert "&lt;!channel&gt;" in text and "sekrit" not in text and HANG in text


def test_the_decided_card_shows_who_when_and_each_worker(rig: Rig) -> None:
    approval = rig.service.submit(rig.revoke_action(), ALICE, "C0INCIDENT")
    outcome = rig.service.decide(approval.id, BOB, approve=True)
    assert outcome.card is not None
    text = json.dumps(outcome.card.blocks)
    assert f"Approved by*\\n<@{BOB}>" in text and WORKER in text and "done" in text
    assert "waiting for the `task-revoked` events" in text
    # No task-revoked event ever arrives in this store: reported as unconfirmed.
    confirmed = rig.service.confirm_revoke(approval.id)
    assert confirmed is not None and confirmed.confirmation is not None
    assert confirmed.confirmation.status == "unconfirmed"
    assert "unconfirmed" in json.dumps(rig.service.card(confirmed).blocks)


def test_confirm_revoke_sees_the_event_arrive(rig: Rig) -> None:
    approval = rig.service.submit(rig.revoke_action(), ALICE, "C0INCIDENT")
    rig.service.decide(approval.id, BOB, approve=True)
    done: list[Approval] = []
    thread = rig.service.confirm_revoke_in_background(approval.id, done.append)
    rig.store.apply(
        [
            {
                "type": "task-revoked",
                "uuid": TASK_ID,
                "hostname": WORKER,
                "timestamp": rig.clock(),
                "terminated": True,
                "signum": "9",
            }
        ]
    )
    thread.join(10)
    assert done and done[0].confirmation is not None
    assert done[0].confirmation.status == "confirmed"
    assert done[0].confirmation.revoked == (TASK_ID,)


def test_every_step_is_one_audit_line_and_goes_to_the_channel(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=AUDIT_LOGGER)
    approval = rig.service.submit(rig.revoke_action(), ALICE, "C0INCIDENT")
    rig.service.decide(approval.id, ALICE, approve=True)  # refused: self-approval
    rig.service.decide(approval.id, BOB, approve=True)
    rig.service.confirm_revoke(approval.id, timeout=0)
    rig.service.decide(approval.id, CAROL, approve=True)  # too late
    lines = audit_lines(caplog)
    assert [(e["step"], e["result"], e["who"]) for e in lines] == [
        ("request", "pending", ALICE),
        ("decision", "refused", ALICE),
        ("decision", "approved", BOB),
        ("outcome", "ok", BOB),
        ("confirmation", "unconfirmed", ""),
        ("decision", "ignored", CAROL),
    ]
    for entry in lines:
        assert entry["approval_id"] == approval.id
        assert entry["action"] == "revoke" and entry["targets"] == [TASK_ID]
        assert entry["time"].endswith("Z") and entry["channel"] == "C0INCIDENT"
    assert lines[0]["parameters"] == {"terminate": True, "signal": "SIGKILL"}
    (previewed,) = lines[0]["details"]["preview"]
    assert previewed["uuid"] == TASK_ID and previewed["worker"] == WORKER
    assert "[redacted]" in previewed["kwargs"] and "sekrit" not in json.dumps(lines)
    assert lines[3]["details"]["replies"] == [{"worker": WORKER, "status": "ok", "message": "done"}]
    assert len(rig.posted) == len(lines)
    assert all(not m.ephemeral for m in rig.posted)
    assert f"<@{BOB}>" in json.dumps(rig.posted[2].blocks)


def test_the_audit_never_carries_secrets() -> None:
    captured: list[str] = []
    audit = AuditLog(secrets=("hunter2-secret",))
    audit.logger.addHandler(handler := _ListHandler(captured))
    try:
        from chatbot.audit import AuditEntry

        audit.record(
            AuditEntry(
                "outcome",
                BOB,
                "revoke",
                "error",
                0.0,
                reason=("broker redis://:hunter2-secret@host/0 said xoxb-1234-5678-abcdef"),
            )
        )
    finally:
        audit.logger.removeHandler(handler)
    assert captured and "hunter2-secret" not in captured[0] and "xoxb-1234" not in captured[0]


class _ListHandler(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.INFO)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record.getMessage())


def test_a_failing_control_is_recorded_not_raised(rig: Rig) -> None:
    def broken(*args: Any, **kwargs: Any) -> ControlResult:
        raise RuntimeError("broker on fire")

    rig.control.revoke = broken  # type: ignore[method-assign]
    approval = rig.service.submit(rig.revoke_action(), ALICE, "C0INCIDENT")
    outcome = rig.service.decide(approval.id, BOB, approve=True)
    assert outcome.result == "approved" and not outcome.needs_confirmation
    assert outcome.approval is not None and outcome.approval.outcome is not None
    assert "broker on fire" in (outcome.approval.outcome.error or "")
    assert "not done" in outcome.notice


# -- against real workers --------------------------------------------------------------------


@dataclass
class Fleet:
    worker: CeleryWorkerProcess
    app: Celery
    store: MemoryStore
    sent: Broadcasts
    control: FleetControl

    def active_ids(self) -> set[str]:
        reply = self.control.inspect("active", worker=self.worker.hostname).replies[
            self.worker.hostname
        ]
        assert reply.status == "ok", reply
        return {task["id"] for task in reply.value}

    def revokes_sent(self) -> list[dict[str, Any]]:
        return [arguments for command, arguments in self.sent if command == "revoke"]

    def start_hang(self) -> str:
        task_id: str = self.app.send_task(HANG, args=(300,)).id
        wait_until(lambda: task_id in self.active_ids(), timeout=30, what="the hang task to run")
        wait_until(
            # By the started time, not the state: a late task-sent may still say PENDING.
            lambda: (t := self.store.get_task(task_id)) is not None and t.started is not None,
            timeout=30,
            what="task-started in the store",
        )
        return task_id


@pytest.fixture(scope="module")
def fleet(
    redis_url_factory: Callable[[], str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    url = redis_url_factory()
    log: Path = tmp_path_factory.mktemp("approvals-worker") / "worker.log"
    worker = CeleryWorkerProcess(
        "tests.fleet_app",
        url,
        hostname=unique_hostname("appr"),
        concurrency=2,
        log_path=log,
        cwd=REPO_ROOT,
    )
    worker.start()
    app = make_app(url)
    store = MemoryStore()
    consumer = EventConsumer(url, store, app=app, enable_events_interval=0)
    try:
        worker.wait_ready(timeout=30)
        consumer.start()
        assert consumer.wait_connected(30)
        wait_until(
            lambda: (
                (w := store.get_worker(worker.hostname)) is not None and w.is_online(time.time())
            ),
            timeout=30,
            what="the worker's heartbeat in the store",
        )
        sent: Broadcasts = []
        control = FleetControl(app, timeout=2.0, on_broadcast=lambda c, a: sent.append((c, a)))
        yield Fleet(worker, app, store, sent, control)
    finally:
        consumer.stop(timeout=10)
        worker.stop(timeout=5)
        app.close()


def real_service(
    fleet: Fleet, records: MemoryRecordStore | None = None, **overrides: Any
) -> ApprovalService:
    config = settings(**overrides)
    return ApprovalService(
        records or MemoryRecordStore(),
        fleet.control,
        fleet.store,
        Authorizer.from_settings(config),
        AuditLog(),
        config,
        confirm_timeout=30,
    )


def test_terminate_ends_the_hanging_task_only_after_approval(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=AUDIT_LOGGER)
    fleet.sent.clear()
    service = real_service(fleet)
    task_id = fleet.start_hang()
    action = ControlAction.revoke(
        [task_id], store=fleet.store, now=time.time(), terminate=True, signal="KILL"
    )
    approval = service.submit(action, ALICE, "C0INCIDENT")
    assert approval.pending and approval.action.preview[0].worker == fleet.worker.hostname

    # Not before: neither asking, nor a self-approval, nor a stranger's click does anything.
    assert service.decide(approval.id, ALICE, approve=True).result == "refused"
    assert service.decide(approval.id, MALLORY, approve=True).result == "refused"
    assert fleet.revokes_sent() == []
    assert task_id in fleet.active_ids()

    outcome = service.decide(approval.id, BOB, approve=True)
    assert outcome.result == "approved", outcome.notice
    assert outcome.approval is not None and outcome.approval.outcome is not None
    replies = {r.worker: r for r in outcome.approval.outcome.replies}
    assert replies[fleet.worker.hostname].status == "ok"
    assert task_id in replies[fleet.worker.hostname].message  # "terminate: <id>"
    wait_until(lambda: task_id not in fleet.active_ids(), timeout=30, what="the task to be gone")
    assert fleet.revokes_sent() == [{"task_id": [task_id], "terminate": True, "signal": "SIGKILL"}]

    confirmed = service.confirm_revoke(approval.id)
    assert confirmed is not None and confirmed.confirmation is not None
    assert confirmed.confirmation.status == "confirmed"
    task = fleet.store.get_task(task_id)
    assert task is not None and task.state == REVOKED
    steps = [(e["step"], e["result"]) for e in audit_lines(caplog)]
    assert steps == [
        ("request", "pending"),
        ("decision", "refused"),
        ("decision", "refused"),
        ("decision", "approved"),
        ("outcome", "ok"),
        ("confirmation", "confirmed"),
    ]


def test_simultaneous_approvals_across_replicas_send_one_revoke(fleet: Fleet) -> None:
    fleet.sent.clear()
    shared = MemoryRecordStore()
    replicas = [real_service(fleet, shared), real_service(fleet, shared)]
    task_id = fleet.start_hang()
    action = ControlAction.revoke([task_id], store=fleet.store, now=time.time(), terminate=True)
    approval = replicas[0].submit(action, ALICE, "C0INCIDENT")
    barrier = threading.Barrier(6)
    results: list[str] = []
    lock = threading.Lock()

    def click(service: ApprovalService, who: str) -> None:
        barrier.wait()
        result = service.decide(approval.id, who, approve=True).result
        with lock:
            results.append(result)

    threads = [
        threading.Thread(target=click, args=(service, who))
        for service in replicas
        for who in (BOB, CAROL, BOB)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(results) == ["already_decided"] * 5 + ["approved"]
    assert len(fleet.revokes_sent()) == 1
    wait_until(lambda: task_id not in fleet.active_ids(), timeout=30, what="the task to be gone")


# -- the Redis state store: replicas and restarts ----------------------------------------------


def redis_service(rig: Rig, url: str, **overrides: Any) -> ApprovalService:
    config = settings(**overrides)
    return ApprovalService(
        RedisRecordStore(url, prefix="approvals-test"),
        rig.control,
        rig.store,
        Authorizer.from_settings(config),
        AuditLog(),
        config,
        rig.clock,
    )


def test_with_redis_a_pending_request_survives_a_restart(rig: Rig, redis_url: str) -> None:
    before = redis_service(rig, redis_url)
    approval = before.submit(rig.revoke_action(), ALICE, "C0INCIDENT")
    after = redis_service(rig, redis_url)  # a new process: only Redis is shared
    outcome = after.decide(approval.id, BOB, approve=True)
    assert outcome.result == "approved", outcome.notice
    assert rig.control.commands() == ["revoke"]
    assert before.decide(approval.id, CAROL, approve=True).result == "already_decided"


def test_with_redis_simultaneous_clicks_in_two_replicas_run_once(rig: Rig, redis_url: str) -> None:
    rig.control.delay = 0.05
    replicas = [redis_service(rig, redis_url), redis_service(rig, redis_url)]
    approval = replicas[0].submit(rig.revoke_action(), ALICE, "C0INCIDENT")
    barrier = threading.Barrier(8)
    results: list[str] = []
    lock = threading.Lock()

    def click(service: ApprovalService, who: str) -> None:
        barrier.wait()
        result = service.decide(approval.id, who, approve=True).result
        with lock:
            results.append(result)

    threads = [
        threading.Thread(target=click, args=(service, who))
        for service in replicas
        for who in (BOB, CAROL, BOB, CAROL)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(results) == ["already_decided"] * 7 + ["approved"]
    assert rig.control.commands() == ["revoke"]


class FlakyRecords(MemoryRecordStore):
    """A state store that goes away on demand (Redis down)."""

    down = False

    def transition(self, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        if self.down:
            raise ConnectionError("Error 111 connecting to 127.0.0.1:6390. Connection refused.")
        return super().transition(*args, **kwargs)

    def create(self, *args: Any, **kwargs: Any) -> bool:
        if self.down:
            raise ConnectionError("Connection refused.")
        return super().create(*args, **kwargs)


def test_an_unreachable_state_store_runs_nothing_and_says_so(rig: Rig) -> None:
    records = FlakyRecords(clock=rig.clock)
    service = ApprovalService(
        records,
        rig.control,
        rig.store,
        rig.service.authorizer,
        AuditLog(),
        rig.service.settings,
        rig.clock,
    )
    approval = service.submit(rig.revoke_action(), ALICE, "C0INCIDENT")
    records.down = True
    outcome = service.decide(approval.id, BOB, approve=True)
    assert outcome.result == "unavailable" and "unreachable" in outcome.notice
    assert rig.control.calls == []
    with pytest.raises(StateStoreUnavailable):
        service.submit(rig.revoke_action(), ALICE, "C0INCIDENT")
    records.down = False
    assert service.decide(approval.id, BOB, approve=True).result == "approved"
    assert rig.control.commands() == ["revoke"]


def test_attach_message_remembers_where_the_card_is(rig: Rig) -> None:
    approval = rig.service.submit(rig.revoke_action(), ALICE, "C0INCIDENT")
    attached = rig.service.attach_message(approval.id, "C0INCIDENT", "1795503205.000100")
    assert attached is not None and attached.message_ts == "1795503205.000100"
    assert attached.pending  # remembering the message decides nothing
    swept = rig.service.expire_due()
    assert swept == []
    rig.clock.now += rig.service.settings.approval_ttl
    (expired,) = rig.service.expire_due()
    assert (expired.message_channel, expired.message_ts) == ("C0INCIDENT", "1795503205.000100")
    assert rig.service.attach_message("0" * 32, "C0INCIDENT", "1.2") is None
