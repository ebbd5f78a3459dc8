"""Case 6, ``near_duplicates``: near-identical images of different dealers carry different
labels.
"""

from __future__ import annotations

from collections import defaultdict

from db.findings import Candidate
from db.models import ItemStatus, Severity
from db.vocab import CASES, NEAR_DUPLICATES
from tagging.detectors.base import (
    DEFAULT_THRESHOLDS,
    Facts,
    ImageFacts,
    ItemFacts,
    ItemFilter,
    Thresholds,
)
from tagging.detectors.common import HashIndex, evidence_image

_OK = ItemStatus.OK


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
    listed = facts.listed()
    latest_ids = [latest.id for _, latest in listed]
    # One entry per (advertiser, image_key) of the latest scrapes: its first item, if ok. Only
    # pairs with a fixed image count, so the fixed entries are held and every other image of the
    # latest scrapes is streamed past them.
    firsts = facts.source.first_items_of(latest_ids, fixed_keys)
    images = facts.source.images({key for _, key in firsts})
    entries: dict[str, ItemFacts] = {}
    for item in firsts.values():
        if item.status == ItemStatus.OK and item.image_key in images:
            entries[f"{item.advertiser_id}|{item.image_key}"] = item
    if not entries:
        return []
    by_sha: dict[str, list[str]] = defaultdict(list)
    for entry, item in entries.items():
        sha = images[item.image_key or ""].sha256
        if sha:
            by_sha[sha].append(entry)
    index = HashIndex(
        {entry: images[item.image_key or ""].phash for entry, item in entries.items()},
        t.max_phash_distance,
    )
    # (fixed entry, other entry) → the hash distance (None: found by identical bytes only).
    found_pairs: dict[tuple[str, str], int | None] = {}
    other_images: dict[str, ImageFacts] = {}
    for advertiser_id, latest in listed:
        for _, _, image in facts.source.item_images(latest.id, ItemFilter(statuses=(_OK,))):
            other = f"{advertiser_id}|{image.image_key}"
            matched: list[tuple[str, int | None]] = [
                (entry, None) for entry in by_sha.get(image.sha256 or "", [])
            ]
            matched += index.near(image.phash)
            for entry, distance in matched:
                if entry == other:
                    continue
                other_images[other] = image
                if found_pairs.get((entry, other)) is None:
                    found_pairs[(entry, other)] = distance
    # The images streamed are any item's: keep those whose first item of the key is ok.
    wanted: dict[int, set[str]] = defaultdict(set)
    for _, other in found_pairs:
        if other not in entries:
            owner, _, key = other.partition("|")
            wanted[int(owner)].add(key)
    scrape_of = {advertiser_id: latest.id for advertiser_id, latest in listed}
    for advertiser_id, keys in wanted.items():
        for key, item in facts.source.first_items(scrape_of[advertiser_id], keys).items():
            if item.status == ItemStatus.OK:
                entries[f"{advertiser_id}|{key}"] = item
                images[key] = other_images[f"{advertiser_id}|{key}"]

    neighbours: dict[str, dict[str, int]] = defaultdict(dict)
    for (a, b), hash_distance in sorted(found_pairs.items()):
        if b not in entries:
            continue
        item_a, item_b = entries[a], entries[b]
        if item_a.advertiser_id == item_b.advertiser_id or item_a.image_key == item_b.image_key:
            continue  # the same dealer, or the shared-CDN case (one image_key)
        if b in neighbours[a]:
            continue
        sha_a = images[item_a.image_key or ""].sha256
        same_bytes = sha_a is not None and sha_a == images[item_b.image_key or ""].sha256
        if not same_bytes and (
            hash_distance is None
            or not facts.look_alike(item_a.image_key or "", item_b.image_key or "", t)
        ):
            continue
        distance = 0 if same_bytes else (hash_distance or 0)
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
