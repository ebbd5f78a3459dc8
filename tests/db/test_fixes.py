"""Storage of manual fixes (db.fixes): history, item updates, races, permissions, sync state.

Recording them as a user action and pushing them to the ML server: tests/tagging/test_fixes.py.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.fixes import (
    FixChange,
    apply_fixes,
    count_pending,
    mark_push_failed,
    mark_synced,
    overwritten_fixes,
    pending_fixes,
)
from db.models import ItemStatus, ManualFix, Role, SitemapItem, SyncStatus, utcnow
from tagging.errors import NotFoundError, PermissionDenied, TaggingError
from tests.utils.factories import actor, three_items


@pytest.fixture
def scrape_items(sessions: sessionmaker[Session]) -> list[int]:
    return three_items(sessions)


def test_a_fix_writes_history_and_updates_the_item(
    sessions: sessionmaker[Session], scrape_items: list[int]
) -> None:
    with sessions.begin() as session:
        outcome = apply_fixes(
            session,
            actor(Role.ANALYST, "ana"),
            [
                FixChange(scrape_items[0], "image_type", "Stock", "Dealer"),
                FixChange(scrape_items[1], "color", "White", None),
            ],
        )
    assert len(outcome.fix_ids) == 2 and not outcome.races
    with sessions() as session:
        fixes = list(session.scalars(select(ManualFix).order_by(ManualFix.id)))
        item = session.get_one(SitemapItem, scrape_items[0])
        assert (item.image_type, item.ml_image_type) == ("Stock", "Dealer")  # the ML value is kept
        assert session.get_one(SitemapItem, scrape_items[1]).color == "White"
    first = fixes[0]
    assert (first.field, first.old_value, first.new_value, first.user, first.source) == (
        "image_type",
        "Dealer",
        "Stock",
        "ana",
        "analyst",
    )
    assert first.image_key == item.image_key and first.image_url == item.image_url
    assert first.advertiser_id == item.advertiser_id and first.sitemap_item_id == item.id
    assert first.sync_status == SyncStatus.PENDING
    assert (fixes[1].old_value, fixes[1].new_value) == (None, "White")


def test_the_same_image_on_two_vehicles_is_fixed_once_for_both(
    sessions: sessionmaker[Session], scrape_items: list[int]
) -> None:
    with sessions.begin() as session:
        items = [session.get_one(SitemapItem, i) for i in scrape_items]
        items[2].image_key = items[0].image_key  # the same picture listed twice
    with sessions.begin() as session:
        outcome = apply_fixes(session, actor(), [FixChange(scrape_items[0], "image_type", "Stock")])
    assert len(outcome.fix_ids) == 1
    with sessions() as session:
        assert session.get_one(SitemapItem, scrape_items[2]).image_type == "Stock"


def test_a_change_to_the_current_value_is_skipped(
    sessions: sessionmaker[Session], scrape_items: list[int]
) -> None:
    with sessions.begin() as session:
        outcome = apply_fixes(
            session, actor(), [FixChange(scrape_items[0], "image_type", "Dealer")]
        )
    assert outcome.unchanged == 1 and outcome.fix_ids == []


@pytest.mark.parametrize("role", [Role.MANAGER])
def test_roles_without_fix_are_refused(
    sessions: sessionmaker[Session], scrape_items: list[int], role: Role
) -> None:
    with sessions.begin() as session, pytest.raises(PermissionDenied):
        apply_fixes(session, actor(role), [FixChange(scrape_items[0], "image_type", "Stock")])
    with sessions.begin() as session, pytest.raises(PermissionDenied, match="sign in"):
        apply_fixes(session, None, [FixChange(scrape_items[0], "image_type", "Stock")])
    with sessions() as session:
        assert session.scalars(select(ManualFix)).all() == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (FixChange(0, "image_type", "Truck"), "not a valid image_type"),
        (FixChange(0, "color", "<script>alert(1)</script>"), "not a valid color"),
        (FixChange(0, "title", "x"), "unknown field"),
    ],
)
def test_bad_values_are_refused_before_anything_is_written(
    sessions: sessionmaker[Session], scrape_items: list[int], change: FixChange, message: str
) -> None:
    good = FixChange(scrape_items[0], "image_type", "Stock")
    with sessions.begin() as session, pytest.raises(TaggingError, match=message):
        apply_fixes(session, actor(), [good, replace(change, item_id=scrape_items[1])])
    with sessions() as session:
        assert session.scalars(select(ManualFix)).all() == []
        assert session.get_one(SitemapItem, scrape_items[0]).image_type == "Dealer"


def test_unknown_item_and_item_without_image(
    sessions: sessionmaker[Session], scrape_items: list[int]
) -> None:
    with sessions.begin() as session, pytest.raises(NotFoundError):
        apply_fixes(session, actor(), [FixChange(999_999, "image_type", "Stock")])
    with sessions.begin() as session:
        item = session.get_one(SitemapItem, scrape_items[0])
        item.image_key, item.status, item.error = None, ItemStatus.ERROR, "404"
    with sessions.begin() as session, pytest.raises(TaggingError, match="no image to fix"):
        apply_fixes(session, actor(), [FixChange(scrape_items[0], "image_type", "Stock")])


def test_a_lost_race_is_recorded_and_reported(
    sessions: sessionmaker[Session], scrape_items: list[int]
) -> None:
    item_id = scrape_items[0]
    with sessions.begin() as session:  # Ana saw Dealer and fixed it first
        first = apply_fixes(
            session, actor(username="ana"), [FixChange(item_id, "image_type", "Stock", "Dealer")]
        )
    with sessions.begin() as session:  # Bob also saw Dealer; his fix lands later
        second = apply_fixes(
            session,
            actor(username="bob"),
            [FixChange(item_id, "image_type", "Placeholder", "Dealer")],
        )
    assert len(second.races) == 1
    race = second.races[0]
    assert (race.overwritten_by, race.overwritten_value, race.seen_value) == (
        "ana",
        "Stock",
        "Dealer",
    )
    with sessions() as session:
        history = list(session.scalars(select(ManualFix).order_by(ManualFix.id)))
        assert [(f.user, f.old_value, f.new_value) for f in history] == [
            ("ana", "Dealer", "Stock"),
            ("bob", "Stock", "Placeholder"),
            ("bob", "Red", None),  # a placeholder has no color: its own history row
        ]
        assert history[1].superseded_fix_id == first.fix_ids[0]
        assert (
            session.get_one(SitemapItem, item_id).image_type == "Placeholder"
        )  # the later one wins
        lost = overwritten_fixes(session, "ana", utcnow() - timedelta(hours=1))
    assert [(mine.new_value, theirs.user) for mine, theirs in lost] == [("Stock", "bob")]


def test_concurrent_fixes_of_one_image_are_all_recorded(
    sessions: sessionmaker[Session], scrape_items: list[int]
) -> None:
    errors: list[BaseException] = []
    values = ["Stock", "Placeholder", "Dealer", "Stock"]

    def fix(n: int) -> None:
        try:
            with sessions.begin() as session:
                apply_fixes(
                    session,
                    actor(username=f"user{n}"),
                    [FixChange(scrape_items[0], "image_type", values[n], "Dealer")],
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=fix, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with sessions() as session:
        history = list(
            session.scalars(
                select(ManualFix).where(ManualFix.field == "image_type").order_by(ManualFix.id)
            )
        )
        final = session.get_one(SitemapItem, scrape_items[0]).image_type
    # Every fix that changed something is recorded, chained old→new in commit order.
    assert history, "at least one fix changed the value"
    for before, after in itertools.pairwise(history):
        assert after.old_value == before.new_value
    assert final == history[-1].new_value


def test_sync_state_pending_until_acknowledged(
    sessions: sessionmaker[Session], scrape_items: list[int]
) -> None:
    with sessions.begin() as session:
        outcome = apply_fixes(
            session,
            actor(),
            [
                FixChange(scrape_items[0], "image_type", "Stock"),
                FixChange(scrape_items[1], "color", "White"),
                FixChange(scrape_items[2], "image_type", "Stock"),
            ],
        )
    first, second, third = outcome.fix_ids
    with sessions() as session:
        assert count_pending(session) == 3
        assert [f.id for f in pending_fixes(session)] == [first, second, third]  # oldest first
        assert [f.id for f in pending_fixes(session, limit=2)] == [first, second]
        assert [f.id for f in pending_fixes(session, fix_ids=[third, 999_999])] == [third]

    with sessions.begin() as session:
        mark_push_failed(session, first, "the ML server cannot be reached: " + "x" * 2000)
        mark_synced(session, second)
    with sessions() as session:
        failed, synced = session.get_one(ManualFix, first), session.get_one(ManualFix, second)
        assert (failed.sync_status, failed.sync_attempts, failed.synced_at) == (
            SyncStatus.PENDING,
            1,
            None,
        )
        assert (failed.last_sync_error or "").startswith("the ML server cannot be reached")
        assert len(failed.last_sync_error or "") == 1000  # kept short for the history page
        assert (synced.sync_status, synced.sync_attempts) == (SyncStatus.SYNCED, 1)
        assert synced.synced_at is not None and synced.last_sync_error is None
        assert count_pending(session) == 2
        assert [f.id for f in pending_fixes(session)] == [first, third]

    with sessions.begin() as session:  # a retry that succeeds clears the error
        mark_synced(session, first)
    with sessions() as session:
        retried = session.get_one(ManualFix, first)
        assert (retried.sync_status, retried.sync_attempts) == (SyncStatus.SYNCED, 2)
        assert retried.last_sync_error is None
        assert count_pending(session) == 1
        assert pending_fixes(session, fix_ids=[first, second]) == []
