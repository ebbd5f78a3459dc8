"""The review grid: one Streamlit component (Components v2) for every tile of a page.

The tiles, their dropdowns, the selection, the keyboard and the large view live in the browser
(``views/assets/review_grid.js``): a pick, a key or a zoom costs no round trip and no rerun. The
component sends back only actions, as trigger values: ``update`` (every unsaved change, one
transaction), ``undo`` (the last update) and ``page`` (the large view went past the page's last
image). This module builds what the component is sent and reads what it sends back; the page
(``views/review.py``) calls the use cases.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import streamlit as st

from db.fixes import FixChange
from db.models import ItemStatus, LabelSource
from db.review import HistoryEntry, ReviewItem
from db.vocab import COLORS, IMAGE_TYPES, PLACEHOLDER
from tagging.errors import InvalidInput
from views.media import ORIGINAL_PATH, THUMB_PATH
from views.session_cookie import base_path

_ASSETS = Path(__file__).parent / "assets"
GRID_KEY = "review-grid"
FIELDS = ("image_type", "color")
MAX_CHANGES = 5000
"""More changes than this in one Update is not a person at a keyboard: refused."""

_grid = st.components.v2.component(
    "tagdesk_review_grid",
    js=(_ASSETS / "review_grid.js").read_text(encoding="utf-8"),
    css=(_ASSETS / "review_grid.css").read_text(encoding="utf-8"),
)


def missing_thumbnail_url() -> str:
    """An inline "no image" picture (an SVG: no request, no advertiser content)."""
    svg = (
        "<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 240 180'>"
        "<rect width='240' height='180' fill='%23eef0f3'/>"
        "<path d='M90 110 L150 60 M90 60 h60 v50 h-60 z' stroke='%2396a0ab' stroke-width='3'"
        " fill='none'/><text x='120' y='140' font-size='14' text-anchor='middle'"
        " fill='%23787d85' font-family='sans-serif'>no image</text></svg>"
    )
    return "data:image/svg+xml;utf8," + svg.replace("<", "%3C").replace(">", "%3E")


def tile_data(
    item: ReviewItem,
    *,
    title: str,
    fixable: bool,
    history: Sequence[HistoryEntry] = (),
    has_thumbnail: bool = True,
) -> dict[str, Any]:
    """One tile as the component reads it. ``title`` is the advertiser's title as text
    (the component shows every string as text, never as HTML). Without ``has_thumbnail`` the
    tile shows "no image" at once."""
    base = base_path()
    return {
        "id": item.id,
        "position": item.position,
        "title": title,
        "image_type": item.image_type,
        "color": item.color,
        "ml_type": item.ml_image_type,
        "ml_color": item.ml_color,
        "conf": item.ml_confidence,
        "probabilities": dict(item.ml_probabilities) if item.ml_probabilities else None,
        "status": str(item.status),
        "fixes": item.fixes,
        "override": LabelSource.OVERRIDE in (item.image_type_source, item.color_source),
        "pending": item.pending,
        "fixable": fixable and item.image_key is not None,
        "thumb": (
            f"{base}{THUMB_PATH}/{item.image_key}" if item.image_key and has_thumbnail else None
        ),
        "original": f"{base}{ORIGINAL_PATH}/{item.id}",
        "url": item.image_url,
        "page": item.page_url,
        "error": item.error if item.status in (ItemStatus.ERROR, ItemStatus.ML_FAILURE) else None,
        "history": [
            {
                "at": f"{h.created_at:%Y-%m-%d %H:%M}",
                "user": h.user,
                "field": h.field,
                "old": h.old_value,
                "new": h.new_value,
                "sync": h.sync_status,
            }
            for h in history
        ],
    }


def review_grid(
    *,
    scrape_id: int,
    tiles: list[dict[str, Any]],
    can_fix: bool,
    color_locked: bool,
    page: int,
    pages: int,
    empty: str,
    ack: Mapping[str, Any] | None,
    undo_count: int,
    open_at: Mapping[str, Any] | None,
    on_update: Callable[[], None],
    on_undo: Callable[[], None],
    on_page: Callable[[], None],
) -> None:
    """Mount the grid; its actions run the callbacks before the next run (read them with
    :func:`trigger`), so a saved change shows in the very run that follows."""
    _grid(
        key=GRID_KEY,
        data={
            "scrape": scrape_id,
            "items": tiles,
            "types": list(IMAGE_TYPES),
            "colors": list(COLORS),
            "placeholder": PLACEHOLDER,
            "can_fix": can_fix,
            "color_locked": color_locked,
            "page": page,
            "pages": pages,
            "empty": empty,
            "missing": missing_thumbnail_url(),
            "ack": dict(ack) if ack else None,
            "undo": {"count": undo_count} if undo_count else None,
            "open": dict(open_at) if open_at else None,
        },
        on_update_change=on_update,
        on_undo_change=on_undo,
        on_page_change=on_page,
    )


def trigger(name: str) -> Any:
    """The value the grid sent with the action ``name`` (in that action's callback), else None."""
    value = st.session_state.get(GRID_KEY)
    return value.get(name) if isinstance(value, Mapping) else None


def changes_of(payload: object, shown: Mapping[int, Mapping[str, Any]]) -> list[FixChange]:
    """The fixes an ``update`` asks for, checked: each names an item of ``shown`` (the scrape's
    items, by id, with their ``image_key``), a field and one of its values.

    ``seen`` is the value the tile showed when the analyst chose: a fix made meanwhile by someone
    else is reported as a race (:class:`db.fixes.RaceNotice`), never silently overwritten.

    Raises:
        InvalidInput: the payload is not a list of changes, or names an item, a field or a value
            it may not.
    """
    changes = payload.get("changes") if isinstance(payload, Mapping) else None
    if not isinstance(changes, list) or len(changes) > MAX_CHANGES:
        raise InvalidInput("the grid sent no list of changes (reload the page)")
    out: list[FixChange] = []
    for change in changes:
        if not isinstance(change, Mapping):
            raise InvalidInput("the grid sent a change that is not one (reload the page)")
        item_id, field, value, seen = (change.get(k) for k in ("id", "field", "value", "seen"))
        if not isinstance(item_id, int) or item_id not in shown:
            raise InvalidInput(f"there is no item {item_id!r} (reload the page)")
        if field not in FIELDS:
            raise InvalidInput(f"unknown field {field!r}: use image_type or color")
        allowed = IMAGE_TYPES if field == "image_type" else COLORS
        if value not in allowed:
            raise InvalidInput(f"{value!r} is not a valid {field}: one of {', '.join(allowed)}")
        if not shown[item_id].get("image_key"):
            raise InvalidInput(f"item {item_id} has no image to fix")
        if seen is not None and not isinstance(seen, str):
            raise InvalidInput("the grid sent a value seen that is not text (reload the page)")
        out.append(FixChange(item_id, str(field), str(value), seen_value=seen))
    return out
