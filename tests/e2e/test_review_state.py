"""The review page's pickers in a real browser: every pick sticks the first time, and the URL
follows it.

AppTest cannot see this: it sends the widget values the script expects. A browser sends the
value for the widget it was shown, and a widget whose identity changed between two runs (seeded
with ``index=``/``default=`` from the URL written by the run before) dropped every second pick.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db.models import Advertiser, Scrape, SitemapItem
from db.review import ReviewFilter, review_page
from tagging.ingest.scrape import run_scrape
from tagging.server.client import MLClient
from tests.utils.browser import SharedApp, box, pick, query, search, settle

pytestmark = pytest.mark.browser

PICKED = ("Lakeside Auto", "Metro Car Center", "Summit Auto Group")


def pick_advertiser(page: object, name: str) -> float:
    """Pick ``name``; returns when the option was clicked."""
    return pick(page, "Advertiser", name)


def add_to_multiselect(page: object, label: str, option: str) -> float:
    """Add ``option`` to the multiselect ``label``; returns when the option was clicked."""
    box(page, "stMultiSelect", label).get_by_role("combobox").click()  # type: ignore[attr-defined]
    choice = page.get_by_role("option", name=option, exact=True)  # type: ignore[attr-defined]
    choice.wait_for()
    clicked = time.perf_counter()
    choice.click()
    page.keyboard.press("Escape")  # type: ignore[attr-defined]
    return clicked


def match_caption(page: object) -> str:
    caption = page.get_by_text(" images match · page ")  # type: ignore[attr-defined]
    return caption.first.inner_text() if caption.count() else ""


def test_every_pick_sticks_the_first_time(
    browser: object, shared_app: SharedApp, tmp_path: Path
) -> None:
    sessions, client = shared_app.sessions, shared_app.demo.client
    ml = MLClient.from_settings(shared_app.settings)  # type: ignore[arg-type]
    for name in PICKED:
        run_scrape(sessions, name, ml=ml, client=client)
    with sessions() as session:
        scrape_of = dict(
            session.execute(
                select(Advertiser.name, func.max(Scrape.id))
                .join(Scrape.advertiser)
                .group_by(Advertiser.name)
            ).all()
        )
        last = scrape_of[PICKED[-1]]

        def matching(**kwargs: object) -> int:
            return review_page(session, last, ReviewFilter(**kwargs), limit=1)[1]  # type: ignore[arg-type]

        total = matching()
        two_types = ("Stock", "Dealer")
        expected = {(): total, ("Stock",): matching(image_types=("Stock",))}
        expected[two_types] = matching(image_types=two_types)
        words = {
            word.lower()
            for title in session.scalars(
                select(SitemapItem.title).where(SitemapItem.scrape_id == last)
            )
            for word in (title or "").split()
            if len(word) > 3 and word.isalpha()
        }
        terms = {term: matching(image_types=two_types, text=term) for term in sorted(words)}
    # Two searches that each narrow the grid, to different counts.
    by_count = {n: t for t, n in terms.items() if 0 < n < expected[two_types]}
    assert len(by_count) > 1, f"no two narrowing search terms in {terms}"
    first_term, second_term = sorted(by_count.values())[:2]
    assert expected[("Stock",)] < expected[two_types] < total, expected

    page = browser.new_page(viewport={"width": 1600, "height": 1200})  # type: ignore[attr-defined]
    page.set_default_timeout(30_000)
    page.goto(shared_app.url)
    page.get_by_label("Username", exact=True).fill("analyst")
    page.get_by_label("Password", exact=True).fill("analyst-demo-pass")
    page.keyboard.press("Enter")
    page.get_by_role("link", name="Sitemap review").click()
    page.get_by_role("heading", name="Sitemap review").wait_for()
    page.get_by_text("Images", exact=True).first.wait_for()

    def shows(name: str) -> Callable[[], object]:
        def check() -> object:
            scrape = box(page, "stSelectbox", "Scrape").get_by_role("combobox")  # type: ignore[attr-defined]
            shown = (
                box(page, "stSelectbox", "Advertiser").get_by_role("combobox").input_value(),  # type: ignore[attr-defined]
                scrape.input_value() if scrape.count() else None,
                query(page).get("advertiser"),
            )
            right = (
                shown[0] == name
                and (shown[1] or "").startswith(f"#{scrape_of[name]} ")
                and shown[2] == [name]
            )
            return True if right else shown

        return check

    def filtered(types: tuple[str, ...], text: str, count: int) -> Callable[[], object]:
        def check() -> object:
            params = query(page)
            shown = (
                sorted(params.get("type", [])),
                params.get("q", [""])[0],
                params.get("advertiser"),
                match_caption(page),
            )
            right = (
                shown[0] == sorted(types)
                and shown[1] == text
                and shown[2] == [PICKED[-1]]
                and shown[3].startswith(f"{count:,} of {total:,} images match")
            )
            return True if right else shown

        return check

    timings: dict[str, float] = {}
    # Three advertisers in a row: each must stick the first time.
    for name in PICKED:
        clicked = pick_advertiser(page, name)
        timings[f"advertiser {name}"] = settle(page, shows(name), f"pick {name}", clicked)

    # A type filter, then a second type added to it.
    clicked = add_to_multiselect(page, "Image Type", "Stock")
    timings["type Stock"] = settle(
        page, filtered(("Stock",), "", expected[("Stock",)]), "type filter Stock", clicked
    )
    clicked = add_to_multiselect(page, "Image Type", "Dealer")
    timings["type + Dealer"] = settle(
        page, filtered(two_types, "", expected[two_types]), "type filter Stock + Dealer", clicked
    )

    # Two searches, then clearing the box once.
    for term in (first_term, second_term):
        pressed = search(page, term)
        timings[f"search {term}"] = settle(
            page, filtered(two_types, term, terms[term]), f"search {term!r}", pressed
        )
    pressed = search(page, "")
    timings["search cleared"] = settle(
        page, filtered(two_types, "", expected[two_types]), "clear the search", pressed
    )
    page.screenshot(path=str(tmp_path / "review-state.png"), full_page=True)

    # Leave the page and come back: the same view, in the page and in the URL.
    page.get_by_role("link", name="Fix history").click()
    page.get_by_role("heading", name="Fix history").wait_for()
    page.get_by_role("link", name="Sitemap review").click()
    page.get_by_role("heading", name="Sitemap review").wait_for()
    back = time.perf_counter()
    settle(page, shows(PICKED[-1]), "back on the page: the advertiser", back)
    settle(page, filtered(two_types, "", expected[two_types]), "back on the page: filters", back)

    print("\nReview page, click to settled (script idle, page and URL right):")
    for what, seconds in timings.items():
        print(f"  {what:<32} {seconds * 1000:6.0f} ms")
    ordered = sorted(timings.values())
    print(f"  median {ordered[len(ordered) // 2] * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms")
