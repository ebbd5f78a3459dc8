"""The review page's actions in a real browser: what only the browser shows.

A bulk fix of every image matching the filters shows the images it changes before Apply; after
Apply, and after the grid's Update, a toast says how it went, and the grid's selection is cleared
in the browser (AppTest sees only the session state); Relaunch stays disabled while the scrape it
queued waits for a worker (none runs here); a title's HTML tags are dropped, never rendered; a
search without match says so.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from db.models import ManualFix, SitemapItem
from db.review import ReviewFilter, review_page
from tests.utils.browser import (
    SharedApp,
    box,
    latest_items,
    running,
    saved,
    search,
    settle,
    shows,
    tile,
    toast,
    wait_unsaved,
    wait_until,
)

pytestmark = pytest.mark.browser
BULK_COLOR = "Purple"


def ticked(page: object, item_id: int) -> bool:
    """Whether the tile's select box is ticked (the tile is in the grid's selection)."""
    return tile(page, item_id).locator("input.check").is_checked()  # type: ignore[attr-defined]


def test_bulk_fix_toast_selection_relaunch_titles_and_no_match(
    browser: object, shared_app: SharedApp, tmp_path: Path
) -> None:
    sessions = shared_app.sessions
    with sessions.begin() as session:
        items = latest_items(session)
        first = items[0]
        first.title = "<b>Sale</b> <script>alert(1)</script><i>today</i>"
        title_text = f"#{first.position} Sale today"
        # A search that narrows the grid to a few images, each its own (one fix per tile).
        scrape_id = first.scrape_id
        keys = [i.image_key for i in items]
        words = sorted(
            {w for i in items for w in (i.title or "").split() if len(w) > 3 and w.isalpha()}
        )
        term, matching = "", []
        for word in words:
            found = review_page(session, scrape_id, ReviewFilter(text=word), limit=100)[0]
            if 2 <= len(found) <= 6 and all(
                f.image_key and keys.count(f.image_key) == 1 for f in found
            ):
                term, matching = word, [f.id for f in found]
                break
        assert term, f"no search term narrows the grid to 2 to 6 images: {words}"
        changing = [i.id for i in items if i.id in matching and i.color != BULK_COLOR]
    assert len(changing) >= 2, changing

    page = browser.new_page(viewport={"width": 1600, "height": 1200})  # type: ignore[attr-defined]
    page.set_default_timeout(30_000)
    page.goto(shared_app.url)
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

    # Narrow the grid, set a color on every matching image: the preview shows their thumbnails.
    pressed = search(page, term)
    settle(
        page,
        lambda: page.locator(".tile").count() == len(matching) or page.locator(".tile").count(),
        f"the search {term!r}",
        pressed,
    )
    color = box(page, "stSelectbox", "Set Color").get_by_role("combobox")  # type: ignore[attr-defined]
    color.click()
    color.press_sequentially("Purp")  # the list is long: narrow it to the option
    page.get_by_role("option", name=BULK_COLOR, exact=True).click()
    assert color.input_value() == BULK_COLOR
    page.get_by_role("button", name=f"Preview on all {len(matching)} matching").click()
    preview = page.locator(".st-key-bulk-preview")
    preview.get_by_text(f"{len(changing)} of {len(matching)} images change").wait_for()
    thumbnails = preview.locator("img")
    expect(thumbnails).to_have_count(len(changing))
    wait_until(
        page,
        lambda: thumbnails.evaluate_all("imgs => imgs.every(i => i.complete && i.naturalWidth)"),
        "the preview's thumbnails loaded",
    )
    page.screenshot(path=str(tmp_path / "bulk-preview.png"), full_page=True)
    with sessions() as session:
        assert session.scalars(select(ManualFix)).all() == []  # a preview changes nothing

    preview.get_by_role("button", name="Apply").click()
    toast(page, saved(len(changing)))
    page.get_by_text(
        f"Bulk fix: {len(changing)} of the {len(changing)} images previewed now have"
    ).wait_for()
    with sessions() as session:
        fixes = session.scalars(select(ManualFix).where(ManualFix.new_value == BULK_COLOR)).all()
    assert sorted(f.sitemap_item_id for f in fixes) == sorted(changing)
    assert all(shows(page, i)[1] == BULK_COLOR for i in matching)

    # Update: select two tiles (their boxes), pick a color on one of them: both change; after
    # Update, a toast, and the selection is cleared.
    one, two = matching[:2]
    for item_id in (one, two):
        tile(page, item_id).locator("input.check").click()
    assert ticked(page, one) and ticked(page, two)
    assert all(not ticked(page, i) for i in matching[2:])
    tile(page, two).locator("select.color").select_option("Gold")
    assert shows(page, one)[1] == shows(page, two)[1] == "Gold"
    clicked = time.perf_counter()
    page.get_by_role("button", name="Update (u)").click()
    toast(page, saved(2))
    settle(
        page,
        lambda: (not ticked(page, one) and not ticked(page, two)) or "still ticked",
        "the selection cleared after Update",
        clicked,
    )
    assert page.locator('.tile[aria-selected="true"]').count() == 0
    wait_unsaved(page, "")
    with sessions() as session:
        assert [session.get_one(SitemapItem, i).color for i in (one, two)] == ["Gold", "Gold"]

    # Back to every image for what follows.
    pressed = search(page, "")
    settle(
        page,
        lambda: page.get_by_text(title_text, exact=True).count() == 1 or "not back",
        "the search cleared",
        pressed,
    )

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
