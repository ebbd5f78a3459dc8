"""The issue's targets, measured on the whole demo with the model `make run` trains."""

from __future__ import annotations

from pathlib import Path

import pytest

from tagging.demo.generate import generate_demo
from tagging.ml.color import EmbeddedColorModel
from tagging.ml.evaluate import evaluate_on_demo
from tagging.ml.inference import TypeClassifier
from tagging.ml.train import TrainConfig, train

pytestmark = pytest.mark.slow


def test_default_model_reaches_the_targets_on_the_full_demo(tmp_path: Path) -> None:
    """Image Type ≥ 97% and Color ≥ 90% on the demo's ground truth (seed 7, never trained on)."""
    demo = tmp_path / "demo"
    generate_demo(demo, seed=7)
    result = train(TrainConfig(), tmp_path / "models", promote=True)
    report = evaluate_on_demo(
        demo, TypeClassifier.load(tmp_path / "models", result.version), EmbeddedColorModel()
    )
    assert report.type_metrics.total > 1500
    assert report.type_accuracy >= 0.97, report.type_metrics
    assert report.color_accuracy >= 0.90, report.color_metrics
    assert min(report.type_metrics.per_class_recall.values()) >= 0.9
