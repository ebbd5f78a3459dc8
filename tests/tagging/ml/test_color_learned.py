"""The learned color model: training, the protocol, artifacts, augmentation, comparison.

One tiny model (a few hundred 48-pixel views, 3 epochs, ~5 s) is trained once for the module;
what it must show is learning, not accuracy: the bar is held-out synthetic cars well above the
1-in-13 chance. Comparison and choice are checked on scripted models, whose answers are known.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from db.vocab import COLORS
from tagging.curation.manifest import ManifestRow
from tagging.errors import InvalidInput, ModelError
from tagging.ml.color import ColorModel, srgb_to_lab
from tagging.ml.color_learned import (
    METADATA_FILE,
    WEIGHTS_FILE,
    ColorAugment,
    ColorComparison,
    ColorTrainConfig,
    ColorTrainReport,
    EpochStats,
    LearnedColorModel,
    SyntheticColorConfig,
    choose_color_model,
    color_models_dir,
    compare_color_models,
    list_color_versions,
    load_color_model,
    manifest_color_examples,
    production_color_version,
    promote_color_model,
    save_color_model,
    synthetic_color_examples,
    synthetic_placeholders,
    train_color_model,
)
from tagging.ml.evaluate import NO_COLOR
from tagging.ml.palette import PALETTE

Trained = tuple[LearnedColorModel, list[EpochStats], ColorTrainReport]

TINY = ColorTrainConfig(
    seed=3, width=8, input_size=48, epochs=3, views_per_image=1, batch_size=32, lr=6e-3
)


@pytest.fixture(scope="module")
def trained() -> Trained:
    """A tiny model trained on 16 synthetic cars per color and 24 placeholders."""
    cars = list(synthetic_color_examples(SyntheticColorConfig(seed=3, n_per_color=16)))
    outliers = list(synthetic_placeholders(24, seed=3))
    seen: list[EpochStats] = []
    model, report = train_color_model(cars, TINY, seen.append, outliers=outliers)
    return model, seen, report


@pytest.fixture(scope="module")
def held_out() -> list[tuple[Image.Image, str]]:
    """Cars the tiny model never saw (another seed)."""
    return list(synthetic_color_examples(SyntheticColorConfig(seed=5, n_per_color=4)))


# --- learning -------------------------------------------------------------------------------------


def test_learns_above_chance_on_held_out_cars(
    trained: Trained,
    held_out: list[tuple[Image.Image, str]],
) -> None:
    model, seen, report = trained
    probabilities = model.probabilities([image for image, _ in held_out])
    predicted = [COLORS[k] for k in probabilities.argmax(axis=1)]
    accuracy = np.mean([p == truth for p, (_, truth) in zip(predicted, held_out, strict=True)])
    chance = 1 / len(COLORS)
    assert accuracy >= 3 * chance, f"held-out accuracy {accuracy:.3f}"
    # The curves came through the callback, one point per epoch, and the loss went down.
    assert [s.epoch for s in seen] == list(range(1, TINY.epochs + 1))
    assert seen[-1].train_loss < seen[0].train_loss
    assert all(0.0 <= s.val_accuracy <= 1.0 for s in seen)
    assert report.curves == seen
    assert report.val_images == len(COLORS) * 2  # 1 in 10 of 16
    assert model.metadata.training_data["outlier_images"] == 24


def test_placeholders_get_no_color(
    trained: Trained,
    held_out: list[tuple[Image.Image, str]],
) -> None:
    model, _, _ = trained
    placeholders = list(synthetic_placeholders(12, seed=5))
    top_placeholder = model.probabilities(placeholders).max(axis=1)
    top_car = model.probabilities([image for image, _ in held_out]).max(axis=1)
    # Outlier exposure: the network is less sure on placeholders than on cars ...
    assert np.median(top_placeholder) < np.median(top_car)
    # ... so placeholders fall below its threshold (None) far more often than cars do. (This tiny
    # model is unsure of many cars too; a full-size one answers ~97% of cars, ~1% of placeholders.)
    placeholder_none = np.mean([a is None for a in model.predict(placeholders)])
    car_none = np.mean([a is None for a in model.predict([image for image, _ in held_out])])
    assert placeholder_none >= 0.5
    assert placeholder_none > car_none


def test_training_is_reproducible() -> None:
    cars = list(synthetic_color_examples(SyntheticColorConfig(seed=4, n_per_color=5)))
    config = ColorTrainConfig(
        seed=9, width=4, input_size=32, epochs=1, views_per_image=1, batch_size=16
    )
    first, _ = train_color_model(cars, config)
    second, _ = train_color_model(cars, config)
    third, _ = train_color_model(cars, dataclasses.replace(config, seed=10))
    assert first.metadata.weights_sha256 == second.metadata.weights_sha256
    assert first.metadata.weights_sha256 != third.metadata.weights_sha256
    # The caller's thread count and deterministic-algorithms flag are restored.
    assert not torch.are_deterministic_algorithms_enabled()


def test_training_refuses_bad_examples() -> None:
    image = Image.new("RGB", (64, 48), (200, 0, 0))
    with pytest.raises(InvalidInput, match="unknown color"):
        train_color_model([(image, "Teal")], TINY)
    with pytest.raises(InvalidInput, match="two colors"):
        train_color_model([(image, "Red")] * 20, TINY)
    with pytest.raises(ValueError, match="demo"):
        SyntheticColorConfig(seed=7)


# --- the protocol -------------------------------------------------------------------------------


def test_protocol_contract(trained: Trained) -> None:
    model, _, _ = trained
    assert isinstance(model, ColorModel)
    assert model.version.startswith("color-")
    assert model.predict([]) == []
    images = [
        Image.new("RGB", (320, 240), PALETTE["Red"]),
        Image.new("L", (200, 150), 128),  # another mode is converted, as serving's decode would
        Image.new("RGBA", (100, 60), (20, 60, 170, 255)),
        *[image for image, _ in synthetic_color_examples(SyntheticColorConfig(n_per_color=1))],
    ]
    answers = model.predict(images)
    assert len(answers) == len(images)
    assert all(a is None or a in COLORS for a in answers)
    # Batching does not change answers: one at a time gives the same.
    assert [model.predict([image])[0] for image in images] == answers
    # Arrays are accepted wherever images are (evaluation sets come as either).
    array = np.asarray(images[0])
    assert np.allclose(model.probabilities([array]), model.probabilities([images[0]]))


# --- artifacts ----------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path: Path, trained: Trained) -> None:
    model, _, _ = trained
    folder = save_color_model(tmp_path, model)
    assert folder == color_models_dir(tmp_path) / model.version
    assert folder.parent == tmp_path / "color"
    meta = json.loads((folder / METADATA_FILE).read_text())
    assert meta["classes"] == list(COLORS)
    assert meta["architecture"] == TINY.architecture
    assert meta["input_size"] == TINY.input_size
    assert meta["train_config"]["epochs"] == TINY.epochs
    assert (
        meta["weights_sha256"] == hashlib.sha256((folder / WEIGHTS_FILE).read_bytes()).hexdigest()
    )
    assert save_color_model(tmp_path, model) == folder  # saving again changes nothing
    assert list_color_versions(tmp_path) == [model.version]

    loaded = load_color_model(tmp_path)  # no PRODUCTION file: the newest
    images = [image for image, _ in synthetic_color_examples(SyntheticColorConfig(n_per_color=1))]
    assert loaded.predict(images) == model.predict(images)
    assert np.array_equal(loaded.probabilities(images), model.probabilities(images))
    assert loaded.version == model.version

    assert production_color_version(tmp_path) is None
    promote_color_model(tmp_path, model.version)
    assert production_color_version(tmp_path) == model.version
    assert load_color_model(tmp_path).version == model.version


def _broken(tmp_path: Path, model: LearnedColorModel, how: str) -> Path:
    folder = save_color_model(tmp_path, model)
    meta_path, weights_path = folder / METADATA_FILE, folder / WEIGHTS_FILE
    meta = json.loads(meta_path.read_text())
    if how == "weights flipped":
        blob = bytearray(weights_path.read_bytes())
        blob[len(blob) // 2] ^= 0xFF
        weights_path.write_bytes(bytes(blob))
    elif how == "weights truncated, sha updated":
        head = weights_path.read_bytes()[:100]
        weights_path.write_bytes(head)
        meta["weights_sha256"] = hashlib.sha256(head).hexdigest()
        meta_path.write_text(json.dumps(meta))
    elif how == "metadata garbage":
        meta_path.write_text("{not json")
    elif how == "other classes":
        meta["classes"] = list(reversed(COLORS))
        meta_path.write_text(json.dumps(meta))
    elif how == "other width":
        meta["width"] = meta["width"] * 2
        meta_path.write_text(json.dumps(meta))
    elif how == "not a color model":
        meta["kind"] = "image_type"
        meta_path.write_text(json.dumps(meta))
    elif how == "weights missing":
        weights_path.unlink()
    return folder


@pytest.mark.parametrize(
    "how",
    [
        "weights flipped",
        "weights truncated, sha updated",
        "metadata garbage",
        "other classes",
        "other width",
        "not a color model",
        "weights missing",
    ],
)
def test_corrupt_artifact_raises_model_error(tmp_path: Path, trained: Trained, how: str) -> None:
    model, _, _ = trained
    _broken(tmp_path, model, how)
    with pytest.raises(ModelError) as info:
        load_color_model(tmp_path, model.version)
    assert "\n" not in str(info.value)


def test_missing_models_raise_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="train one first"):
        load_color_model(tmp_path)
    with pytest.raises(ModelError, match="not found"):
        load_color_model(tmp_path, "color-20260101-deadbeef")
    with pytest.raises(ModelError, match="not a color model version"):
        load_color_model(tmp_path, "../type-20260101-deadbeef")


# --- augmentation -------------------------------------------------------------------------------


def test_views_are_reproducible_and_serving_shaped() -> None:
    image, _ = next(synthetic_color_examples(SyntheticColorConfig(n_per_color=1)))
    augment = ColorAugment(crop_p=1.0, blur_p=1.0, jpeg_p=1.0, small_p=1.0)
    first = augment.view(image, random.Random(1), 48)
    assert first.shape == (48, 48, 3) and first.dtype == np.uint8
    assert np.array_equal(first, augment.view(image, random.Random(1), 48))
    assert not np.array_equal(first, augment.view(image, random.Random(2), 48))


def _hue(rgb: np.ndarray) -> np.ndarray:
    lab = srgb_to_lab(rgb)
    return np.degrees(np.arctan2(lab[..., 2], lab[..., 1]))


def test_batch_jitter_keeps_the_paints_hue() -> None:
    # Hue is what names a chromatic paint: the jitter may change exposure and add a mild cast, but
    # must never turn Red into Orange or Blue into Purple.
    chromatic = ["Red", "Blue", "Green", "Orange", "Yellow", "Purple", "Gold", "Brown"]
    paints = torch.tensor([PALETTE[c] for c in chromatic], dtype=torch.float32) / 255.0
    batch = paints[:, :, None, None].expand(-1, -1, 8, 8).repeat(64, 1, 1, 1)
    augment = ColorAugment()
    out = augment.jitter(batch, torch.Generator().manual_seed(0))
    assert out.shape == batch.shape and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    mean = out.mean(dim=(2, 3)).numpy() * 255.0
    before = _hue(batch.mean(dim=(2, 3)).numpy() * 255.0)
    shift = np.abs((_hue(mean) - before + 180.0) % 360.0 - 180.0)
    # Nearest other paint in hue among these is ~20 degrees away (Orange/Gold/Yellow): stay under.
    assert shift.max() < 15.0, f"max hue shift {shift.max():.1f} degrees"
    # And the jitter does something: not the identity.
    assert not torch.allclose(out, batch)


# --- dataset rows -------------------------------------------------------------------------------


def _row(n: int, **fields: object) -> ManifestRow:
    base: dict[str, object] = {
        "sha256": f"{n:064x}",
        "path": f"ab/{n}",
        "image_type": "Dealer",
        "color": "Red",
        "origin": "fix:1 by alice",
        "width": 200,
        "height": 100,
        "split": "train",
    }
    return ManifestRow(**{**base, **fields})  # type: ignore[arg-type]


def test_manifest_rows_become_color_examples() -> None:
    def png(color: tuple[int, int, int]) -> bytes:
        image = Image.new("RGB", (200, 100), color)
        image.paste((0, 0, 0), (100, 0, 200, 100))  # the right half black
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    rows = [
        _row(1, crop=(0, 0, 100, 100)),  # cropped to its red half
        _row(2, image_type="Placeholder", color=None),
        _row(3, color=None),
        _row(4, split="test", color="Blue"),
        _row(5, split=None, exclusion="too small: 10x10 < 200x150"),
        _row(6, color="Green"),
    ]
    stored = {row.sha256: png(PALETTE[row.color or "Gray"]) for row in rows}
    stored[rows[-1].sha256] = b"not an image"

    def read(row: ManifestRow) -> bytes:
        return stored[row.sha256]

    examples = list(manifest_color_examples(rows, read))
    assert [color for _, color in examples] == ["Red"]
    image = examples[0][0]
    assert image.size == (100, 100) and image.getpixel((99, 50)) == PALETTE["Red"]
    tests = list(manifest_color_examples(rows, read, split="test"))
    assert [color for _, color in tests] == ["Blue"]


# --- comparison and choice ----------------------------------------------------------------------


class _Scripted:
    """A color model whose answers are given: the i-th image gets ``answers[i]``."""

    def __init__(self, version: str, answers: Sequence[str | None]) -> None:
        self.version = version
        self.answers = list(answers)
        self.calls = 0

    def predict(self, images: Sequence[Image.Image]) -> list[str | None]:
        out = self.answers[self.calls : self.calls + len(images)]
        self.calls += len(images)
        return out


def _examples(truth: Sequence[str]) -> list[tuple[np.ndarray, str]]:
    return [(np.zeros((8, 8, 3), dtype=np.uint8), color) for color in truth]


def test_compare_scores_crafted_predictions() -> None:
    truth = ["Red", "Red", "Red", "Blue", "Blue", "White"]
    perfect = _Scripted("p-1", truth)
    mixed = _Scripted("m-1", ["Red", "Blue", None, "Blue", "Blue", "Red"])
    comparison = compare_color_models(
        {"perfect": perfect, "mixed": mixed}, _examples(truth), batch_size=4
    )
    scores = comparison.by_name()
    assert scores["perfect"].accuracy == 1.0 and scores["perfect"].answered == 1.0
    m = scores["mixed"]
    assert m.version == "m-1"
    assert m.accuracy == pytest.approx(3 / 6)
    assert m.answered == pytest.approx(5 / 6)
    assert m.predictions == ["Red", "Blue", None, "Blue", "Blue", "Red"]
    assert m.metrics.per_class_recall["Red"] == pytest.approx(1 / 3)
    assert m.metrics.per_class_precision["Red"] == pytest.approx(1 / 2)
    assert m.metrics.per_class_precision["Blue"] == pytest.approx(2 / 3)
    assert m.metrics.per_class_f1["Blue"] == pytest.approx(2 * (2 / 3) / (2 / 3 + 1))
    classes = m.metrics.classes
    assert classes[-1] == NO_COLOR
    assert m.metrics.confusion[classes.index("Red")][classes.index(NO_COLOR)] == 1
    assert m.metrics.confusion[classes.index("White")][classes.index("Red")] == 1
    table = comparison.format_table()
    assert "perfect" in table and "mixed" in table


def test_compare_refuses_wrong_answers() -> None:
    with pytest.raises(InvalidInput, match="answered 1 colors for 2"):
        compare_color_models({"short": _Scripted("s", ["Red"])}, _examples(["Red", "Red"]))
    with pytest.raises(InvalidInput, match="unknown color"):
        compare_color_models({"odd": _Scripted("o", ["Teal"])}, _examples(["Red"]))
    with pytest.raises(InvalidInput, match="unknown true color"):
        compare_color_models({"p": _Scripted("p", ["Red"])}, _examples(["Teal"]))


def _set(accuracies: dict[str, float], n: int = 100) -> ColorComparison:
    """An evaluation set of ``n`` Red cars where each model is right on ``accuracy × n``."""
    truth = ["Red"] * n
    models = {
        name: _Scripted(name, ["Red"] * round(a * n) + ["Blue"] * (n - round(a * n)))
        for name, a in accuracies.items()
    }
    return compare_color_models(models, _examples(truth))


def test_choose_applies_the_margin_rule() -> None:
    # Better on every set by more than the margin: the challenger serves.
    sets = {
        "a": _set({"embedded": 0.40, "learned": 0.80}),
        "b": _set({"embedded": 0.9, "learned": 0.95}),
    }
    assert choose_color_model(sets, incumbent="embedded") == "learned"
    # Better on the mean, but worse by more than the margin on one set: the incumbent stays.
    sets = {
        "a": _set({"embedded": 0.40, "learned": 0.90}),
        "b": _set({"embedded": 1.0, "learned": 0.9}),
    }
    assert choose_color_model(sets, incumbent="embedded") == "embedded"
    # Better, but by less than the margin: no swap for noise ...
    sets = {"a": _set({"embedded": 0.80, "learned": 0.81})}
    assert choose_color_model(sets, incumbent="embedded") == "embedded"
    # ... exactly the margin is enough, and a wider margin is a stricter rule.
    sets = {"a": _set({"embedded": 0.80, "learned": 0.82})}
    assert choose_color_model(sets, incumbent="embedded") == "learned"
    assert choose_color_model(sets, incumbent="embedded", margin=0.05) == "embedded"
    # Without an incumbent, the best mean serves; among challengers too.
    sets = {"a": _set({"x": 0.5, "y": 0.7, "z": 0.6}), "b": _set({"x": 0.5, "y": 0.6, "z": 0.9})}
    assert choose_color_model(sets) == "z"
    assert choose_color_model(sets, incumbent="x") == "z"


def test_choose_refuses_inconsistent_input() -> None:
    with pytest.raises(InvalidInput):
        choose_color_model({})
    with pytest.raises(InvalidInput, match="other models"):
        choose_color_model({"a": _set({"x": 0.5}), "b": _set({"y": 0.5})})
    with pytest.raises(InvalidInput, match="incumbent"):
        choose_color_model({"a": _set({"x": 0.5})}, incumbent="nope")
    assert math.isclose(_set({"x": 0.25}).by_name()["x"].accuracy, 0.25)
