"""Manual fixes as a user action (tagging.fixes): record, refresh findings, push to the ML cache.

The ML server is the real one on loopback (``ml_server``); "unreachable" is a closed loopback
port, and a refusal is the real server refusing a wrong token or a malformed image key.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import requests
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from db.findings import get_finding, list_findings
from db.fixes import FixChange, apply_fixes
from db.models import (
    Advertiser,
    FindingState,
    FixSource,
    ManualFix,
    Role,
    SitemapItem,
    SyncStatus,
)
from db.vocab import ADVERTISER_PLACEHOLDER
from tagging.detectors.refresh import refresh_findings
from tagging.detectors.remedies import accept, retag
from tagging.errors import InvalidInput, NotFoundError, PermissionDenied
from tagging.fixes import (
    push_pending,
    record_fixes,
    run_fix_action,
    save_fixes,
    undo_fixes,
)
from tagging.server.client import MLClient
from tests.utils.factories import actor, three_items
from tests.utils.servers import ML_TOKEN, closed_port, ml_settings


@pytest.fixture
def scrape_items(sessions: sessionmaker[Session]) -> list[int]:
    return three_items(sessions)


@pytest.fixture
def ml(app_settings: object) -> MLClient:
    """A client of the real ML server (``ml_server``, through ``app_settings``)."""
    return MLClient.from_settings(app_settings)  # type: ignore[arg-type]


@pytest.fixture
def ml_down(tmp_path: Path) -> MLClient:
    """A client of an ML server that is not running: nothing listens on its loopback port."""
    settings = ml_settings(
        tmp_path,
        f"sqlite:///{tmp_path / 'unused-cache.sqlite'}",
        ml_url=f"http://127.0.0.1:{closed_port()}",
    )
    return MLClient.from_settings(settings)  # type: ignore[arg-type]


def cached(ml_server: object, key: str, advertiser: str | None = None) -> dict[str, object]:
    """The ML server's cache record of ``key`` (as ``advertiser`` sees it), read over HTTP."""
    response = requests.get(
        f"{ml_server.url}/images/{key}",  # type: ignore[attr-defined]
        params={"advertiser": advertiser} if advertiser else None,
        headers={"Authorization": f"Bearer {ML_TOKEN}"},
        timeout=5,
    )
    response.raise_for_status()
    return response.json()


def placeholder_findings(
    session: Session, states: tuple[str, ...] | None = (FindingState.OPEN,)
) -> list[int]:
    """The ids of "Placeholder fixed by the advertiser" findings (default: the open ones)."""
    return [f.id for f in list_findings(session, detector=ADVERTISER_PLACEHOLDER, states=states)]


# --- record_fixes ---------------------------------------------------------------------------------


def test_record_fixes_raises_a_finding_and_a_later_fix_settles_it(
    sessions: sessionmaker[Session], scrape_items: list[int]
) -> None:
    """An advertiser's override makes a photo a Placeholder with a color: the fix raises
    "Placeholder fixed by the advertiser" in the same transaction; retagging it settles it."""
    with sessions.begin() as session:
        assert placeholder_findings(session) == []
        outcome = record_fixes(
            session,
            actor(Role.ANALYST, "ana"),
            [
                FixChange(scrape_items[0], "image_type", "Placeholder", "Dealer"),
                FixChange(scrape_items[0], "color", "Red", "Red"),  # kept: its own word
            ],
            source=FixSource.ADVERTISER,
        )
        (finding_id,) = placeholder_findings(session)  # visible before the commit
    assert len(outcome.fix_ids) == 1 and outcome.unchanged == 1 and outcome.advertiser_ids
    with sessions() as session:
        fix = session.get_one(ManualFix, outcome.fix_ids[0])
        assert (fix.source, fix.sync_status, fix.new_value) == (
            FixSource.ADVERTISER,
            SyncStatus.PENDING,
            "Placeholder",
        )
        assert get_finding(session, finding_id).evidence["fix_id"] == fix.id

    with sessions.begin() as session:  # an analyst retags that advertiser's image
        retag = record_fixes(
            session, actor(), [FixChange(scrape_items[0], "image_type", "Dealer", "Placeholder")]
        )
    with sessions() as session:
        assert placeholder_findings(session) == []
        # It replaces the override: recorded in that advertiser's scope, not for everyone.
        assert session.get_one(ManualFix, retag.fix_ids[0]).scope == "advertiser"
        settled = get_finding(session, finding_id)
        assert (settled.state, settled.state_by) == (FindingState.FIXED, "system")


def test_record_fixes_without_a_change_leaves_the_findings_alone(
    sessions: sessionmaker[Session], scrape_items: list[int]
) -> None:
    with sessions.begin() as session:
        record_fixes(
            session,
            actor(),
            [
                FixChange(scrape_items[0], "image_type", "Placeholder"),
                FixChange(scrape_items[0], "color", "Red"),
            ],
            source=FixSource.ADVERTISER,
        )
    with sessions.begin() as session:
        (finding_id,) = placeholder_findings(session)
        # The item changes behind the findings' back (no fix): only a refresh would see it.
        session.get_one(SitemapItem, scrape_items[0]).color = None
    with sessions.begin() as session:
        outcome = record_fixes(
            session,
            actor(),
            [FixChange(scrape_items[0], "image_type", "Placeholder")],
            source=FixSource.ADVERTISER,
        )
    assert outcome.fix_ids == [] and outcome.unchanged == 1
    with sessions() as session:
        assert placeholder_findings(session) == [finding_id]  # no refresh ran
    with sessions.begin() as session:
        refresh_findings(session)
        assert placeholder_findings(session) == []


def test_record_fixes_refuses_a_manager_and_writes_nothing(
    sessions: sessionmaker[Session], scrape_items: list[int]
) -> None:
    with sessions.begin() as session, pytest.raises(PermissionDenied):
        record_fixes(
            session, actor(Role.MANAGER), [FixChange(scrape_items[0], "image_type", "Placeholder")]
        )
    with sessions() as session:
        assert session.scalars(select(ManualFix)).all() == []
        assert placeholder_findings(session, states=None) == []


# --- save_fixes -----------------------------------------------------------------------------------


def test_save_fixes_commits_then_pushes_to_the_ml_server(
    sessions: sessionmaker[Session],
    scrape_items: list[int],
    ml_server: object,
    ml: MLClient,
) -> None:
    saved = save_fixes(
        sessions,
        ml,
        actor(Role.ANALYST, "ana"),
        [
            FixChange(scrape_items[0], "image_type", "Stock", "Dealer"),
            FixChange(scrape_items[1], "color", "White", None),
        ],
    )
    assert len(saved.fix_ids) == 2 and saved.outcome is not None
    assert saved.push is not None and (saved.push.synced, saved.push.pending) == (2, 0)
    assert saved.push_error is None
    with sessions() as session:
        fixes = [session.get_one(ManualFix, i) for i in saved.fix_ids]
        assert [f.sync_status for f in fixes] == [SyncStatus.SYNCED, SyncStatus.SYNCED]
        assert all(f.synced_at is not None and f.sync_attempts == 1 for f in fixes)
        first, second = (session.get_one(SitemapItem, i) for i in scrape_items[:2])
    assert cached(ml_server, first.image_key or "")["image_type"] == "Stock"
    assert cached(ml_server, second.image_key or "")["color"] == "White"


def test_save_fixes_keeps_them_pending_when_the_ml_server_is_unreachable(
    sessions: sessionmaker[Session], scrape_items: list[int], ml_down: MLClient
) -> None:
    saved = save_fixes(
        sessions, ml_down, actor(), [FixChange(scrape_items[0], "image_type", "Stock")]
    )
    assert saved.push_error is not None and "cannot be reached" in saved.push_error
    assert saved.push is not None and (saved.push.synced, saved.push.pending) == (0, 1)
    with sessions() as session:  # the fix itself was committed before the push
        fix = session.get_one(ManualFix, saved.fix_ids[0])
        assert (fix.sync_status, fix.sync_attempts) == (SyncStatus.PENDING, 1)
        assert "cannot be reached" in (fix.last_sync_error or "")
        assert session.get_one(SitemapItem, scrape_items[0]).image_type == "Stock"


def test_save_fixes_reports_a_refusal_as_a_push_error(
    sessions: sessionmaker[Session],
    scrape_items: list[int],
    ml_server: object,
    app_settings: object,
) -> None:
    """The server is up but refuses our token: no fix is acknowledged, every one is tried."""
    wrong = MLClient.from_settings(replace(app_settings, ml_token="not-the-token"))  # type: ignore[type-var]
    saved = save_fixes(
        sessions,
        wrong,
        actor(),
        [
            FixChange(scrape_items[0], "image_type", "Stock"),
            FixChange(scrape_items[1], "image_type", "Dealer"),
        ],
    )
    assert saved.push is not None
    assert (saved.push.synced, saved.push.failed, saved.push.pending) == (0, 2, 2)
    assert saved.push.error is None  # not "down": it did not stop at the first one
    assert saved.push_error == "the ML server did not acknowledge every fix"
    with sessions() as session:
        errors = [session.get_one(ManualFix, i).last_sync_error or "" for i in saved.fix_ids]
    assert all("refused our token" in e for e in errors)


def test_save_fixes_without_a_change_pushes_nothing(
    sessions: sessionmaker[Session], scrape_items: list[int], ml_down: MLClient
) -> None:
    saved = save_fixes(
        sessions, ml_down, actor(), [FixChange(scrape_items[0], "image_type", "Dealer")]
    )
    assert saved.outcome is not None and saved.outcome.unchanged == 1
    assert (saved.fix_ids, saved.push, saved.push_error) == ([], None, None)


def test_save_fixes_refused_writes_and_pushes_nothing(
    sessions: sessionmaker[Session], scrape_items: list[int], ml_down: MLClient
) -> None:
    with pytest.raises(PermissionDenied):
        save_fixes(
            sessions,
            ml_down,
            actor(Role.MANAGER),
            [FixChange(scrape_items[0], "image_type", "Stock")],
        )
    with sessions() as session:
        assert session.scalars(select(ManualFix)).all() == []


# --- run_fix_action -------------------------------------------------------------------------------


def open_placeholder_finding(sessions: sessionmaker[Session], item_id: int) -> int:
    """A "Placeholder fixed by the advertiser" finding on ``item_id``, its fix already pushed.

    The advertiser keeps the image's color (Red) beside the Placeholder: its own word."""
    with sessions.begin() as session:
        record_fixes(
            session,
            actor(),
            [FixChange(item_id, "image_type", "Placeholder"), FixChange(item_id, "color", "Red")],
            source=FixSource.ADVERTISER,
        )
        session.execute(update(ManualFix).values(sync_status=SyncStatus.SYNCED))
        (finding_id,) = placeholder_findings(session)
    return finding_id


def test_run_fix_action_with_a_remedy_that_records_no_fix_pushes_nothing(
    sessions: sessionmaker[Session], scrape_items: list[int], ml_down: MLClient
) -> None:
    finding_id = open_placeholder_finding(sessions, scrape_items[0])
    saved = run_fix_action(sessions, ml_down, lambda s: accept(s, actor(), finding_id))
    # Nothing was pushed: the server is down, yet no error and no attempt.
    assert (saved.outcome, saved.push, saved.fix_ids, saved.push_error) == (None, None, [], None)
    with sessions() as session:
        finding = get_finding(session, finding_id)
        assert finding.state == FindingState.IGNORED
        assert all(f.sync_attempts == 0 for f in session.scalars(select(ManualFix)))


def test_run_fix_action_pushes_the_fixes_a_remedy_records(
    sessions: sessionmaker[Session],
    scrape_items: list[int],
    ml_server: object,
    ml: MLClient,
) -> None:
    finding_id = open_placeholder_finding(sessions, scrape_items[0])
    saved = run_fix_action(sessions, ml, lambda s: retag(s, actor(), finding_id, "Dealer"))
    assert saved.outcome is not None and len(saved.fix_ids) == 1
    assert saved.push is not None and saved.push.synced == 1 and saved.push_error is None
    with sessions() as session:
        fix = session.get_one(ManualFix, saved.fix_ids[0])
        assert (fix.new_value, fix.sync_status) == ("Dealer", SyncStatus.SYNCED)
        assert get_finding(session, finding_id).state == FindingState.FIXED
        item = session.get_one(SitemapItem, scrape_items[0])
        key, owner = item.image_key or "", session.get_one(Advertiser, item.advertiser_id).name
    # The re-tag replaces that advertiser's override: the cache holds it for that advertiser.
    record = cached(ml_server, key, owner)
    assert (record["image_type"], record["type_source"]) == ("Dealer", "override")
    assert record["applied_fix_ids"][-1] == fix.uid


def test_run_fix_action_refreshes_the_findings_in_its_transaction(
    sessions: sessionmaker[Session], scrape_items: list[int], ml_down: MLClient
) -> None:
    """An action through db.fixes (no refresh of its own) still settles the finding."""
    finding_id = open_placeholder_finding(sessions, scrape_items[0])
    saved = run_fix_action(
        sessions,
        ml_down,
        lambda s: apply_fixes(s, actor(), [FixChange(scrape_items[0], "image_type", "Stock")]),
    )
    assert len(saved.fix_ids) == 1 and saved.push_error is not None  # saved, pending sync
    with sessions() as session:
        settled = get_finding(session, finding_id)
        assert (settled.state, settled.state_by) == (FindingState.FIXED, "system")


def test_run_fix_action_that_fails_rolls_back_everything(
    sessions: sessionmaker[Session], scrape_items: list[int], ml_down: MLClient
) -> None:
    finding_id = open_placeholder_finding(sessions, scrape_items[0])

    def half_done(session: Session) -> None:
        apply_fixes(session, actor(), [FixChange(scrape_items[2], "image_type", "Stock")])
        retag(session, actor(Role.MANAGER), finding_id, "Dealer")  # refused

    with pytest.raises(PermissionDenied):
        run_fix_action(sessions, ml_down, half_done)
    with sessions() as session:
        assert get_finding(session, finding_id).state == FindingState.OPEN
        assert session.get_one(SitemapItem, scrape_items[2]).image_type == "Dealer"
        assert len(session.scalars(select(ManualFix)).all()) == 1  # the finding's own fix only
        assert all(f.sync_attempts == 0 for f in session.scalars(select(ManualFix)))


# --- push_pending ---------------------------------------------------------------------------------


def test_push_pending_reaches_the_real_ml_server_once(
    sessions: sessionmaker[Session],
    scrape_items: list[int],
    ml_server: object,
    ml: MLClient,
    ml_down: MLClient,
) -> None:
    with sessions.begin() as session:
        outcome = apply_fixes(
            session,
            actor(),
            [
                FixChange(scrape_items[0], "image_type", "Stock"),
                FixChange(scrape_items[0], "color", "Gold"),
            ],
        )
        key = session.get_one(SitemapItem, scrape_items[0]).image_key or ""

    report = push_pending(sessions, ml_down)
    assert report.synced == 0 and report.pending == 2 and report.error
    with sessions() as session:
        first = session.get_one(ManualFix, outcome.fix_ids[0])
        assert (first.sync_status, first.sync_attempts) == (SyncStatus.PENDING, 1)
        assert "cannot be reached" in (first.last_sync_error or "")

    report = push_pending(sessions, ml)
    assert (report.synced, report.pending, report.error) == (2, 0, None)
    record = cached(ml_server, key)
    assert (record["image_type"], record["color"]) == ("Stock", "Gold")
    with sessions() as session:
        uids = [session.get_one(ManualFix, i).uid for i in outcome.fix_ids]
    assert record["applied_fix_ids"] == uids  # globally unique ids, not the database's

    # A retry after a lost acknowledgement (the row went back to pending) applies nothing twice.
    with sessions.begin() as session:
        session.get_one(ManualFix, outcome.fix_ids[0]).sync_status = SyncStatus.PENDING
    assert push_pending(sessions, ml).synced == 1
    assert cached(ml_server, key)["applied_fix_ids"] == uids


def test_push_pending_skips_a_refused_fix_and_pushes_the_rest(
    sessions: sessionmaker[Session],
    scrape_items: list[int],
    ml_server: object,
    ml: MLClient,
) -> None:
    """The server refuses one fix (its image key is malformed): only that one stays pending."""
    with sessions.begin() as session:
        session.get_one(SitemapItem, scrape_items[0]).image_key = "not-a-key"
        outcome = apply_fixes(
            session,
            actor(),
            [
                FixChange(scrape_items[0], "image_type", "Stock"),
                FixChange(scrape_items[2], "image_type", "Stock"),
            ],
        )
    report = push_pending(sessions, ml)
    assert (report.synced, report.failed, report.pending, report.error) == (1, 1, 1, None)
    with sessions() as session:
        bad, good = (session.get_one(ManualFix, i) for i in outcome.fix_ids)
        assert (bad.sync_status, bad.sync_attempts) == (SyncStatus.PENDING, 1)
        assert "422" in (bad.last_sync_error or "")
        assert good.sync_status == SyncStatus.SYNCED


def test_push_pending_only_the_fixes_asked_for(
    sessions: sessionmaker[Session],
    scrape_items: list[int],
    ml_server: object,
    ml: MLClient,
) -> None:
    with sessions.begin() as session:
        outcome = apply_fixes(
            session,
            actor(),
            [
                FixChange(scrape_items[0], "image_type", "Stock"),
                FixChange(scrape_items[2], "image_type", "Stock"),
            ],
        )
    mine, other = outcome.fix_ids
    report = push_pending(sessions, ml, fix_ids=[mine])
    assert (report.synced, report.pending) == (1, 1)  # pending counts every fix still waiting
    with sessions() as session:
        assert session.get_one(ManualFix, mine).sync_status == SyncStatus.SYNCED
        assert session.get_one(ManualFix, other).sync_status == SyncStatus.PENDING
    assert push_pending(sessions, ml, limit=1).synced == 1
    assert push_pending(sessions, ml).synced == 0


def test_a_database_restored_from_a_backup_never_reuses_a_fix_id_the_cache_has_seen(
    sessions: sessionmaker[Session], scrape_items: list[int], ml_server: object, ml: MLClient
) -> None:
    """After a restore the next fix may get the same row id as one the cache already applied;
    the id the cache remembers is the fix's uid, so the new fix is applied, not dropped."""
    first = save_fixes(sessions, ml, actor(), [FixChange(scrape_items[0], "color", "Gold")])
    assert first.push_error is None
    with sessions.begin() as session:  # the restore: that fix never happened here
        gone = session.get_one(ManualFix, first.fix_ids[0])
        old_uid, key = gone.uid, gone.image_key
        session.delete(gone)
        session.get_one(SitemapItem, scrape_items[0]).color = "Red"
    second = save_fixes(sessions, ml, actor(), [FixChange(scrape_items[0], "color", "Purple")])
    assert second.push_error is None
    with sessions() as session:
        new = session.get_one(ManualFix, second.fix_ids[0])
        assert new.uid != old_uid and new.sync_status == SyncStatus.SYNCED
    record = cached(ml_server, key)
    assert record["color"] == "Purple"  # applied, not ignored as "seen"
    assert record["applied_fix_ids"] == [old_uid, new.uid]


def test_a_fix_to_placeholder_clears_the_color_and_raises_no_finding(
    sessions: sessionmaker[Session], scrape_items: list[int]
) -> None:
    with sessions.begin() as session:
        outcome = record_fixes(
            session, actor(), [FixChange(scrape_items[0], "image_type", "Placeholder", "Dealer")]
        )
        assert placeholder_findings(session) == []  # not "fixed by the advertiser": it is not
        item = session.get_one(SitemapItem, scrape_items[0])
        assert (item.image_type, item.color) == ("Placeholder", None)
        rows = [session.get_one(ManualFix, i) for i in outcome.fix_ids]
    assert [(r.field, r.old_value, r.new_value, r.user) for r in rows] == [
        ("image_type", "Dealer", "Placeholder", "analyst-user"),
        ("color", "Red", None, "analyst-user"),
    ]


# --- refresh=False: the findings are refreshed later, off the user's path -------------------------


@pytest.mark.parametrize("refresh", [True, False])
def test_save_fixes_refreshes_the_findings_only_when_asked(
    sessions: sessionmaker[Session], scrape_items: list[int], ml_down: MLClient, refresh: bool
) -> None:
    finding_id = open_placeholder_finding(sessions, scrape_items[0])
    saved = save_fixes(
        sessions,
        ml_down,
        actor(),
        [FixChange(scrape_items[0], "image_type", "Dealer", "Placeholder")],
        refresh=refresh,
    )
    assert len(saved.fix_ids) == 1  # recorded either way
    with sessions() as session:
        assert session.get_one(SitemapItem, scrape_items[0]).image_type == "Dealer"
        state = get_finding(session, finding_id).state
    assert state == (FindingState.FIXED if refresh else FindingState.OPEN)
    if not refresh:  # what BackgroundRefresh does next settles it
        with sessions.begin() as session:
            refresh_findings(session)
        with sessions() as session:
            assert get_finding(session, finding_id).state == FindingState.FIXED


# --- undo_fixes -----------------------------------------------------------------------------------


def history(
    sessions: sessionmaker[Session],
) -> list[tuple[int | None, str, str | None, str | None, str]]:
    with sessions() as session:
        rows = session.scalars(select(ManualFix).order_by(ManualFix.id))
        return [(f.sitemap_item_id, f.field, f.old_value, f.new_value, f.user) for f in rows]


def current(sessions: sessionmaker[Session], item_id: int) -> tuple[str, str | None]:
    with sessions() as session:
        item = session.get_one(SitemapItem, item_id)
        return item.image_type, item.color


def test_undo_fixes_puts_back_the_type_and_the_color_and_keeps_the_history(
    sessions: sessionmaker[Session], scrape_items: list[int], ml_server: object, ml: MLClient
) -> None:
    first = scrape_items[0]
    saved = save_fixes(
        sessions,
        ml,
        actor(),
        [
            FixChange(first, "image_type", "Stock", "Dealer"),
            FixChange(first, "color", "Gold", "Red"),
        ],
    )
    assert current(sessions, first) == ("Stock", "Gold")
    undone = undo_fixes(sessions, ml, actor(), saved.fix_ids)
    assert current(sessions, first) == ("Dealer", "Red")
    assert undone.outcome is not None and undone.outcome.races == []
    assert len(undone.fix_ids) == 2 and not set(undone.fix_ids) & set(saved.fix_ids)
    assert history(sessions) == [
        (first, "color", "Red", "Gold", "analyst-user"),
        (first, "image_type", "Dealer", "Stock", "analyst-user"),
        (first, "color", "Gold", "Red", "analyst-user"),
        (first, "image_type", "Stock", "Dealer", "analyst-user"),
    ]
    # Pushed like any fix: the ML cache holds the values put back.
    assert undone.push is not None and undone.push_error is None and undone.push.synced == 2
    with sessions() as session:
        key = session.get_one(SitemapItem, first).image_key or ""
    record = cached(ml_server, key)
    assert (record["image_type"], record["color"]) == ("Dealer", "Red")


def test_undoing_a_placeholder_fix_puts_its_color_back(
    sessions: sessionmaker[Session], scrape_items: list[int], ml_down: MLClient
) -> None:
    first = scrape_items[0]  # Dealer, Red
    saved = save_fixes(sessions, ml_down, actor(), [FixChange(first, "image_type", "Placeholder")])
    assert current(sessions, first) == ("Placeholder", None) and len(saved.fix_ids) == 2
    undo_fixes(sessions, ml_down, actor(), saved.fix_ids)
    assert current(sessions, first) == ("Dealer", "Red")


def test_undo_puts_a_colorless_placeholder_s_color_back_to_none(
    sessions: sessionmaker[Session], scrape_items: list[int], ml_down: MLClient
) -> None:
    item_id = scrape_items[1]
    with sessions.begin() as session:
        item = session.get_one(SitemapItem, item_id)
        item.image_type, item.color = "Placeholder", None
    saved = save_fixes(
        sessions,
        ml_down,
        actor(),
        [
            FixChange(item_id, "image_type", "Dealer", "Placeholder"),
            FixChange(item_id, "color", "Blue", None),
        ],
    )
    assert current(sessions, item_id) == ("Dealer", "Blue")
    undone = undo_fixes(sessions, ml_down, actor(), saved.fix_ids)
    assert current(sessions, item_id) == ("Placeholder", None)
    assert history(sessions)[2:] == [
        (item_id, "color", "Blue", None, "analyst-user"),
        (item_id, "image_type", "Dealer", "Placeholder", "analyst-user"),
    ]
    assert undone.push_error is not None  # pending sync: the ML server of this test is down


def test_undo_fixes_of_someone_else_is_refused_and_writes_nothing(
    sessions: sessionmaker[Session], scrape_items: list[int], ml_down: MLClient
) -> None:
    saved = save_fixes(
        sessions, ml_down, actor(username="bob"), [FixChange(scrape_items[0], "color", "Gold")]
    )
    mine = save_fixes(sessions, ml_down, actor(), [FixChange(scrape_items[1], "color", "Gold")])
    before = history(sessions)
    with pytest.raises(PermissionDenied, match="bob's"):
        undo_fixes(sessions, ml_down, actor(), [*mine.fix_ids, *saved.fix_ids])
    assert history(sessions) == before
    assert current(sessions, scrape_items[1]) == ("Stock", "Gold")  # mine was not undone either


def test_undo_fixes_needs_a_user_who_may_fix(
    sessions: sessionmaker[Session], scrape_items: list[int], ml_down: MLClient
) -> None:
    saved = save_fixes(sessions, ml_down, actor(), [FixChange(scrape_items[0], "color", "Gold")])
    with pytest.raises(PermissionDenied):
        undo_fixes(sessions, ml_down, None, saved.fix_ids)
    # Demoted since: the fix is still the user's, but a manager may not fix.
    with pytest.raises(PermissionDenied, match="may not fix"):
        undo_fixes(sessions, ml_down, actor(Role.MANAGER, "analyst-user"), saved.fix_ids)
    assert current(sessions, scrape_items[0]) == ("Dealer", "Gold")
    assert len(history(sessions)) == 1


def test_undo_fixes_of_an_unknown_fix_is_not_found(
    sessions: sessionmaker[Session], scrape_items: list[int], ml_down: MLClient
) -> None:
    saved = save_fixes(sessions, ml_down, actor(), [FixChange(scrape_items[0], "color", "Gold")])
    with pytest.raises(NotFoundError):
        undo_fixes(sessions, ml_down, actor(), [999_999])
    with pytest.raises(NotFoundError):  # one known, one not: nothing is undone
        undo_fixes(sessions, ml_down, actor(), [*saved.fix_ids, 999_999])
    assert current(sessions, scrape_items[0]) == ("Dealer", "Gold")
    assert len(history(sessions)) == 1


def test_undo_fixes_of_a_fix_of_no_item_is_refused(
    sessions: sessionmaker[Session], scrape_items: list[int], ml_down: MLClient
) -> None:
    saved = save_fixes(sessions, ml_down, actor(), [FixChange(scrape_items[0], "color", "Gold")])
    with sessions.begin() as session:  # its item is gone (only the image's history is left)
        session.get_one(ManualFix, saved.fix_ids[0]).sitemap_item_id = None
    with pytest.raises(InvalidInput, match="cannot be undone here"):
        undo_fixes(sessions, ml_down, actor(), saved.fix_ids)
    assert len(history(sessions)) == 1


def test_undo_after_someone_else_s_fix_wins_and_reports_the_race(
    sessions: sessionmaker[Session], scrape_items: list[int], ml_down: MLClient
) -> None:
    first = scrape_items[0]
    saved = save_fixes(sessions, ml_down, actor(), [FixChange(first, "color", "Gold", "Red")])
    later = save_fixes(
        sessions, ml_down, actor(username="bob"), [FixChange(first, "color", "Purple", "Gold")]
    )
    undone = undo_fixes(sessions, ml_down, actor(), saved.fix_ids)
    assert current(sessions, first) == ("Dealer", "Red")
    assert undone.outcome is not None
    (race,) = undone.outcome.races
    assert (race.item_id, race.field, race.seen_value, race.overwritten_value) == (
        first,
        "color",
        "Gold",
        "Purple",
    )
    assert race.overwritten_by == "bob" and race.overwritten_at is not None
    with sessions() as session:  # the undo names the fix it overwrote
        undo_row = session.get_one(ManualFix, undone.fix_ids[0])
        assert undo_row.superseded_fix_id == later.fix_ids[0]
    assert len(history(sessions)) == 3


def test_undo_of_a_value_already_back_records_nothing(
    sessions: sessionmaker[Session], scrape_items: list[int], ml_down: MLClient
) -> None:
    first = scrape_items[0]
    saved = save_fixes(sessions, ml_down, actor(), [FixChange(first, "color", "Gold", "Red")])
    save_fixes(sessions, ml_down, actor(username="bob"), [FixChange(first, "color", "Red", "Gold")])
    undone = undo_fixes(sessions, ml_down, actor(), saved.fix_ids)
    assert undone.fix_ids == [] and undone.push is None
    assert undone.outcome is not None and undone.outcome.unchanged == 1
    assert len(history(sessions)) == 2


@pytest.mark.parametrize("refresh", [True, False])
def test_undo_fixes_refreshes_the_findings_only_when_asked(
    sessions: sessionmaker[Session], scrape_items: list[int], ml_down: MLClient, refresh: bool
) -> None:
    """A color given to a Placeholder raises "Placeholder with a color"; undoing it settles the
    finding at once, or (refresh=False) at the next refresh."""
    item_id = scrape_items[1]
    with sessions.begin() as session:
        item = session.get_one(SitemapItem, item_id)
        item.image_type, item.color = "Placeholder", None
    saved = save_fixes(sessions, ml_down, actor(), [FixChange(item_id, "color", "Red", None)])
    with sessions() as session:
        (finding_id,) = placeholder_findings(session)
    undo_fixes(sessions, ml_down, actor(), saved.fix_ids, refresh=refresh)
    assert current(sessions, item_id) == ("Placeholder", None)
    with sessions() as session:
        state = get_finding(session, finding_id).state
    assert state == (FindingState.FIXED if refresh else FindingState.OPEN)


def test_an_undo_that_would_put_back_a_feed_color_is_refused_whole(
    sessions: sessionmaker[Session], scrape_items: list[int], ml_down: MLClient
) -> None:
    """A color taken from the advertiser's feed is kept as the feed says it ("Bordeaux"); a fix
    to Placeholder clears it. No fix can set "Bordeaux" (nor can the ML cache carry it), so the
    undo is refused with a clear message and nothing is half undone."""
    first = scrape_items[0]
    with sessions.begin() as session:
        item = session.get_one(SitemapItem, first)
        item.color = item.feed_color = "Bordeaux"
        session.get_one(Advertiser, item.advertiser_id).color_from_feed = True
    saved = save_fixes(sessions, ml_down, actor(), [FixChange(first, "image_type", "Placeholder")])
    assert current(sessions, first) == ("Placeholder", None)
    with pytest.raises(InvalidInput, match=r"Bordeaux.*no fix can set"):
        undo_fixes(sessions, ml_down, actor(), saved.fix_ids)
    assert current(sessions, first) == ("Placeholder", None)
