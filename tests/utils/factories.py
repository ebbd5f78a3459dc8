"""Plain factory functions for crafted test data (no ML server involved)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.accounts import Actor
from db.models import Advertiser, ItemStatus, Role, Scrape, ScrapeStatus, SitemapItem, utcnow


def make_advertiser(
    session: Session, name: str = "Sunrise Motors", *, color_from_feed: bool = False
) -> Advertiser:
    advertiser = Advertiser(
        name=name,
        sitemap_url=f"https://cdn.example/{name.lower().replace(' ', '-')}.xml",
        color_from_feed=color_from_feed,
    )
    session.add(advertiser)
    session.flush()
    return advertiser


def make_scrape(
    session: Session,
    advertiser: Advertiser,
    items: Sequence[tuple[str, str | None]] = (("Dealer", "Red"), ("Stock", "Blue")),
    *,
    status: str = ScrapeStatus.SUCCEEDED,
    item_status: str = ItemStatus.OK,
    key_prefix: str = "",
) -> Scrape:
    """A finished scrape whose items have the given (image_type, color), keys ``k0000…``."""
    scrape = Scrape(
        advertiser_id=advertiser.id,
        status=status,
        finished_at=utcnow(),
        item_count=len(items),
        expected_items=len(items),
    )
    session.add(scrape)
    session.flush()
    for position, (image_type, color) in enumerate(items):
        key = f"{key_prefix}{position:04d}".rjust(32, "0")
        session.add(
            SitemapItem(
                scrape_id=scrape.id,
                advertiser_id=advertiser.id,
                position=position,
                page_url=f"https://dealer.example/vehicles/{position}",
                image_url=f"https://cdn.example/{advertiser.id}/{key}.jpg",
                title=f"2021 Test Car {position}",
                image_key=key,
                ml_image_type=image_type,
                ml_color=color,
                image_type=image_type,
                color=color,
                status=item_status,
            )
        )
    session.flush()
    return scrape


def actor(role: Role = Role.ANALYST, username: str | None = None) -> Actor:
    return Actor(username=username or f"{role.value}-user", role=role)


def three_items(sessions: sessionmaker[Session]) -> list[int]:
    """Item ids, in sitemap order, of one finished scrape: Dealer/Red, Stock/None, Dealer/Blue."""
    with sessions.begin() as session:
        scrape = make_scrape(
            session,
            make_advertiser(session),
            [("Dealer", "Red"), ("Stock", None), ("Dealer", "Blue")],
        )
        query = (
            select(SitemapItem.id)
            .where(SitemapItem.scrape_id == scrape.id)
            .order_by(SitemapItem.position)
        )
        return list(session.scalars(query))
