"""The review grid (one Streamlit component, ``views/review_grid.py``) as AppTest sees it.

AppTest cannot click inside a component (its tiles live in the browser), but it can read what
the page sends it and send what the browser would: an action is a trigger value, which reaches
the page's callback in the next run exactly as the browser's click would.
"""

from __future__ import annotations

import json
from typing import Any

from streamlit.proto.WidgetStates_pb2 import WidgetState
from streamlit.testing.v1 import AppTest

GRID_COMPONENT = "tagdesk_review_grid"
_INTERNAL_KEY_PREFIX = "$$STREAMLIT_INTERNAL_KEY"
"""Streamlit's prefix of internal widget ids (``STREAMLIT_INTERNAL_KEY_PREFIX``)."""


def grid_element(at: AppTest) -> Any:
    """The page's one review grid element (its proto is a ``BidiComponent``)."""
    grids = [
        node
        for node in at.get("bidi_component")
        if node.proto.component_name.endswith(GRID_COMPONENT)
    ]
    assert len(grids) == 1, f"expected one review grid, found {len(grids)}"
    return grids[0]


def grid_data(at: AppTest) -> dict[str, Any]:
    """What the page sent the grid: ``{scrape, items: [tile dicts], can_fix, …}``."""
    proto = grid_element(at).proto
    kind = proto.WhichOneof("data")
    if kind == "json":
        return json.loads(proto.json)
    if kind == "mixed":
        assert not proto.mixed.arrow_blobs, "the grid is sent no dataframes"
        return json.loads(proto.mixed.json)
    raise AssertionError(f"the grid's data is {kind!r}, not JSON")


def tiles(at: AppTest) -> dict[int, dict[str, Any]]:
    """The grid's tiles by item id."""
    return {tile["id"]: tile for tile in grid_data(at)["items"]}


def send(at: AppTest, event: str, value: object) -> AppTest:
    """Run the page as after the grid's ``event`` action with ``value`` (what the browser's
    ``setTriggerValue(event, value)`` sends): its callback runs first, then the page.

    AppTest has no public way to set a component's trigger, so this adds the trigger's widget
    state (``$$STREAMLIT_INTERNAL_KEY_<component id>__events``, a JSON list of
    ``{event, value}``) to the ones AppTest would send, through its private ``_tree`` and
    ``_run`` (Streamlit 1.67): a Streamlit upgrade may have to adapt it here, in one place.
    """
    states = at._tree.get_widget_states()
    states.widgets.append(
        WidgetState(
            id=f"{_INTERNAL_KEY_PREFIX}_{grid_element(at).proto.id}__events",
            json_trigger_value=json.dumps([{"event": event, "value": value}]),
        )
    )
    return at._run(states)


def change(
    item_id: int, field: str, value: str | None, seen: str | None = None
) -> dict[str, object]:
    """One unsaved change, as the grid sends it with "Update"."""
    return {"id": item_id, "field": field, "value": value, "seen": seen}


def update(at: AppTest, *changes: dict[str, object], nonce: str = "n-1") -> AppTest:
    """The grid's "Update" with these changes."""
    return send(at, "update", {"nonce": nonce, "changes": list(changes)})


def undo(at: AppTest, nonce: str = "u-1") -> AppTest:
    """The grid's "Undo" (of this session's last Update)."""
    return send(at, "undo", {"nonce": nonce})
