"""Near-duplicate clusters on pictures made in the test, and their conflicts."""

from __future__ import annotations

import random

import numpy as np
import pytest

from tagging.curation import duplicates
from tagging.curation.duplicates import (
    cluster_duplicates,
    conflicting_clusters,
    drop_conflicting,
    duplicate_clusters,
    embedding_pairs,
    phash_pairs,
)
from tagging.curation.manifest import Manifest
from tagging.errors import InvalidInput
from tagging.ingest.images import hash_distance
from tests.tagging.curation.factory import phash, picture, row, sha, slightly_changed


def pictures_manifest(labels: tuple[str, str] = ("Dealer", "Stock")) -> Manifest:
    """``a`` and its slightly changed copy ``a2`` (labelled ``labels``), plus unrelated ``b…e``."""
    original = picture(1)
    rows = [
        row("a", labels[0], phash=phash(original)),
        row("a2", labels[1], phash=phash(slightly_changed(original))),
    ]
    rows += [row(key, "Dealer", phash=phash(picture(seed))) for seed, key in enumerate("bcde", 2)]
    return Manifest(rows)


def test_the_changed_copy_is_a_near_duplicate_and_unrelated_pictures_are_not() -> None:
    rows = pictures_manifest().by_sha256()
    assert hash_distance(rows[sha("a")].phash or "", rows[sha("a2")].phash or "") <= 6
    out = cluster_duplicates(pictures_manifest()).by_sha256()
    assert out[sha("a")].cluster == out[sha("a2")].cluster == 1
    assert all(out[sha(key)].cluster is None for key in "bcde")


def test_conflicting_clusters_come_first_and_are_dropped() -> None:
    same = Manifest(
        [
            *pictures_manifest().rows,
            row("f", "Stock", phash=phash(picture(9))),
            row("f2", "Stock", phash=phash(slightly_changed(picture(9)))),
        ]
    )
    clustered = cluster_duplicates(same)
    clusters = duplicate_clusters(clustered)
    assert [c.conflicting for c in clusters] == [True, False]
    conflicts = conflicting_clusters(clustered)
    assert len(conflicts) == 1
    assert {r.sha256 for r in conflicts[0].rows} == {sha("a"), sha("a2")}
    assert conflicts[0].labels == ("Dealer", "Stock")
    dropped = drop_conflicting(clustered).by_sha256()
    reason = f"conflicting near-duplicates: cluster {conflicts[0].cluster} (Dealer, Stock)"
    assert dropped[sha("a")].exclusion == dropped[sha("a2")].exclusion == reason
    assert dropped[sha("f")].exclusion is None


def test_agreeing_duplicates_are_no_conflict() -> None:
    clustered = cluster_duplicates(pictures_manifest(("Stock", "Stock")))
    assert conflicting_clusters(clustered) == []
    assert drop_conflicting(clustered) == clustered


def test_excluded_rows_are_not_clustered() -> None:
    manifest = pictures_manifest().map(
        lambda r: r.excluded("dropped: blurry") if r.sha256 == sha("a2") else r
    )
    assert all(r.cluster is None for r in cluster_duplicates(manifest))


def test_faiss_and_numpy_find_the_same_pairs() -> None:
    if duplicates.faiss is None:
        pytest.skip("faiss-cpu is not installed")
    rng = random.Random(5)
    hashes = [f"{rng.getrandbits(64):016x}" for _ in range(300)]
    for i in range(0, 60, 3):  # plant near-duplicates at distances 0 … 9
        bits = rng.sample(range(64), i % 10)
        hashes.append(f"{int(hashes[i], 16) ^ sum(1 << b for b in bits):016x}")
    with_faiss = phash_pairs(hashes, 6)
    with_numpy = phash_pairs(hashes, 6, use_faiss=False)
    assert with_faiss == with_numpy
    brute = [
        (i, j)
        for i in range(len(hashes))
        for j in range(i + 1, len(hashes))
        if hash_distance(hashes[i], hashes[j]) <= 6
    ]
    assert with_numpy == brute
    assert len(brute) >= 10


def test_embeddings_link_what_phash_misses() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(4, 8))
    vectors = {
        sha("m"): base[0],
        sha("m2"): base[0] + 0.01 * rng.normal(size=8),  # the same picture, mirrored, say
        sha("o1"): base[1],
        sha("o2"): base[2],
    }
    manifest = Manifest(
        row(k, phash=phash(picture(i))) for i, k in enumerate(["m", "m2", "o1", "o2"])
    )
    assert all(r.cluster is None for r in cluster_duplicates(manifest))
    for use_faiss in (None, False):
        out = cluster_duplicates(
            manifest, embeddings=vectors, embedding_threshold=0.98, use_faiss=use_faiss
        ).by_sha256()
        assert out[sha("m")].cluster == out[sha("m2")].cluster == 1
        assert out[sha("o1")].cluster is None and out[sha("o2")].cluster is None
    matrix = np.stack(list(vectors.values()))
    assert embedding_pairs(matrix, 0.98) == embedding_pairs(matrix, 0.98, use_faiss=False)


def test_an_embedding_threshold_needs_every_embedding() -> None:
    with pytest.raises(InvalidInput):
        cluster_duplicates(pictures_manifest(), embedding_threshold=0.9)
    with pytest.raises(InvalidInput, match="no embedding"):
        cluster_duplicates(pictures_manifest(), embeddings={}, embedding_threshold=0.9)


def test_cluster_numbers_depend_only_on_the_content() -> None:
    rows = list(pictures_manifest().rows)
    assert cluster_duplicates(Manifest(rows)) == cluster_duplicates(Manifest(rows[::-1]))
