"""Queries shared by the CLI and the pages."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from db.advertisers import add_advertiser, advertiser_overview, get_advertiser, upsert_advertiser
from db.models import Scrape, SitemapItem, utcnow
from db.scrapes import latest_scrape
from tagging.errors import NotFoundError, TaggingError


def make_item(scrape: Scrape, position: int, image_type: str) -> SitemapItem:
    return SitemapItem(
        scrape_id=scrape.id,
        advertiser_id=scrape.advertiser_id,
        position=position,
        page_url=f"http://cdn/v/{position}",
        image_url=f"http://cdn/i/{position}.jpg",
        ml_image_type=image_type,
        image_type=image_type,
    )


def test_add_advertiser_refuses_duplicates_and_bad_urls(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        add_advertiser(session, "Sunrise Motors", "http://cdn/sitemap.xml")
    with sessions.begin() as session, pytest.raises(TaggingError, match="exists already"):
        add_advertiser(session, "Sunrise Motors", "http://cdn/other.xml")
    with sessions.begin() as session, pytest.raises(TaggingError, match="http"):
        add_advertiser(session, "Other", "file:///etc/passwd")
    with sessions() as session:
        assert get_advertiser(session, "sunrise motors").sitemap_url == "http://cdn/sitemap.xml"
        with pytest.raises(NotFoundError):
            get_advertiser(session, "Nobody")


def test_upsert_advertiser_updates_the_sitemap(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        upsert_advertiser(session, "A", "http://one/")
    with sessions.begin() as session:
        upsert_advertiser(session, "A", "http://two/", color_from_feed=True)
    with sessions() as session:
        advertiser = get_advertiser(session, "A")
        assert (advertiser.sitemap_url, advertiser.color_from_feed) == ("http://two/", True)


def test_overview_counts_the_latest_finished_scrape_only(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        advertiser = add_advertiser(session, "A", "http://a/")
        add_advertiser(session, "B (never scraped)", "http://b/")
        old = Scrape(advertiser_id=advertiser.id, finished_at=utcnow(), item_count=1)
        session.add(old)
        session.flush()
        session.add(make_item(old, 0, "Stock"))
        new = Scrape(advertiser_id=advertiser.id, finished_at=utcnow(), item_count=3)
        session.add(new)
        session.flush()
        session.add_all([make_item(new, 0, "Dealer"), make_item(new, 1, "Dealer")])
        session.add(make_item(new, 2, "Placeholder"))
        running = Scrape(advertiser_id=advertiser.id)  # not finished: ignored
        session.add(running)
    with sessions() as session:
        rows = {row.name: row for row in advertiser_overview(session)}
        assert latest_scrape(session, advertiser.id).id == new.id  # type: ignore[union-attr]
    assert (rows["A"].dealer, rows["A"].stock, rows["A"].placeholder) == (2, 0, 1)
    assert rows["A"].scrape_id == new.id
    assert rows["B (never scraped)"].scrape_id is None
    assert rows["B (never scraped)"].items == 0
