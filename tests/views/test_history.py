"""The Fix history page in AppTest: every role reads it, the filters narrow it, nothing edits."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.element_tree import Block

from db.accounts import Actor
from db.fixes import FixChange, apply_fixes
from db.models import FixSource, ManualFix, Role, SitemapItem, SyncStatus
from tests.utils.factories import actor, make_advertiser, make_scrape

PAGE = "views/history.py"

READ_ONLY_ELEMENTS = {
    # The filters (they change what is shown, never the data), the figures and the export.
    "multiselect",
    "selectbox",
    "text_input",
    "date_input",
    "number_input",
    "metric",
    "dataframe",
    "download_button",
    # Layout and text.
    "title",
    "caption",
    "info",
}


@pytest.fixture
def seeded(app_db: sessionmaker[Session]) -> dict[str, int]:
    """Three fixes: two analysts on Sunrise Motors, one advertiser on Harbor Autos (hostile URL)."""
    with app_db.begin() as session:
        sunrise = make_advertiser(session, "Sunrise Motors")
        harbor = make_advertiser(session, "Harbor Autos")
        make_scrape(session, sunrise, [("Dealer", "Red"), ("Stock", "Blue")])
        make_scrape(session, harbor, [("Dealer", "White")], key_prefix="9")
        s0, s1, h0 = session.scalars(select(SitemapItem).order_by(SitemapItem.id)).all()
        h0.image_url = '=HYPERLINK("http://evil.example")<script>alert(1)</script>'
        session.flush()
        alice, bob = Actor("alice", Role.ANALYST), Actor("bob", Role.ANALYST)
        apply_fixes(session, alice, [FixChange(s0.id, "image_type", "Stock")])
        apply_fixes(session, bob, [FixChange(s1.id, "color", "Green")])
        apply_fixes(
            session,
            Actor("advertiser:Harbor Autos", Role.ANALYST),
            # The advertiser keeps the color beside its Placeholder (its own word).
            [FixChange(h0.id, "image_type", "Placeholder"), FixChange(h0.id, "color", "White")],
            source=FixSource.ADVERTISER,
            advertiser_id=harbor.id,
        )
        bobs = session.scalars(select(ManualFix).where(ManualFix.user == "bob")).one()
        bobs.sync_status = SyncStatus.SYNCED
        bobs.created_at = datetime.now(UTC) - timedelta(days=3)
        return {"sunrise": sunrise.id, "harbor": harbor.id}


def table(at: AppTest) -> list[dict[str, object]]:
    (frame,) = at.dataframe
    return frame.value.to_dict("records")


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def widget(elements: object, label: str) -> object:
    return next(w for w in elements if w.label == label)  # type: ignore[attr-defined]


@pytest.mark.parametrize("role", [Role.ANALYST, Role.DEVELOPER, Role.MANAGER, Role.ADMIN])
def test_every_role_reads_the_history_and_nothing_edits(
    open_app: Callable[..., AppTest], seeded: dict[str, int], role: Role
) -> None:
    at = open_app(role, PAGE)
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == ["Fix history"]
    rows = table(at)
    # Newest first: the advertiser's fix, alice's, then bob's (three days old).
    assert [r["user"] for r in rows] == ["advertiser:Harbor Autos", "alice", "bob"]
    assert rows[0]["advertiser"] == "Harbor Autos" and rows[0]["source"] == "advertiser"
    assert metric(at, "Fixes") == "3"
    assert metric(at, "Pending sync") == "2"
    assert metric(at, "By advertisers") == "1"
    (download,) = at.get("download_button")
    assert download.label == "Download CSV"
    # Read-only: no data editor, no button that writes, only filters, figures and the export.
    assert not at.data_editor
    assert all(frame.editing_mode == "read_only" for frame in at.dataframe)
    assert not [b.label for b in at.main.button]
    kinds = {node.type for node in at.main if not isinstance(node, Block)}
    assert kinds <= READ_ONLY_ELEMENTS, kinds - READ_ONLY_ELEMENTS
    # The hostile URL is a table cell (text), never markdown.
    assert not at.markdown or all("<script>" not in m.value for m in at.markdown)


def test_filters_narrow_the_rows_and_the_totals(
    open_app: Callable[..., AppTest], seeded: dict[str, int]
) -> None:
    at = open_app(Role.MANAGER, PAGE)
    widget(at.multiselect, "Advertisers").set_value([seeded["sunrise"]]).run()  # type: ignore[attr-defined]
    assert [r["user"] for r in table(at)] == ["alice", "bob"]
    assert metric(at, "Fixes") == "2" and metric(at, "By advertisers") == "0"

    widget(at.selectbox, "Field").set_value("color").run()  # type: ignore[attr-defined]
    assert [r["user"] for r in table(at)] == ["bob"]
    assert table(at)[0]["field"] == "Color"
    assert metric(at, "Color fixes") == "1" and metric(at, "Image Type fixes") == "0"

    widget(at.multiselect, "Advertisers").set_value([]).run()  # type: ignore[attr-defined]
    widget(at.selectbox, "Field").set_value("Any").run()  # type: ignore[attr-defined]
    widget(at.multiselect, "Users").set_value(["alice"]).run()  # type: ignore[attr-defined]
    assert [r["user"] for r in table(at)] == ["alice"]

    widget(at.multiselect, "Users").set_value([]).run()  # type: ignore[attr-defined]
    widget(at.text_input, "Value (old or new)").input("placeholder").run()  # type: ignore[attr-defined]
    assert [r["user"] for r in table(at)] == ["advertiser:Harbor Autos"]

    widget(at.text_input, "Value (old or new)").input("").run()  # type: ignore[attr-defined]
    widget(at.selectbox, "Sync").set_value("synced").run()  # type: ignore[attr-defined]
    assert [r["user"] for r in table(at)] == ["bob"]
    assert metric(at, "Pending sync") == "0"

    widget(at.selectbox, "Sync").set_value("Any").run()  # type: ignore[attr-defined]
    widget(at.selectbox, "Source").set_value("advertiser").run()  # type: ignore[attr-defined]
    assert [r["user"] for r in table(at)] == ["advertiser:Harbor Autos"]

    widget(at.selectbox, "Source").set_value("Any").run()  # type: ignore[attr-defined]
    today = datetime.now(UTC).date()
    widget(at.date_input, "Dates (UTC)").set_value((today - timedelta(days=1), today)).run()  # type: ignore[attr-defined]
    assert [r["user"] for r in table(at)] == ["advertiser:Harbor Autos", "alice"]

    widget(at.date_input, "Dates (UTC)").set_value((date(2020, 1, 1), date(2020, 1, 2))).run()  # type: ignore[attr-defined]
    assert not at.dataframe
    assert [i.value for i in at.info] == ["No fix matches these filters."]
    assert metric(at, "Fixes") == "0"
    assert not at.exception


def test_more_than_a_page_is_paginated(
    open_app: Callable[..., AppTest], app_db: sessionmaker[Session]
) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with app_db.begin() as session:
        advertiser = make_advertiser(session)
        # Crafted rows (not apply_fixes): the page only reads, and 620 fixes stay fast this way.
        session.add_all(
            ManualFix(
                image_key=f"{n:032x}",
                image_url=f"https://cdn.example/{n}.jpg",
                advertiser_id=advertiser.id,
                field="image_type",
                old_value="Dealer",
                new_value="Stock",
                user="alice",
                created_at=start + timedelta(minutes=n),
            )
            for n in range(620)
        )
    at = open_app(actor(Role.ANALYST), PAGE)
    assert len(table(at)) == 500
    assert table(at)[0]["image_key"] == f"{619:032x}"
    (page,) = at.number_input
    page.set_value(2).run()
    rows = table(at)
    assert len(rows) == 120 and rows[-1]["image_key"] == f"{0:032x}"
    assert metric(at, "Fixes") == "620"
    assert any("501–620 of 620" in c.value for c in at.caption)
