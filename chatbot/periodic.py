"""The process's periodic jobs, on one APScheduler ``BackgroundScheduler``.

Each job says how often it runs and on which replica: ``WRITER`` jobs only while this replica
holds the ingest lease (they act on the fleet for everyone: two replicas checking alerts would
both post), ``EVERY`` replica jobs always. The service wiring (``chatbot/service.py``) owns the
one instance and holds the table of jobs; the parts (alert checks, worker discovery, approval
expiry) only expose the function to run.

Every job runs with ``coalesce=True`` and ``max_instances=1``: a process that stalled (a long
GC, a suspended container) runs one catch-up run when it wakes, never a burst of stale ones,
and never two runs of one job at once. A run later than ``misfire_grace`` seconds is skipped;
the next is at most an interval away. A run that raises is logged with its traceback and
counted; the job stays scheduled.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler

from chatbot.store.redis.connection import StoreUnavailable

log = logging.getLogger(__name__)

Replicas = Literal["writer", "every"]
WRITER: Replicas = "writer"
EVERY: Replicas = "every"

# How long stopping waits for a run in progress (a check or an inspect round) to finish, so
# that a replica handing over the lease is not still acting on the fleet afterwards.
STOP_WAIT = 10.0


@dataclass(frozen=True)
class JobHealth:
    """What ``/healthz`` shows about one periodic job."""

    replicas: Replicas
    interval: float
    scheduled: bool  # on this replica right now
    runs: int
    failures: int  # runs that raised (logged with a traceback)
    last_run_at: float | None
    last_error: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "replicas": self.replicas,
            "interval": self.interval,
            "scheduled": self.scheduled,
            "runs": self.runs,
            "failures": self.failures,
            "last_run_at": self.last_run_at,
            "last_error": self.last_error,
        }


@dataclass(eq=False)
class _Job:
    job_id: str
    run: Callable[[], object]
    interval: float
    replicas: Replicas
    first_after: float
    misfire_grace: int
    # Which ingest lease a WRITER job follows ("" is the process's only one): with several
    # clusters each has its own lease, and its writer jobs run where that lease is held.
    lease: str = ""
    running: threading.Lock = field(default_factory=threading.Lock)
    runs: int = 0
    failures: int = 0
    last_run_at: float | None = None
    last_error: str | None = None


class PeriodicJobs:
    """The one ``BackgroundScheduler`` of a process and the jobs it runs."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._scheduler = BackgroundScheduler(daemon=True, timezone=dt.timezone.utc)
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._started = False
        self._writer_of: set[str] = set()  # the leases this replica holds

    # -- the table -------------------------------------------------------------------------------
    def add(
        self,
        job_id: str,
        run: Callable[[], object],
        *,
        every: float,
        replicas: Replicas,
        first_after: float | None = None,
        misfire_grace: int | None = None,
        lease: str = "",
    ) -> None:
        """Run ``run()`` every ``every`` seconds on ``replicas``, the first time ``first_after``
        seconds (default: ``every``) after it is scheduled; a WRITER job while ``lease`` is
        held here."""
        job = _Job(
            job_id,
            run,
            float(every),
            replicas,
            float(every if first_after is None else first_after),
            misfire_grace if misfire_grace is not None else max(1, min(10, int(every))),
            lease,
        )
        with self._lock:
            if job_id in self._jobs:
                raise ValueError(f"periodic job {job_id!r} is already registered")
            self._jobs[job_id] = job
            if self._due_locked(job):
                self._schedule_locked(job)

    def remove(self, job_id: str, wait: bool = True) -> None:
        """Take a job off the table; with ``wait``, let a run in progress finish first."""
        with self._lock:
            job = self._jobs.pop(job_id, None)
            if job is not None:
                self._unschedule_locked(job)
        if job is not None and wait:
            self._wait_idle(job)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the scheduler; jobs for every replica are scheduled from now on."""
        with self._lock:
            if self._started:
                return
            self._scheduler.start()
            self._started = True
            for job in self._jobs.values():
                if self._due_locked(job):
                    self._schedule_locked(job)

    def shutdown(self, wait: bool = True) -> None:
        with self._lock:
            if not self._started:
                return
            self._started = False
            self._writer_of.clear()
        self._scheduler.shutdown(wait=wait)

    def writer_started(self, lease: str = "") -> None:
        """This replica took the ingest lease ``lease``: schedule that writer's jobs."""
        with self._lock:
            self._writer_of.add(lease)
            for job in self._jobs.values():
                if job.replicas == WRITER and job.lease == lease and self._started:
                    self._schedule_locked(job)

    def writer_stopped(self, lease: str = "") -> None:
        """The lease is gone: unschedule its writer's jobs and let runs in progress finish."""
        with self._lock:
            self._writer_of.discard(lease)
            stopped = [
                job
                for job in self._jobs.values()
                if job.replicas == WRITER and job.lease == lease
            ]
            for job in stopped:
                self._unschedule_locked(job)
        for job in stopped:
            self._wait_idle(job)

    # -- health ----------------------------------------------------------------------------------
    def scheduled(self, job_id: str) -> bool:
        with self._lock:
            return self._started and self._scheduler.get_job(job_id) is not None

    def health(self) -> dict[str, JobHealth]:
        with self._lock:
            return {
                job.job_id: JobHealth(
                    replicas=job.replicas,
                    interval=job.interval,
                    scheduled=self._started and self._scheduler.get_job(job.job_id) is not None,
                    runs=job.runs,
                    failures=job.failures,
                    last_run_at=job.last_run_at,
                    last_error=job.last_error,
                )
                for job in self._jobs.values()
            }

    # -- internals -------------------------------------------------------------------------------
    def _due_locked(self, job: _Job) -> bool:
        return self._started and (job.replicas == EVERY or job.lease in self._writer_of)

    def _schedule_locked(self, job: _Job) -> None:
        first = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=job.first_after)
        self._scheduler.add_job(
            self._run,
            trigger="interval",
            args=(job,),
            seconds=job.interval,
            id=job.job_id,
            name=job.job_id,
            coalesce=True,
            max_instances=1,
            misfire_grace_time=job.misfire_grace,
            next_run_time=first,
            replace_existing=True,
        )
        log.info("periodic job %s every %gs (%s replica)", job.job_id, job.interval, job.replicas)

    def _unschedule_locked(self, job: _Job) -> None:
        if self._started:
            with contextlib.suppress(JobLookupError):
                self._scheduler.remove_job(job.job_id)

    @staticmethod
    def _wait_idle(job: _Job) -> None:
        if job.running.acquire(timeout=STOP_WAIT):
            job.running.release()
        else:
            log.warning("periodic job %s still running after %gs", job.job_id, STOP_WAIT)

    def _run(self, job: _Job) -> None:
        with job.running:
            error: str | None = None
            try:
                job.run()
            except StoreUnavailable as exc:
                # A dependency down, not a bug: one line per run, no traceback.
                error = f"{type(exc).__name__}: {exc}"
                log.warning("periodic job %s failed: %s", job.job_id, exc)
            except Exception as exc:
                # Logged here, once; the job stays scheduled (APScheduler would only log it).
                error = f"{type(exc).__name__}: {exc}"
                log.exception("periodic job %s failed", job.job_id)
            with self._lock:
                job.runs += 1
                job.last_run_at = self._clock()
                job.last_error = error
                if error is not None:
                    job.failures += 1
