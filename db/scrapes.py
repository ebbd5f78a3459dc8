"""Scrapes and their items: starting one, storing its batches, finishing it, and reading them.

:mod:`tagging.ingest.scrape` orchestrates a scrape (sitemap, ML server, batches); every write it
makes goes through these functions. Each takes a Session and leaves the transaction to its caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import and_, func, insert, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from db.engine import upsert
from db.models import (
    Advertiser,
    Image,
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
) -> None:
    """Store one batch: its items, the images they show, new thumbnails, the running counts.

    Args:
        items: ``SitemapItem`` rows (column → value).
        images: ``Image`` rows; an image seen before only gets its ``last_seen`` updated.
        thumbnails: ``Thumbnail`` rows; one that is stored already is left as it is.
    """
    scrape = session.get_one(Scrape, scrape_id)
    _set_counts(scrape, counts)
    scrape.heartbeat_at = utcnow()
    if items:
        session.execute(insert(SitemapItem), list(items))
    upsert(session, Image.__table__, list(images), key=["image_key"], update=["last_seen"])
    if thumbnails:
        wanted = [row["image_key"] for row in thumbnails]
        known = set(
            session.scalars(select(Thumbnail.image_key).where(Thumbnail.image_key.in_(wanted)))
        )
        fresh = [row for row in thumbnails if row["image_key"] not in known]
        upsert(session, Thumbnail.__table__, fresh, key=["image_key"], update=[])


def finish_scrape(
    session: Session,
    scrape_id: int,
    *,
    status: str,
    counts: ScrapeCounts,
    seconds: float,
    error: str | None,
) -> None:
    """Mark the scrape finished with its final counts and problems."""
    scrape = session.get_one(Scrape, scrape_id)
    scrape.finished_at = utcnow()
    scrape.status = status
    _set_counts(scrape, counts)
    scrape.seconds = seconds
    scrape.error = error


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
