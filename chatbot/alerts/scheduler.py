"""The periodic check: store + broker -> rules -> manager, every ``CHATOPS_CHECK_INTERVAL``.

The check is one job on the process's :class:`~chatbot.periodic.PeriodicJobs` (its one
APScheduler ``BackgroundScheduler``: ``coalesce``, ``max_instances=1``, a small misfire grace,
so a process that stalled runs one check when it wakes, not a burst of stale ones). The job
never talks to Slack itself; the manager hands messages to the sender's queue.

Run the check on one replica per fleet (``WRITER``): two replicas checking the same fleet would
both post.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chatbot.alerts.facts import QueueHistory, collect_facts
from chatbot.alerts.manager import AlertManager, ReconcileResult
from chatbot.alerts.rules import BACKLOG, Evaluation, evaluate, split_key
from chatbot.broker import QueueLength, QueueLengthReader, queue_names
from chatbot.config import Settings
from chatbot.model import HEARTBEAT_EXPIRE_FACTOR, StreamHealth
from chatbot.periodic import WRITER, PeriodicJobs, Replicas
from chatbot.store import FleetStore

log = logging.getLogger(__name__)

JOB_ID = "alert-check"
DEFAULT_QUEUE = "celery"


@dataclass(frozen=True)
class CheckResult:
    at: float
    evaluation: Evaluation
    reconciled: ReconcileResult
    queue_error: str | None


@dataclass(frozen=True)
class SchedulerHealth:
    running: bool
    interval: float
    checks: int
    failures: int  # checks that raised (logged with a traceback)
    last_check_at: float | None
    last_duration: float | None
    last_error: str | None
    firing: int  # conditions found by the last check (muted or not)

    def as_dict(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "interval": self.interval,
            "checks": self.checks,
            "failures": self.failures,
            "last_check_at": self.last_check_at,
            "last_duration": self.last_duration,
            "last_error": self.last_error,
            "firing": self.firing,
        }


class AlertScheduler:
    """Runs the alert check as a periodic job (:meth:`start`) or on demand (:meth:`check_now`).

    ``broker`` reads queue lengths (None: no backlog rule). ``health`` returns the stream's
    health with the consumer's half filled in (``lambda: consumer.health_into(store.health())``);
    without it the store's own health is used and a disconnected consumer goes unnoticed
    until the stream-silent rule fires.
    """

    def __init__(
        self,
        manager: AlertManager,
        store: FleetStore,
        settings: Settings,
        *,
        broker: QueueLengthReader | None = None,
        health: Callable[[], StreamHealth] | None = None,
        clock: Callable[[], float] = time.time,
        default_queue: str = DEFAULT_QUEUE,
        interval: float | None = None,
        misfire_grace_time: int | None = None,
        expire_factor: float | None = None,
    ) -> None:
        self.manager = manager
        self.store = store
        self.settings = settings
        self.broker = broker
        self._health = health
        self.clock = clock
        self.default_queue = default_queue
        self.interval = float(interval if interval is not None else settings.check_interval)
        # Late by more than this: skip the run; the next one is at most an interval away.
        self.misfire_grace_time = (
            misfire_grace_time
            if misfire_grace_time is not None
            else max(1, min(10, int(self.interval)))
        )
        self.expire_factor = (
            expire_factor
            if expire_factor is not None
            else float(getattr(store, "heartbeat_expire_factor", HEARTBEAT_EXPIRE_FACTOR))
        )
        self.history = QueueHistory()
        self.watching_since = clock()
        self._check_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._jobs: PeriodicJobs | None = None
        self._checks = 0
        self._failures = 0
        self._last_check_at: float | None = None
        self._last_duration: float | None = None
        self._last_error: str | None = None
        self._last_firing = 0
        self._job_id = JOB_ID

    # -- lifecycle -------------------------------------------------------------------------------
    def start(
        self,
        jobs: PeriodicJobs,
        replicas: Replicas = WRITER,
        *,
        job_id: str = JOB_ID,
        lease: str = "",
    ) -> None:
        """Check every ``interval`` seconds on ``jobs``, the process's one scheduler (as
        ``job_id``, following the ingest lease ``lease``: one per cluster)."""
        if self._jobs is not None:
            return
        jobs.add(
            job_id,
            self.run_check,
            every=self.interval,
            replicas=replicas,
            # The first check one interval after start: the consumer has had time to hear
            # every worker's heartbeat, so a fresh picture is not mistaken for a dead fleet.
            first_after=self.interval,
            misfire_grace=self.misfire_grace_time,
            lease=lease,
        )
        self._jobs, self._job_id = jobs, job_id

    def stop(self, wait: bool = True) -> None:
        jobs, self._jobs = self._jobs, None
        if jobs is not None:
            jobs.remove(self._job_id, wait=wait)

    @property
    def running(self) -> bool:
        """The check is scheduled on this replica (a WRITER job: while it holds the lease)."""
        jobs = self._jobs
        return jobs is not None and jobs.scheduled(self._job_id)

    # -- checking --------------------------------------------------------------------------------
    def run_check(self) -> None:
        """One check as the periodic job runs it: a failure is already logged and counted by
        :meth:`check_now` (and shown by :meth:`health`), so it is not raised again."""
        with contextlib.suppress(Exception):
            self.check_now()

    def check_now(self) -> CheckResult:
        """One full check, on the caller's thread; never overlaps another check."""
        with self._check_lock:
            started = time.monotonic()
            try:
                result = self._check()
            except Exception as exc:
                with self._state_lock:
                    self._checks += 1
                    self._failures += 1
                    self._last_error = f"{type(exc).__name__}: {exc}"
                    self._last_duration = time.monotonic() - started
                log.exception("Alert check failed")
                raise
            with self._state_lock:
                self._checks += 1
                self._last_error = None
                self._last_check_at = result.at
                self._last_duration = time.monotonic() - started
                self._last_firing = len(result.evaluation.conditions)
            return result

    def _check(self) -> CheckResult:
        now = self.clock()
        open_alerts = self.manager.open_alerts()
        queues, queue_error = self._read_queues(open_alerts, now)
        health = self._health() if self._health is not None else self.store.health()
        facts = collect_facts(
            self.store,
            self.settings,
            now=now,
            watching_since=self.watching_since,
            queues=queues,
            queue_error=queue_error,
            history=self.history.samples(),
            health=health,
            open_keys=list(open_alerts),
            expire_factor=self.expire_factor,
        )
        evaluation = evaluate(facts, self.settings, open_alerts)
        reconciled = self.manager.reconcile(evaluation, now)
        return CheckResult(now, evaluation, reconciled, queue_error)

    def _read_queues(
        self, open_alerts: dict[str, float], now: float
    ) -> tuple[list[QueueLength] | None, str | None]:
        if self.broker is None:
            return None, "no broker reader"
        names = queue_names(self.store.workers(), self.settings.queues, self.default_queue)
        # A queue with an open alert stays watched until the alert resolves, even if the
        # workers that listed it are gone.
        for key in open_alerts:
            kind, subject = split_key(key)
            if kind == BACKLOG and subject not in names:
                names.append(subject)
        try:
            lengths = list(self.broker.queue_lengths(names))
        except Exception as exc:  # a network peer: "unknown", never a crash of the check
            log.warning("Reading queue lengths failed: %s", exc)
            return None, f"{type(exc).__name__}: {exc}"
        self.history.record(lengths, now)
        return lengths, None

    # -- health ----------------------------------------------------------------------------------
    def health(self) -> SchedulerHealth:
        with self._state_lock:
            return SchedulerHealth(
                running=self.running,
                interval=self.interval,
                checks=self._checks,
                failures=self._failures,
                last_check_at=self._last_check_at,
                last_duration=self._last_duration,
                last_error=self._last_error,
                firing=self._last_firing,
            )
