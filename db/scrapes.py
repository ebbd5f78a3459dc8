"""Scrapes and their items: starting one, storing its batches, finishing it, and reading them.

:mod:`tagging.ingest.scrape` orchestrates a scrape (sitemap, ML server, batches); every write it
makes goes through these functions. Each takes a Session and leaves the transaction to its caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, insert, select
from sqlalchemy.orm import Session

from db.engine import upsert
from db.models import Advertiser, Image, Scrape, SitemapItem, Thumbnail, as_utc, utcnow


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
    scrape = Scrape(advertiser_id=advertiser_id, trigger=trigger, requested_by=requested_by)
    session.add(scrape)
    session.flush()
    return scrape


def set_expected_items(session: Session, scrape_id: int, total: int) -> None:
    """How many items the sitemap listed (for progress bars)."""
    session.get_one(Scrape, scrape_id).expected_items = total


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


def latest_scrape(session: Session, advertiser_id: int, *, finished: bool = True) -> Scrape | None:
    """The advertiser's newest scrape (by default only one that has finished)."""
    query = select(Scrape).where(Scrape.advertiser_id == advertiser_id)
    if finished:
        query = query.where(Scrape.finished_at.is_not(None))
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


STALE_AFTER = timedelta(hours=2)
"""An unfinished scrape older than this was abandoned (its worker died): it no longer counts."""


def running_scrape(session: Session, advertiser_id: int) -> Scrape | None:
    """The advertiser's unfinished scrape, if one is running."""
    scrape = session.scalar(
        select(Scrape)
        .where(and_(Scrape.advertiser_id == advertiser_id, Scrape.finished_at.is_(None)))
        .order_by(Scrape.id.desc())
        .limit(1)
    )
    if scrape is None:
        return None
    started = as_utc(scrape.started_at)
    return scrape if started is not None and utcnow() - started < STALE_AFTER else None
