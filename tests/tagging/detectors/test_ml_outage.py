"""Case 1, ``ml_outage``: the ML system failed to respond (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from db.findings import list_findings
from db.models import Advertiser, FindingState, Severity
from db.vocab import ML_OUTAGE
from tests.utils.world import World, of, outage_rows, photos, placeholders, refresh


def test_ml_outage_is_flagged_against_the_baseline_and_relaunch_is_the_remedy(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        world = World(session)
        advertiser = world.advertiser("Sunrise Motors")
        world.scrape(advertiser, photos("a", 18) + placeholders("a", 2))
        scrape = world.scrape(advertiser, outage_rows("a", failed=6))
    (finding,) = of(refresh(sessions), ML_OUTAGE)
    assert finding.severity == Severity.WARNING
    assert finding.scrape_id == scrape.id
    assert finding.explanation.startswith("ML system failed to respond")
    assert "6 got no answer from the ML server" in finding.explanation
    assert "Relaunch the scrape" in finding.explanation
    assert finding.evidence["ml_failures"] == 6
    assert finding.evidence["baseline_share"] == pytest.approx(0.1)
    assert finding.evidence["review"] == {"advertiser": "Sunrise Motors", "status": ["ml_failure"]}
    assert len(finding.evidence["images"]) == 6


@pytest.mark.parametrize(
    ("failed", "ok", "severity"),
    [
        (10, 10, Severity.CRITICAL),  # half the sitemap without answers
        (20, 0, Severity.CRITICAL),  # all of it
        (9, 11, Severity.WARNING),  # less than half: a partial outage
    ],
)
def test_an_outage_of_most_of_a_scrape_is_critical_at_once(
    sessions: sessionmaker[Session], failed: int, ok: int, severity: Severity
) -> None:
    with sessions.begin() as session:
        world = World(session)
        advertiser = world.advertiser("Sunrise Motors")
        world.scrape(advertiser, photos("a", 20))
        world.scrape(advertiser, outage_rows("a", failed=failed, ok=ok))
    (finding,) = of(refresh(sessions), ML_OUTAGE)
    assert finding.severity == severity
    assert finding.evidence["failed_again_after"] is None
    # The first time, the remedy is still a relaunch; the dev team only if that fails too.
    assert "Relaunch the scrape" in finding.explanation
    assert "If it fails again, tell the dev team." in finding.explanation
    urgent = "Most of the sitemap has the defaults: relaunch the scrape now." in finding.explanation
    assert urgent is (severity == Severity.CRITICAL)


def test_photos_the_ml_server_answered_as_placeholders_count_toward_most(
    sessions: sessionmaker[Session],
) -> None:
    """No ``ml_failure`` at all, but 12 of 20 known photos came back "Placeholder, no color"."""
    rows_before = photos("a", 20)
    lost = [
        {**row, "type": "Placeholder", "color": None} if i < 12 else row
        for i, row in enumerate(rows_before)
    ]
    with sessions.begin() as session:
        world = World(session)
        advertiser = world.advertiser("Sunrise Motors")
        world.scrape(advertiser, rows_before)
        world.scrape(advertiser, lost)
    (finding,) = of(refresh(sessions), ML_OUTAGE)
    assert (finding.evidence["lost"], finding.severity) == (12, Severity.CRITICAL)


def test_a_relaunch_that_fails_again_is_critical_and_a_good_one_resolves_it(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        world = World(session)
        advertiser = world.advertiser("Sunrise Motors")
        world.scrape(advertiser, photos("a", 20))
        first = world.scrape(advertiser, outage_rows("a", failed=20, ok=0))
        again = world.scrape(advertiser, outage_rows("a", failed=20, ok=0))
    findings = of(refresh(sessions), ML_OUTAGE)
    assert [(f.scrape_id, f.severity) for f in findings] == [(again.id, Severity.CRITICAL)]
    assert "tell the dev team" in findings[0].explanation
    assert findings[0].evidence["failed_again_after"] == first.id

    with sessions.begin() as session:
        World(session).scrape(session.get_one(Advertiser, advertiser.id), photos("a", 20))
    assert of(refresh(sessions), ML_OUTAGE) == []
    with sessions() as session:
        (resolved,) = list_findings(session, states=[FindingState.FIXED])
    assert resolved.state_by == "system" and "no longer detected" in (resolved.state_reason or "")


def test_placeholders_without_ml_failure_count_only_when_they_were_photos_before(
    sessions: sessionmaker[Session],
) -> None:
    """The ML server answered "Placeholder, no color" for photos it knew as Dealer/Stock."""
    rows_before = photos("a", 20)
    lost = [
        {**row, "type": "Placeholder", "color": None} if i < 8 else row
        for i, row in enumerate(rows_before)
    ]
    with sessions.begin() as session:
        world = World(session)
        advertiser = world.advertiser("Sunrise Motors")
        world.scrape(advertiser, rows_before)
        world.scrape(advertiser, lost)
    (finding,) = of(refresh(sessions), ML_OUTAGE)
    assert finding.evidence["lost"] == 8 and finding.evidence["ml_failures"] == 0
    assert "were Dealer or Stock photos in earlier scrapes" in finding.explanation


def test_new_placeholders_or_a_few_ml_failures_are_not_an_outage(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        world = World(session)
        new_inventory = world.advertiser("New Inventory")
        world.scrape(new_inventory, photos("n", 20))
        # Ten new vehicles waiting for photos: real placeholders, never photos before.
        world.scrape(new_inventory, photos("n", 20) + placeholders("n", 10))
        flaky = world.advertiser("Flaky")
        world.scrape(flaky, photos("f", 40))
        world.scrape(flaky, outage_rows("f", failed=2, ok=38))  # 5%: below the share
        no_history = world.advertiser("No History")
        world.scrape(no_history, photos("h", 10) + placeholders("h", 10))
    assert of(refresh(sessions), ML_OUTAGE) == []


def test_a_one_item_scrape_the_ml_server_did_not_answer_is_an_outage(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        world = World(session)
        world.scrape(world.advertiser("Tiny"), outage_rows("t", failed=1, ok=0))
    assert len(of(refresh(sessions), ML_OUTAGE)) == 1
