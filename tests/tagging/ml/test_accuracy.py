"""The issue's targets, measured on the whole demo with the model `make run` trains.

The whole demo, not the suite's small one: its 1,633 typed and 1,352 colored images make "≥ 97%"
a measurement (a model right 95% of the time passes it on the small demo's 186 typed images about
one time in eleven, on these about one time in 30,000), and they are what README's table quotes.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import pytest

from tagging.demo.generate import DemoInventory, generate_demo
from tagging.ml.color import EmbeddedColorModel
from tagging.ml.evaluate import evaluate_on_demo
from tagging.ml.inference import TypeClassifier
from tagging.ml.train import TrainConfig, train

pytestmark = pytest.mark.slow


def test_default_model_reaches_the_targets_on_the_full_demo(tmp_path: Path) -> None:
    """Image Type ≥ 97% and Color ≥ 90% on the demo's ground truth (seed 7, never trained on)."""
    demo = tmp_path / "demo"
    config = TrainConfig()
    rendered = config.n_per_class * 3  # the progress total of the rendering phase
    drawn: list[Future[DemoInventory]] = []
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:

        def progress(_done: int, total: int) -> None:
            # Training proper runs on one thread (the default config's): the demo is drawn on
            # the other core meanwhile, in a process of its own (not during the rendering,
            # which keeps both cores busy). The two share nothing.
            if total != rendered and not drawn:
                drawn.append(pool.submit(generate_demo, demo, 7, workers=1))

        result = train(config, tmp_path / "models", progress, promote=True)
        assert drawn, "training never reported its steps"
        inventory = drawn[0].result()
    assert len(inventory.images) > 1500
    report = evaluate_on_demo(
        demo, TypeClassifier.load(tmp_path / "models", result.version), EmbeddedColorModel()
    )
    assert report.type_metrics.total > 1500
    assert report.type_accuracy >= 0.97, report.type_metrics
    assert report.color_accuracy >= 0.90, report.color_metrics
    assert min(report.type_metrics.per_class_recall.values()) >= 0.9
