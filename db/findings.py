"""Weird-result findings: how they are stored, read, and change state.

The detectors (:mod:`tagging.detectors`) state what they find as :class:`Candidate` findings;
:func:`store_candidates` keeps them as :class:`~db.models.Finding` rows with a state:

* a new finding is ``open``;
* a finding no longer detected is ``fixed`` by ``system``;
* an ``ignored`` (or manually ``fixed``) finding keeps its state while its evidence fingerprint
  stays the same, and is reopened when the evidence changes.

Every function takes a Session and leaves the transaction to its caller. Writes check the actor's
role (:func:`db.accounts.require`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.accounts import SYSTEM_ACTOR, Actor, Permission, require
from db.errors import InvalidInput, NotFoundError
from db.models import Advertiser, Finding, FindingState, Severity, as_utc, utcnow
from db.vocab import CASES, GLOBAL_DETECTORS, NEAR_DUPLICATES

NO_LONGER_DETECTED = "no longer detected: the latest data does not show it any more"


@dataclass(frozen=True)
class Candidate:
    """A finding as a detector states it; ``identity`` holds the facts its fingerprint covers.

    The identity leaves out what changes with every scrape (item and scrape ids), so that an
    ignored finding stays ignored across scrapes until the facts themselves change.
    """

    detector: str
    subject: str
    advertiser_id: int | None
    scrape_id: int | None
    severity: str
    explanation: str
    evidence: dict[str, Any]
    identity: Any

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.identity)


def fingerprint(identity: Any) -> str:
    """SHA-256 of ``identity`` as canonical JSON (sorted keys)."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# --- storing what the detectors found ------------------------------------------------------------


@dataclass
class RefreshReport:
    """What one :func:`store_candidates` changed (finding ids)."""

    opened: list[int] = field(default_factory=list)
    reopened: list[int] = field(default_factory=list)
    resolved: list[int] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)


def store_candidates(
    session: Session,
    candidates: Iterable[Candidate],
    *,
    advertiser_id: int | None = None,
    now: datetime | None = None,
) -> RefreshReport:
    """Bring the stored findings up to date with what the detectors found (caller's transaction).

    A candidate not stored yet opens a finding; a stored one is updated (and reopened when its
    evidence changed after it was ignored or fixed); an open finding no candidate produced any more
    is fixed by ``system``.

    Args:
        candidates: every detector's candidates for the scope.
        advertiser_id: the scope was this advertiser's own findings (None: everyone's); open
            findings of other advertisers are left alone, except the global detectors'.
    """
    now = now or utcnow()
    existing = {
        (f.detector, f.subject): f
        for f in session.scalars(select(Finding).where(Finding.detector.in_(list(CASES))))
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
            set_state(finding, FindingState.FIXED, SYSTEM_ACTOR, NO_LONGER_DETECTED, now)
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
        set_state(finding, FindingState.OPEN, SYSTEM_ACTOR, f"reopened, {why} ({was})", now)
        return True
    return False


def set_state(
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
        state_at=as_utc(finding.state_at),
        detected_at=as_utc(finding.detected_at) or utcnow(),
        updated_at=as_utc(finding.updated_at) or utcnow(),
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
        InvalidInput: no reason given.
        NotFoundError: no such finding.
    """
    actor = require(actor, Permission.FIX)
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("say why the finding is ignored: the reason is kept with it")
    finding = get_finding(session, finding_id, lock=True)
    set_state(finding, FindingState.IGNORED, actor.username, reason[:2000])
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
    set_state(finding, FindingState.FIXED, actor.username, (reason or "").strip()[:2000] or None)
    session.flush()


def mark_conflicting(session: Session, actor: Actor | None, finding_id: int) -> None:
    """Mark a near-duplicates finding's images as conflicting examples (kept out of datasets).

    Raises:
        PermissionDenied: ``actor`` may not fix.
        InvalidInput: the finding is not about near-duplicates.
    """
    actor = require(actor, Permission.FIX)
    finding = finding_of(session, finding_id, NEAR_DUPLICATES)
    finding.conflicting = True
    set_state(
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


def finding_of(session: Session, finding_id: int, detector: str) -> Finding:
    """The finding ``finding_id``, locked, which must be one of ``detector``'s.

    Raises:
        NotFoundError: there is none.
        InvalidInput: it is another detector's.
    """
    finding = get_finding(session, finding_id, lock=True)
    if finding.detector != detector:
        raise InvalidInput(
            f"finding {finding_id} is about {CASES.get(finding.detector, finding.detector)}, "
            f"not {CASES[detector]}"
        )
    return finding
