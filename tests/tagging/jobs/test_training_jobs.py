"""Training candidates as a background job: checked at the edge, run by a real huey consumer of
the training queue, with its phase per candidate and epoch, its live curves and its result."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from db.models import Role
from tagging.config import Settings
from tagging.errors import Conflict, NotFoundError, PermissionDenied
from tagging.jobs.records import list_jobs, wait_for_job
from tagging.jobs.training import KIND, live_curves
from tagging.ml.candidates import NAMED_PREFIX, ROBUSTNESS, TEST, CandidateConfig, Grid
from tests.tagging.datasets.world import DEVELOPER
from tests.tagging.ml.test_candidates import (  # noqa: F401  (a fixture)
    frozen_version,
    mlflow_template,
    with_mlflow,
)
from tests.utils.factories import actor

TINY = CandidateConfig("small_cnn", 4, 32, lr=0.01, epochs=2, batch_size=8, augment="basic")


@pytest.mark.slow  # a version, a real consumer, MLflow: about 10 s
def test_a_queued_grid_ends_done_with_curves_evaluations_and_progress(
    tmp_path: Path,
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
    mlflow_template: Path,  # noqa: F811
) -> None:
    import tagging.jobs.records
    import tagging.ml.candidates
    from db.engine import make_engine, make_session_factory
    from tagging.jobs.tasks import enqueue_training_grid, task_queue

    for name in [k for k in os.environ if k.startswith("TAGGING_") and "TEST" not in k]:
        monkeypatch.delenv(name)
    values = {
        "TAGGING_DATA_DIR": str(tmp_path / "data"),
        "TAGGING_DATABASE_URL": sqlite_url,
        "TAGGING_ARCHIVE_DIR": str(tmp_path / "archive"),
        "TAGGING_QUEUE_NAME": f"train-{tmp_path.name}",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    # A small robustness set and short throughput timings keep the test fast; the worker runs in
    # this process (a thread consumer), so it sees them.
    monkeypatch.setattr(tagging.jobs.records, "PROGRESS_INTERVAL", 0.0)
    monkeypatch.setenv("TAGGING_ROBUSTNESS_PER_CLASS", "2")  # 6 images: it is measured
    settings = Settings.from_env()
    with_mlflow(settings.data_dir, mlflow_template)
    sessions: sessionmaker[Session] = make_session_factory(make_engine(sqlite_url))
    number = frozen_version(settings, sessions, tmp_path)

    task_queue.cache_clear()
    queues = task_queue()
    consumer = queues.training.create_consumer(
        workers=1, worker_type="thread", periodic=False, max_delay=0.2
    )
    consumer.start()
    try:
        job_id = enqueue_training_grid(settings, DEVELOPER, number, Grid("tiny", (TINY,)))
        phases: set[str] = set()
        job = wait_for_job(
            sessions, job_id, progress=lambda j: phases.add(j.phase or ""), poll=0.05, timeout=120
        )
    finally:
        consumer.stop(graceful=True)
        queues.training.flush()
        task_queue.cache_clear()

    assert job.state == "done" and job.result is not None, job.error
    assert job.kind == KIND and job.params["dataset_version"] == number
    result = job.result
    (candidate,) = result["candidates"]
    assert [p["epoch"] for p in candidate["curves"]] == [1, 2]
    assert set(candidate["evaluations"]) == {TEST, NAMED_PREFIX + "summit", ROBUSTNESS}
    assert candidate["mlflow_run"] and candidate["registered_version"] == 1
    assert result["best"] == TINY.name and result["production"] is None
    # The phase named the candidate and its epoch; each phase is in the result.
    recorded = [entry["phase"] for entry in result["phases"]]
    assert f"candidate 1/1: {TINY.name}, epoch 2/2" in recorded
    assert any(p.startswith("candidate 1/1") for p in phases)
    # The live curves file holds what a page draws while the job runs.
    curves = live_curves(settings, job_id)
    assert curves is not None
    assert [p["epoch"] for p in curves["candidates"][0]["curves"]] == [1, 2]


def test_bad_requests_fail_at_enqueue_and_record_nothing(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from db.engine import make_engine, make_session_factory
    from tagging.jobs.tasks import enqueue_training_grid
    from tests.tagging.datasets.world import build_world

    monkeypatch.setenv("TAGGING_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TAGGING_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("TAGGING_ARCHIVE_DIR", str(tmp_path / "archive"))
    settings = Settings.from_env()
    sessions = make_session_factory(make_engine(sqlite_url))
    grid = Grid("tiny", (TINY,))
    with pytest.raises(PermissionDenied):
        enqueue_training_grid(settings, actor(Role.ANALYST), 1, grid)
    with pytest.raises(NotFoundError, match="version 1"):
        enqueue_training_grid(settings, DEVELOPER, 1, grid)
    build_world(sessions, tmp_path)
    from tagging.jobs.dataset_builds import DatasetBuildParams, run_dataset_build

    run_dataset_build(
        settings, sessions, DEVELOPER, DatasetBuildParams(parent=None, use_model=False)
    )
    with pytest.raises(Conflict, match="draft"):
        enqueue_training_grid(settings, DEVELOPER, 1, grid)
    assert list_jobs(sessions) == []
