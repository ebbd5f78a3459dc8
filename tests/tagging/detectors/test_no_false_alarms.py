"""No false alarms: ordinary scrapes, bad input and advertisers without a scrape raise nothing."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from db.models import Scrape, ScrapeStatus, utcnow
from tagging.detectors.facts import load_facts
from tagging.detectors.registry import DETECTORS
from tests.utils.world import World, photos, placeholders, refresh


def normal_world(session: Session) -> World:
    """Three advertisers, three ordinary scrapes each, no fix: nothing is weird."""
    world = World(session)
    for name in ("Sunrise Motors", "Lakeside Auto", "Harbor Autos"):
        advertiser = world.advertiser(name)
        rows = (
            photos(name, 24) + placeholders(name, 4) + [{"name": f"{name}-gone", "status": "error"}]
        )
        for _ in range(3):
            world.scrape(advertiser, rows)
    return world


def test_normal_scrapes_raise_nothing(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        normal_world(session)
    assert refresh(sessions) == []


@pytest.mark.parametrize("detector", sorted(DETECTORS))
def test_each_detector_is_silent_on_a_normal_scrape(
    sessions: sessionmaker[Session], detector: str
) -> None:
    with sessions.begin() as session:
        normal_world(session)
        assert DETECTORS[detector](load_facts(session)) == []


@pytest.mark.parametrize(
    "rows",
    [
        pytest.param([], id="empty scrape"),
        pytest.param([{"name": "only", "type": "Dealer"}], id="one item"),
        pytest.param([{"name": "only", "type": "Placeholder"}], id="one placeholder"),
        pytest.param(
            [{"name": f"n{i}", "image": {"hash_": None}} for i in range(6)], id="no phash"
        ),
        pytest.param(
            [{"name": f"bad{i}", "image": {"hash_": "not-a-hash"}} for i in range(6)],
            id="garbage phash",
        ),
        pytest.param([{"name": f"e{i}", "status": "error"} for i in range(8)], id="image errors"),
    ],
)
@pytest.mark.parametrize("history", [0, 2], ids=["no history", "history"])
def test_bad_input_raises_nothing_and_does_not_fail(
    sessions: sessionmaker[Session], rows: list[dict[str, Any]], history: int
) -> None:
    with sessions.begin() as session:
        world = World(session)
        advertiser = world.advertiser("Tiny Cars")
        for _ in range(history):
            world.scrape(advertiser, rows)
        world.scrape(advertiser, rows)
        for detect in DETECTORS.values():
            assert detect(load_facts(session)) == []
    assert refresh(sessions) == []


def test_an_advertiser_never_scraped_or_only_failed_raises_nothing(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        world = World(session)
        world.advertiser("Never Scraped")
        failed = world.advertiser("Unreadable Sitemap")
        session.add(
            Scrape(advertiser_id=failed.id, status=ScrapeStatus.FAILED, finished_at=utcnow())
        )
    assert refresh(sessions) == []
