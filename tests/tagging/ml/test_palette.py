"""The body paints: one per color name, defined once for the renderer and the color model."""

from __future__ import annotations

from collections import Counter

from db.vocab import COLORS
from tagging.ml import color, synth
from tagging.ml.palette import PALETTE


def test_every_color_has_exactly_one_paint() -> None:
    assert Counter(list(PALETTE)) == Counter(COLORS)
    assert list(PALETTE) == list(COLORS)
    assert len(set(PALETTE.values())) == len(PALETTE), "two colors share a paint"


def test_the_renderer_and_the_color_model_share_one_definition() -> None:
    assert synth.PALETTE is PALETTE
    assert color.REFERENCE_RGB is PALETTE
