"""Image → tensor transforms of the Image Type model, shared by training and serving.

The pipeline has two halves so that the expensive, deterministic half can run once per image in
the data-generation workers and the cheap, random half per batch in the training loop:

1. :func:`resize_to_array` — PIL RGB image → ``uint8`` ``(H, W, 3)`` array at the model's input
   size. The whole frame is resized (squashed, never cropped): a crop could cut off the
   "photo coming soon" text that identifies a placeholder, and the lot-versus-studio background
   that separates Dealer from Stock lives at the frame's edges.
2. :func:`to_model_input` — a ``uint8`` batch → normalized ``float32`` ``(N, 3, H, W)`` tensor,
   optionally with :class:`Augment` applied first (training only).

Serving calls :func:`preprocess`, which is exactly (1) then (2) without augmentation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
"""Per-channel mean subtracted from ``[0, 1]`` pixels (the usual ImageNet constants)."""

STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""Per-channel standard deviation the centred pixels are divided by."""


def resize_to_array(image: Image.Image, input_size: int) -> np.ndarray:
    """Resize a whole image to ``input_size × input_size`` RGB pixels.

    Args:
        image: Any PIL image; it is converted to RGB first.
        input_size: The model's square input side, in pixels.

    Returns:
        A ``uint8`` array of shape ``(input_size, input_size, 3)``.
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    # BOX averages every source pixel into its output pixel: a proper antialiasing downscale (thin
    # text strokes fade instead of aliasing away) and Pillow's cheapest filter, which matters at
    # serving time where 64 images are resized per batch.
    resized = image.resize((input_size, input_size), Image.Resampling.BOX)
    return np.asarray(resized, dtype=np.uint8)


@dataclass(frozen=True)
class Augment:
    """Train-time augmentation of the Image Type model.

    Every change keeps the Image Type: a mirrored dealer photo is still a dealer photo. The color
    jitter is small and leaves hue alone because it only has to cover exposure and white-balance
    differences between cameras; this model never predicts color.

    Attributes:
        flip_p: Probability of a horizontal flip.
        brightness: Maximum relative brightness change (``0.1`` → ×0.9 … ×1.1).
        contrast: Maximum relative contrast change around each image's mean gray.
        saturation: Maximum relative saturation change around each pixel's gray.
        max_shift: Maximum translation in pixels, each axis, with edge replication.
    """

    flip_p: float = 0.5
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    max_shift: int = 3

    def __call__(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment a batch of ``[0, 1]`` float images.

        Args:
            batch: ``float32`` tensor ``(N, 3, H, W)`` in ``[0, 1]``.
            generator: The source of randomness, so a seeded run is reproducible.

        Returns:
            A new tensor of the same shape, clamped to ``[0, 1]``.
        """
        n = batch.shape[0]

        def uniform(spread: float) -> torch.Tensor:
            u = torch.rand(n, 1, 1, 1, generator=generator)
            return 1.0 + (2.0 * u - 1.0) * spread

        flip = torch.rand(n, generator=generator) < self.flip_p
        out = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
        if self.max_shift > 0:
            out = _shift(out, self.max_shift, generator)
        out = out * uniform(self.brightness)
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * uniform(self.contrast) + mean
        gray = out.mean(dim=1, keepdim=True)
        out = (out - gray) * uniform(self.saturation) + gray
        return out.clamp_(0.0, 1.0)


def _shift(batch: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels, replicating the edge."""
    n, _, h, w = batch.shape
    padded = torch.nn.functional.pad(batch, (max_shift,) * 4, mode="replicate")
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    # A per-image slice loop is cheap at these sizes and clearer than a gather over indices.
    return torch.stack(
        [padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets.tolist())]
    )


def to_model_input(
    batch: torch.Tensor,
    augment: Augment | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Turn a ``uint8`` batch into the model's normalized float input.

    Args:
        batch: ``uint8`` tensor ``(N, 3, H, W)``, as made by :func:`stack_arrays`.
        augment: Augmentation to apply before normalizing; ``None`` at evaluation and serving.
        generator: Required with ``augment``.

    Returns:
        ``float32`` tensor ``(N, 3, H, W)`` normalized with :data:`MEAN` and :data:`STD`.
    """
    x = batch.to(torch.float32).div_(255.0)
    if augment is not None:
        if generator is None:
            raise ValueError("augment needs a torch.Generator so that training is reproducible")
        x = augment(x, generator)
    mean = torch.tensor(MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - mean) / std


def stack_arrays(arrays: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    """Stack ``(H, W, 3)`` ``uint8`` arrays into a contiguous ``(N, 3, H, W)`` ``uint8`` tensor."""
    stacked = arrays if isinstance(arrays, np.ndarray) else np.stack(list(arrays))
    return torch.from_numpy(np.ascontiguousarray(stacked)).permute(0, 3, 1, 2).contiguous()


def preprocess(images: Sequence[Image.Image], input_size: int) -> torch.Tensor:
    """Serving-time preprocessing: PIL images → the model's normalized input batch.

    Args:
        images: Decoded images (see :func:`tagging.ingest.images.decode_image`); at least one.
        input_size: The model's square input side, from its metadata.

    Returns:
        ``float32`` tensor ``(len(images), 3, input_size, input_size)``.
    """
    arrays = [resize_to_array(image, input_size) for image in images]
    return to_model_input(stack_arrays(arrays))
