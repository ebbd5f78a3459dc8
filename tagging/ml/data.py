"""Labelled data for the Image Type model: synthetic training sets and the demo's ground truth.

Every synthetic image goes through exactly what a served image goes through —
:func:`tagging.ml.synth.render` → JPEG bytes → :func:`tagging.ingest.images.decode_image` →
:func:`tagging.ml.transforms.resize_to_array` — so the model never learns a shortcut (a JPEG
quality, a draft-mode scale) that serving does not reproduce.

Generation is reproducible and independent of parallelism: image ``i`` of a dataset draws every
random choice from its own ``random.Random`` seeded with ``(seed, i)``, so the pixels do not
depend on how the indices are split between worker processes.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from db.vocab import COLORS, IMAGE_TYPES, PLACEHOLDER
from tagging.errors import ConfigError, NotFoundError
from tagging.ingest.images import decode_image
from tagging.ml.synth import render
from tagging.ml.transforms import resize_to_array

DEMO_SEED = 7
"""The seed the demo inventory is rendered with; training data must use another one."""

GENERATOR_NAME = "tagging.ml.synth.render"


@dataclass(frozen=True)
class SyntheticDatasetConfig:
    """What to render.

    Attributes:
        seed: Root of every random choice; the demo's seed (:data:`DEMO_SEED`) is refused so that
            the demo stays a held-out test set.
        n_per_class: Images per Image Type; classes are exactly balanced.
        jpeg_quality: Inclusive range the JPEG quality of each image is drawn from.
        image_sizes: Render sizes ``(width, height)`` drawn uniformly; several sizes make the
            model see the different JPEG draft-mode scales that served images get.
        input_size: Side of the square arrays produced (the model's input size).
        workers: Processes rendering in parallel; ``1`` renders in this process.
    """

    seed: int = 1
    n_per_class: int = 800
    jpeg_quality: tuple[int, int] = (70, 95)
    image_sizes: tuple[tuple[int, int], ...] = ((480, 360),)
    input_size: int = 64
    workers: int = 2

    def __post_init__(self) -> None:
        if self.seed == DEMO_SEED:
            raise ValueError(
                f"seed {DEMO_SEED} renders the demo inventory, which is the held-out test set; "
                "train on another seed"
            )
        if self.n_per_class < 1:
            raise ValueError("n_per_class must be at least 1")
        low, high = self.jpeg_quality
        if not 1 <= low <= high <= 100:
            raise ValueError(f"jpeg_quality must be an increasing range in 1..100, got {low, high}")
        if not self.image_sizes:
            raise ValueError("image_sizes must name at least one size")

    @property
    def total(self) -> int:
        """Number of images in the dataset."""
        return self.n_per_class * len(IMAGE_TYPES)


@dataclass(frozen=True)
class SyntheticDataset:
    """A rendered dataset, ready to become tensors.

    Attributes:
        images: ``uint8`` array ``(N, input_size, input_size, 3)``.
        labels: ``int64`` array ``(N,)`` of indices into :data:`tagging.IMAGE_TYPES`.
        colors: The body color of each image (``None`` for placeholders).
        config: The configuration that produced it.
        seconds: Wall time spent rendering.
        counts: Images per Image Type.
    """

    images: np.ndarray
    labels: np.ndarray
    colors: list[str | None]
    config: SyntheticDatasetConfig
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """The training-data description stored in a model's metadata."""
        return {
            "generator": GENERATOR_NAME,
            "pipeline": "render → JPEG → decode_image → resize_to_array",
            "config": _plain(asdict(self.config)),
            "counts": dict(self.counts),
            "render_seconds": round(self.seconds, 2),
        }


class SampleSpec(NamedTuple):
    """What one synthetic image shows."""

    image_type: str
    color: str | None


def sample_spec(config: SyntheticDatasetConfig, index: int) -> SampleSpec:
    """What image ``index`` of a dataset shows.

    Classes are interleaved so any prefix of the dataset is nearly balanced; car colors cycle
    through :data:`tagging.COLORS` per class so every color appears equally often.
    """
    image_type = IMAGE_TYPES[index % len(IMAGE_TYPES)]
    if image_type == PLACEHOLDER:
        return SampleSpec(image_type, None)
    per_class = index // len(IMAGE_TYPES)
    return SampleSpec(image_type, COLORS[per_class % len(COLORS)])


def sample_rng(seed: int, index: int) -> random.Random:
    """The private random stream of image ``index`` (string seeds hash stably across processes)."""
    return random.Random(f"tagdesk-synth:{seed}:{index}")


def render_decoded(
    image_type: str,
    color: str | None,
    rng: random.Random,
    *,
    quality: int,
    size: tuple[int, int] = (480, 360),
) -> Image.Image:
    """Render one synthetic image and pass it through serving's JPEG decode.

    Args:
        image_type: One of :data:`tagging.IMAGE_TYPES`.
        color: Body color, or ``None`` for a placeholder.
        rng: Source of the scene's random choices.
        quality: JPEG quality to encode with.
        size: Render size ``(width, height)``.

    Returns:
        The decoded RGB image exactly as :func:`tagging.ingest.images.decode_image` returns it.
    """
    buffer = io.BytesIO()
    render(image_type, color, rng, size).save(buffer, format="JPEG", quality=quality)
    return decode_image(buffer.getvalue()).image


def _render_range(args: tuple[SyntheticDatasetConfig, int, int]) -> tuple[int, np.ndarray]:
    """Worker: render images ``start`` … ``stop - 1``; module-level so ``spawn`` can pickle it."""
    config, start, stop = args
    out = np.empty((stop - start, config.input_size, config.input_size, 3), dtype=np.uint8)
    low, high = config.jpeg_quality
    for offset, index in enumerate(range(start, stop)):
        spec = sample_spec(config, index)
        rng = sample_rng(config.seed, index)
        quality = rng.randint(low, high)
        size = config.image_sizes[rng.randrange(len(config.image_sizes))]
        image = render_decoded(spec.image_type, spec.color, rng, quality=quality, size=size)
        out[offset] = resize_to_array(image, config.input_size)
    return start, out


def generate_dataset(
    config: SyntheticDatasetConfig,
    progress: Callable[[int, int], None] | None = None,
    chunk_size: int = 48,
) -> SyntheticDataset:
    """Render a labelled synthetic dataset.

    Args:
        config: What to render.
        progress: Called with ``(images done, total)`` after each chunk.
        chunk_size: Images per work unit; small enough for smooth progress, large enough that
            pickling overhead stays negligible.

    Returns:
        The dataset; identical for identical ``config`` whatever ``workers`` is.
    """
    started = time.perf_counter()
    total = config.total
    images = np.empty((total, config.input_size, config.input_size, 3), dtype=np.uint8)
    ranges = [(config, s, min(s + chunk_size, total)) for s in range(0, total, chunk_size)]
    done = 0

    def collect(start: int, block: np.ndarray) -> None:
        nonlocal done
        images[start : start + len(block)] = block
        done += len(block)
        if progress is not None:
            progress(done, total)

    if config.workers <= 1:
        for job in ranges:
            collect(*_render_range(job))
    else:
        # "spawn" rather than the Linux default "fork": forking a process that already runs
        # torch's thread pools can deadlock, and spawn behaves the same on every platform.
        # An executor, not a Pool: a worker that dies raises BrokenProcessPool instead of hanging.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(config.workers, mp_context=context) as pool:
            for start, block in pool.map(_render_range, ranges):
                collect(start, block)

    specs = [sample_spec(config, i) for i in range(total)]
    labels = np.array([IMAGE_TYPES.index(s.image_type) for s in specs], dtype=np.int64)
    counts = {name: int((labels == k).sum()) for k, name in enumerate(IMAGE_TYPES)}
    return SyntheticDataset(
        images=images,
        labels=labels,
        colors=[s.color for s in specs],
        config=config,
        seconds=time.perf_counter() - started,
        counts=counts,
    )


def _plain(value: Any) -> Any:
    """Tuples → lists, recursively, so a description round-trips through JSON unchanged."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------------
# demo ground truth


class DemoExample(NamedTuple):
    """One image of the demo inventory with its true labels.

    Attributes:
        path: The image's path as listed in the manifest (its URL path on the demo CDN).
        data: The file's bytes.
        image_type: True Image Type, or ``None`` when the manifest gives none.
        color: True body color; ``None`` for placeholders and unlabelled images.
        kind: The manifest's kind: ``ok``, ``too_small``, ``broken``, ``near_duplicate`` …
    """

    path: str
    data: bytes
    image_type: str | None
    color: str | None
    kind: str


def load_demo_ground_truth(demo_dir: Path) -> Iterator[DemoExample]:
    """Yield the demo's images with their ground truth, in manifest order.

    Args:
        demo_dir: The folder ``tagging.demo.generate.generate_demo`` wrote, holding
            ``manifest.json`` and the files, each at its manifest path below ``demo_dir``.

    Raises:
        NotFoundError: No manifest in ``demo_dir``.
        ConfigError: The manifest is unreadable or not the expected shape.
    """
    manifest_path = demo_dir / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        message = f"no demo manifest at {manifest_path}; generate the demo first"
        raise NotFoundError(message) from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(f"unreadable demo manifest {manifest_path}: {exc}") from exc
    entries = manifest.get("images") if isinstance(manifest, dict) else None
    if not isinstance(entries, dict):
        raise ConfigError(f"demo manifest {manifest_path} has no 'images' object")
    for path, truth in entries.items():
        file = demo_file(demo_dir, path)
        data = file.read_bytes() if file.is_file() else b""
        yield DemoExample(
            path=path,
            data=data,
            image_type=truth.get("image_type"),
            color=truth.get("color"),
            kind=str(truth.get("kind", "ok")),
        )


def demo_file(demo_dir: Path, path: str) -> Path:
    """The file holding manifest ``path`` (``/cdn/x/1.jpg`` → ``<demo_dir>/cdn/x/1.jpg``)."""
    relative = Path(path.lstrip("/"))
    if ".." in relative.parts:
        raise ConfigError(f"manifest path {path!r} escapes the demo folder")
    return demo_dir / relative
