"""Experiment tracking and the model registry, in MLflow.

Training code talks to :class:`ExperimentTracker` only: runs in an experiment (one per dataset
version, :func:`experiment_name`), their parameters, per-step metrics (loss and accuracy curves),
tags and artifacts (a model file, a JSON report), then registered model versions and the aliases
``champion`` and ``challenger``. :class:`MlflowTracker` is the implementation;
:func:`tracker_from_settings` builds it on ``Settings.mlflow_uri``: SQLite in the data dir
(``<data dir>/mlflow.sqlite``, artifacts in ``<data dir>/mlruns``), or any MLflow tracking server
or database named by ``MLFLOW_TRACKING_URI``. MLflow's own UI (``mlflow ui``) reads the same
store, so it shows the same runs.

Usage::

    tracker = tracker_from_settings(settings)
    with tracked_run(tracker, experiment_name(3), name="cnn-w32") as run_id:
        tracker.log_params(run_id, {"lr": 0.01, "epochs": 8})
        for epoch in range(8):
            tracker.log_metrics(run_id, {"loss": loss, "accuracy": acc}, step=epoch)
        tracker.log_artifact(run_id, model_file, "model")
        tracker.log_json(run_id, "report.json", report)
    version = tracker.register(run_id, "model", "image-type")
    tracker.set_alias("image-type", version, "challenger")

What MLflow does not keep (who promoted what, when and why, and what was in production at any
time) is Tagdesk's, in its own tables: this module only mirrors the aliases.

MLflow is imported on the first tracker, not with this module (it takes about 2 s), after its
environment is set: no telemetry (``MLFLOW_DISABLE_TELEMETRY``, ``DO_NOT_TRACK``), only warnings
on the console (``MLFLOW_LOGGING_LEVEL``), and HTTP calls bounded so that a server that is down
fails in seconds, not after MLflow's default of 7 retries over minutes. Every failure to use the
store is a :class:`tagging.errors.TaggingError`: :class:`TrackingUnavailable` (one line, no
credential), :class:`~tagging.errors.NotFoundError`, :class:`~tagging.errors.Conflict` or
:class:`~tagging.errors.InvalidInput`.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, get_args
from urllib.parse import urlsplit

import requests

from tagging.config import Settings
from tagging.errors import ConfigError, Conflict, InvalidInput, NotFoundError, TaggingError

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.entities.model_registry import ModelVersion, RegisteredModel
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

RunStatus = Literal["FINISHED", "FAILED", "KILLED"]
"""How a run ended (MLflow's terminal states)."""

Alias = Literal["champion", "challenger"]
"""The registry aliases Tagdesk uses: the model in production and the one up for promotion."""

ALIASES: tuple[Alias, ...] = get_args(Alias)

ParamValue = str | int | float | bool | None

HTTP_TIMEOUT_SECONDS = 10
"""Seconds MLflow waits for a tracking server to connect or answer, per try."""
HTTP_RETRIES = 2
"""Retries of a failed call to a tracking server (so 3 tries, about 2 s apart at most)."""

# Experiment and registered-model names double as folder names (the artifact location of a
# database store) and appear in MLflow filter strings, so they are kept to a safe alphabet.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# MLflow's batch limits per log_batch call.
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000
# MLflow waits this long for a new model version to leave PENDING_REGISTRATION (its default is
# 300 s); the open-source stores create versions READY at once.
_AWAIT_VERSION_SECONDS = 30
# The URI schemes served by a tracking server, which keeps the artifacts itself.
_SERVER_SCHEMES = frozenset({"http", "https", "databricks", "databricks-uc"})


class TrackingUnavailable(TaggingError):
    """MLflow's store cannot be used: the server is unreachable or failing, the database or the
    artifact folder cannot be written.

    It belongs to this module's interface (as ``ArchiveUnavailable`` to the archive's). Its
    message is one line that names the store without any credential.
    """

    code = "tracking_unavailable"
    http_status = 503


@dataclass(frozen=True)
class MetricPoint:
    """One logged value of a metric.

    Attributes:
        step: The step (the epoch, for training curves).
        value: The value.
        timestamp: When it was logged (UTC).
    """

    step: int
    value: float
    timestamp: datetime


@dataclass(frozen=True)
class RunRecord:
    """A run as the store holds it.

    Attributes:
        run_id: MLflow's run id.
        experiment: The experiment's name.
        name: The run's name.
        status: ``RUNNING``, ``SCHEDULED``, ``FINISHED``, ``FAILED`` or ``KILLED``.
        started_at: When it started (UTC).
        ended_at: When it ended; None while it runs.
        params: Its parameters (MLflow keeps them as strings).
        metrics: The latest value of each metric.
        tags: Its tags, without MLflow's own (``mlflow.*``).
        artifact_uri: Where its artifacts are.
    """

    run_id: str
    experiment: str
    name: str
    status: str
    started_at: datetime
    ended_at: datetime | None
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    artifact_uri: str


@dataclass(frozen=True)
class ModelVersionRecord:
    """A registered model version.

    Attributes:
        name: The registered model's name.
        version: Its version number (1, 2, ...).
        run_id: The run that produced it.
        source: The artifact it was registered from (``runs:/<run id>/<path>``).
        aliases: The aliases that point at it.
    """

    name: str
    version: int
    run_id: str | None
    source: str
    aliases: tuple[str, ...]


class ExperimentTracker(Protocol):
    """What training and comparison code needs from experiment tracking and the registry.

    Every method may raise :class:`TrackingUnavailable` (the store cannot be used); callers let
    it through, so that the action fails in one line.
    """

    @property
    def location(self) -> str:
        """The store, for messages: its URI without credentials."""
        ...

    def start_run(
        self, experiment: str, *, name: str | None = None, tags: Mapping[str, str] | None = None
    ) -> str:
        """Start a run in ``experiment`` (created when missing); returns its run id.

        Raises:
            InvalidInput: the experiment name is not ``[A-Za-z0-9._-]`` (at most 100).
            Conflict: the experiment was deleted in MLflow.
        """
        ...

    def log_params(self, run_id: str, params: Mapping[str, ParamValue]) -> None:
        """Record the run's parameters (strings in MLflow; a parameter cannot change later).

        Raises:
            InvalidInput: a name is unusable or a parameter was logged with another value.
        """
        ...

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], *, step: int) -> None:
        """Record one value of each metric at ``step`` (an epoch: the points of a curve)."""
        ...

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        """Set tags on the run (a tag set again is overwritten)."""
        ...

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        """Store a file or a folder as an artifact of the run, under ``artifact_path``.

        Raises:
            NotFoundError: ``path`` does not exist.
            InvalidInput: ``artifact_path`` is not a relative path inside the run.
        """
        ...

    def log_json(self, run_id: str, artifact_file: str, payload: Mapping[str, Any]) -> None:
        """Store ``payload`` as a JSON artifact (a report) at ``artifact_file``."""
        ...

    def end_run(self, run_id: str, status: RunStatus = "FINISHED") -> None:
        """Mark the run ended with ``status``."""
        ...

    def get_run(self, run_id: str) -> RunRecord:
        """The run, with its latest metrics.

        Raises:
            NotFoundError: no such run.
        """
        ...

    def metric_history(self, run_id: str, key: str) -> list[MetricPoint]:
        """Every logged value of one metric of the run, by step."""
        ...

    def list_runs(self, experiment: str) -> list[RunRecord]:
        """The runs of ``experiment``, newest first; empty when it does not exist."""
        ...

    def download_artifacts(self, run_id: str, artifact_path: str, dest: Path) -> Path:
        """Copy an artifact (file or folder) of the run into ``dest``; returns the local path.

        Raises:
            NotFoundError: the run has no such artifact.
        """
        ...

    def register(self, run_id: str, artifact_path: str, name: str) -> int:
        """Register the run's artifact as a new version of model ``name`` (created when
        missing); returns the version number.

        Raises:
            NotFoundError: the run or the artifact does not exist.
        """
        ...

    def set_alias(self, name: str, version: int, alias: Alias) -> None:
        """Point ``alias`` at ``version`` of model ``name`` (moving it from another version).

        Raises:
            InvalidInput: ``alias`` is not ``champion`` or ``challenger``.
            NotFoundError: no such model version.
        """
        ...

    def delete_alias(self, name: str, alias: Alias) -> None:
        """Remove ``alias`` from model ``name`` (nothing to do when it is not set)."""
        ...

    def get_alias(self, name: str, alias: Alias) -> ModelVersionRecord | None:
        """The version ``alias`` points at, or None (no such alias or model)."""
        ...

    def model_versions(self, name: str) -> list[ModelVersionRecord]:
        """Every version of model ``name``, newest first; empty when it does not exist."""
        ...


def experiment_name(dataset_version: int) -> str:
    """The experiment that holds the runs trained on a dataset version: ``dataset-<N>``."""
    return f"dataset-{dataset_version}"


def tracker_from_settings(settings: Settings) -> ExperimentTracker:
    """The tracker for ``settings.mlflow_uri``.

    A database store (the default SQLite in the data dir, or a database named by
    ``MLFLOW_TRACKING_URI``) keeps artifacts in ``settings.mlflow_artifacts_dir``; a tracking
    server keeps them where it is configured to. A server is not contacted yet; a database is
    opened (and created and migrated when new, which takes a few seconds).

    Raises:
        TrackingUnavailable: the database cannot be opened.
    """
    uri = settings.mlflow_uri
    scheme = urlsplit(uri).scheme.lower() or uri.lower()
    artifacts = None if scheme in _SERVER_SCHEMES else settings.mlflow_artifacts_dir
    return MlflowTracker(uri, artifacts_dir=artifacts)


@contextmanager
def tracked_run(
    tracker: ExperimentTracker,
    experiment: str,
    *,
    name: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> Iterator[str]:
    """Start a run and end it however the block ends: FINISHED, FAILED on an error, KILLED on
    Ctrl-C. Yields the run id.

    When the store fails while ending a run after an error, the error of the block is the one
    raised (the store's is logged).
    """
    run_id = tracker.start_run(experiment, name=name, tags=tags)
    try:
        yield run_id
    except BaseException as exc:
        status: RunStatus = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        try:
            tracker.end_run(run_id, status)
        except TaggingError as end_error:
            log.warning("could not mark MLflow run %s %s: %s", run_id, status, end_error)
        raise
    tracker.end_run(run_id, "FINISHED")


# --- MLflow's environment --------------------------------------------------------------------

# Set whatever the environment says: MLflow must never report usage from Tagdesk's processes.
_FORCED_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
# Set unless the operator chose otherwise (MLFLOW_LOGGING_LEVEL=INFO shows MLflow's chatter again).
_DEFAULT_ENV = {
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": str(HTTP_TIMEOUT_SECONDS),
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(HTTP_RETRIES),
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "GIT_PYTHON_REFRESH": "quiet",
}
_import_lock = threading.Lock()
_imported = False


def mlflow_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: ``os.environ``) with the MLflow settings this module runs under, for an
    ``mlflow`` subprocess (``mlflow ui``, ``mlflow server``): no telemetry, quiet, bounded HTTP."""
    env = dict(os.environ if base is None else base)
    for name, value in _DEFAULT_ENV.items():
        env.setdefault(name, value)
    env.update(_FORCED_ENV)
    return env


def _import_mlflow() -> None:
    """Set MLflow's environment, then import it (once per process).

    Telemetry is decided when ``mlflow`` is imported, so the variables come first.
    """
    global _imported
    with _import_lock:
        if _imported:
            return
        os.environ.update(mlflow_env())
        # MLflow's own deprecation notices (e.g. SQLAlchemy's, raised from MLflow's store on first
        # use) are MLflow's to fix, not an operator's: keep them off the console.
        for category in (DeprecationWarning, FutureWarning):
            warnings.filterwarnings("ignore", category=category, module=r"mlflow(\.|$)")

        import mlflow  # noqa: F401  (configures its loggers from the environment above)
        import mlflow.store.db.utils as db_utils

        # A database store that refuses connections is retried 10 times over about 100 s, with
        # no setting for it: once is enough to report it (a server's retries are set above).
        db_utils.MAX_RETRY_COUNT = 1
        # In case mlflow was imported before the environment was set (its loggers then say INFO).
        level = os.environ["MLFLOW_LOGGING_LEVEL"].upper()
        logging.getLogger("mlflow").setLevel(
            level if level in logging.getLevelNamesMapping() else logging.WARNING
        )
        _imported = True


# --- the MLflow implementation ---------------------------------------------------------------

T = TypeVar("T")


class MlflowTracker:
    """:class:`ExperimentTracker` on an MLflow tracking store and model registry.

    Args:
        uri: The tracking and registry URI: ``sqlite:///...``, ``postgresql://...``,
            ``http(s)://...`` (a tracking server).
        artifacts_dir: Where new experiments keep their artifacts (one folder per experiment),
            for a database store; None: the server's default (for a tracking server).
    """

    def __init__(self, uri: str, *, artifacts_dir: Path | None = None) -> None:
        _import_mlflow()
        from mlflow.tracking import MlflowClient

        self._uri = uri
        self._artifacts_dir = artifacts_dir
        # The client opens a database store at once (creating and migrating a new one), so a
        # database that cannot be used fails here, as one line.
        self._client: MlflowClient = self._call(
            "open the store", MlflowClient, tracking_uri=uri, registry_uri=uri
        )

    @property
    def location(self) -> str:
        """The store's URI with any user and password replaced by ``***``."""
        return _redact(self._uri)

    # runs ----------------------------------------------------------------------------------

    def start_run(
        self, experiment: str, *, name: str | None = None, tags: Mapping[str, str] | None = None
    ) -> str:
        """Start a run in ``experiment`` (created when missing); returns its run id.

        Raises:
            InvalidInput: the experiment name is not ``[A-Za-z0-9._-]`` (at most 100).
            Conflict: the experiment was deleted in MLflow.
        """
        experiment_id = self._experiment_id(experiment, create=True)
        assert experiment_id is not None  # created when missing
        run = self._call(
            f"start a run in {experiment}",
            self._client.create_run,
            experiment_id,
            tags=dict(tags or {}),
            run_name=name,
        )
        return str(run.info.run_id)

    def log_params(self, run_id: str, params: Mapping[str, ParamValue]) -> None:
        """Record the run's parameters (strings in MLflow; a parameter cannot change later).

        Raises:
            InvalidInput: a name is unusable or a parameter was logged with another value.
        """
        from mlflow.entities import Param

        items = [Param(key, _param_text(value)) for key, value in params.items()]
        for start in range(0, len(items), _PARAMS_PER_BATCH):
            self._call(
                "log parameters",
                self._client.log_batch,
                run_id,
                params=items[start : start + _PARAMS_PER_BATCH],
            )

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], *, step: int) -> None:
        """Record one value of each metric at ``step`` (an epoch: the points of a curve).

        Raises:
            InvalidInput: ``step`` is negative or a metric name is unusable.
        """
        from mlflow.entities import Metric

        if step < 0:
            raise InvalidInput(f"a metric's step must be 0 or more, got {step}")
        now = _now_ms()
        items = [Metric(key, float(value), now, step) for key, value in metrics.items()]
        for start in range(0, len(items), _METRICS_PER_BATCH):
            self._call(
                "log metrics",
                self._client.log_batch,
                run_id,
                metrics=items[start : start + _METRICS_PER_BATCH],
            )

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        """Set tags on the run (a tag set again is overwritten)."""
        from mlflow.entities import RunTag

        items = [RunTag(key, str(value)) for key, value in tags.items()]
        for start in range(0, len(items), _PARAMS_PER_BATCH):
            self._call(
                "set tags",
                self._client.log_batch,
                run_id,
                tags=items[start : start + _PARAMS_PER_BATCH],
            )

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        """Store a file or a folder as an artifact of the run, under ``artifact_path``.

        A folder is stored with its contents under ``artifact_path``.

        Raises:
            NotFoundError: ``path`` does not exist.
            InvalidInput: ``artifact_path`` is not a relative path inside the run.
        """
        target = _artifact_path(artifact_path) if artifact_path else None
        if path.is_dir():
            self._call(
                f"store artifact {path.name}",
                self._client.log_artifacts,
                run_id,
                str(path),
                target,
            )
        elif path.is_file():
            self._call(
                f"store artifact {path.name}",
                self._client.log_artifact,
                run_id,
                str(path),
                target,
            )
        else:
            raise NotFoundError(f"no file or folder {path} to store as an artifact")

    def log_json(self, run_id: str, artifact_file: str, payload: Mapping[str, Any]) -> None:
        """Store ``payload`` as a JSON artifact (a report) at ``artifact_file``.

        Raises:
            InvalidInput: ``artifact_file`` is not a relative ``.json`` path inside the run.
        """
        target = _artifact_path(artifact_file)
        if not target.endswith(".json"):
            raise InvalidInput(f"a JSON artifact's name ends in .json, got {artifact_file!r}")
        self._call(f"store {target}", self._client.log_dict, run_id, dict(payload), target)

    def end_run(self, run_id: str, status: RunStatus = "FINISHED") -> None:
        """Mark the run ended with ``status``.

        Raises:
            InvalidInput: ``status`` is not FINISHED, FAILED or KILLED.
        """
        if status not in get_args(RunStatus):
            raise InvalidInput(f"a run ends FINISHED, FAILED or KILLED, not {status!r}")
        self._call("end the run", self._client.set_terminated, run_id, status)

    def get_run(self, run_id: str) -> RunRecord:
        """The run, with its latest metrics.

        Raises:
            NotFoundError: no such run.
        """
        run = self._call(f"read run {run_id}", self._client.get_run, run_id)
        experiment = self._call(
            "read the run's experiment", self._client.get_experiment, run.info.experiment_id
        )
        return _run_record(run, str(experiment.name))

    def metric_history(self, run_id: str, key: str) -> list[MetricPoint]:
        """Every logged value of one metric of the run, by step (then time)."""
        history = self._call(f"read metric {key}", self._client.get_metric_history, run_id, key)
        points = [MetricPoint(int(m.step), float(m.value), _datetime(m.timestamp)) for m in history]
        return sorted(points, key=lambda p: (p.step, p.timestamp))

    def list_runs(self, experiment: str) -> list[RunRecord]:
        """The runs of ``experiment``, newest first; empty when it does not exist."""
        experiment_id = self._experiment_id(experiment, create=False)
        if experiment_id is None:
            return []
        runs: list[RunRecord] = []
        token: str | None = None
        while True:
            page = self._call(
                f"list the runs of {experiment}",
                self._client.search_runs,
                [experiment_id],
                order_by=["attributes.start_time DESC"],
                page_token=token,
            )
            runs.extend(_run_record(run, experiment) for run in page)
            token = page.token
            if not token:
                return runs

    def download_artifacts(self, run_id: str, artifact_path: str, dest: Path) -> Path:
        """Copy an artifact (file or folder) of the run into ``dest``; returns the local path.

        Raises:
            NotFoundError: the run has no such artifact.
        """
        source = _artifact_path(artifact_path)
        self._require_artifact(run_id, source)
        dest.mkdir(parents=True, exist_ok=True)
        local = self._call(
            f"download {source}", self._client.download_artifacts, run_id, source, str(dest)
        )
        return Path(local)

    # registry ------------------------------------------------------------------------------

    def register(self, run_id: str, artifact_path: str, name: str) -> int:
        """Register the run's artifact as a new version of model ``name`` (created when
        missing); returns the version number.

        Raises:
            InvalidInput: the model name is not ``[A-Za-z0-9._-]`` (at most 100).
            NotFoundError: the run or the artifact does not exist.
        """
        _check_name("model", name)
        source = _artifact_path(artifact_path)
        # MLflow registers any path without looking; a mistyped one would be a version that
        # cannot be loaded.
        self._require_artifact(run_id, source)
        with suppress(Conflict):  # registered before: this is a new version of it
            self._call(f"create model {name}", self._client.create_registered_model, name)
        version = self._call(
            f"register a version of {name}",
            self._client.create_model_version,
            name,
            f"runs:/{run_id}/{source}",
            run_id=run_id,
            await_creation_for=_AWAIT_VERSION_SECONDS,
        )
        return int(version.version)

    def set_alias(self, name: str, version: int, alias: Alias) -> None:
        """Point ``alias`` at ``version`` of model ``name`` (moving it from another version).

        Raises:
            InvalidInput: ``alias`` is not ``champion`` or ``challenger``.
            NotFoundError: no such model version.
        """
        _check_alias(alias)
        # MLflow accepts an alias for a version that does not exist (on some stores): check first.
        self._call(
            f"read version {version} of {name}", self._client.get_model_version, name, str(version)
        )
        self._call(
            f"set {alias} on {name} version {version}",
            self._client.set_registered_model_alias,
            name,
            alias,
            str(version),
        )

    def delete_alias(self, name: str, alias: Alias) -> None:
        """Remove ``alias`` from model ``name`` (nothing to do when it is not set)."""
        _check_alias(alias)
        with suppress(NotFoundError):
            self._call(
                f"remove {alias} from {name}",
                self._client.delete_registered_model_alias,
                name,
                alias,
            )

    def get_alias(self, name: str, alias: Alias) -> ModelVersionRecord | None:
        """The version ``alias`` points at, or None (no such alias or model)."""
        _check_alias(alias)
        # Read through the model's aliases: a missing alias is an error whose code differs
        # between a database store and a server, a missing model the same as a bad name.
        model = self._registered_model(name)
        if model is None:
            return None
        version = (model.aliases or {}).get(alias)
        if version is None:
            return None
        found = self._call(
            f"read version {version} of {name}", self._client.get_model_version, name, str(version)
        )
        return _version_record(found, _aliases_by_version(model).get(int(version), ()))

    def model_versions(self, name: str) -> list[ModelVersionRecord]:
        """Every version of model ``name``, newest first; empty when it does not exist."""
        model = self._registered_model(name)
        if model is None:
            return []
        versions = self._call(
            f"list the versions of {name}",
            self._client.search_model_versions,
            f"name = '{name}'",  # safe: the name was checked against _NAME_RE
        )
        # A search leaves the versions' aliases out (the SQL store does): the model has them.
        aliases = _aliases_by_version(model)
        records = [_version_record(v, aliases.get(int(v.version), ())) for v in versions]
        return sorted(records, key=lambda record: -record.version)

    # helpers -------------------------------------------------------------------------------

    def _experiment_id(self, experiment: str, *, create: bool) -> str | None:
        """The experiment's id; created (when ``create``) with its artifact folder."""
        _check_name("experiment", experiment)
        found = self._call(
            f"read experiment {experiment}", self._client.get_experiment_by_name, experiment
        )
        if found is not None:
            if found.lifecycle_stage == "deleted":
                raise Conflict(
                    f"MLflow experiment {experiment} was deleted: restore it in MLflow's UI "
                    "(or `mlflow experiments restore`) to add runs to it"
                )
            return str(found.experiment_id)
        if not create:
            return None
        location = (
            (self._artifacts_dir / experiment).resolve().as_uri() if self._artifacts_dir else None
        )
        try:
            return str(
                self._call(
                    f"create experiment {experiment}",
                    self._client.create_experiment,
                    experiment,
                    artifact_location=location,
                )
            )
        except Conflict:  # another process created it meanwhile
            return self._experiment_id(experiment, create=False)

    def _registered_model(self, name: str) -> RegisteredModel | None:
        """The registered model ``name``, or None when there is none."""
        _check_name("model", name)
        try:
            return self._call(f"read model {name}", self._client.get_registered_model, name)
        except NotFoundError:
            return None

    def _require_artifact(self, run_id: str, artifact_path: str) -> None:
        """Raise NotFoundError unless the run has ``artifact_path`` (a file or a folder)."""
        parent = str(PurePosixPath(artifact_path).parent)
        listed = self._call(
            f"list the artifacts of run {run_id}",
            self._client.list_artifacts,
            run_id,
            None if parent == "." else parent,
        )
        if not any(info.path == artifact_path for info in listed):
            raise NotFoundError(f"run {run_id} has no artifact {artifact_path}")

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, with MLflow's, the network's and the database's failures
        turned into Tagdesk's errors (``what`` says what was being done, for the message)."""
        try:
            return fn(*args, **kwargs)
        except TaggingError:
            raise
        except Exception as exc:
            error = self._translate(exc, what)
            if error is None:
                raise  # a programming error: not the store's fault, so not hidden behind it
            raise error from exc

    def _translate(self, exc: Exception, what: str) -> TaggingError | None:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking.registry import UnsupportedModelRegistryStoreURIException

        where = self.location
        if isinstance(exc, UnsupportedModelRegistryStoreURIException):
            return ConfigError(f"MLflow cannot use {where} as a model registry")
        if isinstance(exc, MlflowException) and not _cause(exc, _NETWORK_ERRORS):
            message = _one_line(str(exc.message))
            code = exc.error_code
            if code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
                return NotFoundError(f"MLflow could not {what}: {message}")
            if code == "RESOURCE_ALREADY_EXISTS":
                return Conflict(f"MLflow could not {what}: {message}")
            if code in ("INVALID_PARAMETER_VALUE", "BAD_REQUEST", "INVALID_STATE"):
                return InvalidInput(f"MLflow could not {what}: {message}")
            if code in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
                return TrackingUnavailable(f"MLflow at {where} refused to {what}: {message}")
            return TrackingUnavailable(f"MLflow at {where} failed to {what}: {message}")
        if timeout := _cause(exc, (requests.Timeout,)):
            reason = f"no answer within {HTTP_TIMEOUT_SECONDS} s ({type(timeout).__name__})"
            return TrackingUnavailable(f"MLflow at {where} is unreachable: {reason}")
        if _cause(exc, (requests.ConnectionError,)):
            return TrackingUnavailable(
                f"MLflow at {where} is unreachable: cannot connect (tried {HTTP_RETRIES + 1} times)"
            )
        if isinstance(exc, MlflowException | requests.RequestException):
            return TrackingUnavailable(f"MLflow at {where} failed to {what}: {_one_line(str(exc))}")
        if database := _database_error(exc):
            detail = _one_line(str(getattr(database, "orig", None) or database))
            return TrackingUnavailable(f"MLflow's database {where} cannot be used: {detail}")
        if isinstance(exc, OSError):  # the database's or the artifacts' folder
            return TrackingUnavailable(f"MLflow at {where} failed to {what}: {_one_line(str(exc))}")
        if isinstance(exc, ImportError):  # e.g. mysql:// without its driver installed
            return ConfigError(f"MLflow cannot use {where}: {_one_line(str(exc))}")
        return None


_NETWORK_ERRORS: tuple[type[BaseException], ...] = (requests.ConnectionError, requests.Timeout)


def _cause(exc: BaseException, types: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first exception of ``types`` in ``exc``'s chain (MLflow often drops ``from``, so the
    implicit ``__context__`` is followed too)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, types):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _database_error(exc: BaseException) -> BaseException | None:
    """A SQLAlchemy error in ``exc``'s chain, recognised by its module: ``tagging.ml`` may not
    import SQLAlchemy (the ML library needs no database of Tagdesk's; MLflow's is MLflow's)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if type(current).__module__.startswith("sqlalchemy."):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


_USERINFO_RE = re.compile(r"(?<=//)[^/@\s]+@")


def _redact(text: str) -> str:
    """``text`` with any ``user:password@`` of a URL replaced by ``***@``."""
    return _USERINFO_RE.sub("***@", text)


def _one_line(text: str, limit: int = 300) -> str:
    """The first non-empty line of ``text``, credentials redacted, at most ``limit`` chars."""
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    line = _redact(line)
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _check_name(kind: str, name: str) -> None:
    if not _NAME_RE.fullmatch(name):
        raise InvalidInput(
            f"an MLflow {kind} name is letters, digits, '.', '_' and '-' (at most 100, "
            f"starting with a letter or digit), got {name!r:.120}"
        )


def _check_alias(alias: str) -> None:
    if alias not in ALIASES:
        raise InvalidInput(f"the registry aliases are {' and '.join(ALIASES)}, not {alias!r:.40}")


def _artifact_path(path: str) -> str:
    """``path`` as a clean relative POSIX path inside a run.

    Raises:
        InvalidInput: it is empty, absolute, or climbs out with ``..``.
    """
    pure = PurePosixPath(path.strip())
    if (
        not path.strip()
        or "\\" in path
        or pure.is_absolute()
        or ".." in pure.parts
        or str(pure) == "."
    ):
        raise InvalidInput(f"an artifact path is relative, inside the run, got {path!r:.120}")
    return str(pure)


def _param_text(value: ParamValue) -> str:
    """A parameter as MLflow stores it: a string (booleans as ``true``/``false``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _run_record(run: Run, experiment: str) -> RunRecord:
    info, data = run.info, run.data
    return RunRecord(
        run_id=str(info.run_id),
        experiment=experiment,
        name=str(info.run_name or ""),
        status=str(info.status),
        started_at=_datetime(int(info.start_time)),
        ended_at=_datetime(int(info.end_time)) if info.end_time else None,
        params=dict(data.params),
        metrics={key: float(value) for key, value in data.metrics.items()},
        tags={k: v for k, v in data.tags.items() if not k.startswith("mlflow.")},
        artifact_uri=str(info.artifact_uri),
    )


def _aliases_by_version(model: RegisteredModel) -> dict[int, list[str]]:
    """The model's aliases, grouped by the version each points at."""
    grouped: dict[int, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        grouped.setdefault(int(version), []).append(str(alias))
    return grouped


def _version_record(
    version: ModelVersion, aliases: Iterable[str] | None = None
) -> ModelVersionRecord:
    return ModelVersionRecord(
        name=str(version.name),
        version=int(version.version),
        run_id=version.run_id or None,
        source=str(version.source),
        aliases=tuple(sorted((version.aliases or ()) if aliases is None else aliases)),
    )
