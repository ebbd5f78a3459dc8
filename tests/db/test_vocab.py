"""The label vocabulary: facts that other modules look up instead of repeating."""

from __future__ import annotations

import re

from db.vocab import DEFAULT_IMAGE_TYPE, IMAGE_TYPES, PLACEHOLDER, TYPE_COLORS


def test_every_image_type_has_one_color_in_order() -> None:
    assert tuple(TYPE_COLORS) == IMAGE_TYPES
    assert all(re.fullmatch(r"#[0-9a-f]{6}", c) for c in TYPE_COLORS.values())
    assert len(set(TYPE_COLORS.values())) == len(TYPE_COLORS)


def test_placeholder_is_an_image_type_and_the_default() -> None:
    assert PLACEHOLDER in IMAGE_TYPES
    assert DEFAULT_IMAGE_TYPE == PLACEHOLDER
