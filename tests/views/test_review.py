"""AppTest of the sitemap review page, for each role, on a seeded database."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from streamlit.testing.v1 import AppTest

from db.accounts import Actor, set_role
from db.models import Advertiser, ManualFix, Role, SitemapItem, SyncStatus
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
    assert any(HOSTILE[:30] in t.value for t in at.text)
    assert not any("alert(1)" in m.value for m in at.markdown)


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
    next(s for s in at.selectbox if s.label == "Field").set_value("color")
    next(s for s in at.selectbox if s.label == "Value").set_value("Silver")
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
    assert any(t.startswith(f"#1 {HOSTILE_COLOR} <img") for t in texts)
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
