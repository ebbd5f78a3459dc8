"""The main flow in a real browser: sign in, open a sitemap, fix a type and a color in a tile's
dropdowns, Update, see the history row, and see the ML server return the fixed values.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

from db.models import ManualFix, SitemapItem, SyncStatus
from tests.utils.browser import SharedApp, saved, shows, tile, toast, wait_unsaved

pytestmark = pytest.mark.browser

TRACKER_PATH = "/track.png"
HOSTILE_COLOR = f"![t](http://127.0.0.1:9{TRACKER_PATH})"
HOSTILE_TITLE = f"**Deal** <img src='http://127.0.0.1:9{TRACKER_PATH}'> {HOSTILE_COLOR}"


def test_fix_in_the_browser_reaches_history_and_ml_cache(
    browser: object, shared_app: SharedApp, tmp_path: Path
) -> None:
    sessions = shared_app.sessions
    # The second tile gets a hostile feed color and title: they must show as written.
    with sessions.begin() as session:
        second = session.scalars(
            select(SitemapItem).order_by(SitemapItem.scrape_id.desc(), SitemapItem.position)
        ).all()[1]
        second.color = second.feed_color = second.ml_color = HOSTILE_COLOR
        second.title = HOSTILE_TITLE

    page = browser.new_page(viewport={"width": 1600, "height": 1200})  # type: ignore[attr-defined]
    page.set_default_timeout(30_000)
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(shared_app.url)
    page.get_by_label("Username", exact=True).fill("analyst")
    page.get_by_label("Password", exact=True).fill("wrong password!")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text("wrong username or password").wait_for()
    page.get_by_label("Password", exact=True).fill("analyst-demo-pass")
    page.get_by_role("button", name="Sign in").click()

    page.get_by_role("link", name="Sitemap review").click()
    page.get_by_role("heading", name="Sitemap review").wait_for()
    page.get_by_text("Images", exact=True).first.wait_for()
    # The feed's color names none of ours: its dropdown shows it as written, and so does the
    # ML line; the title's <img> tag is dropped (never rendered), the rest shows as written.
    hostile = tile(page, second.id)
    hostile.wait_for()
    assert shows(page, second.id)[1] == f"Feed: {HOSTILE_COLOR}"
    assert hostile.locator(".ml").inner_text().endswith(f"· {HOSTILE_COLOR}")
    page.get_by_text(f"**Deal** {HOSTILE_COLOR}").first.wait_for()
    assert hostile.locator(".title").inner_text() == f"#{second.position} **Deal** {HOSTILE_COLOR}"
    page.screenshot(path=str(tmp_path / "review.png"), full_page=True)
    assert page.locator(f'img[src*="{TRACKER_PATH}"]').count() == 0
    assert not [url for url in requested if TRACKER_PATH in url]

    with sessions() as session:
        first = session.scalars(
            select(SitemapItem).order_by(SitemapItem.scrape_id.desc(), SitemapItem.position)
        ).first()
        assert first is not None
    new_type = "Stock" if first.image_type != "Stock" else "Dealer"
    # The first tile's two dropdowns, then Update.
    tile(page, first.id).locator("select.type").select_option(new_type)
    tile(page, first.id).locator("select.color").select_option("Purple")
    assert shows(page, first.id) == (new_type, "Purple")
    page.get_by_role("button", name="Update (u)").click()
    page.get_by_text(re.compile(r"2 fix\(es\) saved and sent to the ML server")).wait_for()
    toast(page, saved(2))
    wait_unsaved(page, "")
    assert shows(page, first.id) == (new_type, "Purple")

    with sessions() as session:
        fixes = list(session.scalars(select(ManualFix).order_by(ManualFix.id)))
    assert sorted((f.field, f.new_value, f.user, f.sync_status) for f in fixes) == [
        ("color", "Purple", "analyst", SyncStatus.SYNCED),
        ("image_type", new_type, "analyst", SyncStatus.SYNCED),
    ]
    record = requests.get(
        f"{shared_app.ml_url}/images/{fixes[0].image_key}",
        headers={"Authorization": f"Bearer {shared_app.settings.ml_token}"},  # type: ignore[attr-defined]
        timeout=5,
    ).json()
    assert (record["image_type"], record["color"]) == (new_type, "Purple"), (
        record,
        [(f.id, f.field, f.image_key, f.sitemap_item_id) for f in fixes],
    )

    page.get_by_role("link", name="Fix history").click()
    page.get_by_role("heading", name=re.compile("history", re.I)).wait_for()
    # st.dataframe draws on a canvas; its cells are in the DOM for assistive technology.
    page.locator("[role=gridcell]", has_text="Purple").first.wait_for(state="attached")
    page.screenshot(path=str(tmp_path / "history.png"), full_page=True)


def test_placeholder_clears_the_color_and_an_override_shows_in_the_browser(
    browser: object, shared_app: SharedApp, tmp_path: Path
) -> None:
    from db.fixes import FixChange
    from db.models import FixSource, LabelSource
    from tagging.fixes import record_fixes
    from tests.utils.factories import actor

    sessions = shared_app.sessions
    with sessions.begin() as session:
        items = session.scalars(
            select(SitemapItem)
            .where(SitemapItem.color.is_not(None), SitemapItem.status == "ok")
            .order_by(SitemapItem.position)
        ).all()
        colored, overridden = items[0], items[1]
        # The advertiser's own front end overrides one image's color.
        record_fixes(
            session,
            actor(),
            [FixChange(overridden.id, "color", "Gold" if overridden.color != "Gold" else "Red")],
            source=FixSource.ADVERTISER,
        )

    page = browser.new_page(viewport={"width": 1600, "height": 1200})  # type: ignore[attr-defined]
    page.set_default_timeout(30_000)
    page.goto(shared_app.url)
    page.get_by_label("Username", exact=True).fill("analyst")
    page.get_by_label("Password", exact=True).fill("analyst-demo-pass")
    page.keyboard.press("Enter")
    page.get_by_role("link", name="Sitemap review").click()
    page.get_by_role("heading", name="Sitemap review").wait_for()
    # The override's badge is on its tile, and on no other.
    badge = page.locator(".badge", has_text="Advertiser's override")
    badge.first.wait_for()
    assert badge.count() == 1
    assert tile(page, overridden.id).locator(".badge", has_text="Advertiser's override").count()

    tile(page, colored.id).locator("select.type").select_option("Placeholder")
    page.get_by_role("button", name="Update (u)").click()
    # The type and, by the seed's rule, the color: two history rows, both pushed.
    page.get_by_text(re.compile(r"2 fix\(es\) saved and sent to the ML server")).wait_for()
    wait_unsaved(page, "")
    # The dropdowns follow the saved values: the color reads "No color" for the placeholder.
    fixed = tile(page, colored.id)
    fixed.locator(".badge", has_text="Fixed ×2").wait_for()
    assert shows(page, colored.id) == ("Placeholder", "No color")
    assert fixed.locator("select.color").input_value() == ""  # nothing picked: no color
    page.screenshot(path=str(tmp_path / "placeholder.png"))

    with sessions() as session:
        now = session.get_one(SitemapItem, colored.id)
        assert (now.image_type, now.color) == ("Placeholder", None)
        assert now.color_source == LabelSource.FIX
        fixes = session.scalars(
            select(ManualFix).where(ManualFix.sitemap_item_id == colored.id)
        ).all()
        assert sorted((f.field, f.new_value) for f in fixes) == [
            ("color", None),
            ("image_type", "Placeholder"),
        ]
