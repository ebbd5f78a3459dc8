"""Case 2, ``advertiser_placeholder``: a Placeholder fixed by the advertiser."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from db.models import FixSource, Severity
from db.vocab import ADVERTISER_PLACEHOLDER
from tests.utils.world import World, key_of, of, photos, refresh


def test_placeholder_with_a_color_is_an_advertiser_fix(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        world = World(session)
        advertiser = world.advertiser("Summit Auto Group")
        scrape = world.scrape(advertiser, photos("s", 6))
        world.fix(
            scrape, "s-1", "Placeholder", user="advertiser:Summit", source=FixSource.ADVERTISER
        )
    (finding,) = of(refresh(sessions), ADVERTISER_PLACEHOLDER)
    assert finding.severity == Severity.INFO
    assert "Placeholder with Color Red" in finding.explanation
    assert "advertiser:Summit (advertiser)" in finding.explanation
    assert finding.evidence["suggested_type"] == "Dealer"
    assert finding.evidence["image_key"] == key_of("s-1")


def test_placeholders_with_the_feeds_color_are_normal(sessions: sessionmaker[Session]) -> None:
    """With ``color_from_feed`` every image carries its vehicle's color, placeholders too."""
    with sessions.begin() as session:
        world = World(session)
        valley = world.advertiser("Valley Trucks", color_from_feed=True)
        world.scrape(
            valley,
            [
                {"name": "v0", "type": "Placeholder", "color": "Blue", "feed_color": "blue"},
                {"name": "v1", "type": "Dealer", "color": "Red", "feed_color": "Red"},
            ],
        )
    assert of(refresh(sessions), ADVERTISER_PLACEHOLDER) == []
