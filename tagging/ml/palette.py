"""The body paint of each color name, in sRGB: what the renderer paints and the color model matches.

One definition for both sides: :mod:`.synth` paints a car's side panel exactly ``PALETTE[color]``
(times a slight brightness factor) and :class:`tagging.ml.color.EmbeddedColorModel` votes each
pixel to the nearest of these paints. Standard library only, so serving code does not depend on
the renderer.
"""

from __future__ import annotations

from db.vocab import COLORS

RGB = tuple[int, int, int]

PALETTE: dict[str, RGB] = {
    "Black": (22, 23, 26),
    "White": (244, 244, 240),
    "Silver": (192, 196, 202),
    "Gray": (104, 107, 112),
    "Red": (178, 20, 28),
    "Blue": (28, 64, 168),
    "Green": (28, 112, 52),
    "Brown": (96, 58, 30),
    "Beige": (218, 200, 158),
    "Gold": (184, 146, 44),
    "Orange": (236, 112, 18),
    "Yellow": (246, 208, 22),
    "Purple": (104, 42, 136),
}
"""One body color per name in :data:`db.vocab.COLORS`, in its order, far enough apart to be told
apart by eye."""

assert tuple(PALETTE) == COLORS, "PALETTE must follow db.vocab.COLORS"
