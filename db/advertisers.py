"""Advertisers: adding them, finding them, and the overview of their latest scrapes.

Every function takes a Session and leaves the transaction to its caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.errors import Conflict, InvalidInput, NotFoundError
from db.models import Advertiser, Scrape, SitemapItem


def add_advertiser(
    session: Session, name: str, sitemap_url: str, *, color_from_feed: bool = False
) -> Advertiser:
    """Register an advertiser; its name must be new."""
    name = name.strip()
    if not name:
        raise InvalidInput("an advertiser needs a name")
    if not sitemap_url.startswith(("http://", "https://")):
        raise InvalidInput(f"the sitemap URL must start with http:// or https://: {sitemap_url!r}")
    advertiser = Advertiser(name=name, sitemap_url=sitemap_url, color_from_feed=color_from_feed)
    try:
        with session.begin_nested():
            session.add(advertiser)
    except IntegrityError as exc:
        raise Conflict(f"an advertiser named {name!r} exists already") from exc
    return advertiser


def upsert_advertiser(
    session: Session, name: str, sitemap_url: str, *, color_from_feed: bool = False
) -> Advertiser:
    """Register an advertiser or update its sitemap and scrape config (for the demo set-up)."""
    advertiser = session.scalar(select(Advertiser).where(Advertiser.name == name))
    if advertiser is None:
        return add_advertiser(session, name, sitemap_url, color_from_feed=color_from_feed)
    advertiser.sitemap_url = sitemap_url
    advertiser.color_from_feed = color_from_feed
    return advertiser


def get_advertiser(session: Session, name: str) -> Advertiser:
    """The advertiser called ``name`` (case-insensitive)."""
    advertiser = session.scalar(
        select(Advertiser).where(func.lower(Advertiser.name) == name.strip().lower())
    )
    if advertiser is None:
        raise NotFoundError(
            f"no advertiser named {name!r}: see `python -m tagging advertisers list`"
        )
    return advertiser


def list_advertisers(session: Session) -> list[Advertiser]:
    return list(session.scalars(select(Advertiser).order_by(Advertiser.name)))


@dataclass(frozen=True)
class AdvertiserOverview:
    """One row of the home page: an advertiser and its latest scrape."""

    name: str
    sitemap_url: str
    color_from_feed: bool
    scrape_id: int | None
    scrape_status: str | None
    scraped_at: datetime | None
    items: int
    dealer: int
    stock: int
    placeholder: int
    failed: int


def advertiser_overview(session: Session) -> list[AdvertiserOverview]:
    """Counts per advertiser from its latest finished scrape, in two queries."""
    latest = (
        select(Scrape.advertiser_id, func.max(Scrape.id).label("scrape_id"))
        .where(Scrape.finished_at.is_not(None))
        .group_by(Scrape.advertiser_id)
        .subquery()
    )
    rows = session.execute(
        select(Advertiser, Scrape)
        .outerjoin(latest, latest.c.advertiser_id == Advertiser.id)
        .outerjoin(Scrape, Scrape.id == latest.c.scrape_id)
        .order_by(Advertiser.name)
    ).all()
    scrape_ids = [scrape.id for _, scrape in rows if scrape is not None]
    counts: dict[tuple[int, str], int] = {}
    if scrape_ids:
        for scrape_id, image_type, count in session.execute(
            select(SitemapItem.scrape_id, SitemapItem.image_type, func.count())
            .where(SitemapItem.scrape_id.in_(scrape_ids))
            .group_by(SitemapItem.scrape_id, SitemapItem.image_type)
        ):
            counts[(scrape_id, image_type)] = count
    overview = []
    for advertiser, scrape in rows:
        sid = scrape.id if scrape else -1
        overview.append(
            AdvertiserOverview(
                name=advertiser.name,
                sitemap_url=advertiser.sitemap_url,
                color_from_feed=advertiser.color_from_feed,
                scrape_id=scrape.id if scrape else None,
                scrape_status=scrape.status if scrape else None,
                scraped_at=scrape.finished_at if scrape else None,
                items=scrape.item_count if scrape else 0,
                dealer=counts.get((sid, "Dealer"), 0),
                stock=counts.get((sid, "Stock"), 0),
                placeholder=counts.get((sid, "Placeholder"), 0),
                failed=scrape.failed_count if scrape else 0,
            )
        )
    return overview


def advertiser_names(session: Session) -> list[str]:
    """Every advertiser's name, in order (what ``scrape --all`` scrapes)."""
    return list(session.scalars(select(Advertiser.name).order_by(Advertiser.name)))
