"""Run every detector over the database's facts and store what they find."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from db.accounts import Actor, Permission, require
from db.findings import RefreshReport, store_candidates
from tagging.detectors.base import DEFAULT_THRESHOLDS, Thresholds
from tagging.detectors.facts import load_facts
from tagging.detectors.registry import detect_all


def refresh_findings(
    session: Session,
    *,
    advertiser_id: int | None = None,
    scrape_id: int | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    now: datetime | None = None,
) -> RefreshReport:
    """Run every detector and bring the stored findings up to date (in the caller's transaction).

    Call it after each scrape (:func:`tagging.ingest.scrape.after_scrape` does) and after each
    batch of fixes (:func:`tagging.fixes.record_fixes` does).

    Args:
        advertiser_id: recompute only this advertiser's own findings; the detectors comparing
            advertisers (shared CDN, near-duplicates, criteria) are always recomputed in full.
        scrape_id: a scrape to treat as finished (see :func:`load_facts`).
    """
    facts = load_facts(
        session, advertiser_id=advertiser_id, scrape_id=scrape_id, thresholds=thresholds
    )
    candidates = detect_all(facts, thresholds)
    return store_candidates(session, candidates, advertiser_id=advertiser_id, now=now)


def recompute_findings(sessions: sessionmaker[Session], actor: Actor | None) -> RefreshReport:
    """Run every detector now over every advertiser, as a user action (one transaction).

    Raises:
        PermissionDenied: ``actor`` may not fix.
    """
    require(actor, Permission.FIX)
    with sessions.begin() as session:
        return refresh_findings(session)
