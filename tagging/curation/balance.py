"""Balance: class counts per split and per advertiser, with warnings, and exclusions by reason."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from db.vocab import IMAGE_TYPES
from tagging.curation.manifest import SPLITS, Manifest

NO_ADVERTISER = "(none)"
"""The advertiser key of rows without one (the generated images)."""

MIN_SHARE = 0.1
"""Default smallest share of a split a class may have before it is warned about."""


@dataclass(frozen=True)
class BalanceReport:
    """How the training rows of a version are spread.

    Attributes:
        by_split: ``split → Image Type → count``, every split and class present (zeros too).
        by_advertiser: ``advertiser → Image Type → count`` over both splits, advertisers sorted.
        warnings: One sentence per class under ``min_share`` of a split (or missing from it).
    """

    by_split: dict[str, dict[str, int]]
    by_advertiser: dict[str, dict[str, int]]
    warnings: tuple[str, ...]


def balance(manifest: Manifest, *, min_share: float = MIN_SHARE) -> BalanceReport:
    """Count the training rows per split and per advertiser, and warn about small classes.

    Args:
        manifest: The version; rows without a split count under no split but per advertiser.
        min_share: Smallest share of a split's rows a class may have without a warning.
    """
    rows = manifest.included()
    by_split = {
        split: {
            name: sum(1 for r in rows if r.split == split and r.image_type == name)
            for name in IMAGE_TYPES
        }
        for split in SPLITS
    }
    per_advertiser = Counter((row.advertiser or NO_ADVERTISER, row.image_type) for row in rows)
    advertisers = sorted({advertiser for advertiser, _ in per_advertiser})
    by_advertiser = {
        advertiser: {name: per_advertiser[advertiser, name] for name in IMAGE_TYPES}
        for advertiser in advertisers
    }
    warnings = []
    for split, counts in by_split.items():
        total = sum(counts.values())
        if total == 0:
            warnings.append(f"{split} has no images")
            continue
        for name, count in counts.items():
            share = count / total
            if count == 0:
                warnings.append(f"{split}: no {name} images")
            elif share < min_share:
                warnings.append(
                    f"{split}: {name} is {share:.1%} of {total} images (under {min_share:.0%})"
                )
    return BalanceReport(by_split=by_split, by_advertiser=by_advertiser, warnings=tuple(warnings))


def exclusions_by_reason(manifest: Manifest) -> dict[str, int]:
    """How many rows each kind of exclusion removed (the text before the first ``:``), sorted."""
    kinds = Counter(row.exclusion.split(":", 1)[0] for row in manifest if row.exclusion is not None)
    return dict(sorted(kinds.items()))
