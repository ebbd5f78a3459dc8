"""Case 5, ``fix_not_sticking``: a fixed image came back under a new image_key (the CDN changed
its URL or headers) with the ML label the fix had corrected.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

from db.findings import Candidate
from db.models import ItemStatus, Severity
from db.vocab import CASES, FIX_NOT_STICKING
from tagging.detectors.base import (
    DEFAULT_THRESHOLDS,
    Facts,
    ImageFacts,
    ItemFilter,
    Thresholds,
)
from tagging.detectors.common import HashIndex, evidence_image, latest_fixes


def detect_unstuck_fixes(facts: Facts, t: Thresholds = DEFAULT_THRESHOLDS) -> list[Candidate]:
    """Images that are a fixed image's content under a new image_key, with the corrected ML label.

    "The same content": identical bytes (sha256), or, when the fixed image left the sitemap in the
    latest scrape as the new one arrived, a perceptual hash at most ``max_phash_distance`` bits
    away at the same pixel size, confirmed by the thumbnails, and the only such match on both
    sides. Only an advertiser's own fixes are carried to its own images: another dealer's similar
    photo is case 6, not this one.
    """
    latest = latest_fixes(facts.fixes)
    fixed_fields: dict[str, set[str]] = defaultdict(set)
    for key, field_name in latest:
        fixed_fields[key].add(field_name)
    found = []
    for advertiser_id, scrape in facts.listed():
        if not facts.in_scope(advertiser_id):
            continue
        mine = {
            (key, field_name): fix
            for (key, field_name), fix in latest.items()
            if fix.advertiser_id == advertiser_id and fix.new_value is not None
        }
        if not mine:
            continue
        current_keys = facts.source.keys_in(scrape.id, {key for key, _ in mine})
        own = {k: fix for k, fix in mine.items() if k[0] not in current_keys}
        if not own:
            continue
        old_keys = sorted({key for key, _ in own})
        matches = _content_matches(facts, old_keys, advertiser_id, scrape.id, t)
        if not matches:
            continue
        # The new images: the first item of each matched key, if ok, in sitemap order.
        new_items = sorted(
            (
                i
                for i in facts.source.first_items(scrape.id, matches).values()
                if i.status == ItemStatus.OK
            ),
            key=lambda i: (i.position, i.id),
        )
        advertiser = facts.advertisers.get(advertiser_id)
        for item in new_items:
            match = matches.get(item.image_key or "")
            if match is None:
                continue
            old_keys_matched, how, distance = match
            changes = []
            for field_name in ("image_type", "color"):
                # Several old keys may hold the same bytes (re-published twice): the newest fix.
                candidates = [
                    own[k, field_name] for k in old_keys_matched if (k, field_name) in own
                ]
                fix = max(candidates, key=lambda f: f.id) if candidates else None
                if fix is None or field_name in fixed_fields.get(item.image_key or "", set()):
                    continue
                if field_name == "color" and advertiser is not None and advertiser.color_from_feed:
                    continue
                ml_value = item.ml_image_type if field_name == "image_type" else item.ml_color
                value = getattr(item, field_name)
                if value == ml_value == fix.old_value and value != fix.new_value:
                    changes.append((field_name, ml_value, fix))
            if not changes:
                continue
            old_key, old_url = changes[0][2].image_key, changes[0][2].image_url
            name = facts.name(advertiser_id)
            said = "; ".join(
                f"{'Image Type' if f == 'image_type' else 'Color'} {ml} instead of {fix.new_value}"
                for f, ml, fix in changes
            )
            same = (
                "has the same bytes"
                if how == "sha256"
                else f"looks the same (perceptual hashes {distance} bits apart)"
            )
            explanation = (
                f"{CASES[FIX_NOT_STICKING]}: this image of {name} {same} as one fixed before, "
                "but the CDN published it under a new URL or new headers, so it came back under a "
                f"new image_key with the ML label the fix had corrected ({said}). Carry the fix "
                "over to the new image_key (the advertiser can also have it done on every scrape)."
            )
            found.append(
                Candidate(
                    detector=FIX_NOT_STICKING,
                    subject=f"{advertiser_id}:{item.image_key}",
                    advertiser_id=advertiser_id,
                    scrape_id=item.scrape_id,
                    severity=Severity.WARNING,
                    explanation=explanation,
                    evidence={
                        "image_key": item.image_key,
                        "image_url": item.image_url,
                        "item_id": item.id,
                        "matched_key": old_key,
                        "matched_url": old_url,
                        "match": how,
                        "distance": distance,
                        "changes": [
                            {
                                "field": f,
                                "ml_value": ml,
                                "fixed_value": fix.new_value,
                                "fix_id": fix.id,
                                "fixed_by": fix.user,
                            }
                            for f, ml, fix in changes
                        ],
                        "remedy": "carry_over",
                        "images": [
                            evidence_image(
                                item, facts, f"new · {item.image_type} · {item.color or 'None'}"
                            ),
                            {
                                "image_key": old_key,
                                "image_url": old_url,
                                "item_id": None,
                                "advertiser": name,
                                "label": "fixed before · "
                                + " · ".join(str(fix.new_value) for _, _, fix in changes),
                            },
                        ],
                    },
                    identity={
                        "key": item.image_key,
                        "from": old_key,
                        "changes": [[f, ml, fix.new_value, fix.id] for f, ml, fix in changes],
                    },
                )
            )
    return found


def _content_matches(
    facts: Facts,
    old_keys: list[str],
    advertiser_id: int,
    scrape_id: int,
    t: Thresholds,
) -> dict[str, tuple[list[str], str, int]]:
    """New key → (the old keys with its content, "sha256" or "phash", distance).

    New keys are those of the ok items of ``scrape_id``; the caller keeps the ones whose first
    item of the key is ok.
    """
    old_images = facts.source.images(old_keys)
    by_sha: dict[str, list[str]] = defaultdict(list)
    for key in old_keys:
        image = old_images.get(key)
        if image is not None and image.sha256:
            by_sha[image.sha256].append(key)
    ok = ItemFilter(statuses=(ItemStatus.OK,), with_key=True)
    matches: dict[str, tuple[list[str], str, int]] = {}
    if by_sha:
        same_bytes = replace(ok, image_sha256_in=frozenset(by_sha))
        for _, _, image in facts.source.item_images(scrape_id, same_bytes):
            if image.sha256 and image.sha256 in by_sha:
                matches[image.image_key] = (sorted(by_sha[image.sha256]), "sha256", 0)

    # Perceptual matches only for a swap seen between two consecutive scrapes: the fixed image
    # left the sitemap as the new one arrived, both have the same size, and nothing else matches.
    scrapes = facts.scrapes.get(advertiser_id, [])
    previous = scrapes[1].id if len(scrapes) > 1 else None
    if previous is None:
        return matches
    gone = sorted(facts.source.keys_in(previous, old_keys) & set(old_keys))
    if not gone:
        return matches
    index = HashIndex(
        {k: (old_images[k].phash if k in old_images else None) for k in gone},
        t.max_phash_distance,
    )
    # Every near image of the scrape, then only those that arrived (not in the previous scrape).
    near: dict[str, tuple[ImageFacts, list[tuple[str, int]]]] = {}
    for _, _, image in facts.source.item_images(scrape_id, ok):
        if image.image_key in matches or image.image_key in near:
            continue
        close = list(index.near(image.phash))
        if close:
            near[image.image_key] = (image, close)
    # New images only: the key's first item is ok, and the previous scrape did not list it.
    firsts = facts.source.first_items(scrape_id, near)
    listed = {key for key, item in firsts.items() if item.status == ItemStatus.OK}
    arrived = listed - facts.source.keys_in(previous, listed)
    links: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for new in sorted(arrived):
        new_image, close = near[new]
        for old, distance in close:
            old_image = old_images[old]
            if (old_image.width, old_image.height) != (new_image.width, new_image.height):
                continue
            if not facts.look_alike(old, new, t):
                continue
            links[old].append((new, distance))
            links[new].append((old, distance))
    for new in sorted(arrived):
        candidates = links.get(new, [])
        if len(candidates) != 1:
            continue
        old, distance = candidates[0]
        if len(links.get(old, [])) == 1:
            matches[new] = ([old], "phash", distance)
    return matches


__all__ = ["detect_unstuck_fixes"]
