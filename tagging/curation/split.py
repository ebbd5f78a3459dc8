"""The train/test split: stratified by class, grouped so nothing leaks, with named test sets.

Rows that must be on the same side form a **group**: the connected components (union-find) of
"same near-duplicate cluster" and "same vehicle page" (one car's photos look alike enough to leak).
A group is **pinned** to test when it holds a row of a named per-advertiser test set or a row
already in test (a parent version's test image stays in test, so versions stay comparable), to
train when it holds a row already in train; a group pinned both ways (a new image joined a parent's
train and test rows) goes to test, the side that must stay clean.

The free groups are then placed one by one, largest first (ties in an order drawn from the seed),
on the side that brings the test set's per-class counts closer to ``test_fraction`` of each class.
Last, a class missing from one side gets the smallest free group that can move there without
emptying the other side, so every class is in both splits whenever its groups allow it.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from db.vocab import IMAGE_TYPES
from tagging.curation.duplicates import MAX_DISTANCE, phash_pairs
from tagging.curation.groups import components, link_equal
from tagging.curation.manifest import TEST, TRAIN, Manifest, ManifestRow
from tagging.errors import InvalidInput
from tagging.ingest.images import hash_distance


@dataclass(frozen=True)
class NamedTestSet:
    """An ad-hoc test set of one advertiser's images, kept in test across versions.

    Attributes:
        name: What the team calls it (``acme-placeholders``).
        advertiser: Every training row of this advertiser goes to test.
    """

    name: str
    advertiser: str


@dataclass(frozen=True)
class Leak:
    """A pair of rows on opposite sides that should be on one side.

    Attributes:
        train: The row in train.
        test: The row in test.
        why: ``same page``, ``same cluster`` or ``pHash distance N``.
    """

    train: str
    test: str
    why: str


def split_groups(rows: Sequence[ManifestRow]) -> list[int]:
    """A group number per row: rows linked by cluster or vehicle page share it."""
    pairs = link_equal(row.cluster for row in rows)
    pairs += link_equal(row.page_url for row in rows)
    return components(len(rows), pairs)


def assign_splits(
    manifest: Manifest,
    *,
    seed: int,
    test_fraction: float = 0.2,
    named_test_sets: Iterable[NamedTestSet] = (),
    keep_existing: bool = True,
) -> Manifest:
    """Assign every training row to train or test (excluded rows get ``None``).

    Args:
        manifest: The version being built, its near-duplicate clusters numbered
            (:func:`tagging.curation.duplicates.cluster_duplicates`).
        seed: Orders the free groups of equal size; the same seed gives the same split.
        test_fraction: Target share of each class in test.
        named_test_sets: Advertisers whose rows all go to test.
        keep_existing: Rows that already have a split (the parent's) keep it; ``False`` splits
            everything afresh.

    Returns:
        The manifest with every training row's split set.
    """
    if not 0.0 < test_fraction < 1.0:
        raise InvalidInput("test_fraction must be between 0 and 1")
    rows = manifest.included()
    group_of = split_groups(rows)
    n_groups = max(group_of, default=-1) + 1
    members: list[list[int]] = [[] for _ in range(n_groups)]
    for index, group in enumerate(group_of):
        members[group].append(index)
    classes = {name: k for k, name in enumerate(IMAGE_TYPES)}
    counts = [[0] * len(IMAGE_TYPES) for _ in range(n_groups)]
    for index, group in enumerate(group_of):
        counts[group][classes[rows[index].image_type]] += 1

    named = {test_set.advertiser for test_set in named_test_sets}
    side: list[str | None] = [None] * n_groups
    for group, indices in enumerate(members):
        existing = {rows[i].split for i in indices} if keep_existing else set()
        if TEST in existing or any(rows[i].advertiser in named for i in indices):
            side[group] = TEST
        elif TRAIN in existing:
            side[group] = TRAIN

    totals = [sum(c[k] for c in counts) for k in range(len(IMAGE_TYPES))]
    target = [test_fraction * total for total in totals]
    in_test = [
        sum(c[k] for g, c in enumerate(counts) if side[g] == TEST) for k in range(len(IMAGE_TYPES))
    ]
    free = [group for group in range(n_groups) if side[group] is None]
    random.Random(seed).shuffle(free)
    free.sort(key=lambda group: -len(members[group]))  # stable: the shuffle breaks ties
    for group in free:
        with_group = [t + c for t, c in zip(in_test, counts[group], strict=True)]
        if _cost(with_group, target) < _cost(in_test, target):
            side[group], in_test = TEST, with_group
        else:
            side[group] = TRAIN
    _cover_every_class(free, side, counts, totals, in_test)

    split_of = {rows[i].sha256: side[group] for i, group in enumerate(group_of)}
    return manifest.map(lambda row: row.replace(split=split_of.get(row.sha256)))


def _cost(in_test: Sequence[int], target: Sequence[float]) -> float:
    return sum((have - want) ** 2 for have, want in zip(in_test, target, strict=True))


def _cover_every_class(
    free: Sequence[int],
    side: list[str | None],
    counts: Sequence[Sequence[int]],
    totals: Sequence[int],
    in_test: list[int],
) -> None:
    """Move the smallest free group that can fill a class missing from one side (in place)."""
    for k in range(len(totals)):
        for missing, other in ((TEST, TRAIN), (TRAIN, TEST)):
            have = in_test[k] if missing == TEST else totals[k] - in_test[k]
            if have > 0:
                continue
            # Free groups with the class on the other side whose move leaves the other side some.
            movable = [
                g
                for g in free
                if side[g] == other
                and counts[g][k] > 0
                and not _empties_a_class(g, side, counts, totals, in_test, missing)
            ]
            if not movable:
                continue
            group = min(movable, key=lambda g: sum(counts[g]))
            side[group] = missing
            sign = 1 if missing == TEST else -1
            for j, count in enumerate(counts[group]):
                in_test[j] += sign * count


def _empties_a_class(
    group: int,
    side: Sequence[str | None],
    counts: Sequence[Sequence[int]],
    totals: Sequence[int],
    in_test: Sequence[int],
    to: str,
) -> bool:
    """Whether moving ``group`` to side ``to`` would leave some class it holds absent from the
    side it leaves (and present there before)."""
    for j, count in enumerate(counts[group]):
        left = totals[j] - in_test[j] if to == TEST else in_test[j]
        if count and left - count == 0:
            return True
    return False


def find_leaks(manifest: Manifest, *, max_distance: int = MAX_DISTANCE) -> list[Leak]:
    """Every pair of training rows on opposite sides that share a vehicle page or a cluster, or
    whose pHashes are within ``max_distance`` bits: empty for a leak-free split.

    This checks the split directly from the pHashes rather than trusting the clusters, so the
    export can prove what it writes.
    """
    rows = [row for row in manifest.included() if row.split is not None]
    leaks: list[Leak] = []

    def add(a: ManifestRow, b: ManifestRow, why: str) -> None:
        if a.split != b.split:
            train, test = (a, b) if a.split == TRAIN else (b, a)
            leaks.append(Leak(train=train.sha256, test=test.sha256, why=why))

    for key, why in ((lambda r: r.page_url, "same page"), (lambda r: r.cluster, "same cluster")):
        for a, b in link_equal(key(row) for row in rows):
            add(rows[a], rows[b], why)
    hashed = [row for row in rows if row.phash is not None]
    for a, b in phash_pairs([row.phash or "" for row in hashed], max_distance):
        distance = hash_distance(hashed[a].phash or "", hashed[b].phash or "")
        add(hashed[a], hashed[b], f"pHash distance {distance}")
    return leaks
