"""Measure the Image Type model and the color model against the demo inventory's ground truth.

The demo is rendered with its own seed (:data:`tagging.ml.data.DEMO_SEED`) that training never
uses, so it is a held-out test set. Images go through the same
:func:`tagging.ingest.images.decode_image` as in serving. Kinds the pipeline rejects before
classification (``broken``, ``too_small``) are skipped; colors are scored only on ``ok`` images
whose truth is a car (a placeholder has no color).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from db.vocab import COLORS, IMAGE_TYPES, PLACEHOLDER
from tagging.errors import ImageDecodeError
from tagging.ingest.images import decode_image
from tagging.ml.color import ColorModel
from tagging.ml.data import DemoExample, load_demo_ground_truth
from tagging.ml.inference import TypeClassifier

SKIPPED_KINDS: frozenset[str] = frozenset({"broken", "too_small"})
"""Manifest kinds the ML server refuses before any model sees them."""

NO_COLOR = "(none)"
"""Row/column name of a ``None`` color in the color confusion matrix."""


@dataclass(frozen=True)
class ClassificationMetrics:
    """Accuracy, per-class recall and the confusion matrix of one labelling task.

    Attributes:
        classes: Row and column names of ``confusion``.
        accuracy: Share of correct predictions (0 with no examples).
        per_class_recall: For each class with examples, the share of it predicted correctly.
        confusion: ``confusion[true][predicted]`` counts.
        total: Number of examples.
    """

    classes: tuple[str, ...]
    accuracy: float
    per_class_recall: dict[str, float]
    confusion: list[list[int]]
    total: int

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
        recall = {
            classes[k]: confusion[k][k] / sum(confusion[k])
            for k in range(n)
            if sum(confusion[k]) > 0
        }
        return cls(
            classes=tuple(classes),
            accuracy=correct / total if total else 0.0,
            per_class_recall=recall,
            confusion=confusion,
            total=total,
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
    """Results of :func:`evaluate_on_demo`.

    Attributes:
        type_metrics: Image Type metrics over every evaluated image.
        color_metrics: Color metrics over ``ok`` images whose true type is not Placeholder; a
            ``None`` prediction counts as wrong (column :data:`NO_COLOR`).
        model_version: The Image Type model's version.
        color_model_version: The color model's version.
        skipped: Images skipped, by kind (broken and too small) or as undecodable.
        mistakes: Every wrong prediction.
        seconds: Wall time of the evaluation.
    """

    type_metrics: ClassificationMetrics
    color_metrics: ClassificationMetrics
    model_version: str
    color_model_version: str
    skipped: dict[str, int] = field(default_factory=dict)
    mistakes: list[Mistake] = field(default_factory=list)
    seconds: float = 0.0

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
    lines = [
        f"Demo evaluation ({report.seconds:.1f}s); skipped: {skipped}",
        "",
        f"Image Type  model {report.model_version}: accuracy {t.accuracy:.2%} on {t.total} images",
        f"  recall: {recall}",
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
