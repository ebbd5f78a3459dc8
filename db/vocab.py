"""The label vocabulary and the seed's defaults: one place for every fact about labels.

Standard library only, so that every layer (``db``, ``tagging``, the pages) can import it.
"""

PLACEHOLDER = "Placeholder"
"""The Image Type of a picture that shows no vehicle ("photo coming soon"): it has no color."""

IMAGE_TYPES: tuple[str, ...] = ("Dealer", "Stock", PLACEHOLDER)
"""The Image Type classes, in the order the model's outputs use."""

DEFAULT_IMAGE_TYPE = PLACEHOLDER
"""What an item's Image Type is when the ML system returns no value (the seed's rule)."""

TYPE_COLORS: dict[str, str] = {"Dealer": "#2f81f7", "Stock": "#a371f7", "Placeholder": "#8b949e"}
"""How each Image Type is drawn in charts and badges (CSS hex), in :data:`IMAGE_TYPES`' order."""

COLORS: tuple[str, ...] = (
    "Black",
    "White",
    "Silver",
    "Gray",
    "Red",
    "Blue",
    "Green",
    "Brown",
    "Beige",
    "Gold",
    "Orange",
    "Yellow",
    "Purple",
)
"""The color list shared by the color adapter, the demo and the manual-fix dropdown."""

DEFAULT_FIX_COLOR = "Black"
"""What the color manual-fix list selects when the ML color is None (the seed's rule)."""

# --- weird results -------------------------------------------------------------------------------

ML_OUTAGE = "ml_outage"
ADVERTISER_PLACEHOLDER = "advertiser_placeholder"
LEGACY_PLACEHOLDER = "legacy_placeholder"
SHARED_CDN_CONFLICT = "shared_cdn_conflict"
FIX_NOT_STICKING = "fix_not_sticking"
NEAR_DUPLICATES = "near_duplicates"
CRITERIA_SHIFT = "criteria_shift"

CASES: dict[str, str] = {
    ML_OUTAGE: "ML system failed to respond",
    ADVERTISER_PLACEHOLDER: "Placeholder fixed by the advertiser",
    LEGACY_PLACEHOLDER: "Legacy cached placeholder",
    SHARED_CDN_CONFLICT: "Advertisers sharing a CDN disagree",
    FIX_NOT_STICKING: "Fix that did not stick",
    NEAR_DUPLICATES: "Near-duplicates labelled differently",
    CRITERIA_SHIFT: "Different criteria",
}
"""Every detector (the ``detector`` of a finding) and the known case it finds, in the notes'
order."""

GLOBAL_DETECTORS = frozenset({SHARED_CDN_CONFLICT, NEAR_DUPLICATES, CRITERIA_SHIFT})
"""Detectors that compare advertisers with each other: always run over all of them."""
