"""AppTest of the home page."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy.orm import Session, sessionmaker
from streamlit.testing.v1 import AppTest

from db.models import Role
from tests.utils.factories import make_advertiser, make_scrape


@pytest.mark.parametrize("role", list(Role))
def test_home_counts_the_latest_scrapes(
    open_app: Callable[..., AppTest], app_db: sessionmaker[Session], role: Role
) -> None:
    with app_db.begin() as session:
        make_scrape(session, make_advertiser(session, "Sunrise Motors"), [("Dealer", "Red")] * 3)
        make_scrape(session, make_advertiser(session, "Lakeside Auto"), [("Stock", None)] * 2)
    at = open_app(role)
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Advertisers"] == "2"
    assert (metrics["Images"], metrics["Dealer photos"], metrics["Stock photos"]) == ("5", "3", "2")


def test_home_without_advertisers_says_what_to_do(open_app: Callable[..., AppTest]) -> None:
    at = open_app(Role.ANALYST)
    assert any("advertisers add" in i.value for i in at.info)


def test_signed_out_visitors_see_only_the_sign_in_page(open_app: Callable[..., AppTest]) -> None:
    at = open_app(None)
    assert not at.metric
    assert any(b.label == "Sign in" for b in at.button)
