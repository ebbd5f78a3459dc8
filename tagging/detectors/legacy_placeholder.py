"""Case 3, ``legacy_placeholder``: Color "N/A", how the old system cached placeholders."""

from __future__ import annotations

from db.findings import Candidate
from db.models import Severity
from db.vocab import CASES, LEGACY_PLACEHOLDER
from tagging.detectors.base import DEFAULT_THRESHOLDS, Facts, ItemFilter, Thresholds
from tagging.detectors.common import LEGACY_COLORS, evidence_image


def detect_legacy_placeholders(facts: Facts, t: Thresholds = DEFAULT_THRESHOLDS) -> list[Candidate]:
    """Images with Color "N/A": placeholders as the old system cached them."""
    found = []
    # A coarse filter in the database (every legacy color contains one of them), the exact
    # test here; only the first item of each image_key counts.
    coarse = [ItemFilter(color_contains=c) for c in sorted(LEGACY_COLORS)]
    for advertiser_id, latest in facts.listed():
        if not facts.in_scope(advertiser_id):
            continue
        legacy = [
            i
            for where in coarse
            for i in facts.source.items(latest.id, where, first_of_key=True)
            if i.color is not None and i.color.strip().lower() in LEGACY_COLORS
        ]
        if len(coarse) > 1:  # the order of the scrape, each item once
            legacy = sorted({i.id: i for i in legacy}.values(), key=lambda i: (i.position, i.id))
        if not legacy:
            continue
        name = facts.name(advertiser_id)
        explanation = (
            f"{CASES[LEGACY_PLACEHOLDER]}: {len(legacy):,} image(s) of {name} have Color "
            f"'{legacy[0].color}', how the old system stored placeholders "
            "({Placeholder, 'N/A'}): these are cached values from before, not today's answer. "
            "Re-classify them: relaunch the scrape (the ML server classifies again what it holds "
            "without a content hash). If 'N/A' comes back, the cache holds it: fix the color "
            "by hand."
        )
        scrape_id = facts.latest_scrape_id(advertiser_id)
        found.append(
            Candidate(
                detector=LEGACY_PLACEHOLDER,
                subject=f"advertiser:{advertiser_id}",
                advertiser_id=advertiser_id,
                scrape_id=scrape_id,
                severity=Severity.WARNING,
                explanation=explanation,
                evidence={
                    "count": len(legacy),
                    "remedy": "reclassify",
                    "images": [evidence_image(i, facts) for i in legacy[: t.evidence_limit]],
                },
                identity=sorted(f"{i.image_key}|{i.image_type}|{i.color}" for i in legacy),
            )
        )
    return found


__all__ = ["detect_legacy_placeholders"]
