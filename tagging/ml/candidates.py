"""Train Image Type candidates from a frozen dataset version, and compare them with production.

A **grid** is a list of :class:`CandidateConfig` (architecture and width, input size, learning
rate, epochs, batch size, augmentation, seed, starting weights): :data:`QUICK` (4 candidates that
train in a few minutes on the demo's dataset, for the demo and tests), :data:`DEFAULT` (6, longer:
about 15 to 30 minutes on a 2-core machine), or a TOML file (:func:`grid_from_toml`)::

    [defaults]            # optional: applied to every candidate
    epochs = 6

    [[candidate]]
    architecture = "resnet18"
    width = 16
    lr = 0.003

Every key is checked where the grid is read (:class:`~tagging.errors.InvalidInput` naming it), so
a bad grid fails before any job is queued.

:func:`train_grid` does the work for a :class:`TrainingSet` read from a version
(:func:`training_set`):

* **training data**: the version's train split only. Each row's bytes come from the archive,
  decoded by serving's :func:`~tagging.ingest.images.decode_image`, cropped to the row's crop box
  when the manifest has one, resized as serving resizes
  (:func:`~tagging.ml.transforms.resize_to_array`), and held in memory as ``uint8``. A stratified
  slice of it (``val_fraction`` of each class) is the validation set that draws the per-epoch
  curves; the test split is never trained or tuned on.
* **per epoch**: train loss, validation loss and validation accuracy go to the listener
  (:class:`TrainingListener`: the job's result, the CLI's bars) and to MLflow.
* **evaluation** of each candidate and of the production model on the version's test split, on
  each named per-advertiser test set of the version (its test rows of that advertiser) and on the
  robustness set (:mod:`tagging.ml.robustness`; its generator, version and seed are recorded).
  Metrics: accuracy, per-class precision, recall and F1, the confusion matrix, the expected
  calibration error, and inference images/s on this machine (batch 64, as served).
* **artifacts**: each candidate is saved in ``models_dir`` (never promoted) and logged to MLflow:
  one experiment per dataset version (``dataset-N``), one run per candidate with its parameters,
  curves, evaluation metrics and artifact, registered as a version of the model
  :data:`REGISTERED_MODEL`. The best candidate (:func:`best_candidate`) gets the ``challenger``
  alias; ``champion`` and the ``PRODUCTION`` file are left alone.

The augmentations (:class:`~tagging.ml.transforms.Augment`) model photographic nuisances in
general; the robustness set is generated only to evaluate, never to make training data.
"""

from __future__ import annotations

import math
import re
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from db.vocab import IMAGE_TYPES
from tagging.curation.crop import crop_image
from tagging.curation.manifest import Manifest, ManifestRow
from tagging.curation.split import NamedTestSet
from tagging.datasets.archive import ArchiveStore
from tagging.errors import ImageDecodeError, InvalidInput, ModelError, NotFoundError
from tagging.ingest.images import decode_image
from tagging.ml.architectures import ARCHITECTURES, SMALL_CNN, build_architecture, load_init_weights
from tagging.ml.evaluate import (
    EvaluationReport,
    LabelledImage,
    evaluate_type_model,
    images_per_second,
)
from tagging.ml.inference import load_any
from tagging.ml.model import TypeNet, production_version, save_artifact
from tagging.ml.robustness import RobustnessConfig, generate_robustness_set
from tagging.ml.tracking import ExperimentTracker, experiment_name, tracked_run
from tagging.ml.train import stratified_split
from tagging.ml.transforms import Augment, resize_to_array, stack_arrays, to_model_input

AUGMENTS = ("none", "basic", "strong")
"""``augment`` values: none, the synthetic trainer's light :class:`Augment`, or
:meth:`Augment.strong` (zoom, off-centre, tilt, light, white balance, gray, blur, noise, JPEG)."""

MAX_CANDIDATES = 8
"""The most candidates one grid may hold."""

REGISTERED_MODEL = "image-type"
"""The MLflow registered model every candidate becomes a version of."""

TEST = "test"
"""Evaluation set name of the version's test split."""
ROBUSTNESS = "robustness"
"""Evaluation set name of the robustness set."""
NAMED_PREFIX = "named/"
"""Prefix of a named per-advertiser test set's evaluation name (``named/summit``)."""

PRODUCTION = "production"
"""The production model's name in results."""

DEFAULT_ROBUSTNESS = RobustnessConfig(seed=13, n_per_class=100)
"""The robustness set every comparison uses unless told otherwise (300 images)."""

_SAFE_KEY = re.compile(r"[^A-Za-z0-9_.-]+")


def _integer(key: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{key} must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise InvalidInput(f"{key} must be from {low} to {high}, got {value}")
    return value


def _number(key: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{key} must be a number, got {value!r}")
    if not low <= float(value) <= high:
        raise InvalidInput(f"{key} must be from {low} to {high}, got {value}")
    return float(value)


def _not_a_table(index: int) -> CandidateConfig:
    raise InvalidInput(f"candidate {index + 1} must be a table of settings")


# --- configurations and grids --------------------------------------------------------------------


@dataclass(frozen=True)
class CandidateConfig:
    """One candidate of a grid.

    Attributes:
        architecture: A key of :data:`tagging.ml.architectures.ARCHITECTURES`.
        width: Channels of the first layer; ``None`` for the architecture's default.
        input_size: Square input side in pixels (32 to 256).
        lr: Peak learning rate of the one-cycle schedule (AdamW).
        epochs: Passes over the training rows (1 to 100).
        batch_size: Images per optimizer step (2 to 1024).
        augment: One of :data:`AUGMENTS`.
        seed: Seeds the initialization, the validation slice, shuffling and augmentation.
        init_weights: A local state-dict file to start from (e.g. ImageNet-pretrained), or
            ``None`` to train from scratch. Nothing is ever downloaded.
        weight_decay: AdamW weight decay.
        label_smoothing: Cross-entropy label smoothing.
        name: How lists show it; made from the parameters when empty.

    Raises:
        InvalidInput: A value of the wrong type or out of range, naming the key.
    """

    architecture: str = SMALL_CNN
    width: int | None = None
    input_size: int = 64
    lr: float = 0.01
    epochs: int = 8
    batch_size: int = 64
    augment: str = "strong"
    seed: int = 1
    init_weights: str | None = None
    weight_decay: float = 5e-4
    label_smoothing: float = 0.05
    name: str = ""

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise InvalidInput(
                f"architecture must be one of {sorted(ARCHITECTURES)}, got {self.architecture!r}"
            )
        width = ARCHITECTURES[self.architecture].default_width if self.width is None else self.width
        object.__setattr__(self, "width", _integer("width", width, 1, 512))
        _integer("input_size", self.input_size, 32, 256)
        _integer("epochs", self.epochs, 1, 100)
        _integer("batch_size", self.batch_size, 2, 1024)
        _integer("seed", self.seed, 0, 2**32 - 1)
        object.__setattr__(self, "lr", _number("lr", self.lr, 1e-6, 1.0))
        object.__setattr__(self, "weight_decay", _number("weight_decay", self.weight_decay, 0, 1))
        object.__setattr__(
            self, "label_smoothing", _number("label_smoothing", self.label_smoothing, 0, 0.5)
        )
        if self.augment not in AUGMENTS:
            raise InvalidInput(f"augment must be one of {list(AUGMENTS)}, got {self.augment!r}")
        if self.init_weights is not None and (
            not isinstance(self.init_weights, str) or not self.init_weights.strip()
        ):
            raise InvalidInput(f"init_weights must be a file path, got {self.init_weights!r}")
        if not isinstance(self.name, str):
            raise InvalidInput(f"name must be text, got {self.name!r}")
        if not self.name:
            pretrained = "-init" if self.init_weights else ""
            object.__setattr__(
                self,
                "name",
                f"{self.architecture}-w{self.width}-{self.input_size}px-{self.augment}{pretrained}",
            )

    @property
    def resolved_width(self) -> int:
        """The width (never ``None`` once created)."""
        assert self.width is not None
        return self.width

    def augmentation(self) -> Augment | None:
        """The :class:`Augment` this candidate trains with, or ``None``."""
        if self.augment == "none":
            return None
        return Augment.strong() if self.augment == "strong" else Augment()

    def to_dict(self) -> dict[str, Any]:
        """JSON form (a job's parameters, the artifact's ``train_config``, MLflow's params)."""
        return asdict(self)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "candidate") -> CandidateConfig:
        """A candidate from a TOML table or JSON object.

        Raises:
            InvalidInput: An unknown key or a bad value, naming ``where`` and the key.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInput(
                f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})"
            )
        try:
            return cls(**dict(data))
        except InvalidInput as exc:
            raise InvalidInput(f"{where}: {exc}") from None


QUICK: tuple[CandidateConfig, ...] = (
    CandidateConfig(SMALL_CNN, 8, 64, lr=0.01, epochs=8, augment="basic"),
    CandidateConfig(SMALL_CNN, 8, 64, lr=0.01, epochs=8, augment="strong"),
    CandidateConfig("resnet18", 16, 64, lr=0.003, epochs=5, augment="strong"),
    CandidateConfig("mobilenet_v3_small", 16, 64, lr=0.003, epochs=4, augment="strong"),
)
"""The quick grid: 4 candidates, a few minutes on the demo's dataset on 2 cores (README)."""

DEFAULT: tuple[CandidateConfig, ...] = (
    CandidateConfig(SMALL_CNN, 8, 64, lr=0.01, epochs=12, augment="basic"),
    CandidateConfig(SMALL_CNN, 16, 64, lr=0.01, epochs=14, augment="strong"),
    CandidateConfig("resnet18", 16, 64, lr=0.003, epochs=12, augment="strong"),
    CandidateConfig("resnet18", 32, 96, lr=0.002, epochs=10, augment="strong"),
    CandidateConfig("mobilenet_v3_small", 16, 64, lr=0.003, epochs=12, augment="strong"),
    CandidateConfig("mobilenet_v3_small", 16, 96, lr=0.002, epochs=10, augment="strong", seed=2),
)
"""The default grid: 6 candidates, longer (about 15 to 30 minutes on 2 cores)."""

GRIDS: dict[str, tuple[CandidateConfig, ...]] = {"quick": QUICK, "default": DEFAULT}
"""The named grids."""


@dataclass(frozen=True)
class Grid:
    """The candidates one training job trains.

    Attributes:
        name: ``quick``, ``default`` or the TOML file's name.
        candidates: 1 to :data:`MAX_CANDIDATES` configurations, names unique.
    """

    name: str
    candidates: tuple[CandidateConfig, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.candidates) <= MAX_CANDIDATES:
            raise InvalidInput(
                f"a grid holds 1 to {MAX_CANDIDATES} candidates, got {len(self.candidates)}"
            )
        names = [c.name for c in self.candidates]
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise InvalidInput(f"two candidates are named {name!r}: give one a name")
            seen.add(name)

    def with_init_weights(self, path: str | None) -> Grid:
        """Every candidate of a torchvision architecture starting from ``path``
        (``--init-weights``); the small CNN trains from scratch. ``None``: unchanged."""
        if path is None:
            return self
        return replace(
            self,
            candidates=tuple(
                c
                if c.architecture == SMALL_CNN
                else replace(c, init_weights=path, name=f"{c.name}-init" if c.name else "")
                for c in self.candidates
            ),
        )

    def to_json(self) -> dict[str, Any]:
        """JSON form (a job's parameters): the whole grid, so a worker never rereads a file."""
        return {"name": self.name, "candidates": [c.to_dict() for c in self.candidates]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Grid:
        """The grid :meth:`to_json` wrote.

        Raises:
            InvalidInput: Not what :meth:`to_json` writes.
        """
        candidates = data.get("candidates")
        if not isinstance(candidates, list):
            raise InvalidInput("a grid's candidates must be a list")
        return cls(
            name=str(data.get("name", "grid")),
            candidates=tuple(
                CandidateConfig.from_mapping(c, f"candidate {i + 1}")
                if isinstance(c, Mapping)
                else _not_a_table(i)
                for i, c in enumerate(candidates)
            ),
        )


def load_grid(spec: str) -> Grid:
    """``quick``, ``default`` or a TOML file's path (see the module docstring).

    Raises:
        InvalidInput: Neither a grid name nor a readable, valid TOML grid.
    """
    if spec in GRIDS:
        return Grid(spec, GRIDS[spec])
    path = Path(spec)
    if path.suffix.lower() != ".toml":
        raise InvalidInput(f"--grid is quick, default or a .toml file, got {spec!r}")
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidInput(f"cannot read grid {path}: {exc.strerror or exc}") from None
    return grid_from_toml(text, name=path.name)


def grid_from_toml(text: str, *, name: str = "grid.toml") -> Grid:
    """Parse a TOML grid: an optional ``[defaults]`` table and ``[[candidate]]`` tables.

    Raises:
        InvalidInput: Not TOML, an unknown top-level key, no candidate, or a candidate's unknown
            key or bad value (named, with the candidate's position).
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"{name} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"defaults", "candidate"})
    if unknown:
        raise InvalidInput(f"{name}: unknown key {unknown[0]!r} (expected defaults, candidate)")
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise InvalidInput(f"{name}: defaults must be a table")
    tables = data.get("candidate")
    if not isinstance(tables, list) or not tables:
        raise InvalidInput(f"{name}: no [[candidate]] table")
    CandidateConfig.from_mapping(
        {"architecture": SMALL_CNN, **defaults}, f"{name} [defaults]"
    )  # a bad default is named as such, not as every candidate's
    candidates = []
    for i, table in enumerate(tables):
        if not isinstance(table, dict):
            _not_a_table(i)
        candidates.append(
            CandidateConfig.from_mapping({**defaults, **table}, f"{name} candidate {i + 1}")
        )
    return Grid(name, tuple(candidates))


def check_init_weights(grid: Grid) -> None:
    """Check every candidate's starting weights now: the file exists and fits its network.

    Raises:
        ModelError: A missing file, or weights that do not fit (one line naming the candidate).
    """
    for candidate in grid.candidates:
        if candidate.init_weights is None:
            continue
        model = build_architecture(
            candidate.architecture, len(IMAGE_TYPES), candidate.resolved_width
        )
        try:
            load_init_weights(model, Path(candidate.init_weights))
        except ModelError as exc:
            raise ModelError(f"candidate {candidate.name}: {exc}") from None


# --- the data ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """One decoded, cropped image of a version and its truth.

    Attributes:
        row: The manifest row.
        image: The picture as serving decodes it, cropped to the row's box.
    """

    row: ManifestRow
    image: Image.Image


@dataclass(frozen=True)
class TrainingSet:
    """What a grid trains and evaluates on, read from one frozen version.

    Attributes:
        version: The dataset version's number.
        train: The train split's examples.
        test: The test split's examples.
        named_test_sets: The version's named per-advertiser test sets.
        skipped: Rows left out, by reason (``not archived``, ``undecodable``).
    """

    version: int
    train: tuple[Example, ...]
    test: tuple[Example, ...]
    named_test_sets: tuple[NamedTestSet, ...] = ()
    skipped: dict[str, int] = field(default_factory=dict)

    def counts(self) -> dict[str, dict[str, int]]:
        """Examples per split and class."""
        return {
            split: {k: sum(e.row.image_type == k for e in examples) for k in IMAGE_TYPES}
            for split, examples in (("train", self.train), ("test", self.test))
        }

    def evaluation_sets(self) -> dict[str, list[LabelledImage]]:
        """The test split and each named set (its advertiser's test rows), labelled."""
        sets = {TEST: [_labelled(e) for e in self.test]}
        for named in self.named_test_sets:
            sets[NAMED_PREFIX + named.name] = [
                _labelled(e) for e in self.test if e.row.advertiser == named.advertiser
            ]
        return sets


def training_set(
    manifest: Manifest,
    archive: ArchiveStore,
    *,
    version: int,
    named_test_sets: Sequence[NamedTestSet] = (),
) -> TrainingSet:
    """Read a version's included train and test rows from the archive, as serving decodes them.

    Raises:
        InvalidInput: The train split lacks a class, or nothing is left to test on.
    """
    skipped: dict[str, int] = {}
    splits: dict[str, list[Example]] = {"train": [], "test": []}
    for row in manifest.included():
        if row.split not in splits:
            continue
        try:
            picture = decode_image(archive.get(row.sha256)).image
        except NotFoundError:
            skipped["not archived"] = skipped.get("not archived", 0) + 1
            continue
        except ImageDecodeError:
            skipped["undecodable"] = skipped.get("undecodable", 0) + 1
            continue
        splits[str(row.split)].append(Example(row, _cropped(picture, row)))
    missing = [k for k in IMAGE_TYPES if not any(e.row.image_type == k for e in splits["train"])]
    if missing:
        raise InvalidInput(
            f"dataset version {version}'s train split has no {', '.join(missing)} image: "
            "a candidate could never learn it"
        )
    if not splits["test"]:
        raise InvalidInput(f"dataset version {version} has no test image to evaluate on")
    return TrainingSet(
        version=version,
        train=tuple(splits["train"]),
        test=tuple(splits["test"]),
        named_test_sets=tuple(named_test_sets),
        skipped=skipped,
    )


def _cropped(picture: Image.Image, row: ManifestRow) -> Image.Image:
    if row.crop is None:
        return picture
    # The decode may be draft-scaled: the box is in the stored size's pixels.
    sx, sy = picture.width / max(row.width, 1), picture.height / max(row.height, 1)
    left, top, right, bottom = row.crop
    box = (int(left * sx), int(top * sy), max(int(right * sx), 1), max(int(bottom * sy), 1))
    return crop_image(picture, box)


def _labelled(example: Example) -> LabelledImage:
    return LabelledImage(
        example.image, example.row.image_type, example.row.color, example.row.sha256
    )


# --- progress ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EpochPoint:
    """One point of a candidate's live curves.

    Attributes:
        epoch: 1-based.
        train_loss: Mean training loss over the epoch's steps.
        val_loss: Loss on the validation slice (no augmentation, eval mode).
        val_accuracy: Accuracy on the validation slice.
        seconds: Wall time of the epoch.
    """

    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    seconds: float


class TrainingListener:
    """Told how a grid goes (every method a no-op here: override what you show).

    The job writes it to its row (:mod:`tagging.jobs.training`), the CLI to progress bars.
    """

    def phase(self, name: str) -> None:
        """A phase starts: ``reading dataset``, ``candidate 2/4: resnet18…``, ``evaluating…``."""

    def step(self, done: int, total: int) -> None:
        """``done`` of ``total`` in the current phase (optimizer steps while training)."""

    def epoch(self, index: int, candidate: CandidateConfig, point: EpochPoint) -> None:
        """Candidate ``index`` (0-based) finished an epoch."""

    def candidate_done(self, index: int, result: CandidateResult) -> None:
        """Candidate ``index`` is trained, evaluated and saved."""


# --- results -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CandidateResult:
    """One trained and evaluated candidate.

    Attributes:
        config: Its configuration.
        version: Its artifact's version in ``models_dir`` (not promoted).
        curves: Its epochs' points.
        evaluations: Metrics per evaluation set (:func:`metrics_of`).
        images_per_second: Inference throughput, batch 64, as served.
        parameters: Number of trainable parameters.
        seconds: Wall time: ``train``, ``evaluate``.
        init_weights: What the starting weights did (a line), or ``None``.
        run_id: Its MLflow run, ``None`` without tracking.
        registered_version: Its version of :data:`REGISTERED_MODEL`, ``None`` without tracking.
    """

    config: CandidateConfig
    version: str
    curves: list[EpochPoint]
    evaluations: dict[str, dict[str, Any]]
    images_per_second: float
    parameters: int
    seconds: dict[str, float]
    init_weights: str | None = None
    run_id: str | None = None
    registered_version: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON form (the job's result, ``models train --json``)."""
        return {
            "name": self.config.name,
            "version": self.version,
            "config": self.config.to_dict(),
            "curves": [asdict(p) for p in self.curves],
            "evaluations": self.evaluations,
            "images_per_second": round(self.images_per_second, 1),
            "parameters": self.parameters,
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
            "init_weights": self.init_weights,
            "mlflow_run": self.run_id,
            "registered_version": self.registered_version,
        }


@dataclass(frozen=True)
class GridResult:
    """What :func:`train_grid` produced.

    Attributes:
        dataset_version: The version trained on.
        grid: The grid's name.
        candidates: Each candidate's result, in the grid's order.
        production: The production model's ``version``, ``evaluations`` and
            ``images_per_second``; ``None`` without a production model.
        best: The best candidate's name (:func:`best_candidate`).
        robustness: The robustness set's generator record (:meth:`RobustnessConfig.to_dict`).
        data: Examples per split and class, and rows skipped.
        experiment: The MLflow experiment, ``None`` without tracking.
        seconds: Wall time of the whole grid.
    """

    dataset_version: int
    grid: str
    candidates: list[CandidateResult]
    production: dict[str, Any] | None
    best: str
    robustness: dict[str, Any]
    data: dict[str, Any]
    experiment: str | None
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        """JSON form (the job's result, ``models train --json``)."""
        return {
            "dataset_version": self.dataset_version,
            "grid": self.grid,
            "candidates": [c.as_dict() for c in self.candidates],
            "production": self.production,
            "best": self.best,
            "robustness": self.robustness,
            "data": self.data,
            "experiment": self.experiment,
            "seconds": round(self.seconds, 1),
        }


def metrics_of(report: EvaluationReport) -> dict[str, Any]:
    """One evaluation set's metrics as JSON: accuracy, per-class precision/recall/F1, macro F1,
    the confusion matrix (rows true, columns predicted, in ``classes`` order), ECE, size."""
    t = report.type_metrics
    return {
        "n": t.total,
        "accuracy": round(t.accuracy, 4),
        "macro_f1": round(t.macro_f1, 4),
        "per_class_precision": {k: round(v, 4) for k, v in t.per_class_precision.items()},
        "per_class_recall": {k: round(v, 4) for k, v in t.per_class_recall.items()},
        "per_class_f1": {k: round(v, 4) for k, v in t.per_class_f1.items()},
        "classes": list(t.classes),
        "confusion": t.confusion,
        "ece": None if report.calibration_error is None else round(report.calibration_error, 4),
        "mistakes": [
            {"name": m.path, "truth": m.truth, "predicted": m.predicted}
            for m in report.mistakes[:20]
        ],
    }


def best_candidate(candidates: Sequence[CandidateResult]) -> CandidateResult:
    """The candidate with the highest mean accuracy over every evaluation set (test split, each
    named set, robustness set, equally weighted), ties to the earlier one."""
    return max(
        candidates,
        key=lambda c: (_mean_accuracy(c.evaluations), -candidates.index(c)),
    )


def _mean_accuracy(evaluations: Mapping[str, Mapping[str, Any]]) -> float:
    values = [float(m["accuracy"]) for m in evaluations.values() if m.get("n")]
    return sum(values) / len(values) if values else 0.0


# --- training ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GridOptions:
    """How a grid is trained and measured, besides the candidates.

    Attributes:
        val_fraction: Share of each class of the train split held out for the curves.
        robustness: The robustness set to evaluate on.
        throughput_seconds: How long each model's inference images/s is measured.
        threads: Torch threads while training (one: see ``TrainConfig.threads``).
    """

    val_fraction: float = 0.15
    robustness: RobustnessConfig = DEFAULT_ROBUSTNESS
    throughput_seconds: float = 1.0
    threads: int = 1


def train_grid(
    data: TrainingSet,
    grid: Grid,
    models_dir: Path,
    *,
    tracker: ExperimentTracker | None = None,
    listener: TrainingListener | None = None,
    options: GridOptions | None = None,
) -> GridResult:
    """Train every candidate of ``grid`` on ``data``, evaluate them and production, save them.

    Args:
        data: The version's examples (:func:`training_set`).
        grid: The candidates.
        models_dir: Where the artifacts go (none is promoted); the production model is read here.
        tracker: MLflow; ``None`` tracks nothing.
        listener: Told the phases, steps, epochs and finished candidates.
        options: Validation share, robustness set, throughput timing, threads.

    Returns:
        Each candidate's curves, evaluations and artifact; production's evaluations; the best.

    Raises:
        ModelError: Starting weights that do not fit, or a production model that cannot load.
        TrackingUnavailable: MLflow cannot be used.
    """
    started = time.perf_counter()
    tell = listener or TrainingListener()
    options = options or GridOptions()
    tell.phase("generating the robustness set")
    robust = [example.labelled() for example in generate_robustness_set(options.robustness)]
    eval_sets = {**data.evaluation_sets(), ROBUSTNESS: robust}
    labels = np.array([IMAGE_TYPES.index(e.row.image_type) for e in data.train], dtype=np.int64)
    arrays: dict[int, torch.Tensor] = {}
    experiment = experiment_name(data.version) if tracker is not None else None

    results: list[CandidateResult] = []
    total = len(grid.candidates)
    for index, config in enumerate(grid.candidates):
        if config.input_size not in arrays:
            tell.phase(f"resizing to {config.input_size}px")
            arrays[config.input_size] = stack_arrays(
                [resize_to_array(e.image, config.input_size) for e in data.train]
            )
        prefix = f"candidate {index + 1}/{total}: {config.name}"
        result = _train_one(
            config,
            arrays[config.input_size],
            labels,
            eval_sets,
            models_dir,
            data=data,
            grid=grid.name,
            options=options,
            tell=tell,
            prefix=prefix,
            index=index,
            tracker=tracker,
            experiment=experiment,
        )
        results.append(result)
        tell.candidate_done(index, result)

    production = _evaluate_production(models_dir, eval_sets, options, tell)
    best = best_candidate(results)
    if tracker is not None and best.registered_version is not None:
        tracker.set_alias(REGISTERED_MODEL, best.registered_version, "challenger")
    return GridResult(
        dataset_version=data.version,
        grid=grid.name,
        candidates=results,
        production=production,
        best=best.config.name,
        robustness=options.robustness.to_dict(),
        data={
            "counts": data.counts(),
            "skipped": data.skipped,
            "val_fraction": options.val_fraction,
        },
        experiment=experiment,
        seconds=time.perf_counter() - started,
    )


def _train_one(
    config: CandidateConfig,
    images: torch.Tensor,
    labels: np.ndarray,
    eval_sets: Mapping[str, list[LabelledImage]],
    models_dir: Path,
    *,
    data: TrainingSet,
    grid: str,
    options: GridOptions,
    tell: TrainingListener,
    prefix: str,
    index: int,
    tracker: ExperimentTracker | None,
    experiment: str | None,
) -> CandidateResult:
    """Train, evaluate, save and track one candidate."""
    train_idx, val_idx = stratified_split(labels, options.val_fraction, config.seed)
    targets = torch.from_numpy(labels)
    seconds: dict[str, float] = {}
    init_summary = None
    curves: list[EpochPoint] = []
    with _reproducible(config.seed, options.threads):
        model = build_architecture(config.architecture, len(IMAGE_TYPES), config.resolved_width)
        if config.init_weights is not None:
            init_summary = load_init_weights(model, Path(config.init_weights)).summary()
        t0 = time.perf_counter()

        def on_epoch(point: EpochPoint) -> None:
            curves.append(point)
            tell.epoch(index, config, point)
            if point.epoch < config.epochs:
                tell.phase(f"{prefix}, epoch {point.epoch + 1}/{config.epochs}")

        tell.phase(f"{prefix}, epoch 1/{config.epochs}")
        _fit(
            model,
            images[train_idx],
            targets[train_idx],
            images[val_idx],
            targets[val_idx],
            config,
            step=tell.step,
            on_epoch=on_epoch,
        )
        seconds["train"] = time.perf_counter() - t0

    tell.phase(f"{prefix}, evaluating")
    t0 = time.perf_counter()
    evaluations, throughput = _evaluate(model, config.input_size, eval_sets, options, config.name)
    seconds["evaluate"] = time.perf_counter() - t0
    parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    metadata = save_artifact(
        models_dir,
        model,
        input_size=config.input_size,
        width=config.resolved_width,
        architecture=config.architecture,
        train_config=config.to_dict(),
        training_data={
            "dataset_version": data.version,
            "grid": grid,
            "train_rows": len(train_idx),
            "val_rows": len(val_idx),
            "counts": data.counts(),
        },
        metrics={
            "curves": [asdict(p) for p in curves],
            "evaluations": {name: _headline(m) for name, m in evaluations.items()},
            "images_per_second": round(throughput, 1),
            "robustness": options.robustness.to_dict(),
        },
    )
    run_id = registered = None
    if tracker is not None and experiment is not None:
        run_id, registered = _track(
            tracker,
            experiment,
            config,
            curves,
            evaluations,
            throughput,
            models_dir / metadata.version,
            version=metadata.version,
            dataset_version=data.version,
            grid=grid,
            robustness=options.robustness,
        )
    return CandidateResult(
        config=config,
        version=metadata.version,
        curves=curves,
        evaluations=evaluations,
        images_per_second=throughput,
        parameters=parameters,
        seconds=seconds,
        init_weights=init_summary,
        run_id=run_id,
        registered_version=registered,
    )


def _fit(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    val_images: torch.Tensor,
    val_labels: torch.Tensor,
    config: CandidateConfig,
    *,
    step: Any,
    on_epoch: Any,
) -> None:
    """AdamW with a one-cycle schedule, as :func:`tagging.ml.train.fit`, with a validation pass
    after every epoch (the curves)."""
    generator = torch.Generator().manual_seed(config.seed)
    augment = config.augmentation()
    batch_size = min(config.batch_size, len(images))
    # Dropping the last partial batch keeps every BatchNorm batch full-sized.
    steps_per_epoch = max(1, len(images) // batch_size)
    total_steps = steps_per_epoch * config.epochs
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    # One-cycle needs a few steps for its warm-up phase; a run of a handful of steps (a tiny
    # dataset) keeps the peak rate throughout instead.
    schedule = (
        torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=total_steps, pct_start=0.25
        )
        if total_steps >= 8
        else None
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    for epoch in range(config.epochs):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(len(images), generator=generator)
        total_loss = 0.0
        for b in range(steps_per_epoch):
            batch = order[b * batch_size : (b + 1) * batch_size]
            x = to_model_input(images[batch], augment, generator)
            loss = criterion(model(x), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
            total_loss += loss.item()
            step(epoch * steps_per_epoch + b + 1, total_steps)
        val_loss, val_accuracy = _validate(model, val_images, val_labels)
        on_epoch(
            EpochPoint(
                epoch=epoch + 1,
                train_loss=round(total_loss / steps_per_epoch, 5),
                val_loss=round(val_loss, 5),
                val_accuracy=round(val_accuracy, 5),
                seconds=round(time.perf_counter() - t0, 2),
            )
        )
    model.eval()


@torch.inference_mode()
def _validate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy (no smoothing) and accuracy on the validation slice, in eval mode."""
    model.eval()
    if len(images) == 0:
        return math.nan, math.nan
    losses, correct = 0.0, 0
    for start in range(0, len(images), 256):
        logits = model(to_model_input(images[start : start + 256]))
        target = labels[start : start + 256]
        losses += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(dim=1) == target).sum())
    return losses / len(images), correct / len(images)


def _evaluate(
    model: nn.Module,
    input_size: int,
    eval_sets: Mapping[str, list[LabelledImage]],
    options: GridOptions,
    name: str,
) -> tuple[dict[str, dict[str, Any]], float]:
    """Metrics on every evaluation set, and images/s as served (the small CNN fused)."""
    evaluations = {
        set_name: metrics_of(
            evaluate_type_model(model, examples, input_size=input_size, model_version=name)
        )
        for set_name, examples in eval_sets.items()
    }
    served = model.fused_for_inference() if isinstance(model, TypeNet) else model
    throughput = images_per_second(served, input_size, seconds=options.throughput_seconds)
    return evaluations, throughput


def _evaluate_production(
    models_dir: Path,
    eval_sets: Mapping[str, list[LabelledImage]],
    options: GridOptions,
    tell: TrainingListener,
) -> dict[str, Any] | None:
    """Production's evaluations on the same sets; ``None`` without a production model."""
    version = production_version(models_dir)
    if version is None:
        return None
    tell.phase(f"evaluating production ({version})")
    artifact = load_any(models_dir, version)
    evaluations, throughput = _evaluate(
        artifact.model, artifact.metadata.input_size, eval_sets, options, version
    )
    return {
        "version": version,
        "architecture": artifact.metadata.architecture_name,
        "evaluations": evaluations,
        "images_per_second": round(throughput, 1),
    }


def _track(
    tracker: ExperimentTracker,
    experiment: str,
    config: CandidateConfig,
    curves: Sequence[EpochPoint],
    evaluations: Mapping[str, Mapping[str, Any]],
    throughput: float,
    artifact_dir: Path,
    *,
    version: str,
    dataset_version: int,
    grid: str,
    robustness: RobustnessConfig,
) -> tuple[str, int]:
    """One MLflow run for the candidate: params, curves, evaluation metrics, the artifact; then
    registered as a version of :data:`REGISTERED_MODEL`."""
    tags = {"dataset_version": str(dataset_version), "grid": grid, "model_version": version}
    with tracked_run(tracker, experiment, name=config.name, tags=tags) as run_id:
        params: dict[str, Any] = dict(config.to_dict())
        params["robustness_seed"] = robustness.seed
        params["robustness_generator"] = f"{robustness.to_dict()['generator']}"
        tracker.log_params(run_id, params)
        for point in curves:
            tracker.log_metrics(
                run_id,
                {
                    "train_loss": point.train_loss,
                    "val_loss": point.val_loss,
                    "val_accuracy": point.val_accuracy,
                },
                step=point.epoch,
            )
        final: dict[str, float] = {"images_per_second": throughput}
        for set_name, metrics in evaluations.items():
            key = _SAFE_KEY.sub("_", set_name.replace(NAMED_PREFIX, "named."))
            final[f"{key}.accuracy"] = float(metrics["accuracy"])
            final[f"{key}.macro_f1"] = float(metrics["macro_f1"])
            if metrics["ece"] is not None:
                final[f"{key}.ece"] = float(metrics["ece"])
        tracker.log_metrics(run_id, final, step=len(curves))
        tracker.log_artifact(run_id, artifact_dir, "model")
        tracker.log_json(
            run_id,
            "reports/evaluations.json",
            {"evaluations": evaluations, "robustness": robustness.to_dict()},
        )
    registered = tracker.register(run_id, "model", REGISTERED_MODEL)
    return run_id, registered


def _headline(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """What an artifact's metadata keeps of one set's metrics (no mistakes list)."""
    return {k: v for k, v in metrics.items() if k != "mistakes"}


@contextmanager
def _reproducible(seed: int, threads: int) -> Iterator[None]:
    """Seed torch and pin its threads for a block, restoring the caller's state after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(previous)
