"""The reviewers' prune decisions: keep, drop (with a reason) or relabel, applied to a manifest.

The decisions are made in a review grid (near-duplicate conflicts first, then likely label errors)
and recorded in the recipe, so that a replay applies exactly the same ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

from db.vocab import COLORS, IMAGE_TYPES, PLACEHOLDER
from tagging.curation.manifest import Manifest, ManifestRow, relabel
from tagging.errors import InvalidInput

KEEP: Final = "keep"
DROP: Final = "drop"
RELABEL: Final = "relabel"
Action = Literal["keep", "drop", "relabel"]


@dataclass(frozen=True)
class Decision:
    """One reviewer decision about one image.

    Attributes:
        sha256: The image.
        action: ``keep`` (clears an automatic exclusion, e.g. a conflict the reviewer resolved),
            ``drop`` (excludes it for ``reason``) or ``relabel`` (new labels from a team fix).
        reason: Why it is dropped; required for ``drop``.
        image_type: The new Image Type; required for ``relabel``.
        color: The new Color for ``relabel`` (``None``: unchanged).
        origin: The team fix a relabel was recorded as (``fix:17 by alice``); required for
            ``relabel``, since a relabel is a fix and goes to the history first.
    """

    sha256: str
    action: Action
    reason: str | None = None
    image_type: str | None = None
    color: str | None = None
    origin: str | None = None

    def __post_init__(self) -> None:
        if self.action not in (KEEP, DROP, RELABEL):
            raise InvalidInput(f"unknown prune action {self.action!r}")
        if self.action == DROP and not self.reason:
            raise InvalidInput(f"dropping {self.sha256[:12]} needs a reason")
        if self.action == RELABEL:
            if self.image_type not in IMAGE_TYPES or not self.origin:
                raise InvalidInput(f"relabelling {self.sha256[:12]} needs an Image Type and a fix")
            if self.color is not None and self.color not in COLORS:
                raise InvalidInput(f"relabelling {self.sha256[:12]}: unknown color {self.color!r}")


def apply_decisions(manifest: Manifest, decisions: Iterable[Decision]) -> Manifest:
    """Apply reviewer decisions in order (a later decision on the same image wins).

    Raises:
        InvalidInput: A decision names an image that is not in the manifest.
    """
    rows = manifest.by_sha256()
    for decision in decisions:
        row = rows.get(decision.sha256)
        if row is None:
            raise InvalidInput(f"decision on {decision.sha256[:12]}…, which is not in the manifest")
        rows[decision.sha256] = _apply(row, decision)
    return Manifest(rows.values())


def _apply(row: ManifestRow, decision: Decision) -> ManifestRow:
    if decision.action == KEEP:
        return row.replace(exclusion=None)
    if decision.action == DROP:
        assert decision.reason is not None  # checked in Decision.__post_init__
        return row.replace(exclusion=decision.reason, split=None)
    assert decision.image_type is not None and decision.origin is not None
    # A placeholder shows no vehicle, so it has no color (db.vocab.PLACEHOLDER).
    color = row.color if decision.color is None else decision.color
    if decision.image_type == PLACEHOLDER:
        color = None
    return relabel(row, image_type=decision.image_type, color=color, fix=decision.origin)
