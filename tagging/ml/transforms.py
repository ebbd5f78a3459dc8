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

:class:`Augment`'s defaults are the synthetic trainer's light augmentation; :meth:`Augment.strong`
adds what real photographs vary in (zoom and off-centre framing, a small tilt, white balance, gray
images, blur, sensor noise, JPEG artefacts), so that a candidate trained on one kind of image can
do well on images framed and photographed otherwise. Those are generic photographic nuisances,
drawn here from the training run's own generator: training never sees the robustness set
(:mod:`tagging.ml.robustness`), which is kept for evaluation.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.nn import functional

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
        crop_scale: Smallest side of a random crop, as a share of the frame's side, resized back
            to the full frame (a zoom); ``1.0``: no crop.
        translate: Further off-centre shift, as a share of the frame (edges replicated).
        max_rotate: Maximum tilt in degrees, either way.
        color_cast: Maximum relative gain of each color channel (white balance).
        grayscale_p: Probability of a gray image.
        blur_p: Probability of a Gaussian blur.
        max_blur: Largest blur sigma, in pixels at the input size.
        noise_p: Probability of Gaussian sensor noise.
        max_noise: Largest noise standard deviation (pixels in ``[0, 1]``).
        jpeg_p: Probability of a JPEG re-encode (after the other steps).
        jpeg_quality: The range its quality is drawn from.

    Every step whose setting is off draws nothing from the generator, so the defaults augment
    exactly as before these steps existed (a seeded synthetic training keeps its weights).
    """

    flip_p: float = 0.5
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    max_shift: int = 3
    crop_scale: float = 1.0
    translate: float = 0.0
    max_rotate: float = 0.0
    color_cast: float = 0.0
    grayscale_p: float = 0.0
    blur_p: float = 0.0
    max_blur: float = 1.5
    noise_p: float = 0.0
    max_noise: float = 0.05
    jpeg_p: float = 0.0
    jpeg_quality: tuple[int, int] = (10, 90)

    def __post_init__(self) -> None:
        if not 0.0 < self.crop_scale <= 1.0:
            raise ValueError(f"crop_scale must be in (0, 1], got {self.crop_scale}")
        for name in ("flip_p", "grayscale_p", "blur_p", "noise_p", "jpeg_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability, got {getattr(self, name)}")
        low, high = self.jpeg_quality
        if not 1 <= low <= high <= 95:
            raise ValueError(f"jpeg_quality must be a range within 1..95, got {self.jpeg_quality}")

    @classmethod
    def strong(cls) -> Augment:
        """Photographic variety for candidates meant to work beyond the training images' look:
        zoom to 60% of the side, off-centre by up to 15%, tilt up to 8°, stronger light and
        white-balance changes, gray images, blur, noise and JPEG down to quality 10."""
        return cls(
            brightness=0.35,
            contrast=0.3,
            saturation=0.4,
            max_shift=0,
            crop_scale=0.6,
            translate=0.15,
            max_rotate=8.0,
            color_cast=0.15,
            grayscale_p=0.1,
            blur_p=0.3,
            noise_p=0.25,
            jpeg_p=0.3,
        )

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
        if self.crop_scale < 1.0 or self.translate > 0.0 or self.max_rotate > 0.0:
            out = self._geometry(out.clamp(0.0, 1.0), generator)
        if self.color_cast > 0.0:
            gains = (
                1.0 + (2.0 * torch.rand(n, 3, 1, 1, generator=generator) - 1.0) * self.color_cast
            )
            out = out * gains
        if self.grayscale_p > 0.0:
            gray_mask = torch.rand(n, generator=generator) < self.grayscale_p
            luma = (out * _LUMA.view(1, 3, 1, 1)).sum(dim=1, keepdim=True).expand_as(out)
            out = torch.where(gray_mask[:, None, None, None], luma, out)
        if self.blur_p > 0.0:
            sigma = torch.rand(n, generator=generator) * self.max_blur
            blurred = torch.rand(n, generator=generator) < self.blur_p
            out = _blur(out, torch.where(blurred, sigma.clamp(min=0.3), torch.zeros(n)))
        if self.noise_p > 0.0:
            std = torch.rand(n, 1, 1, 1, generator=generator) * self.max_noise
            noisy = (torch.rand(n, 1, 1, 1, generator=generator) < self.noise_p).float()
            out = out + torch.randn(out.shape, generator=generator) * std * noisy
        out = out.clamp_(0.0, 1.0)
        if self.jpeg_p > 0.0:
            out = self._jpeg(out, generator)
        return out

    def _geometry(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A random zoom (crop resized back), off-centre shift and tilt, in one resampling."""
        n = batch.shape[0]
        scale = self.crop_scale + (1.0 - self.crop_scale) * torch.rand(n, 2, generator=generator)
        # Where the crop sits: anywhere inside the frame, plus the extra off-centre shift.
        room = (1.0 - scale) + 2.0 * self.translate
        centre = (2.0 * torch.rand(n, 2, generator=generator) - 1.0) * room
        angle = (2.0 * torch.rand(n, generator=generator) - 1.0) * math.radians(self.max_rotate)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack(
            [
                torch.stack([scale[:, 0] * cos, -scale[:, 1] * sin, centre[:, 0]], dim=1),
                torch.stack([scale[:, 0] * sin, scale[:, 1] * cos, centre[:, 1]], dim=1),
            ],
            dim=1,
        )
        grid = functional.affine_grid(theta, list(batch.shape), align_corners=False)
        return functional.grid_sample(
            batch, grid, mode="bilinear", padding_mode="border", align_corners=False
        )

    def _jpeg(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Re-encode a random share of the images as JPEG at a random quality (blocks, ringing)."""
        n = batch.shape[0]
        chosen = torch.rand(n, generator=generator) < self.jpeg_p
        low, high = self.jpeg_quality
        qualities = torch.randint(low, high + 1, (n,), generator=generator).tolist()
        out = batch.clone()
        for i in torch.nonzero(chosen).flatten().tolist():
            pixels = (batch[i] * 255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
            buffer = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(pixels)).save(
                buffer, format="JPEG", quality=int(qualities[i])
            )
            decoded = np.asarray(Image.open(buffer).convert("RGB"), dtype=np.uint8)
            out[i] = torch.from_numpy(decoded.copy()).permute(2, 0, 1).float() / 255.0
        return out


_LUMA = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float32)
"""ITU-R 601 luma weights, as Pillow's ``convert("L")``."""


def _blur(batch: torch.Tensor, sigma: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """A separable Gaussian blur with one sigma per image (0: unchanged)."""
    n, c, h, w = batch.shape
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    safe = sigma.clamp(min=1e-3)[:, None]
    kernel = torch.exp(-(offsets[None, :] ** 2) / (2.0 * safe**2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    # A zero sigma is the identity kernel, exactly.
    identity = (offsets == 0).float()[None, :].expand(n, -1)
    kernel = torch.where((sigma > 0)[:, None], kernel, identity)
    per_channel = kernel.repeat_interleave(c, dim=0)  # (n*c, k)
    flat = batch.reshape(1, n * c, h, w)
    flat = functional.pad(flat, (radius, radius, radius, radius), mode="replicate")
    flat = functional.conv2d(flat, per_channel.view(n * c, 1, 1, -1), groups=n * c)
    flat = functional.conv2d(flat, per_channel.view(n * c, 1, -1, 1), groups=n * c)
    return flat.reshape(n, c, h, w)


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
