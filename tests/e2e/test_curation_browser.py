"""The Dataset curation page in a real browser: a developer builds a version from the team's
fixes, step by step, as a person would (pull, size, a prune decision, crop, split, a reload that
keeps the draft, extend, balance, freeze)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from db.accounts import ensure_demo_accounts
from db.datasets import get_version
from db.engine import make_engine, make_session_factory
from tagging.datasets.archive import LocalArchive
from tagging.datasets.service import version_manifest
from tests.tagging.datasets.world import build_world
from tests.utils.browser import idle, new_page, sign_in, wait_until

pytestmark = pytest.mark.browser


def button(page: object, name: str) -> object:
    return page.get_by_role("button", name=name, exact=True)  # type: ignore[attr-defined]


def apply(page: object, name: str, then: str) -> None:
    """Click an Apply button and wait for the page to say it is done (an error shown instead
    fails at once, quoting it)."""
    idle(page, f"the page before {name}")  # a click during a run can be lost in the rerun
    button(page, name).click()  # type: ignore[attr-defined]
    done = page.get_by_text(then).first  # type: ignore[attr-defined]
    alert = page.locator('[data-testid="stAlertContentError"]').first  # type: ignore[attr-defined]
    try:
        done.or_(alert).wait_for()
    except Exception:
        shots = os.environ.get("TAGDESK_SCREENSHOTS")
        if shots:
            page.screenshot(path=f"{shots}/failed-{name[:20]}.png", full_page=True)  # type: ignore[attr-defined]
        raise
    if not done.is_visible():
        pytest.fail(f"{name}: the page says {alert.inner_text()!r}")
    idle(page, name)


def test_a_developer_builds_a_version_in_the_browser(
    browser: object, running_app: dict, app_settings: object, tmp_path: Path
) -> None:
    engine = make_engine(app_settings.database_url)  # type: ignore[attr-defined]
    sessions: sessionmaker[Session] = make_session_factory(engine)
    try:
        with sessions.begin() as session:
            ensure_demo_accounts(session)
        world = build_world(sessions, tmp_path / "world")
        archive = LocalArchive(app_settings.archive_dir)  # type: ignore[attr-defined]
        for data in world.urls.values():
            archive.put(data)  # the app's archive holds the fixed images' bytes
        # TAGDESK_SCREENSHOTS keeps them for a person to look at (pytest drops a passing tmp_path).
        shots = Path(os.environ.get("TAGDESK_SCREENSHOTS") or tmp_path)
        shots.mkdir(parents=True, exist_ok=True)

        page = new_page(browser, {"width": 1440, "height": 1100})
        sign_in(page, running_app["url"], "developer")
        page.get_by_role("link", name="Dataset curation").click()  # type: ignore[attr-defined]
        page.get_by_role("heading", name="Dataset curation").wait_for()  # type: ignore[attr-defined]
        # 1. Pull: the preview first (what it takes), then Apply.
        page.get_by_text("with 30 fixed images").wait_for()  # type: ignore[attr-defined]
        idle(page)
        page.locator('[data-testid="stImage"] img').first.wait_for()  # type: ignore[attr-defined]
        page.locator('[data-testid="stDataFrame"]').first.wait_for()  # type: ignore[attr-defined]
        page.wait_for_timeout(1000)  # type: ignore[attr-defined]
        page.screenshot(path=str(shots / "curation-1-pull.png"), full_page=True)  # type: ignore[attr-defined]
        apply(page, "Apply: start the draft", "Draft version 1 started")
        # 2. Size: the defaults (200x150) keep every image of this world.
        page.get_by_text("Excludes 0 of 30").wait_for()  # type: ignore[attr-defined]
        apply(page, "Apply: drop images under 200x150", "Size filter applied")
        # 3. Prune: the conflicting pair is first; drop it with a reason, in the large view.
        page.get_by_text("Large view: one image and its decision").wait_for()  # type: ignore[attr-defined]
        idle(page)
        decision = page.locator('[data-testid="stRadio"]').filter(has_text="Decision").last  # type: ignore[attr-defined]
        decision.get_by_text("drop", exact=True).click()
        drop = decision.get_by_role("radio", name="drop", exact=True)
        wait_until(page, drop.is_checked, "the drop decision is picked")
        page.get_by_label("Reason (for a drop)").fill("same car, two labels")  # type: ignore[attr-defined]
        apply(page, "Record decision", "1 decision(s) recorded")
        page.screenshot(path=str(shots / "curation-3-prune.png"), full_page=True)  # type: ignore[attr-defined]
        apply(page, "Apply: prune", "Prune applied")
        apply(page, "Apply: record the crops", "Crop applied")
        # 5. Split, its charts shown before it is applied.
        page.get_by_text("Classes per split").wait_for()  # type: ignore[attr-defined]
        apply(page, "Apply: split train/test", "Split applied")
        # A reload keeps the draft: it lives in the database, not in the page.
        page.reload()  # type: ignore[attr-defined]
        page.get_by_role("heading", name="Draft version 1").wait_for()  # type: ignore[attr-defined]
        page.get_by_text("parent images +").wait_for()  # type: ignore[attr-defined]
        apply(page, "Apply: confirm the extended version", "Extend applied")
        page.get_by_text("Classes per advertiser").wait_for()  # type: ignore[attr-defined]
        idle(page)
        page.get_by_text("Classes per split").scroll_into_view_if_needed()  # type: ignore[attr-defined]
        # (a beat for the charts to draw)
        page.wait_for_timeout(500)  # type: ignore[attr-defined]
        page.screenshot(path=str(shots / "curation-7-balance.png"), full_page=True)  # type: ignore[attr-defined]
        apply(page, "Apply: confirm the balance", "Balance applied")
        button(page, "Freeze…").click()  # type: ignore[attr-defined]
        page.get_by_text("Freeze version 1?").wait_for()  # type: ignore[attr-defined]
        apply(page, "Yes, freeze", "Version 1 frozen")
        # No draft any more: the page offers the next pull, from version 1 (nothing new yet).
        page.get_by_text("Starts a draft from version 1 (30 images) with 0 fixed").wait_for()  # type: ignore[attr-defined]
        idle(page)
        page.screenshot(path=str(shots / "curation-frozen.png"), full_page=True)  # type: ignore[attr-defined]

        with sessions() as session:
            version = get_version(session, 1)
        assert version.state == "frozen"
        manifest = version_manifest(sessions, 1)
        assert version.manifest_sha256 == manifest.manifest_sha256()
        dropped = [row for row in manifest if row.exclusion == "pruned: same car, two labels"]
        assert len(dropped) == 1
        assert {row.split for row in manifest.included()} == {"train", "test"}
    finally:
        engine.dispose()
