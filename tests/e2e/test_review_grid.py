"""The review grid (one component: views/review_grid.py, views/assets/review_grid.js) in a real
Chromium at a laptop's size: the keyboard, the dropdowns, the selection, Update and Undo, unsaved
changes kept across pages and guarded against a reload or a link, the large view, the dense view,
the thumbnails' cache and the sort by confidence.

Each test signs in once and works on one page. The database is read through ``demo.sessions``.
The tests share one app and its scraped demo (``shared_app``: put back as the scrape left it
before each test).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from db.models import ManualFix, SitemapItem
from tests.utils.browser import (
    TOAST_END,
    ScrapedDemo,
    SharedApp,
    focused,
    go_to_page,
    idle,
    latest_items,
    new_page,
    open_review,
    pick,
    query,
    saved,
    settle,
    shows,
    sign_in,
    tab_to_first_tile,
    tile,
    toast,
    unsaved,
    wait_unsaved,
    wait_until,
)

pytestmark = pytest.mark.browser

NO_COLOR = "No color"
THUMBS = "imgs => imgs.filter(i => i.complete && i.naturalWidth > 0).map(i => i.src)"
"""The thumbnails of the tiles that have loaded (``.tile img``), by URL."""
FULLY_VISIBLE = """tiles => tiles.filter(t => {
  const r = t.getBoundingClientRect();
  if (r.top < 0 || r.left < 0 || r.bottom > innerHeight || r.right > innerWidth) return false;
  const root = t.getRootNode();  // the shadow root: its elementFromPoint sees into it
  return [[r.left + 3, r.top + 3], [r.right - 3, r.top + 3], [r.left + 3, r.bottom - 3],
          [r.right - 3, r.bottom - 3]].every(([x, y]) => {
    const hit = root.elementFromPoint(x, y);
    return hit !== null && t.contains(hit);  // not under the sticky bar, nor off screen
  });
}).length"""
NETWORK = """urls => performance.getEntriesByType("resource")
  .filter(e => urls.includes(e.name) && e.transferSize > 0).map(e => e.name)"""
"""Which of ``urls`` were downloaded (a response came over the network: a cache hit, from memory
or from disk, has no entry or a transferSize of 0; a revalidation's 304 has its headers' size)."""
THUMB_PATH = "/api/thumb/"


def fixable_run(items: list[SitemapItem], length: int, within: int = 24) -> list[SitemapItem]:
    """``length`` items next to each other on the first page, each with an image of its own
    (one fix changes one tile) that the scrape could read."""
    first_page = items[:within]
    keys = [i.image_key for i in items]
    for start in range(len(first_page) - length + 1):
        run = first_page[start : start + length]
        if all(i.status == "ok" and i.image_key and keys.count(i.image_key) == 1 for i in run):
            return run
    pytest.fail(f"no {length} fixable items in a row on the first page")


def preset(demo: ScrapedDemo, values: dict[int, tuple[str, str | None]]) -> None:
    """Give items known values before the page opens: ``{item id: (image_type, color)}``."""
    with demo.sessions.begin() as session:
        for item_id, (image_type, color) in values.items():
            item = session.get_one(SitemapItem, item_id)
            item.image_type, item.color = image_type, color


def values(demo: ScrapedDemo, ids: list[int]) -> list[tuple[str, str | None]]:
    with demo.sessions() as session:
        return [
            (item.image_type, item.color) for item in (session.get_one(SitemapItem, i) for i in ids)
        ]


def fixes(demo: ScrapedDemo) -> list[tuple[int | None, str, str | None, str | None, str]]:
    """Every manual fix, oldest first: (item, field, old value, new value, user)."""
    with demo.sessions() as session:
        return [
            (f.sitemap_item_id, f.field, f.old_value, f.new_value, f.user)
            for f in session.scalars(select(ManualFix).order_by(ManualFix.id))
        ]


def signed_in_review(browser: object, app: SharedApp) -> object:
    page = new_page(browser)
    sign_in(page, app.url)
    open_review(page)
    return page


def test_three_tiles_fixed_with_the_keyboard_only(
    browser: object, shared_app: SharedApp, tmp_path: Path
) -> None:
    demo = shared_app.demo
    with demo.sessions() as session:
        top = latest_items(session)[:3]
    first, second, third = (i.id for i in top)
    preset(
        demo, {first: ("Dealer", "Beige"), second: ("Stock", "Beige"), third: ("Stock", "White")}
    )
    page = signed_in_review(browser, shared_app)

    # From the top of the page, Tab reaches the first tile (the others are one Tab stop: the
    # arrows move between them); from there on, only keys.
    presses = tab_to_first_tile(page)
    assert focused(page)["id"] == str(first), (presses, focused(page))
    page.keyboard.press("2")  # Stock
    page.keyboard.press("ArrowRight")
    page.keyboard.press("1")  # Dealer
    page.keyboard.press("ArrowRight")
    assert focused(page)["id"] == str(third)
    page.keyboard.press("c")  # the color list opens on the focused tile
    assert focused(page)["label"] == f"Color of #{top[2].position}", focused(page)
    page.keyboard.type("pur")  # typed ahead in the list
    page.keyboard.press("Enter")
    assert focused(page)["id"] == str(third), "the focus goes back to the tile after a pick"
    assert [shows(page, i) for i in (first, second, third)] == [
        ("Stock", "Beige"),
        ("Dealer", "Beige"),
        ("Stock", "Purple"),
    ]
    assert unsaved(page) == "3 unsaved change(s)"
    assert values(demo, [first, second, third])[0] == ("Dealer", "Beige"), "nothing saved yet"
    page.screenshot(path=str(tmp_path / "keyboard-before-update.png"))

    page.keyboard.press("u")
    toast(page, saved(3))
    wait_unsaved(page, "")
    assert values(demo, [first, second, third]) == [
        ("Stock", "Beige"),
        ("Dealer", "Beige"),
        ("Stock", "Purple"),
    ]
    assert sorted(fixes(demo)) == sorted(
        [
            (first, "image_type", "Dealer", "Stock", "analyst"),
            (second, "image_type", "Stock", "Dealer", "analyst"),
            (third, "color", "White", "Purple", "analyst"),
        ]
    )
    # Still the keyboard: the tile kept the focus through the save; Enter opens the large view,
    # whose history lists the fix.
    wait_until(page, lambda: page.locator(f'.tile[data-id="{third}"] .badge.blue').count(), "badge")
    assert focused(page)["id"] == str(third), focused(page)
    page.keyboard.press("Enter")
    history = page.locator(".viewer table.history tr")
    history.first.wait_for()
    assert history.count() == 1
    row = history.first.inner_text()
    assert all(part in row for part in ("analyst", "color", "White → Purple", "synced")), row
    page.screenshot(path=str(tmp_path / "keyboard-history.png"))
    page.keyboard.press("Escape")
    assert page.locator(".viewer").is_hidden()


def test_two_picks_in_one_dropdown_both_stick_and_survive_a_reload(
    browser: object, shared_app: SharedApp, tmp_path: Path
) -> None:
    demo = shared_app.demo
    with demo.sessions() as session:
        one, other = (i.id for i in fixable_run(latest_items(session), 2))
    preset(demo, {one: ("Stock", "Beige"), other: ("Stock", "Gray")})
    dialogs: list[str] = []
    page = signed_in_review(browser, shared_app)
    page.on("dialog", lambda dialog: (dialogs.append(dialog.type), dialog.accept()))

    kind = tile(page, one).locator("select.type")
    color = tile(page, one).locator("select.color")
    kind.select_option("Placeholder")
    assert shows(page, one) == ("Placeholder", NO_COLOR)  # a placeholder has no color
    kind.select_option("Dealer")  # the second pick in the same list
    assert shows(page, one) == ("Dealer", "Beige")
    assert unsaved(page) == "1 unsaved change(s)"
    color.select_option("Purple")
    color.select_option("Gold")
    assert shows(page, one) == ("Dealer", "Gold")
    assert unsaved(page) == "2 unsaved change(s)"
    # The other tile: a placeholder that keeps its color (chosen again after the type).
    tile(page, other).locator("select.type").select_option("Placeholder")
    assert shows(page, other) == ("Placeholder", NO_COLOR)
    tile(page, other).locator("select.color").select_option("Gray")
    assert shows(page, other) == ("Placeholder", "Gray")
    assert unsaved(page) == "4 unsaved change(s)"

    page.get_by_role("button", name="Update (u)").click()
    toast(page, re.compile(r"3 fix\(es\) saved · 1 already had that value" + TOAST_END))
    wait_unsaved(page, "")
    assert values(demo, [one, other]) == [("Dealer", "Gold"), ("Placeholder", "Gray")]
    assert sorted((i, f, new) for i, f, _, new, _ in fixes(demo)) == sorted(
        [
            (one, "image_type", "Dealer"),
            (one, "color", "Gold"),
            (other, "image_type", "Placeholder"),
        ]
    )

    # A reload: nothing unsaved, so no question; still signed in, the values are the saved ones.
    page.reload()
    page.get_by_text("Signed in as analyst").wait_for()
    tile(page, one).wait_for()
    idle(page)
    assert dialogs == []
    assert page.get_by_label("Username", exact=True).count() == 0
    assert shows(page, one) == ("Dealer", "Gold")
    assert shows(page, other) == ("Placeholder", "Gray")
    assert tile(page, one).locator(".badge", has_text="Fixed ×2").count() == 1
    assert unsaved(page) == ""
    page.screenshot(path=str(tmp_path / "reloaded.png"))


def test_a_range_selected_takes_one_key(
    browser: object, shared_app: SharedApp, tmp_path: Path
) -> None:
    demo = shared_app.demo
    with demo.sessions() as session:
        items = latest_items(session)
        run = [i.id for i in fixable_run(items, 4)]
        outside = next(i.id for i in items[:24] if i.id not in run and i.image_key)
    preset(demo, {item_id: ("Stock", "Gray") for item_id in [*run, outside]})
    page = signed_in_review(browser, shared_app)

    tile(page, run[0]).locator("img").click()
    page.keyboard.press(" ")
    assert tile(page, run[0]).get_attribute("aria-selected") == "true"
    tile(page, run[-1]).locator("img").click(modifiers=["Shift"])
    selected = page.locator('.tile[aria-selected="true"]')
    assert sorted(int(selected.nth(n).get_attribute("data-id")) for n in range(4)) == run
    assert selected.count() == 4
    assert page.get_by_text("4 selected", exact=True).count() == 1
    assert all(tile(page, i).locator("input.check").is_checked() for i in run)

    page.keyboard.press("3")  # Placeholder, on every selected tile
    assert [shows(page, i) for i in run] == [("Placeholder", NO_COLOR)] * 4
    assert shows(page, outside) == ("Stock", "Gray")
    assert unsaved(page) == "4 unsaved change(s)"
    page.screenshot(path=str(tmp_path / "range-placeholder.png"))

    page.keyboard.press("u")
    toast(page, saved(8))  # each type, and each color cleared with it
    wait_unsaved(page, "")
    wait_until(page, lambda: selected.count() == 0, "the selection cleared after Update")
    assert not any(tile(page, i).locator("input.check").is_checked() for i in run)
    assert values(demo, run) == [("Placeholder", None)] * 4
    assert values(demo, [outside]) == [("Stock", "Gray")]
    assert sorted((i, f, old, new) for i, f, old, new, _ in fixes(demo)) == sorted(
        [(i, "image_type", "Stock", "Placeholder") for i in run]
        + [(i, "color", "Gray", None) for i in run]
    )
    assert [shows(page, i) for i in run] == [("Placeholder", NO_COLOR)] * 4


def test_undo_the_last_update(browser: object, shared_app: SharedApp, tmp_path: Path) -> None:
    demo = shared_app.demo
    with demo.sessions() as session:
        one, other = (i.id for i in fixable_run(latest_items(session), 2))
    preset(demo, {one: ("Stock", "Beige"), other: ("Dealer", "White")})
    page = signed_in_review(browser, shared_app)

    tile(page, one).locator("select.type").select_option("Placeholder")
    tile(page, other).locator("select.color").select_option("Purple")
    page.get_by_role("button", name="Update (u)").click()
    toast(page, saved(3))
    assert values(demo, [one, other]) == [("Placeholder", None), ("Dealer", "Purple")]
    first_fixes = fixes(demo)
    assert len(first_fixes) == 3

    undo = page.get_by_role("button", name="Undo last update (3 fix(es))")
    undo.click()
    toast(page, re.compile(r"Undone: 3 fix\(es\) saved" + TOAST_END))
    wait_until(page, lambda: undo.count() == 0, "the Undo button gone once used")
    assert values(demo, [one, other]) == [("Stock", "Beige"), ("Dealer", "White")]
    history = fixes(demo)
    assert history[:3] == first_fixes  # the fixes stay in the history, and their undoing follows
    assert sorted(history[3:]) == sorted(
        [
            (one, "image_type", "Placeholder", "Stock", "analyst"),
            (one, "color", None, "Beige", "analyst"),
            (other, "color", "Purple", "White", "analyst"),
        ]
    )
    wait_until(page, lambda: shows(page, one) == ("Stock", "Beige"), "the tile back")
    assert shows(page, other) == ("Dealer", "White")
    assert tile(page, one).locator(".badge", has_text="Fixed ×4").count() == 1
    page.screenshot(path=str(tmp_path / "undone.png"))


def test_unsaved_changes_are_kept_and_guarded(
    browser: object, shared_app: SharedApp, tmp_path: Path
) -> None:
    demo = shared_app.demo
    with demo.sessions() as session:
        (changed,) = (i.id for i in fixable_run(latest_items(session), 1))
    preset(demo, {changed: ("Stock", "Beige")})
    page = signed_in_review(browser, shared_app)
    dialogs: list[tuple[str, str]] = []
    answer = {"accept": False}

    def on_dialog(dialog: object) -> None:
        dialogs.append((dialog.type, dialog.message))  # type: ignore[attr-defined]
        if answer["accept"]:
            dialog.accept()  # type: ignore[attr-defined]
        else:
            dialog.dismiss()  # type: ignore[attr-defined]

    page.on("dialog", on_dialog)

    tile(page, changed).locator("select.type").select_option("Dealer")
    assert unsaved(page) == "1 unsaved change(s)"
    # Another page and back: the change is still pending, and shown on its tile.
    go_to_page(page, 2)
    assert tile(page, changed).count() == 0
    wait_unsaved(page, "1 unsaved change(s) (1 on other pages or filters)")
    go_to_page(page, 1)
    wait_unsaved(page, "1 unsaved change(s)")
    assert shows(page, changed) == ("Dealer", "Beige")
    assert "changed" in (tile(page, changed).get_attribute("class") or "").split()

    # A reload asks first; staying keeps the page as it was (the same document, not reloaded).
    page.evaluate("window.stillHere = true")
    with page.expect_event("dialog") as asked:
        page.evaluate("() => setTimeout(() => location.reload())")  # as the reload button does
    assert asked.value.type == "beforeunload"
    page.wait_for_timeout(300)  # (a reload that went ahead would have replaced the document)
    assert page.evaluate("window.stillHere === true")
    assert unsaved(page) == "1 unsaved change(s)"

    # A link of the sidebar asks too; Cancel stays on the review page.
    page.get_by_role("link", name="Fix history").click()
    assert dialogs[-1][0] == "confirm" and "1 unsaved change(s)" in dialogs[-1][1], dialogs
    idle(page)
    assert page.get_by_role("heading", name="Sitemap review").is_visible()
    assert page.url.split("?")[0].endswith("/review")
    assert shows(page, changed) == ("Dealer", "Beige")

    # OK leaves; the change waits in this tab for the analyst's return.
    answer["accept"] = True
    page.get_by_role("link", name="Fix history").click()
    page.get_by_role("heading", name="Fix history").wait_for()
    open_review(page)
    wait_unsaved(page, "1 unsaved change(s)")
    assert shows(page, changed) == ("Dealer", "Beige")

    # Discard: nothing pending, nothing asked on a reload, nothing saved.
    asked_before = len(dialogs)
    page.get_by_role("button", name="Discard").click()
    wait_unsaved(page, "")
    assert shows(page, changed) == ("Stock", "Beige")
    page.reload()
    tile(page, changed).wait_for()
    idle(page)
    assert len(dialogs) == asked_before
    assert unsaved(page) == ""
    assert fixes(demo) == []
    assert [d[0] for d in dialogs] == ["beforeunload", "confirm", "confirm"]


def test_the_large_view(browser: object, shared_app: SharedApp, tmp_path: Path) -> None:
    demo = shared_app.demo
    with demo.sessions() as session:
        items = latest_items(session)
        first, second = fixable_run(items, 2)
        positions = {i.id: i.position for i in items}
        # An image the scrape could not read: the server has neither its original nor a thumbnail.
        broken = next(i for i in items[:24] if i.status == "error" and i.image_key)
    preset(demo, {first.id: ("Stock", "Beige"), second.id: ("Stock", "Beige")})
    page = signed_in_review(browser, shared_app)
    viewer = page.locator(".viewer")
    picture = viewer.locator(".stage img")
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if "/api/" in r.url else None)

    def loaded(item_id: int) -> bool:
        src, width = picture.evaluate("i => [i.src, i.complete ? i.naturalWidth : 0]")
        return src.endswith(f"/api/original/{item_id}") and width > 0

    def scale() -> float:
        transform = picture.evaluate("i => i.style.transform")
        return float(re.search(r"scale\(([\d.]+)\)", transform).group(1))  # type: ignore[union-attr]

    tile(page, first.id).locator("img").click()
    page.keyboard.press("Enter")
    viewer.wait_for()
    wait_until(page, lambda: loaded(first.id), "the original of the first image")
    assert viewer.locator(".facts .title").inner_text().startswith(f"#{positions[first.id]} ")
    assert scale() == 1
    page.keyboard.press("+")
    assert scale() > 1
    assert viewer.locator(".zoom-level").inner_text() == "150%"
    page.screenshot(path=str(tmp_path / "large-view-zoomed.png"))

    page.keyboard.press("ArrowRight")
    wait_until(page, lambda: loaded(second.id), "the original of the next image")
    assert viewer.locator(".facts .title").inner_text().startswith(f"#{positions[second.id]} ")
    assert scale() == 1  # each image opens whole
    page.keyboard.press("1")
    assert viewer.locator("select.type").input_value() == "Dealer"
    page.keyboard.press("c")
    page.keyboard.type("gol")
    page.keyboard.press("Enter")
    assert viewer.locator("select.color").input_value() == "Gold"
    # The keys still work after a pick in the large view: back, then forth.
    page.keyboard.press("ArrowLeft")
    wait_until(page, lambda: loaded(first.id), "back to the first image after a pick")
    page.keyboard.press("ArrowRight")
    wait_until(page, lambda: loaded(second.id), "forth to the second")
    page.screenshot(path=str(tmp_path / "large-view-fixed.png"))
    page.keyboard.press("Escape")
    assert viewer.is_hidden()
    assert shows(page, second.id) == ("Dealer", "Gold")
    assert focused(page)["id"] == str(second.id)
    wait_unsaved(page, "2 unsaved change(s)")

    # The large view of an image the server has no picture of: "no image", after a few tries
    # (never a loop of requests).
    asked.clear()
    tile(page, broken.id).locator("img").click()
    page.keyboard.press("Enter")
    wait_until(
        page,
        lambda: picture.evaluate("i => i.src.startsWith('data:') && i.complete"),
        "the large view's 'no image'",
    )
    page.wait_for_timeout(1000)  # (the loop asked dozens of times a second)
    mine = [u for u in asked if f"/original/{broken.id}" in u or str(broken.image_key) in u]
    assert 1 <= len(mine) <= 6, mine
    assert len(asked) == len(mine), asked
    page.keyboard.press("Escape")

    # At the page's last image, the next one is the next page's first.
    page.keyboard.press("End")
    page.keyboard.press("Enter")
    assert viewer.locator(".where").inner_text() == "24 of 24 · page 1 of 2"
    page.keyboard.press("ArrowRight")
    wait_until(
        page,
        lambda: viewer.locator(".where").inner_text() == "1 of 20 · page 2 of 2",
        "the large view on the next page",
    )
    assert viewer.locator(".facts .title").inner_text().startswith("#24 ")
    page.keyboard.press("Escape")
    page.get_by_text("44 of 44 images match · page 2 of 2").wait_for()
    wait_unsaved(page, "2 unsaved change(s) (2 on other pages or filters)")
    assert fixes(demo) == []


def test_thumbnails_once_then_sorted_by_confidence_then_the_dense_view(
    browser: object, shared_app: SharedApp, tmp_path: Path
) -> None:
    """Three views of one page that change nothing, in one visit: each thumbnail is downloaded
    once, the sort by confidence puts the lowest first, and the dense view shows two dozen tiles
    at a laptop's size."""
    with shared_app.sessions() as session:
        items = latest_items(session)
    lowest = min((i for i in items if i.ml_confidence is not None), key=lambda i: i.ml_confidence)
    page = new_page(browser)
    page.add_init_script("performance.setResourceTimingBufferSize(10000)")
    responses: dict[str, object] = {}
    page.on(
        "response",
        lambda r: responses.setdefault(r.url, r) if THUMB_PATH in r.url else None,
    )
    sign_in(page, shared_app.url)
    open_review(page)
    pictures = page.locator(".tile img")
    tiles = page.locator(".tile")
    grid = page.locator(".grid")

    # --- the thumbnails are downloaded once ---
    def loaded_thumbs() -> list[str]:
        return [url for url in pictures.evaluate_all(THUMBS) if THUMB_PATH in url]

    def shown_thumbs(enough: Callable[[list[str]], bool]) -> list[str]:
        grid.evaluate("g => g.scrollIntoView({block: 'start'})")
        return wait_until(
            page, lambda: enough(loaded_thumbs()) and loaded_thumbs(), "the thumbnails loaded"
        )  # type: ignore[return-value]

    first = shown_thumbs(lambda urls: len(urls) >= 8)
    # The server says they never change, and they were downloaded (the measure sees that).
    for url in first:
        headers = responses[url].headers  # type: ignore[attr-defined]
        assert "immutable" in headers["cache-control"], headers
        assert "max-age=31536000" in headers["cache-control"], headers
    assert sorted(page.evaluate(NETWORK, first)) == sorted(first)

    go_to_page(page, 2)
    assert not set(shown_thumbs(lambda urls: len(urls) >= 8)) & set(first)
    page.evaluate("performance.clearResourceTimings()")
    go_to_page(page, 1)
    again = shown_thumbs(lambda urls: set(first) <= set(urls))
    assert page.evaluate(NETWORK, again) == [], "page 1's thumbnails were downloaded again"

    # Nor does drawing the page again (a key that redraws every tile) ask for any picture,
    # even those the server had none for.
    page.evaluate("performance.clearResourceTimings()")
    pictures.first.click()
    page.keyboard.press("d")
    page.keyboard.press("d")
    page.wait_for_timeout(1500)  # a failed thumbnail is tried again after 0.4 s, then 0.8 s
    asked = page.evaluate(
        """() => performance.getEntriesByType("resource").map(e => e.name)
             .filter(n => n.includes("/api/thumb/"))"""
    )
    assert asked == [], asked
    assert "dense" not in (grid.get_attribute("class") or "").split()  # (d twice: as before)

    # --- sorted by confidence, lowest first ---
    assert tiles.first.get_attribute("data-id") == str(items[0].id)  # sitemap order first
    # Back at the top, as on a page just opened (a list opened while the page still scrolls to
    # its box closes again).
    page.get_by_role("heading", name="Sitemap review").scroll_into_view_if_needed()
    clicked = pick(page, "Order", "ML confidence, lowest first")
    settle(
        page,
        lambda: tiles.first.get_attribute("data-id") == str(lowest.id) or "not yet",
        "sorted by confidence",
        clicked,
    )
    assert query(page)["sort"] == ["confidence"]
    shown = [re.search(r"(\d+)%", text) for text in tiles.locator(".ml").all_inner_texts()]
    percents = [int(m.group(1)) for m in shown if m]
    assert len(percents) >= 2
    assert percents[0] <= percents[1], percents
    assert percents == sorted(percents), percents
    assert percents[0] == round(lowest.ml_confidence * 100)
    page.screenshot(path=str(tmp_path / "by-confidence.png"))

    # --- the dense view shows two dozen tiles ---
    page.get_by_role("heading", name="Sitemap review").scroll_into_view_if_needed()
    clicked = pick(page, "Per page", "48")
    settle(page, lambda: tiles.count() == 44 or "not yet", "48 per page", clicked)

    def fully_visible() -> int:
        grid.evaluate("g => g.scrollIntoView({block: 'start'})")
        return tiles.evaluate_all(FULLY_VISIBLE)

    comfortable = fully_visible()
    assert 0 < comfortable < 24, comfortable  # (the count can tell the two views apart)
    tiles.first.locator("img").click()
    page.keyboard.press("d")
    assert "dense" in (grid.get_attribute("class") or "").split()
    assert page.get_by_role("button", name="Comfortable view (d)").count() == 1
    dense = fully_visible()
    page.screenshot(path=str(tmp_path / "dense.png"))
    assert dense >= 24, f"{dense} tiles fully in sight (comfortable: {comfortable})"
