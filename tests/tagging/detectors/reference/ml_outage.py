"""Case 1, ``ml_outage``: the ML system failed to respond, so many images got the defaults
(Placeholder, no color) although they are not obvious placeholders.
"""

from __future__ import annotations

import statistics

from db.findings import Candidate
from db.models import ItemStatus, Severity
from db.vocab import CASES, DEFAULT_IMAGE_TYPE, ML_OUTAGE
from tests.tagging.detectors.reference.base import DEFAULT_THRESHOLDS, Facts, Thresholds
from tests.tagging.detectors.reference.common import (
    evidence_image,
    pct,
    possessive,
    review_query,
    share_of,
)


def detect_ml_outage(facts: Facts, t: Thresholds = DEFAULT_THRESHOLDS) -> list[Candidate]:
    """Scrapes where many images got the defaults although they are not obvious placeholders.

    Suspects are the items the ML server did not answer (``ml_failure``) and the ones it answered
    with a Placeholder without color whose URL was a Dealer or Stock photo in a previous scrape.
    Image errors (404, corrupt files) are not the ML system's fault and are left out.
    """
    found = []
    for advertiser_id, items in facts.items.items():
        if not facts.in_scope(advertiser_id):
            continue
        scrapes = facts.scrapes.get(advertiser_id) or []
        counted = [i for i in items if i.status != ItemStatus.ERROR]
        n = len(counted)
        if not n or not scrapes:
            continue
        seen = facts.seen_before.get(advertiser_id, {})
        failed = [i for i in counted if i.status == ItemStatus.ML_FAILURE]
        lost = [
            i
            for i in counted
            if i.status == ItemStatus.OK
            and i.ml_image_type == DEFAULT_IMAGE_TYPE
            and i.ml_color is None
            and i.image_url in seen
        ]
        history = [s for s in scrapes[1 : 1 + t.history] if s.ok]
        baseline = (
            statistics.fmean(share_of(s.ok_types.get(DEFAULT_IMAGE_TYPE, 0), s.ok) for s in history)
            if history
            else None
        )
        # ML failures count as placeholders: that is the default they were given.
        placeholders = sum(1 for i in counted if i.ml_image_type == DEFAULT_IMAGE_TYPE)
        share = share_of(placeholders, n)
        enough = min(t.outage_min_items, n)
        by_failure = len(failed) >= enough and share_of(len(failed), n) >= t.outage_min_share
        by_baseline = (
            baseline is not None
            and len(lost) >= enough
            and share - baseline >= t.outage_excess_share
        )
        if not (by_failure or by_baseline):
            continue
        previous = scrapes[1] if len(scrapes) > 1 else None
        again = (
            previous is not None
            and previous.items > 0
            and previous.ml_failures >= min(t.outage_min_items, previous.items)
            and share_of(previous.ml_failures, previous.items) >= t.outage_min_share
        )
        suspects = failed + lost
        name = facts.name(advertiser_id)
        parts = [f"{len(failed):,} got no answer from the ML server"] if failed else []
        if lost:
            parts.append(f"{len(lost):,} were Dealer or Stock photos in earlier scrapes")
        explanation = (
            f"{CASES[ML_OUTAGE]}: {len(suspects):,} of the {n:,} images of "
            f"{possessive(name)} scrape #{scrapes[0].id} came back as Placeholder with no "
            f"color ({'; '.join(parts)}). "
        )
        if baseline is not None:
            explanation += (
                f"Its earlier scrapes had {pct(baseline)} placeholders; this one has {pct(share)}. "
            )
        # Most of the sitemap without answers is urgent at once; a relaunch that fails too is
        # critical whatever its size. The process stays: relaunch, and only if it fails again
        # tell the dev team.
        most = share_of(len(suspects), n) >= t.outage_critical_share
        if again and previous is not None:  # ``again`` implies a previous scrape
            severity = Severity.CRITICAL
            explanation += (
                f"It failed again after the previous scrape #{previous.id} had the same problem: "
                "tell the dev team (the ML server is down or answers nothing)."
            )
        else:
            severity = Severity.CRITICAL if most else Severity.WARNING
            explanation += (
                ("Most of the sitemap has the defaults: relaunch the scrape now. " if most else "")
                + "Relaunch the scrape: only these images are classified again (the ML server "
                "caches what it classified). If it fails again, tell the dev team."
            )
        found.append(
            Candidate(
                detector=ML_OUTAGE,
                subject=f"scrape:{scrapes[0].id}",
                advertiser_id=advertiser_id,
                scrape_id=scrapes[0].id,
                severity=severity,
                explanation=explanation,
                evidence={
                    "scrape_id": scrapes[0].id,
                    "items": n,
                    "count": len(suspects),
                    "ml_failures": len(failed),
                    "lost": len(lost),
                    "placeholder_share": round(share, 3),
                    "baseline_share": round(baseline, 3) if baseline is not None else None,
                    "failed_again_after": previous.id if again and previous else None,
                    "remedy": "relaunch",
                    "images": [evidence_image(i, facts) for i in suspects[: t.evidence_limit]],
                    "review": review_query(
                        name, status=[ItemStatus.ML_FAILURE.value] if failed else []
                    ),
                },
                identity={
                    "scrape": scrapes[0].id,
                    "items": sorted(i.id for i in suspects),
                    "again": again,
                },
            )
        )
    return found


__all__ = ["detect_ml_outage"]
