"""``views.review_grid``: what an "Update" of the grid may ask for, checked before any query
writes (the browser is not trusted: a stale or forged page sends what it likes)."""

from __future__ import annotations

import pytest

from db.fixes import FixChange
from tagging.errors import InvalidInput
from views.review_grid import MAX_CHANGES, changes_of

SHOWN = {
    1: {"id": 1, "image_key": "a" * 32},
    2: {"id": 2, "image_key": "b" * 32},
    3: {"id": 3, "image_key": None},  # an image error: nothing to fix
}


def payload(*changes: object) -> dict[str, object]:
    return {"nonce": "n", "changes": list(changes)}


def test_valid_changes_become_fixes_with_the_values_seen() -> None:
    changes = changes_of(
        payload(
            {"id": 1, "field": "image_type", "value": "Stock", "seen": "Dealer"},
            {"id": 2, "field": "color", "value": "Purple", "seen": None},
            {"id": 1, "field": "color", "value": "Gold"},  # no "seen": none expected
        ),
        SHOWN,
    )
    assert changes == [
        FixChange(1, "image_type", "Stock", seen_value="Dealer"),
        FixChange(2, "color", "Purple", seen_value=None),
        FixChange(1, "color", "Gold", seen_value=None),
    ]
    assert not any(c.implied for c in changes)  # every one was chosen: each is validated


def test_no_change_is_an_empty_update() -> None:
    assert changes_of(payload(), SHOWN) == []


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"id": 99, "field": "color", "value": "Red"}, "there is no item 99"),
        ({"id": "1", "field": "color", "value": "Red"}, "there is no item '1'"),
        ({"id": None, "field": "color", "value": "Red"}, "there is no item"),
        ({"id": 1.0, "field": "color", "value": "Red"}, "there is no item"),
        ({"id": 1, "field": "price", "value": "1"}, "unknown field 'price'"),
        ({"id": 1, "field": "image_type_source", "value": "fix"}, "unknown field"),
        ({"id": 1, "field": "image_type", "value": "Car"}, "'Car' is not a valid image_type"),
        ({"id": 1, "field": "image_type", "value": "Red"}, "is not a valid image_type"),
        ({"id": 1, "field": "color", "value": "Stock"}, "'Stock' is not a valid color"),
        ({"id": 1, "field": "color", "value": "N/A"}, "is not a valid color"),
        ({"id": 1, "field": "color", "value": None}, "None is not a valid color"),
        ({"id": 1, "field": "color", "value": "red"}, "is not a valid color"),  # exact labels
        ({"id": 3, "field": "image_type", "value": "Stock"}, "item 3 has no image to fix"),
        ({"id": 1, "field": "color", "value": "Red", "seen": 5}, "value seen that is not text"),
        ("1:color=Red", "a change that is not one"),
        (None, "a change that is not one"),
    ],
)
def test_a_bad_change_refuses_the_whole_update(change: object, said: str) -> None:
    good = {"id": 2, "field": "color", "value": "Gold"}
    with pytest.raises(InvalidInput, match=said):
        changes_of(payload(good, change), SHOWN)


@pytest.mark.parametrize(
    "sent",
    [
        None,
        "changes",
        [{"id": 1, "field": "color", "value": "Red"}],  # a bare list, not {"changes": [...]}
        {"nonce": "n"},
        {"changes": None},
        {"changes": {"id": 1, "field": "color", "value": "Red"}},
        {"changes": "all"},
    ],
)
def test_a_payload_that_is_no_list_of_changes_is_refused(sent: object) -> None:
    with pytest.raises(InvalidInput, match="no list of changes"):
        changes_of(sent, SHOWN)


def test_too_many_changes_are_refused() -> None:
    one = {"id": 1, "field": "color", "value": "Red"}
    assert len(changes_of(payload(*[one] * MAX_CHANGES), SHOWN)) == MAX_CHANGES
    with pytest.raises(InvalidInput, match="no list of changes"):
        changes_of(payload(*[one] * (MAX_CHANGES + 1)), SHOWN)
