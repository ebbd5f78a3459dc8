"""Class counts per split and advertiser, and their warnings."""

from __future__ import annotations

from tagging.curation.balance import NO_ADVERTISER, balance, exclusions_by_reason
from tagging.curation.manifest import Manifest
from tests.tagging.curation.factory import row


def manifest() -> Manifest:
    rows = [row(f"d{i}", "Dealer", split="train", advertiser="acme") for i in range(18)]
    rows += [row(f"s{i}", "Stock", split="train", advertiser="zoom") for i in range(10)]
    rows += [row("p0", "Placeholder", split="train")]  # 1 of 29: under 10 %
    rows += [row(f"t{i}", "Dealer", split="test", advertiser="acme") for i in range(4)]
    rows += [row(f"x{i}", "Stock", exclusion=f"too small: {i}x{i} < 9x9") for i in range(3)]
    rows += [row("c", "Stock", exclusion="conflicting near-duplicates: cluster 2 (Dealer, Stock)")]
    return Manifest(rows)


def test_counts_per_split_and_advertiser() -> None:
    report = balance(manifest())
    assert report.by_split["train"] == {"Dealer": 18, "Stock": 10, "Placeholder": 1}
    assert report.by_split["test"] == {"Dealer": 4, "Stock": 0, "Placeholder": 0}
    assert list(report.by_advertiser) == [NO_ADVERTISER, "acme", "zoom"]
    assert report.by_advertiser["acme"] == {"Dealer": 22, "Stock": 0, "Placeholder": 0}


def test_a_class_under_the_share_or_missing_is_warned_about() -> None:
    warnings = balance(manifest(), min_share=0.1).warnings
    assert "train: Placeholder is 3.4% of 29 images (under 10%)" in warnings
    assert "test: no Stock images" in warnings
    assert "test: no Placeholder images" in warnings
    assert not any("train: Stock" in w or "train: Dealer" in w for w in warnings)
    assert not any("Placeholder is" in w for w in balance(manifest(), min_share=0.03).warnings)


def test_exclusions_are_counted_by_kind() -> None:
    assert exclusions_by_reason(manifest()) == {"conflicting near-duplicates": 1, "too small": 3}
