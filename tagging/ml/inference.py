"""Serving the Image Type model: decoded PIL images in, labels with confidences out.

Any architecture of :mod:`tagging.ml.architectures` is served: :meth:`TypeClassifier.load` builds
an artifact's network by the name its metadata records. The small CNN is served with its
BatchNorm folded into the convolutions (:meth:`tagging.ml.model.TypeNet.fused_for_inference`);
the torchvision layouts run as they are, in eval mode.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from tagging.ml.architectures import build_architecture
from tagging.ml.model import ModelArtifact, ModelMetadata, TypeNet, load_artifact
from tagging.ml.transforms import preprocess

MAX_FORWARD_BATCH = 128
"""Images per forward pass; larger requests are split so peak memory stays bounded."""

PROBABILITY_PLACES = 4
"""Decimal places of :attr:`TypePrediction.probabilities` (and of the confidence the ML server
answers, so that the two agree)."""


@dataclass(frozen=True)
class TypePrediction:
    """The model's answer for one image.

    Attributes:
        label: The most probable class, one of :data:`tagging.IMAGE_TYPES`.
        confidence: Its softmax probability.
        probabilities: The softmax probability of every class of the model, in its output order,
            rounded to :data:`PROBABILITY_PLACES` places: they travel to the app database with
            each item, where more digits would tell an analyst nothing.
    """

    label: str
    confidence: float
    probabilities: dict[str, float]


def load_any(models_dir: Path, version: str | None = None) -> ModelArtifact[nn.Module]:
    """Load an artifact of any architecture (:func:`tagging.ml.model.load_artifact` with the
    architectures registry as its builder).

    Args:
        models_dir: Parent folder of all versions.
        version: The version; ``None``: the production one, else the newest.

    Raises:
        ModelError: No such model, an unknown architecture, or an artifact that fails
            verification.
    """
    return load_artifact(models_dir, version, build=build_architecture)


class TypeClassifier:
    """A loaded, verified Image Type model ready to predict.

    Safe to share between threads: the ML server calls :meth:`predict` from a thread pool, and a
    lock serializes forward passes. Torch already spreads one forward pass over all its threads,
    so running two at once would only make both slower.
    """

    def __init__(self, artifact: ModelArtifact[Any]) -> None:
        """Wrap an artifact from :func:`tagging.ml.model.load_artifact` (or :func:`load_any`)."""
        model: nn.Module = artifact.model
        # A copy either way: the caller's network keeps its mode and its unfused layers.
        if isinstance(model, TypeNet):
            self._model: nn.Module = model.fused_for_inference()
        else:
            self._model = copy.deepcopy(model).eval()
        self._metadata = artifact.metadata
        self._lock = threading.Lock()

    @classmethod
    def load(cls, models_dir: Path, version: str | None = None) -> TypeClassifier:
        """Load a version from ``models_dir`` (``None``: the production one, else the newest).

        Raises:
            ModelError: No such model, or its artifact fails verification.
        """
        return cls(load_any(models_dir, version))

    @property
    def version(self) -> str:
        """The loaded artifact's version."""
        return self._metadata.version

    @property
    def metadata(self) -> ModelMetadata:
        """The loaded artifact's metadata."""
        return self._metadata

    @property
    def classes(self) -> tuple[str, ...]:
        """Labels in output order."""
        return self._metadata.classes

    def predict(self, images: Sequence[Image.Image]) -> list[TypePrediction]:
        """Classify decoded images.

        Args:
            images: RGB images as :func:`tagging.ingest.images.decode_image` returns them
                (other modes are converted).

        Returns:
            One prediction per image, in order; an empty list for no images.
        """
        if not images:
            return []
        size = self._metadata.input_size
        # Preprocessing happens outside the lock: it is per-image PIL work that other threads'
        # forward passes need not wait for.
        batches = [
            preprocess(images[i : i + MAX_FORWARD_BATCH], size)
            for i in range(0, len(images), MAX_FORWARD_BATCH)
        ]
        probs: list[torch.Tensor] = []
        with self._lock, torch.inference_mode():
            for batch in batches:
                probs.append(torch.softmax(self._model(batch), dim=1))
        out: list[TypePrediction] = []
        for row in torch.cat(probs).tolist():
            best = max(range(len(row)), key=row.__getitem__)
            out.append(
                TypePrediction(
                    label=self.classes[best],
                    confidence=row[best],
                    probabilities={
                        label: round(p, PROBABILITY_PLACES)
                        for label, p in zip(self.classes, row, strict=True)
                    },
                )
            )
        return out
