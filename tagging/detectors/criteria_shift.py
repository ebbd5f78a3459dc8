"""Case 7, ``criteria_shift``: an advertiser's labels shift (class share or fix rate) against its
own history or against all advertisers: a sign of different criteria.
"""

from __future__ import annotations

import statistics
from collections import defaultdict

from db.findings import Candidate
from db.models import Severity
from db.vocab import CASES, CRITERIA_SHIFT
from tagging.detectors.base import (
    DEFAULT_THRESHOLDS,
    Facts,
    ItemFacts,
    ItemFilter,
    ScrapeFacts,
    Thresholds,
)
from tagging.detectors.common import (
    PHOTO_TYPES,
    evidence_image,
    pct,
    possessive,
    review_query,
)


def detect_criteria_shifts(facts: Facts, t: Thresholds = DEFAULT_THRESHOLDS) -> list[Candidate]:
    """Advertisers whose class share jumps against their own history, or whose fix rate is far
    above every other advertiser's.

    Class shares are over the Dealer and Stock photos the ML server answered for, so outages and
    placeholders do not move them; a jump must exceed the median jump of the other advertisers
    (a new model moves everyone). The fix rate is the share of an advertiser's current images
    with a fix made for it, compared with the median advertiser's.
    """
    found = []
    shares: dict[int, tuple[dict[str, float], dict[str, float], int]] = {}
    for advertiser_id, scrapes in facts.scrapes.items():
        if len(scrapes) < 2:
            continue
        now = _photo_shares(scrapes[0])
        # The earlier scrapes with photos (the others have no shares).
        history = [
            past for s in scrapes[1 : 1 + t.history] if (past := _photo_shares(s)) is not None
        ]
        if now is None or not history:
            continue
        before = {c: statistics.fmean(past[c] for past in history) for c in PHOTO_TYPES}
        shares[advertiser_id] = (now, before, _photo_count(scrapes[0]))
    # Every advertiser, whatever the scope: one advertiser's change moves the others' baseline.
    for advertiser_id, (now, before, photos) in shares.items():
        others = [
            {c: o_now[c] - o_before[c] for c in PHOTO_TYPES}
            for other, (o_now, o_before, _) in shares.items()
            if other != advertiser_id
        ]
        fleet = {c: statistics.median(o[c] for o in others) if others else 0.0 for c in PHOTO_TYPES}
        jumps = {c: now[c] - before[c] for c in PHOTO_TYPES}
        # The class that grew beyond the fleet: the labels to look at.
        grown = max(PHOTO_TYPES, key=lambda c: jumps[c] - fleet[c])
        excess = jumps[grown] - fleet[grown]
        if (
            excess < t.shift_min_share
            or jumps[grown] < t.shift_min_share
            or jumps[grown] * photos < t.shift_min_items
        ):
            continue
        name = facts.name(advertiser_id)
        shown: dict[str, ItemFacts] = {}  # the first 12 images of that class, in sitemap order
        latest_id = facts.latest_scrape_id(advertiser_id)
        if latest_id is not None:
            for item in facts.source.items(latest_id, ItemFilter(image_type=grown, with_key=True)):
                shown.setdefault(item.image_key or "", item)
                if len(shown) == 12:
                    break
        explanation = (
            f"{CASES[CRITERIA_SHIFT]}: {possessive(name)} share of {grown} photos (of its "
            f"Dealer and Stock photos) went from {pct(before[grown])} in its earlier scrapes to "
            f"{pct(now[grown])} in scrape #{facts.latest_scrape_id(advertiser_id)}, while "
            f"the median other advertiser moved {fleet[grown] * 100:+.0f} points. Its labels "
            "(or the fixes it makes) may follow other criteria than ours (e.g. digitally "
            "enhanced photos: Stock for us, Dealer for them). Open the sitemap filtered to "
            f"{grown} and retag only obvious misclassifications."
        )
        found.append(
            Candidate(
                detector=CRITERIA_SHIFT,
                subject=f"share:{advertiser_id}:{grown}",
                advertiser_id=advertiser_id,
                scrape_id=facts.latest_scrape_id(advertiser_id),
                severity=Severity.WARNING,
                explanation=explanation,
                evidence={
                    "kind": "class_share",
                    "class": grown,
                    "share": round(now[grown], 3),
                    "baseline_share": round(before[grown], 3),
                    "fleet_change": round(fleet[grown], 3),
                    "remedy": "open_sitemap",
                    "review": review_query(name, type=[grown]),
                    "images": [evidence_image(i, facts) for i in shown.values()],
                },
                identity={"class": grown, "band": round(excess * 10)},
            )
        )
    found.extend(_fix_rate_shifts(facts, t))
    return found


def _photo_count(scrape: ScrapeFacts) -> int:
    return sum(scrape.ok_types.get(c, 0) for c in PHOTO_TYPES)


def _photo_shares(scrape: ScrapeFacts) -> dict[str, float] | None:
    total = _photo_count(scrape)
    if not total:
        return None
    return {c: scrape.ok_types.get(c, 0) / total for c in PHOTO_TYPES}


def _fix_rate_shifts(facts: Facts, t: Thresholds) -> list[Candidate]:
    fixed_for: dict[int, set[str]] = defaultdict(set)
    fixed_to: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for fix in facts.fixes:
        if fix.advertiser_id is not None:
            fixed_for[fix.advertiser_id].add(fix.image_key)
            if fix.field == "image_type" and fix.new_value:
                fixed_to[fix.advertiser_id][fix.new_value] += 1
    listed = facts.listed()
    present = {
        advertiser_id: facts.source.keys_in(latest.id, fixed_for[advertiser_id])
        for advertiser_id, latest in listed
        if fixed_for.get(advertiser_id)
    }
    if all(len(keys) < t.fix_rate_min_items for keys in present.values()):
        return []  # no advertiser has enough fixed images to be flagged
    rates: dict[int, tuple[float, list[ItemFacts]]] = {}
    for advertiser_id, latest in listed:
        keys = present.get(advertiser_id)
        if keys:
            # Its current images: the first item of each image_key, in sitemap order.
            fixed = sorted(
                facts.source.first_items(latest.id, keys).values(),
                key=lambda i: (i.position, i.id),
            )
            rates[advertiser_id] = (len(fixed) / facts.source.distinct_keys(latest.id), fixed)
        elif next(facts.source.items(latest.id, ItemFilter(with_key=True)), None) is not None:
            rates[advertiser_id] = (0.0, [])
    found = []
    for advertiser_id, (rate, fixed) in rates.items():
        peers = [r for other, (r, _) in rates.items() if other != advertiser_id]
        if len(peers) < t.fix_rate_min_peers:
            continue
        median = statistics.median(peers)
        if (
            rate < t.fix_rate_min
            or len(fixed) < t.fix_rate_min_items
            or rate < max(t.fix_rate_factor * median, median + 0.10)
        ):
            continue
        name = facts.name(advertiser_id)
        targets = fixed_to.get(advertiser_id, {})
        to_class = max(sorted(targets), key=lambda c: targets[c]) if targets else None
        explanation = (
            f"{CASES[CRITERIA_SHIFT]}: {pct(rate)} of {possessive(name)} current images have "
            f"been fixed ({len(fixed):,} images), against {pct(median)} for the median "
            "advertiser. Fixing this much usually means the advertiser and we label by "
            "different criteria"
            + (f" (most fixes set {to_class})" if to_class else "")
            + ". Open the fixed images of its sitemap and agree on the criteria; retag only "
            "obvious misclassifications, and keep conflicting images out of the training sets."
        )
        found.append(
            Candidate(
                detector=CRITERIA_SHIFT,
                subject=f"fix_rate:{advertiser_id}",
                advertiser_id=advertiser_id,
                scrape_id=facts.latest_scrape_id(advertiser_id),
                severity=Severity.WARNING,
                explanation=explanation,
                evidence={
                    "kind": "fix_rate",
                    "rate": round(rate, 3),
                    "fixed": len(fixed),
                    "median_rate": round(median, 3),
                    "class": to_class,
                    "remedy": "open_sitemap",
                    "review": review_query(
                        name, type=[to_class] if to_class else [], status=["fixed"]
                    ),
                    "images": [evidence_image(i, facts) for i in fixed[:12]],
                },
                identity={"band": round(rate * 10), "class": to_class},
            )
        )
    return found


__all__ = ["detect_criteria_shifts"]
