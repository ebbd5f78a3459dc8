"""Case 4, ``shared_cdn_conflict``: advertisers sharing a CDN fix the same image differently."""

from __future__ import annotations

import hashlib
from collections import defaultdict

from db.findings import Candidate
from db.models import Severity
from db.vocab import CASES, SHARED_CDN_CONFLICT
from tagging.detectors.base import DEFAULT_THRESHOLDS, Facts, FixFacts, ItemFacts, Thresholds
from tagging.detectors.common import evidence_image


def detect_shared_cdn_conflicts(
    facts: Facts, t: Thresholds = DEFAULT_THRESHOLDS
) -> list[Candidate]:
    """The same image_key (or URL) fixed differently by two or more advertisers, or back and forth.

    The ML cache stores one value per image_key whatever the advertiser, so advertisers sharing a
    CDN overwrite each other. Flagged when the advertisers' latest values differ, or when the value
    went A → B → A between different people; after a "choose one value" only later fixes count.
    """
    groups: dict[tuple[str, str, str], list[FixFacts]] = defaultdict(list)
    for fix in facts.fixes:
        groups[(fix.field, "key", fix.image_key)].append(fix)
    by_url: dict[tuple[str, str], list[FixFacts]] = defaultdict(list)
    for fix in facts.fixes:
        by_url[(fix.field, fix.image_url)].append(fix)
    for (field_name, url), fixes in by_url.items():
        # A URL republished under new keys: its fixes are spread over several key groups.
        if len({f.image_key for f in fixes}) > 1:
            groups[(field_name, "url", url)] = fixes

    # What each advertiser lists now, looked up only for the conflicts found.
    latest_ids = {advertiser_id: latest.id for advertiser_id, latest in facts.listed()}

    def listed_by_key(advertiser_id: int, key: str) -> ItemFacts | None:
        scrape_id = latest_ids.get(advertiser_id)
        if scrape_id is None:
            return None
        return facts.source.first_items(scrape_id, [key]).get(key)

    def listed_by_url(advertiser_id: int, url: str) -> ItemFacts | None:
        scrape_id = latest_ids.get(advertiser_id)
        return facts.source.first_item_by_url(scrape_id, url) if scrape_id is not None else None

    found = []
    for (field_name, kind, value), fixes in groups.items():
        fixes = sorted(fixes, key=lambda f: f.id)
        advertisers = sorted({f.advertiser_id for f in fixes if f.advertiser_id is not None})
        if kind == "key":
            subject = f"{field_name}:key:{value}"
        else:
            subject = f"{field_name}:url:{hashlib.sha256(value.encode()).hexdigest()[:32]}"
        settled = facts.settled.get(subject, 0)
        recent = [f for f in fixes if f.id > settled]
        if not recent:
            continue
        latest: dict[int, str | None] = {}
        for fix in fixes:
            if fix.advertiser_id is not None:
                latest[fix.advertiser_id] = fix.new_value
        disagree = len(latest) >= 2 and len(set(latest.values())) >= 2
        back_and_forth = _back_and_forth(recent if settled else fixes)
        if not (disagree or back_and_forth):
            continue
        current = {}
        images = []
        for advertiser_id in advertisers:
            if kind == "key":
                listed = listed_by_key(advertiser_id, value)
                if listed is None:
                    listed = listed_by_url(advertiser_id, fixes[-1].image_url)
            else:
                listed = listed_by_url(advertiser_id, value)
            if listed is not None:
                current[facts.name(advertiser_id)] = getattr(listed, field_name)
                images.append(evidence_image(listed, facts))
        timeline = [
            {
                "fix_id": f.id,
                "at": f"{f.created_at:%Y-%m-%d %H:%M:%S}" if f.created_at else None,
                "advertiser": facts.name(f.advertiser_id),
                "user": f.user,
                "source": f.source,
                "old_value": f.old_value,
                "new_value": f.new_value,
            }
            for f in fixes
        ]
        values = sorted({str(f.new_value) for f in fixes})
        label = "Image Type" if field_name == "image_type" else "Color"
        same = "image_key" if kind == "key" else "URL"
        if disagree:
            who = (
                " and ".join(facts.name(a) for a in advertisers)
                + f" list the same image (same {same}) and fixed it differently: "
                + ", ".join(f"{facts.name(a)} says {v}" for a, v in sorted(latest.items()))
            )
        else:
            users = sorted({f.user for f in fixes})
            who = (
                f"the same image (same {same}) was fixed back and forth by "
                + ", ".join(users)
                + " ("
                + " → ".join(str(f.new_value) for f in fixes)
                + ")"
            )
        explanation = (
            f"{CASES[SHARED_CDN_CONFLICT]}: {who}. The ML cache keeps one {label} per image, "
            "whoever lists it, so each fix overwrites the other's at the next scrape. Choose one "
            "value for everyone."
        )
        primary = fixes[-1].advertiser_id
        found.append(
            Candidate(
                detector=SHARED_CDN_CONFLICT,
                subject=subject,
                advertiser_id=primary,
                scrape_id=facts.latest_scrape_id(primary) if primary is not None else None,
                severity=Severity.WARNING,
                explanation=explanation,
                evidence={
                    "field": field_name,
                    "image_key": fixes[-1].image_key,
                    "image_url": fixes[-1].image_url,
                    "advertiser_ids": advertisers,
                    "values": values,
                    "current": current,
                    "timeline": timeline,
                    "settled_fix_id": settled or None,
                    "remedy": "choose_value",
                    "images": images[: t.evidence_limit],
                },
                identity={"fixes": [f.id for f in fixes], "settled": settled},
            )
        )
    return found


def _back_and_forth(fixes: list[FixFacts]) -> bool:
    """A value set, changed, then set again (A → B → A), by at least two different people."""
    values: list[str | None] = []
    for fix in fixes:
        if not values or values[-1] != fix.new_value:
            values.append(fix.new_value)
    reverted = any(values[i] == values[i - 2] for i in range(2, len(values)))
    return reverted and len({f.user for f in fixes}) >= 2


__all__ = ["detect_shared_cdn_conflicts"]
