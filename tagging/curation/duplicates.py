"""Near-duplicate clusters: the same picture twice must not teach two labels, nor straddle a split.

Two images are near-duplicates when their 64-bit perceptual hashes differ in at most
``max_distance`` bits (6 by default: a re-encode, a resize or a watermark moves a pHash by a few
bits, two different photos of one car by far more), or, optionally, when their embeddings' cosine
similarity reaches a threshold (the model's view of "the same picture", which also catches crops and
mirror images that pHash misses). Pairs are found with faiss where it is installed
(``IndexBinaryFlat`` range search over the hashes, ``IndexFlatIP`` k-nearest neighbours over the
normalized embeddings), else with numpy in blocks; both are exact, so they find the same pairs.
Clusters are the connected components of the pairs (union-find): near-duplication chains.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from tagging.curation.groups import components
from tagging.curation.manifest import Embeddings, Manifest, ManifestRow
from tagging.errors import InvalidInput

faiss: ModuleType | None
try:
    import faiss
except ImportError:  # pragma: no cover - faiss-cpu is in requirements.txt; the fallback is tested
    faiss = None

MAX_DISTANCE = 6
"""Default largest pHash Hamming distance (bits of 64) between near-duplicates."""

CONFLICT = "conflicting near-duplicates"
"""The kind of exclusion :func:`drop_conflicting` writes."""

_BLOCK = 256  # rows per block of the numpy fallback: 256 × 50,000 distances are ~100 MB


@dataclass(frozen=True)
class DuplicateCluster:
    """One near-duplicate cluster of a manifest.

    Attributes:
        cluster: The cluster number (:attr:`ManifestRow.cluster`).
        rows: Its rows, in canonical order.
    """

    cluster: int
    rows: tuple[ManifestRow, ...]

    @property
    def labels(self) -> tuple[str, ...]:
        """The distinct Image Types of its rows, sorted."""
        return tuple(sorted({row.image_type for row in self.rows}))

    @property
    def conflicting(self) -> bool:
        """Whether its rows disagree on the Image Type."""
        return len(self.labels) > 1


def phash_pairs(
    phashes: Sequence[str], max_distance: int = MAX_DISTANCE, *, use_faiss: bool | None = None
) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)``, ``i < j``, whose pHashes differ in at most ``max_distance`` bits.

    Args:
        phashes: 16-hex-digit perceptual hashes.
        max_distance: Largest Hamming distance that counts as a near-duplicate.
        use_faiss: ``None`` uses faiss when installed; ``False`` forces the numpy path.

    Returns:
        The pairs, sorted.
    """
    if len(phashes) < 2:
        return []
    codes = np.frombuffer(b"".join(bytes.fromhex(h) for h in phashes), dtype=np.uint8)
    codes = codes.reshape(len(phashes), 8)
    if faiss is not None and use_faiss is not False:
        index = faiss.IndexBinaryFlat(64)
        index.add(codes)
        # faiss keeps distances strictly below the radius.
        limits, _, found = index.range_search(codes, max_distance + 1)
        pairs = {
            (i, int(j))
            for i in range(len(phashes))
            for j in found[limits[i] : limits[i + 1]]
            if i < j
        }
        return sorted(pairs)
    words = codes.view(np.uint64).ravel()  # popcount ignores byte order
    out: list[tuple[int, int]] = []
    for start in range(0, len(words), _BLOCK):
        block = words[start : start + _BLOCK]
        distance = np.bitwise_count(block[:, None] ^ words[None, :])
        for i, j in zip(*np.nonzero(distance <= max_distance), strict=True):
            if start + i < j:
                out.append((int(start + i), int(j)))
    return sorted(out)


def embedding_pairs(
    matrix: np.ndarray, threshold: float, *, k: int = 10, use_faiss: bool | None = None
) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)``, ``i < j``, whose cosine similarity is at least ``threshold`` among
    each row's ``k`` nearest neighbours.

    Args:
        matrix: ``(n, d)`` feature vectors (normalized here).
        threshold: Smallest cosine similarity that counts as a near-duplicate, e.g. ``0.97``.
        k: Neighbours looked at per row; a cluster larger than ``k`` still joins up through chains.
        use_faiss: ``None`` uses faiss when installed; ``False`` forces the numpy path.
    """
    n = len(matrix)
    if n < 2:
        return []
    vectors = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = np.ascontiguousarray(vectors / np.maximum(norms, 1e-12))
    k = min(k + 1, n)  # + 1: every row is its own nearest neighbour
    if faiss is not None and use_faiss is not False:
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        similarity, neighbours = index.search(vectors, k)
    else:
        similarity = np.empty((n, k), dtype=np.float32)
        neighbours = np.empty((n, k), dtype=np.int64)
        for start in range(0, n, _BLOCK):
            block = vectors[start : start + _BLOCK] @ vectors.T
            top = np.argpartition(-block, k - 1, axis=1)[:, :k]
            neighbours[start : start + len(block)] = top
            similarity[start : start + len(block)] = np.take_along_axis(block, top, axis=1)
    pairs = {
        (min(i, int(j)), max(i, int(j)))
        for i in range(n)
        for j, s in zip(neighbours[i], similarity[i], strict=True)
        if j >= 0 and i != j and s >= threshold
    }
    return sorted(pairs)


def cluster_duplicates(
    manifest: Manifest,
    *,
    max_distance: int = MAX_DISTANCE,
    embeddings: Embeddings | None = None,
    embedding_threshold: float | None = None,
    k: int = 10,
    use_faiss: bool | None = None,
) -> Manifest:
    """Number the near-duplicate clusters of the training rows.

    Only training rows are clustered (an excluded row trains nothing and cannot leak). A row
    without a near-duplicate gets ``cluster = None``; clusters are numbered ``1, 2, …`` in order
    of their first row in canonical order, so the numbers depend only on the content.

    Args:
        manifest: The version being built; rows without a pHash are compared by embedding only.
        max_distance: Largest pHash Hamming distance of a near-duplicate pair.
        embeddings: Feature vectors by ``sha256``; required with ``embedding_threshold``.
        embedding_threshold: Also link rows with at least this cosine similarity (``None``: pHash
            only).
        k: Neighbours looked at per row for the embeddings.
        use_faiss: ``None`` uses faiss when installed; ``False`` forces numpy.

    Raises:
        InvalidInput: ``embedding_threshold`` without embeddings, or a training row without one.
    """
    rows = manifest.included()
    pairs: list[tuple[int, int]] = []
    hashed = [i for i, row in enumerate(rows) if row.phash is not None]
    for a, b in phash_pairs(
        [rows[i].phash or "" for i in hashed], max_distance, use_faiss=use_faiss
    ):
        pairs.append((hashed[a], hashed[b]))
    if embedding_threshold is not None:
        if embeddings is None:
            raise InvalidInput("an embedding threshold needs the embeddings")
        missing = [row.sha256[:12] for row in rows if row.sha256 not in embeddings]
        if missing:
            raise InvalidInput(f"{len(missing)} training rows have no embedding: {missing[:3]}")
        matrix = np.stack([np.asarray(embeddings[row.sha256]) for row in rows]) if rows else None
        if matrix is not None:
            pairs += embedding_pairs(matrix, embedding_threshold, k=k, use_faiss=use_faiss)
    labels = components(len(rows), pairs)
    sizes = np.bincount(labels, minlength=1) if labels else np.zeros(0, dtype=np.int64)
    numbers: dict[int, int] = {}
    assigned = {}
    for row, label in zip(rows, labels, strict=True):
        if sizes[label] > 1:
            assigned[row.sha256] = numbers.setdefault(label, len(numbers) + 1)
    return manifest.map(lambda row: row.replace(cluster=assigned.get(row.sha256)))


def duplicate_clusters(manifest: Manifest) -> list[DuplicateCluster]:
    """Every cluster of the training rows: conflicting ones first, then larger ones first."""
    members: dict[int, list[ManifestRow]] = {}
    for row in manifest.included():
        if row.cluster is not None:
            members.setdefault(row.cluster, []).append(row)
    clusters = [DuplicateCluster(number, tuple(rows)) for number, rows in members.items()]
    return sorted(clusters, key=lambda c: (not c.conflicting, -len(c.rows), c.cluster))


def conflicting_clusters(manifest: Manifest) -> list[DuplicateCluster]:
    """The clusters whose training rows disagree on the Image Type, larger ones first.

    These come first in the prune review: the same picture labelled two ways teaches the model
    nothing but noise (the notes' vehicles 3 and 4).
    """
    return [cluster for cluster in duplicate_clusters(manifest) if cluster.conflicting]


def drop_conflicting(manifest: Manifest) -> Manifest:
    """Exclude every row of every conflicting cluster (the notes' rule: leave conflicting images
    out of the training set), as ``conflicting near-duplicates: cluster N (Dealer, Stock)``.

    A reviewer who resolves a conflict relabels one side or keeps the rows with a ``keep``
    decision (:mod:`tagging.curation.prune`) after this step.
    """
    reasons = {
        row.sha256: f"{CONFLICT}: cluster {cluster.cluster} ({', '.join(cluster.labels)})"
        for cluster in conflicting_clusters(manifest)
        for row in cluster.rows
    }
    return manifest.map(
        lambda row: row.excluded(reasons[row.sha256]) if row.sha256 in reasons else row
    )
