"""Penultimate-layer embeddings of the Image Type model, for dataset curation.

The vector is what :class:`tagging.ml.model.TypeNet`'s classifier sees: the globally pooled
features of the last conv block, before dropout and the linear layer. Images the model finds alike
are close in it, which is what near-duplicate search by embedding and the label-issue ranking
(:mod:`tagging.curation`) need.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from tagging.ml.model import TypeNet
from tagging.ml.transforms import preprocess

BATCH = 128
"""Images per forward pass, as in serving: bounded peak memory."""


def embed(
    images: Sequence[Image.Image], model: TypeNet, *, input_size: int = 64, batch: int = BATCH
) -> np.ndarray:
    """The penultimate-layer embedding of each image.

    Args:
        images: Decoded images, preprocessed as serving does (:func:`preprocess`).
        model: The network (e.g. ``load_artifact(...).model``); run in eval mode, and left in the
            mode it was in.
        input_size: The model's input side, from its metadata.
        batch: Images per forward pass.

    Returns:
        ``float32`` array ``(len(images), 8 × width)``; ``(0, 8 × width)`` for no images.
    """
    dimension = model.classifier.in_features
    if not images:
        return np.zeros((0, dimension), dtype=np.float32)
    was_training = model.training
    model.eval()  # BatchNorm's running statistics, no dropout: the same input, the same vector
    try:
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), batch):
                x = preprocess(images[start : start + batch], input_size)
                x = x.contiguous(memory_format=torch.channels_last)
                out.append(model.pool(model.features(x)).flatten(1))
        return torch.cat(out).numpy().astype(np.float32, copy=False)
    finally:
        model.train(was_training)
