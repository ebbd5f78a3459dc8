"""The manifest: canonical order, the two CSV forms and the content hash."""

from __future__ import annotations

import csv
import io

import pytest

from tagging.curation.manifest import (
    EXPORT_COLUMNS,
    Manifest,
    origin_fix,
    origin_generated,
    origin_parent,
    relabel,
)
from tagging.errors import InvalidInput
from tests.tagging.curation.factory import row, sha


def sample() -> list:
    return [
        row(1, "Dealer", split="train", advertiser="acme", page_url="https://a.test/car/1"),
        row(2, "Stock", split="test", cluster=3, phash="00ff00ff00ff00ff", crop=(0, 10, 640, 470)),
        row(3, "Placeholder", exclusion="too small: 90x60 < 200x150", width=90, height=60),
        # A page URL with a comma and a quote must survive the CSV.
        row(4, "Dealer", page_url='https://a.test/car?id=4,"x"', advertiser="O'Neil, Inc"),
    ]


def test_rows_are_kept_in_canonical_order_so_equal_content_gives_equal_bytes() -> None:
    rows = sample()
    forward, backward = Manifest(rows), Manifest(reversed(rows))
    assert [r.sha256 for r in forward] == sorted(r.sha256 for r in rows)
    assert forward == backward
    assert forward.to_csv() == backward.to_csv()
    assert forward.manifest_sha256() == backward.manifest_sha256()


def test_the_full_csv_round_trips_every_field() -> None:
    manifest = Manifest(sample())
    again = Manifest.from_csv(manifest.to_csv())
    assert again == manifest
    assert again.by_sha256()[sha(2)].crop == (0, 10, 640, 470)
    assert again.by_sha256()[sha(1)].cluster is None


def test_any_change_changes_the_manifest_sha256() -> None:
    manifest = Manifest(sample())
    changed = manifest.map(lambda r: r.replace(split="test") if r.sha256 == sha(1) else r)
    assert changed.manifest_sha256() != manifest.manifest_sha256()


def test_the_export_has_the_export_columns_and_only_the_training_rows() -> None:
    text = Manifest(sample()).export_csv().decode()
    records = list(csv.DictReader(io.StringIO(text)))
    assert tuple(records[0]) == EXPORT_COLUMNS
    assert {r["sha256"] for r in records} == {sha(1), sha(2), sha(4)}
    assert "\r" not in text


def test_a_sha256_appears_once() -> None:
    with pytest.raises(InvalidInput, match="twice"):
        Manifest([row(1), row(1, "Stock")])


@pytest.mark.parametrize(
    "fields",
    [
        {"image_type": "Car"},
        {"color": "Teal"},
        {"split": "validation"},
        {"sha256": "ABC"},
        {"phash": "xyz"},
        {"exclusion": ""},
        {"crop": (0, 0, 641, 480)},
        {"crop": (10, 10, 10, 20)},
    ],
)
def test_bad_values_are_refused(fields: dict) -> None:
    with pytest.raises(InvalidInput):
        row(1, **fields)


def test_a_bad_csv_line_is_named() -> None:
    data = Manifest(sample()).to_csv().replace(b",Stock,", b",Truck,")
    with pytest.raises(InvalidInput, match=r"manifest CSV line [2-5]: .*Truck"):
        Manifest.from_csv(data)


def test_origins_and_relabel() -> None:
    assert origin_parent("3") == "parent:3"
    assert origin_fix(17, "alice") == "fix:17 by alice"
    assert origin_generated(7) == "generated:seed=7"
    stock = row(1, "Stock", color="Red")
    assert relabel(stock, image_type="Stock", color="Red", fix="fix:1 by bob") is stock
    moved = relabel(stock, image_type="Dealer", color="Red", fix="fix:2 by bob")
    assert moved.origin == "fix:2 by bob; relabel Stock->Dealer"
    recolored = relabel(stock, image_type="Stock", color="Blue", fix="fix:3 by bob")
    assert recolored.origin == "fix:3 by bob; relabel Stock/Red->Stock/Blue"


def test_excluding_keeps_the_first_reason_and_clears_the_split() -> None:
    first = row(1, split="train").excluded("too small: 1x1 < 2x2")
    assert first.split is None
    assert first.excluded("conflicting near-duplicates: cluster 1").exclusion == first.exclusion
