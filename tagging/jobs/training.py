"""Training Image Type candidates as a background job (kind ``training``), and the same training in
the foreground (``python -m tagging models train``).

:func:`check_training` checks a request at the edge: the permission
(:attr:`~db.accounts.Permission.MODELS`), a frozen dataset version, a valid grid whose starting
weights exist and fit. :func:`record_training` records the job;
``tagging.jobs.tasks.enqueue_training_grid`` queues it on the **training** queue (never the
scrapes queue, and the ML server is not touched: it keeps serving production), whose worker runs
:func:`run_training_job`:
:func:`tagging.ml.candidates.train_grid` with

* the job's **phase** per candidate and epoch (``candidate 2/4: resnet18-w16-64px-strong, epoch
  3/6``) and its ``done``/``total`` the candidate's optimizer steps;
* the **live curves** (each candidate's epochs so far: train loss, validation loss and accuracy,
  and each finished candidate's evaluations) in a JSON file beside the data,
  ``<data dir>/training/job-<id>.json``, replaced atomically after every epoch; a page reads it
  with :func:`live_curves` while the job runs. The job's row has no field a running job can
  write its partial result to (``db.jobs`` only stores the result at the end), hence the file;
  on a cluster whose workers do not share the data dir, the curves show once the job is done;
* the **result**: :meth:`tagging.ml.candidates.GridResult.as_dict` (every candidate's curves,
  evaluations per set, artifact version, MLflow run and registered version; production's
  evaluations; the best candidate).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from db import datasets as datasets_store
from db import jobs as store
from db.accounts import Actor, Permission, require
from db.datasets import VersionSummary
from db.jobs import JobSummary
from tagging.config import Settings
from tagging.curation.recipe import Recipe, SplitStep
from tagging.curation.split import NamedTestSet
from tagging.datasets.archive import archive_from_settings
from tagging.datasets.service import version_manifest
from tagging.errors import Conflict, InvalidInput
from tagging.jobs.records import JobProgress, run_job
from tagging.ml.candidates import (
    DEFAULT_ROBUSTNESS,
    CandidateConfig,
    CandidateResult,
    EpochPoint,
    Grid,
    GridOptions,
    GridResult,
    TrainingListener,
    TrainingSet,
    check_init_weights,
    train_grid,
    training_set,
)
from tagging.ml.tracking import tracker_from_settings

KIND = "training"
"""The jobs' ``kind``."""

READING = "reading the dataset"
"""The first phase: the version's images from the archive, decoded and cropped."""


@dataclass(frozen=True)
class TrainingParams:
    """What a training job is asked to do.

    Attributes:
        dataset_version: A frozen dataset version's number.
        grid: The candidates.
    """

    dataset_version: int
    grid: Grid

    def __post_init__(self) -> None:
        number = self.dataset_version
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise InvalidInput(f"a dataset version is a number (1 or more), got {number!r}")

    def to_json(self) -> dict[str, Any]:
        """The parameters as JSON (a job's ``params``)."""
        return {"dataset_version": self.dataset_version, "grid": self.grid.to_json()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrainingParams:
        """The parameters :meth:`to_json` wrote.

        Raises:
            InvalidInput: not what :meth:`to_json` writes.
        """
        grid = data.get("grid")
        if not isinstance(grid, Mapping):
            raise InvalidInput("a training job's parameters name no grid")
        number = data.get("dataset_version")
        if not isinstance(number, int):
            raise InvalidInput(f"a training job's dataset version is a number, got {number!r}")
        return cls(dataset_version=number, grid=Grid.from_json(grid))


def check_training(
    sessions: sessionmaker[Session], actor: Actor | None, params: TrainingParams
) -> tuple[Actor, VersionSummary]:
    """Check a training request before anything runs.

    Returns:
        The actor and the dataset version.

    Raises:
        PermissionDenied: the actor may not train models.
        NotFoundError: no such dataset version.
        Conflict: the version is a draft (it could still change under the candidates).
        ModelError: starting weights that are missing or do not fit their candidate.
    """
    actor = require(actor, Permission.MODELS)
    with sessions() as session:
        version = datasets_store.get_version(session, params.dataset_version)
    if version.state != "frozen":
        raise Conflict(
            f"dataset version {version.number} is a draft: freeze it before training on it "
            f"(python -m tagging dataset freeze {version.number})"
        )
    check_init_weights(params.grid)
    return actor, version


def record_training(
    sessions: sessionmaker[Session], actor: Actor | None, params: TrainingParams
) -> JobSummary:
    """Check a request (:func:`check_training`) and record its job, queued.

    Raises:
        PermissionDenied, NotFoundError, Conflict, ModelError: see :func:`check_training`.
    """
    actor, _ = check_training(sessions, actor, params)
    with sessions.begin() as session:
        return store.create_job(
            session, KIND, actor.username, {**params.to_json(), "role": str(actor.role)}
        )


def named_test_sets(version: VersionSummary) -> tuple[NamedTestSet, ...]:
    """The named per-advertiser test sets of ``version``'s recipe (its split steps')."""
    if "recipe" not in version.recipe:
        return ()
    recipe = Recipe.from_json(str(version.recipe["recipe"]))
    return tuple(
        test_set
        for step in recipe.steps
        if isinstance(step, SplitStep)
        for test_set in step.named_test_sets
    )


def load_training_set(
    settings: Settings, sessions: sessionmaker[Session], number: int
) -> TrainingSet:
    """Version ``number``'s train and test images from the archive, with its named test sets.

    Raises:
        NotFoundError: no such version.
        InvalidInput: its train split lacks a class, or it has no test image.
    """
    with sessions() as session:
        version = datasets_store.get_version(session, number)
    return training_set(
        version_manifest(sessions, number),
        archive_from_settings(settings),
        version=number,
        named_test_sets=named_test_sets(version),
    )


def run_training(
    settings: Settings,
    sessions: sessionmaker[Session],
    params: TrainingParams,
    *,
    listener: TrainingListener | None = None,
    options: GridOptions | None = None,
) -> GridResult:
    """Read the version and train the grid in this process (the job's work, and the CLI's).

    Raises:
        NotFoundError, InvalidInput: see :func:`load_training_set`.
        ModelError: starting weights that do not fit, or a production model that cannot load.
        TrackingUnavailable: MLflow cannot be used.
    """
    tell = listener or TrainingListener()
    tell.phase(READING)
    data = load_training_set(settings, sessions, params.dataset_version)
    if options is None:
        robustness = replace(DEFAULT_ROBUSTNESS, n_per_class=settings.robustness_per_class)
        options = GridOptions(robustness=robustness)
    return train_grid(
        data,
        params.grid,
        settings.models_dir,
        tracker=tracker_from_settings(settings),
        listener=tell,
        options=options,
    )


def curves_path(settings: Settings, job_id: int) -> Path:
    """Where a running training job keeps its live curves."""
    return settings.data_dir / "training" / f"job-{job_id}.json"


def live_curves(settings: Settings, job_id: int) -> dict[str, Any] | None:
    """A training job's curves so far: ``{"candidates": [{"name", "config", "curves",
    "evaluations" (once evaluated), "version"}...]}``; ``None`` before its first epoch."""
    try:
        return dict(json.loads(curves_path(settings, job_id).read_text()))
    except (OSError, ValueError):
        return None


class JobListener(TrainingListener):
    """Writes a running grid's phases and steps to its job, and its curves to the curves file."""

    def __init__(self, progress: JobProgress, path: Path, grid: Grid) -> None:
        self.progress, self.path = progress, path
        self._lock = threading.Lock()
        self._candidates: list[dict[str, Any]] = [
            {"name": c.name, "config": c.to_dict(), "curves": [], "evaluations": None}
            for c in grid.candidates
        ]

    def phase(self, name: str) -> None:
        """Write the phase to the job at once."""
        self.progress.phase(name)

    def step(self, done: int, total: int) -> None:
        """Write the steps (throttled by :class:`JobProgress`)."""
        self.progress(done, total)

    def epoch(self, index: int, candidate: CandidateConfig, point: EpochPoint) -> None:
        """Add the point to the candidate's curve and rewrite the file."""
        with self._lock:
            self._candidates[index]["curves"].append(asdict(point))
            self._write()

    def candidate_done(self, index: int, result: CandidateResult) -> None:
        """Add the candidate's evaluations and artifact version, and rewrite the file."""
        with self._lock:
            self._candidates[index]["evaluations"] = result.evaluations
            self._candidates[index]["version"] = result.version
            self._write()

    def _write(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".curves-", dir=self.path.parent)
            with os.fdopen(fd, "w") as handle:
                json.dump({"candidates": self._candidates}, handle)
            os.replace(tmp, self.path)
        except OSError:  # the curves are worth less than the training: the result has them too
            pass


def run_training_job(
    settings: Settings, sessions: sessionmaker[Session], job_id: int
) -> JobSummary | None:
    """Run queued training job ``job_id`` (the training queue's task).

    Returns:
        The job as it ended; None when it was not queued any more (nothing was run).
    """

    def work(job: JobSummary, progress: JobProgress) -> dict[str, Any]:
        params = TrainingParams.from_json(job.params)
        listener = JobListener(progress, curves_path(settings, job.id), params.grid)
        result = run_training(settings, sessions, params, listener=listener)
        return {**result.as_dict(), "curves_file": str(curves_path(settings, job.id))}

    return run_job(sessions, job_id, work)


__all__ = [
    "KIND",
    "READING",
    "JobListener",
    "TrainingParams",
    "check_training",
    "curves_path",
    "live_curves",
    "load_training_set",
    "named_test_sets",
    "record_training",
    "run_training",
    "run_training_job",
]
