"""The size filter: images too small to teach the model anything are excluded."""

from __future__ import annotations

import re

from tagging.curation.manifest import Manifest, ManifestRow
from tagging.errors import InvalidInput

TOO_SMALL = "too small"
"""The kind of exclusion this step writes (``too small: 90x60 < 200x150``)."""

_SIZE_RE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")


def parse_size(text: str) -> tuple[int, int]:
    """Parse ``WxH`` (the CLI's ``--min-size``) into ``(width, height)``.

    Raises:
        InvalidInput: Not two non-negative integers separated by ``x``.
    """
    match = _SIZE_RE.match(text)
    if match is None:
        raise InvalidInput(f"size must be WIDTHxHEIGHT, e.g. 200x150, got {text!r}")
    return int(match[1]), int(match[2])


def drop_small(manifest: Manifest, min_width: int, min_height: int) -> Manifest:
    """Exclude the training rows narrower than ``min_width`` or lower than ``min_height``.

    Both limits apply: an image 1000 wide but 40 high is as useless as a thumbnail. Rows already
    excluded keep their first reason.

    Args:
        manifest: The version being built.
        min_width: Minimum width in pixels (``0``: no limit).
        min_height: Minimum height in pixels (``0``: no limit).

    Returns:
        The manifest with the small rows excluded as ``too small: WxH < MINWxMINH``.
    """
    if min_width < 0 or min_height < 0:
        raise InvalidInput("minimum sizes must not be negative")

    def check(row: ManifestRow) -> ManifestRow:
        if row.width >= min_width and row.height >= min_height:
            return row
        return row.excluded(f"{TOO_SMALL}: {row.width}x{row.height} < {min_width}x{min_height}")

    return manifest.map(check)
