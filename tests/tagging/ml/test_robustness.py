"""The robustness set generator: truth, variety, recorded nuisances, determinism, speed."""

from __future__ import annotations

import json
import time
from collections import Counter

import numpy as np
import pytest

from db.vocab import COLORS, IMAGE_TYPES, PLACEHOLDER
from tagging.ml.evaluate import LabelledImage
from tagging.ml.robustness import (
    DEALER_SCENES,
    GENERATOR_NAME,
    GENERATOR_VERSION,
    LIGHTINGS,
    PLACEHOLDER_SCENES,
    PLACEMENTS,
    STOCK_SCENES,
    VIEWS,
    RobustExample,
    RobustnessConfig,
    generate_example,
    generate_robustness_set,
    summarize,
)


@pytest.fixture(scope="module")
def robust_set() -> list[RobustExample]:
    return generate_robustness_set(RobustnessConfig(seed=5, n_per_class=40))


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    config = RobustnessConfig(seed=3, n_per_class=4)
    first = generate_robustness_set(config)
    again = generate_robustness_set(RobustnessConfig(seed=3, n_per_class=4))
    assert [e.data for e in first] == [e.data for e in again]
    assert [e.nuisances for e in first] == [e.nuisances for e in again]
    assert generate_example(config, 7) == first[7]  # one image alone is the same image
    other = generate_robustness_set(RobustnessConfig(seed=4, n_per_class=4))
    assert all(a.data != b.data for a, b in zip(first, other, strict=True))


def test_truth_is_balanced(robust_set: list[RobustExample]) -> None:
    assert Counter(e.image_type for e in robust_set) == dict.fromkeys(IMAGE_TYPES, 40)
    for image_type in IMAGE_TYPES:
        colors = Counter(e.color for e in robust_set if e.image_type == image_type)
        if image_type == PLACEHOLDER:
            assert colors == {None: 40}
        else:  # every palette color, as evenly as 40 allows
            assert set(colors) == set(COLORS) and max(colors.values()) - min(colors.values()) <= 1


def test_examples_decode_to_their_recorded_size(robust_set: list[RobustExample]) -> None:
    for example in robust_set[:30]:
        image = example.decode()
        assert image.mode == "RGB"
        # JPEG draft decoding may shrink big images by a power of two, never change the shape.
        assert image.size[0] * example.size[1] == image.size[1] * example.size[0]
        assert image.size[0] in (example.size[0], example.size[0] // 2, example.size[0] // 4)
        assert example.name.startswith(f"robust-{example.index:04d}-{example.image_type}")
        labelled = example.labelled()
        assert labelled == LabelledImage(
            example.data, example.image_type, example.color, example.name
        )


def test_scenes_views_and_placements_vary_per_class(robust_set: list[RobustExample]) -> None:
    scenes = {
        "Dealer": DEALER_SCENES,
        "Stock": STOCK_SCENES,
        PLACEHOLDER: PLACEHOLDER_SCENES,
    }
    for image_type, allowed in scenes.items():
        seen = {e.scene for e in robust_set if e.image_type == image_type}
        assert seen == set(allowed), image_type
    cars = [e for e in robust_set if e.image_type != PLACEHOLDER]
    assert {e.view for e in cars} == set(VIEWS)
    assert {e.placement for e in cars} == set(PLACEMENTS)
    for example in robust_set:
        if example.image_type == PLACEHOLDER:
            assert example.placement is None
            assert (example.view is None) == (example.scene == "text_card")
    silhouettes = [e for e in robust_set if e.scene == "grey_silhouette"]
    assert silhouettes and all(e.view in VIEWS for e in silhouettes)


def test_nuisances_are_applied_and_recorded(robust_set: list[RobustExample]) -> None:
    counts = summarize(robust_set)["nuisance"]
    for name in ("blur", "noise", "tilt", "small", "heavy_jpeg"):
        assert counts.get(name, 0) > 0, name
    assert {e.nuisances["lighting"] for e in robust_set if "lighting" in e.nuisances} == set(
        LIGHTINGS
    )
    for example in robust_set:
        quality = example.nuisances["jpeg_quality"]
        assert isinstance(quality, int) and 5 <= quality <= 92
        if "small" in example.nuisances:
            assert example.size[0] <= 200
        json.dumps(example.nuisances)  # recordable as is


def test_drawing_only_set_keeps_the_same_scenes() -> None:
    photographic = generate_robustness_set(RobustnessConfig(seed=8, n_per_class=6))
    clean = generate_robustness_set(RobustnessConfig(seed=8, n_per_class=6, photographic=False))
    for a, b in zip(photographic, clean, strict=True):
        assert (a.image_type, a.color, a.scene, a.view, a.placement) == (
            b.image_type,
            b.color,
            b.scene,
            b.view,
            b.placement,
        )
        assert set(b.nuisances) == {"jpeg_quality"} and int(b.nuisances["jpeg_quality"]) >= 60
        assert b.size[0] >= 320


def test_lighting_changes_brightness_as_recorded() -> None:
    only_light = RobustnessConfig(
        seed=9,
        n_per_class=6,
        p_lighting=1.0,
        p_tilt=0.0,
        p_blur=0.0,
        p_noise=0.0,
        p_heavy_jpeg=0.0,
        p_small=0.0,
    )
    lit = generate_robustness_set(only_light)
    clean = generate_robustness_set(RobustnessConfig(seed=9, n_per_class=6, photographic=False))
    checked = 0
    for a, b in zip(lit, clean, strict=True):
        lighting = a.nuisances["lighting"]
        mean_a = float(np.asarray(a.decode(), dtype=np.float32).mean())
        mean_b = float(np.asarray(b.decode(), dtype=np.float32).mean())
        if lighting == "dark":
            assert mean_a < 0.75 * mean_b
            checked += 1
        elif lighting == "overexposed":
            assert mean_a > mean_b
            checked += 1
    assert checked > 0


def test_config_is_recorded_and_round_trips() -> None:
    config = RobustnessConfig(seed=21, n_per_class=10, p_blur=0.5)
    record = config.to_dict()
    assert record["generator"] == GENERATOR_NAME and record["version"] == GENERATOR_VERSION
    assert record["seed"] == 21 and record["n_per_class"] == 10
    assert RobustnessConfig.from_dict(json.loads(json.dumps(record))) == config
    assert "seed 21" in config.describe() and GENERATOR_NAME in config.describe()
    with pytest.raises(ValueError, match="v0"):
        RobustnessConfig.from_dict({**record, "version": 0})
    with pytest.raises(ValueError):
        RobustnessConfig(n_per_class=0)
    with pytest.raises(ValueError):
        RobustnessConfig(p_tilt=1.5)
    assert config.total == 30


def test_generation_is_fast() -> None:
    config = RobustnessConfig(seed=2, n_per_class=10)
    generate_example(config, 0)  # fonts load once
    started = time.perf_counter()
    generate_robustness_set(config)
    per_image = (time.perf_counter() - started) / config.total
    # About 11 ms per image on the 2-core development machine; the bound leaves room for load.
    assert per_image < 0.1
