"""A dataset build as a background job: checked at the edge, run by a real huey consumer of the
training queue (SQLite, or Redis when ``TAGGING_TEST_REDIS_URL`` is set) over a small crafted
world, with its progress and outcome on the job's row, on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session, sessionmaker

from db import jobs as store
from db.jobs import JobSummary
from db.models import Job, Role
from tagging.config import Settings
from tagging.curation.duplicates import CONFLICT
from tagging.curation.split import NamedTestSet
from tagging.datasets.service import ARCHIVING, CROPPING, SPLITTING, STORING, show_version
from tagging.errors import Conflict, InvalidInput, NotFoundError, PermissionDenied
from tagging.jobs.dataset_builds import FREEZING, KIND, DatasetBuildParams
from tagging.jobs.records import failure_message, get_job, list_jobs, run_job, wait_for_job
from tests.tagging.datasets.world import DEVELOPER, World, build_world
from tests.utils.factories import actor


@dataclass
class Env:
    settings: Settings
    sessions: sessionmaker[Session]
    world: World
    queues: Any


def _use(monkeypatch: pytest.MonkeyPatch, values: dict[str, str]) -> Settings:
    """This process's environment (what the task reads) becomes ``values``."""
    for name in [k for k in os.environ if k.startswith("TAGGING_") and "TEST" not in k]:
        monkeypatch.delenv(name)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return Settings.from_env()


@pytest.fixture(params=["sqlite-queue", "redis-queue"])
def queue_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """The queue's settings: one SQLite file in the data dir, or the test Redis."""
    if request.param == "sqlite-queue":
        return {"TAGGING_QUEUE_NAME": f"jobs-{tmp_path.name}"}
    url, name = request.getfixturevalue("redis_queue")
    return {"TAGGING_REDIS_URL": url, "TAGGING_QUEUE_NAME": name}


def _env(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    database_url: str,
    sessions: sessionmaker[Session],
    queue: dict[str, str],
) -> Iterator[Env]:
    from tagging.jobs.tasks import task_queue

    settings = _use(
        monkeypatch,
        {
            "TAGGING_DATA_DIR": str(tmp_path / "data"),
            "TAGGING_DATABASE_URL": database_url,
            "TAGGING_ARCHIVE_DIR": str(tmp_path / "archive"),
            **queue,
        },
    )
    settings.data_dir.mkdir()
    world = build_world(sessions, tmp_path)  # its archive is TAGGING_ARCHIVE_DIR
    task_queue.cache_clear()
    queues = task_queue()
    # An idle consumer polls a SQLite queue at most every 0.2 s (by default it backs off to 10 s).
    consumer = queues.training.create_consumer(
        workers=1, worker_type="thread", periodic=False, max_delay=0.2
    )
    consumer.start()
    try:
        yield Env(settings, sessions, world, queues)
    finally:
        consumer.stop(graceful=True)
        queues.training.flush()
        task_queue.cache_clear()


@pytest.fixture
def env(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    database_url: str,
    sessions: sessionmaker[Session],
    queue_env: dict[str, str],
) -> Iterator[Env]:
    """A crafted world, and a real consumer of the training queue working for it."""
    yield from _env(monkeypatch, tmp_path, database_url, sessions, queue_env)


@pytest.fixture
def local_env(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    database_url: str,
    sessions: sessionmaker[Session],
) -> Iterator[Env]:
    """As ``env``, on the SQLite queue only."""
    yield from _env(
        monkeypatch, tmp_path, database_url, sessions, {"TAGGING_QUEUE_NAME": f"j-{tmp_path.name}"}
    )


@pytest.fixture
def progress_writes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """Every progress write of a job in this process (the worker's thread included), as the
    values it set; the throttle is off so that each step is written."""
    import tagging.jobs.records

    monkeypatch.setattr(tagging.jobs.records, "PROGRESS_INTERVAL", 0.0)
    writes: list[dict[str, Any]] = []

    def seen(state: ORMExecuteState) -> None:
        statement = state.statement
        table = getattr(statement, "table", None)
        if state.is_update and getattr(table, "name", None) == Job.__tablename__:
            params = statement.compile().params
            if "progress_done" in params:
                writes.append(params)

    event.listen(Session, "do_orm_execute", seen)
    yield writes
    event.remove(Session, "do_orm_execute", seen)


def test_a_queued_build_ends_done_with_the_version_and_its_progress(
    env: Env, progress_writes: list[dict[str, Any]]
) -> None:
    from tagging.jobs.tasks import enqueue_dataset_build

    job_id = enqueue_dataset_build(
        env.settings,
        DEVELOPER,
        parent=None,
        seed=3,
        # Spelt as a person types it: the job records the advertiser as stored.
        named_test_sets=[NamedTestSet("summit", "summit auto group")],
        freeze=True,
    )
    seen: list[JobSummary] = []
    job = wait_for_job(env.sessions, job_id, progress=seen.append, poll=0.05, timeout=90)
    assert job.state == "done", job.error
    assert job.kind == KIND and job.requested_by == "dev"
    assert job.params["named_test_sets"] == [{"name": "summit", "advertiser": "Summit Auto Group"}]
    assert job.started_at is not None and job.finished_at is not None

    # The result is the stored version's summary.
    report = show_version(env.sessions, 1)
    result = job.result
    assert result is not None
    assert result["version"] == 1 and result["state"] == "frozen" == report.version.state
    assert result["by_split"] == report.by_split
    assert result["exclusions"] == report.exclusions == {CONFLICT: 2}
    assert result["manifest_sha256"] == report.version.manifest_sha256
    assert sum(sum(counts.values()) for counts in result["by_split"].values()) == 28
    assert result["first_version"] is None
    # Every Summit image went to test (the named test set, matched as stored).
    assert report.by_split["test"] and all(n > 0 for n in report.by_split["train"].values())

    # Its phases, in order, each with its total known and reached.
    phases = [entry["phase"] for entry in result["phases"]]
    assert phases == [ARCHIVING, CROPPING, SPLITTING, STORING, FREEZING]
    crop = result["phases"][1]
    assert crop["total"] == 30 and crop["done"] == 30

    # The progress was written as it went: within a phase, done grows to a known total.
    cropping = [
        (w["progress_done"], w["progress_total"])
        for w in _phase_runs(progress_writes, job_id)
        if w["phase"] == CROPPING
    ]
    done = [d for d, total in cropping if total is not None]
    assert len(done) >= 10 and done == sorted(done) and done[-1] == 30
    assert {total for _, total in cropping if total is not None} == {30}
    # What a page polling the job saw never went backwards within a phase.
    for earlier, later in itertools.pairwise(seen):
        if earlier.phase == later.phase and earlier.state == later.state == "running":
            assert later.done >= earlier.done


def _phase_runs(writes: list[dict[str, Any]], job_id: int) -> list[dict[str, Any]]:
    """The writes of ``job_id``, each with the phase it belongs to (a write without a phase
    keeps the one before)."""
    out, phase = [], None
    for write in writes:
        if write.get("id_1") != job_id:
            continue
        phase = write.get("phase", phase)
        out.append({**write, "phase": phase})
    return out


@pytest.mark.slow  # trains the session's quick model when no test did yet
def test_with_a_model_the_job_reports_the_embedding_and_cleanlab_phases(
    local_env: Env, models_dir: Path
) -> None:
    import shutil

    from tagging.datasets.service import EMBEDDING, RANKING
    from tagging.jobs.tasks import enqueue_dataset_build

    shutil.copytree(models_dir, local_env.settings.models_dir)
    job_id = enqueue_dataset_build(local_env.settings, DEVELOPER, parent=None)
    job = wait_for_job(local_env.sessions, job_id, poll=0.05, timeout=120)
    assert job.state == "done" and job.result is not None, job.error
    phases = {entry["phase"]: entry for entry in job.result["phases"]}
    assert list(phases) == [ARCHIVING, CROPPING, EMBEDDING, RANKING, SPLITTING, STORING]
    assert phases[EMBEDDING]["total"] == phases[EMBEDDING]["done"] > 0
    assert isinstance(job.result["label_issues"], int)
    assert show_version(local_env.sessions, job.result["version"]).prune["embedded"] > 0


def test_bad_parameters_fail_at_enqueue_and_record_nothing(local_env: Env) -> None:
    from tagging.jobs.tasks import enqueue_dataset_build

    settings = local_env.settings
    with pytest.raises(PermissionDenied):
        enqueue_dataset_build(settings, actor(Role.ANALYST), parent=None)
    with pytest.raises(NotFoundError, match="no dataset version 7"):
        enqueue_dataset_build(settings, DEVELOPER, parent=7)
    with pytest.raises(InvalidInput, match="seed"):
        enqueue_dataset_build(settings, DEVELOPER, parent=None, seed=-1)
    with pytest.raises(InvalidInput, match="min_size"):
        enqueue_dataset_build(settings, DEVELOPER, parent=None, min_size=(-1, 10))
    with pytest.raises(InvalidInput, match="test_fraction"):
        enqueue_dataset_build(settings, DEVELOPER, parent=None, test_fraction=1.5)
    with pytest.raises(InvalidInput, match="time zone"):
        enqueue_dataset_build(settings, DEVELOPER, parent=None, since=datetime(2026, 1, 1))
    with pytest.raises(NotFoundError, match="no advertiser named 'Nobody'"):
        enqueue_dataset_build(
            settings, DEVELOPER, parent=None, named_test_sets=[NamedTestSet("x", "Nobody")]
        )
    # No version yet and no model to make version 1 from: said now, not in the worker.
    with pytest.raises(InvalidInput, match="--parent none"):
        enqueue_dataset_build(settings, DEVELOPER)
    assert list_jobs(local_env.sessions) == []
    assert local_env.queues.training.pending_count() == 0

    # A draft parent: a conflict, also at once.
    first = wait_for_job(
        local_env.sessions,
        enqueue_dataset_build(settings, DEVELOPER, parent=None),
        poll=0.05,
        timeout=90,
    )
    assert first.state == "done" and first.result is not None
    with pytest.raises(Conflict, match="draft"):
        enqueue_dataset_build(settings, DEVELOPER, parent=first.result["version"])
    assert len(list_jobs(local_env.sessions)) == 1


def test_a_build_that_raises_ends_failed_with_its_message(local_env: Env) -> None:
    """The parent went away between the request and the worker (here: a job recorded with a
    parent that does not exist): the job fails with the build's own one-line message."""
    params = {**DatasetBuildParams(parent=None).to_json(), "parent": 99, "role": "developer"}
    with local_env.sessions.begin() as session:
        job_id = store.create_job(session, KIND, "dev", params).id
    local_env.queues.dataset_build(job_id)
    job = wait_for_job(local_env.sessions, job_id, poll=0.05, timeout=60)
    assert (job.state, job.error, job.result) == ("failed", "no dataset version 99", None)
    assert job.finished_at is not None

    # Delivered again (a retried message): not run twice.
    again = local_env.queues.dataset_build(job_id).get(blocking=True, timeout=30)
    assert again == {"job": job_id, "ran": False, "state": None}
    assert get_job(local_env.sessions, job_id).error == "no dataset version 99"


def test_an_unexpected_error_fails_the_job_with_its_type_and_is_logged(
    sessions: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    with sessions.begin() as session:
        job_id = store.create_job(session, "training", "dev", {}).id

    def work(job: JobSummary, progress: Any) -> dict[str, Any]:
        progress.phase("epoch 1")
        progress(3, 10)
        raise ZeroDivisionError("division by zero\nmore detail")

    with caplog.at_level(logging.ERROR, logger="tagging.jobs.records"):
        ended = run_job(sessions, job_id, work)
    assert ended is not None and ended.state == "failed"
    assert ended.error == "unexpected ZeroDivisionError: division by zero"
    assert (ended.phase, ended.done, ended.total) == ("epoch 1", 3, 10)
    logged = [r for r in caplog.records if r.exc_info]
    assert logged and "ZeroDivisionError" in caplog.text, "the traceback is logged"
    assert failure_message(InvalidInput("bad seed\nsecond line")) == "bad seed"


def test_progress_is_throttled_and_the_heartbeat_beats_while_the_work_runs(
    sessions: sessionmaker[Session],
) -> None:
    from tagging.jobs.records import JobProgress

    with sessions.begin() as session:
        job_id = store.create_job(session, "training", "dev", {}).id
        store.start_job(session, job_id)
    now = [100.0]
    progress = JobProgress(sessions, job_id, interval=0.5, clock=lambda: now[0])

    def stored() -> tuple[str | None, int, int | None]:
        job = get_job(sessions, job_id)
        return job.phase, job.done, job.total

    progress.phase("epoch 1")
    progress(1, 10)  # the first step: written
    assert stored() == ("epoch 1", 1, 10)
    now[0] += 0.2
    progress(2, 10)  # 0.2 s later: held back
    assert stored() == ("epoch 1", 1, 10)
    now[0] += 0.4
    progress(3, 10)  # 0.6 s after the last write
    assert stored() == ("epoch 1", 3, 10)
    progress(10, 10)  # a phase's last step: at once
    assert stored() == ("epoch 1", 10, 10)
    progress.phase("epoch 2")  # a new phase: at once, its progress unknown
    assert stored() == ("epoch 2", 0, None)
    progress(4, 8)
    progress(5, 8)  # held back ...
    assert stored() == ("epoch 2", 4, 8)
    progress.flush()  # ... until the job ends
    assert stored() == ("epoch 2", 5, 8)
    assert [(p["phase"], p["done"], p["total"]) for p in progress.phases] == [
        ("epoch 1", 10, 10),
        ("epoch 2", 5, 8),
    ]

    # The heartbeat thread beats while a long step reports nothing.
    with sessions.begin() as session:
        other = store.create_job(session, "training", "dev", {}).id
    beats = []

    def quiet_work(job: JobSummary, _progress: Any) -> dict[str, Any]:
        import time

        for _ in range(3):
            time.sleep(0.15)
            beats.append(get_job(sessions, job.id).heartbeat_at)
        return {"ok": True}

    ended = run_job(sessions, other, quiet_work, beat_every=0.05)
    assert ended is not None and ended.state == "done" and ended.result is not None
    assert ended.result["ok"] is True and ended.result["phases"] == []
    assert len(set(beats)) == 3 and beats == sorted(beats), "the heartbeat moved on its own"
