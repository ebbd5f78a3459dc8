"""Case 5, ``fix_not_sticking``: a fix that did not stick (the image came back under a new key)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from db.models import Severity
from db.vocab import FIX_NOT_STICKING
from tests.utils.world import World, key_of, of, phash, picture, refresh, republished, thumbnail_of


def test_a_fixed_image_back_under_a_new_key_with_the_ml_label_did_not_stick(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        _, second = republished(session)
    (finding,) = of(refresh(sessions), FIX_NOT_STICKING)
    assert finding.severity == Severity.WARNING and finding.scrape_id == second.id
    evidence = finding.evidence
    assert (evidence["image_key"], evidence["matched_key"], evidence["match"]) == (
        key_of("new"),
        key_of("old"),
        "sha256",
    )
    assert [(c["field"], c["ml_value"], c["fixed_value"]) for c in evidence["changes"]] == [
        ("image_type", "Dealer", "Stock")
    ]
    assert "same bytes" in finding.explanation and "Carry the fix over" in finding.explanation


def test_a_near_copy_matches_by_perceptual_hash_when_the_thumbnails_agree(
    sessions: sessionmaker[Session],
) -> None:
    copy = thumbnail_of(picture(1).resize((400, 300)), quality=50)
    with sessions.begin() as session:
        republished(session, same_bytes=False, hash_=phash(0xF0F3), thumb=copy)
    (finding,) = of(refresh(sessions), FIX_NOT_STICKING)
    assert (finding.evidence["match"], finding.evidence["distance"]) == ("phash", 2)


@pytest.mark.parametrize(
    "image",
    [
        pytest.param({"hash_": phash(0xF0F3), "thumb": thumbnail_of(picture(2))}, id="look-alike"),
        pytest.param({"hash_": phash(0xF0F3), "size": (640, 480)}, id="other size"),
        pytest.param({"hash_": phash(0xFFFF0000)}, id="far hash"),
        pytest.param({"hash_": None}, id="no phash"),
    ],
)
def test_other_pictures_are_not_taken_for_the_fixed_one(
    sessions: sessionmaker[Session], image: dict[str, Any]
) -> None:
    with sessions.begin() as session:
        republished(session, same_bytes=False, **image)
    assert of(refresh(sessions), FIX_NOT_STICKING) == []


def test_a_fix_that_stuck_or_another_dealers_fix_is_not_flagged(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        world = World(session)
        sunrise, summit = world.advertiser("Sunrise Motors"), world.advertiser("Summit")
        same = {"sha": "c" * 64}
        first = world.scrape(sunrise, [{"name": "old", "image": same}, {"name": "kept"}])
        world.fix(first, "old", "Stock")
        world.fix(first, "kept", "Stock")
        # The ML cache had the fix: the new key came back already Stock.
        world.scrape(sunrise, [{"name": "new", "type": "Stock", "image": same}, {"name": "kept"}])
        # Summit lists the same file under its own key: case 6, not its fix.
        world.scrape(summit, [{"name": "summit-copy", "image": same}])
    assert of(refresh(sessions), FIX_NOT_STICKING) == []
