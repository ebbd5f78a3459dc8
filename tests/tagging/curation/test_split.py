"""The grouped, stratified split: no near-duplicate and no vehicle page across train and test."""

from __future__ import annotations

import random
from collections import Counter

from sklearn.model_selection import train_test_split

from db.vocab import IMAGE_TYPES
from tagging.curation.duplicates import cluster_duplicates
from tagging.curation.manifest import Manifest, ManifestRow
from tagging.curation.split import NamedTestSet, assign_splits, find_leaks
from tests.tagging.curation.factory import phash, picture, row, sha, slightly_changed


def random_phash(rng: random.Random) -> str:
    return f"{rng.getrandbits(64):016x}"


def inventory() -> Manifest:
    """60 singles, a near-duplicate pair (``dup``/``dup2``), and 6 vehicle pages of 3 photos."""
    rng = random.Random(1)
    rows = [
        row(f"{name}-{i}", name, phash=random_phash(rng)) for name in IMAGE_TYPES for i in range(20)
    ]
    original = picture(1)
    rows += [
        row("dup", "Dealer", phash=phash(original)),
        row("dup2", "Dealer", phash=phash(slightly_changed(original))),
    ]
    for page in range(6):
        for photo, name in enumerate(("Dealer", "Dealer", "Placeholder")):
            rows.append(
                row(
                    f"page{page}-{photo}",
                    name,
                    phash=random_phash(rng),
                    page_url=f"https://dealer.test/vehicle/{page}",
                    advertiser="acme" if page == 0 else "zoom",
                )
            )
    return cluster_duplicates(Manifest(rows))


def naive(manifest: Manifest, seed: int) -> Manifest:
    """A stratified random split that ignores clusters and pages."""
    rows = manifest.included()
    train, _ = train_test_split(
        list(rows), test_size=0.2, stratify=[r.image_type for r in rows], random_state=seed
    )
    in_train = {r.sha256 for r in train}
    return manifest.map(lambda r: r.replace(split="train" if r.sha256 in in_train else "test"))


def side(manifest: Manifest, key: str) -> str | None:
    return manifest.by_sha256()[sha(key)].split


def test_a_near_duplicate_pair_that_straddles_a_naive_split_ends_on_one_side() -> None:
    manifest = inventory()
    seed = next(
        s for s in range(100) if side(naive(manifest, s), "dup") != side(naive(manifest, s), "dup2")
    )
    assert any(leak.why.startswith("pHash distance") for leak in find_leaks(naive(manifest, seed)))
    for split_seed in range(5):
        split = assign_splits(manifest, seed=split_seed)
        assert side(split, "dup") == side(split, "dup2")
        assert find_leaks(split) == []


def test_no_vehicle_page_is_on_both_sides() -> None:
    split = assign_splits(inventory(), seed=3)
    pages: dict[str, set[str | None]] = {}
    for r in split:
        if r.page_url:
            pages.setdefault(r.page_url, set()).add(r.split)
    assert all(len(sides) == 1 for sides in pages.values())
    assert {s for sides in pages.values() for s in sides} == {"train", "test"}


def test_the_split_is_stratified_and_reproducible() -> None:
    manifest = inventory()
    split = assign_splits(manifest, seed=3)
    assert split == assign_splits(manifest, seed=3)
    assert all(r.split in ("train", "test") for r in split)
    test_counts = Counter(r.image_type for r in split if r.split == "test")
    totals = Counter(r.image_type for r in split)
    for name in IMAGE_TYPES:
        assert abs(test_counts[name] - 0.2 * totals[name]) <= 2, (name, test_counts, totals)


def test_every_class_is_in_both_splits_when_its_groups_allow() -> None:
    rng = random.Random(2)
    rows = [row(f"d{i}", "Dealer", phash=random_phash(rng)) for i in range(30)]
    rows += [row(f"s{i}", "Stock", phash=random_phash(rng)) for i in range(30)]
    # Two placeholders: a 20 % target (0.4 images) would put both in train without the repair.
    rows += [row(f"p{i}", "Placeholder", phash=random_phash(rng)) for i in range(2)]
    for seed in range(5):
        split = assign_splits(cluster_duplicates(Manifest(rows)), seed=seed)
        for name in IMAGE_TYPES:
            assert {r.split for r in split if r.image_type == name} == {"train", "test"}, name


def test_a_class_with_a_single_image_stays_in_train() -> None:
    rows = [row(f"d{i}", "Dealer") for i in range(10)] + [row("p", "Placeholder")]
    split = assign_splits(Manifest(rows), seed=0)
    assert side(split, "p") == "train"


def test_a_named_test_set_keeps_its_advertiser_in_test_with_its_groups() -> None:
    manifest = inventory()
    named = (NamedTestSet(name="acme-hard", advertiser="acme"),)
    for seed in range(3):
        split = assign_splits(manifest, seed=seed, named_test_sets=named)
        assert {r.split for r in split if r.advertiser == "acme"} == {"test"}
        assert find_leaks(split) == []


def test_existing_splits_are_kept_and_pull_their_near_duplicates_along() -> None:
    rng = random.Random(3)
    original = picture(7)
    parent: list[ManifestRow] = [
        row(f"old{i}", IMAGE_TYPES[i % 3], split="train", phash=random_phash(rng))
        for i in range(30)
    ]
    parent.append(row("old-test", "Dealer", split="test", phash=phash(original)))
    new = [
        row("copy-of-test", "Dealer", phash=phash(slightly_changed(original))),
        *(row(f"new{i}", IMAGE_TYPES[i % 3], phash=random_phash(rng)) for i in range(30)),
    ]
    manifest = cluster_duplicates(Manifest([*parent, *new]))
    for seed in range(3):
        split = assign_splits(manifest, seed=seed).by_sha256()
        assert all(split[r.sha256].split == r.split for r in parent)
        assert split[sha("copy-of-test")].split == "test"
    # Split afresh, the parent's train images are drawn into test like any other.
    fresh = assign_splits(manifest, seed=0, keep_existing=False).by_sha256()
    assert any(fresh[r.sha256].split == "test" for r in parent if r.split == "train")


def test_a_group_pinned_to_both_sides_goes_to_test() -> None:
    page = "https://dealer.test/vehicle/9"
    rows = [
        row("a", "Dealer", split="train", page_url=page),
        row("b", "Dealer", split="test", page_url=page),
        *(row(f"x{i}", "Dealer") for i in range(8)),
    ]
    split = assign_splits(Manifest(rows), seed=0)
    assert side(split, "a") == side(split, "b") == "test"
    assert find_leaks(split) == []


def test_excluded_rows_get_no_split() -> None:
    rows = [row("gone", exclusion="too small: 1x1 < 2x2"), *(row(i) for i in range(5))]
    assert side(assign_splits(Manifest(rows), seed=0), "gone") is None
