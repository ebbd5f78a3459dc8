"""Synthetic training data and training: reproducible, balanced, and it clearly learns."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from db.vocab import IMAGE_TYPES
from tagging.ml.data import DEMO_SEED, SyntheticDatasetConfig, generate_dataset, render_decoded
from tagging.ml.inference import TypeClassifier
from tagging.ml.model import list_versions, production_version
from tagging.ml.train import TrainConfig, stratified_split, train

# Small enough to train twice in a few seconds; reproducibility does not need a good model.
TINY = TrainConfig.quick(n_per_class=30, epochs=2, batch_size=16)


# --- data --------------------------------------------------------------------------------------


def test_dataset_is_balanced_and_labelled() -> None:
    config = SyntheticDatasetConfig(seed=3, n_per_class=13, input_size=32, workers=1)
    data = generate_dataset(config)
    assert data.images.shape == (39, 32, 32, 3) and data.images.dtype == np.uint8
    assert data.counts == {name: 13 for name in IMAGE_TYPES}
    for label, color in zip(data.labels, data.colors, strict=True):
        assert (color is None) == (IMAGE_TYPES[label] == "Placeholder")
    # Every car color appears once per class in 13 images of that class.
    dealer_colors = [c for lab, c in zip(data.labels, data.colors, strict=True) if lab == 0]
    assert len(set(dealer_colors)) == 13
    assert data.describe()["counts"] == data.counts


@pytest.mark.slow
def test_dataset_is_reproducible_whatever_the_number_of_workers() -> None:
    config = SyntheticDatasetConfig(seed=5, n_per_class=8, input_size=32, workers=1)
    progress: list[tuple[int, int]] = []
    serial = generate_dataset(config, progress=lambda d, t: progress.append((d, t)), chunk_size=5)
    parallel = generate_dataset(
        SyntheticDatasetConfig(seed=5, n_per_class=8, input_size=32, workers=2), chunk_size=5
    )
    assert np.array_equal(serial.images, parallel.images)
    assert np.array_equal(serial.labels, parallel.labels)
    assert progress[-1] == (24, 24) and [d for d, _ in progress] == sorted(d for d, _ in progress)
    other = generate_dataset(
        SyntheticDatasetConfig(seed=6, n_per_class=8, input_size=32, workers=1)
    )
    assert not np.array_equal(serial.images, other.images)


def test_the_demo_seed_is_refused() -> None:
    with pytest.raises(ValueError, match="held-out"):
        SyntheticDatasetConfig(seed=DEMO_SEED)
    with pytest.raises(ValueError, match="held-out"):
        TrainConfig(seed=DEMO_SEED).dataset_config()


def test_stratified_split_holds_out_every_class() -> None:
    labels = np.repeat(np.arange(3), [50, 30, 20])
    train_idx, val_idx = stratified_split(labels, 0.2, seed=1)
    assert sorted(np.concatenate([train_idx, val_idx]).tolist()) == list(range(100))
    assert np.bincount(labels[val_idx]).tolist() == [10, 6, 4]
    assert np.array_equal(stratified_split(labels, 0.2, seed=1)[1], val_idx)


def test_config_validation_and_overrides() -> None:
    with pytest.raises(ValueError):
        TrainConfig(val_fraction=0.0)
    with pytest.raises(ValueError):
        TrainConfig(batch_size=1)
    assert TrainConfig().replace(seed=3, epochs=2).seed == 3
    assert json.loads(json.dumps(TrainConfig().to_dict()))["image_sizes"][0] == [480, 360]


# --- training ----------------------------------------------------------------------------------


# The quick configuration's model is the suite's own (``models_dir`` and ``classifier`` in
# tests/conftest.py, trained once for every test); the first two tests look at it. What a training
# run returns and reports (TrainResult, progress, promotion) is checked on the tiny ones below.


@pytest.mark.slow
def test_quick_training_clearly_learns(classifier: TypeClassifier) -> None:
    meta = classifier.metadata
    assert meta.train_config == TrainConfig.quick().to_dict()
    assert meta.metrics["val_accuracy"] >= 0.85, meta.metrics
    assert set(meta.metrics["val_per_class_recall"]) == set(IMAGE_TYPES)
    assert sum(map(sum, meta.metrics["val_confusion"])) == meta.metrics["val_size"]

    # Fresh images from another seed, through the serving path (PIL → TypeClassifier).
    rng = random.Random("fresh-images")
    truth, images = [], []
    for i in range(60):
        image_type = IMAGE_TYPES[i % 3]
        color = None if image_type == "Placeholder" else rng.choice(["Red", "White", "Gray"])
        size = rng.choice([(480, 360), (640, 480), (400, 300)])
        images.append(
            render_decoded(image_type, color, rng, quality=rng.randint(70, 95), size=size)
        )
        truth.append(image_type)
    predicted = [p.label for p in classifier.predict(images)]
    accuracy = np.mean([p == t for p, t in zip(predicted, truth, strict=True)])
    assert accuracy >= 0.85, list(zip(truth, predicted, strict=True))


@pytest.mark.slow
def test_quick_model_is_promoted_and_described(
    models_dir: Path, classifier: TypeClassifier
) -> None:
    assert production_version(models_dir) == classifier.version
    meta = classifier.metadata
    assert meta.train_config == TrainConfig.quick().to_dict()
    data = meta.training_data
    assert data["generator"] == "tagging.ml.synth.render"
    assert data["config"]["seed"] == 1
    assert data["counts"] == {name: 150 for name in IMAGE_TYPES}
    assert sum(data["train_counts"].values()) + sum(data["val_counts"].values()) == 450
    assert "val_confusion" in meta.metrics and "epoch_losses" in meta.metrics


@pytest.mark.slow
def test_training_is_reproducible(tmp_path: Path) -> None:
    # With two threads too: parallel reductions must stay deterministic.
    config = TINY.replace(threads=2)
    a = train(config, tmp_path / "a")
    b = train(config, tmp_path / "b")
    assert a.metadata.weights_sha256 == b.metadata.weights_sha256
    assert a.version == b.version
    c = train(config.replace(seed=2), tmp_path / "a")
    assert c.metadata.weights_sha256 != a.metadata.weights_sha256


@pytest.mark.slow
def test_later_models_are_promoted_only_on_request(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    first = train(TINY, tmp_path, progress=lambda d, t: calls.append((d, t)))
    # What the run returns is what it saved, and its summary says it.
    meta = first.metadata
    assert meta.train_config == TINY.to_dict()
    assert meta.metrics["val_accuracy"] == first.val_accuracy
    assert meta.metrics["val_per_class_recall"] == first.per_class_recall
    assert meta.metrics["val_confusion"] == first.confusion
    assert set(first.per_class_recall) == set(IMAGE_TYPES)
    assert sum(map(sum, first.confusion)) == meta.metrics["val_size"]
    assert first.path == tmp_path / first.version and "held-out accuracy" in first.summary()
    # Progress went through rendering (90 images), then training steps to their total.
    assert (90, 90) in calls
    assert calls[-1][0] == calls[-1][1]

    second = train(TINY.replace(seed=3), tmp_path)
    assert first.promoted and not second.promoted
    assert production_version(tmp_path) == first.version
    third = train(TINY.replace(seed=4), tmp_path, promote=True)
    assert third.promoted and production_version(tmp_path) == third.version
    assert set(list_versions(tmp_path)) == {first.version, second.version, third.version}
