"""Train the Image Type model on synthetic images, evaluate it, and save it as a versioned artifact.

Usage from Python (the CLI passes a tqdm-driving ``(done, total)`` callback as ``progress``)::

    result = train(TrainConfig(), settings.models_dir)
    print(result.metadata.version, result.val_accuracy)

Training is reproducible: the same :class:`TrainConfig` on the same machine gives bit-identical
weights, hence the same version string. Randomness comes only from ``config.seed`` (through
:func:`torch.random.fork_rng`, so the caller's global RNG state is left alone), and
deterministic algorithms and a fixed thread count are enforced for the duration of the run.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from db.vocab import IMAGE_TYPES
from tagging.ml import model as artifacts
from tagging.ml.data import SyntheticDataset, SyntheticDatasetConfig, generate_dataset
from tagging.ml.evaluate import ClassificationMetrics
from tagging.ml.model import ModelMetadata, TypeNet, build_model, save_artifact
from tagging.ml.transforms import Augment, stack_arrays, to_model_input

COMMON_SIZES: tuple[tuple[int, int], ...] = ((480, 360), (640, 480), (400, 300), (320, 240))
"""Usual dealer-site photo sizes; each decodes at a different JPEG draft scale."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained model.

    Attributes:
        seed: Seeds data rendering, the split, initialization, shuffling and augmentation.
        epochs: Passes over the training split.
        batch_size: Images per optimizer step.
        lr: Peak learning rate of the one-cycle schedule (AdamW).
        weight_decay: AdamW weight decay.
        label_smoothing: Cross-entropy label smoothing; keeps the model from growing
            overconfident on synthetic data that is easier than real photos.
        input_size: Square model input side in pixels.
        width: Channels of the network's first block.
        n_per_class: Rendered images per class (training plus validation).
        val_fraction: Share of each class held out for validation.
        jpeg_quality: Range the JPEG quality of each rendered image is drawn from.
        image_sizes: Render sizes drawn from, ``(width, height)``.
        augment: Whether to apply :class:`tagging.ml.transforms.Augment` while training.
        workers: Rendering processes.
        threads: Torch intra-op threads while training. One by default: with two OpenMP threads
            on a two-core machine that is also doing other work, every small parallel op waits
            for a descheduled thread (measured 6x slower: 176 s instead of 30 s), while on an
            idle machine two threads are only ~1.4x faster than one. The thread count is part
            of reproducibility, since it changes the order of floating-point reductions.
    """

    seed: int = 1
    epochs: int = 12
    batch_size: int = 64
    lr: float = 0.01
    weight_decay: float = 5e-4
    label_smoothing: float = 0.05
    input_size: int = 64
    width: int = 8
    n_per_class: int = 800
    val_fraction: float = 0.15
    jpeg_quality: tuple[int, int] = (70, 95)
    image_sizes: tuple[tuple[int, int], ...] = COMMON_SIZES
    augment: bool = True
    workers: int = 2
    threads: int = 1

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError("val_fraction must be between 0 and 1")
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError("epochs must be ≥ 1 and batch_size ≥ 2 (BatchNorm needs a batch)")

    @classmethod
    def quick(cls, **overrides: Any) -> TrainConfig:
        """A small configuration for tests: trains in seconds and still clearly learns."""
        # One rendering process: for a few hundred images, starting a pool costs more than it
        # saves.
        values: dict[str, Any] = {
            "n_per_class": 150,
            "epochs": 6,
            "val_fraction": 0.2,
            "workers": 1,
        }
        values.update(overrides)
        return cls(**values)

    def dataset_config(self) -> SyntheticDatasetConfig:
        """The synthetic-data configuration this training run renders."""
        return SyntheticDatasetConfig(
            seed=self.seed,
            n_per_class=self.n_per_class,
            jpeg_quality=self.jpeg_quality,
            image_sizes=self.image_sizes,
            input_size=self.input_size,
            workers=self.workers,
        )

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (command-line overrides)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form stored in the model's metadata."""
        data = asdict(self)
        data["jpeg_quality"] = list(self.jpeg_quality)
        data["image_sizes"] = [list(s) for s in self.image_sizes]
        return data


ProgressCallback = Callable[[int, int], None]
"""Called with ``(done, total)`` of the current phase: images rendered, then optimizer steps."""


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` produced.

    Attributes:
        metadata: The saved artifact's metadata (its ``version`` names the folder).
        path: The artifact folder.
        promoted: Whether this run made the artifact the production model.
        val_accuracy: Accuracy on the held-out validation split.
        per_class_recall: Recall of each class on the validation split.
        confusion: Validation confusion matrix, ``[true][predicted]`` in ``IMAGE_TYPES`` order.
        seconds: Wall time per phase (``render``, ``train``, ``evaluate``) and ``total``.
    """

    metadata: ModelMetadata
    path: Path
    promoted: bool
    val_accuracy: float
    per_class_recall: dict[str, float]
    confusion: list[list[int]]
    seconds: dict[str, float]

    @property
    def version(self) -> str:
        """The artifact's version."""
        return self.metadata.version

    def summary(self) -> str:
        """A few human-readable lines for the command line."""
        recall = ", ".join(f"{k} {v:.1%}" for k, v in self.per_class_recall.items())
        status = "promoted to production" if self.promoted else "not promoted"
        return (
            f"model {self.version} ({status}) saved in {self.path}\n"
            f"held-out accuracy {self.val_accuracy:.2%} (recall: {recall})\n"
            f"time: render {self.seconds['render']:.1f}s, train {self.seconds['train']:.1f}s, "
            f"total {self.seconds['total']:.1f}s"
        )


def train(
    config: TrainConfig,
    models_dir: Path,
    progress: ProgressCallback | None = None,
    *,
    promote: bool = False,
) -> TrainResult:
    """Render data, train, evaluate on the held-out split, save, and maybe promote.

    Args:
        config: The training configuration.
        models_dir: Where the artifact folder is written.
        progress: Called with ``(done, total)`` after every rendered chunk (images), then after
            every optimizer step (steps); a caller's bar simply restarts between the phases.
        promote: Promote the new artifact even if a production model exists (without one, the
            first trained model is always promoted).

    Returns:
        The saved artifact and its validation metrics.
    """
    report: ProgressCallback = progress or (lambda _done, _total: None)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    dataset = generate_dataset(config.dataset_config(), progress=report)
    timings["render"] = dataset.seconds

    with reproducible(config.seed, config.threads):
        t0 = time.perf_counter()
        train_idx, val_idx = stratified_split(dataset.labels, config.val_fraction, config.seed)
        images = stack_arrays(dataset.images)
        labels = torch.from_numpy(dataset.labels)
        model = build_model(config.width)
        losses = fit(model, images[train_idx], labels[train_idx], config, report)
        timings["train"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        predicted = predict_labels(model, images[val_idx])
        metrics = ClassificationMetrics.from_labels(
            dataset.labels[val_idx].tolist(), predicted.tolist(), IMAGE_TYPES
        )
        timings["evaluate"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - started

    metadata = save_artifact(
        models_dir,
        model,
        input_size=config.input_size,
        width=config.width,
        train_config=config.to_dict(),
        training_data=_describe_split(dataset, train_idx, val_idx),
        metrics={
            "val_accuracy": metrics.accuracy,
            "val_per_class_recall": metrics.per_class_recall,
            "val_confusion": metrics.confusion,
            "val_size": len(val_idx),
            "epoch_losses": [round(loss, 4) for loss in losses],
            "seconds": {k: round(v, 2) for k, v in timings.items()},
        },
    )
    promoted = promote or artifacts.production_version(models_dir) is None
    if promoted:
        artifacts.promote(models_dir, metadata.version)
    return TrainResult(
        metadata=metadata,
        path=models_dir / metadata.version,
        promoted=promoted,
        val_accuracy=metrics.accuracy,
        per_class_recall=metrics.per_class_recall,
        confusion=metrics.confusion,
        seconds=timings,
    )


def fit(
    model: TypeNet,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
    progress: ProgressCallback | None = None,
) -> list[float]:
    """Optimize ``model`` in place on ``uint8`` ``images`` ``(N, 3, H, W)`` and their labels.

    AdamW with a one-cycle learning-rate schedule: the warm-up lets a high peak rate be used
    safely, which is what makes a dozen short epochs enough.

    Returns:
        The mean training loss of each epoch.
    """
    generator = torch.Generator().manual_seed(config.seed)
    augment = Augment() if config.augment else None
    # Dropping the last partial batch keeps every BatchNorm batch full-sized.
    steps_per_epoch = max(1, len(images) // config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=total_steps, pct_start=0.25
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    model.train()
    losses: list[float] = []
    for epoch in range(config.epochs):
        order = torch.randperm(len(images), generator=generator)
        total_loss = 0.0
        for b in range(steps_per_epoch):
            batch = order[b * config.batch_size : (b + 1) * config.batch_size]
            x = to_model_input(images[batch], augment, generator)
            loss = criterion(model(x), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item()
            if progress is not None:
                progress(epoch * steps_per_epoch + b + 1, total_steps)
        losses.append(total_loss / steps_per_epoch)
    model.eval()
    return losses


@torch.inference_mode()
def predict_labels(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Class indices predicted for ``uint8`` ``images`` ``(N, 3, H, W)`` (model in eval mode)."""
    model.eval()
    out = [
        model(to_model_input(images[i : i + batch_size])).argmax(dim=1)
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out).numpy() if out else np.empty(0, dtype=np.int64)


def stratified_split(
    labels: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into train and validation, holding out ``val_fraction`` of every class.

    Returns:
        ``(train indices, validation indices)``, each sorted.
    """
    rng = np.random.default_rng(seed)
    train_parts, val_parts = [], []
    for k in np.unique(labels):
        members = np.flatnonzero(labels == k)
        rng.shuffle(members)
        n_val = max(1, round(len(members) * val_fraction))
        val_parts.append(members[:n_val])
        train_parts.append(members[n_val:])
    return np.sort(np.concatenate(train_parts)), np.sort(np.concatenate(val_parts))


def _describe_split(
    dataset: SyntheticDataset, train_idx: np.ndarray, val_idx: np.ndarray
) -> dict[str, Any]:
    description = dataset.describe()
    for name, idx in (("train", train_idx), ("val", val_idx)):
        labels = dataset.labels[idx]
        description[f"{name}_counts"] = {
            cls: int((labels == k).sum()) for k, cls in enumerate(IMAGE_TYPES)
        }
    return description


@contextmanager
def reproducible(seed: int, threads: int) -> Iterator[None]:
    """Seed torch and pin threads and algorithms for a block, restoring the caller's state after.

    The thread count is part of reproducibility: reductions split across a different number of
    threads add floating-point numbers in a different order.
    """
    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.use_deterministic_algorithms(previous_deterministic)
        torch.set_num_threads(previous_threads)
