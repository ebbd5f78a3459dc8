"""The vectorised color vote gives exactly the answers of the per-pixel vote it replaced.

:func:`reference_votes` is the implementation before the vote was vectorised (issue 11), kept
here verbatim as the oracle: every pixel converted to Lab and matched on its own, one image at a
time. The new vote must give the same vote counts, hence the same colors, on the demo's images
(decoded as the ML server decodes them, and at full size) and on freshly rendered cars.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from db.vocab import COLORS
from tagging.ml.color import EmbeddedColorConfig, EmbeddedColorModel, srgb_to_lab
from tagging.ml.data import render_decoded


def reference_votes(model: EmbeddedColorModel, image: Image.Image) -> np.ndarray:
    """The vote of one image as the model counted it before it was vectorised."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    w, h = image.size
    left, top, right, bottom = model.config.box
    box = (left * w, top * h, right * w, bottom * h)
    side = model.config.side
    patch = image.resize((side, side), Image.Resampling.BOX, box=box)
    pixels = np.asarray(patch, dtype=np.float64).reshape(-1, 3)
    lab = srgb_to_lab(pixels)
    distances = np.linalg.norm(lab[:, None, :] - model._reference_lab[None, :, :], axis=2)
    nearest = distances.argmin(axis=1)
    paint = distances[np.arange(len(nearest)), nearest] <= model.config.max_distance
    return np.bincount(nearest[paint], minlength=len(COLORS)).astype(np.float64)


def reference_color(model: EmbeddedColorModel, image: Image.Image) -> str | None:
    votes = reference_votes(model, image)
    total = votes.sum()
    if total <= 0:
        return None
    best = int(votes.argmax())
    return COLORS[best] if votes[best] / total >= model.config.min_share else None


def assert_same_as_reference(model: EmbeddedColorModel, images: list[Image.Image]) -> None:
    expected = np.stack([reference_votes(model, image) for image in images])
    for start in range(0, len(images), 64):  # the ML server's batches
        batch = images[start : start + 64]
        np.testing.assert_array_equal(model.votes_many(batch), expected[start : start + 64])
        assert model.predict(batch) == [reference_color(model, image) for image in batch]


def demo_images(demo_dir: Path, *, as_served: bool) -> list[Image.Image]:
    from tagging.demo.generate import DemoInventory
    from tagging.errors import ImageDecodeError
    from tagging.ingest.images import decode_image
    from tagging.server.pipeline import PipelineConfig, model_image

    config = PipelineConfig()
    inventory = DemoInventory.load(demo_dir)
    images = []
    for path in sorted(inventory.images):
        data = inventory.file_path(path).read_bytes()
        try:
            if as_served:
                decoded = decode_image(data, draft_size=config.draft_size)
                images.append(model_image(decoded.image, config.model_image_size))
            else:
                images.append(decode_image(data, draft_size=(100_000, 100_000)).image)
        except ImageDecodeError:
            continue  # the demo's broken files
    return images


@pytest.mark.parametrize("as_served", [True, False], ids=["as-served", "full-size"])
def test_same_votes_as_the_per_pixel_vote_on_the_demo(demo_dir: Path, as_served: bool) -> None:
    images = demo_images(demo_dir, as_served=as_served)
    assert len(images) > 100
    model = EmbeddedColorModel()
    assert_same_as_reference(model, images)
    # and the demo's colors are really voted on, not all None
    assert len({reference_color(model, image) for image in images}) >= 10


def test_same_votes_on_rendered_cars_and_odd_images() -> None:
    rng = random.Random("vectorised-vote")
    sizes = ((480, 360), (173, 97), (1024, 768))
    images = [
        render_decoded(image_type, color, rng, quality=rng.randint(40, 95), size=size)
        for color in COLORS
        for image_type in ("Dealer", "Stock")
        for size in sizes
    ]
    images += [render_decoded("Placeholder", None, rng, quality=80, size=size) for size in sizes]
    noise = np.random.default_rng(11).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    images += [
        Image.fromarray(noise),  # every pixel a different color
        Image.new("RGB", (200, 150), (0, 255, 255)),  # no paint at all
        Image.new("RGB", (1, 1), (178, 20, 28)),  # smaller than the vote's patch
        Image.new("L", (64, 48), 128),
        Image.fromarray(noise).convert("P"),
        Image.fromarray(noise).convert("RGBA"),
    ]
    model = EmbeddedColorModel()
    assert_same_as_reference(model, images)
    # other settings too: a wider box, a stricter threshold
    assert_same_as_reference(
        EmbeddedColorModel(EmbeddedColorConfig(box=(0.1, 0.2, 0.9, 0.9), side=48, max_distance=12)),
        images,
    )


def test_batch_answers_do_not_depend_on_the_batch() -> None:
    """An image's vote is its own: the same alone, in any batch, in any order."""
    rng = random.Random("batch-independence")
    images = [render_decoded("Dealer", color, rng, quality=85) for color in COLORS]
    model = EmbeddedColorModel()
    alone = np.stack([model.votes(image) for image in images])
    together = model.votes_many(images)
    np.testing.assert_array_equal(alone, together)
    np.testing.assert_array_equal(model.votes_many(images[::-1]), together[::-1])
    assert model.votes_many([]).shape == (0, len(COLORS))
