"""Crop: trim uniform borders and letterboxing, or ask a configured crop model.

A crop is recorded as a box on the row (:attr:`ManifestRow.crop`), not as new pixels: the manifest
keeps pointing at the archived original, the export cuts the box out, and the page can show the
before and after from the same bytes. The boxes are found once, when the step is made (pixels in,
boxes out), and recorded in the recipe, so a replay needs no pixels and no crop model.

The embedded default, :class:`BorderCrop`, trims lines that are all within a tolerance of the
outermost line's color (black or white bars, a uniform frame), side by side. It refuses to keep
less than ``min_area`` of the frame: a placeholder card or a studio shot on a plain background is
mostly uniform, and trimming it to its text or its car would remove exactly what tells the Image
Types apart (see :mod:`tagging.ml.transforms`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

from tagging.curation.manifest import Box, Manifest
from tagging.errors import InvalidInput


class CropModel(Protocol):
    """Anything that finds the part of an image to train on (a configured crop model)."""

    def crop(self, image: Image.Image) -> Box | None:
        """The box to keep, in the image's pixels, or ``None`` to keep the whole image."""
        ...


@dataclass(frozen=True)
class BorderCrop:
    """The embedded crop model: trims uniform borders and letterboxing.

    Attributes:
        tolerance: Largest per-channel difference from the border color that still counts as
            border (JPEG noise on a solid bar is a few levels).
        coverage: Share of a line's pixels that must be border color for the line to be trimmed;
            just under 1 so that a stray JPEG speck does not stop the trim.
        min_trim: Fewest pixels a side must lose to count; a 1-pixel edge is not a border.
        min_area: Smallest share of the frame's area the box may keep, else no crop.
        edge_share: Share of the first lines past a border that must differ from it. A bar ends
            at a picture's edge, which runs across the whole line; a plain background (a
            placeholder card, a studio backdrop) ends where a small object starts, so it is not
            trimmed: the framing is part of what tells the Image Types apart.
    """

    tolerance: int = 16
    coverage: float = 0.99
    min_trim: int = 2
    min_area: float = 0.5
    edge_share: float = 0.5

    BLOCK = 16
    """Lines compared at a time: a border is short, so most images need one block a side."""

    def crop(self, image: Image.Image) -> Box | None:
        """The box inside the uniform borders, or ``None`` when there is nothing to trim."""
        pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
        height, width = pixels.shape[:2]
        top = self._trim(pixels)
        bottom = height - self._trim(pixels[::-1])
        left = self._trim(pixels.transpose(1, 0, 2))
        right = width - self._trim(pixels.transpose(1, 0, 2)[::-1])
        if bottom <= top or right <= left:
            return None  # a uniform image: nothing but border
        trims = (top, height - bottom, left, width - right)
        if max(trims) < self.min_trim:
            return None
        if (bottom - top) * (right - left) < self.min_area * width * height:
            return None
        return (left, top, right, bottom)

    def _trim(self, lines: np.ndarray) -> int:
        """How many leading lines of ``lines`` (``(n, length, 3)``) are a border to trim."""
        reference = np.median(lines[0], axis=0)

        def close(block: np.ndarray) -> np.ndarray:
            return (np.abs(block - reference) <= self.tolerance).all(axis=2)

        for start in range(0, len(lines), self.BLOCK):
            uniform = close(lines[start : start + self.BLOCK]).mean(axis=1) >= self.coverage
            if uniform.all():
                continue
            end = start + int(np.argmin(uniform))  # the first line that is not border
            # A JPEG edge is soft: look a few lines in for the picture's edge.
            edge = 1.0 - close(lines[end : end + 4]).mean(axis=1).min()
            return end if edge >= self.edge_share else 0
        return len(lines)  # all border


def find_crops(images: Mapping[str, Image.Image], model: CropModel | None = None) -> dict[str, Box]:
    """The crop box of every image that has one.

    Args:
        images: Images by ``sha256``, at their stored size (not draft-decoded: the boxes are in
            the pixels of :attr:`ManifestRow.width` × :attr:`ManifestRow.height`).
        model: The crop model; ``None`` uses :class:`BorderCrop`.

    Returns:
        The boxes by ``sha256``, sorted; images the model keeps whole are left out.
    """
    model = model or BorderCrop()
    boxes = {}
    for sha in sorted(images):
        box = model.crop(images[sha])
        if box is not None:
            boxes[sha] = box
    return boxes


def apply_crops(manifest: Manifest, boxes: Mapping[str, Box]) -> Manifest:
    """Record crop boxes on their rows (the rows not named keep theirs).

    Raises:
        InvalidInput: A box names an image not in the manifest, or does not fit inside it.
    """
    rows = manifest.by_sha256()
    unknown = sorted(set(boxes) - set(rows))
    if unknown:
        raise InvalidInput(f"crop boxes for images not in the manifest: {unknown[0][:12]}…")
    return manifest.map(
        lambda row: row.replace(crop=tuple(boxes[row.sha256])) if row.sha256 in boxes else row
    )


def crop_image(image: Image.Image, box: Box | None) -> Image.Image:
    """The part of ``image`` to train on (what the export writes and the page shows after)."""
    return image if box is None else image.crop(box)
