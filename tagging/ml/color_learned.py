"""A learned color model: a small CNN over the whole image, a candidate beside the Lab vote.

:class:`tagging.ml.color.EmbeddedColorModel` reads a fixed box in the middle of the frame, so it
names the background when the car is off-centre, cropped or seen three-quarter on. The
:class:`LearnedColorModel` here looks at the whole frame (resized, as the Image Type model does)
and has learned where the car is; it satisfies the same :class:`~tagging.ml.color.ColorModel`
protocol, so serving can use either, and :func:`compare_color_models` /
:func:`choose_color_model` decide which one serves from their scores on evaluation sets.

The pieces:

* **Training data** (:func:`synthetic_color_examples`, :func:`manifest_color_examples`): cars of
  the project's renderer (:mod:`tagging.ml.synth`, through serving's JPEG decode), plus a dataset
  version's labelled rows when given. The robustness set (:mod:`tagging.ml.robustness`) is never
  used here: it must stay unseen to measure what it measures.
* **Photographic nuisances** (:class:`ColorAugment`): random resized and off-centre crops, blur,
  JPEG re-encoding, small images (per image, before the resize), then exposure, contrast,
  saturation and a mild white-balance cast (per batch). Every change keeps the paint's name: the
  exposure moves the whole scene, tyres and windows included, so the car's paint stays readable
  relative to them; a hue rotation would turn Red into Orange, so there is none, and the cast is
  a few percent per channel.
* **Abstaining** (outlier exposure, Hendrycks et al., ICLR 2019): placeholders (no car) are
  trained towards the uniform distribution over the colors, so the network stays unsure on them
  and :class:`LearnedColorModel` answers ``None`` below ``min_confidence``, as the protocol
  allows. The server never asks a placeholder's color; this is the model's own guard.
* **Training** (:func:`train_color_model`): seeded, one torch thread by default, deterministic
  algorithms, per-epoch curves through a callback.
* **Artifacts** (:func:`save_color_model`, :func:`load_color_model`):
  ``models_dir/color/<version>/{weights.pt, metadata.json}``, the weights' SHA-256 checked on
  every load, a ``PRODUCTION`` file naming the promoted version. Nothing is ever downloaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch import nn
from torch.nn import functional

from db.vocab import COLORS, IMAGE_TYPES, PLACEHOLDER
from tagging.errors import ImageDecodeError, InvalidInput, ModelError
from tagging.ingest.images import decode_image
from tagging.ml.architectures import ARCHITECTURES, SMALL_CNN, build_architecture
from tagging.ml.color import ColorModel
from tagging.ml.data import DEMO_SEED, render_decoded
from tagging.ml.evaluate import NO_COLOR, ClassificationMetrics
from tagging.ml.train import reproducible
from tagging.ml.transforms import MEAN, STD, resize_to_array, stack_arrays, to_model_input

if TYPE_CHECKING:
    from tagging.curation.manifest import ManifestRow

COLOR_SUBDIR = "color"
"""The learned color models live in ``models_dir/color/``, apart from the Image Type versions."""

WEIGHTS_FILE = "weights.pt"
METADATA_FILE = "metadata.json"
PRODUCTION_FILE = "PRODUCTION"
KIND = "color"
"""``metadata.json``'s ``kind``: a color artifact is never mistaken for an Image Type one."""

_VERSION_RE = re.compile(r"^color-\d{8}-[0-9a-f]{8}$")

ImageLike = Image.Image | np.ndarray
"""A decoded image: a PIL image, or a ``uint8`` ``(H, W, 3)`` RGB array."""

CAR_TYPES: tuple[str, ...] = tuple(t for t in IMAGE_TYPES if t != PLACEHOLDER)
"""The Image Types that show a car, hence have a color."""

RENDER_SIZES: tuple[tuple[int, int], ...] = ((480, 360), (640, 480), (400, 300), (320, 240))
"""Render sizes of synthetic examples: usual dealer-site sizes, each decoded at another JPEG
draft scale, as served images are."""


# --------------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class ColorAugment:
    """Photographic nuisances applied while training (see the module docstring).

    The first group acts on each decoded image before it is resized to the input size (once per
    precomputed view); the second on each batch of ``[0, 1]`` tensors (every step).

    Attributes:
        crop_p: Probability of a random resized crop (else the whole frame is used).
        crop_scale: Range of the crop's area as a share of the frame. Crops are placed anywhere,
            so the car ends up off-centre or cut by the frame's edge.
        crop_ratio: Range of the crop's aspect ratio relative to the frame's.
        zoom_out_p: Probability of the opposite, when there is no crop: the frame shrunk to
            ``zoom_out_scale`` of its size and pasted anywhere on a plain gradient of two random
            colors, so the car is small and off-centre and the biggest flat area is not paint.
        zoom_out_scale: Range of the shrunk frame's side, as a share of the original.
        blur_p: Probability of a Gaussian blur.
        blur_radius: Range of the blur radius, as a share of the image's shorter side.
        jpeg_p: Probability of a JPEG re-encode.
        jpeg_quality: Range of that JPEG quality (low values give blocky, smeared color).
        small_p: Probability of shrinking the image first (a small photo, upscaled).
        small_side: Range of the shrunk image's longer side, in pixels.
        flip_p: Probability of a horizontal mirror.
        brightness: Range of the exposure factor. Darker more than brighter: brightening clips
            the strongest channel at 255, which turns a bright Orange towards Yellow.
        gamma: Maximum relative gamma change (``0.15`` → γ 0.85 … 1.15); a strong gamma bends
            the ratio of the channels of dark paints, hence their hue.
        contrast: Maximum relative contrast change around the image's mean.
        saturation: Maximum relative saturation change around each pixel's gray.
        cast: Maximum relative gain of each channel, a white-balance cast; kept mild so that
            no paint turns into its neighbour (Beige into Gold, Silver into Blue).
        noise: Maximum standard deviation of additive Gaussian sensor noise, in ``[0, 1]`` units.
    """

    crop_p: float = 0.6
    crop_scale: tuple[float, float] = (0.35, 1.0)
    crop_ratio: tuple[float, float] = (0.75, 1.33)
    zoom_out_p: float = 0.5
    zoom_out_scale: tuple[float, float] = (0.45, 0.9)
    blur_p: float = 0.3
    blur_radius: tuple[float, float] = (0.002, 0.012)
    jpeg_p: float = 0.4
    jpeg_quality: tuple[int, int] = (12, 70)
    small_p: float = 0.25
    small_side: tuple[int, int] = (64, 180)
    flip_p: float = 0.5
    brightness: tuple[float, float] = (0.6, 1.15)
    gamma: float = 0.15
    contrast: float = 0.3
    saturation: float = 0.2
    cast: float = 0.06
    noise: float = 0.03

    def view(self, image: Image.Image, rng: random.Random, input_size: int) -> np.ndarray:
        """One augmented view of ``image`` at the model's input size.

        Args:
            image: A decoded RGB image.
            rng: The source of every random choice, so views are reproducible.
            input_size: The model's square input side.

        Returns:
            A ``uint8`` ``(input_size, input_size, 3)`` array, resized as serving resizes.
        """
        if image.mode != "RGB":
            image = image.convert("RGB")
        w, h = image.size
        if rng.random() < self.crop_p:
            area = rng.uniform(*self.crop_scale)
            # A log-uniform ratio is symmetric: as likely twice as wide as twice as tall.
            ratio = math.exp(
                rng.uniform(math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1]))
            )
            cw = min(w, max(8, round(w * math.sqrt(area * ratio))))
            ch = min(h, max(8, round(h * math.sqrt(area / ratio))))
            left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
            image = image.crop((left, top, left + cw, top + ch))
        elif rng.random() < self.zoom_out_p:
            image = self._zoom_out(image, rng)
        if rng.random() < self.small_p:
            side = rng.randint(*self.small_side)
            scale = side / max(image.size)
            if scale < 1:
                small = (max(8, round(image.width * scale)), max(8, round(image.height * scale)))
                image = image.resize(small, Image.Resampling.BILINEAR)
        if rng.random() < self.blur_p:
            radius = rng.uniform(*self.blur_radius) * min(image.size)
            image = image.filter(ImageFilter.GaussianBlur(radius))
        if rng.random() < self.jpeg_p:
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=rng.randint(*self.jpeg_quality))
            buffer.seek(0)
            image = Image.open(buffer).convert("RGB")
        return resize_to_array(image, input_size)

    def _zoom_out(self, image: Image.Image, rng: random.Random) -> Image.Image:
        """``image`` shrunk and pasted at a random place on a two-color vertical gradient."""
        w, h = image.size
        scale = rng.uniform(*self.zoom_out_scale)
        small = image.resize((max(8, round(w * scale)), max(8, round(h * scale))))
        top = np.array([rng.randrange(256) for _ in range(3)], dtype=np.float32)
        bottom = np.array([rng.randrange(256) for _ in range(3)], dtype=np.float32)
        t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
        rows = np.broadcast_to(top + (bottom - top) * t, (h, w, 3))
        canvas = Image.fromarray(np.ascontiguousarray(rows).astype(np.uint8), mode="RGB")
        canvas.paste(small, (rng.randint(0, w - small.width), rng.randint(0, h - small.height)))
        return canvas

    def jitter(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Flip, exposure, gamma, contrast, saturation, a mild cast and noise on a batch.

        Args:
            batch: ``float32`` ``(N, 3, H, W)`` in ``[0, 1]``.
            generator: The source of randomness.

        Returns:
            A new tensor of the same shape, clamped to ``[0, 1]``.
        """
        n = batch.shape[0]

        def spread(amount: float, channels: int = 1) -> torch.Tensor:
            u = torch.rand(n, channels, 1, 1, generator=generator)
            return 1.0 + (2.0 * u - 1.0) * amount

        flip = torch.rand(n, generator=generator) < self.flip_p
        out = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
        low, high = self.brightness
        exposure = low + torch.rand(n, 1, 1, 1, generator=generator) * (high - low)
        out = (out * exposure).clamp(0.0, 1.0)
        out = out.pow(spread(self.gamma))
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * spread(self.contrast) + mean
        gray = out.mean(dim=1, keepdim=True)
        out = (out - gray) * spread(self.saturation) + gray
        out = out * spread(self.cast, channels=3)
        sigma = torch.rand(n, 1, 1, 1, generator=generator) * self.noise
        out = out + torch.randn(out.shape, generator=generator) * sigma
        return out.clamp_(0.0, 1.0)


@dataclass(frozen=True)
class ColorTrainConfig:
    """Everything that determines a trained color model (besides its examples).

    Attributes:
        seed: Seeds the split, the views, initialization, shuffling and the batch jitter.
        architecture: A name of :data:`tagging.ml.architectures.ARCHITECTURES`.
        width: Channels of the network's first layer; ``None`` for the architecture's default.
        input_size: Square input side: the whole frame is resized to it.
        epochs: Passes over the training views.
        batch_size: Views per optimizer step.
        lr: Peak learning rate of the one-cycle schedule (AdamW).
        weight_decay: AdamW weight decay.
        label_smoothing: Cross-entropy label smoothing on cars.
        val_fraction: Share of each color held out (clean views) for the curves and the report.
        views_per_image: Augmented views per training image, besides its clean view.
        augment: Whether to apply :class:`ColorAugment` at all (off: clean views only).
        nuisances: The augmentation's tuning.
        outlier_weight: Weight of the outlier-exposure loss on placeholders (uniform target).
        min_confidence: Below this top probability the trained model answers ``None``. Twice
            the uniform 1/13: placeholders trained towards uniform stay below it (99% of them in
            a 5-epoch run), while few unusual cars fall under it.
        threads: Torch intra-op threads while training (one: see :mod:`tagging.ml.train`).
    """

    seed: int = 1
    architecture: str = SMALL_CNN
    width: int | None = 16
    input_size: int = 64
    epochs: int = 10
    batch_size: int = 64
    lr: float = 4e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.05
    val_fraction: float = 0.1
    views_per_image: int = 2
    augment: bool = True
    nuisances: ColorAugment = field(default_factory=ColorAugment)
    outlier_weight: float = 0.5
    min_confidence: float = 0.15
    threads: int = 1

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"unknown architecture {self.architecture!r}; "
                f"expected one of {sorted(ARCHITECTURES)}"
            )
        if self.input_size < 32:
            raise ValueError("input_size must be at least 32 pixels")
        if self.epochs < 1 or self.batch_size < 2 or self.threads < 1:
            raise ValueError("epochs and threads must be at least 1, batch_size at least 2")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError("val_fraction must be in [0, 1)")
        if self.views_per_image < 0:
            raise ValueError("views_per_image must not be negative")
        if not 0.0 <= self.min_confidence < 1.0:
            raise ValueError("min_confidence must be in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (tuples as lists), as stored in the metadata."""
        return json.loads(json.dumps(asdict(self)))


@dataclass(frozen=True)
class SyntheticColorConfig:
    """Synthetic cars for training, from :func:`tagging.ml.synth.render`.

    Attributes:
        seed: Root of every random choice; the demo's seed is refused (the demo is held out).
        n_per_color: Cars per color, half dealer photos and half stock photos.
        jpeg_quality: Range of the JPEG quality each render is encoded with before decoding.
        image_sizes: Render sizes drawn from.
    """

    seed: int = 11
    n_per_color: int = 200
    jpeg_quality: tuple[int, int] = (60, 95)
    image_sizes: tuple[tuple[int, int], ...] = RENDER_SIZES

    def __post_init__(self) -> None:
        if self.seed == DEMO_SEED:
            raise ValueError(f"seed {DEMO_SEED} renders the demo inventory; train on another seed")
        if self.n_per_color < 1:
            raise ValueError("n_per_color must be at least 1")


# --------------------------------------------------------------------------------------------------
# training data


def synthetic_color_examples(config: SyntheticColorConfig) -> Iterator[tuple[Image.Image, str]]:
    """Yield rendered cars with their body color, colors and types interleaved.

    Each image goes through what a served image goes through (render → JPEG → ``decode_image``),
    and draws its choices from its own seeded stream, so the examples are reproducible.

    Args:
        config: What to render.

    Yields:
        ``(decoded RGB image, color)``, ``n_per_color × len(COLORS)`` of them.
    """
    low, high = config.jpeg_quality
    for index in range(config.n_per_color * len(COLORS)):
        color = COLORS[index % len(COLORS)]
        image_type = CAR_TYPES[(index // len(COLORS)) % len(CAR_TYPES)]
        rng = random.Random(f"tagdesk-color:{config.seed}:{index}")
        size = config.image_sizes[rng.randrange(len(config.image_sizes))]
        image = render_decoded(image_type, color, rng, quality=rng.randint(low, high), size=size)
        yield image, color


def synthetic_placeholders(count: int, seed: int = 11) -> Iterator[Image.Image]:
    """Yield rendered placeholders (no car): the outliers a color model should be unsure on.

    Args:
        count: How many.
        seed: Root of the random choices (not the demo's).
    """
    if seed == DEMO_SEED:
        raise ValueError(f"seed {DEMO_SEED} renders the demo inventory; train on another seed")
    for index in range(count):
        rng = random.Random(f"tagdesk-color-placeholder:{seed}:{index}")
        size = RENDER_SIZES[rng.randrange(len(RENDER_SIZES))]
        yield render_decoded(PLACEHOLDER, None, rng, quality=rng.randint(60, 95), size=size)


def manifest_color_examples(
    rows: Iterable[ManifestRow],
    read: Callable[[ManifestRow], bytes],
    *,
    split: str | None = "train",
) -> Iterator[tuple[Image.Image, str]]:
    """Yield a dataset version's labelled cars, for training or evaluating a color model.

    Only training rows (not excluded) of ``split`` that show a car with a known color are used;
    a row's crop (borders found by curation) is applied. An image that no longer decodes is
    skipped, as the ML server would refuse it.

    Args:
        rows: The version's manifest rows (:class:`tagging.curation.manifest.ManifestRow`).
        read: Returns a row's stored bytes, e.g. ``lambda row: archive.get(row.sha256)`` with
            :func:`tagging.datasets.archive.archive_from_settings`.
        split: ``"train"``, ``"test"``, or ``None`` for every included row.

    Yields:
        ``(decoded RGB image, color)``.
    """
    for row in rows:
        if not row.included or row.color is None or row.image_type == PLACEHOLDER:
            continue
        if split is not None and row.split != split:
            continue
        try:
            image = decode_image(read(row)).image
        except ImageDecodeError:
            continue
        if row.crop is not None:
            # The crop is in stored pixels; a JPEG decoded in draft mode is smaller.
            sx, sy = image.width / max(1, row.width), image.height / max(1, row.height)
            left, top, right, bottom = row.crop
            image = image.crop((left * sx, top * sy, right * sx, bottom * sy))
        yield image, row.color


def as_pil(image: ImageLike) -> Image.Image:
    """A PIL RGB image from a PIL image or a ``uint8`` ``(H, W, 3)`` array.

    Raises:
        InvalidInput: An array of another shape or type.
    """
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise InvalidInput(
            f"expected a uint8 (H, W, 3) image array, got {array.dtype} {array.shape}"
        )
    return Image.fromarray(array, mode="RGB")


# --------------------------------------------------------------------------------------------------
# the model


@dataclass(frozen=True)
class ColorModelMetadata:
    """Everything known about one learned color model, stored as ``metadata.json``.

    Attributes:
        version: ``color-YYYYMMDD-<sha8>``; also the artifact's folder name.
        kind: Always :data:`KIND`.
        architecture: A name of :data:`tagging.ml.architectures.ARCHITECTURES`.
        width: The network's width, to rebuild it before loading the weights.
        input_size: Square input side.
        classes: Output colors in logit order; must equal :data:`tagging.COLORS` to load.
        min_confidence: Below this top probability the model answers ``None``.
        weights_sha256: SHA-256 of ``weights.pt``; checked on every load.
        created_at: ISO 8601 UTC time the weights were made.
        torch_version: ``torch.__version__`` at training time.
        train_config: :meth:`ColorTrainConfig.to_dict`.
        training_data: Where the examples came from and how many.
        metrics: Held-out figures of the training run.
    """

    version: str
    kind: str
    architecture: str
    width: int
    input_size: int
    classes: tuple[str, ...]
    min_confidence: float
    weights_sha256: str
    created_at: str
    torch_version: str
    train_config: dict[str, Any] = field(default_factory=dict)
    training_data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """Serialize as indented JSON."""
        data = asdict(self)
        data["classes"] = list(self.classes)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> ColorModelMetadata:
        """Parse ``metadata.json``.

        Raises:
            ModelError: Not JSON, not a color model, or a field missing or of the wrong type.
        """
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise TypeError("the top level is not an object")
            known = set(cls.__dataclass_fields__)
            meta = cls(**{k: v for k, v in data.items() if k in known})
            if meta.kind != KIND:
                raise TypeError(f"kind is {meta.kind!r}, not {KIND!r}")
            if not isinstance(meta.classes, list | tuple):
                raise TypeError("classes must be a list")
            meta = dataclasses.replace(meta, classes=tuple(meta.classes))
            for name in ("width", "input_size"):
                if not isinstance(getattr(meta, name), int):
                    raise TypeError(f"{name} must be an integer")
            if not isinstance(meta.min_confidence, int | float):
                raise TypeError("min_confidence must be a number")
            for name in ("version", "architecture", "weights_sha256"):
                if not isinstance(getattr(meta, name), str):
                    raise TypeError(f"{name} must be a string")
            return meta
        except (ValueError, TypeError) as exc:
            raise ModelError(f"invalid color model metadata: {_first_line(exc)}") from exc


class LearnedColorModel:
    """A trained network that names the body color from the whole frame.

    Satisfies :class:`tagging.ml.color.ColorModel`. Inference only reads the network (eval mode,
    no gradient), so one instance may be called from several threads.

    Args:
        network: The trained network (put in eval mode here).
        metadata: Its metadata; ``metadata.version`` is the cached ``color_model_version``.
    """

    def __init__(self, network: nn.Module, metadata: ColorModelMetadata) -> None:
        self.network = network.eval()
        self.metadata = metadata
        self.version = metadata.version
        self.input_size = metadata.input_size
        self.min_confidence = metadata.min_confidence

    def predict(self, images: Sequence[Image.Image]) -> list[str | None]:
        """Name each image's body color (``None`` where the model is unsure: no car seen)."""
        probabilities = self.probabilities(images)
        out: list[str | None] = []
        for row in probabilities:
            best = int(row.argmax())
            out.append(COLORS[best] if row[best] >= self.min_confidence else None)
        return out

    @torch.inference_mode()
    def probabilities(self, images: Sequence[ImageLike], batch_size: int = 64) -> np.ndarray:
        """The probability of every color of :data:`tagging.COLORS`, one row per image.

        Args:
            images: Decoded images (PIL, or ``uint8`` ``(H, W, 3)`` arrays).
            batch_size: Images per forward pass.

        Returns:
            ``float64`` ``(len(images), len(COLORS))``.
        """
        rows: list[np.ndarray] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            arrays = [resize_to_array(as_pil(image), self.input_size) for image in chunk]
            logits = self.network(to_model_input(stack_arrays(arrays)))
            rows.append(torch.softmax(logits.float(), dim=1).double().numpy())
        return np.concatenate(rows) if rows else np.zeros((0, len(COLORS)))


# --------------------------------------------------------------------------------------------------
# training


@dataclass(frozen=True)
class EpochStats:
    """One point of the training curves.

    Attributes:
        epoch: 1-based.
        epochs: Total epochs of the run.
        train_loss: Mean training loss (cars and outliers) over the epoch.
        train_accuracy: Share of augmented training views of cars named right.
        val_loss: Cross-entropy on the clean held-out views (``nan`` without a validation split).
        val_accuracy: Their accuracy (``nan`` without a validation split).
        seconds: Wall time since training started.
    """

    epoch: int
    epochs: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    seconds: float


@dataclass(frozen=True)
class ColorTrainReport:
    """What a training run did.

    Attributes:
        curves: One :class:`EpochStats` per epoch.
        val_metrics: Metrics of the final model on the clean held-out views (empty without them).
        train_images: Car images trained on (each with ``1 + views_per_image`` views).
        val_images: Car images held out.
        outlier_images: Placeholders trained towards the uniform distribution.
        counts: Training images per color.
        prepare_seconds: Wall time spent decoding, augmenting and resizing the views.
        train_seconds: Wall time of the optimization.
    """

    curves: list[EpochStats]
    val_metrics: ClassificationMetrics
    train_images: int
    val_images: int
    outlier_images: int
    counts: dict[str, int]
    prepare_seconds: float
    train_seconds: float

    def summary(self) -> str:
        """One line for logs and the CLI."""
        last = self.curves[-1]
        return (
            f"{self.train_images} train / {self.val_images} val cars, {self.outlier_images} "
            f"outliers, {len(self.curves)} epochs in {self.train_seconds:.0f}s: "
            f"val accuracy {self.val_metrics.accuracy:.3f}, train loss {last.train_loss:.3f}"
        )


EpochCallback = Callable[[EpochStats], None]


def train_color_model(
    examples: Iterable[tuple[ImageLike, str]],
    config: ColorTrainConfig | None = None,
    progress: EpochCallback | None = None,
    *,
    outliers: Iterable[ImageLike] = (),
    training_data: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> tuple[LearnedColorModel, ColorTrainReport]:
    """Train a color model on labelled cars.

    Each color's examples are split deterministically (every ``1/val_fraction``-th one held out,
    so the split is stratified without reading the examples twice); each training image gives a
    clean view and ``views_per_image`` augmented ones, made once and kept at the input size, so
    the examples are streamed and never held at full size.

    Args:
        examples: ``(decoded image, color)`` pairs of cars; colors from :data:`tagging.COLORS`.
        config: The training configuration (default :class:`ColorTrainConfig`).
        progress: Called after every epoch with its :class:`EpochStats`.
        outliers: Images with no car (placeholders), trained towards uncertainty.
        training_data: A description of the examples' origin to store in the metadata.
        now: Time stamped on the model (default now); tests pin it.

    Returns:
        The trained model (not saved: see :func:`save_color_model`) and the run's report.

    Raises:
        InvalidInput: An unknown color, or fewer than two colors among the training examples.
    """
    config = config or ColorTrainConfig()
    started = time.perf_counter()
    train_x, train_y, val_x, val_y = _views(examples, outliers, config)
    step = 1 + (config.views_per_image if config.augment else 0)
    counts = {c: 0 for c in COLORS}
    for label in train_y[::step]:  # one clean view, then the augmented ones, per image
        if label >= 0:
            counts[COLORS[label]] += 1
    outlier_count = sum(1 for label in train_y[::step] if label < 0)
    if sum(1 for n in counts.values() if n) < 2:
        raise InvalidInput("a color model needs training examples of at least two colors")
    prepare_seconds = time.perf_counter() - started

    images = stack_arrays(np.stack(train_x))
    labels = torch.tensor(train_y, dtype=torch.int64)
    val_images = stack_arrays(np.stack(val_x)) if val_x else None
    val_labels = torch.tensor(val_y, dtype=torch.int64)
    with reproducible(config.seed, config.threads):
        network = build_architecture(
            config.architecture, num_classes=len(COLORS), width=config.width
        )
        train_started = time.perf_counter()
        curves = _fit(network, images, labels, val_images, val_labels, config, progress)
        train_seconds = time.perf_counter() - train_started
    network.eval()

    val_metrics = ClassificationMetrics.from_labels([], [], COLORS)
    if val_images is not None:
        predicted = _logits(network, val_images).argmax(dim=1).tolist()
        val_metrics = ClassificationMetrics.from_labels(val_y, predicted, COLORS)
    report = ColorTrainReport(
        curves=curves,
        val_metrics=val_metrics,
        train_images=sum(counts.values()),
        val_images=len(val_y),
        outlier_images=outlier_count,
        counts=counts,
        prepare_seconds=prepare_seconds,
        train_seconds=train_seconds,
    )
    width = (
        ARCHITECTURES[config.architecture].default_width if config.width is None else config.width
    )
    sha = hashlib.sha256(weights_bytes(network)).hexdigest()
    when = (now or datetime.now(UTC)).astimezone(UTC)
    metadata = ColorModelMetadata(
        version=f"color-{when:%Y%m%d}-{sha[:8]}",
        kind=KIND,
        architecture=config.architecture,
        width=width,
        input_size=config.input_size,
        classes=COLORS,
        min_confidence=config.min_confidence,
        weights_sha256=sha,
        created_at=when.isoformat(timespec="seconds"),
        torch_version=torch.__version__,
        train_config=config.to_dict(),
        training_data={
            **dict(training_data or {}),
            "train_images": report.train_images,
            "val_images": report.val_images,
            "outlier_images": outlier_count,
            "counts": counts,
        },
        metrics={
            "val_accuracy": round(val_metrics.accuracy, 4),
            "val_macro_f1": round(val_metrics.macro_f1, 4),
            "final_train_loss": round(curves[-1].train_loss, 4),
            "train_seconds": round(train_seconds, 1),
        },
    )
    return LearnedColorModel(network, metadata), report


def _views(
    examples: Iterable[tuple[ImageLike, str]],
    outliers: Iterable[ImageLike],
    config: ColorTrainConfig,
) -> tuple[list[np.ndarray], list[int], list[np.ndarray], list[int]]:
    """The training views (label ``-1`` for outliers) and the clean held-out views."""
    train_x: list[np.ndarray] = []
    train_y: list[int] = []
    val_x: list[np.ndarray] = []
    val_y: list[int] = []
    every = round(1 / config.val_fraction) if config.val_fraction > 0 else 0
    seen = {c: 0 for c in COLORS}
    views = config.views_per_image if config.augment else 0

    def add(image: Image.Image, label: int, key: str) -> None:
        train_x.append(resize_to_array(image, config.input_size))
        train_y.append(label)
        rng = random.Random(f"tagdesk-color-views:{config.seed}:{key}")
        for _ in range(views):
            train_x.append(config.nuisances.view(image, rng, config.input_size))
            train_y.append(label)

    for index, (raw, color) in enumerate(examples):
        if color not in COLORS:
            raise InvalidInput(f"example {index}: unknown color {color!r}")
        image = as_pil(raw)
        seen[color] += 1
        # The middle of each block of ``every`` goes to validation: an offset from 0 keeps a
        # color with few examples from losing its first (and maybe only) one.
        if every and seen[color] % every == every // 2:
            val_x.append(resize_to_array(image, config.input_size))
            val_y.append(COLORS.index(color))
        else:
            add(image, COLORS.index(color), f"car:{index}")
    for index, raw in enumerate(outliers):
        add(as_pil(raw), -1, f"outlier:{index}")
    if not train_x:
        raise InvalidInput("no training examples")
    return train_x, train_y, val_x, val_y


def _fit(
    network: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    val_images: torch.Tensor | None,
    val_labels: torch.Tensor,
    config: ColorTrainConfig,
    progress: EpochCallback | None,
) -> list[EpochStats]:
    """Optimize ``network`` in place (AdamW, one-cycle); the curves, one point per epoch."""
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(config.seed)
    # Dropping the last partial batch keeps every BatchNorm batch full-sized.
    batch_size = min(config.batch_size, len(images))
    steps = max(1, len(images) // batch_size)
    optimizer = torch.optim.AdamW(
        network.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=steps * config.epochs, pct_start=0.25
    )
    mean = torch.tensor(MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32).view(1, 3, 1, 1)
    curves: list[EpochStats] = []
    for epoch in range(1, config.epochs + 1):
        network.train()
        order = torch.randperm(len(images), generator=generator)
        total_loss, correct, cars = 0.0, 0, 0
        for b in range(steps):
            batch = order[b * batch_size : (b + 1) * batch_size]
            x = images[batch].to(torch.float32).div_(255.0)
            if config.augment:
                x = config.nuisances.jitter(x, generator)
            x = (x - mean) / std  # as to_model_input normalizes
            y = labels[batch]
            logits = network(x)
            loss = _loss(logits, y, config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item()
            car = y >= 0
            correct += int((logits.argmax(dim=1)[car] == y[car]).sum())
            cars += int(car.sum())
        val_loss = val_accuracy = float("nan")
        if val_images is not None:
            network.eval()
            logits = _logits(network, val_images)
            val_loss = float(functional.cross_entropy(logits, val_labels))
            val_accuracy = float((logits.argmax(dim=1) == val_labels).float().mean())
        stats = EpochStats(
            epoch=epoch,
            epochs=config.epochs,
            train_loss=total_loss / steps,
            train_accuracy=correct / cars if cars else float("nan"),
            val_loss=val_loss,
            val_accuracy=val_accuracy,
            seconds=time.perf_counter() - started,
        )
        curves.append(stats)
        if progress is not None:
            progress(stats)
    return curves


def _loss(logits: torch.Tensor, labels: torch.Tensor, config: ColorTrainConfig) -> torch.Tensor:
    """Cross-entropy on cars, plus outlier exposure: the cross-entropy of the outliers'
    predictions against the uniform distribution (mean negative log-probability)."""
    car = labels >= 0
    loss = logits.new_zeros(())
    if bool(car.any()):
        loss = functional.cross_entropy(
            logits[car], labels[car], label_smoothing=config.label_smoothing
        )
    if bool((~car).any()) and config.outlier_weight > 0:
        # KL(uniform || p): the cross-entropy to the uniform minus its entropy, so 0 at best.
        uniform = -functional.log_softmax(logits[~car], dim=1).mean() - math.log(logits.shape[1])
        loss = loss + config.outlier_weight * uniform
    return loss


@torch.inference_mode()
def _logits(network: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits of ``uint8`` ``(N, 3, H, W)`` images, the network in eval mode."""
    network.eval()
    parts = [
        network(to_model_input(images[i : i + batch_size]))
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(parts)


# --------------------------------------------------------------------------------------------------
# artifacts


def color_models_dir(models_dir: Path) -> Path:
    """The folder of the learned color models: ``models_dir/color``."""
    return models_dir / COLOR_SUBDIR


def weights_bytes(network: nn.Module) -> bytes:
    """Serialize a network's ``state_dict`` exactly as ``weights.pt`` stores it.

    Saving to memory keeps the archive's record names independent of the file name, so equal
    weights give equal bytes and the same SHA-256.
    """
    buffer = io.BytesIO()
    torch.save(network.state_dict(), buffer)
    return buffer.getvalue()


def save_color_model(models_dir: Path, model: LearnedColorModel) -> Path:
    """Write ``models_dir/color/<version>/{weights.pt, metadata.json}``.

    The folder is written under a temporary name and renamed into place, so a crash never leaves
    a half-written version; saving a version that exists already changes nothing.

    Args:
        models_dir: The models folder (``settings.models_dir``).
        model: A trained model.

    Returns:
        The version's folder.

    Raises:
        ModelError: The model's weights do not match its metadata's SHA-256.
    """
    blob = weights_bytes(model.network)
    sha = hashlib.sha256(blob).hexdigest()
    if sha != model.metadata.weights_sha256:
        raise ModelError(f"color model {model.version}: its weights changed since it was trained")
    root = color_models_dir(models_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / model.version
    if final.exists():
        return final
    staging = Path(tempfile.mkdtemp(prefix=f".{model.version}-", dir=root))
    try:
        (staging / WEIGHTS_FILE).write_bytes(blob)
        (staging / METADATA_FILE).write_text(model.metadata.to_json())
        staging.rename(final)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not final.exists():  # else another process saved the same weights meanwhile
            raise
    return final


def list_color_versions(models_dir: Path) -> list[str]:
    """The saved color versions, oldest first (by date, then name)."""
    root = color_models_dir(models_dir)
    if not root.is_dir():
        return []
    names = [p.name for p in root.iterdir() if p.is_dir() and _VERSION_RE.match(p.name)]
    return sorted(names, key=lambda name: (_created_at(root / name), name))


def _created_at(folder: Path) -> str:
    """A version's ``created_at`` (ISO 8601 UTC sorts as text); ``""`` when unreadable."""
    try:
        data = json.loads((folder / METADATA_FILE).read_text())
    except (OSError, ValueError):
        return ""
    value = data.get("created_at") if isinstance(data, dict) else None
    return value if isinstance(value, str) else ""


def production_color_version(models_dir: Path) -> str | None:
    """The promoted color version (``models_dir/color/PRODUCTION``), or ``None``."""
    path = color_models_dir(models_dir) / PRODUCTION_FILE
    try:
        version = path.read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {_first_line(exc)}") from exc
    return version or None


def promote_color_model(models_dir: Path, version: str) -> ColorModelMetadata:
    """Name ``version`` in ``models_dir/color/PRODUCTION`` after checking that it loads.

    Raises:
        ModelError: The version is missing or does not load.
    """
    model = load_color_model(models_dir, version)
    path = color_models_dir(models_dir) / PRODUCTION_FILE
    staging = path.with_name(f".{PRODUCTION_FILE}.tmp")
    staging.write_text(version + "\n")
    staging.replace(path)  # atomic: a reader sees the old name or the new one
    return model.metadata


def load_color_model(models_dir: Path, version: str | None = None) -> LearnedColorModel:
    """Load and verify a saved color model.

    Args:
        models_dir: The models folder (``settings.models_dir``).
        version: The version; ``None`` for the promoted one, else the newest.

    Returns:
        The model, ready to predict.

    Raises:
        ModelError: No such version, missing or unreadable files, invalid metadata, another
            class list or architecture, a SHA-256 mismatch, or weights that do not fit.
    """
    root = color_models_dir(models_dir)
    if version is None:
        version = production_color_version(models_dir)
    if version is None:
        versions = list_color_versions(models_dir)
        if not versions:
            raise ModelError(f"no learned color model in {root}: train one first")
        version = versions[-1]
    if not _VERSION_RE.match(version):
        raise ModelError(f"{version!r} is not a color model version (color-YYYYMMDD-<sha8>)")
    folder = root / version
    if not folder.is_dir():
        raise ModelError(f"color model {version} not found in {root}")
    try:
        text = (folder / METADATA_FILE).read_text()
        blob = (folder / WEIGHTS_FILE).read_bytes()
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"color model {version}: unreadable files: {_first_line(exc)}") from exc
    metadata = ColorModelMetadata.from_json(text)
    if metadata.version != version:
        raise ModelError(f"{folder} holds metadata of {metadata.version!r}, not {version!r}")
    if tuple(metadata.classes) != COLORS:
        raise ModelError(
            f"color model {version} predicts {list(metadata.classes)}, expected {list(COLORS)}"
        )
    if metadata.architecture not in ARCHITECTURES:
        raise ModelError(f"color model {version}: unknown architecture {metadata.architecture!r}")
    sha = hashlib.sha256(blob).hexdigest()
    if sha != metadata.weights_sha256:
        raise ModelError(
            f"color model {version}: {WEIGHTS_FILE} has SHA-256 {sha[:12]}…, metadata says "
            f"{metadata.weights_sha256[:12]}…; the file is corrupt or was replaced"
        )
    try:
        network = build_architecture(
            metadata.architecture, num_classes=len(COLORS), width=metadata.width
        )
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        network.load_state_dict(state)
    except Exception as exc:  # torch raises many types for a bad archive or shape
        raise ModelError(
            f"color model {version}: cannot load {WEIGHTS_FILE}: {_first_line(exc)}"
        ) from exc
    return LearnedColorModel(network, metadata)


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message: errors here are one line."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


# --------------------------------------------------------------------------------------------------
# comparison


@dataclass(frozen=True)
class ColorModelScore:
    """One color model on one evaluation set.

    Attributes:
        name: The caller's name for the model (``"embedded"``, ``"learned"``).
        version: The model's ``version``.
        metrics: Accuracy, per-class precision, recall and F1 and the confusion matrix over
            :data:`tagging.COLORS` plus :data:`tagging.ml.evaluate.NO_COLOR` (a ``None``
            answer, which counts as wrong).
        answered: Share of images the model named a color for.
        predictions: Every answer, in the examples' order (``None`` as given).
        seconds: Wall time of the predictions.
    """

    name: str
    version: str
    metrics: ClassificationMetrics
    answered: float
    predictions: list[str | None]
    seconds: float

    @property
    def accuracy(self) -> float:
        """Share of images named right."""
        return self.metrics.accuracy


@dataclass(frozen=True)
class ColorComparison:
    """Several color models on one evaluation set.

    Attributes:
        scores: One :class:`ColorModelScore` per model, in the order given.
        truth: The true color of every example.
    """

    scores: list[ColorModelScore]
    truth: list[str]

    def by_name(self) -> dict[str, ColorModelScore]:
        """The scores by model name."""
        return {score.name: score for score in self.scores}

    def format_table(self) -> str:
        """A plain-text table: accuracy, macro F1, answered share and per-color F1 per model."""
        names = [s.name for s in self.scores]
        head = f"{'model':<14}{'acc':>7}{'macroF1':>9}{'answered':>10}  per-color F1"
        lines = [head]
        for score in self.scores:
            f1 = " ".join(f"{c[:3]}={score.metrics.per_class_f1.get(c, 0.0):.2f}" for c in COLORS)
            lines.append(
                f"{score.name:<14}{score.accuracy:>7.3f}{score.metrics.macro_f1:>9.3f}"
                f"{score.answered:>10.3f}  {f1}"
            )
        if not names:
            lines.append("(no models)")
        return "\n".join(lines)


def compare_color_models(
    models: Mapping[str, ColorModel],
    examples: Sequence[tuple[ImageLike, str]],
    *,
    batch_size: int = 64,
) -> ColorComparison:
    """Score several color models on the same labelled cars.

    Args:
        models: The models by name; each is asked through its ``predict`` (the protocol).
        examples: ``(decoded image, true color)`` pairs, cars only.
        batch_size: Images per ``predict`` call, as the server batches them.

    Returns:
        Every model's :class:`ColorModelScore`, in ``models``' order.

    Raises:
        InvalidInput: A true color outside :data:`tagging.COLORS`, or a model that answers the
            wrong number of colors or a name outside them.
    """
    truth = [color for _, color in examples]
    for color in truth:
        if color not in COLORS:
            raise InvalidInput(f"unknown true color {color!r}")
    images = [as_pil(image) for image, _ in examples]
    classes = (*COLORS, NO_COLOR)
    scores: list[ColorModelScore] = []
    for name, model in models.items():
        started = time.perf_counter()
        predictions: list[str | None] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            answer = list(model.predict(chunk))
            if len(answer) != len(chunk):
                raise InvalidInput(f"model {name!r} answered {len(answer)} colors for {len(chunk)}")
            predictions.extend(answer)
        seconds = time.perf_counter() - started
        for value in predictions:
            if value is not None and value not in COLORS:
                raise InvalidInput(f"model {name!r} answered unknown color {value!r}")
        named = [NO_COLOR if p is None else p for p in predictions]
        metrics = ClassificationMetrics.from_names(truth, named, classes)
        answered = (
            sum(p is not None for p in predictions) / len(predictions) if predictions else 0.0
        )
        scores.append(
            ColorModelScore(
                name=name,
                version=str(model.version),
                metrics=metrics,
                answered=answered,
                predictions=predictions,
                seconds=seconds,
            )
        )
    return ColorComparison(scores=scores, truth=truth)


DEFAULT_MARGIN = 0.02
"""How much better a challenger must be to replace the incumbent (:func:`choose_color_model`)."""


def choose_color_model(
    comparisons: Mapping[str, ColorComparison],
    *,
    incumbent: str | None = None,
    margin: float = DEFAULT_MARGIN,
) -> str:
    """The name of the color model that should serve, from its scores on evaluation sets.

    The rule, so that a model is not swapped for noise nor for a trade that hurts one set:

    1. Each model's score is its **mean accuracy over the evaluation sets**, each set weighing
       the same (a small per-advertiser set counts as much as a large test split).
    2. A challenger **qualifies** when its mean beats the incumbent's by at least ``margin`` and
       it is not worse than the incumbent by more than ``margin`` on any single set.
    3. The qualifying challenger with the best mean serves (ties: higher mean macro F1, then
       the name); if none qualifies, the incumbent stays.

    Without an incumbent, the best mean serves (same tie-breaks).

    Args:
        comparisons: :func:`compare_color_models` results by evaluation set name; every model
            must appear in every set.
        incumbent: The name of the model serving today, or ``None``.
        margin: The accuracy gap of rule 2, in ``[0, 1)``; e.g. 0.02 is about the standard
            error of an accuracy near 0.8 on 400 images.

    Returns:
        A model name.

    Raises:
        InvalidInput: No evaluation set or model, the sets name different models, an unknown
            incumbent, or a margin out of range.
    """
    if not comparisons:
        raise InvalidInput("choosing a color model needs at least one evaluation set")
    if not 0.0 <= margin < 1.0:
        raise InvalidInput(f"margin must be in [0, 1), got {margin}")
    tables = [c.by_name() for c in comparisons.values()]
    names = list(tables[0])
    if not names:
        raise InvalidInput("no color model to choose from")
    for set_name, table in zip(comparisons, tables, strict=True):
        if set(table) != set(names):
            raise InvalidInput(f"evaluation set {set_name!r} scores other models than the first")
    if incumbent is not None and incumbent not in names:
        raise InvalidInput(f"incumbent {incumbent!r} is not among the models {names}")

    def mean(name: str, key: Callable[[ColorModelScore], float]) -> float:
        return sum(key(table[name]) for table in tables) / len(tables)

    def rank(name: str) -> tuple[float, float, str]:
        # Negated so that sorting ascending puts the best first; the name breaks exact ties.
        return (-mean(name, lambda s: s.accuracy), -mean(name, lambda s: s.metrics.macro_f1), name)

    if incumbent is None:
        return min(names, key=rank)
    base = mean(incumbent, lambda s: s.accuracy)

    def qualifies(name: str) -> bool:
        # A hair of tolerance: 0.82 - 0.80 is not exactly 0.02 in floating point.
        if mean(name, lambda s: s.accuracy) < base + margin - 1e-9:
            return False
        return all(t[name].accuracy >= t[incumbent].accuracy - margin - 1e-9 for t in tables)

    challengers = [n for n in names if n != incumbent and qualifies(n)]
    return min(challengers, key=rank) if challengers else incumbent
