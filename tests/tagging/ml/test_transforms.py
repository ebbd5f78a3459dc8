"""The Image Type model's transforms: serving and training must see identical pixels."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from tagging.ml.data import render_decoded
from tagging.ml.transforms import (
    MEAN,
    STD,
    Augment,
    preprocess,
    resize_to_array,
    stack_arrays,
    to_model_input,
)

SIZE = 64


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    rng = random.Random(3)
    return [
        render_decoded("Dealer", "Red", rng, quality=85),
        render_decoded("Stock", "Blue", rng, quality=75, size=(640, 480)),
        render_decoded("Placeholder", None, rng, quality=90, size=(320, 240)),
    ]


def test_resize_keeps_the_whole_frame() -> None:
    # Marks in all four corners must survive: the transform squashes, it never crops.
    image = Image.new("RGB", (240, 180), (128, 128, 128))
    corners = {(0, 0): (255, 0, 0), (216, 0): (0, 255, 0), (0, 162): (0, 0, 255)}
    for (x, y), color in corners.items():
        image.paste(color, (x, y, x + 24, y + 18))
    out = resize_to_array(image, SIZE)
    assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.uint8
    assert tuple(out[1, 1]) == (255, 0, 0)
    assert tuple(out[1, SIZE - 2]) == (0, 255, 0)
    assert tuple(out[SIZE - 2, 1]) == (0, 0, 255)
    assert tuple(out[SIZE - 2, SIZE - 2]) == (128, 128, 128)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_resize_converts_any_mode_to_rgb(mode: str) -> None:
    image = Image.new("RGB", (100, 80), (200, 40, 40)).convert(mode)
    assert resize_to_array(image, SIZE).shape == (SIZE, SIZE, 3)


def test_serving_preprocess_equals_the_training_path(photos: list[Image.Image]) -> None:
    # Training stores resize_to_array's output and normalizes per batch; serving does both at once.
    training = to_model_input(stack_arrays([resize_to_array(p, SIZE) for p in photos]))
    serving = preprocess(photos, SIZE)
    assert serving.shape == (3, 3, SIZE, SIZE) and serving.dtype == torch.float32
    assert torch.equal(training, serving)


def test_normalization_centres_the_mean_color() -> None:
    gray = tuple(round(m * 255) for m in MEAN)
    x = preprocess([Image.new("RGB", (50, 50), gray)], SIZE)
    assert x.abs().max().item() < 0.5 / 255 / min(STD) + 1e-6


def test_stack_arrays_is_channels_first() -> None:
    arrays = np.zeros((2, SIZE, SIZE, 3), dtype=np.uint8)
    arrays[1, :, :, 2] = 7
    batch = stack_arrays(arrays)
    assert batch.shape == (2, 3, SIZE, SIZE) and batch.dtype == torch.uint8
    assert batch[1, 2].eq(7).all() and batch[1, :2].eq(0).all()


def test_augment_is_reproducible_and_bounded(photos: list[Image.Image]) -> None:
    batch = stack_arrays([resize_to_array(p, SIZE) for p in photos])
    a = to_model_input(batch, Augment(), torch.Generator().manual_seed(5))
    b = to_model_input(batch, Augment(), torch.Generator().manual_seed(5))
    c = to_model_input(batch, Augment(), torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    low = (0 - torch.tensor(MEAN)) / torch.tensor(STD)
    high = (1 - torch.tensor(MEAN)) / torch.tensor(STD)
    assert (a >= low.view(1, 3, 1, 1) - 1e-5).all() and (a <= high.view(1, 3, 1, 1) + 1e-5).all()


def test_augment_flip_only_mirrors() -> None:
    x = torch.rand(4, 3, 8, 8)
    flip = Augment(flip_p=1.0, brightness=0, contrast=0, saturation=0, max_shift=0)
    assert torch.allclose(flip(x, torch.Generator().manual_seed(0)), x.flip(-1))


def test_augment_keeps_the_hue_of_a_body_color() -> None:
    # The jitter covers exposure and white balance; a red car must stay red.
    red = torch.tensor([178, 20, 28], dtype=torch.float32).div(255).view(1, 3, 1, 1)
    x = red.expand(64, 3, 8, 8).clone()
    out = Augment()(x, torch.Generator().manual_seed(1))
    r, g, b = out[:, 0], out[:, 1], out[:, 2]
    assert (r > 3 * g).all() and (r > 3 * b).all()
    assert torch.allclose(out.mean(dim=(2, 3)), out[:, :, 0, 0], atol=1e-5)  # still uniform


def test_augment_needs_a_generator() -> None:
    with pytest.raises(ValueError, match="Generator"):
        to_model_input(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), Augment())
