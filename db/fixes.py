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

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from db.accounts import Actor, Permission, require
from db.errors import InvalidInput, NotFoundError
from db.models import FixSource, ManualFix, SitemapItem, SyncStatus, utcnow
from db.vocab import COLORS, IMAGE_TYPES

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
    new_value: str
    seen_value: str | None = None


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

    Each change writes a history row (pending sync), and sets the field on the item and on every
    item of the same scrape showing the same image_key. A change to the value the item already
    has is skipped. ``advertiser_id``, when given, restricts the changes to that advertiser's
    items (the advertiser endpoint). The weird-results findings are recomputed in the same
    transaction, unless ``refresh`` is False (a caller that refreshes them itself).

    Raises:
        PermissionDenied: ``actor`` may not fix.
        InvalidInput: an unknown field or value, or an item that has no image to fix.
        NotFoundError: an item that does not exist (or not for ``advertiser_id``).
    """
    actor = require(actor, Permission.FIX)
    for change in changes:
        _validate(change)
    outcome = FixOutcome()
    outcome.advertiser_ids = set()
    # Lock in a stable order so that two bulk fixes over the same items cannot deadlock.
    for change in sorted(changes, key=lambda c: (c.item_id, c.field)):
        item = session.get(SitemapItem, change.item_id, with_for_update=True)
        if item is None or (advertiser_id is not None and item.advertiser_id != advertiser_id):
            raise NotFoundError(f"no sitemap item {change.item_id}")
        if not item.image_key:
            raise InvalidInput(
                f"item {item.id} has no image to fix: it could not be fetched ({item.error})"
            )
        current = getattr(item, change.field)
        if current == change.new_value:
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
            sync_status=SyncStatus.PENDING,
            superseded_fix_id=superseded.id if superseded else None,
        )
        session.add(fix)
        session.execute(
            update(SitemapItem)
            .where(SitemapItem.scrape_id == item.scrape_id, SitemapItem.image_key == item.image_key)
            .values({change.field: change.new_value})
        )
        session.flush()
        outcome.fix_ids.append(fix.id)
        outcome.advertiser_ids.add(item.advertiser_id)
    return outcome


def _validate(change: FixChange) -> None:
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


def pending_fixes(
    session: Session, *, fix_ids: Sequence[int] | None = None, limit: int = 1000
) -> list[ManualFix]:
    """Fixes still waiting for the ML server's acknowledgement, oldest first."""
    query = (
        select(ManualFix)
        .where(ManualFix.sync_status == SyncStatus.PENDING)
        .order_by(ManualFix.id)
        .limit(limit)
    )
    if fix_ids is not None:
        query = query.where(ManualFix.id.in_(list(fix_ids)))
    return list(session.scalars(query))


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
