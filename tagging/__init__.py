"""Tagdesk's inference library: sitemaps, guarded fetching, images, models, the ML server, scrapes.

Nothing in this package imports Streamlit: pages call these functions and render their results.
"""

IMAGE_TYPES: tuple[str, ...] = ("Dealer", "Stock", "Placeholder")
"""The Image Type classes, in the order the model's outputs use."""

DEFAULT_IMAGE_TYPE = "Placeholder"
"""What an item's Image Type is when the ML system returns no value (the seed's rule)."""

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
