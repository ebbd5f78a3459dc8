"""Measure Image Type models and the color model: metrics, calibration, throughput.

:func:`evaluate_on_demo` scores the production classifier and a color model against the demo
inventory's ground truth. The demo is rendered with its own seed
(:data:`tagging.ml.data.DEMO_SEED`) that training never uses, so it is a held-out test set.
Kinds the pipeline rejects before classification (``broken``, ``too_small``) are skipped; colors
are scored only on ``ok`` images whose truth is a car (a placeholder has no color).

:func:`evaluate_type_model` scores any network of :mod:`tagging.ml.architectures` on any list of
labelled images (a dataset's test split, a per-advertiser set, the robustness set of
:mod:`tagging.ml.robustness`). Both go through serving's own steps:
:func:`tagging.ingest.images.decode_image`, then :func:`tagging.ml.transforms.preprocess`.

The metrics: accuracy, per-class precision, recall and F1, the confusion matrix
(:class:`ClassificationMetrics`), the expected calibration error
(:func:`expected_calibration_error`) and inference throughput (:func:`images_per_second`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import nn

from db.vocab import COLORS, IMAGE_TYPES, PLACEHOLDER
from tagging.errors import ImageDecodeError
from tagging.ingest.images import decode_image
from tagging.ml.color import ColorModel
from tagging.ml.data import DemoExample, load_demo_ground_truth
from tagging.ml.inference import TypeClassifier
from tagging.ml.transforms import preprocess

SKIPPED_KINDS: frozenset[str] = frozenset({"broken", "too_small"})
"""Manifest kinds the ML server refuses before any model sees them."""

NO_COLOR = "(none)"
"""Row/column name of a ``None`` color in the color confusion matrix."""


@dataclass(frozen=True)
class ClassificationMetrics:
    """Accuracy, per-class precision, recall and F1, and the confusion matrix of one task.

    A class that is neither true nor predicted for any example has no precision, recall or F1
    (it is absent from the dicts), as in scikit-learn's reports. A class predicted but never
    true has precision 0 and F1 0 (and no recall); a class true but never predicted has
    precision 0 (scikit-learn's ``zero_division=0``), recall 0 and F1 0.

    Attributes:
        classes: Row and column names of ``confusion``.
        accuracy: Share of correct predictions (0 with no examples).
        per_class_recall: For each class with examples, the share of it predicted correctly.
        confusion: ``confusion[true][predicted]`` counts.
        total: Number of examples.
        per_class_precision: For each class true or predicted at least once, the share of its
            predictions that are right.
        per_class_f1: For the same classes, the harmonic mean of precision and recall.
        support: Number of examples of each class, every class included.
    """

    classes: tuple[str, ...]
    accuracy: float
    per_class_recall: dict[str, float]
    confusion: list[list[int]]
    total: int
    per_class_precision: dict[str, float] = field(default_factory=dict)
    per_class_f1: dict[str, float] = field(default_factory=dict)
    support: dict[str, int] = field(default_factory=dict)

    @property
    def macro_f1(self) -> float:
        """The unweighted mean F1 over the classes that occur (0 with no examples)."""
        if not self.per_class_f1:
            return 0.0
        return sum(self.per_class_f1.values()) / len(self.per_class_f1)

    @classmethod
    def from_labels(
        cls, truth: Sequence[int], predicted: Sequence[int], classes: Sequence[str]
    ) -> ClassificationMetrics:
        """Compute the metrics from class indices.

        Args:
            truth: True class index of every example.
            predicted: Predicted class index of every example.
            classes: Class names, indexed by those indices.
        """
        n = len(classes)
        confusion = [[0] * n for _ in range(n)]
        for t, p in zip(truth, predicted, strict=True):
            confusion[t][p] += 1
        total = len(truth)
        correct = sum(confusion[k][k] for k in range(n))
        support = [sum(confusion[k]) for k in range(n)]
        predicted_count = [sum(confusion[r][k] for r in range(n)) for k in range(n)]
        recall = {classes[k]: confusion[k][k] / support[k] for k in range(n) if support[k] > 0}
        precision: dict[str, float] = {}
        f1: dict[str, float] = {}
        for k in range(n):
            if support[k] == 0 and predicted_count[k] == 0:
                continue
            prec = confusion[k][k] / predicted_count[k] if predicted_count[k] else 0.0
            rec = recall.get(classes[k], 0.0)
            precision[classes[k]] = prec
            f1[classes[k]] = 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
        return cls(
            classes=tuple(classes),
            accuracy=correct / total if total else 0.0,
            per_class_recall=recall,
            confusion=confusion,
            total=total,
            per_class_precision=precision,
            per_class_f1=f1,
            support={classes[k]: support[k] for k in range(n)},
        )

    @classmethod
    def from_names(
        cls, truth: Sequence[str], predicted: Sequence[str], classes: Sequence[str]
    ) -> ClassificationMetrics:
        """Compute the metrics from class names (each must be in ``classes``)."""
        index = {name: k for k, name in enumerate(classes)}
        return cls.from_labels([index[t] for t in truth], [index[p] for p in predicted], classes)


@dataclass(frozen=True)
class Mistake:
    """One wrong prediction, for eyeballing what the models get wrong."""

    path: str
    task: str
    truth: str
    predicted: str


@dataclass(frozen=True)
class EvaluationReport:
    """Results of :func:`evaluate_on_demo` or :func:`evaluate_type_model`.

    Attributes:
        type_metrics: Image Type metrics over every evaluated image.
        color_metrics: Color metrics over images whose true type is not Placeholder and whose
            color is known (the demo: ``ok`` images); a ``None`` prediction counts as wrong
            (column :data:`NO_COLOR`). Empty (``total`` 0) when no color model was scored.
        model_version: The Image Type model's version (or the caller's name for it).
        color_model_version: The color model's version; ``""`` when none was scored.
        skipped: Images skipped, by kind (broken and too small) or as undecodable.
        mistakes: Every wrong prediction.
        seconds: Wall time of the evaluation.
        calibration_error: Expected calibration error of the Image Type probabilities
            (:func:`expected_calibration_error`); ``None`` when not measured (the demo
            evaluation goes through the classifier's rounded answers).
        type_predictions: The predicted Image Type of every evaluated example, in order (what
            a comparison shows beside another model's answer); empty when not recorded.
        type_confidences: The probability of each of those predictions.
    """

    type_metrics: ClassificationMetrics
    color_metrics: ClassificationMetrics
    model_version: str
    color_model_version: str
    skipped: dict[str, int] = field(default_factory=dict)
    mistakes: list[Mistake] = field(default_factory=list)
    seconds: float = 0.0
    calibration_error: float | None = None
    type_predictions: list[str] = field(default_factory=list)
    type_confidences: list[float] = field(default_factory=list)

    @property
    def type_accuracy(self) -> float:
        """Image Type accuracy."""
        return self.type_metrics.accuracy

    @property
    def color_accuracy(self) -> float:
        """Color accuracy on ok car images."""
        return self.color_metrics.accuracy


def evaluate_on_demo(
    demo_dir: Path,
    classifier: TypeClassifier,
    color_model: ColorModel,
    *,
    batch_size: int = 64,
) -> EvaluationReport:
    """Score both models on the demo's ground truth.

    Args:
        demo_dir: Folder holding the demo's ``manifest.json`` and files.
        classifier: The Image Type model.
        color_model: The color model (embedded or vendor).
        batch_size: Images per model call, like the ML server's batches.

    Returns:
        The metrics, confusion matrices and mistakes.
    """
    started = time.perf_counter()
    skipped: dict[str, int] = {}
    kept: list[tuple[DemoExample, Image.Image]] = []
    for example in load_demo_ground_truth(demo_dir):
        if example.kind in SKIPPED_KINDS or example.image_type not in IMAGE_TYPES:
            skipped[example.kind] = skipped.get(example.kind, 0) + 1
            continue
        try:
            kept.append((example, decode_image(example.data).image))
        except ImageDecodeError:
            skipped["undecodable"] = skipped.get("undecodable", 0) + 1

    type_truth: list[str] = []
    type_pred: list[str] = []
    color_truth: list[str] = []
    color_pred: list[str] = []
    mistakes: list[Mistake] = []
    for start in range(0, len(kept), batch_size):
        chunk = kept[start : start + batch_size]
        images = [image for _, image in chunk]
        types = classifier.predict(images)
        # Color is scored on every ok car image, whatever the type model said, so that the two
        # models are measured independently.
        color_idx = [
            i for i, (ex, _) in enumerate(chunk) if ex.kind == "ok" and ex.image_type != PLACEHOLDER
        ]
        colors = color_model.predict([images[i] for i in color_idx]) if color_idx else []
        for (example, _), prediction in zip(chunk, types, strict=True):
            assert example.image_type is not None
            type_truth.append(example.image_type)
            type_pred.append(prediction.label)
            if prediction.label != example.image_type:
                mistakes.append(
                    Mistake(example.path, "image_type", example.image_type, prediction.label)
                )
        for i, color in zip(color_idx, colors, strict=True):
            example = chunk[i][0]
            truth = example.color or NO_COLOR
            guess = color or NO_COLOR
            color_truth.append(truth)
            color_pred.append(guess)
            if truth != guess:
                mistakes.append(Mistake(example.path, "color", truth, guess))

    color_classes = (*COLORS, NO_COLOR)
    return EvaluationReport(
        type_metrics=ClassificationMetrics.from_names(type_truth, type_pred, IMAGE_TYPES),
        color_metrics=ClassificationMetrics.from_names(color_truth, color_pred, color_classes),
        model_version=classifier.version,
        color_model_version=color_model.version,
        skipped=skipped,
        mistakes=mistakes,
        seconds=time.perf_counter() - started,
    )


class LabelledImage(NamedTuple):
    """One image with its truth, as :func:`evaluate_type_model` takes it.

    A plain ``(image, image_type)`` pair is accepted too.

    Attributes:
        image: The encoded file (decoded as the ML server decodes it) or a decoded image.
        image_type: True Image Type.
        color: True body color, when known; ``None`` for placeholders and unknown colors.
        name: How mistakes name the image (a path, a sha256); its position when empty.
    """

    image: Image.Image | bytes
    image_type: str
    color: str | None = None
    name: str = ""


def evaluate_type_model(
    model: nn.Module,
    examples: Iterable[LabelledImage | tuple[Image.Image | bytes, str]],
    *,
    input_size: int = 64,
    classes: Sequence[str] = IMAGE_TYPES,
    color_model: ColorModel | None = None,
    batch_size: int = 64,
    model_version: str = "",
) -> EvaluationReport:
    """Score an Image Type network (any architecture) on labelled images.

    Each image goes through serving's steps: encoded bytes are decoded by
    :func:`tagging.ingest.images.decode_image` (JPEG draft mode, as the ML server), then
    :func:`tagging.ml.transforms.preprocess` resizes and normalizes the batch, exactly as
    :meth:`tagging.ml.inference.TypeClassifier.predict` does. The network runs in eval mode (its
    previous mode is restored after).

    Args:
        model: A network mapping ``(N, 3, input_size, input_size)`` to ``(N, len(classes))``
            logits, e.g. from :func:`tagging.ml.architectures.build_architecture` or a loaded
            artifact's ``model``.
        examples: The labelled images; an image that cannot be decoded is skipped and counted
            as ``undecodable``.
        input_size: The network's square input side.
        classes: Its output labels, in logit order.
        color_model: Also score this color model on the car images whose color is known.
        batch_size: Images per forward pass.
        model_version: The name the report gives the model.

    Returns:
        Accuracy, per-class precision/recall/F1, confusion, calibration error, every
        prediction with its confidence, and the mistakes.

    Raises:
        ValueError: A true Image Type that is not one of ``classes``.
    """
    started = time.perf_counter()
    labelled = [LabelledImage(*example) for example in examples]
    index = {name: k for k, name in enumerate(classes)}
    skipped: dict[str, int] = {}
    kept: list[tuple[LabelledImage, Image.Image]] = []
    for position, example in enumerate(labelled):
        if example.image_type not in index:
            raise ValueError(
                f"unknown Image Type {example.image_type!r}; expected one of {classes}"
            )
        if not example.name:
            example = example._replace(name=f"#{position}")
        if isinstance(example.image, Image.Image):
            kept.append((example, example.image))
            continue
        try:
            kept.append((example, decode_image(example.image).image))
        except ImageDecodeError:
            skipped["undecodable"] = skipped.get("undecodable", 0) + 1

    was_training = model.training
    model.eval()
    probabilities: list[torch.Tensor] = []
    try:
        with torch.inference_mode():
            for start in range(0, len(kept), batch_size):
                batch = preprocess(
                    [image for _, image in kept[start : start + batch_size]], input_size
                )
                probabilities.append(torch.softmax(model(batch), dim=1))
    finally:
        model.train(was_training)
    probs = torch.cat(probabilities).numpy() if probabilities else np.zeros((0, len(classes)))

    truth = [index[example.image_type] for example, _ in kept]
    predicted = probs.argmax(axis=1).tolist() if len(probs) else []
    mistakes = [
        Mistake(example.name, "image_type", example.image_type, classes[p])
        for (example, _), p in zip(kept, predicted, strict=True)
        if classes[p] != example.image_type
    ]

    color_classes = (*COLORS, NO_COLOR)
    color_truth: list[str] = []
    color_pred: list[str] = []
    if color_model is not None:
        cars = [(ex, image) for ex, image in kept if ex.image_type != PLACEHOLDER and ex.color]
        for start in range(0, len(cars), batch_size):
            chunk = cars[start : start + batch_size]
            answers = color_model.predict([image for _, image in chunk])
            for (example, _), answer in zip(chunk, answers, strict=True):
                assert example.color is not None
                guess = answer or NO_COLOR
                color_truth.append(example.color)
                color_pred.append(guess)
                if guess != example.color:
                    mistakes.append(Mistake(example.name, "color", example.color, guess))

    return EvaluationReport(
        type_metrics=ClassificationMetrics.from_labels(truth, predicted, classes),
        color_metrics=ClassificationMetrics.from_names(color_truth, color_pred, color_classes),
        model_version=model_version,
        color_model_version=color_model.version if color_model is not None else "",
        skipped=skipped,
        mistakes=mistakes,
        seconds=time.perf_counter() - started,
        calibration_error=expected_calibration_error(probs, truth) if truth else None,
        type_predictions=[classes[p] for p in predicted],
        type_confidences=[float(probs[i, p]) for i, p in enumerate(predicted)],
    )


def expected_calibration_error(
    probabilities: np.ndarray | torch.Tensor | Sequence[Sequence[float]],
    truth: np.ndarray | torch.Tensor | Sequence[int],
    bins: int = 15,
) -> float:
    """The expected calibration error (ECE) of a classifier's probabilities.

    Predictions are grouped by confidence (the top probability) into ``bins`` equal-width bins
    over ``(0, 1]``; ECE is the mean, weighted by bin size, of ``|accuracy − mean confidence|``
    in each bin (Guo et al. 2017, "On Calibration of Modern Neural Networks"). 0 is perfectly
    calibrated: among predictions made with 80% confidence, 80% are right. A model that is
    right half the time with 99% confidence has an ECE near 0.49.

    Args:
        probabilities: ``(N, C)`` class probabilities (rows sum to 1).
        truth: ``(N,)`` true class indices.
        bins: Number of confidence bins (15, as usual in the literature).

    Returns:
        The ECE in ``[0, 1]``; 0 for no examples.

    Raises:
        ValueError: Shapes that do not match, or fewer than one bin.
    """
    probs = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(truth, dtype=np.int64)
    if bins < 1:
        raise ValueError("bins must be at least 1")
    if len(labels) == 0:
        return 0.0
    if probs.ndim != 2 or labels.ndim != 1 or len(probs) != len(labels):
        raise ValueError(
            f"probabilities must be (N, C) and truth (N,), got {probs.shape} and {labels.shape}"
        )
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    # Bin b holds confidences in (b / bins, (b + 1) / bins]; a confidence of 0 joins bin 0.
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins).astype(np.float64)
    accuracy_sum = np.bincount(which, weights=correct, minlength=bins)
    confidence_sum = np.bincount(which, weights=confidence, minlength=bins)
    gaps = np.abs(accuracy_sum - confidence_sum)  # = count × |accuracy − confidence| per bin
    return float(gaps.sum() / count.sum())


def images_per_second(
    model: nn.Module,
    input_size: int,
    batch: int = 64,
    seconds: float = 2.0,
    *,
    warmup: int = 2,
) -> float:
    """Inference throughput of a network on this machine: forward passes of a ready batch.

    Preprocessing is left out (it is the same for every architecture); the network runs in
    eval mode under ``torch.inference_mode`` with the caller's torch thread count, as the ML
    server runs it. Fixed random input, so the figure does not depend on data.

    Args:
        model: The network (its training mode is restored after).
        input_size: Square input side in pixels.
        batch: Images per forward pass (the ML server's batches are 64).
        seconds: Measure for at least this long, after the warm-up (at least one pass).
        warmup: Passes run first and not timed (allocations, oneDNN's kernel choice).

    Returns:
        Images per second.
    """
    x = torch.randn(batch, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(x)
            passes = 0
            started = time.perf_counter()
            while True:
                model(x)
                passes += 1
                elapsed = time.perf_counter() - started
                if elapsed >= seconds:
                    break
    finally:
        model.train(was_training)
    return passes * batch / elapsed


def format_confusion(metrics: ClassificationMetrics, *, drop_empty: bool = True) -> str:
    """A plain-text confusion matrix, rows true, columns predicted.

    Args:
        metrics: The metrics to print.
        drop_empty: Leave out classes that appear neither as truth nor as prediction.
    """
    n = len(metrics.classes)
    keep = [
        k
        for k in range(n)
        if not drop_empty
        or sum(metrics.confusion[k]) > 0
        or any(metrics.confusion[r][k] for r in range(n))
    ]
    names = [metrics.classes[k] for k in keep]
    width = max([len(name) for name in names] + [5])
    header = " " * (width + 2) + " ".join(f"{name[:width]:>{width}}" for name in names)
    lines = [header]
    for r in keep:
        cells = " ".join(f"{metrics.confusion[r][c]:>{width}}" for c in keep)
        lines.append(f"{metrics.classes[r]:>{width}}  {cells}")
    return "\n".join(lines)


def format_report(report: EvaluationReport, *, max_mistakes: int = 10) -> str:
    """The report as text for the command line."""
    t, c = report.type_metrics, report.color_metrics
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(report.skipped.items())) or "none"
    recall = ", ".join(f"{k} {v:.1%}" for k, v in t.per_class_recall.items())
    precision = ", ".join(f"{k} {v:.1%}" for k, v in t.per_class_precision.items())
    calibration = (
        "" if report.calibration_error is None else f" (ECE {report.calibration_error:.3f})"
    )
    lines = [
        f"Demo evaluation ({report.seconds:.1f}s); skipped: {skipped}",
        "",
        f"Image Type  model {report.model_version}: accuracy {t.accuracy:.2%} on {t.total} images"
        f"{calibration}",
        f"  recall: {recall}",
        f"  precision: {precision}; macro F1 {t.macro_f1:.3f}",
        format_confusion(t, drop_empty=False),
        "",
        f"Color  model {report.color_model_version}: accuracy {c.accuracy:.2%} "
        f"on {c.total} ok car images",
        format_confusion(c),
    ]
    if report.mistakes:
        lines += ["", f"Mistakes ({len(report.mistakes)}, first {max_mistakes}):"]
        lines += [
            f"  {m.task:<10} {m.path}: true {m.truth}, predicted {m.predicted}"
            for m in report.mistakes[:max_mistakes]
        ]
    return "\n".join(lines)
