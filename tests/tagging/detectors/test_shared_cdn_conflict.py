"""Case 4, ``shared_cdn_conflict``: advertisers sharing a CDN disagree."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from db.models import FixSource
from db.vocab import SHARED_CDN_CONFLICT
from tests.utils.world import World, key_of, of, photos, refresh, shared_cdn

ADVERTISER = FixSource.ADVERTISER


def test_advertisers_fixing_one_image_differently_disagree(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        world, lakeside, metro = shared_cdn(session)
        world.fix(lakeside, "shared-1", "Stock", user="advertiser:Lakeside", source="advertiser")
        # Metro's next scrape showed Lakeside's Stock (one cache entry); Metro puts Dealer back.
        world.fix(metro, "shared-1", "Stock", user="advertiser:Metro")
        world.fix(metro, "shared-1", "Dealer", user="advertiser:Metro")
    (finding,) = of(refresh(sessions), SHARED_CDN_CONFLICT)
    assert "Lakeside Auto says Stock, Metro Car Center says Dealer" in finding.explanation
    assert finding.evidence["current"] == {"Lakeside Auto": "Stock", "Metro Car Center": "Dealer"}
    assert [t["new_value"] for t in finding.evidence["timeline"]] == ["Stock", "Stock", "Dealer"]
    assert {i["advertiser"] for i in finding.evidence["images"]} == {
        "Lakeside Auto",
        "Metro Car Center",
    }


def test_back_and_forth_between_two_people_is_flagged_but_a_self_correction_is_not(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        world = World(session)
        advertiser = world.advertiser("Lakeside Auto")
        scrape = world.scrape(advertiser, photos("l", 4))
        world.fix(scrape, "l-1", "Stock", user="ana")
        world.fix(scrape, "l-1", "Dealer", user="advertiser:Lakeside", source="advertiser")
        world.fix(scrape, "l-1", "Stock", user="ana")
        # One analyst changing her mind twice is not a fight.
        world.fix(scrape, "l-2", "Stock", user="bob")
        world.fix(scrape, "l-2", "Dealer", user="bob")
        world.fix(scrape, "l-2", "Stock", user="bob")
    (finding,) = of(refresh(sessions), SHARED_CDN_CONFLICT)
    assert finding.evidence["image_key"] == key_of("l-1")
    assert "back and forth by advertiser:Lakeside, ana" in finding.explanation


def test_advertisers_agreeing_on_a_shared_image_raise_nothing(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        world, lakeside, metro = shared_cdn(session)
        world.fix(lakeside, "shared-1", "Stock", user="advertiser:Lakeside", source=ADVERTISER)
        world.fix(metro, "shared-1", "Stock", user="advertiser:Metro", source=ADVERTISER)
    assert of(refresh(sessions), SHARED_CDN_CONFLICT) == []
