"""The size filter, on images made in the test."""

from __future__ import annotations

import pytest

from tagging.curation.manifest import Manifest
from tagging.curation.size import drop_small, parse_size
from tagging.errors import InvalidInput
from tests.tagging.curation.factory import picture, row


def test_images_under_the_limit_are_excluded_with_their_size_in_the_reason() -> None:
    images = {
        "thumb": picture(1, (90, 60)),
        "thin": picture(2, (800, 100)),  # wide enough, too low
        "exact": picture(3, (200, 150)),  # exactly at the limit: kept
        "big": picture(4, (640, 480)),
    }
    manifest = Manifest(
        row(name, width=image.width, height=image.height) for name, image in images.items()
    )
    out = {r.path: r for r in drop_small(manifest, 200, 150)}
    by_name = {name: out[row(name).path] for name in images}
    assert by_name["thumb"].exclusion == "too small: 90x60 < 200x150"
    assert by_name["thin"].exclusion == "too small: 800x100 < 200x150"
    assert by_name["exact"].exclusion is None
    assert by_name["big"].exclusion is None


def test_an_excluded_row_keeps_its_first_reason() -> None:
    manifest = Manifest([row(1, width=10, height=10, exclusion="dropped: blurry")])
    assert drop_small(manifest, 200, 150).rows[0].exclusion == "dropped: blurry"


def test_zero_limits_keep_everything() -> None:
    manifest = Manifest([row(1, width=1, height=1)])
    assert drop_small(manifest, 0, 0) == manifest


def test_parse_size() -> None:
    assert parse_size("200x150") == (200, 150)
    assert parse_size(" 64 X 48 ") == (64, 48)
    for bad in ("200", "200x", "-1x5", "axb"):
        with pytest.raises(InvalidInput):
            parse_size(bad)
