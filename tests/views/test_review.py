"""AppTest of the sitemap review page, for each role, on a seeded database.

The tiles are one component (views/review_grid.py): AppTest reads what the page sends it and
sends what the browser would (tests/utils/grid.py), so the page's callbacks for the grid's
"Update", "Undo" and paging run here as after a click; the clicks themselves are driven in
Chromium by tests/e2e.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from streamlit.testing.v1 import AppTest

from db.accounts import Actor, set_role
from db.findings import list_findings
from db.fixes import FixChange, apply_fixes
from db.models import (
    Advertiser,
    FindingState,
    ManualFix,
    Role,
    Scrape,
    SitemapItem,
    SyncStatus,
    Thumbnail,
    utcnow,
)
from db.vocab import COLORS, IMAGE_TYPES, LEGACY_PLACEHOLDER, PLACEHOLDER
from tagging.detectors.refresh import refresh_findings
from tests.utils.factories import actor, make_advertiser, make_scrape
from tests.utils.grid import change, grid_data, send, tiles, undo, update
from views.common import plain

PAGE = "views/review.py"
HOSTILE = "<script>alert(1)</script> **bold** ![x](http://evil.example/p.png)"


@pytest.fixture
def seeded(app_db: sessionmaker[Session]) -> list[int]:
    with app_db.begin() as session:
        advertiser = make_advertiser(session, "Sunrise Motors")
        scrape = make_scrape(
            session, advertiser, [("Dealer", "Red"), ("Stock", None), ("Placeholder", None)] * 10
        )
        first = session.scalars(
            select(SitemapItem)
            .where(SitemapItem.scrape_id == scrape.id)
            .order_by(SitemapItem.position)
        ).first()
        first.title = HOSTILE
        ids = list(
            session.scalars(
                select(SitemapItem.id)
                .where(SitemapItem.scrape_id == scrape.id)
                .order_by(SitemapItem.position)
            )
        )
    return ids


@pytest.fixture(autouse=True)
def settled_refreshes(app_db: sessionmaker[Session]) -> Iterator[None]:
    """A fix asks for a findings refresh in a thread: it ends before the database goes."""
    yield
    from views.common import findings_refresher

    assert findings_refresher().wait()


def fixes(app_db: sessionmaker[Session]) -> list[tuple[str, str | None, str | None, str]]:
    with app_db() as session:
        rows = session.scalars(select(ManualFix).order_by(ManualFix.id))
        return [(f.field, f.old_value, f.new_value, f.user) for f in rows]


def values(app_db: sessionmaker[Session], item_id: int) -> tuple[str, str | None]:
    with app_db() as session:
        item = session.get_one(SitemapItem, item_id)
        return item.image_type, item.color


@pytest.mark.parametrize("role", list(Role))
def test_every_role_can_read_the_grid(
    open_app: Callable[..., AppTest], seeded: list[int], app_db: sessionmaker[Session], role: Role
) -> None:
    with app_db.begin() as session:
        key = session.get_one(SitemapItem, seeded[0]).image_key
        session.add(Thumbnail(image_key=key, jpeg=b"\xff\xd8 a thumbnail"))
    at = open_app(role, PAGE)
    assert not at.exception, at.exception
    assert at.title[0].value == "Sitemap review"
    metrics = {m.label: m.value for m in at.metric}
    assert (
        metrics["Images"] == "30" and metrics["Dealer"] == "10" and metrics["Placeholder"] == "10"
    )
    data = grid_data(at)
    assert [t["position"] for t in data["items"]] == list(range(24))  # the first page
    assert (data["page"], data["pages"]) == (1, 2)
    assert (data["types"], data["colors"]) == (list(IMAGE_TYPES), list(COLORS))
    fixable = role != Role.MANAGER
    assert data["can_fix"] is fixable and data["color_locked"] is False
    assert all(t["fixable"] is fixable for t in data["items"])
    # The seed's values, as they are: a Stock photo has no color (None, not a default pick).
    by_id = tiles(at)
    assert (by_id[seeded[1]]["image_type"], by_id[seeded[1]]["color"]) == ("Stock", None)
    assert (by_id[seeded[0]]["image_type"], by_id[seeded[0]]["color"]) == ("Dealer", "Red")
    assert by_id[seeded[0]]["ml_type"] == "Dealer" and by_id[seeded[0]]["status"] == "ok"
    # Pictures come from the app's own routes only (views/media.py); a tile whose image has no
    # thumbnail shows "no image" at once instead of asking for one.
    assert by_id[seeded[0]]["thumb"] == f"/api/thumb/{key}"
    assert by_id[seeded[1]]["thumb"] is None
    assert by_id[seeded[0]]["original"] == f"/api/original/{seeded[0]}"
    # Nothing to undo yet, nothing acknowledged, no large view to open.
    assert (data["undo"], data["ack"], data["open"]) == (None, None, None)


def toast_texts(at: AppTest) -> list[str]:
    """The toasts' texts without the time that makes each one new (``… · 15:23:20``)."""
    return [re.sub(r" · \d\d:\d\d:\d\d$", "", t.value) for t in at.toast]


def markdown_texts(at: AppTest) -> list[str]:
    """Every text the page gives to a widget that reads Markdown, labels included."""
    bodies = [
        e.value
        for kind in ("markdown", "caption", "info", "warning", "error", "success", "title")
        for e in getattr(at, kind)
    ]
    labels = [
        str(w.label)
        for kind in ("button", "selectbox", "multiselect", "checkbox", "toggle", "expander")
        for w in getattr(at, kind)
    ]
    return bodies + labels


def page_texts(at: AppTest) -> list[str]:
    """Everything the page itself shows as text or Markdown (the grid's tiles excluded)."""
    return markdown_texts(at) + [t.value for t in at.text] + [c.value for c in at.code]


def test_advertiser_text_is_passed_to_the_grid_as_plain_text(
    open_app: Callable[..., AppTest], seeded: list[int]
) -> None:
    at = open_app(Role.ANALYST, PAGE)
    assert not at.exception, at.exception
    # The title's tags are dropped (a script's text with them); the rest is data, as it is:
    # the component sets it as text (textContent), never as HTML or Markdown.
    assert tiles(at)[seeded[0]]["title"] == "**bold** ![x](http://evil.example/p.png)"
    assert not any("alert(1)" in str(t["title"]) for t in grid_data(at)["items"])
    # The page itself renders no title at all.
    assert not [s for s in page_texts(at) if "evil.example" in s or "alert(1)" in s]


@pytest.mark.parametrize(
    ("title", "shown"),
    [
        ("<b>Sale</b>", "Sale"),
        ("2021 <i>Civic</i>&nbsp;&amp; <span class='x'>more</span>", "2021 Civic & more"),
        ("Under <$20k> & a < b", "Under <$20k> & a < b"),  # no tag: kept as written
        ("**Deal** <img src='http://host/t.png'> [x](http://host)", "**Deal** [x](http://host)"),
    ],
)
def test_a_title_s_html_tags_are_dropped_and_the_rest_passed_as_text(
    open_app: Callable[..., AppTest],
    seeded: list[int],
    app_db: sessionmaker[Session],
    title: str,
    shown: str,
) -> None:
    with app_db.begin() as session:
        session.get_one(SitemapItem, seeded[0]).title = title
    at = open_app(Role.ANALYST, PAGE)
    assert not at.exception, at.exception
    assert tiles(at)[seeded[0]]["title"] == shown
    assert not [m for m in markdown_texts(at) if "<" in m or shown in m]


def test_update_applies_every_change_at_once(
    open_app: Callable[..., AppTest], seeded: list[int], app_db: sessionmaker[Session]
) -> None:
    at = open_app(Role.ANALYST, PAGE)
    update(
        at,
        change(seeded[0], "image_type", "Stock", seen="Dealer"),
        change(seeded[1], "color", "Purple", seen=None),
        nonce="first",
    )
    assert not at.exception, at.exception
    assert fixes(app_db) == [
        ("image_type", "Dealer", "Stock", "analyst-user"),
        ("color", None, "Purple", "analyst-user"),
    ]
    with app_db() as session:
        # The ML server of this test is down: the fixes wait, and the page says so.
        assert {f.sync_status for f in session.scalars(select(ManualFix))} == {SyncStatus.PENDING}
    assert any("pending sync" in w.value for w in at.warning)
    assert toast_texts(at) == ["2 fix(es) saved, pending sync"]
    # Redrawn in the same answer with the new values; the grid is told its update landed.
    data = grid_data(at)
    by_id = tiles(at)
    assert by_id[seeded[0]]["image_type"] == "Stock" and by_id[seeded[1]]["color"] == "Purple"
    assert by_id[seeded[0]]["fixes"] == 1 and by_id[seeded[0]]["pending"] is True
    assert data["ack"] == {
        "nonce": "first",
        "ok": True,
        "sent": [f"{seeded[0]}:image_type", f"{seeded[1]}:color"],
    }
    assert data["undo"] == {"count": 2}

    # The trigger is spent: a plain rerun saves nothing again.
    at.run()
    assert len(fixes(app_db)) == 2 and not at.toast
    # The same changes again: already the values, nothing recorded.
    update(
        at,
        change(seeded[0], "image_type", "Stock", seen="Stock"),
        change(seeded[1], "color", "Purple", seen="Purple"),
        nonce="again",
    )
    assert len(fixes(app_db)) == 2
    assert any("2 change(s) already had that value" in i.value for i in at.info)
    assert toast_texts(at) == ["2 already had that value"]
    # An Update with nothing changed says so, in the toast too.
    update(at, nonce="empty")
    assert toast_texts(at) == ["Nothing to update: no dropdown was changed."]
    assert grid_data(at)["ack"] == {"nonce": "empty", "ok": True, "sent": []}


def test_a_fix_to_placeholder_clears_the_color_and_undo_puts_both_back(
    open_app: Callable[..., AppTest], seeded: list[int], app_db: sessionmaker[Session]
) -> None:
    at = open_app(Role.ANALYST, PAGE)
    update(at, change(seeded[0], "image_type", PLACEHOLDER, seen="Dealer"))
    assert values(app_db, seeded[0]) == (PLACEHOLDER, None)
    assert grid_data(at)["undo"] == {"count": 2}  # the type and the color it cleared

    undo(at, nonce="u-1")
    assert not at.exception, at.exception
    assert values(app_db, seeded[0]) == ("Dealer", "Red")
    # The history keeps the fixes and their undoing.
    assert fixes(app_db) == [
        ("image_type", "Dealer", PLACEHOLDER, "analyst-user"),
        ("color", "Red", None, "analyst-user"),
        ("color", None, "Red", "analyst-user"),
        ("image_type", PLACEHOLDER, "Dealer", "analyst-user"),
    ]
    assert toast_texts(at) == ["Undone: 2 fix(es) saved, pending sync"]
    data = grid_data(at)
    assert data["ack"] == {"nonce": "u-1", "ok": True, "sent": []}
    assert data["undo"] is None  # one Undo per Update
    tile = tiles(at)[seeded[0]]
    assert (tile["image_type"], tile["color"], tile["fixes"]) == ("Dealer", "Red", 4)
    assert [(h["field"], h["old"], h["new"]) for h in tile["history"]][:2] == [
        ("image_type", PLACEHOLDER, "Dealer"),
        ("color", None, "Red"),
    ]
    # A second Undo has nothing left to undo: nothing is recorded.
    undo(at, nonce="u-2")
    assert not at.exception, at.exception
    assert len(fixes(app_db)) == 4


def test_undo_after_someone_else_s_fix_wins_but_reports_the_race(
    open_app: Callable[..., AppTest], seeded: list[int], app_db: sessionmaker[Session]
) -> None:
    at = open_app(Role.ANALYST, PAGE)
    update(at, change(seeded[1], "color", "Gold", seen=None))
    with app_db.begin() as session:  # another analyst changes it meanwhile
        apply_fixes(session, actor(Role.ANALYST, "bob"), [FixChange(seeded[1], "color", "Blue")])
    undo(at)
    assert not at.exception, at.exception
    assert values(app_db, seeded[1]) == ("Stock", None)
    (toast,) = at.toast
    assert toast_texts(at) == [
        "Undone: 1 fix(es) saved, pending sync · 1 race(s) with another fix: see the messages"
    ]
    assert toast.icon == ":material/warning:"
    assert any(
        f"Item {seeded[1]}: bob had changed color from Gold to Blue" in w.value for w in at.warning
    )


def test_an_update_the_page_refuses_saves_nothing_and_tells_the_grid(
    open_app: Callable[..., AppTest], seeded: list[int], app_db: sessionmaker[Session]
) -> None:
    at = open_app(Role.ANALYST, PAGE)
    for bad, said in [
        (change(seeded[0], "price", "1"), "unknown field"),
        (change(seeded[0], "color", "N/A"), "is not a valid color"),
        (change(10_000, "color", "Red"), "there is no item"),
    ]:
        # One good change beside the bad one: nothing of the update is saved.
        update(at, change(seeded[1], "color", "Gold"), bad, nonce=said)
        assert not at.exception, at.exception
        assert fixes(app_db) == []
        (error,) = at.error
        assert said in error.value
        assert toast_texts(at) == ["Nothing was saved: see the message above."]
        assert grid_data(at)["ack"] == {"nonce": said, "ok": False, "sent": []}
        assert grid_data(at)["undo"] is None
    # Not a list of changes at all (a stale or forged page).
    send(at, "update", {"nonce": "x", "changes": "all"})
    assert any("no list of changes" in e.value for e in at.error)
    assert fixes(app_db) == []


def test_an_image_error_tile_cannot_be_fixed(
    open_app: Callable[..., AppTest], seeded: list[int], app_db: sessionmaker[Session]
) -> None:
    with app_db.begin() as session:
        item = session.get_one(SitemapItem, seeded[3])
        item.image_key, item.status, item.error = None, "error", "HTTP 404 from the CDN"
    at = open_app(Role.ANALYST, PAGE)
    tile = tiles(at)[seeded[3]]
    assert (tile["fixable"], tile["thumb"], tile["error"]) == (False, None, "HTTP 404 from the CDN")
    assert tiles(at)[seeded[0]]["error"] is None
    update(at, change(seeded[3], "image_type", "Stock"))
    assert any("has no image to fix" in e.value for e in at.error)
    assert fixes(app_db) == []


def test_filters_narrow_the_grid(open_app: Callable[..., AppTest], seeded: list[int]) -> None:
    at = open_app(Role.ANALYST, PAGE)
    type_filter = next(m for m in at.multiselect if m.label == "Image Type")
    type_filter.set_value(["Placeholder"])
    at.run()
    data = grid_data(at)
    assert len(data["items"]) == 10 and data["pages"] == 1
    assert {t["image_type"] for t in data["items"]} == {"Placeholder"}
    assert {t["id"] for t in data["items"]} == set(seeded[2::3])


def test_an_update_s_findings_are_refreshed_in_the_background(
    open_app: Callable[..., AppTest], seeded: list[int], app_db: sessionmaker[Session]
) -> None:
    """A color "N/A" (how the old system cached placeholders) is a finding; fixing the color
    settles it once the refresh that the Update asked for has run, off the user's path."""
    with app_db.begin() as session:
        session.get_one(SitemapItem, seeded[2]).color = "N/A"
        refresh_findings(session)
        (finding,) = list_findings(session, detector=LEGACY_PLACEHOLDER)
    at = open_app(Role.ANALYST, PAGE)
    update(at, change(seeded[2], "color", "Black", seen="N/A"))
    assert not at.exception, at.exception
    assert values(app_db, seeded[2]) == (PLACEHOLDER, "Black")
    from views.common import findings_refresher

    assert findings_refresher().wait()
    with app_db() as session:
        (settled,) = list_findings(session, detector=LEGACY_PLACEHOLDER, states=None)
    assert settled.id == finding.id and settled.state == FindingState.FIXED


def test_the_large_view_s_paging_shows_the_next_page(
    open_app: Callable[..., AppTest], seeded: list[int]
) -> None:
    at = open_app(Role.ANALYST, PAGE)
    # Past the first page's last image: the next page, opened on its first image.
    send(at, "page", {"to": 2, "open": "first", "nonce": "p-1"})
    assert not at.exception, at.exception
    data = grid_data(at)
    assert (data["page"], data["open"]) == (2, {"where": "first", "nonce": "p-1"})
    assert [t["position"] for t in data["items"]] == list(range(24, 30))
    assert next(n for n in at.number_input if n.label == "Page").value == 2
    assert at.query_params["page"] == "2"
    at.run()
    assert grid_data(at)["open"] is None  # opened once, not on every rerun
    # A page that does not exist (a stale grid): the first.
    send(at, "page", {"to": 9, "open": "last", "nonce": "p-2"})
    assert not at.exception, at.exception
    assert grid_data(at)["page"] == 1


def test_bulk_fix_previews_then_applies(
    open_app: Callable[..., AppTest], seeded: list[int], app_db: sessionmaker[Session]
) -> None:
    at = open_app(Role.ANALYST, PAGE)
    next(m for m in at.multiselect if m.label == "Image Type").set_value(["Stock"])
    at.run()
    next(s for s in at.selectbox if s.label == "Set Color").set_value("Silver")
    next(b for b in at.button if b.label.startswith("Preview on all")).click()
    at.run()
    assert any("10 of 10 images change" in m.value for m in at.markdown)
    with app_db() as session:
        assert session.scalars(select(ManualFix)).all() == []  # a preview writes nothing
    next(b for b in at.button if b.label == "Apply").click()
    at.run()
    with app_db() as session:
        fixes = session.scalars(select(ManualFix)).all()
    assert len(fixes) == 10 and {f.new_value for f in fixes} == {"Silver"}
    # The grid shows what Apply saved, in the same answer.
    assert {t["color"] for t in grid_data(at)["items"]} == {"Silver"}


def test_the_bulk_lists_offer_only_their_own_values(
    open_app: Callable[..., AppTest], seeded: list[int]
) -> None:
    at = open_app(Role.ANALYST, PAGE)
    types = next(s for s in at.selectbox if s.label == "Set Image Type")
    colors = next(s for s in at.selectbox if s.label == "Set Color")
    assert list(types.options) == list(IMAGE_TYPES) and list(colors.options) == list(COLORS)
    assert types.value is None and colors.value is None  # nothing is set unless chosen
    assert not any(s.label in ("Field", "Value") for s in at.selectbox)
    # Nothing chosen: a word, no preview.
    next(b for b in at.button if b.label.startswith("Preview on all")).click().run()
    assert any("Choose the Image Type or the Color" in w.value for w in at.warning)
    assert not any("Bulk fix preview" in m.value for m in at.markdown)


def changed_items(app_db: sessionmaker[Session], before: dict[int, tuple]) -> set[int]:
    with app_db() as session:
        now = {i.id: (i.image_type, i.color) for i in session.scalars(select(SitemapItem))}
    return {i for i, values in now.items() if values != before[i]}


def snapshot(app_db: sessionmaker[Session]) -> dict[int, tuple]:
    with app_db() as session:
        return {i.id: (i.image_type, i.color) for i in session.scalars(select(SitemapItem))}


def preview_count(at: AppTest) -> tuple[int, int]:
    found = [re.search(r"(\d+) of (\d+) images change", m.value) for m in at.markdown]
    (match,) = [m for m in found if m]
    return int(match[1]), int(match[2])


def test_all_matching_is_exact_and_the_preview_shows_the_thumbnails(
    open_app: Callable[..., AppTest], seeded: list[int], app_db: sessionmaker[Session]
) -> None:
    with app_db.begin() as session:
        items = [session.get_one(SitemapItem, i) for i in seeded]
        items[3].image_key, items[3].status = None, "error"  # a Dealer with no image to fix
        items[6].image_key = items[0].image_key  # one image shown on two Dealer tiles
        items[9].image_type = "Stock"  # a Dealer fixed to Stock already
        for item in items[:12]:
            item.title = "Spring sale"
    at = open_app(Role.ANALYST, PAGE)
    next(m for m in at.multiselect if m.label == "Image Type").set_value(["Dealer"]).run()
    next(t for t in at.text_input if t.label == "Search URLs and titles").input("spring").run()
    # Dealers titled "Spring sale": positions 0, 3 (no image), 6 (same image as 0): 3 of them.
    (preview_all,) = [b for b in at.button if b.label.startswith("Preview on all")]
    assert preview_all.label == "Preview on all 2 matching"  # the fixable ones
    next(s for s in at.selectbox if s.label == "Set Image Type").set_value("Placeholder")
    preview_all.click().run()
    assert not at.exception, at.exception
    assert preview_count(at) == (2, 2)
    assert any("color of each one that changes is cleared" in c.value for c in at.caption)
    (images,) = [e for e in at.get("image") if "#0" in list(e.captions)]
    assert list(images.captions) == ["#0", "#6"]
    before = snapshot(app_db)
    next(b for b in at.button if b.label == "Apply").click().run()
    assert not at.exception, at.exception
    # What Apply changed in this scrape is what the preview counted: the two tiles.
    assert changed_items(app_db, before) == {seeded[0], seeded[6]}
    assert any("Bulk fix: 2 of the 2 images previewed now have" in s.value for s in at.success)
    assert not any("already had that value" in i.value for i in at.info)
    assert not any(b.label == "Apply" for b in at.button)  # the preview is closed


def test_the_preview_shows_up_to_24_thumbnails(
    open_app: Callable[..., AppTest], seeded: list[int]
) -> None:
    at = open_app(Role.ANALYST, PAGE)
    next(s for s in at.selectbox if s.label == "Set Color").set_value("Gold")
    next(b for b in at.button if b.label.startswith("Preview on all")).click().run()
    assert preview_count(at) == (30, 30)
    (images,) = [e for e in at.get("image") if "#0" in list(e.captions)]
    assert len(images.captions) == 24
    assert any(c.value == "… and 6 more." for c in at.caption)


def test_a_race_is_in_the_toast(
    open_app: Callable[..., AppTest], seeded: list[int], app_db: sessionmaker[Session]
) -> None:
    at = open_app(Role.ANALYST, PAGE)
    assert tiles(at)[seeded[0]]["image_type"] == "Dealer"  # what the analyst saw
    with app_db.begin() as session:  # someone else fixes it meanwhile
        apply_fixes(
            session, actor(Role.ANALYST, "bob"), [FixChange(seeded[0], "image_type", PLACEHOLDER)]
        )
    update(at, change(seeded[0], "image_type", "Stock", seen="Dealer"))
    assert not at.exception, at.exception
    (toast,) = at.toast
    assert "1 race(s) with another fix" in toast.value
    assert toast.icon == ":material/warning:"
    assert any(
        f"Item {seeded[0]}: bob had changed image_type from Dealer to Placeholder" in w.value
        for w in at.warning
    )
    assert values(app_db, seeded[0]) == ("Stock", None)  # the later fix wins, both are kept
    assert [f[2] for f in fixes(app_db)] == [PLACEHOLDER, None, "Stock"]


def test_a_search_without_match_says_so_with_the_filters(
    open_app: Callable[..., AppTest], seeded: list[int]
) -> None:
    at = open_app(Role.ANALYST, PAGE)
    assert not any("No image matches" in i.value for i in at.info)
    next(m for m in at.multiselect if m.label == "Image Type").set_value(["Stock"]).run()
    next(t for t in at.text_input if t.label == "Search URLs and titles").input("zz_top").run()
    assert not at.exception, at.exception
    (info,) = [i.value for i in at.info if "No image matches these filters" in i.value]
    # Escaped for Markdown (the search is shown as typed): "Image Type: Stock", "zz_top".
    assert plain("Image Type: Stock") in info and plain("“zz_top”") in info
    assert grid_data(at)["items"] == []


QUEUE = "review-queued"


def relaunch_button(at: AppTest) -> object:
    (button,) = [b for b in at.button if b.label == "Relaunch scrape"]
    return button


def test_relaunch_is_disabled_while_queued_or_running(
    open_app: Callable[..., AppTest], seeded: list[int], app_db: sessionmaker[Session]
) -> None:
    from tagging.jobs.tasks import task_queue

    huey = task_queue().huey
    huey.flush()
    try:
        at = open_app(Role.ANALYST, PAGE)
        assert not relaunch_button(at).disabled
        relaunch_button(at).click().run()
        assert not at.exception, at.exception
        assert huey.pending_count() == 1
        # Queued, no scrape row yet: disabled.
        assert relaunch_button(at).disabled
        assert any("waiting for the worker" in i.value for i in at.info)
        # A second click sent before the disabled button reached the browser queues nothing.
        second = open_app(Role.ANALYST, PAGE)
        enabled = relaunch_button(second)
        second.session_state[QUEUE] = at.session_state[QUEUE]  # the first click's run
        enabled.click().run()
        assert not second.exception, second.exception
        assert huey.pending_count() == 1
        assert relaunch_button(second).disabled
        # The worker starts it: disabled while it runs.
        with app_db.begin() as session:
            advertiser = session.scalar(select(Advertiser))
            running = Scrape(advertiser_id=advertiser.id)
            session.add(running)
            session.flush()
            running_id = running.id
        at.run()
        assert relaunch_button(at).disabled
        assert QUEUE not in at.session_state or not at.session_state[QUEUE]
        # It finished: enabled again.
        with app_db.begin() as session:
            done = session.get_one(Scrape, running_id)
            done.status, done.finished_at = "succeeded", utcnow()
        at.run()
        assert not relaunch_button(at).disabled
    finally:
        huey.flush()


def test_a_queued_scrape_that_never_starts_stops_blocking_after_the_timeout(
    open_app: Callable[..., AppTest], seeded: list[int], app_db: sessionmaker[Session]
) -> None:
    with app_db() as session:
        advertiser_id = session.scalar(select(Advertiser.id))
        newest = session.scalar(select(func.max(Scrape.id)))
    at = open_app(Role.ANALYST, PAGE)
    at.session_state[QUEUE] = {advertiser_id: (newest, time.time() - 60)}
    at.run()
    assert relaunch_button(at).disabled
    at.session_state[QUEUE] = {advertiser_id: (newest, time.time() - 3600)}
    at.run()
    assert not relaunch_button(at).disabled


def test_a_relaunch_refused_by_a_running_scrape_is_an_error_message(
    open_app: Callable[..., AppTest],
    seeded: list[int],
    app_db: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tagging.jobs.tasks as tasks

    at = open_app(Role.ANALYST, PAGE)
    # Another analyst's scrape starts between the page's look and the click's enqueue.
    started = SimpleNamespace(started_at=utcnow())
    monkeypatch.setattr(tasks, "running_scrape", lambda session, advertiser_id: started)
    relaunch_button(at).click().run()
    assert not at.exception, at.exception
    (error,) = at.error
    assert "already running" in error.value and "wait for it to finish" in error.value
    assert QUEUE not in at.session_state  # nothing of ours is queued: no waiting for it


def test_a_tile_carries_what_its_large_view_shows(
    open_app: Callable[..., AppTest], seeded: list[int], app_db: sessionmaker[Session]
) -> None:
    at = open_app(Role.ANALYST, PAGE)
    tile = tiles(at)[seeded[0]]
    assert tile["url"].startswith("https://cdn.example/") and tile["url"].endswith(".jpg")
    assert tile["page"] == "https://dealer.example/vehicles/0"
    assert (tile["history"], tile["fixes"], tile["pending"]) == ([], 0, False)
    update(at, change(seeded[0], "color", "Gold", seen="Red"))
    tile = tiles(at)[seeded[0]]
    (entry,) = tile["history"]
    assert {k: entry[k] for k in ("user", "field", "old", "new", "sync")} == {
        "user": "analyst-user",
        "field": "color",
        "old": "Red",
        "new": "Gold",
        "sync": "pending",
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d", entry["at"])
    assert tiles(at)[seeded[3]]["history"] == []  # another image: none of its fixes


def test_manager_can_read_but_not_fix(
    open_app: Callable[..., AppTest], seeded: list[int], app_db: sessionmaker[Session]
) -> None:
    at = open_app(Role.MANAGER, PAGE)
    assert grid_data(at)["can_fix"] is False
    assert not any(b.label.startswith("Preview on all") for b in at.button)
    assert not any(s.label == "Set Image Type" for s in at.selectbox)
    assert not any(b.label == "Relaunch scrape" for b in at.button)
    assert any("can read this sitemap but not change it" in c.value for c in at.caption)
    # The grid shows a manager no Update; one sent all the same (a forged page) is refused.
    update(at, change(seeded[0], "image_type", "Stock", seen="Dealer"), nonce="forged")
    assert not at.exception, at.exception
    assert any("may not fix" in e.value for e in at.error)
    ack = grid_data(at)["ack"]
    assert (ack["nonce"], ack["ok"]) == ("forged", False)  # the grid keeps the changes
    assert fixes(app_db) == [] and values(app_db, seeded[0]) == ("Dealer", "Red")


TRACKER = "http://host/track.png"
HOSTILE_COLOR = f"![t]({TRACKER})"
UNESCAPED_IMAGE = re.compile(r"(?<!\\)!\[[^\]]*(?<!\\)\]\((?!\\)")
"""Markdown image syntax whose brackets are not backslash-escaped."""


def test_a_hostile_feed_color_and_title_are_passed_as_plain_text(
    open_app: Callable[..., AppTest], seeded: list[int], app_db: sessionmaker[Session]
) -> None:
    with app_db.begin() as session:
        item = session.get_one(SitemapItem, seeded[1])
        item.color = item.feed_color = HOSTILE_COLOR  # kept raw: it names none of our colors
        item.ml_color = HOSTILE_COLOR
        item.title = f"{HOSTILE_COLOR} <img src='{TRACKER}'>"
        session.get_one(Advertiser, item.advertiser_id).color_from_feed = True
    at = open_app(Role.ANALYST, PAGE)
    assert not at.exception, at.exception
    tile = tiles(at)[seeded[1]]
    # Data, as written (the component shows it as text): the <img> tag dropped from the title.
    assert (tile["color"], tile["ml_color"]) == (HOSTILE_COLOR, HOSTILE_COLOR)
    assert tile["title"] == HOSTILE_COLOR
    # The colors come from the feed: the grid and the bulk fix may not change them.
    assert grid_data(at)["color_locked"] is True
    assert next(s for s in at.selectbox if s.label == "Set Color").disabled
    # Nothing the page renders as Markdown carries it unescaped (nor any request to the tracker).
    shown = markdown_texts(at)
    assert not [s for s in shown if UNESCAPED_IMAGE.search(s) or "<img" in s or TRACKER in s]


def test_the_escape_check_would_catch_a_raw_image() -> None:
    assert UNESCAPED_IMAGE.search(f"ML: Dealer · {HOSTILE_COLOR}")
    assert not UNESCAPED_IMAGE.search(f"ML: Dealer · {plain(HOSTILE_COLOR)}")


def test_a_user_demoted_meanwhile_can_no_longer_fix(
    open_app: Callable[..., AppTest], seeded: list[int], app_db: sessionmaker[Session]
) -> None:
    at = open_app(Role.ANALYST, PAGE)
    assert grid_data(at)["can_fix"] is True
    with app_db.begin() as session:
        set_role(session, None, "analyst-user", Role.MANAGER, system=True)
    update(at, change(seeded[0], "image_type", "Stock", seen="Dealer"), nonce="late")
    assert not at.exception, at.exception
    # The click is the session's next run: it reads the account and finds a manager.
    assert at.session_state["actor"] == Actor("analyst-user", Role.MANAGER)
    assert any("may not fix" in e.value for e in at.error)
    ack = grid_data(at)["ack"]
    assert (ack["nonce"], ack["ok"]) == ("late", False)  # the grid keeps the changes
    assert grid_data(at)["can_fix"] is False
    assert not any(t["fixable"] for t in grid_data(at)["items"])
    assert not any(b.label.startswith("Preview on all") for b in at.button)
    assert fixes(app_db) == [] and values(app_db, seeded[0]) == ("Dealer", "Red")


def test_a_link_opens_its_view_and_the_url_follows_every_pick(
    open_app: Callable[..., AppTest], seeded: list[int]
) -> None:
    at = open_app(Role.ANALYST)
    # A followed link (e.g. from a weird-result finding): its view, unknown values dropped.
    at.query_params = {"advertiser": "Sunrise Motors", "type": ["Placeholder"], "status": "bogus"}
    at.switch_page(PAGE)
    at.run()
    assert not at.exception, at.exception
    assert next(m for m in at.multiselect if m.label == "Image Type").value == ["Placeholder"]
    assert len(grid_data(at)["items"]) == 10
    assert at.query_params == {"advertiser": "Sunrise Motors", "type": "Placeholder"}

    # The page's own reruns: the widgets are the state, the URL follows them.
    next(m for m in at.multiselect if m.label == "Image Type").set_value(["Placeholder", "Stock"])
    at.run()
    assert at.query_params["type"] == ["Placeholder", "Stock"]
    next(t for t in at.text_input if t.label == "Search URLs and titles").input("cdn").run()
    assert at.query_params["q"] == "cdn"
    next(t for t in at.text_input if t.label == "Search URLs and titles").input("").run()
    next(m for m in at.multiselect if m.label == "Image Type").set_value([]).run()
    assert at.query_params == {"advertiser": "Sunrise Motors"}

    # A page number is kept, and a new filter goes back to the first page.
    next(n for n in at.number_input if n.label == "Page").set_value(2).run()
    assert at.query_params["page"] == "2"
    data = grid_data(at)
    assert (len(data["items"]), data["page"], data["pages"]) == (6, 2, 2)
    next(m for m in at.multiselect if m.label == "Color").set_value(["Red"]).run()
    assert not at.exception, at.exception
    assert next(n for n in at.number_input if n.label == "Page").value == 1
    assert at.query_params == {"advertiser": "Sunrise Motors", "color": "Red"}
    assert grid_data(at)["page"] == 1 and len(grid_data(at)["items"]) == 10


def test_the_view_survives_leaving_the_page_and_coming_back(
    open_app: Callable[..., AppTest], seeded: list[int]
) -> None:
    at = open_app(Role.ANALYST, PAGE)
    next(m for m in at.multiselect if m.label == "Image Type").set_value(["Stock"]).run()
    next(t for t in at.text_input if t.label == "Search URLs and titles").input("cdn").run()
    at.switch_page("views/history.py")
    at.run()
    assert not at.exception, at.exception
    # The navigation's link to the page carries no query parameters.
    at.query_params = {}
    at.switch_page(PAGE)
    at.run()
    assert not at.exception, at.exception
    assert next(m for m in at.multiselect if m.label == "Image Type").value == ["Stock"]
    assert next(t for t in at.text_input if t.label == "Search URLs and titles").value == "cdn"
    assert at.query_params == {"advertiser": "Sunrise Motors", "type": "Stock", "q": "cdn"}
