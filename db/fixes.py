"""Storage of manual fixes: the history rows, the items they change, and their sync state.

The history row *is* the outbox: it is written with ``sync_status = pending`` in the caller's
transaction, and :func:`tagging.fixes.push_pending` sends pending rows to the ML server's cache
until it acknowledges them. The fix id travels with each push, so a retry never applies a fix
twice. Recording a fix as a user action (with the weird-result refresh that follows it) is
:func:`tagging.fixes.record_fixes`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from db.accounts import Actor, Permission, require
from db.errors import InvalidInput, NotFoundError
from db.labels import current_fix_ids
from db.models import (
    Advertiser,
    FixScope,
    FixSource,
    LabelSource,
    ManualFix,
    Scrape,
    SitemapItem,
    SyncState,
    SyncStatus,
    as_utc,
    utcnow,
)
from db.vocab import COLORS, IMAGE_TYPES, PLACEHOLDER

FIELDS: dict[str, tuple[str, ...]] = {"image_type": IMAGE_TYPES, "color": COLORS}
"""The fields a manual fix may change, with their allowed values."""


@dataclass(frozen=True)
class FixChange:
    """One dropdown changed by a user.

    Attributes:
        item_id: the sitemap item shown.
        field: ``image_type`` or ``color``.
        new_value: the value chosen.
        seen_value: the value the page showed when the user chose; when the item has changed
            since, another fix won a race against this one and the user is told.
    """

    item_id: int
    field: str
    new_value: str | None
    """None only for a color, and only as the Placeholder rule's consequence (``implied``)."""
    seen_value: str | None = None
    implied: bool = False
    """Added by the Placeholder rule (a placeholder has no color), not chosen by the user."""


@dataclass(frozen=True)
class RaceNotice:
    """A change that overwrote a fix its author had not seen (both are kept in the history)."""

    item_id: int
    field: str
    seen_value: str | None
    overwritten_value: str | None
    overwritten_by: str
    overwritten_at: datetime | None


@dataclass
class FixOutcome:
    """What :func:`apply_fixes` recorded."""

    fix_ids: list[int] = field(default_factory=list)
    """The history rows written (pending sync), in the order they were written."""
    unchanged: int = 0
    """Changes to the value the item already had: skipped."""
    races: list[RaceNotice] = field(default_factory=list)
    advertiser_ids: set[int] = field(default_factory=set)
    """Whose items the fixes changed."""


def apply_fixes(
    session: Session,
    actor: Actor | None,
    changes: Sequence[FixChange],
    *,
    source: FixSource = FixSource.ANALYST,
    advertiser_id: int | None = None,
) -> FixOutcome:
    """Record ``changes`` in the caller's transaction.

    Each change writes a history row (pending sync) and sets the field on the items it governs:

    * a **team fix** (any ``source`` but ``advertiser``) applies to every advertiser showing the
      image: the item's scrape and every advertiser's latest scrape listing the same image_key,
      except where that advertiser has its own override;
    * an **advertiser override** (``source=advertiser``, with ``advertiser_id``) applies to that
      advertiser's items only; nobody else's values, nor the prediction, change;
    * a team member's fix of an item whose value is that advertiser's override replaces the
      override (it is recorded in the advertiser's scope): the person looked at that advertiser's
      image and decided, as on the Weird results page's "re-tag" and "choose one value".

    A change to the value the item already has is skipped. A change of the Image Type to
    Placeholder also sets the color to None (a placeholder has no color), with its own history row.

    Raises:
        PermissionDenied: ``actor`` may not fix.
        InvalidInput: an unknown field or value, or an item that has no image to fix.
        NotFoundError: an item that does not exist (or not for ``advertiser_id``).
    """
    actor = require(actor, Permission.FIX)
    for change in changes:
        validate_change(change)
    outcome = FixOutcome()
    # Lock in a stable order so that two bulk fixes over the same items cannot deadlock.
    for change in _with_placeholder_rule(sorted(changes, key=lambda c: (c.item_id, c.field))):
        item = session.get(SitemapItem, change.item_id, with_for_update=True)
        if item is None or (advertiser_id is not None and item.advertiser_id != advertiser_id):
            raise NotFoundError(f"no sitemap item {change.item_id}")
        if not item.image_key:
            raise InvalidInput(
                f"item {item.id} has no image to fix: it could not be fetched ({item.error})"
            )
        current = getattr(item, change.field)
        if current == change.new_value:
            if not change.implied:
                outcome.unchanged += 1
            continue
        superseded = None
        if change.seen_value is not None and change.seen_value != current:
            superseded = _latest_fix(session, item.image_key, change.field)
            outcome.races.append(
                RaceNotice(
                    item_id=item.id,
                    field=change.field,
                    seen_value=change.seen_value,
                    overwritten_value=current,
                    overwritten_by=superseded.user if superseded else "a scrape",
                    overwritten_at=superseded.created_at if superseded else None,
                )
            )
        source_column = f"{change.field}_source"
        overridden = getattr(item, source_column) == LabelSource.OVERRIDE
        scope = (
            FixScope.ADVERTISER if source == FixSource.ADVERTISER or overridden else FixScope.TEAM
        )
        label_source = LabelSource.OVERRIDE if scope == FixScope.ADVERTISER else LabelSource.FIX
        fix = ManualFix(
            image_key=item.image_key,
            image_url=item.image_url,
            advertiser_id=item.advertiser_id,
            sitemap_item_id=item.id,
            field=change.field,
            old_value=current,
            new_value=change.new_value,
            user=actor.username,
            source=source,
            scope=scope,
            sync_status=SyncStatus.PENDING,
            superseded_fix_id=superseded.id if superseded else None,
        )
        session.add(fix)
        values = {change.field: change.new_value, source_column: label_source}
        same_image = SitemapItem.image_key == item.image_key
        if scope == FixScope.ADVERTISER:
            governed = and_(SitemapItem.scrape_id == item.scrape_id, same_image)
        else:
            latest = (
                select(func.max(Scrape.id))
                .where(Scrape.finished_at.is_not(None))
                .group_by(Scrape.advertiser_id)
            )
            governed = and_(
                or_(SitemapItem.scrape_id == item.scrape_id, SitemapItem.scrape_id.in_(latest)),
                same_image,
                getattr(SitemapItem, source_column) != LabelSource.OVERRIDE,
            )
        session.execute(
            update(SitemapItem)
            .where(governed)
            .values(values)
            .execution_options(synchronize_session=False)
        )
        session.flush()
        session.refresh(item)
        outcome.fix_ids.append(fix.id)
        outcome.advertiser_ids.add(item.advertiser_id)
    return outcome


def _with_placeholder_rule(changes: Sequence[FixChange]) -> list[FixChange]:
    """``changes``, plus "color: None" after each change to Placeholder that sets no color."""
    colored = {c.item_id for c in changes if c.field == "color"}
    out: list[FixChange] = []
    for change in changes:
        out.append(change)
        placeholder = change.field == "image_type" and change.new_value == PLACEHOLDER
        if placeholder and change.item_id not in colored:
            out.append(FixChange(change.item_id, "color", None, implied=True))
    return out


def validate_change(change: FixChange) -> None:
    """Check the field and the value of one change.

    Raises:
        InvalidInput: an unknown field, or a value that is not one of its labels.
    """
    if change.implied:
        return
    allowed = FIELDS.get(change.field)
    if allowed is None:
        raise InvalidInput(f"unknown field {change.field!r}: use image_type or color")
    if change.new_value not in allowed:
        raise InvalidInput(
            f"{change.new_value!r} is not a valid {change.field}: one of {', '.join(allowed)}"
        )


def _latest_fix(session: Session, image_key: str, field_name: str) -> ManualFix | None:
    return session.scalar(
        select(ManualFix)
        .where(ManualFix.image_key == image_key, ManualFix.field == field_name)
        .order_by(ManualFix.id.desc())
        .limit(1)
    )


def fixes_by_id(session: Session, fix_ids: Sequence[int]) -> list[ManualFix]:
    """These history rows, newest first (unknown ids are left out)."""
    if not fix_ids:
        return []
    return list(
        session.scalars(
            select(ManualFix).where(ManualFix.id.in_(list(fix_ids))).order_by(ManualFix.id.desc())
        )
    )


def overwritten_fixes(
    session: Session, username: str, since: datetime
) -> list[tuple[ManualFix, ManualFix]]:
    """The user's fixes since ``since`` that someone else later overwrote: (mine, theirs)."""
    mine = list(
        session.scalars(
            select(ManualFix)
            .where(ManualFix.user == username, ManualFix.created_at >= since)
            .order_by(ManualFix.id)
        )
    )
    found = []
    for fix in mine:
        later = session.scalar(
            select(ManualFix)
            .where(
                ManualFix.image_key == fix.image_key,
                ManualFix.field == fix.field,
                ManualFix.id > fix.id,
                ManualFix.user != username,
            )
            .order_by(ManualFix.id)
            .limit(1)
        )
        if later is not None:
            found.append((fix, later))
    return found


@dataclass(frozen=True)
class PendingFix:
    """A fix to push, with what the ML cache needs to know of it."""

    id: int
    uid: str
    image_key: str
    image_url: str
    field: str
    new_value: str | None
    created_at: datetime
    advertiser: str | None
    """The advertiser whose override it is; None for a team fix (it applies to everyone)."""


def pending_fixes(
    session: Session, *, fix_ids: Sequence[int] | None = None, limit: int = 1000
) -> list[PendingFix]:
    """Fixes still waiting for the ML server's acknowledgement, oldest first."""
    query = (
        select(ManualFix, Advertiser.name)
        .outerjoin(Advertiser, Advertiser.id == ManualFix.advertiser_id)
        .where(ManualFix.sync_status == SyncStatus.PENDING)
        .order_by(ManualFix.id)
        .limit(limit)
    )
    if fix_ids is not None:
        query = query.where(ManualFix.id.in_(list(fix_ids)))
    return [_pending(fix, name) for fix, name in session.execute(query)]


def _pending(fix: ManualFix, advertiser: str | None) -> PendingFix:
    return PendingFix(
        id=fix.id,
        uid=fix.uid,
        image_key=fix.image_key,
        image_url=fix.image_url,
        field=fix.field,
        new_value=fix.new_value,
        created_at=as_utc(fix.created_at) or utcnow(),
        advertiser=advertiser if fix.scope == FixScope.ADVERTISER else None,
    )


def mark_current_fixes_pending(session: Session) -> int:
    """Queue the newest fix of every image, field and scope to be pushed again (the ML cache
    lost its memory); returns how many are now pending."""
    ids = current_fix_ids(session)
    for chunk in range(0, len(ids), 500):
        session.execute(
            update(ManualFix)
            .where(ManualFix.id.in_(ids[chunk : chunk + 500]))
            .values(sync_status=SyncStatus.PENDING)
        )
    return len(ids)


def count_pending(session: Session) -> int:
    """How many fixes are still waiting for the ML server's acknowledgement."""
    query = select(func.count()).where(ManualFix.sync_status == SyncStatus.PENDING)
    return session.scalar(query) or 0


def mark_synced(session: Session, fix_id: int) -> None:
    """The ML server acknowledged fix ``fix_id``."""
    row = session.get_one(ManualFix, fix_id)
    row.sync_status = SyncStatus.SYNCED
    row.synced_at = utcnow()
    row.sync_attempts += 1
    row.last_sync_error = None


def mark_push_failed(session: Session, fix_id: int, error: str) -> None:
    """A push of fix ``fix_id`` failed: it stays pending, with the error for the history page."""
    row = session.get_one(ManualFix, fix_id)
    row.sync_attempts += 1
    row.last_sync_error = error[:1000]


def read_sync_state(session: Session, key: str) -> str | None:
    """A fact the app keeps about a peer (e.g. the ML cache generation it last filled)."""
    row = session.get(SyncState, key)
    return row.value if row is not None else None


def write_sync_state(session: Session, key: str, value: str) -> None:
    row = session.get(SyncState, key, with_for_update=True)
    if row is None:
        session.add(SyncState(key=key, value=value, updated_at=utcnow()))
    else:
        row.value, row.updated_at = value, utcnow()
