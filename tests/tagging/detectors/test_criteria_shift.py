"""Case 7, ``criteria_shift``: different criteria (a class share jump, a fix rate far above)."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from db.vocab import CRITERIA_SHIFT
from tests.utils.world import World, of, photos, refresh


def criteria_world(session: Session, *, everyone_jumps: bool = False) -> None:
    world = World(session)
    for name in ("Harbor Autos", "Sunrise Motors", "Lakeside Auto"):
        advertiser = world.advertiser(name)
        for _ in range(3):
            world.scrape(advertiser, photos(name, 30, stock_every=3))  # a third Stock
        jumps = name == "Harbor Autos" or everyone_jumps
        last = photos(name, 30, stock_every=3)
        if jumps:  # two thirds Stock now
            last = [
                {**row, "type": "Stock" if i % 3 != 1 else "Dealer"} for i, row in enumerate(last)
            ]
        world.scrape(advertiser, last)


def test_a_class_share_jump_against_its_own_history_is_flagged(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        criteria_world(session)
    (finding,) = of(refresh(sessions), CRITERIA_SHIFT)
    assert finding.advertiser == "Harbor Autos"
    assert finding.evidence["class"] == "Stock"
    assert finding.evidence["baseline_share"] == pytest.approx(1 / 3, abs=0.01)
    assert finding.evidence["share"] == pytest.approx(2 / 3, abs=0.01)
    assert finding.evidence["review"] == {"advertiser": "Harbor Autos", "type": ["Stock"]}
    assert "from 33%" in finding.explanation and "to 67%" in finding.explanation


def test_a_jump_shared_by_every_advertiser_is_not_criteria(
    sessions: sessionmaker[Session],
) -> None:
    """A new model moves everyone: that is not one advertiser's criteria."""
    with sessions.begin() as session:
        criteria_world(session, everyone_jumps=True)
    assert of(refresh(sessions), CRITERIA_SHIFT) == []


def test_a_fix_rate_far_above_every_other_advertiser(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        world = World(session)
        scrapes = {
            name: world.scrape(world.advertiser(name), photos(name, 20))
            for name in ("Harbor Autos", "Sunrise Motors", "Lakeside Auto")
        }
        for i in range(1, 9):
            world.fix(scrapes["Harbor Autos"], f"Harbor Autos-{i}", "Placeholder")
        world.fix(scrapes["Sunrise Motors"], "Sunrise Motors-1", "Stock")
    findings = of(refresh(sessions), CRITERIA_SHIFT)
    assert [(f.advertiser, f.evidence["kind"]) for f in findings] == [("Harbor Autos", "fix_rate")]
    assert findings[0].evidence["rate"] == pytest.approx(0.4)
    assert findings[0].evidence["review"]["status"] == ["fixed"]


def test_a_fix_rate_without_peers_to_compare_with_is_not_judged(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        world = World(session)
        scrape = world.scrape(world.advertiser("Alone"), photos("a", 20))
        for i in range(1, 12):
            world.fix(scrape, f"a-{i}", "Placeholder")
    assert of(refresh(sessions), CRITERIA_SHIFT) == []
