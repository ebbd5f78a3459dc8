"""Scrapes and their items: starting one, storing its batches, finishing it, and reading them.

:mod:`tagging.ingest.scrape` orchestrates a scrape (sitemap, ML server, batches); every write it
makes goes through these functions. Each takes a Session and leaves the transaction to its caller.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, and_, func, insert, literal, or_, select, true, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from db.engine import upsert
from db.models import (
    Advertiser,
    Image,
    ItemStatus,
    ManualFix,
    Scrape,
    ScrapeStatus,
    SitemapItem,
    Thumbnail,
    as_utc,
    utcnow,
)


@dataclass
class ScrapeCounts:
    """A scrape's running counts, written as it goes so that pages can show its progress."""

    items: int = 0
    cached: int = 0
    classified: int = 0
    failed: int = 0
    ml_failures: int = 0


def start_scrape(
    session: Session, advertiser_id: int, *, trigger: str, requested_by: str | None
) -> Scrape:
    """A new running scrape of the advertiser (flushed: it has its id)."""
    scrape = Scrape(
        advertiser_id=advertiser_id,
        trigger=trigger,
        requested_by=requested_by,
        heartbeat_at=utcnow(),
    )
    session.add(scrape)
    session.flush()
    return scrape


def set_expected_items(session: Session, scrape_id: int, total: int) -> None:
    """How many items the sitemap listed (for progress bars); also a heartbeat."""
    scrape = session.get_one(Scrape, scrape_id)
    scrape.expected_items = total
    scrape.heartbeat_at = utcnow()


def beat(session: Session, scrape_id: int) -> None:
    """The scrape's process is alive: push its lease (:data:`LEASE`) forward."""
    session.execute(
        update(Scrape)
        .where(and_(Scrape.id == scrape_id, Scrape.finished_at.is_(None)))
        .values(heartbeat_at=utcnow())
    )


def store_batch(
    session: Session,
    scrape_id: int,
    counts: ScrapeCounts,
    items: Sequence[dict[str, Any]],
    images: Sequence[dict[str, Any]],
    thumbnails: Sequence[dict[str, Any]],
    *,
    add: bool = False,
) -> None:
    """Store one batch: its items, the images they show, new thumbnails, the running counts.

    Args:
        counts: the scrape's counts so far; with ``add``, this batch's, added in SQL to the stored
            ones (several workers store batches of one scrape at once).
        items: ``SitemapItem`` rows (column → value). A position the scrape holds already
            violates ``ix_sitemap_items_scrape_position`` (``IntegrityError``): nothing is stored.
        images: ``Image`` rows; an image seen before only gets its ``last_seen`` (and, when the
            rows give it, ``fresh_until``) updated.
        thumbnails: ``Thumbnail`` rows; one that is stored already is left as it is.
    """
    if add:
        add_counts(session, scrape_id, counts)
    else:
        scrape = session.get_one(Scrape, scrape_id)
        _set_counts(scrape, counts)
        scrape.heartbeat_at = utcnow()
    if items:
        session.execute(insert(SitemapItem), list(items))
    # Rows that give no freshness (older callers) leave the stored one alone.
    renewed = ["last_seen", "fresh_until"] if any("fresh_until" in i for i in images) else []
    upsert(
        session, Image.__table__, list(images), key=["image_key"], update=renewed or ["last_seen"]
    )
    if thumbnails:
        wanted = [row["image_key"] for row in thumbnails]
        known = set(
            session.scalars(select(Thumbnail.image_key).where(Thumbnail.image_key.in_(wanted)))
        )
        fresh = [row for row in thumbnails if row["image_key"] not in known]
        upsert(session, Thumbnail.__table__, fresh, key=["image_key"], update=[])


def add_counts(session: Session, scrape_id: int, delta: ScrapeCounts) -> None:
    """Add one batch's counts to the scrape's in SQL (exact under concurrent writers); also a
    heartbeat."""
    session.execute(
        update(Scrape)
        .where(Scrape.id == scrape_id)
        .values(
            item_count=Scrape.item_count + delta.items,
            cached_count=Scrape.cached_count + delta.cached,
            classified_count=Scrape.classified_count + delta.classified,
            failed_count=Scrape.failed_count + delta.failed,
            ml_failure_count=Scrape.ml_failure_count + delta.ml_failures,
            heartbeat_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )


def set_counts(
    session: Session, scrape_id: int, counts: ScrapeCounts, *, expected: int | None = None
) -> None:
    """Write the running counts (and, if given, the expected total); also a heartbeat."""
    scrape = session.get_one(Scrape, scrape_id)
    _set_counts(scrape, counts)
    if expected is not None:
        scrape.expected_items = expected
    scrape.heartbeat_at = utcnow()


def finish_scrape(
    session: Session,
    scrape_id: int,
    *,
    status: str,
    counts: ScrapeCounts,
    seconds: float,
    error: str | None,
    sitemap_state: dict[str, Any] | None = None,
    finisher: str | None = None,
) -> bool:
    """Mark the scrape finished with its final counts and problems; returns whether it did.

    Args:
        sitemap_state: what the next scrape needs to tell that the sitemap did not change (see
            ``Scrape.sitemap_state``); None when it could not be read whole.
        finisher: a chunked scrape's elected finisher (``db.chunks.elect_finisher``): the scrape
            is finished only if it is unfinished and still this finisher's (False otherwise).
    """
    if finisher is not None:
        now = utcnow()
        done = session.execute(
            update(Scrape)
            .where(
                Scrape.id == scrape_id,
                Scrape.finished_at.is_(None),
                Scrape.fan_in_by == finisher,
            )
            .values(
                finished_at=now,
                heartbeat_at=now,
                status=status,
                item_count=counts.items,
                failed_count=counts.failed,
                cached_count=counts.cached,
                classified_count=counts.classified,
                ml_failure_count=counts.ml_failures,
                expected_items=counts.items,
                seconds=seconds,
                error=error,
                sitemap_state=sitemap_state,
            )
            .execution_options(synchronize_session="fetch")
        )
        return bool(cast("CursorResult[Any]", done).rowcount)
    scrape = session.get_one(Scrape, scrape_id)
    scrape.finished_at = utcnow()
    scrape.status = status
    _set_counts(scrape, counts)
    scrape.expected_items = counts.items
    scrape.seconds = seconds
    scrape.error = error
    scrape.sitemap_state = sitemap_state
    return True


# --- re-scraping an unchanged sitemap -----------------------------------------------------------


def _fresh(now: datetime) -> ColumnElement[bool]:
    """An item whose image the ML server called fresh until after ``now`` (and that was ok)."""
    return and_(
        SitemapItem.status == ItemStatus.OK,
        Image.fresh_until.is_not(None),
        Image.fresh_until > now,
    )


def _stale(now: datetime) -> ColumnElement[bool]:
    """Every other item: failed, never checked for freshness, or gone stale (NULLs included)."""
    return or_(
        SitemapItem.status != ItemStatus.OK,
        Image.fresh_until.is_(None),
        Image.fresh_until <= now,
    )


_COPY_EXCLUDED = ("id", "scrape_id", "cached")


def copy_fresh_items(
    session: Session, from_scrape_id: int, to_scrape_id: int, now: datetime
) -> int:
    """Copy into ``to_scrape_id`` (a new scrape, without items yet) every item of
    ``from_scrape_id`` whose image is fresh at ``now``, in one ``INSERT ... SELECT``; returns how
    many.

    Everything is copied as it was, the resolved labels and their sources included, marked
    ``cached``; the other items (see :func:`stale_items`) are for the scrape to check again.
    """
    columns = [c for c in SitemapItem.__table__.columns if c.name not in _COPY_EXCLUDED]
    source = (
        select(
            literal(to_scrape_id).label("scrape_id"),
            true().label("cached"),
            *(SitemapItem.__table__.c[c.name] for c in columns),
        )
        .select_from(SitemapItem)
        .join(Image, Image.image_key == SitemapItem.image_key)
        .where(SitemapItem.scrape_id == from_scrape_id, _fresh(now))
    )
    names = ["scrape_id", "cached", *(c.name for c in columns)]
    session.execute(insert(SitemapItem).from_select(names, source))
    # Counted (off the scrape's index), not the cursor's rowcount: psycopg reports -1 for an
    # INSERT ... SELECT.
    count = select(func.count()).select_from(SitemapItem)
    return int(session.scalar(count.where(SitemapItem.scrape_id == to_scrape_id)) or 0)


@dataclass(frozen=True)
class StaleItem:
    """An item of the previous scrape to check again: what the sitemap said, and its last key."""

    position: int
    page_url: str
    image_url: str
    title: str | None
    feed_color: str | None
    image_key: str | None


def stale_items(
    session: Session, scrape_id: int, now: datetime, *, after: int = -1, limit: int = 1000
) -> list[StaleItem]:
    """The items of ``scrape_id`` that :func:`copy_fresh_items` leaves out, in sitemap order,
    from position ``after`` on (exclusive): a page of at most ``limit``."""
    rows = session.execute(
        select(
            SitemapItem.position,
            SitemapItem.page_url,
            SitemapItem.image_url,
            SitemapItem.title,
            SitemapItem.feed_color,
            SitemapItem.image_key,
        )
        .outerjoin(Image, Image.image_key == SitemapItem.image_key)
        .where(SitemapItem.scrape_id == scrape_id, SitemapItem.position > after, _stale(now))
        .order_by(SitemapItem.position)
        .limit(limit)
    )
    return [StaleItem(*row) for row in rows]


@dataclass(frozen=True)
class ItemLabels:
    """An item's values and what they are resolved from (to resolve them again)."""

    id: int
    image_key: str
    image_url: str
    sha256: str | None
    ml_image_type: str
    ml_color: str | None
    status: str
    feed_color: str | None
    image_type: str
    image_type_source: str
    color: str | None
    color_source: str


def items_fixed_since(session: Session, scrape_id: int, since: datetime) -> list[ItemLabels]:
    """The items of ``scrape_id`` whose image (by image_key, or by content under another key)
    got a manual fix recorded at or after ``since``: those whose labels may have changed."""
    # Usually there is none: one probe of the index on created_at settles it.
    if session.scalar(select(ManualFix.id).where(ManualFix.created_at >= since).limit(1)) is None:
        return []
    recent = select(ManualFix.image_key).where(ManualFix.created_at >= since)
    recent_shas = (
        select(Image.sha256)
        .join(ManualFix, ManualFix.image_key == Image.image_key)
        .where(ManualFix.created_at >= since, Image.sha256.is_not(None))
    )
    rows = session.execute(
        select(
            SitemapItem.id,
            SitemapItem.image_key,
            SitemapItem.image_url,
            Image.sha256,
            SitemapItem.ml_image_type,
            SitemapItem.ml_color,
            SitemapItem.status,
            SitemapItem.feed_color,
            SitemapItem.image_type,
            SitemapItem.image_type_source,
            SitemapItem.color,
            SitemapItem.color_source,
        )
        .outerjoin(Image, Image.image_key == SitemapItem.image_key)
        .where(
            SitemapItem.scrape_id == scrape_id,
            SitemapItem.image_key.is_not(None),
            or_(SitemapItem.image_key.in_(recent), Image.sha256.in_(recent_shas)),
        )
        .order_by(SitemapItem.position)
    )
    return [ItemLabels(**row._asdict()) for row in rows]


def set_item_labels(session: Session, labels: Sequence[dict[str, Any]]) -> None:
    """Write items' resolved labels: rows of ``id``, ``image_type``, ``image_type_source``,
    ``color``, ``color_source``."""
    if labels:
        session.execute(update(SitemapItem), list(labels))


def thumbnail_keys(session: Session, image_urls: Collection[str]) -> set[str]:
    """The image_keys of these URLs (any version seen) whose thumbnail the app already has."""
    urls = sorted(set(image_urls))
    keys: set[str] = set()
    for start in range(0, len(urls), 500):
        keys.update(
            session.scalars(
                select(Image.image_key)
                .join(Thumbnail, Thumbnail.image_key == Image.image_key)
                .where(Image.url.in_(urls[start : start + 500]))
            )
        )
    return keys


def _set_counts(scrape: Scrape, counts: ScrapeCounts) -> None:
    scrape.item_count, scrape.failed_count = counts.items, counts.failed
    scrape.cached_count, scrape.classified_count = counts.cached, counts.classified
    scrape.ml_failure_count = counts.ml_failures


# --- reading -------------------------------------------------------------------------------------


SUCCESSFUL = (ScrapeStatus.SUCCEEDED, ScrapeStatus.COMPLETED_WITH_ERRORS)
"""The statuses of a scrape whose items can be trusted (failed and running ones are not)."""


def latest_scrape(
    session: Session, advertiser_id: int, *, finished: bool = True, successful: bool = False
) -> Scrape | None:
    """The advertiser's newest scrape (by default only one that has finished).

    Args:
        successful: only one that finished with its items (succeeded or completed with errors),
            never a failed (no items) or running one.
    """
    query = select(Scrape).where(Scrape.advertiser_id == advertiser_id)
    if finished or successful:
        query = query.where(Scrape.finished_at.is_not(None))
    if successful:
        query = query.where(Scrape.status.in_([str(s) for s in SUCCESSFUL]))
    return session.scalar(query.order_by(Scrape.started_at.desc(), Scrape.id.desc()).limit(1))


def scrape_items(session: Session, scrape_id: int) -> list[SitemapItem]:
    """A scrape's items in sitemap order."""
    return list(
        session.scalars(
            select(SitemapItem)
            .where(SitemapItem.scrape_id == scrape_id)
            .order_by(SitemapItem.position)
        )
    )


def recent_scrapes(session: Session, limit: int = 20) -> list[tuple[Scrape, str]]:
    """The newest scrapes of all advertisers, with the advertiser's name."""
    return [
        (scrape, name)
        for scrape, name in session.execute(
            select(Scrape, Advertiser.name)
            .join(Advertiser, Advertiser.id == Scrape.advertiser_id)
            .order_by(Scrape.started_at.desc(), Scrape.id.desc())
            .limit(limit)
        )
    ]


def scrapes_of(session: Session, advertiser_id: int, limit: int = 30) -> list[Scrape]:
    """The advertiser's scrapes, newest first."""
    return list(
        session.scalars(
            select(Scrape)
            .where(Scrape.advertiser_id == advertiser_id)
            .order_by(Scrape.started_at.desc(), Scrape.id.desc())
            .limit(limit)
        )
    )


LEASE = timedelta(minutes=2)
"""A running scrape whose heartbeat (``Scrape.heartbeat_at``) is older than this was abandoned:
its process died. The scrape beats at its start, after every stored batch and every
``LEASE / 4`` while it waits (the heartbeat thread of :func:`tagging.ingest.scrape.run_scrape`)."""


def _abandoned(session: Session, advertiser_id: int | None = None) -> list[Scrape]:
    cutoff = utcnow() - LEASE
    heartbeat = func.coalesce(Scrape.heartbeat_at, Scrape.started_at)
    query = select(Scrape).where(and_(Scrape.finished_at.is_(None), heartbeat < cutoff))
    if advertiser_id is not None:
        query = query.where(Scrape.advertiser_id == advertiser_id)
    return list(session.scalars(query.order_by(Scrape.id)))


def expire_abandoned_scrapes(session: Session, advertiser_id: int | None = None) -> list[int]:
    """Mark failed every running scrape whose heartbeat is older than :data:`LEASE`.

    Its error says "abandoned: no heartbeat since …". Only unfinished scrapes change, so a
    scrape that finishes at the same moment keeps its own result. Returns the ids marked.
    """
    now = utcnow()
    expired = []
    for scrape in _abandoned(session, advertiser_id):
        last = as_utc(scrape.heartbeat_at or scrape.started_at)
        note = f"abandoned: no heartbeat since {last:%Y-%m-%d %H:%M:%S} UTC"
        marked = session.execute(
            update(Scrape)
            .where(and_(Scrape.id == scrape.id, Scrape.finished_at.is_(None)))
            .values(
                finished_at=now,
                status=ScrapeStatus.FAILED,
                error=note if not scrape.error else f"{note}\n{scrape.error}",
            )
            .execution_options(synchronize_session="fetch")
        )
        if cast("CursorResult[Any]", marked).rowcount:
            expired.append(scrape.id)
    return expired


def running_scrape(session: Session, advertiser_id: int) -> Scrape | None:
    """The advertiser's unfinished scrape, if one is running (its heartbeat within the lease).

    A scrape whose heartbeat is older than :data:`LEASE` does not count; callers that want it
    marked failed call :func:`expire_abandoned_scrapes` first.
    """
    scrape = session.scalar(
        select(Scrape)
        .where(and_(Scrape.advertiser_id == advertiser_id, Scrape.finished_at.is_(None)))
        .order_by(Scrape.id.desc())
        .limit(1)
    )
    if scrape is None:
        return None
    heartbeat = as_utc(scrape.heartbeat_at or scrape.started_at)
    return scrape if heartbeat is not None and utcnow() - heartbeat < LEASE else None


def find_item(
    session: Session,
    scrape_id: int,
    *,
    image_url: str | None = None,
    image_key: str | None = None,
) -> SitemapItem | None:
    """The first item of a scrape (in sitemap order) showing this image (both must match when both
    are given), or None."""
    if image_url is None and image_key is None:
        return None
    query = select(SitemapItem).where(SitemapItem.scrape_id == scrape_id)
    if image_url is not None:
        query = query.where(SitemapItem.image_url == image_url)
    if image_key is not None:
        query = query.where(SitemapItem.image_key == image_key)
    return session.scalar(query.order_by(SitemapItem.position).limit(1))
