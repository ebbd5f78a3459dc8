"""Weird-result findings: loading the detectors' facts, storing what they find, and the remedies.

The detectors live in :mod:`tagging.weird`; this module reads their facts from the database,
stores each candidate as a :class:`~db.models.Finding` and keeps its state:

* a new finding is ``open``;
* a finding no longer detected is ``fixed`` by ``system``;
* an ``ignored`` (or manually ``fixed``) finding keeps its state while its evidence fingerprint
  stays the same, and is reopened when the evidence changes.

Every function takes a Session and leaves the transaction to its caller, except
:func:`after_scrape`, which the scrape calls with its session factory. Writes check the actor's
role (:func:`db.accounts.require`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import case, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from db.accounts import SYSTEM_ACTOR, Actor, Permission, require
from db.fixes import FixChange, FixOutcome, apply_fixes, push_pending
from db.models import (
    Advertiser,
    Finding,
    FindingState,
    FixSource,
    Image,
    ItemStatus,
    ManualFix,
    Role,
    Scrape,
    ScrapeStatus,
    Severity,
    SitemapItem,
    utcnow,
)
from db.review import thumbnails
from tagging import DEFAULT_IMAGE_TYPE, IMAGE_TYPES
from tagging.errors import NotFoundError, TaggingError
from tagging.weird import (
    ADVERTISER_PLACEHOLDER,
    CASES,
    DEFAULT_THRESHOLDS,
    DETECTORS,
    FIX_NOT_STICKING,
    GLOBAL_DETECTORS,
    NEAR_DUPLICATES,
    PHOTO_TYPES,
    SHARED_CDN_CONFLICT,
    AdvertiserFacts,
    Candidate,
    Facts,
    FixFacts,
    ImageFacts,
    ItemFacts,
    ScrapeFacts,
    Thresholds,
    detect_all,
    detect_unstuck_fixes,
)

log = logging.getLogger(__name__)

AUTO_CARRY_ACTOR = Actor(username=SYSTEM_ACTOR, role=Role.ANALYST)
"""Who carries fixes over after a scrape, for advertisers with ``auto_carry_fixes``."""

NO_LONGER_DETECTED = "no longer detected: the latest data does not show it any more"
ACCEPTED = "accepted: the last word on the classification is the advertiser's"

_CHUNK = 500


# --- loading the facts ---------------------------------------------------------------------------


def load_facts(
    session: Session,
    *,
    advertiser_id: int | None = None,
    scrape_id: int | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> Facts:
    """What the detectors need, in a handful of queries.

    Args:
        advertiser_id: whose own findings are being recomputed (None: everyone's). The other
            advertisers' latest scrapes are loaded all the same: some detectors compare them.
        scrape_id: a scrape that counts as finished although it is not yet (the scrape calls
            :func:`after_scrape` just before it marks itself finished).
    """
    advertisers = {
        a.id: AdvertiserFacts(a.id, a.name, a.color_from_feed)
        for a in session.scalars(select(Advertiser))
    }
    finished = Scrape.finished_at.is_not(None)
    eligible = or_(finished, Scrape.id == scrape_id) if scrape_id is not None else finished
    rank = (
        func.row_number()
        .over(partition_by=Scrape.advertiser_id, order_by=Scrape.id.desc())
        .label("rank")
    )
    ranked = (
        select(Scrape.id, Scrape.advertiser_id, rank)
        .where(eligible, Scrape.status != ScrapeStatus.FAILED)
        .subquery()
    )
    recent = session.execute(
        select(ranked.c.id, ranked.c.advertiser_id)
        .where(ranked.c.rank <= thresholds.history + 1)
        .order_by(ranked.c.advertiser_id, ranked.c.id.desc())
    ).all()
    scrape_ids = [row.id for row in recent]
    counts: dict[int, dict[tuple[str, str], int]] = defaultdict(dict)
    for chunk in _chunks(scrape_ids):
        for sid, status, ml_type, count in session.execute(
            select(
                SitemapItem.scrape_id, SitemapItem.status, SitemapItem.ml_image_type, func.count()
            )
            .where(SitemapItem.scrape_id.in_(chunk))
            .group_by(SitemapItem.scrape_id, SitemapItem.status, SitemapItem.ml_image_type)
        ):
            counts[sid][(status, ml_type)] = count
    scrapes: dict[int, list[ScrapeFacts]] = defaultdict(list)
    for row in recent:
        by = counts.get(row.id, {})
        ok_types: dict[str, int] = defaultdict(int)
        for (status, ml_type), count in by.items():
            if status == ItemStatus.OK:
                ok_types[ml_type] += count
        scrapes[row.advertiser_id].append(
            ScrapeFacts(
                id=row.id,
                advertiser_id=row.advertiser_id,
                items=sum(by.values()),
                ml_failures=sum(c for (s, _), c in by.items() if s == ItemStatus.ML_FAILURE),
                ok=sum(ok_types.values()),
                ok_types=dict(ok_types),
            )
        )

    latest_ids = [s[0].id for s in scrapes.values()]
    items: dict[int, list[ItemFacts]] = defaultdict(list)
    for chunk in _chunks(latest_ids):
        for row in session.execute(
            select(
                SitemapItem.id,
                SitemapItem.scrape_id,
                SitemapItem.advertiser_id,
                SitemapItem.position,
                SitemapItem.image_url,
                SitemapItem.image_key,
                SitemapItem.ml_image_type,
                SitemapItem.ml_color,
                SitemapItem.image_type,
                SitemapItem.color,
                SitemapItem.status,
                SitemapItem.feed_color,
            )
            .where(SitemapItem.scrape_id.in_(chunk))
            .order_by(SitemapItem.scrape_id, SitemapItem.position, SitemapItem.id)
        ):
            items[row.advertiser_id].append(ItemFacts(**row._asdict()))

    fixes = [
        FixFacts(
            id=row.id,
            image_key=row.image_key,
            image_url=row.image_url,
            advertiser_id=row.advertiser_id,
            item_id=row.sitemap_item_id,
            field=row.field,
            old_value=row.old_value,
            new_value=row.new_value,
            user=row.user,
            source=row.source,
            created_at=_aware(row.created_at),
        )
        for row in session.execute(
            select(
                ManualFix.id,
                ManualFix.image_key,
                ManualFix.image_url,
                ManualFix.advertiser_id,
                ManualFix.sitemap_item_id,
                ManualFix.field,
                ManualFix.old_value,
                ManualFix.new_value,
                ManualFix.user,
                ManualFix.source,
                ManualFix.created_at,
            ).order_by(ManualFix.id)
        )
    ]

    keys = {i.image_key for its in items.values() for i in its if i.image_key}
    keys |= {f.image_key for f in fixes}
    images: dict[str, ImageFacts] = {}
    for chunk in _chunks(sorted(keys)):
        for row in session.execute(
            select(Image.image_key, Image.sha256, Image.phash, Image.width, Image.height).where(
                Image.image_key.in_(chunk)
            )
        ):
            images[row.image_key] = ImageFacts(**row._asdict())

    scope = None if advertiser_id is None else frozenset({advertiser_id})
    seen_before: dict[int, dict[str, str]] = {}
    previous_keys: dict[int, set[str]] = {}
    for adv, history in scrapes.items():
        if (scope is not None and adv not in scope) or len(history) < 2:
            continue
        previous_ids = [s.id for s in history[1:]]
        previous_keys[adv] = set(
            session.scalars(
                select(SitemapItem.image_key)
                .where(SitemapItem.scrape_id == history[1].id, SitemapItem.image_key.is_not(None))
                .distinct()
            )
        )
        # Only the URLs that now look like an ML non-answer need their past.
        urls = sorted(
            {
                i.image_url
                for i in items.get(adv, [])
                if i.status == ItemStatus.OK
                and i.ml_image_type == DEFAULT_IMAGE_TYPE
                and i.ml_color is None
            }
        )
        seen: dict[str, str] = {}
        for chunk in _chunks(urls):
            for url, ml_type in session.execute(
                select(SitemapItem.image_url, SitemapItem.ml_image_type).where(
                    SitemapItem.scrape_id.in_(previous_ids),
                    SitemapItem.status == ItemStatus.OK,
                    SitemapItem.ml_image_type.in_(PHOTO_TYPES),
                    SitemapItem.image_url.in_(chunk),
                )
            ):
                seen[url] = ml_type
        seen_before[adv] = seen

    settled = {
        subject: fix_id
        for subject, fix_id in session.execute(
            select(Finding.subject, Finding.settled_fix_id).where(
                Finding.detector == SHARED_CDN_CONFLICT, Finding.settled_fix_id.is_not(None)
            )
        )
    }
    return Facts(
        advertisers=advertisers,
        scrapes=dict(scrapes),
        items=dict(items),
        images=images,
        fixes=fixes,
        seen_before=seen_before,
        previous_keys=previous_keys,
        settled=settled,
        scope=scope,
        thumbnails=lambda wanted: thumbnails(session, list(wanted)),
    )


def _chunks(values: Sequence[Any]) -> Iterable[list[Any]]:
    values = list(values)
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


def _aware(moment: datetime | None) -> datetime | None:
    """SQLite returns naive UTC timestamps; PostgreSQL aware ones."""
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment


# --- refreshing ----------------------------------------------------------------------------------


@dataclass
class RefreshReport:
    """What one :func:`refresh_findings` changed (finding ids)."""

    opened: list[int] = field(default_factory=list)
    reopened: list[int] = field(default_factory=list)
    resolved: list[int] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)


def refresh_findings(
    session: Session,
    *,
    advertiser_id: int | None = None,
    scrape_id: int | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    now: datetime | None = None,
) -> RefreshReport:
    """Run every detector and bring the stored findings up to date (in the caller's transaction).

    Call it after each scrape (:func:`after_scrape` does) and after each batch of fixes.

    Args:
        advertiser_id: recompute only this advertiser's own findings; the detectors comparing
            advertisers (shared CDN, near-duplicates, criteria) are always recomputed in full.
        scrape_id: a scrape to treat as finished (see :func:`load_facts`).
    """
    now = now or utcnow()
    facts = load_facts(
        session, advertiser_id=advertiser_id, scrape_id=scrape_id, thresholds=thresholds
    )
    candidates = detect_all(facts, thresholds)
    existing = {
        (f.detector, f.subject): f
        for f in session.scalars(select(Finding).where(Finding.detector.in_(list(DETECTORS))))
    }
    report = RefreshReport()
    produced: set[tuple[str, str]] = set()
    for candidate in candidates:
        key = (candidate.detector, candidate.subject)
        produced.add(key)
        finding = existing.get(key)
        if finding is None:
            finding = _insert(session, candidate, now)
            if finding is not None:
                report.opened.append(finding.id)
                continue
            # A concurrent refresh stored it first: update that one.
            finding = session.scalar(
                select(Finding).where(
                    Finding.detector == candidate.detector, Finding.subject == candidate.subject
                )
            )
            if finding is None:  # pragma: no cover - the row vanished again
                continue
        if _update(finding, candidate, now):
            report.reopened.append(finding.id)
        else:
            report.kept.append(finding.id)
    for key, finding in existing.items():
        if key in produced or finding.state != FindingState.OPEN:
            continue
        in_scope = (
            advertiser_id is None
            or finding.detector in GLOBAL_DETECTORS
            or finding.advertiser_id == advertiser_id
        )
        if in_scope:
            _set_state(finding, FindingState.FIXED, SYSTEM_ACTOR, NO_LONGER_DETECTED, now)
            report.resolved.append(finding.id)
    session.flush()
    return report


def _insert(session: Session, candidate: Candidate, now: datetime) -> Finding | None:
    finding = Finding(
        detector=candidate.detector,
        subject=candidate.subject,
        advertiser_id=candidate.advertiser_id,
        scrape_id=candidate.scrape_id,
        severity=candidate.severity,
        explanation=candidate.explanation,
        evidence=candidate.evidence,
        fingerprint=candidate.fingerprint,
        state=FindingState.OPEN,
        conflicting=False,
        detected_at=now,
        updated_at=now,
    )
    try:
        with session.begin_nested():
            session.add(finding)
    except IntegrityError:
        return None
    return finding


def _update(finding: Finding, candidate: Candidate, now: datetime) -> bool:
    """Refresh a stored finding from a candidate; True when it had to be reopened."""
    finding.advertiser_id = candidate.advertiser_id
    finding.scrape_id = candidate.scrape_id
    finding.severity = candidate.severity
    finding.explanation = candidate.explanation
    finding.evidence = candidate.evidence
    changed = finding.fingerprint != candidate.fingerprint
    if changed:
        finding.fingerprint = candidate.fingerprint
        finding.updated_at = now
    came_back = finding.state == FindingState.FIXED and finding.state_by == SYSTEM_ACTOR
    if finding.state != FindingState.OPEN and (changed or came_back):
        was = f"was {finding.state} by {finding.state_by}"
        if finding.state_reason:
            was += f": {finding.state_reason}"
        why = "the evidence changed" if changed else "detected again"
        _set_state(finding, FindingState.OPEN, SYSTEM_ACTOR, f"reopened, {why} ({was})", now)
        return True
    return False


def _set_state(
    finding: Finding, state: str, by: str, reason: str | None, now: datetime | None = None
) -> None:
    finding.state = state
    finding.state_by = by
    finding.state_reason = reason
    finding.state_at = now or utcnow()


# --- reading -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FindingView:
    """A finding as pages and the CLI show it (plain data: cacheable, JSON-able)."""

    id: int
    detector: str
    case: str
    advertiser_id: int | None
    advertiser: str | None
    scrape_id: int | None
    severity: str
    explanation: str
    evidence: dict[str, Any]
    state: str
    state_reason: str | None
    state_by: str | None
    state_at: datetime | None
    detected_at: datetime
    updated_at: datetime
    conflicting: bool

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (timestamps in ISO 8601)."""
        return {
            "id": self.id,
            "detector": self.detector,
            "case": self.case,
            "severity": self.severity,
            "advertiser": self.advertiser,
            "scrape_id": self.scrape_id,
            "explanation": self.explanation,
            "evidence": self.evidence,
            "state": self.state,
            "state_reason": self.state_reason,
            "state_by": self.state_by,
            "state_at": self.state_at.isoformat() if self.state_at else None,
            "detected_at": self.detected_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "conflicting": self.conflicting,
        }


SEVERITY_RANK = case(
    {Severity.CRITICAL: 0, Severity.WARNING: 1, Severity.INFO: 2}, value=Finding.severity, else_=3
)


def list_findings(
    session: Session,
    *,
    states: Sequence[str] | None = (FindingState.OPEN,),
    advertiser_id: int | None = None,
    scrape_id: int | None = None,
    detector: str | None = None,
    limit: int | None = None,
) -> list[FindingView]:
    """Findings, most severe first, then newest first.

    Args:
        states: the states to list (default: open ones); None for every state.
    """
    query = (
        select(Finding, Advertiser.name)
        .outerjoin(Advertiser, Advertiser.id == Finding.advertiser_id)
        .order_by(SEVERITY_RANK, Finding.updated_at.desc(), Finding.id.desc())
    )
    if states is not None:
        query = query.where(Finding.state.in_([str(s) for s in states]))
    if advertiser_id is not None:
        query = query.where(Finding.advertiser_id == advertiser_id)
    if scrape_id is not None:
        query = query.where(Finding.scrape_id == scrape_id)
    if detector is not None:
        query = query.where(Finding.detector == detector)
    if limit is not None:
        query = query.limit(limit)
    return [_view(finding, name) for finding, name in session.execute(query)]


def finding_counts(session: Session) -> dict[str, int]:
    """Findings by state (for a badge)."""
    return {
        state: count
        for state, count in session.execute(
            select(Finding.state, func.count()).group_by(Finding.state)
        )
    }


def get_finding(session: Session, finding_id: int, *, lock: bool = False) -> Finding:
    """The finding ``finding_id``.

    Raises:
        NotFoundError: there is none.
    """
    finding = session.get(Finding, finding_id, with_for_update=lock)
    if finding is None:
        raise NotFoundError(f"no finding {finding_id}")
    return finding


def _view(finding: Finding, advertiser: str | None) -> FindingView:
    return FindingView(
        id=finding.id,
        detector=finding.detector,
        case=CASES.get(finding.detector, finding.detector),
        advertiser_id=finding.advertiser_id,
        advertiser=advertiser,
        scrape_id=finding.scrape_id,
        severity=finding.severity,
        explanation=finding.explanation,
        evidence=dict(finding.evidence or {}),
        state=finding.state,
        state_reason=finding.state_reason,
        state_by=finding.state_by,
        state_at=_aware(finding.state_at),
        detected_at=_aware(finding.detected_at) or utcnow(),
        updated_at=_aware(finding.updated_at) or utcnow(),
        conflicting=bool(finding.conflicting),
    )


def conflicting_image_keys(session: Session) -> set[str]:
    """Image keys marked as conflicting examples, for the dataset page to leave out."""
    keys: set[str] = set()
    for evidence in session.scalars(select(Finding.evidence).where(Finding.conflicting)):
        keys.update(i["image_key"] for i in (evidence or {}).get("images", []) if i["image_key"])
    return keys


# --- state changes -------------------------------------------------------------------------------


def ignore_finding(session: Session, actor: Actor | None, finding_id: int, reason: str) -> None:
    """Ignore a finding with a reason; it stays ignored until its evidence changes.

    Raises:
        PermissionDenied: ``actor`` may not fix.
        TaggingError: no reason given.
        NotFoundError: no such finding.
    """
    actor = require(actor, Permission.FIX)
    reason = (reason or "").strip()
    if not reason:
        raise TaggingError("say why the finding is ignored: the reason is kept with it")
    finding = get_finding(session, finding_id, lock=True)
    _set_state(finding, FindingState.IGNORED, actor.username, reason[:2000])
    session.flush()


def mark_fixed(
    session: Session, actor: Actor | None, finding_id: int, reason: str | None = None
) -> None:
    """Mark a finding fixed (by hand, e.g. after retagging on the review page).

    Raises:
        PermissionDenied: ``actor`` may not fix.
        NotFoundError: no such finding.
    """
    actor = require(actor, Permission.FIX)
    finding = get_finding(session, finding_id, lock=True)
    _set_state(finding, FindingState.FIXED, actor.username, (reason or "").strip()[:2000] or None)
    session.flush()


def mark_conflicting(session: Session, actor: Actor | None, finding_id: int) -> None:
    """Mark a near-duplicates finding's images as conflicting examples (kept out of datasets).

    Raises:
        PermissionDenied: ``actor`` may not fix.
        TaggingError: the finding is not about near-duplicates.
    """
    actor = require(actor, Permission.FIX)
    finding = _finding_of(session, finding_id, NEAR_DUPLICATES)
    finding.conflicting = True
    _set_state(
        finding,
        FindingState.FIXED,
        actor.username,
        "marked as conflicting examples: kept out of the training sets",
    )
    session.flush()


def set_auto_carry(
    session: Session, actor: Actor | None, advertiser_id: int, enabled: bool
) -> None:
    """Turn on or off carrying fixes over to re-published images after each of its scrapes.

    Raises:
        PermissionDenied: ``actor`` may not fix.
        NotFoundError: no such advertiser.
    """
    require(actor, Permission.FIX)
    advertiser = session.get(Advertiser, advertiser_id, with_for_update=True)
    if advertiser is None:
        raise NotFoundError(f"no advertiser {advertiser_id}")
    advertiser.auto_carry_fixes = enabled
    session.flush()


def _finding_of(session: Session, finding_id: int, detector: str) -> Finding:
    finding = get_finding(session, finding_id, lock=True)
    if finding.detector != detector:
        raise TaggingError(
            f"finding {finding_id} is about {CASES.get(finding.detector, finding.detector)}, "
            f"not {CASES[detector]}"
        )
    return finding


# --- remedies ------------------------------------------------------------------------------------


def retag(session: Session, actor: Actor | None, finding_id: int, image_type: str) -> FixOutcome:
    """Re-tag the image of a "Placeholder fixed by the advertiser" finding as ``image_type``.

    Raises:
        PermissionDenied: ``actor`` may not fix.
        TaggingError: not such a finding, or ``image_type`` is not a valid Image Type.
        NotFoundError: the item is gone.
    """
    actor = require(actor, Permission.FIX)
    if image_type not in IMAGE_TYPES:
        raise TaggingError(f"{image_type!r} is not an Image Type: one of {', '.join(IMAGE_TYPES)}")
    finding = _finding_of(session, finding_id, ADVERTISER_PLACEHOLDER)
    item_id = finding.evidence.get("item_id")
    item = session.get(SitemapItem, item_id) if item_id else None
    if item is None:
        raise NotFoundError("the image of this finding is no longer in a scrape")
    outcome = apply_fixes(
        session,
        actor,
        [FixChange(item.id, "image_type", image_type, seen_value=item.image_type)],
        refresh=False,  # this remedy settles its finding itself
    )
    _set_state(finding, FindingState.FIXED, actor.username, f"re-tagged as {image_type}")
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
        TaggingError: not such a finding, or an invalid value.
    """
    actor = require(actor, Permission.FIX)
    finding = _finding_of(session, finding_id, SHARED_CDN_CONFLICT)
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
    outcome = apply_fixes(session, actor, changes, refresh=False)
    key_or_url = or_(
        ManualFix.image_key == evidence["image_key"], ManualFix.image_url == evidence["image_url"]
    )
    finding.settled_fix_id = session.scalar(
        select(func.max(ManualFix.id)).where(ManualFix.field == field_name, key_or_url)
    )
    _set_state(finding, FindingState.FIXED, actor.username, f"chose {value} for every advertiser")
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
    ``fix_ids`` (:func:`db.fixes.push_pending`) after the commit.

    Raises:
        PermissionDenied: ``actor`` may not fix.
        TaggingError: not such a finding.
        NotFoundError: the item is gone.
    """
    actor = require(actor, Permission.FIX)
    finding = _finding_of(session, finding_id, FIX_NOT_STICKING)
    changes = [
        FixChange(
            item_id=finding.evidence["item_id"],
            field=change["field"],
            new_value=change["fixed_value"],
            seen_value=change["ml_value"],
        )
        for change in finding.evidence.get("changes", [])
    ]
    outcome = apply_fixes(session, actor, changes, source=FixSource.CARRY_OVER, refresh=False)
    _set_state(
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
    outcome = apply_fixes(session, actor, changes, source=FixSource.CARRY_OVER, refresh=False)
    if candidates:
        for finding in session.scalars(
            select(Finding).where(
                Finding.detector == FIX_NOT_STICKING,
                Finding.subject.in_([c.subject for c in candidates]),
                Finding.state != FindingState.FIXED,
            )
        ):
            reason = f"fix carried over to image_key {finding.evidence['image_key']}"
            _set_state(finding, FindingState.FIXED, actor.username, reason)
    session.flush()
    return outcome


# --- after a scrape ------------------------------------------------------------------------------


@dataclass
class AfterScrape:
    """What :func:`after_scrape` did."""

    carried_fix_ids: list[int] = field(default_factory=list)
    refresh: RefreshReport | None = None
    pushed: int = 0


def after_scrape(
    sessions: sessionmaker[Session], scrape_id: int, *, ml: object | None = None
) -> AfterScrape | None:
    """Carry fixes over (if the advertiser asks for it) and refresh the findings.

    ``tagging.scrape.run_scrape`` calls it once its items are stored. It never fails the scrape:
    a problem is logged and None returned (the next scrape or fix refreshes again).

    Args:
        ml: the scrape's :class:`tagging.ml_client.MLClient`, to push carried-over fixes at once;
            without it the worker's periodic push sends them.
    """
    try:
        result = AfterScrape()
        with sessions.begin() as session:
            scrape = session.get(Scrape, scrape_id)
            if scrape is None:
                return None
            advertiser = session.get_one(Advertiser, scrape.advertiser_id)
            if advertiser.auto_carry_fixes:
                outcome = carry_over_fixes(
                    session, AUTO_CARRY_ACTOR, advertiser_id=advertiser.id, scrape_id=scrape_id
                )
                result.carried_fix_ids = outcome.fix_ids
            result.refresh = refresh_findings(
                session, advertiser_id=advertiser.id, scrape_id=scrape_id
            )
        if result.carried_fix_ids and ml is not None:
            result.pushed = push_pending(sessions, ml, fix_ids=result.carried_fix_ids).synced
        return result
    except Exception:
        # Findings are advisory: a bug or a database hiccup here must not lose a whole scrape.
        log.exception("weird-result findings of scrape %s were not refreshed", scrape_id)
        return None


__all__ = [
    "ACCEPTED",
    "AUTO_CARRY_ACTOR",
    "AfterScrape",
    "FindingView",
    "RefreshReport",
    "accept",
    "after_scrape",
    "carry_over_finding",
    "carry_over_fixes",
    "choose_value",
    "conflicting_image_keys",
    "finding_counts",
    "get_finding",
    "ignore_finding",
    "list_findings",
    "load_facts",
    "mark_conflicting",
    "mark_fixed",
    "refresh_findings",
    "retag",
    "set_auto_carry",
]
