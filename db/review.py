"""Queries behind the sitemap review page: counts, filtered pages of items, thumbnails, history.

Everything is filtered and paginated in SQL, so a 5,000-item sitemap costs the same as a small one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Exists,
    Select,
    UnaryExpression,
    case,
    exists,
    func,
    or_,
    select,
)
from sqlalchemy.orm import InstrumentedAttribute, Session

from db.errors import InvalidInput
from db.models import ItemStatus, ManualFix, SitemapItem, SyncStatus, Thumbnail

NO_COLOR = "None"
"""How the review filters name a missing color."""

FIXED = "fixed"
PENDING_SYNC = "pending_sync"
STATUS_FILTERS: tuple[str, ...] = (
    ItemStatus.OK,
    ItemStatus.ML_FAILURE,
    ItemStatus.ERROR,
    FIXED,
    PENDING_SYNC,
)

BY_POSITION = "position"
"""Sitemap order."""
BY_CONFIDENCE = "confidence"
"""The model's least confident Image Types first, where its mistakes are; items it gave none
(ML failures, image errors, items scraped before it was kept) last; ties in sitemap order."""
SORTS: tuple[str, ...] = (BY_POSITION, BY_CONFIDENCE)


@dataclass(frozen=True)
class ReviewFilter:
    """What the analyst narrowed the sitemap to; empty means everything."""

    image_types: tuple[str, ...] = ()
    colors: tuple[str, ...] = ()
    """Color names; ``"None"`` matches items without a color."""
    statuses: tuple[str, ...] = ()
    """Item statuses, plus ``fixed`` (has a manual fix) and ``pending_sync``."""
    text: str = ""
    """Case-insensitive substring of the image URL, the vehicle page URL or the title."""
    sort: str = BY_POSITION
    """The order of the items, one of :data:`SORTS`."""

    def __post_init__(self) -> None:
        """Refuse an unknown sort at once, before any query (it may come from a shared URL).

        Raises:
            InvalidInput: ``sort`` is not one of :data:`SORTS`.
        """
        if self.sort not in SORTS:
            raise InvalidInput(f"unknown sort {self.sort!r}: use one of {', '.join(SORTS)}")


@dataclass(frozen=True)
class ReviewItem:
    id: int
    position: int
    page_url: str
    image_url: str
    title: str | None
    image_key: str | None
    ml_image_type: str
    ml_color: str | None
    ml_confidence: float | None
    """The model's probability of ``ml_image_type``; None when it gave none."""
    ml_probabilities: dict[str, float] | None
    """Every class's probability, by the model that answered; None when it gave none."""
    image_type: str
    color: str | None
    image_type_source: str
    """Where the value comes from (:class:`db.models.LabelSource`): ml, fix, override, ..."""
    color_source: str
    status: str
    error: str | None
    fixes: int
    """How many manual fixes this image_key has, from anyone, in any scrape."""
    pending: bool
    """Some fix of this image has not reached the ML server yet."""


@dataclass(frozen=True)
class ReviewCounts:
    total: int
    by_type: dict[str, int]
    by_color: dict[str, int]
    by_status: dict[str, int]


def _fixed_clause() -> Exists:
    return exists().where(ManualFix.image_key == SitemapItem.image_key)


def _pending_clause() -> Exists:
    return exists().where(
        ManualFix.image_key == SitemapItem.image_key,
        ManualFix.sync_status == SyncStatus.PENDING,
    )


def _filtered(query: Select, scrape_id: int, review_filter: ReviewFilter) -> Select:
    query = query.where(SitemapItem.scrape_id == scrape_id)
    f = review_filter
    if f.image_types:
        query = query.where(SitemapItem.image_type.in_(f.image_types))
    if f.colors:
        named = [c for c in f.colors if c != NO_COLOR]
        clauses: list[ColumnElement[bool]] = [SitemapItem.color.in_(named)] if named else []
        if NO_COLOR in f.colors:
            clauses.append(SitemapItem.color.is_(None))
        query = query.where(or_(*clauses))
    if f.statuses:
        plain = [
            s for s in f.statuses if s in (ItemStatus.OK, ItemStatus.ML_FAILURE, ItemStatus.ERROR)
        ]
        status_clauses: list[ColumnElement[bool]] = [SitemapItem.status.in_(plain)] if plain else []
        if FIXED in f.statuses:
            status_clauses.append(_fixed_clause())
        if PENDING_SYNC in f.statuses:
            status_clauses.append(_pending_clause())
        query = query.where(or_(*status_clauses))
    text = f.text.strip().lower()
    if text:
        pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        query = query.where(
            or_(
                func.lower(SitemapItem.image_url).like(pattern, escape="\\"),
                func.lower(SitemapItem.page_url).like(pattern, escape="\\"),
                func.lower(func.coalesce(SitemapItem.title, "")).like(pattern, escape="\\"),
            )
        )
    return query


def _order(review_filter: ReviewFilter) -> list[UnaryExpression[Any]]:
    """The ORDER BY of ``review_filter.sort``, ending with the id so that pages never overlap."""
    in_sitemap_order = [SitemapItem.position.asc(), SitemapItem.id.asc()]
    if review_filter.sort == BY_CONFIDENCE:
        # PostgreSQL puts NULLs last in ascending order already; SQLite puts them first.
        return [SitemapItem.ml_confidence.asc().nulls_last(), *in_sitemap_order]
    return in_sitemap_order


def review_counts(session: Session, scrape_id: int) -> ReviewCounts:
    """Counts of the whole scrape by current type, color and status (four small queries)."""
    base = select(func.count()).select_from(SitemapItem).where(SitemapItem.scrape_id == scrape_id)

    def grouped(
        column: InstrumentedAttribute[str] | InstrumentedAttribute[str | None],
    ) -> dict[str, int]:
        rows = session.execute(
            select(column, func.count()).where(SitemapItem.scrape_id == scrape_id).group_by(column)
        )
        return {(key if key is not None else NO_COLOR): count for key, count in rows}

    by_status = grouped(SitemapItem.status)
    by_status[FIXED] = session.scalar(base.where(_fixed_clause())) or 0
    by_status[PENDING_SYNC] = session.scalar(base.where(_pending_clause())) or 0
    return ReviewCounts(
        total=session.scalar(base) or 0,
        by_type=grouped(SitemapItem.image_type),
        by_color=grouped(SitemapItem.color),
        by_status=by_status,
    )


def review_page(
    session: Session,
    scrape_id: int,
    review_filter: ReviewFilter,
    *,
    offset: int = 0,
    limit: int = 48,
) -> tuple[list[ReviewItem], int]:
    """One page of the filtered items in ``review_filter.sort`` order, and how many match."""
    total = session.scalar(
        _filtered(select(func.count()).select_from(SitemapItem), scrape_id, review_filter)
    )
    items = list(
        session.scalars(
            _filtered(select(SitemapItem), scrape_id, review_filter)
            .order_by(*_order(review_filter))
            .offset(offset)
            .limit(limit)
        )
    )
    keys = [i.image_key for i in items if i.image_key]
    fixes: dict[str, tuple[int, bool]] = {}
    if keys:
        pending = func.sum(case((ManualFix.sync_status == SyncStatus.PENDING, 1), else_=0))
        for key, count, pending_count in session.execute(
            select(ManualFix.image_key, func.count(), pending)
            .where(ManualFix.image_key.in_(keys))
            .group_by(ManualFix.image_key)
        ):
            fixes[key] = (count, bool(pending_count))
    return [
        ReviewItem(
            id=i.id,
            position=i.position,
            page_url=i.page_url,
            image_url=i.image_url,
            title=i.title,
            image_key=i.image_key,
            ml_image_type=i.ml_image_type,
            ml_color=i.ml_color,
            ml_confidence=i.ml_confidence,
            ml_probabilities=i.ml_probabilities,
            image_type=i.image_type,
            color=i.color,
            image_type_source=i.image_type_source,
            color_source=i.color_source,
            status=i.status,
            error=i.error,
            fixes=fixes.get(i.image_key or "", (0, False))[0],
            pending=fixes.get(i.image_key or "", (0, False))[1],
        )
        for i in items
    ], total or 0


def matching_item_ids(session: Session, scrape_id: int, review_filter: ReviewFilter) -> list[int]:
    """Every matching item id (for "fix all matching this filter"); only fixable items."""
    return list(
        session.scalars(
            _filtered(select(SitemapItem.id), scrape_id, review_filter)
            .where(SitemapItem.image_key.is_not(None))
            .order_by(SitemapItem.position, SitemapItem.id)
        )
    )


def count_fixable(session: Session, scrape_id: int, review_filter: ReviewFilter) -> int:
    """How many ids :func:`matching_item_ids` returns (the matching items with an image)."""
    query = _filtered(select(func.count()).select_from(SitemapItem), scrape_id, review_filter)
    return session.scalar(query.where(SitemapItem.image_key.is_not(None))) or 0


def items_by_id(session: Session, item_ids: list[int]) -> list[SitemapItem]:
    return list(session.scalars(select(SitemapItem).where(SitemapItem.id.in_(item_ids))))


def thumbnails(session: Session, image_keys: list[str]) -> dict[str, bytes]:
    """The stored JPEG thumbnails of these keys (missing keys are left out)."""
    if not image_keys:
        return {}
    rows = session.execute(
        select(Thumbnail.image_key, Thumbnail.jpeg).where(Thumbnail.image_key.in_(image_keys))
    )
    return {key: jpeg for key, jpeg in rows}


def thumbnail_keys(session: Session, image_keys: list[str]) -> set[str]:
    """Which of these keys have a stored thumbnail (without reading the JPEGs)."""
    if not image_keys:
        return set()
    return set(
        session.scalars(select(Thumbnail.image_key).where(Thumbnail.image_key.in_(image_keys)))
    )


@dataclass(frozen=True)
class HistoryEntry:
    id: int
    created_at: datetime
    user: str
    source: str
    field: str
    old_value: str | None
    new_value: str | None
    sync_status: str


def image_history(session: Session, image_key: str) -> list[HistoryEntry]:
    """Every manual fix of one image, newest first."""
    return [
        HistoryEntry(
            id=f.id,
            created_at=f.created_at,
            user=f.user,
            source=f.source,
            field=f.field,
            old_value=f.old_value,
            new_value=f.new_value,
            sync_status=f.sync_status,
        )
        for f in session.scalars(
            select(ManualFix).where(ManualFix.image_key == image_key).order_by(ManualFix.id.desc())
        )
    ]
