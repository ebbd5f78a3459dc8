"""Likely label errors, ranked by confident learning (cleanlab) on out-of-fold probabilities.

The probabilities come from a simple, seeded classifier (standardized features → logistic
regression) fitted on the images' feature vectors, typically the Image Type model's
penultimate-layer embeddings (:func:`tagging.ml.embed.embed`), with ``cross_val_predict``: each
image is scored by a classifier that never saw it, so a mislabelled image cannot vouch for itself.
``cleanlab.filter.find_label_issues`` then flags the images whose given label the others contradict;
the images whose out-of-fold prediction is another class are flagged too (confident learning
estimates how many errors each class holds, and with a handful of fixes per class it can estimate
none: a flipped label with the lowest self-confidence of all was seen missed). The flagged images
are ranked by self-confidence (the probability of the given label, lowest first).

cleanlab and scikit-learn are imported when a ranking is asked for: they cost seconds, which the
page's first run would otherwise pay.

The ranking is advisory: it orders the prune review, and the reviewer's decisions
(:mod:`tagging.curation.prune`) are what the recipe records.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np

from db.vocab import IMAGE_TYPES
from tagging.curation.manifest import Embeddings, Manifest
from tagging.errors import InvalidInput


@dataclass(frozen=True)
class LabelIssue:
    """One image whose label is likely wrong.

    Attributes:
        sha256: The image.
        rank: 1 for the likeliest error.
        given: Its Image Type in the manifest.
        suggested: The class the out-of-fold classifier finds most probable.
        self_confidence: The out-of-fold probability of ``given`` (low: likely wrong).
        advertiser: The row's advertiser, to see whose fixes go against the team's criteria.
    """

    sha256: str
    rank: int
    given: str
    suggested: str
    self_confidence: float
    advertiser: str | None


def out_of_fold_probabilities(
    features: np.ndarray, labels: np.ndarray, *, seed: int, folds: int = 5
) -> np.ndarray:
    """Predicted class probabilities of each row by a classifier fitted without that row.

    Args:
        features: ``(n, d)`` feature matrix.
        labels: ``(n,)`` class indices ``0 … K-1``, every class present.
        seed: Seeds the fold assignment (the solver itself is deterministic).
        folds: Cross-validation folds, lowered to the smallest class's count (at least 2).

    Returns:
        ``(n, K)`` probabilities.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    smallest = min(Counter(labels.tolist()).values())
    n_splits = max(2, min(folds, smallest))
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    with warnings.catch_warnings():
        # A class smaller than the fold count is warned about, not an error: it still gets
        # probabilities (zero for a fold that lacks it), which only lowers its rows' confidence.
        warnings.simplefilter("ignore", UserWarning)
        return np.asarray(
            cross_val_predict(classifier, features, labels, cv=cv, method="predict_proba")
        )


def rank_label_issues(
    manifest: Manifest, embeddings: Embeddings, *, seed: int, folds: int = 5
) -> list[LabelIssue]:
    """The training rows whose Image Type is likely wrong, likeliest first.

    Args:
        manifest: The version being built; only training rows are scored.
        embeddings: A feature vector per training row's ``sha256``.
        seed: Seeds the cross-validation folds, so the ranking is reproducible.
        folds: Cross-validation folds.

    Returns:
        The flagged rows ranked by self-confidence; empty with fewer than two classes.

    Raises:
        InvalidInput: A training row has no feature vector.
    """
    rows = manifest.included()
    missing = [row.sha256[:12] for row in rows if row.sha256 not in embeddings]
    if missing:
        raise InvalidInput(f"{len(missing)} training rows have no embedding: {missing[:3]}")
    # Only the classes present take part: cleanlab needs every class of pred_probs to occur.
    classes = [name for name in IMAGE_TYPES if any(row.image_type == name for row in rows)]
    if len(classes) < 2:
        return []
    labels = np.array([classes.index(row.image_type) for row in rows], dtype=np.int64)
    features = np.stack([np.asarray(embeddings[row.sha256], dtype=np.float64) for row in rows])
    probabilities = out_of_fold_probabilities(features, labels, seed=seed, folds=folds)
    from cleanlab.filter import find_label_issues

    flagged = np.asarray(find_label_issues(labels, probabilities, n_jobs=1), dtype=bool)
    flagged |= probabilities.argmax(axis=1) != labels
    indices = np.flatnonzero(flagged)
    confidence = probabilities[indices, labels[indices]]
    ranked = indices[np.argsort(confidence, kind="stable")]
    return [
        LabelIssue(
            sha256=rows[i].sha256,
            rank=rank,
            given=rows[i].image_type,
            suggested=classes[int(np.argmax(probabilities[i]))],
            self_confidence=float(probabilities[i, labels[i]]),
            advertiser=rows[i].advertiser,
        )
        for rank, i in enumerate(ranked.tolist(), start=1)
    ]


def issues_by_advertiser(manifest: Manifest, issues: list[LabelIssue]) -> dict[str, float]:
    """The share of each advertiser's training rows flagged as likely label errors, highest first.

    An advertiser far above the others is one whose fixes go against the team's criteria.
    Rows without an advertiser (generated images) are left out.
    """
    totals = Counter(row.advertiser for row in manifest.included() if row.advertiser is not None)
    flagged = Counter(issue.advertiser for issue in issues if issue.advertiser is not None)
    shares = {name: flagged[name] / total for name, total in totals.items()}
    return dict(sorted(shares.items(), key=lambda item: (-item[1], item[0])))
