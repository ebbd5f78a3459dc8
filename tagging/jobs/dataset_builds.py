"""A dataset build as a background job (kind ``dataset_build``), and the build both the job and
``python -m tagging dataset build`` run.

:func:`check_dataset_build` checks a request at the edge: the permission
(:attr:`~db.accounts.Permission.MODELS`) and every parameter, the parent and the named test sets'
advertisers included, so that a bad one fails at once in the caller's process, never in the worker.
:func:`record_dataset_build` then records the job, and ``tagging.jobs.tasks.enqueue_dataset_build``
queues it on the **training** queue, whose worker runs :func:`run_dataset_build_job`:
:func:`run_dataset_build` with its progress and phases written to the job's row, and the version's
summary (:func:`build_summary`) as the job's result.

:func:`run_dataset_build` is what a foreground build runs too: version 1 first when the lineage has
none yet (``--parent latest``), the build (:func:`tagging.datasets.service.build_version`), then
the freeze when asked. The job records the role the request was checked with and acts with it, as
a relaunched scrape acts for whoever relaunched it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from db import jobs as store
from db.accounts import Actor, Permission, require
from db.advertisers import get_advertiser
from db.jobs import JobSummary
from db.models import Role
from tagging.config import Settings
from tagging.curation.split import NamedTestSet
from tagging.datasets.archive import archive_from_settings
from tagging.datasets.service import (
    LATEST,
    Phase,
    Progress,
    VersionReport,
    build_version,
    ensure_first_version,
    freeze,
    list_versions,
    show_version,
)
from tagging.errors import Conflict, InvalidInput, NotFoundError
from tagging.jobs.records import JobProgress, run_job

KIND = "dataset_build"
"""The jobs' ``kind``."""

RENDERING = "rendering version 1"
"""The phase that makes version 1 when there is none yet (before the build's own phases,
:data:`tagging.datasets.service.BUILD_PHASES`)."""
FREEZING = "freezing"
"""The phase after them, when the version is to be frozen."""

MAX_SEED = 2**32 - 1
"""The split and the label-issue ranking's folds take seeds up to this (scikit-learn's limit)."""


@dataclass(frozen=True)
class DatasetBuildParams:
    """What a dataset build is asked to do (``dataset build``'s options).

    Attributes:
        parent: A version number, :data:`~tagging.datasets.service.LATEST` (the newest frozen
            version; version 1 is made first when there is no version at all) or None.
        since: Only fixes made after this moment (timezone-aware).
        min_size: ``(width, height)`` of the size filter.
        seed: The split's random seed, 0 to :data:`MAX_SEED`.
        test_fraction: The share of each class the split puts in test.
        named_test_sets: Per-advertiser test sets added to the parent's.
        use_model: Run the model-assisted prune when there is a production model.
        freeze: Freeze the version once built.

    Raises:
        InvalidInput: a parameter of the wrong type or out of range (checked on creation, so a
            request read back from a job is checked again).
    """

    parent: int | str | None = LATEST
    since: datetime | None = None
    min_size: tuple[int, int] = (0, 0)
    seed: int = 0
    test_fraction: float = 0.2
    named_test_sets: tuple[NamedTestSet, ...] = ()
    use_model: bool = True
    freeze: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "parent", _parent(self.parent))
        if self.since is not None and (
            not isinstance(self.since, datetime) or self.since.utcoffset() is None
        ):
            raise InvalidInput(f"since must be a moment with a time zone, got {self.since!r}")
        size = tuple(self.min_size)
        if len(size) != 2 or not all(_is_int(v) and v >= 0 for v in size):
            raise InvalidInput(f"min_size is (width, height), 0 or more each, got {self.min_size}")
        object.__setattr__(self, "min_size", (int(size[0]), int(size[1])))
        if not _is_int(self.seed) or not 0 <= self.seed <= MAX_SEED:
            raise InvalidInput(f"the seed is a whole number from 0 to {MAX_SEED}, got {self.seed}")
        fraction = self.test_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, int | float):
            raise InvalidInput(f"test_fraction must be a number, got {fraction!r}")
        if not 0.0 < float(fraction) < 1.0:
            raise InvalidInput(f"test_fraction must be between 0 and 1, got {fraction}")
        object.__setattr__(self, "test_fraction", float(fraction))
        sets = tuple(self.named_test_sets)
        for test_set in sets:
            if not isinstance(test_set, NamedTestSet):
                raise InvalidInput(f"a named test set is NAME=ADVERTISER, got {test_set!r}")
            if not test_set.name.strip() or not test_set.advertiser.strip():
                raise InvalidInput(
                    f"a named test set needs a name and an advertiser, got {test_set.name!r}="
                    f"{test_set.advertiser!r}"
                )
        object.__setattr__(self, "named_test_sets", sets)

    def to_json(self) -> dict[str, Any]:
        """The parameters as JSON (a job's ``params``)."""
        return {
            "parent": self.parent,
            "since": self.since.isoformat() if self.since is not None else None,
            "min_size": list(self.min_size),
            "seed": self.seed,
            "test_fraction": self.test_fraction,
            "named_test_sets": [
                {"name": s.name, "advertiser": s.advertiser} for s in self.named_test_sets
            ],
            "use_model": self.use_model,
            "freeze": self.freeze,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DatasetBuildParams:
        """The parameters :meth:`to_json` wrote (other keys are ignored).

        Raises:
            InvalidInput: a value that is not what :meth:`to_json` writes.
        """
        try:
            since = data.get("since")
            width, height = data.get("min_size") or (0, 0)
            return cls(
                parent=data.get("parent", LATEST),
                since=datetime.fromisoformat(since) if since else None,
                min_size=(width, height),
                seed=data.get("seed", 0),
                test_fraction=data.get("test_fraction", 0.2),
                named_test_sets=tuple(
                    NamedTestSet(name=str(s["name"]), advertiser=str(s["advertiser"]))
                    for s in data.get("named_test_sets") or ()
                ),
                use_model=bool(data.get("use_model", True)),
                freeze=bool(data.get("freeze", False)),
            )
        except (TypeError, ValueError, KeyError) as exc:
            raise InvalidInput(f"unreadable dataset build parameters: {exc}") from None


@dataclass(frozen=True)
class BuildOutcome:
    """What :func:`run_dataset_build` made: version 1 when it had to make it first, and the
    version built (as frozen, when asked)."""

    first: VersionReport | None
    report: VersionReport


def check_dataset_build(
    settings: Settings,
    sessions: sessionmaker[Session],
    actor: Actor | None,
    params: DatasetBuildParams,
) -> tuple[Actor, DatasetBuildParams]:
    """Check a build request before anything runs: who asks, and what the database must hold.

    Returns:
        The actor, and the parameters with the named test sets' advertisers spelt as stored (the
        split matches them exactly).

    Raises:
        PermissionDenied: the actor may not curate datasets.
        NotFoundError: no such parent, or no advertiser of that name for a named test set.
        Conflict: the parent is a draft.
        InvalidInput: ``latest`` with no version yet and no production model to make version 1
            from.
    """
    actor = require(actor, Permission.MODELS)
    with sessions() as session:
        sets = tuple(
            replace(s, advertiser=get_advertiser(session, s.advertiser).name)
            for s in params.named_test_sets
        )
    params = replace(params, named_test_sets=sets)
    versions = {v.number: v for v in list_versions(sessions)}
    if isinstance(params.parent, int):
        parent = versions.get(params.parent)
        if parent is None:
            raise NotFoundError(f"no dataset version {params.parent}")
        if parent.state != "frozen":
            raise Conflict(f"version {parent.number} is a draft: freeze it first")
    elif params.parent == LATEST and not versions and not _has_model(settings):
        raise InvalidInput(
            "no dataset version yet, and no Image Type model to make version 1 from (the "
            "generated set it was trained on): train one (python -m tagging train), or "
            "build without a parent: --parent none"
        )
    return actor, params


def run_dataset_build(
    settings: Settings,
    sessions: sessionmaker[Session],
    actor: Actor | None,
    params: DatasetBuildParams,
    *,
    progress: Progress | None = None,
    phase: Phase | None = None,
) -> BuildOutcome:
    """Build a version as ``dataset build`` does, in this process.

    With ``latest`` and no version at all, version 1 is made first (:data:`RENDERING`); the build
    archives the pulled images through the guarded client and, when ``use_model`` and there is a
    production model, runs the model-assisted prune; ``freeze`` freezes the result
    (:data:`FREEZING`).

    Args:
        progress: Told ``(done, total)`` within each phase.
        phase: Told each phase's name as it starts.

    Raises:
        PermissionDenied, NotFoundError, Conflict, InvalidInput: as
            :func:`tagging.datasets.service.build_version`.
    """
    from tagging.ingest.fetch import client_from_settings

    begin = phase or (lambda _name: None)
    archive = archive_from_settings(settings)
    has_model = params.use_model and _has_model(settings)
    first = None
    if params.parent == LATEST and not list_versions(sessions) and _has_model(settings):
        # The lineage starts at what the production model learnt from: version 1 first.
        begin(RENDERING)
        first = ensure_first_version(
            sessions, actor, archive, settings.models_dir, progress=progress
        )
    with client_from_settings(settings) as client:
        report = build_version(
            sessions,
            actor,
            archive,
            parent=params.parent,
            since=params.since,
            min_size=params.min_size,
            seed=params.seed,
            test_fraction=params.test_fraction,
            client=client,
            progress=progress,
            phase=phase,
            named_test_sets=params.named_test_sets,
            models_dir=settings.models_dir if has_model else None,
        )
    if params.freeze:
        begin(FREEZING)
        freeze(sessions, actor, report.version.number)
        report = show_version(sessions, report.version.number)
    return BuildOutcome(first=first, report=report)


def build_summary(outcome: BuildOutcome) -> dict[str, Any]:
    """A build's outcome as a job's result: the version, its counts per split and class, its
    exclusions by reason and its manifest's SHA-256 (``dataset show N`` has the rest)."""
    report = outcome.report
    version = report.version
    first = outcome.first
    return {
        "version": version.number,
        "parent": version.parent,
        "state": version.state,
        "rows": version.counts.get("rows"),
        "included": version.counts.get("included"),
        "by_split": report.by_split,
        "exclusions": report.exclusions,
        "warnings": list(report.warnings),
        "manifest_sha256": version.manifest_sha256,
        "label_issues": report.prune.get("label_issues_total") if report.prune else None,
        "first_version": (
            {"version": first.version.number, "rows": first.version.counts.get("rows")}
            if first is not None
            else None
        ),
    }


def record_dataset_build(
    settings: Settings,
    sessions: sessionmaker[Session],
    actor: Actor | None,
    params: DatasetBuildParams,
) -> JobSummary:
    """Check a build request (:func:`check_dataset_build`) and record its job, queued.

    The job's ``params`` are the build's (:meth:`DatasetBuildParams.to_json`) and the ``role``
    they were checked with, which the worker acts with.

    Raises:
        PermissionDenied, NotFoundError, Conflict, InvalidInput: see :func:`check_dataset_build`.
    """
    actor, params = check_dataset_build(settings, sessions, actor, params)
    with sessions.begin() as session:
        return store.create_job(
            session, KIND, actor.username, {**params.to_json(), "role": str(actor.role)}
        )


def run_dataset_build_job(
    settings: Settings, sessions: sessionmaker[Session], job_id: int
) -> JobSummary | None:
    """Run queued dataset build ``job_id`` (the training queue's task): its phases and progress go
    to the job's row, the version's :func:`build_summary` is its result, a failure its error.

    Returns:
        The job as it ended; None when it was not queued any more (nothing was run).
    """

    def work(job: JobSummary, progress: JobProgress) -> dict[str, Any]:
        params = DatasetBuildParams.from_json(job.params)
        try:
            role = Role(str(job.params.get("role")))
        except ValueError:
            raise InvalidInput(f"job {job.id} names no role it was checked with") from None
        actor = Actor(username=job.requested_by, role=role)
        outcome = run_dataset_build(
            settings, sessions, actor, params, progress=progress, phase=progress.phase
        )
        return build_summary(outcome)

    return run_job(sessions, job_id, work)


def test_sets_of(texts: Sequence[str]) -> tuple[NamedTestSet, ...]:
    """Named test sets from ``NAME=ADVERTISER`` texts (``--test-set``).

    Raises:
        InvalidInput: a text that is not ``NAME=ADVERTISER``.
    """
    sets = []
    for text in texts:
        name, sep, advertiser = text.partition("=")
        if not sep or not name.strip() or not advertiser.strip():
            raise InvalidInput(f"--test-set must be NAME=ADVERTISER, got {text!r}")
        sets.append(NamedTestSet(name=name.strip(), advertiser=advertiser.strip()))
    return tuple(sets)


def _has_model(settings: Settings) -> bool:
    from tagging.ml.model import list_versions as model_versions

    return bool(model_versions(settings.models_dir))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parent(value: object) -> int | str | None:
    if value is None:
        return None
    if value == LATEST:
        return LATEST
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value)
    else:
        raise InvalidInput(f"a parent is a version number, 'latest' or none, got {value!r}")
    if number < 1:
        raise InvalidInput(f"a parent is a version number (1 or more), got {number}")
    return number


__all__ = [
    "FREEZING",
    "KIND",
    "RENDERING",
    "BuildOutcome",
    "DatasetBuildParams",
    "build_summary",
    "check_dataset_build",
    "record_dataset_build",
    "run_dataset_build",
    "run_dataset_build_job",
    "test_sets_of",
]
