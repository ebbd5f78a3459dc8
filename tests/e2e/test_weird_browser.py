"""The Weird results page in a real browser: ignoring a finding takes one click.

AppTest cannot see this: it commits a text input's value as soon as it is set. A browser commits
it when the field loses focus, so with the Ignore button enabled only once a reason was committed,
the first click merely committed the reason (and found the button still disabled); the second
click ignored the finding.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from db.findings import get_finding, list_findings
from db.models import FindingState
from db.vocab import LEGACY_PLACEHOLDER
from tagging.detectors.refresh import refresh_findings
from tests.utils.browser import SharedApp, choose, query, running, settle
from tests.utils.world import World, photos

pytestmark = pytest.mark.browser

ADVERTISER = "Quirky Cars"
REASON = "purged from the cache on Monday"
CARD = re.compile(f"^{ADVERTISER} · scrape #")  # the head of the finding's card


def test_ignore_takes_one_click(browser: object, shared_app: SharedApp, tmp_path: Path) -> None:
    sessions = shared_app.sessions
    with sessions.begin() as session:
        world = World(session)
        legacy = {"type": "Placeholder", "color": "N/A"}
        world.scrape(world.advertiser(ADVERTISER), [*photos("q", 3), {"name": "q-old", **legacy}])
        refresh_findings(session)
        (finding_id,) = [
            f.id
            for f in list_findings(session, detector=LEGACY_PLACEHOLDER)
            if f.advertiser == ADVERTISER
        ]

    page = browser.new_page(viewport={"width": 1600, "height": 1200})  # type: ignore[attr-defined]
    page.set_default_timeout(30_000)
    page.goto(shared_app.url)
    page.get_by_label("Username", exact=True).fill("analyst")
    page.get_by_label("Password", exact=True).fill("analyst-demo-pass")
    page.keyboard.press("Enter")
    page.get_by_role("link", name="Weird results").click()
    page.get_by_role("heading", name="Weird results").wait_for()
    clicked = time.perf_counter()
    choose(page, "weird-advertiser", ADVERTISER)

    def narrowed() -> object:
        shown = (query(page).get("advertiser"), page.get_by_text(CARD).count())
        return True if shown == ([ADVERTISER], 1) else shown

    settle(page, narrowed, f"pick {ADVERTISER}", clicked)

    page.get_by_role("button", name=re.compile("Ignore or mark fixed")).click()
    reason = page.get_by_role("textbox", name="Reason")
    reason.click()
    reason.press_sequentially(REASON)
    # One click, as an analyst would, while the reason is still being edited (not committed
    # yet): a mouse click where the button is, whether or not it looks enabled at that moment.
    where = page.get_by_role("button", name="Ignore", exact=True).bounding_box()
    assert where is not None
    page.mouse.click(where["x"] + where["width"] / 2, where["y"] + where["height"] / 2)

    deadline = time.monotonic() + 15
    state = None
    while time.monotonic() < deadline:
        with sessions() as session:
            state = get_finding(session, finding_id).state
        if state == FindingState.IGNORED and not running(page):
            break
        page.wait_for_timeout(100)
    page.screenshot(path=str(tmp_path / "weird-ignored.png"), full_page=True)
    assert state == FindingState.IGNORED, "one click on Ignore did not ignore the finding"
    page.get_by_text("Ignored until its evidence changes.").wait_for()
    with sessions() as session:
        assert get_finding(session, finding_id).state_reason == REASON
