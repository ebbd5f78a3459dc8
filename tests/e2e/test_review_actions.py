"""The review page's actions in a real browser: what only the browser shows.

A bulk fix's preview shows the images it changes; after Apply, a toast says how it went and the
tiles' "Select" boxes are unticked in the browser (AppTest sees only the session state); Relaunch
stays disabled while the scrape it queued waits for a worker (none runs here); a title's HTML
tags are dropped, never rendered; a search without match says so.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from db.models import ManualFix, SitemapItem
from tests.e2e.test_review_state import box, running, search, settle
from tests.utils.browser import ScrapedDemo

pytestmark = pytest.mark.browser


def ticked(page: object, item_id: int) -> bool:
    return page.locator(f".st-key-select-{item_id} input[type=checkbox]").is_checked()  # type: ignore[attr-defined]


def test_bulk_fix_toast_selection_relaunch_titles_and_no_match(
    browser: object,
    demo: ScrapedDemo,
    running_app: dict,
    app_settings: object,
    ml_server: object,
    tmp_path: Path,
) -> None:
    sessions = demo.sessions
    with sessions.begin() as session:
        first, second, third = session.scalars(
            select(SitemapItem)
            .where(SitemapItem.image_key.is_not(None), SitemapItem.color != "Purple")
            .order_by(SitemapItem.scrape_id.desc(), SitemapItem.position)
            .limit(3)
        ).all()
        first.title = "<b>Sale</b> <script>alert(1)</script><i>today</i>"
        ids = (first.id, second.id, third.id)
        title_text = f"#{first.position} Sale today"

    page = browser.new_page(viewport={"width": 1600, "height": 1200})  # type: ignore[attr-defined]
    page.set_default_timeout(30_000)
    page.goto(running_app["url"])
    page.get_by_label("Username", exact=True).fill("analyst")
    page.get_by_label("Password", exact=True).fill("analyst-demo-pass")
    page.keyboard.press("Enter")
    page.get_by_role("link", name="Sitemap review").click()
    page.get_by_role("heading", name="Sitemap review").wait_for()
    page.get_by_text("Images", exact=True).first.wait_for()

    # The title reads as text, its tags dropped and none of them rendered.
    page.get_by_text(title_text, exact=True).wait_for()
    assert page.locator("b", has_text="Sale").count() == 0
    assert page.get_by_text("alert(1)").count() == 0

    # Tick two tiles, set a color on them, preview: the preview shows their two thumbnails.
    for item_id in ids[:2]:
        page.locator(f".st-key-select-{item_id}").get_by_text("Select").click()
    assert ticked(page, ids[0]) and ticked(page, ids[1]) and not ticked(page, ids[2])
    color = box(page, "stSelectbox", "Set Color").get_by_role("combobox")  # type: ignore[attr-defined]
    color.click()
    color.press_sequentially("Purp")  # the list is long: narrow it to the option
    page.get_by_role("option", name="Purple", exact=True).click()
    assert color.input_value() == "Purple"
    page.get_by_role("button", name="Preview on selected tiles").click()
    preview = page.locator(".st-key-bulk-preview")
    preview.get_by_text("2 of 2 images change").wait_for()
    assert preview.locator("img").count() == 2
    assert ticked(page, ids[0]) and ticked(page, ids[1])  # still ticked while previewing
    page.screenshot(path=str(tmp_path / "bulk-preview.png"), full_page=True)

    clicked = time.perf_counter()
    preview.get_by_role("button", name="Apply").click()
    toast = page.locator('[data-testid="stToast"]')
    toast.filter(has_text=re.compile(r"2 fix\(es\) saved")).wait_for()
    settle(
        page,
        lambda: (not ticked(page, ids[0]) and not ticked(page, ids[1])) or "still ticked",
        "the selection cleared after Apply",
        clicked,
    )
    page.get_by_text("Bulk fix: 2 of the 2 images previewed now have").wait_for()
    with sessions() as session:
        fixes = session.scalars(select(ManualFix).where(ManualFix.new_value == "Purple")).all()
    assert sorted(f.sitemap_item_id for f in fixes) == sorted(ids[:2])

    # Update: a toast too, and the ticked tile is unticked after it.
    page.locator(f".st-key-select-{ids[2]}").get_by_text("Select").click()
    assert ticked(page, ids[2])
    clicked = time.perf_counter()
    page.get_by_role("button", name="Update").click()
    toast.filter(has_text="Nothing to update").wait_for()
    settle(page, lambda: not ticked(page, ids[2]) or "ticked", "cleared after Update", clicked)

    # Relaunch: queued (no worker runs here), the button disabled and kept so by the poll.
    relaunch = page.get_by_role("button", name="Relaunch scrape")
    assert relaunch.is_enabled()
    clicked = time.perf_counter()
    relaunch.click()
    page.get_by_text("Scrape queued: waiting for the worker…").wait_for()

    def disabled() -> object:
        return (relaunch.count() == 1 and relaunch.is_disabled()) or relaunch.count()

    settle(page, disabled, "Relaunch disabled while queued", clicked)
    page.wait_for_timeout(2500)  # a few polls of the progress fragment
    assert disabled() is True
    assert page.get_by_text("Scrape queued: waiting for the worker…").count() == 1

    # A search without match says so.
    pressed = search(page, "no-such-vehicle-zzz")
    settle(
        page,
        lambda: page.get_by_text("No image matches these filters").count() == 1 or "no message",
        "the empty search's message",
        pressed,
    )
    assert page.get_by_text("no-such-vehicle-zzz", exact=False).count() >= 1
    assert not running(page)
    page.screenshot(path=str(tmp_path / "no-match.png"), full_page=True)
