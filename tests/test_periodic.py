"""The process's periodic jobs on its one APScheduler: which replica runs what, and a job that
raises keeps running."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from chatbot.alerts.scheduler import JOB_ID as ALERT_CHECK_JOB
from chatbot.config import Settings
from chatbot.periodic import EVERY, WRITER, PeriodicJobs
from chatbot.service import DISCOVERY_JOB, Service
from chatbot.slack.client import make_web_client
from chatbot.store.memory import MemoryStore
from tests.support import wait_until
from tests.support.slack_api import MockSlackAPI

WAIT = 30.0


@pytest.fixture
def jobs() -> Iterator[PeriodicJobs]:
    periodic = PeriodicJobs()
    periodic.start()
    yield periodic
    periodic.shutdown()


def test_a_job_that_raises_is_logged_counted_and_keeps_running(
    jobs: PeriodicJobs, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    def flaky() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("the broker went away")

    jobs.add("flaky", flaky, every=0.05, replicas=EVERY, first_after=0)
    wait_until(lambda: jobs.health()["flaky"].runs >= 3, WAIT, what="three runs of the job")
    health = jobs.health()["flaky"]
    assert health.failures == 1 and health.last_error is None and health.scheduled
    assert "periodic job flaky failed" in caplog.text and "the broker went away" in caplog.text


def test_runs_of_one_job_never_overlap(jobs: PeriodicJobs) -> None:
    lock = threading.Lock()
    inside: list[int] = []
    overlaps: list[int] = []
    release = threading.Event()

    def slow() -> None:
        with lock:
            inside.append(1)
            if len(inside) > 1:
                overlaps.append(len(inside))
        release.wait(0.3)  # longer than the interval: a second run would start meanwhile
        with lock:
            inside.pop()

    jobs.add("slow", slow, every=0.05, replicas=EVERY, first_after=0)
    wait_until(lambda: jobs.health()["slow"].runs >= 2, WAIT, what="two runs of the slow job")
    release.set()
    assert overlaps == []


def test_writer_jobs_run_only_while_this_replica_holds_the_lease(jobs: PeriodicJobs) -> None:
    ran = threading.Event()
    jobs.add("writer-only", ran.set, every=0.05, replicas=WRITER, first_after=0)
    jobs.add("everywhere", lambda: None, every=60, replicas=EVERY)
    assert not jobs.scheduled("writer-only") and jobs.scheduled("everywhere")
    assert jobs.health()["writer-only"].runs == 0

    jobs.writer_started()
    assert jobs.scheduled("writer-only")
    assert ran.wait(WAIT)

    jobs.writer_stopped()
    assert not jobs.scheduled("writer-only") and jobs.scheduled("everywhere")
    with pytest.raises(ValueError, match="already registered"):
        jobs.add("everywhere", lambda: None, every=1, replicas=EVERY)


def test_writer_jobs_of_a_cluster_follow_that_clusters_lease_only(jobs: PeriodicJobs) -> None:
    alpha_ran = threading.Event()
    jobs.add("check:alpha", alpha_ran.set, every=0.05, replicas=WRITER, lease="alpha")
    jobs.add("check:beta", lambda: None, every=0.05, replicas=WRITER, lease="beta")
    jobs.writer_started("alpha")
    assert jobs.scheduled("check:alpha") and not jobs.scheduled("check:beta")
    assert alpha_ran.wait(WAIT)
    jobs.writer_started("beta")
    jobs.writer_stopped("alpha")
    assert not jobs.scheduled("check:alpha") and jobs.scheduled("check:beta")


def test_the_service_shows_its_periodic_jobs_and_their_replicas(redis_url: str) -> None:
    with MockSlackAPI() as api:
        settings = Settings(
            broker_url=redis_url,
            slack_bot_token="xoxb-periodic",
            slack_api_url=api.url,
            alert_channel="C0PERIODIC",
        )
        client = make_web_client("xoxb-periodic", api.url)
        service = Service(settings, store=MemoryStore(), consume_events=False, web_client=client)
        before = service.health()["periodic"]
        assert {job: facts["scheduled"] for job, facts in before.items()} == {
            DISCOVERY_JOB: False,
            ALERT_CHECK_JOB: False,
        }
        service.start()  # no shared store: this process is the writer
        try:
            periodic = service.health()["periodic"]
            assert periodic[DISCOVERY_JOB]["replicas"] == WRITER
            assert periodic[ALERT_CHECK_JOB]["replicas"] == WRITER
            assert periodic[DISCOVERY_JOB]["scheduled"] and periodic[ALERT_CHECK_JOB]["scheduled"]
            assert service.health()["alerts"]["scheduler"]["running"] is True
        finally:
            service.stop()
        after = service.health()["periodic"]
        assert not after[DISCOVERY_JOB]["scheduled"] and not after[ALERT_CHECK_JOB]["scheduled"]
