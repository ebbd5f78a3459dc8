"""Case 6, ``near_duplicates``: near-identical images of different dealers carry different
labels.
"""

from __future__ import annotations

from collections import defaultdict

from db.findings import Candidate
from db.models import ItemStatus, Severity
from db.vocab import CASES, NEAR_DUPLICATES
from tests.tagging.detectors.reference.base import DEFAULT_THRESHOLDS, Facts, ItemFacts, Thresholds
from tests.tagging.detectors.reference.common import (
    each_pair,
    evidence_image,
    near_pairs,
    unique_by_key,
)


def detect_near_duplicates(facts: Facts, t: Thresholds = DEFAULT_THRESHOLDS) -> list[Candidate]:
    """Near-identical images of different dealers whose final Image Types differ.

    At least one of the two must carry a manual Image Type fix: the case is that clients differ
    on which type an image is, not that the model wavers. "Near-identical" is the same bytes, or
    perceptual hashes at most ``max_phash_distance`` bits apart confirmed by the thumbnails; each
    fixed image is paired with its closest such look-alikes only.
    """
    fixed_keys = {f.image_key for f in facts.fixes if f.field == "image_type"}
    if not fixed_keys:
        return []
    # One entry per (advertiser, image_key) of the latest scrapes.
    entries: dict[str, ItemFacts] = {}
    for advertiser_id, items in facts.items.items():
        for item in unique_by_key(items):
            if item.status == ItemStatus.OK and item.image_key in facts.images:
                entries[f"{advertiser_id}|{item.image_key}"] = item
    by_sha: dict[str, list[str]] = defaultdict(list)
    for entry, item in entries.items():
        sha = facts.images[item.image_key or ""].sha256
        if sha:
            by_sha[sha].append(entry)
    hashes = {entry: facts.images[item.image_key or ""].phash for entry, item in entries.items()}
    pairs = [(a, b, 0) for same in by_sha.values() for a, b in each_pair(sorted(same))]
    pairs += list(near_pairs(hashes, t.max_phash_distance))

    neighbours: dict[str, dict[str, int]] = defaultdict(dict)
    for a, b, distance in pairs:
        item_a, item_b = entries[a], entries[b]
        if item_a.advertiser_id == item_b.advertiser_id or item_a.image_key == item_b.image_key:
            continue  # the same dealer, or the shared-CDN case (one image_key)
        if item_a.image_key not in fixed_keys and item_b.image_key not in fixed_keys:
            continue
        if b in neighbours[a]:
            continue
        same_bytes = facts.images[item_a.image_key or ""].sha256 is not None and (
            facts.images[item_a.image_key or ""].sha256
            == facts.images[item_b.image_key or ""].sha256
        )
        if not same_bytes and not facts.look_alike(
            item_a.image_key or "", item_b.image_key or "", t
        ):
            continue
        distance = 0 if same_bytes else distance
        neighbours[a][b] = neighbours[b][a] = distance

    found: dict[str, Candidate] = {}
    for entry, near in sorted(neighbours.items()):
        item = entries[entry]
        if item.image_key not in fixed_keys or not near:
            continue
        closest = min(near.values())
        for other, distance in sorted(near.items()):
            other_item = entries[other]
            if distance != closest or other_item.image_type == item.image_type:
                continue
            first, second = sorted([item, other_item], key=lambda i: i.image_key or "")
            subject = f"{first.image_key}|{second.image_key}"
            if subject in found:
                continue
            how = "identical files" if distance == 0 else f"perceptual hashes {distance} bits apart"
            explanation = (
                f"{CASES[NEAR_DUPLICATES]}: these images of {facts.name(first.advertiser_id)} "
                f"and {facts.name(second.advertiser_id)} are nearly the same picture ({how}) but "
                f"one is labelled {first.image_type} and the other {second.image_type}: clients "
                "differ on which type it is. Mark them as conflicting examples, to keep them out "
                "of the training sets, or re-tag the obvious misclassification."
            )
            found[subject] = Candidate(
                detector=NEAR_DUPLICATES,
                subject=subject,
                advertiser_id=item.advertiser_id,
                scrape_id=item.scrape_id,
                severity=Severity.INFO,
                explanation=explanation,
                evidence={
                    "distance": distance,
                    "advertiser_ids": sorted({first.advertiser_id, second.advertiser_id}),
                    "remedy": "mark_conflicting",
                    "images": [evidence_image(i, facts) for i in (first, second)],
                },
                identity=[[i.image_key, i.image_type] for i in (first, second)],
            )
    return list(found.values())


__all__ = ["detect_near_duplicates"]
