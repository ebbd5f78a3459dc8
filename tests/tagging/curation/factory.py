"""Crafted rows and pictures for the curation tests."""

from __future__ import annotations

import hashlib
import io
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

from tagging.curation.manifest import ManifestRow
from tagging.ingest.images import perceptual_hash


def sha(key: object) -> str:
    """A stable content key for a test row."""
    return hashlib.sha256(str(key).encode()).hexdigest()


def row(key: object, image_type: str = "Dealer", **fields: Any) -> ManifestRow:
    """A valid row; ``fields`` override the defaults."""
    values: dict[str, Any] = {
        "sha256": sha(key),
        "path": f"archive/{sha(key)[:2]}/{sha(key)}.jpg",
        "image_type": image_type,
        "color": None if image_type == "Placeholder" else "Red",
        "origin": f"fix:{int(sha(key)[:4], 16)} by alice",
        "width": 640,
        "height": 480,
    }
    values.update(fields)
    return ManifestRow(**values)


def picture(seed: int, size: tuple[int, int] = (160, 120)) -> Image.Image:
    """A picture of random colored blocks: two seeds give unrelated pictures."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    return Image.fromarray(blocks).resize(size, Image.Resampling.BICUBIC)


def slightly_changed(image: Image.Image) -> Image.Image:
    """The same picture re-encoded as a lower-quality JPEG and a little brighter."""
    brighter = ImageEnhance.Brightness(image).enhance(1.06)
    buffer = io.BytesIO()
    brighter.save(buffer, format="JPEG", quality=60)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def phash(image: Image.Image) -> str:
    """The production pHash of a picture."""
    return perceptual_hash(image)
