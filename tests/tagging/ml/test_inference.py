"""Serving the Image Type model, and evaluating both models on a small demo inventory.

The model is the suite's quickly trained one and the demo its small one (``models_dir``,
``classifier`` and ``demo_dir`` in tests/conftest.py: trained and drawn once for every test).
"""

from __future__ import annotations

import math
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from db.vocab import IMAGE_TYPES
from tagging.errors import ModelError
from tagging.ml.color import EmbeddedColorModel
from tagging.ml.data import load_demo_ground_truth, render_decoded
from tagging.ml.evaluate import (
    SKIPPED_KINDS,
    ClassificationMetrics,
    evaluate_on_demo,
    format_report,
)
from tagging.ml.inference import MAX_FORWARD_BATCH, TypeClassifier


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = random.Random(21)
    out = []
    for i in range(9):
        image_type = IMAGE_TYPES[i % 3]
        color = None if image_type == "Placeholder" else "Blue"
        out.append(render_decoded(image_type, color, rng, quality=85))
    return out


def test_load_and_describe(models_dir: Path, classifier: TypeClassifier) -> None:
    assert classifier.version.startswith("type-")
    assert classifier.metadata.version == classifier.version
    assert classifier.classes == IMAGE_TYPES
    assert TypeClassifier.load(models_dir, classifier.version).version == classifier.version


def test_load_without_a_model_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no Image Type model"):
        TypeClassifier.load(tmp_path)


def test_predictions(classifier: TypeClassifier, images: list[Image.Image]) -> None:
    predictions = classifier.predict(images)
    assert len(predictions) == len(images)
    for prediction in predictions:
        assert prediction.label in IMAGE_TYPES
        # Every class of the model, each rounded to 4 places: together ~1 (3 roundings apart).
        assert list(prediction.probabilities) == list(IMAGE_TYPES)
        assert math.isclose(sum(prediction.probabilities.values()), 1.0, abs_tol=2e-4)
        assert all(round(p, 4) == p for p in prediction.probabilities.values())
        assert prediction.probabilities[prediction.label] == round(prediction.confidence, 4)
        assert prediction.probabilities[prediction.label] == max(prediction.probabilities.values())
    # The quick model already gets these clear-cut renders right.
    assert [p.label for p in predictions] == [IMAGE_TYPES[i % 3] for i in range(9)]


def test_empty_input(classifier: TypeClassifier) -> None:
    assert classifier.predict([]) == []


def test_results_do_not_depend_on_batching(
    classifier: TypeClassifier, images: list[Image.Image]
) -> None:
    many = images * (MAX_FORWARD_BATCH // len(images) + 2)  # more than one forward pass
    together = classifier.predict(many)
    alone = [classifier.predict([image])[0] for image in images]
    for i, prediction in enumerate(together):
        assert prediction.label == alone[i % len(images)].label
        assert math.isclose(prediction.confidence, alone[i % len(images)].confidence, rel_tol=1e-4)


def test_other_image_modes_are_accepted(
    classifier: TypeClassifier, images: list[Image.Image]
) -> None:
    converted = [images[0].convert("RGBA"), images[1].convert("L"), images[2].convert("P")]
    assert len(classifier.predict(converted)) == 3


def test_concurrent_calls_are_safe(classifier: TypeClassifier, images: list[Image.Image]) -> None:
    # The ML server calls predict from a thread pool; results must equal sequential ones.
    expected = [(p.label, round(p.confidence, 5)) for p in classifier.predict(images)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        runs = list(pool.map(lambda _: classifier.predict(images), range(24)))
    for run in runs:
        assert [(p.label, round(p.confidence, 5)) for p in run] == expected


# --- evaluation --------------------------------------------------------------------------------


def test_classification_metrics() -> None:
    metrics = ClassificationMetrics.from_names(
        ["A", "A", "B", "B", "B"], ["A", "B", "B", "B", "A"], ("A", "B", "C")
    )
    assert metrics.accuracy == pytest.approx(0.6)
    assert metrics.per_class_recall == {"A": 0.5, "B": pytest.approx(2 / 3)}  # no C examples
    assert metrics.confusion == [[1, 1, 0], [1, 2, 0], [0, 0, 0]]
    assert ClassificationMetrics.from_labels([], [], ("A",)).accuracy == 0.0


def test_evaluate_on_demo(demo_dir: Path, classifier: TypeClassifier) -> None:
    truth = list(load_demo_ground_truth(demo_dir))
    report = evaluate_on_demo(demo_dir, classifier, EmbeddedColorModel())

    evaluated = [e for e in truth if e.kind not in SKIPPED_KINDS]
    colored = [e for e in evaluated if e.kind == "ok" and e.image_type != "Placeholder"]
    assert report.type_metrics.total == len(evaluated)
    assert report.color_metrics.total == len(colored)
    assert sum(report.skipped.values()) == len(truth) - len(evaluated)
    assert set(report.skipped) <= SKIPPED_KINDS
    assert report.model_version == classifier.version
    assert report.color_model_version == EmbeddedColorModel.version

    assert report.type_accuracy >= 0.85
    assert report.color_accuracy >= 0.9
    wrong_types = sum(m.task == "image_type" for m in report.mistakes)
    assert wrong_types == round((1 - report.type_accuracy) * len(evaluated))

    text = format_report(report)
    assert f"{report.type_accuracy:.2%}" in text and f"{report.color_accuracy:.2%}" in text
    assert "Placeholder" in text and classifier.version in text


def test_demo_ground_truth_layout(demo_dir: Path) -> None:
    examples = list(load_demo_ground_truth(demo_dir))
    ok = [e for e in examples if e.kind == "ok"]
    assert ok and all(e.data for e in ok)
    assert all(e.color is None for e in examples if e.image_type == "Placeholder")
    assert any(e.kind == "broken" and e.image_type is None for e in examples)
