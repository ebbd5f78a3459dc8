"""The reviewers' keep / drop / relabel decisions."""

from __future__ import annotations

import pytest

from tagging.curation.manifest import Manifest
from tagging.curation.prune import Decision, apply_decisions
from tagging.errors import InvalidInput
from tests.tagging.curation.factory import row, sha

MANIFEST = Manifest(
    [
        row(1, "Dealer", split="train"),
        row(2, "Stock", color="Blue"),
        row(3, "Dealer", exclusion="conflicting near-duplicates: cluster 1 (Dealer, Stock)"),
    ]
)


def test_keep_drop_and_relabel() -> None:
    out = apply_decisions(
        MANIFEST,
        [
            Decision(sha(1), "drop", reason="client misclassification"),
            Decision(sha(2), "relabel", image_type="Dealer", origin="fix:40 by alice"),
            Decision(sha(3), "keep"),
        ],
    ).by_sha256()
    assert (out[sha(1)].exclusion, out[sha(1)].split) == ("client misclassification", None)
    assert out[sha(2)].image_type == "Dealer"
    assert out[sha(2)].color == "Blue"
    assert out[sha(2)].origin == "fix:40 by alice; relabel Stock->Dealer"
    assert out[sha(3)].exclusion is None


def test_a_relabel_to_placeholder_clears_the_color() -> None:
    decision = Decision(sha(2), "relabel", image_type="Placeholder", origin="fix:41 by bob")
    out = apply_decisions(MANIFEST, [decision]).by_sha256()[sha(2)]
    assert (out.image_type, out.color) == ("Placeholder", None)
    assert out.origin == "fix:41 by bob; relabel Stock/Blue->Placeholder"


def test_the_later_decision_wins() -> None:
    decisions = [Decision(sha(1), "drop", reason="blurry"), Decision(sha(1), "keep")]
    assert apply_decisions(MANIFEST, decisions).by_sha256()[sha(1)].exclusion is None


def test_bad_decisions_are_refused() -> None:
    with pytest.raises(InvalidInput, match="reason"):
        Decision(sha(1), "drop")
    with pytest.raises(InvalidInput, match="fix"):
        Decision(sha(1), "relabel", image_type="Dealer")
    with pytest.raises(InvalidInput):
        Decision(sha(1), "delete")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="not in the manifest"):
        apply_decisions(MANIFEST, [Decision(sha(99), "keep")])
