"""Reloads and links in a real browser: the session cookie keeps the analyst signed in on the same
view, with the same query parameters; a link opened before signing in lands on its view after.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlparse

import pytest
from sqlalchemy import select

from db.models import Advertiser, UserSession
from tests.utils.browser import SharedApp

pytestmark = pytest.mark.browser

COOKIE = "tagdesk_session"


def query(page: object) -> dict[str, list[str]]:
    return parse_qs(urlparse(page.url).query)  # type: ignore[attr-defined]


def sign_in(page: object) -> None:
    page.get_by_label("Username", exact=True).fill("analyst")  # type: ignore[attr-defined]
    page.get_by_label("Password", exact=True).fill("analyst-demo-pass")  # type: ignore[attr-defined]
    page.get_by_role("button", name="Sign in").click()  # type: ignore[attr-defined]


def signed_in_as_analyst(page: object) -> None:
    page.get_by_text("Signed in as analyst").wait_for()  # type: ignore[attr-defined]


def on_review(page: object, search: str) -> None:
    """The review page, its search box holding ``search`` (from the URL)."""
    page.get_by_role("heading", name="Sitemap review").wait_for()  # type: ignore[attr-defined]
    box = page.get_by_label("Search URLs and titles", exact=True)  # type: ignore[attr-defined]
    box.wait_for()
    assert box.input_value() == search


def session_cookie(context: object) -> dict | None:
    cookies = [c for c in context.cookies() if c["name"] == COOKIE]  # type: ignore[attr-defined]
    return cookies[0] if cookies else None


def wait_for_cookie(page: object, context: object, present: bool = True) -> dict | None:
    for _ in range(200):
        cookie = session_cookie(context)
        if (cookie is not None) == present:
            return cookie
        page.wait_for_timeout(50)  # type: ignore[attr-defined]
    pytest.fail(f"the session cookie was never {'set' if present else 'dropped'}")


def test_reloads_and_links_keep_the_session_and_the_view(
    browser: object, shared_app: SharedApp, tmp_path: Path
) -> None:
    sessions = shared_app.sessions
    with sessions() as session:
        advertiser = session.scalars(select(Advertiser.name).order_by(Advertiser.name)).first()
    assert advertiser is not None
    search = "jpg"
    review_url = f"{shared_app.url}/review?{urlencode({'advertiser': advertiser, 'q': search})}"

    context = browser.new_context(viewport={"width": 1600, "height": 1200})  # type: ignore[attr-defined]
    context.set_default_timeout(30_000)
    page = context.new_page()

    # A link opened before signing in shows the sign-in page, not "Page not found", and keeps
    # its view and parameters: after signing in, the review page opens with them.
    page.goto(review_url)
    page.get_by_label("Username", exact=True).wait_for()
    assert page.get_by_text("Page not found").count() == 0
    sign_in(page)
    signed_in_as_analyst(page)
    on_review(page, search)
    assert urlparse(page.url).path == "/review"
    assert query(page)["advertiser"] == [advertiser] and query(page)["q"] == [search]
    assert page.get_by_text("Page not found").count() == 0

    # The cookie: HttpOnly, SameSite=Strict, a random token (the database has only its hash).
    cookie = wait_for_cookie(page, context)
    assert cookie is not None
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert len(cookie["value"]) >= 43
    assert cookie["value"] not in page.url
    assert page.evaluate("document.cookie").find(cookie["value"]) == -1  # no script reads it
    with sessions() as session:
        (row,) = session.scalars(select(UserSession)).all()
        assert row.revoked_at is None and row.token_sha256 != cookie["value"]

    # A reload: still signed in, same view, same parameters.
    page.reload()
    signed_in_as_analyst(page)
    on_review(page, search)
    assert query(page)["q"] == [search] and query(page)["advertiser"] == [advertiser]
    assert page.get_by_label("Username", exact=True).count() == 0
    page.screenshot(path=str(tmp_path / "reloaded.png"), full_page=True)

    # A shared link in a new tab of the same browser: signed in, on that view.
    other = context.new_page()
    other.goto(f"{shared_app.url}/history")
    signed_in_as_analyst(other)
    other.get_by_role("heading", name="Fix history").wait_for()
    other.goto(review_url)
    signed_in_as_analyst(other)
    on_review(other, search)
    other.close()

    # A link followed from another site (here the app under another host name, another site
    # for the browser) opens signed in too: SameSite=Strict keeps the cookie off that first
    # cross-site request, but Streamlit reads it from the WebSocket the page opens itself.
    elsewhere = context.new_page()
    elsewhere.goto(shared_app.url.replace("127.0.0.1", "localhost") + "/_stcore/health")
    elsewhere.set_content(f'<a href="{review_url}">open in review</a>')
    elsewhere.get_by_text("open in review").click()
    signed_in_as_analyst(elsewhere)
    on_review(elsewhere, search)
    elsewhere.close()

    # Signing out ends the session: the row is revoked, the cookie dropped, a reload asks to
    # sign in (and still keeps the view for afterwards).
    page.get_by_role("button", name="Sign out").click()
    page.get_by_text("Signed out.").wait_for()
    wait_for_cookie(page, context, present=False)
    with sessions() as session:
        assert session.scalars(select(UserSession.revoked_at)).one() is not None
    page.reload()
    page.get_by_label("Username", exact=True).wait_for()
    assert page.get_by_text("Signed in as").count() == 0
    assert query(page)["q"] == [search]

    # Even a copy of the old cookie opens nothing now.
    stale = browser.new_context()  # type: ignore[attr-defined]
    stale.add_cookies([{"name": COOKIE, "value": cookie["value"], "url": shared_app.url}])
    stale_page = stale.new_page()
    stale_page.goto(review_url)
    stale_page.get_by_label("Username", exact=True).wait_for(timeout=30_000)
    assert stale_page.get_by_text("Signed in as").count() == 0
    stale.close()

    # Signing in again lands on the same view, with a new session.
    sign_in(page)
    signed_in_as_analyst(page)
    on_review(page, search)
    new_cookie = wait_for_cookie(page, context)
    assert new_cookie is not None and new_cookie["value"] != cookie["value"]
    context.close()
