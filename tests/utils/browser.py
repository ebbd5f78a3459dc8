"""Helpers of the browser tests: the scraped demo they start from, signing in, Streamlit's widgets
and the review grid (one component in an open shadow root: Playwright's CSS locators pierce it).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.accounts import ensure_demo_accounts
from db.engine import make_engine, make_session_factory
from db.models import SitemapItem
from tagging.demo.generate import DemoInventory
from tagging.demo.setup import register_demo_advertisers
from tagging.ingest.fetch import GuardedClient, client_from_settings
from tagging.ingest.scrape import run_scrape
from tagging.server.client import MLClient

SETTLE_SECONDS = 15.0
LAPTOP = {"width": 1440, "height": 900}
"""The review grid's tests run at a laptop's size."""


@dataclass(frozen=True)
class ScrapedDemo:
    sessions: sessionmaker[Session]
    client: GuardedClient
    """The guarded client the scrape used (for scraping again)."""


@dataclass(frozen=True)
class SharedApp:
    """The package's app, as the scrape left it: what ``demo``, ``running_app``,
    ``app_settings`` and ``ml_server`` give a test of its own."""

    url: str
    """The app's base URL (``running_app["url"]``)."""
    log: Path
    settings: object
    """The app's settings (``app_settings``): its database, ML server and token."""
    ml_url: str
    """The ML server's base URL (``ml_server.url``)."""
    demo: ScrapedDemo
    """The app database's sessions and the scrape's client (``demo``)."""

    @property
    def sessions(self) -> sessionmaker[Session]:
        return self.demo.sessions


@contextmanager
def scraped_demo(app_settings: object, demo_dir: Path, cdn: object) -> Iterator[ScrapedDemo]:
    """The demo's advertisers and accounts, and one real scrape of the page's default advertiser."""
    inventory = DemoInventory.load(demo_dir)
    register_demo_advertisers(app_settings, inventory, cdn.url)  # type: ignore[arg-type, attr-defined]
    engine = make_engine(app_settings.database_url)  # type: ignore[attr-defined]
    sessions = make_session_factory(engine)
    with sessions.begin() as session:
        ensure_demo_accounts(session)
    name = sorted(a.name for a in inventory.advertisers)[0]  # the page's default advertiser
    client = client_from_settings(app_settings)  # type: ignore[arg-type]
    try:
        run_scrape(sessions, name, ml=MLClient.from_settings(app_settings), client=client)  # type: ignore[arg-type]
        yield ScrapedDemo(sessions, client)
    finally:
        client.close()
        engine.dispose()


def latest_items(session: Session) -> list[SitemapItem]:
    """The items of the newest scrape (the review page's default), in sitemap order."""
    return list(
        session.scalars(
            select(SitemapItem)
            .where(
                SitemapItem.scrape_id
                == select(SitemapItem.scrape_id)
                .order_by(SitemapItem.scrape_id.desc())
                .limit(1)
                .scalar_subquery()
            )
            .order_by(SitemapItem.position)
        )
    )


# --- Streamlit ----------------------------------------------------------------------------------


def choose(page: object, key: str, option: str) -> None:
    """Pick ``option`` in the Streamlit selectbox whose widget key is ``key``."""
    page.locator(f".st-key-{key}").get_by_role("combobox").click()  # type: ignore[attr-defined]
    page.get_by_role("option", name=option, exact=True).click()  # type: ignore[attr-defined]


def query(page: object) -> dict[str, list[str]]:
    return parse_qs(urlparse(page.url).query)  # type: ignore[attr-defined]


def running(page: object) -> bool:
    """Whether Streamlit is still running the script (its status widget shows)."""
    return page.locator('[data-testid="stStatusWidget"]').count() > 0  # type: ignore[attr-defined]


def settle(page: object, done: Callable[[], object], what: str, since: float) -> float:
    """Seconds from ``since`` (the click) until ``done()`` holds and the script is idle; fails,
    saying what was seen, when that does not happen within :data:`SETTLE_SECONDS`."""
    seen: object = None
    while time.perf_counter() - since < SETTLE_SECONDS:
        seen = done()
        if seen is True and not running(page):
            settled = time.perf_counter() - since
            # Look again after a beat: a late run must not undo the pick.
            page.wait_for_timeout(300)  # type: ignore[attr-defined]
            if done() is True and not running(page):
                return settled
        page.wait_for_timeout(20)  # type: ignore[attr-defined]
    pytest.fail(f"{what}: not settled after {SETTLE_SECONDS:.0f} s; saw {seen!r}")


def idle(page: object, what: str = "the script's run") -> None:
    """Wait until Streamlit has finished running the script."""
    settle(page, lambda: True, what, time.perf_counter())


def box(page: object, testid: str, label: str) -> object:
    """The widget with this test id whose label is ``label``."""
    return (
        page.locator(f'[data-testid="{testid}"]')  # type: ignore[attr-defined]
        .filter(has=page.get_by_text(label, exact=True))  # type: ignore[attr-defined]
        .first
    )


def pick(page: object, label: str, option: str) -> float:
    """Pick ``option`` in the selectbox labelled ``label``; returns when it was clicked."""
    box(page, "stSelectbox", label).get_by_role("combobox").click()  # type: ignore[attr-defined]
    choice = page.get_by_role("option", name=option, exact=True)  # type: ignore[attr-defined]
    choice.wait_for()
    clicked = time.perf_counter()
    choice.click()
    return clicked


def search(page: object, text: str) -> float:
    """Type ``text`` in the search box; returns when Enter was pressed."""
    field = box(page, "stTextInput", "Search URLs and titles").get_by_role("textbox")  # type: ignore[attr-defined]
    field.fill(text)
    pressed = time.perf_counter()
    field.press("Enter")
    return pressed


def go_to_page(page: object, number: int) -> None:
    """Type ``number`` in the review page's Page box, as a person would, and wait for it: the
    caption says so, the script is idle, and the grid (drawn in the browser after the run) shows
    other tiles than before."""
    first_tile = page.locator(".tile").first  # type: ignore[attr-defined]
    before = first_tile.get_attribute("data-id")
    field = page.get_by_label("Page", exact=True)  # type: ignore[attr-defined]
    field.fill(str(number))
    field.press("Enter")
    page.get_by_text(f" · page {number} of ").wait_for()  # type: ignore[attr-defined]
    idle(page, f"page {number}")
    wait_until(
        page,
        lambda: first_tile.get_attribute("data-id") not in (before, None),
        f"the grid's tiles of page {number}",
    )


TOAST_END = r"( · \d\d:\d\d:\d\d)?$"
"""A toast's end: the time that makes each toast new (the page adds it)."""


def saved(count: int) -> re.Pattern[str]:
    """A toast's text for ``count`` fixes saved and pushed: its icon (a check mark, its name in
    the text), then those words alone (no race, no pending sync)."""
    return re.compile(rf"(^|check_circle)\s*{count} fix\(es\) saved{TOAST_END}")


def toast(page: object, text: object) -> object:
    """Wait for the toast that says ``text`` (a string or a compiled pattern); returns it."""
    found = page.locator('[data-testid="stToast"]').filter(has_text=text).first  # type: ignore[attr-defined]
    found.wait_for()
    return found


def new_page(browser: object, viewport: dict[str, int] | None = None) -> object:
    page = browser.new_page(viewport=viewport or LAPTOP)  # type: ignore[attr-defined]
    page.set_default_timeout(30_000)
    return page


def sign_in(page: object, url: str, user: str = "analyst") -> None:
    """Open the app at ``url`` and sign in as ``user`` (a demo account)."""
    page.goto(url)  # type: ignore[attr-defined]
    page.get_by_label("Username", exact=True).fill(user)  # type: ignore[attr-defined]
    page.get_by_label("Password", exact=True).fill(f"{user}-demo-pass")  # type: ignore[attr-defined]
    page.keyboard.press("Enter")  # type: ignore[attr-defined]
    page.get_by_text(f"Signed in as {user}").wait_for()  # type: ignore[attr-defined]


def open_review(page: object) -> None:
    """Follow the sidebar's link to the review page and wait for its grid."""
    page.get_by_role("link", name="Sitemap review").click()  # type: ignore[attr-defined]
    page.get_by_role("heading", name="Sitemap review").wait_for()  # type: ignore[attr-defined]
    page.locator(".tile").first.wait_for()  # type: ignore[attr-defined]
    idle(page, "the review page")


# --- the review grid ----------------------------------------------------------------------------


def tile(page: object, item_id: int) -> object:
    """The grid's tile of the item ``item_id``."""
    return page.locator(f'.tile[data-id="{item_id}"]')  # type: ignore[attr-defined]


def shows(page: object, item_id: int) -> tuple[str, str]:
    """What the tile's two dropdowns show: the Image Type, and the Color's text."""
    here = tile(page, item_id)
    return (
        here.locator("select.type").input_value(),  # type: ignore[attr-defined]
        here.locator("select.color option:checked").inner_text(),  # type: ignore[attr-defined]
    )


def unsaved(page: object) -> str:
    """The bar's count of unsaved changes ("" when there is none)."""
    # (Read at once, whatever is there: the bar is drawn again on every change.)
    return "".join(page.locator(".bar .count").all_inner_texts())  # type: ignore[attr-defined]


def wait_unsaved(page: object, text: str) -> None:
    """Wait until the bar's count reads ``text`` ("" for none)."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while unsaved(page) != text:
        if time.monotonic() > deadline:
            pytest.fail(f"the bar says {unsaved(page)!r}, not {text!r}")
        page.wait_for_timeout(20)  # type: ignore[attr-defined]


FOCUSED = """() => {
  let node = document.activeElement;
  while (node && node.shadowRoot && node.shadowRoot.activeElement) {
    node = node.shadowRoot.activeElement;
  }
  return node ? {tag: node.tagName, id: node.dataset ? node.dataset.id || null : null,
                 cls: String(node.className || ""), label: node.getAttribute("aria-label")} : null;
}"""


def focused(page: object) -> dict | None:
    """The element that has the keyboard's focus, looking into shadow roots."""
    return page.evaluate(FOCUSED)  # type: ignore[attr-defined]


def tab_to_first_tile(page: object, most: int = 80) -> int:
    """Press Tab until a tile of the grid has the focus; returns how many presses it took."""
    for presses in range(1, most + 1):
        page.keyboard.press("Tab")  # type: ignore[attr-defined]
        now = focused(page)
        if now and "tile" in now["cls"].split():
            return presses
    pytest.fail(f"Tab never reached a tile ({most} presses); the focus is on {focused(page)}")


def wait_until(page: object, check: Callable[[], object], what: str) -> object:
    """Poll ``check()`` until it returns something truthy (returned); fails after
    :data:`SETTLE_SECONDS`, saying what was last seen."""
    deadline = time.monotonic() + SETTLE_SECONDS
    seen = check()
    while not seen:
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not after {SETTLE_SECONDS:.0f} s (saw {seen!r})")
        page.wait_for_timeout(20)  # type: ignore[attr-defined]
        seen = check()
    return seen
