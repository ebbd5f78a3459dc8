"""Findings' storage, states and remedies (db.findings), on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, select
from sqlalchemy.orm import Session, sessionmaker

from db.engine import alembic_config, make_engine, migrate
from db.findings import (
    conflicting_image_keys,
    get_finding,
    ignore_finding,
    list_findings,
    mark_conflicting,
    mark_fixed,
    set_auto_carry,
)
from db.models import (
    Advertiser,
    FindingState,
    FixSource,
    ManualFix,
    Role,
    Severity,
    SitemapItem,
    SyncStatus,
)
from db.vocab import (
    ADVERTISER_PLACEHOLDER,
    FIX_NOT_STICKING,
    LEGACY_PLACEHOLDER,
    NEAR_DUPLICATES,
    SHARED_CDN_CONFLICT,
)
from tagging.detectors.remedies import ACCEPTED, accept, carry_over_fixes, choose_value, retag
from tagging.errors import NotFoundError, PermissionDenied, TaggingError
from tests.utils.factories import actor
from tests.utils.world import (
    World,
    key_of,
    near_pair,
    of,
    outage_rows,
    photos,
    refresh,
    republished,
    shared_cdn,
)

ANALYST = actor(Role.ANALYST, "ana")
MANAGER = actor(Role.MANAGER, "max")
LEGACY = {"type": "Placeholder", "color": "N/A"}


ADVERTISER = FixSource.ADVERTISER


def one(sessions: sessionmaker[Session], detector: str) -> int:
    (finding,) = of(refresh(sessions), detector)
    return finding.id


def test_findings_are_listed_most_severe_then_newest_first(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        world = World(session)
        sunrise = world.advertiser("Sunrise Motors")
        world.scrape(sunrise, photos("s", 10))
        world.scrape(sunrise, outage_rows("s", failed=10, ok=0))
        world.scrape(sunrise, outage_rows("s", failed=10, ok=0))  # critical: failed again
        metro = world.advertiser("Metro")
        world.scrape(metro, [{"name": "m-old", **LEGACY}])  # warning
        summit = world.advertiser("Summit")
        scrape = world.scrape(summit, photos("x", 3))
        world.fix(scrape, "x-1", "Placeholder")  # info
    findings = refresh(sessions)
    assert [f.severity for f in findings] == [Severity.CRITICAL, Severity.WARNING, Severity.INFO]
    with sessions() as session:
        assert [f.advertiser for f in list_findings(session, advertiser_id=metro.id)] == ["Metro"]
        assert list_findings(session, detector=LEGACY_PLACEHOLDER)[0].advertiser == "Metro"
        assert list_findings(session, states=[FindingState.IGNORED]) == []
        as_json = findings[0].as_dict()
    assert as_json["severity"] == "critical" and as_json["detected_at"].startswith("20")


def test_ignoring_needs_a_reason_and_the_fix_permission(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        world = World(session)
        world.scrape(world.advertiser("Metro"), [{"name": "m-old", **LEGACY}])
    finding_id = one(sessions, LEGACY_PLACEHOLDER)
    with sessions.begin() as session:
        with pytest.raises(PermissionDenied):
            ignore_finding(session, MANAGER, finding_id, "looks fine")
        with pytest.raises(PermissionDenied):
            ignore_finding(session, None, finding_id, "looks fine")
        with pytest.raises(TaggingError, match="say why"):
            ignore_finding(session, ANALYST, finding_id, "   ")
        with pytest.raises(NotFoundError):
            ignore_finding(session, ANALYST, 999_999, "looks fine")
        ignore_finding(session, ANALYST, finding_id, "the old cache, known")
    with sessions() as session:
        finding = get_finding(session, finding_id)
        assert (finding.state, finding.state_by, finding.state_reason) == (
            FindingState.IGNORED,
            "ana",
            "the old cache, known",
        )
        assert finding.state_at is not None


def test_marked_fixed_by_hand_stays_fixed_while_the_evidence_is_the_same(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        world = World(session)
        world.scrape(world.advertiser("Metro"), [{"name": "m-old", **LEGACY}])
    finding_id = one(sessions, LEGACY_PLACEHOLDER)
    with sessions.begin() as session:
        with pytest.raises(PermissionDenied):
            mark_fixed(session, MANAGER, finding_id)
        mark_fixed(session, ANALYST, finding_id, "asked the dev team to purge the cache")
    assert refresh(sessions) == []
    with sessions() as session:
        assert get_finding(session, finding_id).state == FindingState.FIXED


def test_retag_an_advertiser_placeholder_or_accept_it(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        world = World(session)
        scrape = world.scrape(world.advertiser("Summit"), photos("x", 4))
        world.fix(scrape, "x-1", "Placeholder", user="advertiser:Summit", source="advertiser")
        world.fix(scrape, "x-2", "Placeholder", user="advertiser:Summit", source="advertiser")
    first, second = (f.id for f in of(refresh(sessions), ADVERTISER_PLACEHOLDER))
    with sessions.begin() as session:
        with pytest.raises(PermissionDenied):
            retag(session, MANAGER, first, "Dealer")
        with pytest.raises(TaggingError, match="not an Image Type"):
            retag(session, ANALYST, first, "Car")
        with pytest.raises(TaggingError, match="not Near-duplicates"):
            mark_conflicting(session, ANALYST, first)
        outcome = retag(session, ANALYST, first, "Dealer")
        accept(session, ANALYST, second)
    assert len(outcome.fix_ids) == 1
    assert of(refresh(sessions), ADVERTISER_PLACEHOLDER) == []
    with sessions() as session:
        retagged, accepted = get_finding(session, first), get_finding(session, second)
        assert (retagged.state, retagged.state_reason) == (
            FindingState.FIXED,
            "re-tagged as Dealer",
        )
        assert (accepted.state, accepted.state_reason) == (FindingState.IGNORED, ACCEPTED)
        fix = session.get_one(ManualFix, outcome.fix_ids[0])
        assert (fix.old_value, fix.new_value, fix.user, fix.sync_status) == (
            "Placeholder",
            "Dealer",
            "ana",
            SyncStatus.PENDING,
        )


def test_choose_one_value_settles_a_shared_cdn_fight_until_the_next_fix(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        world, lakeside, metro = shared_cdn(session)
        world.fix(lakeside, "shared-1", "Stock", user="advertiser:Lakeside", source=ADVERTISER)
    with sessions.begin() as session:
        # Metro flips it back: they disagree (each override is its own).
        world = World(session)
        world.fix(metro, "shared-1", "Stock", user="advertiser:Metro", source=ADVERTISER)
        world.fix(metro, "shared-1", "Dealer", user="advertiser:Metro", source=ADVERTISER)
    finding_id = one(sessions, SHARED_CDN_CONFLICT)
    with sessions.begin() as session:
        with pytest.raises(PermissionDenied):
            choose_value(session, MANAGER, finding_id, "Stock")
        outcome = choose_value(session, ANALYST, finding_id, "Stock")
    assert len(outcome.fix_ids) == 1 and outcome.unchanged == 1  # Lakeside had Stock already
    assert of(refresh(sessions), SHARED_CDN_CONFLICT) == []
    with sessions() as session:
        values = set(
            session.scalars(
                select(SitemapItem.image_type).where(SitemapItem.image_key == key_of("shared-1"))
            )
        )
        finding = get_finding(session, finding_id)
        assert values == {"Stock"}
        assert finding.state == FindingState.FIXED and finding.settled_fix_id == outcome.fix_ids[0]

    # Metro changes it again: the fight is back.
    with sessions.begin() as session:
        World(session).fix(metro, "shared-1", "Dealer", user="advertiser:Metro", source=ADVERTISER)
    (reopened,) = of(refresh(sessions), SHARED_CDN_CONFLICT)
    assert reopened.id == finding_id and reopened.state == FindingState.OPEN


def test_carry_over_fixes_for_an_advertiser(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        _, second = republished(session)
        advertiser_id = second.advertiser_id
    finding_id = one(sessions, FIX_NOT_STICKING)
    with sessions.begin() as session:
        with pytest.raises(PermissionDenied):
            carry_over_fixes(session, MANAGER, advertiser_id=advertiser_id)
        outcome = carry_over_fixes(session, ANALYST, advertiser_id=advertiser_id)
    with sessions() as session:
        (fix,) = [session.get_one(ManualFix, i) for i in outcome.fix_ids]
        assert (fix.image_key, fix.source, fix.old_value, fix.new_value, fix.user) == (
            key_of("new"),
            FixSource.CARRY_OVER,
            "Dealer",
            "Stock",
            "ana",
        )
        item = session.scalars(
            select(SitemapItem).where(SitemapItem.image_key == key_of("new"))
        ).one()
        assert item.image_type == "Stock"
        finding = get_finding(session, finding_id)
        assert finding.state == FindingState.FIXED and "carried over" in (
            finding.state_reason or ""
        )
    assert of(refresh(sessions), FIX_NOT_STICKING) == []


def test_auto_carry_is_set_per_advertiser_with_the_fix_permission(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        world = World(session)
        metro, summit = world.advertiser("Metro"), world.advertiser("Summit")
    with sessions.begin() as session:
        with pytest.raises(PermissionDenied):
            set_auto_carry(session, MANAGER, metro.id, True)
        with pytest.raises(NotFoundError):
            set_auto_carry(session, ANALYST, 999_999, True)
        set_auto_carry(session, ANALYST, metro.id, True)
    with sessions() as session:
        assert session.get_one(Advertiser, metro.id).auto_carry_fixes
        assert not session.get_one(Advertiser, summit.id).auto_carry_fixes
    with sessions.begin() as session:
        set_auto_carry(session, ANALYST, metro.id, False)
    with sessions() as session:
        assert not session.get_one(Advertiser, metro.id).auto_carry_fixes


def test_mark_conflicting_lists_both_images_for_the_dataset_page(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        near_pair(session)
    finding_id = one(sessions, NEAR_DUPLICATES)
    with sessions.begin() as session:
        with pytest.raises(PermissionDenied):
            mark_conflicting(session, MANAGER, finding_id)
        mark_conflicting(session, ANALYST, finding_id)
    assert of(refresh(sessions), NEAR_DUPLICATES) == []  # handled, and the evidence is the same
    with sessions() as session:
        assert conflicting_image_keys(session) == {key_of("orig"), key_of("copy")}
        finding = get_finding(session, finding_id)
        assert finding.conflicting and finding.state == FindingState.FIXED


def test_the_migration_downgrades_and_upgrades(sqlite_url: str) -> None:
    from alembic import command

    command.downgrade(alembic_config(sqlite_url), "0002")
    engine = make_engine(sqlite_url)
    assert "findings" not in inspect(engine).get_table_names()
    assert "auto_carry_fixes" not in {c["name"] for c in inspect(engine).get_columns("advertisers")}
    engine.dispose()
    migrate(sqlite_url)
    engine = make_engine(sqlite_url)
    assert "findings" in inspect(engine).get_table_names()
    engine.dispose()
