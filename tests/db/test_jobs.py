"""Background jobs (db.jobs): their life from queued to done or failed, their progress, and the
lease that makes a job whose worker stopped read as failed; on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from db.errors import InvalidInput, NotFoundError
from db.jobs import (
    LEASE,
    WORKER_STOPPED,
    beat_job,
    create_job,
    expire_stale_jobs,
    fail_job,
    finish_job,
    get_job,
    list_jobs,
    report_progress,
    start_job,
)
from db.models import Job, utcnow

PARAMS = {"parent": 2, "min_size": [100, 80], "named_test_sets": [{"name": "a", "advertiser": "B"}]}


def new_job(sessions: sessionmaker[Session], kind: str = "dataset_build") -> int:
    with sessions.begin() as session:
        return create_job(session, kind, "dev", PARAMS).id


def silence(sessions: sessionmaker[Session], job_id: int, since: timedelta) -> None:
    """The job's worker last beat ``since`` ago."""
    with sessions.begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() - since))


def test_a_job_goes_from_queued_to_done_with_its_progress(
    sessions: sessionmaker[Session],
) -> None:
    job_id = new_job(sessions)
    with sessions() as session:
        queued = get_job(session, job_id)
    assert (queued.state, queued.kind, queued.requested_by) == ("queued", "dataset_build", "dev")
    assert queued.params == PARAMS and queued.result is None and queued.started_at is None
    assert (queued.done, queued.total, queued.phase, queued.fraction) == (0, None, None, None)
    assert not queued.finished

    with sessions.begin() as session:
        assert start_job(session, job_id)
    with sessions.begin() as session:
        assert not start_job(session, job_id), "a message delivered twice runs the job once"
    with sessions.begin() as session:
        assert report_progress(session, job_id, 0, None, "archiving images")
    with sessions.begin() as session:
        assert report_progress(session, job_id, 12, 40)  # the phase stays
    with sessions() as session:
        running = get_job(session, job_id)
    assert (running.state, running.phase, running.done, running.total) == (
        "running",
        "archiving images",
        12,
        40,
    )
    assert running.fraction == pytest.approx(0.3)
    assert running.started_at is not None and running.heartbeat_at is not None
    assert running.heartbeat_at >= running.started_at

    result = {"version": 3, "by_split": {"train": {"Dealer": 5}}, "manifest_sha256": "ab" * 32}
    with sessions.begin() as session:
        assert finish_job(session, job_id, result)
    with sessions() as session:
        done = get_job(session, job_id)
    assert done.state == "done" and done.finished and done.result == result
    assert done.error is None and done.finished_at is not None
    # Over is over: no progress, no second outcome.
    with sessions.begin() as session:
        assert not report_progress(session, job_id, 1, 1, "late")
        assert not fail_job(session, job_id, "late failure")
        assert not finish_job(session, job_id, {"version": 4})
    with sessions() as session:
        assert get_job(session, job_id).result == result


def test_a_failure_keeps_one_line_and_a_queued_job_can_fail(
    sessions: sessionmaker[Session],
) -> None:
    running, queued = new_job(sessions), new_job(sessions)
    with sessions.begin() as session:
        start_job(session, running)
        assert fail_job(session, running, "no dataset version 9\n  Traceback: never shown")
        # Its task could not be queued: it will never run, so it is failed, not left queued.
        assert fail_job(session, queued, "could not be queued: connection refused")
    with sessions() as session:
        failed = get_job(session, running)
        assert (failed.state, failed.error, failed.result) == (
            "failed",
            "no dataset version 9",
            None,
        )
        assert get_job(session, queued).state == "failed"
    with sessions.begin() as session:
        assert not start_job(session, queued), "a failed job is not run"
        assert not finish_job(session, queued, {}), "a job that never ran is not done"


def test_list_is_newest_first_and_filters_by_kind(sessions: sessionmaker[Session]) -> None:
    first = new_job(sessions)
    training = new_job(sessions, "training")
    last = new_job(sessions)
    with sessions() as session:
        assert [j.id for j in list_jobs(session)] == [last, training, first]
        assert [j.id for j in list_jobs(session, "dataset_build")] == [last, first]
        assert [j.id for j in list_jobs(session, "training")] == [training]
        assert [j.id for j in list_jobs(session, limit=1)] == [last]
        assert list_jobs(session, "nothing") == []


def test_a_running_job_whose_worker_stopped_reads_as_failed(
    sessions: sessionmaker[Session],
) -> None:
    stale, alive, waiting = new_job(sessions), new_job(sessions), new_job(sessions)
    with sessions.begin() as session:
        start_job(session, stale)
        start_job(session, alive)
    silence(sessions, stale, LEASE + timedelta(seconds=5))
    silence(sessions, alive, LEASE - timedelta(seconds=20))
    with sessions.begin() as session:  # a queued job has no worker yet: it only waits
        session.execute(
            update(Job).where(Job.id == waiting).values(created_at=utcnow() - 10 * LEASE)
        )

    with sessions() as session:
        read = get_job(session, stale)
        listed = {job.id: job for job in list_jobs(session)}
    assert read.state == "failed" and read.finished
    assert read.error is not None and read.error.startswith(f"{WORKER_STOPPED}: no heartbeat since")
    assert listed[stale].state == "failed"
    assert listed[alive].state == "running" and listed[waiting].state == "queued"

    # The periodic expiry writes down what readers see; only once.
    with sessions.begin() as session:
        assert expire_stale_jobs(session) == [stale]
    with sessions.begin() as session:
        assert expire_stale_jobs(session) == []
        assert not beat_job(session, stale), "its heartbeat thread stops"
        assert not report_progress(session, stale, 5, 10)
    with sessions() as session:
        stored = session.get_one(Job, stale)
        assert stored.state == "failed" and stored.finished_at is not None
        assert get_job(session, alive).state == "running"

    # The worker was only slow: its own word replaces the lease's guess.
    with sessions.begin() as session:
        assert finish_job(session, stale, {"version": 1})
    with sessions() as session:
        came_back = get_job(session, stale)
    assert (came_back.state, came_back.result, came_back.error) == ("done", {"version": 1}, None)


def test_a_beat_keeps_a_running_job_alive(sessions: sessionmaker[Session]) -> None:
    job_id = new_job(sessions)
    with sessions.begin() as session:
        assert not beat_job(session, job_id), "a queued job has no worker to beat for it"
        start_job(session, job_id)
    silence(sessions, job_id, LEASE + timedelta(seconds=5))
    with sessions.begin() as session:
        assert beat_job(session, job_id)
    with sessions() as session:
        assert get_job(session, job_id).state == "running"
    with sessions.begin() as session:
        assert expire_stale_jobs(session) == []


def test_bad_requests_and_unknown_jobs(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        with pytest.raises(InvalidInput):
            create_job(session, "", "dev", {})
        with pytest.raises(InvalidInput):
            create_job(session, "k" * 33, "dev", {})
        with pytest.raises(InvalidInput):
            create_job(session, "dataset_build", "", {})
    with sessions() as session, pytest.raises(NotFoundError, match="no job 999"):
        get_job(session, 999)
    with sessions.begin() as session:
        assert not start_job(session, 999) and not finish_job(session, 999, {})
