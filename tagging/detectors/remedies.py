"""The remedies the Weird results page offers: each settles a finding with manual fixes.

Each records its fixes (pending sync, in the caller's transaction) and marks its finding fixed; push
the returned ``fix_ids`` with :func:`tagging.fixes.push_pending` after the commit.
"""

from __future__ import annotations

from sqlalchemy import case, func, or_, select
from sqlalchemy.orm import Session

from db.accounts import SYSTEM_ACTOR, Actor, Permission, require
from db.errors import InvalidInput, NotFoundError
from db.findings import finding_of, ignore_finding, set_state
from db.fixes import FixChange, FixOutcome, apply_fixes
from db.models import (
    Finding,
    FindingState,
    FixSource,
    ManualFix,
    Role,
    Scrape,
    ScrapeStatus,
    SitemapItem,
)
from db.vocab import (
    ADVERTISER_PLACEHOLDER,
    FIX_NOT_STICKING,
    IMAGE_TYPES,
    SHARED_CDN_CONFLICT,
)
from tagging.detectors.base import DEFAULT_THRESHOLDS, Thresholds
from tagging.detectors.facts import load_facts
from tagging.detectors.fix_not_sticking import detect_unstuck_fixes

AUTO_CARRY_ACTOR = Actor(username=SYSTEM_ACTOR, role=Role.ANALYST)
"""Who carries fixes over after a scrape, for advertisers with ``auto_carry_fixes``."""

ACCEPTED = "accepted: the last word on the classification is the advertiser's"


def retag(session: Session, actor: Actor | None, finding_id: int, image_type: str) -> FixOutcome:
    """Re-tag the image of a "Placeholder fixed by the advertiser" finding as ``image_type``.

    Raises:
        PermissionDenied: ``actor`` may not fix.
        InvalidInput: not such a finding, or ``image_type`` is not a valid Image Type.
        NotFoundError: the item is gone.
    """
    actor = require(actor, Permission.FIX)
    if image_type not in IMAGE_TYPES:
        raise InvalidInput(f"{image_type!r} is not an Image Type: one of {', '.join(IMAGE_TYPES)}")
    finding = finding_of(session, finding_id, ADVERTISER_PLACEHOLDER)
    item_id = finding.evidence.get("item_id")
    item = session.get(SitemapItem, item_id) if item_id else None
    if item is None:
        raise NotFoundError("the image of this finding is no longer in a scrape")
    outcome = apply_fixes(
        session,
        actor,
        [FixChange(item.id, "image_type", image_type, seen_value=item.image_type)],
    )
    set_state(finding, FindingState.FIXED, actor.username, f"re-tagged as {image_type}")
    session.flush()
    return outcome


def accept(session: Session, actor: Actor | None, finding_id: int) -> None:
    """Accept an advertiser's fix: the finding is ignored, the advertiser has the last word."""
    ignore_finding(session, actor, finding_id, ACCEPTED)


def choose_value(session: Session, actor: Actor | None, finding_id: int, value: str) -> FixOutcome:
    """Settle a shared-CDN disagreement: every advertiser listing the image gets ``value``.

    The value is fixed on each advertiser's latest scrape that lists the image (one history row per
    advertiser whose value changes, pushed like any fix), and the fixes so far are marked settled:
    only a later fix reopens the finding.

    Raises:
        PermissionDenied: ``actor`` may not fix.
        InvalidInput: not such a finding, or an invalid value.
    """
    actor = require(actor, Permission.FIX)
    finding = finding_of(session, finding_id, SHARED_CDN_CONFLICT)
    evidence = finding.evidence
    field_name = evidence["field"]
    changes = []
    for advertiser_id in evidence.get("advertiser_ids", []):
        item = _latest_item(session, advertiser_id, evidence["image_key"], evidence["image_url"])
        if item is not None:
            changes.append(
                FixChange(item.id, field_name, value, seen_value=getattr(item, field_name))
            )
    if not changes:
        raise NotFoundError("no advertiser lists this image any more: nothing to fix")
    outcome = apply_fixes(session, actor, changes)
    key_or_url = or_(
        ManualFix.image_key == evidence["image_key"], ManualFix.image_url == evidence["image_url"]
    )
    finding.settled_fix_id = session.scalar(
        select(func.max(ManualFix.id)).where(ManualFix.field == field_name, key_or_url)
    )
    set_state(finding, FindingState.FIXED, actor.username, f"chose {value} for every advertiser")
    session.flush()
    return outcome


def _latest_item(
    session: Session, advertiser_id: int, image_key: str, image_url: str
) -> SitemapItem | None:
    """The advertiser's item showing this image in its latest finished scrape, if any."""
    latest = session.scalar(
        select(Scrape.id)
        .where(
            Scrape.advertiser_id == advertiser_id,
            Scrape.finished_at.is_not(None),
            Scrape.status != ScrapeStatus.FAILED,
        )
        .order_by(Scrape.id.desc())
        .limit(1)
    )
    if latest is None:
        return None
    return session.scalar(
        select(SitemapItem)
        .where(
            SitemapItem.scrape_id == latest,
            SitemapItem.image_key.is_not(None),
            or_(SitemapItem.image_key == image_key, SitemapItem.image_url == image_url),
        )
        .order_by(case((SitemapItem.image_key == image_key, 0), else_=1), SitemapItem.position)
        .limit(1)
    )


def carry_over_finding(session: Session, actor: Actor | None, finding_id: int) -> FixOutcome:
    """Carry the fix of a "fix that did not stick" finding over to the new image_key.

    Recorded in the history with source ``carry_over`` and pending sync: push the outcome's
    ``fix_ids`` (:func:`tagging.fixes.push_pending`) after the commit.

    Raises:
        PermissionDenied: ``actor`` may not fix.
        InvalidInput: not such a finding.
        NotFoundError: the item is gone.
    """
    actor = require(actor, Permission.FIX)
    finding = finding_of(session, finding_id, FIX_NOT_STICKING)
    changes = [
        FixChange(
            item_id=finding.evidence["item_id"],
            field=change["field"],
            new_value=change["fixed_value"],
            seen_value=change["ml_value"],
        )
        for change in finding.evidence.get("changes", [])
    ]
    outcome = apply_fixes(session, actor, changes, source=FixSource.CARRY_OVER)
    set_state(
        finding,
        FindingState.FIXED,
        actor.username,
        f"fix carried over to image_key {finding.evidence['image_key']}",
    )
    session.flush()
    return outcome


def carry_over_fixes(
    session: Session,
    actor: Actor | None,
    *,
    advertiser_id: int,
    scrape_id: int | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> FixOutcome:
    """Carry every fix that did not stick over to its new image_key, for one advertiser.

    What an advertiser with ``auto_carry_fixes`` gets after each scrape. The findings of the
    images carried over are marked fixed.

    Raises:
        PermissionDenied: ``actor`` may not fix.
    """
    actor = require(actor, Permission.FIX)
    facts = load_facts(
        session, advertiser_id=advertiser_id, scrape_id=scrape_id, thresholds=thresholds
    )
    candidates = detect_unstuck_fixes(facts, thresholds)
    changes = [
        FixChange(c.evidence["item_id"], ch["field"], ch["fixed_value"], seen_value=ch["ml_value"])
        for c in candidates
        for ch in c.evidence["changes"]
    ]
    outcome = apply_fixes(session, actor, changes, source=FixSource.CARRY_OVER)
    if candidates:
        for finding in session.scalars(
            select(Finding).where(
                Finding.detector == FIX_NOT_STICKING,
                Finding.subject.in_([c.subject for c in candidates]),
                Finding.state != FindingState.FIXED,
            )
        ):
            reason = f"fix carried over to image_key {finding.evidence['image_key']}"
            set_state(finding, FindingState.FIXED, actor.username, reason)
    session.flush()
    return outcome
