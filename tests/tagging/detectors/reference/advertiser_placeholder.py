"""Case 2, ``advertiser_placeholder``: a Placeholder with a color, the trace of an advertiser's
fix.
"""

from __future__ import annotations

from db.findings import Candidate
from db.models import Severity
from db.vocab import ADVERTISER_PLACEHOLDER, CASES, DEFAULT_IMAGE_TYPE
from tests.tagging.detectors.reference.base import DEFAULT_THRESHOLDS, Facts, Thresholds
from tests.tagging.detectors.reference.common import (
    LEGACY_COLORS,
    evidence_image,
    latest_fixes,
    unique_by_key,
)


def detect_advertiser_placeholders(
    facts: Facts, t: Thresholds = DEFAULT_THRESHOLDS
) -> list[Candidate]:
    """Images whose Image Type is Placeholder but whose Color is not None.

    The ML system never colors a placeholder, so the color is the trace of a fix that retagged a
    vehicle photo as Placeholder. Advertisers whose feed gives the color are skipped when the
    color is the feed's: there every placeholder carries its vehicle's color.
    """
    latest_type_fix = {
        key: fix for (key, name), fix in latest_fixes(facts.fixes).items() if name == "image_type"
    }
    found = []
    for advertiser_id, items in facts.items.items():
        if not facts.in_scope(advertiser_id):
            continue
        advertiser = facts.advertisers.get(advertiser_id)
        for item in unique_by_key(items):
            if item.image_type != DEFAULT_IMAGE_TYPE or item.color is None:
                continue
            if item.color.strip().lower() in LEGACY_COLORS:
                continue  # the legacy placeholder case
            if (
                advertiser is not None
                and advertiser.color_from_feed
                and (item.feed_color or "").strip().lower() == item.color.strip().lower()
            ):
                continue
            fix = latest_type_fix.get(item.image_key or "")
            suggested = None
            if fix is not None and fix.old_value and fix.old_value != DEFAULT_IMAGE_TYPE:
                suggested = fix.old_value
            elif item.ml_image_type != DEFAULT_IMAGE_TYPE:
                suggested = item.ml_image_type
            if fix is not None and fix.new_value == DEFAULT_IMAGE_TYPE:
                who = f"{fix.user} ({fix.source})"
                if fix.created_at is not None:
                    who += f" on {fix.created_at:%Y-%m-%d %H:%M}"
                how = f"it was retagged as Placeholder by {who}"
            else:
                how = "someone retagged it as Placeholder and kept the color"
            name = facts.name(advertiser_id)
            explanation = (
                f"{CASES[ADVERTISER_PLACEHOLDER]}: this image of {name} is a Placeholder with "
                f"Color {item.color}. The ML system never gives a placeholder a color: {how}. "
                + (f"Re-tag it as {suggested}, " if suggested else "Re-tag it, ")
                + "or accept it: the last word on the classification is the advertiser's."
            )
            found.append(
                Candidate(
                    detector=ADVERTISER_PLACEHOLDER,
                    subject=f"{advertiser_id}:{item.image_key}",
                    advertiser_id=advertiser_id,
                    scrape_id=item.scrape_id,
                    severity=Severity.INFO,
                    explanation=explanation,
                    evidence={
                        "image_key": item.image_key,
                        "image_url": item.image_url,
                        "item_id": item.id,
                        "color": item.color,
                        "ml_image_type": item.ml_image_type,
                        "suggested_type": suggested,
                        "fix_id": fix.id if fix else None,
                        "fixed_by": fix.user if fix else None,
                        "fix_source": fix.source if fix else None,
                        "remedy": "retag_or_accept",
                        "images": [evidence_image(item, facts)],
                    },
                    identity={
                        "key": item.image_key,
                        "type": item.image_type,
                        "color": item.color,
                        "fix": fix.id if fix else None,
                    },
                )
            )
    return found


__all__ = ["detect_advertiser_placeholders"]
