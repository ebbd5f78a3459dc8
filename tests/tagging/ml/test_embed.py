"""Penultimate-layer embeddings of the Image Type model."""

from __future__ import annotations

import torch
from PIL import Image

from tagging.ml.embed import embed
from tagging.ml.model import build_model
from tagging.ml.transforms import preprocess


def test_embed_is_the_input_of_the_classifier() -> None:
    torch.manual_seed(0)
    model = build_model(width=4)
    images = [Image.new("RGB", (80, 60), color) for color in ("red", "navy", "white")]
    vectors = embed(images, model, input_size=32, batch=2)
    assert vectors.shape == (3, 32)
    model.eval()
    with torch.inference_mode():
        logits = model(preprocess(images, 32))
        again = model.classifier(torch.from_numpy(vectors))
    assert torch.allclose(logits, again, atol=1e-5)


def test_embed_leaves_the_mode_alone_and_accepts_no_images() -> None:
    model = build_model(width=4)
    model.train()
    assert embed([], model).shape == (0, 32)
    embed([Image.new("RGB", (8, 8))], model, input_size=16)
    assert model.training
