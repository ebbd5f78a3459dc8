"""Evaluation metrics: per-class precision/recall/F1, calibration, throughput, any-model scoring."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from db.vocab import IMAGE_TYPES
from tagging.ml.architectures import ARCHITECTURES, build_architecture
from tagging.ml.color import EmbeddedColorModel
from tagging.ml.evaluate import (
    NO_COLOR,
    ClassificationMetrics,
    LabelledImage,
    evaluate_type_model,
    expected_calibration_error,
    images_per_second,
)
from tagging.ml.palette import PALETTE


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: on a busy 2-core machine two threads make tiny forward passes crawl."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# --- precision, recall, F1 ------------------------------------------------------------------------


def test_per_class_precision_recall_f1() -> None:
    #           A  A  A  B  B  C
    # predicted A  A  B  B  C  C
    metrics = ClassificationMetrics.from_names(
        ["A", "A", "A", "B", "B", "C"], ["A", "A", "B", "B", "C", "C"], ("A", "B", "C")
    )
    # A: 2 of 2 predictions right, 2 of 3 found. B: 1 of 2, 1 of 2. C: 1 of 2, 1 of 1.
    assert metrics.per_class_precision == pytest.approx({"A": 1.0, "B": 0.5, "C": 0.5})
    assert metrics.per_class_recall == pytest.approx({"A": 2 / 3, "B": 0.5, "C": 1.0})
    assert metrics.per_class_f1 == pytest.approx({"A": 0.8, "B": 0.5, "C": 2 / 3})
    assert metrics.macro_f1 == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert metrics.support == {"A": 3, "B": 2, "C": 1}
    assert metrics.accuracy == pytest.approx(4 / 6)
    assert metrics.confusion == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_classes_never_true_or_never_predicted() -> None:
    # B is predicted but never true; C is true but never predicted; D occurs nowhere.
    metrics = ClassificationMetrics.from_names(
        ["A", "A", "C"], ["A", "B", "A"], ("A", "B", "C", "D")
    )
    assert metrics.per_class_precision == pytest.approx({"A": 0.5, "B": 0.0, "C": 0.0})
    assert metrics.per_class_recall == pytest.approx({"A": 0.5, "C": 0.0})  # as before
    assert metrics.per_class_f1 == pytest.approx({"A": 0.5, "B": 0.0, "C": 0.0})
    assert metrics.support == {"A": 2, "B": 0, "C": 1, "D": 0}
    empty = ClassificationMetrics.from_labels([], [], ("A",))
    assert empty.accuracy == 0.0 and empty.macro_f1 == 0.0 and empty.per_class_f1 == {}


# --- calibration ----------------------------------------------------------------------------------


def _predictions(confidence: float, right: int, wrong: int) -> tuple[list[list[float]], list[int]]:
    """Two-class answers of ``confidence`` for class 0: ``right`` of them true, ``wrong`` not."""
    probs = [[confidence, 1 - confidence]] * (right + wrong)
    return probs, [0] * right + [1] * wrong


def test_perfectly_calibrated_predictor_has_zero_ece() -> None:
    # 80% confident and right 8 times in 10; 60% confident and right 3 times in 5.
    p1, t1 = _predictions(0.8, 8, 2)
    p2, t2 = _predictions(0.6, 3, 2)
    assert expected_calibration_error(p1 + p2, t1 + t2) == pytest.approx(0.0, abs=1e-12)


def test_overconfident_predictor() -> None:
    probs, truth = _predictions(0.99, 5, 5)  # 99% sure, right half the time
    assert expected_calibration_error(probs, truth) == pytest.approx(0.49)
    # Two bins: 4 answers at 0.7 with 2 right (gap 0.2), 6 at 0.95 all right (gap 0.05):
    # 0.4 × 0.2 + 0.6 × 0.05.
    p1, t1 = _predictions(0.7, 2, 2)
    p2, t2 = _predictions(0.95, 6, 0)
    ece = expected_calibration_error(np.array(p1 + p2), torch.tensor(t1 + t2))
    assert ece == pytest.approx(0.11)
    # One bin for everything: the gaps of the two groups cancel out in part.
    assert expected_calibration_error(p1 + p2, t1 + t2, bins=1) == pytest.approx(
        abs(8 / 10 - (4 * 0.7 + 6 * 0.95) / 10)
    )


def test_ece_input_checks() -> None:
    assert expected_calibration_error(np.zeros((0, 3)), []) == 0.0
    with pytest.raises(ValueError):
        expected_calibration_error([[0.5, 0.5]], [0, 1])
    with pytest.raises(ValueError):
        expected_calibration_error([[0.5, 0.5]], [0], bins=0)


# --- throughput -----------------------------------------------------------------------------------


def test_images_per_second() -> None:
    model = build_architecture("small_cnn", width=4).train()
    rate = images_per_second(model, 32, batch=8, seconds=0.05, warmup=1)
    assert rate > 0
    assert model.training  # restored


# --- scoring any model on labelled images ---------------------------------------------------------


class _ChannelOracle(nn.Module):
    """Logits = mean of each normalized input channel: red → class 0, green → 1, blue → 2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) * 4


def _solid(rgb: tuple[int, int, int], size: tuple[int, int] = (120, 90)) -> Image.Image:
    return Image.new("RGB", size, rgb)


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def test_evaluate_type_model_on_crafted_images() -> None:
    red, green, blue = PALETTE["Red"], (20, 200, 40), PALETTE["Blue"]
    examples = [
        LabelledImage(_jpeg(_solid(red)), "Dealer", "Red", "red-car"),  # right, right color
        (_solid(red), "Dealer"),  # a plain pair, a decoded image
        LabelledImage(_jpeg(_solid(green)), "Stock", None),  # right, color unknown
        LabelledImage(_solid(blue), "Placeholder"),  # right
        LabelledImage(_jpeg(_solid(blue)), "Stock", "Green", "blue-car"),  # wrong twice
        LabelledImage(b"not an image", "Dealer", "Red", "broken"),  # skipped
    ]
    model = _ChannelOracle().train()
    report = evaluate_type_model(
        model, examples, color_model=EmbeddedColorModel(), model_version="oracle"
    )
    t = report.type_metrics
    assert t.total == 5 and t.accuracy == pytest.approx(4 / 5)
    assert report.skipped == {"undecodable": 1}
    assert report.type_predictions == ["Dealer", "Dealer", "Stock", "Placeholder", "Placeholder"]
    assert len(report.type_confidences) == 5 and all(0.33 < c <= 1 for c in report.type_confidences)
    assert t.per_class_precision["Placeholder"] == pytest.approx(0.5)
    assert t.per_class_recall["Stock"] == pytest.approx(0.5)
    assert report.calibration_error is not None and 0 < report.calibration_error < 1
    # Color: only the cars whose color is known; the unknown and the placeholder are left out.
    assert report.color_metrics.total == 2
    assert report.color_metrics.accuracy == pytest.approx(0.5)
    assert report.color_model_version == EmbeddedColorModel.version
    mistakes = {(m.path, m.task): (m.truth, m.predicted) for m in report.mistakes}
    assert mistakes == {
        ("blue-car", "image_type"): ("Stock", "Placeholder"),
        ("blue-car", "color"): ("Green", "Blue"),
    }
    assert report.model_version == "oracle"
    assert model.training  # the caller's mode is restored


def test_evaluate_without_color_model_and_unknown_truth() -> None:
    report = evaluate_type_model(_ChannelOracle(), [(_solid((250, 0, 0)), "Dealer")])
    assert report.color_metrics.total == 0 and report.color_model_version == ""
    assert NO_COLOR in report.color_metrics.classes
    unnamed = evaluate_type_model(_ChannelOracle(), [(_solid((250, 0, 0)), "Stock")])
    assert unnamed.mistakes[0].path == "#0"
    with pytest.raises(ValueError, match="unknown Image Type"):
        evaluate_type_model(_ChannelOracle(), [(_solid((0, 0, 0)), "Van")])
    empty = evaluate_type_model(_ChannelOracle(), [])
    assert empty.type_metrics.total == 0 and empty.calibration_error is None


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_architecture_can_be_evaluated(name: str) -> None:
    torch.manual_seed(0)
    model = build_architecture(name, width=8)
    examples = [
        (_jpeg(_solid(PALETTE[c], (160, 120))), t)
        for c, t in zip(("Red", "White", "Black"), IMAGE_TYPES, strict=True)
    ]
    for size in (64, 96):
        report = evaluate_type_model(model, examples, input_size=size, batch_size=2)
        assert report.type_metrics.total == 3
        assert set(report.type_predictions) <= set(IMAGE_TYPES)
