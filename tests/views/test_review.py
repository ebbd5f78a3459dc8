"""AppTest of the sitemap review page, for each role, on a seeded database."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from types import SimpleNamespace

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from streamlit.testing.v1 import AppTest

from db.accounts import Actor, set_role
from db.models import Advertiser, ManualFix, Role, Scrape, SitemapItem, SyncStatus, utcnow
from db.vocab import COLORS, IMAGE_TYPES
from tests.utils.factories import make_advertiser, make_scrape
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


def widget(at: AppTest, kind: str, key_prefix: str) -> object:
    return next(w for w in getattr(at, kind) if str(w.key).startswith(key_prefix))


@pytest.mark.parametrize("role", list(Role))
def test_every_role_can_read_the_grid(
    open_app: Callable[..., AppTest], seeded: list[int], role: Role
) -> None:
    at = open_app(role, PAGE)
    assert not at.exception, at.exception
    assert at.title[0].value == "Sitemap review"
    metrics = {m.label: m.value for m in at.metric}
    assert (
        metrics["Images"] == "30" and metrics["Dealer"] == "10" and metrics["Placeholder"] == "10"
    )
    type_boxes = [s for s in at.selectbox if str(s.key).startswith("type-")]
    assert len(type_boxes) == 24  # the first page
    fixable = role != Role.MANAGER
    assert all(s.disabled is not fixable for s in type_boxes)
    # The seed's defaults: the type list selects the current value, the color list "Black" for None.
    assert widget(at, "selectbox", f"type-{seeded[1]}-").value == "Stock"
    assert widget(at, "selectbox", f"color-{seeded[1]}-").value == "Black"
    assert widget(at, "selectbox", f"color-{seeded[0]}-").value == "Red"


def test_advertiser_text_is_shown_as_plain_text(
    open_app: Callable[..., AppTest], seeded: list[int]
) -> None:
    at = open_app(Role.ANALYST, PAGE)
    # The title's tags are dropped (a script's text with them); the rest is shown as it is.
    assert "#0 **bold** ![x](http://evil.example/p.png)" in [t.value for t in at.text]
    assert not any("alert(1)" in t.value for t in [*at.markdown, *at.text])


@pytest.mark.parametrize(
    ("title", "shown"),
    [
        ("<b>Sale</b>", "#0 Sale"),
        ("2021 <i>Civic</i>&nbsp;&amp; <span class='x'>more</span>", "#0 2021 Civic & more"),
        ("Under <$20k> & a < b", "#0 Under <$20k> & a < b"),  # no tag: kept as written
        ("**Deal** <img src='http://host/t.png'> [x](http://host)", "#0 **Deal** [x](http://host)"),
    ],
)
def test_a_title_s_html_tags_are_dropped_and_the_rest_shown_as_text(
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
    assert shown in [t.value for t in at.text]
    assert not [m for m in markdown_texts(at) if "<" in m or shown.removeprefix("#0 ") in m]
    widget(at, "button", f"details-{seeded[0]}").click()
    at.run()
    assert not at.exception, at.exception
    assert shown.removeprefix("#0 ") in [t.value for t in at.text]


def test_update_applies_every_changed_dropdown_at_once(
    open_app: Callable[..., AppTest], seeded: list[int], app_db: sessionmaker[Session]
) -> None:
    at = open_app(Role.ANALYST, PAGE)
    widget(at, "selectbox", f"type-{seeded[0]}-").set_value("Stock")
    widget(at, "selectbox", f"color-{seeded[1]}-").set_value("Purple")
    next(b for b in at.button if b.label == "Update").click()
    at.run()
    assert not at.exception, at.exception
    with app_db() as session:
        fixes = list(session.scalars(select(ManualFix).order_by(ManualFix.id)))
        assert [(f.field, f.old_value, f.new_value, f.user) for f in fixes] == [
            ("image_type", "Dealer", "Stock", "analyst-user"),
            ("color", None, "Purple", "analyst-user"),
        ]
        # The ML server of this test is down: the fixes wait, and the page says so.
        assert {f.sync_status for f in fixes} == {SyncStatus.PENDING}
        assert session.get_one(SitemapItem, seeded[0]).image_type == "Stock"
    assert any("pending sync" in w.value for w in at.warning)
    # Redrawn with the new values, and nothing more happens on a second Update.
    assert widget(at, "selectbox", f"type-{seeded[0]}-").value == "Stock"
    next(b for b in at.button if b.label == "Update").click()
    at.run()
    with app_db() as session:
        assert len(session.scalars(select(ManualFix)).all()) == 2


def test_filters_narrow_the_grid(open_app: Callable[..., AppTest], seeded: list[int]) -> None:
    at = open_app(Role.ANALYST, PAGE)
    type_filter = next(m for m in at.multiselect if m.label == "Image Type")
    type_filter.set_value(["Placeholder"])
    at.run()
    type_boxes = [s for s in at.selectbox if str(s.key).startswith("type-")]
    assert len(type_boxes) == 10
    assert {s.value for s in type_boxes} == {"Placeholder"}


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


def selected(at: AppTest) -> list[str]:
    return [str(c.key) for c in at.checkbox if str(c.key).startswith("select-") and c.value]


def test_update_toasts_the_outcome_and_clears_the_selection(
    open_app: Callable[..., AppTest], seeded: list[int], app_db: sessionmaker[Session]
) -> None:
    at = open_app(Role.ANALYST, PAGE)
    widget(at, "checkbox", f"select-{seeded[2]}").check()
    widget(at, "checkbox", f"select-{seeded[4]}").check()
    widget(at, "selectbox", f"type-{seeded[0]}-").set_value("Stock")
    next(b for b in at.button if b.label == "Update").click().run()
    assert not at.exception, at.exception
    # The ML server of this test is down: saved, pending sync, in a toast and in the message.
    assert [t.value for t in at.toast] == ["1 fix(es) saved, pending sync"]
    assert any("pending sync" in w.value for w in at.warning)
    assert selected(at) == []
    # An Update with nothing changed says so, in the toast too.
    next(b for b in at.button if b.label == "Update").click().run()
    assert [t.value for t in at.toast] == ["Nothing to update: no dropdown was changed."]


def test_a_race_is_in_the_toast(
    open_app: Callable[..., AppTest], seeded: list[int], app_db: sessionmaker[Session]
) -> None:
    at = open_app(Role.ANALYST, PAGE)
    widget(at, "selectbox", f"type-{seeded[0]}-").set_value("Stock")
    with app_db.begin() as session:  # someone else fixes it meanwhile
        session.get_one(SitemapItem, seeded[0]).image_type = "Placeholder"
    next(b for b in at.button if b.label == "Update").click().run()
    assert not at.exception, at.exception
    (toast,) = at.toast
    assert "1 race(s) with another fix" in toast.value
    assert toast.icon == ":material/warning:"


def test_apply_clears_the_selection_it_fixed(
    open_app: Callable[..., AppTest], seeded: list[int], app_db: sessionmaker[Session]
) -> None:
    at = open_app(Role.ANALYST, PAGE)
    for item_id in seeded[:3]:
        widget(at, "checkbox", f"select-{item_id}").check()
    next(s for s in at.selectbox if s.label == "Set Color").set_value("Green")
    next(b for b in at.button if b.label == "Preview on selected tiles").click().run()
    assert preview_count(at) == (3, 3)
    assert len(selected(at)) == 3  # still ticked while previewing
    before = snapshot(app_db)
    next(b for b in at.button if b.label == "Apply").click().run()
    assert not at.exception, at.exception
    assert changed_items(app_db, before) == set(seeded[:3])
    assert selected(at) == []
    assert [t.value for t in at.toast] == ["3 fix(es) saved, pending sync"]
    # Nothing ticked: "selected" says so.
    next(s for s in at.selectbox if s.label == "Set Color").set_value("Green")
    next(b for b in at.button if b.label == "Preview on selected tiles").click().run()
    assert any("No tile is selected" in w.value for w in at.warning)


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
    assert not [s for s in at.selectbox if str(s.key).startswith("type-")]


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


def test_details_show_the_image_urls_and_history(
    open_app: Callable[..., AppTest], seeded: list[int]
) -> None:
    at = open_app(Role.ANALYST, PAGE)
    widget(at, "button", f"details-{seeded[0]}").click()
    at.run()
    assert not at.exception, at.exception
    # The original is unreachable here: the dialog falls back to the stored thumbnail.
    assert any(c.value.startswith("https://cdn.example/") for c in at.code)
    assert any(c.value == "No manual fix yet." for c in at.caption)


def test_manager_sees_no_update_button(open_app: Callable[..., AppTest], seeded: list[int]) -> None:
    at = open_app(Role.MANAGER, PAGE)
    assert not any(b.label == "Update" for b in at.button)
    assert not any(b.label == "Relaunch scrape" for b in at.button)


TRACKER = "http://host/track.png"
HOSTILE_COLOR = f"![t]({TRACKER})"
UNESCAPED_IMAGE = re.compile(r"(?<!\\)!\[[^\]]*(?<!\\)\]\((?!\\)")
"""Markdown image syntax whose brackets are not backslash-escaped."""


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


def test_a_hostile_feed_color_and_title_are_shown_literally(
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
    texts = [t.value for t in at.text]
    assert f"Feed color: {HOSTILE_COLOR}" in texts
    assert f"#1 {HOSTILE_COLOR}" in texts  # the <img> tag dropped, the rest as written
    shown = markdown_texts(at)
    assert not [s for s in shown if UNESCAPED_IMAGE.search(s) or "<img" in s]
    assert any(plain(HOSTILE_COLOR) in s for s in shown)  # the ML caption, escaped

    widget(at, "button", f"details-{seeded[1]}").click()
    at.run()
    assert not at.exception, at.exception
    shown = markdown_texts(at)
    assert not [s for s in shown if UNESCAPED_IMAGE.search(s) or "<img" in s]
    assert any(f"**Now:** Stock · {plain(HOSTILE_COLOR)}" in s for s in shown)


def test_the_escape_check_would_catch_a_raw_image() -> None:
    assert UNESCAPED_IMAGE.search(f"ML: Dealer · {HOSTILE_COLOR}")
    assert not UNESCAPED_IMAGE.search(f"ML: Dealer · {plain(HOSTILE_COLOR)}")


def test_a_user_demoted_meanwhile_can_no_longer_fix(
    open_app: Callable[..., AppTest], seeded: list[int], app_db: sessionmaker[Session]
) -> None:
    at = open_app(Role.ANALYST, PAGE)
    widget(at, "selectbox", f"type-{seeded[0]}-").set_value("Stock")
    with app_db.begin() as session:
        set_role(session, None, "analyst-user", Role.MANAGER, system=True)
    next(b for b in at.button if b.label == "Update").click()
    at.run()
    assert not at.exception, at.exception
    # The click is the session's next run: it reads the account and finds a manager.
    assert at.session_state["actor"] == Actor("analyst-user", Role.MANAGER)
    assert not any(b.label == "Update" for b in at.button)
    assert all(s.disabled for s in at.selectbox if str(s.key).startswith("type-"))
    with app_db() as session:
        assert session.scalars(select(ManualFix)).all() == []
        assert session.get_one(SitemapItem, seeded[0]).image_type == "Dealer"


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
    assert len([s for s in at.selectbox if str(s.key).startswith("type-")]) == 10
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
    assert len([s for s in at.selectbox if str(s.key).startswith("type-")]) == 6
    next(m for m in at.multiselect if m.label == "Color").set_value(["Red"]).run()
    assert not at.exception, at.exception
    assert next(n for n in at.number_input if n.label == "Page").value == 1
    assert at.query_params == {"advertiser": "Sunrise Motors", "color": "Red"}


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
