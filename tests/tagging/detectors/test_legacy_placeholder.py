"""Case 3, ``legacy_placeholder``: the old system's cached placeholders (Color "N/A")."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from db.vocab import ADVERTISER_PLACEHOLDER, LEGACY_PLACEHOLDER
from tests.utils.world import World, of, photos, refresh


def test_legacy_na_color_is_flagged_per_advertiser(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        world = World(session)
        advertiser = world.advertiser("Metro Car Center")
        legacy = {"type": "Placeholder", "color": "N/A", "ml_color": "N/A"}
        world.scrape(
            advertiser,
            [
                *photos("m", 5),
                {"name": "m-old1", **legacy},
                {"name": "m-old2", **legacy, "color": "n/a"},
            ],
        )
    findings = refresh(sessions)
    (finding,) = of(findings, LEGACY_PLACEHOLDER)
    assert finding.evidence["count"] == 2
    assert finding.explanation.startswith("Legacy cached placeholder")
    assert "relaunch the scrape" in finding.explanation
    assert of(findings, ADVERTISER_PLACEHOLDER) == []  # "N/A" is not a color someone chose
