"""The server-side session behind the cookie, through the real app script (AppTest).

AppTest has no browser: the cookie a connection brings is stubbed (``views.common._cookie_token``);
tests/e2e/test_session.py drives the real cookie in Chromium, and the links opened before signing
in (AppTest cannot open a URL path).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from streamlit.testing.v1 import AppTest

import views.common
from db.accounts import Actor, create_user
from db.models import Role, UserSession, utcnow
from db.user_sessions import claim_handoff, open_session, revoke_session
from views.common import SESSION_IDLE, SESSION_MAX

PASSWORD = "analyst password 1"


@pytest.fixture
def seeded(app_db: sessionmaker[Session]) -> sessionmaker[Session]:
    with app_db.begin() as session:
        create_user(session, None, "alice", Role.ANALYST, PASSWORD, system=True)
    return app_db


def cookie_for(sessions: sessionmaker[Session], username: str = "alice") -> tuple[int, str]:
    """A session whose browser has claimed its cookie: ``(session id, token)``."""
    with sessions.begin() as session:
        opened = open_session(session, username)
    with sessions.begin() as session:
        token = claim_handoff(session, opened.handoff, idle=SESSION_IDLE, max_age=SESSION_MAX)
    assert token is not None
    return opened.session_id, token


def bring_cookie(monkeypatch: pytest.MonkeyPatch, token: str | None) -> None:
    monkeypatch.setattr(views.common, "_cookie_token", lambda: token)


def scripts(at: AppTest) -> list[str]:
    return [node.proto.body for node in at.main if getattr(node, "type", "") == "html"]


def sign_in(at: AppTest) -> AppTest:
    at.text_input(key="sign_in_username").input("alice")
    at.text_input(key="sign_in_password").input(PASSWORD)
    at.form_submit_button[0].click()
    return at.run()


def test_signing_in_opens_a_session_and_hands_the_browser_its_cookie(
    seeded: sessionmaker[Session], open_app: Callable[..., AppTest]
) -> None:
    at = sign_in(open_app(None))
    assert not at.exception
    assert at.session_state["actor"] == Actor("alice", Role.ANALYST)
    with seeded() as session:
        (row,) = session.scalars(select(UserSession)).all()
        assert row.revoked_at is None and row.handoff_sha256 and row.token_sha256 is None
    assert at.session_state["user_session"] == row.id
    (script,) = scripts(at)
    handoff = at.session_state["session_handoff"][0]
    assert "method: 'POST'" in script and "/api/session" in script and handoff in script

    # Once the browser has claimed it, the page stops handing it over.
    with seeded.begin() as session:
        assert claim_handoff(session, handoff, idle=SESSION_IDLE, max_age=SESSION_MAX)
    at.run()
    assert not scripts(at)
    assert "session_handoff" not in at.session_state


def test_signing_out_revokes_the_session_and_drops_the_cookie(
    seeded: sessionmaker[Session], open_app: Callable[..., AppTest]
) -> None:
    at = sign_in(open_app(None))
    at.sidebar.button[0].click()  # Sign out
    at.run()
    assert "actor" not in at.session_state
    assert [s.value for s in at.success] == ["Signed out."]
    with seeded() as session:
        assert session.scalars(select(UserSession.revoked_at)).one() is not None
    (script,) = scripts(at)
    assert "method: 'DELETE'" in script


def test_a_cookie_signs_a_new_browser_session_in(
    seeded: sessionmaker[Session], open_app: Callable[..., AppTest], monkeypatch: pytest.MonkeyPatch
) -> None:
    session_id, token = cookie_for(seeded)
    bring_cookie(monkeypatch, token)
    at = open_app(None)
    assert not at.exception
    assert at.session_state["actor"] == Actor("alice", Role.ANALYST)
    assert at.session_state["user_session"] == session_id
    assert [c.value for c in at.sidebar.caption] == ["Signed in as **alice** · analyst"]
    assert not at.text_input  # no sign-in form
    assert not scripts(at)

    # Signed out in another tab: this one is signed out at its next click.
    with seeded.begin() as session:
        revoke_session(session, session_id=session_id)
    at.run()
    assert "actor" not in at.session_state
    assert [s.value for s in at.success] == ["Signed out."]
    assert [w.label for w in at.text_input] == ["Username", "Password"]


@pytest.mark.parametrize(
    ("damage", "notice"),
    [
        ("revoked", None),
        ("expired", "Your session expired, sign in again."),
        ("unknown", None),
    ],
)
def test_a_dead_cookie_shows_the_sign_in_page_and_is_dropped(
    seeded: sessionmaker[Session],
    open_app: Callable[..., AppTest],
    monkeypatch: pytest.MonkeyPatch,
    damage: str,
    notice: str | None,
) -> None:
    session_id, token = cookie_for(seeded)
    with seeded.begin() as session:
        row = session.get_one(UserSession, session_id)
        if damage == "revoked":
            row.revoked_at = utcnow()
        elif damage == "expired":
            row.last_seen_at = utcnow() - SESSION_IDLE - timedelta(minutes=1)
    bring_cookie(monkeypatch, "not-a-token" if damage == "unknown" else token)
    at = open_app(None)
    assert not at.exception
    assert "actor" not in at.session_state
    assert [w.label for w in at.text_input] == ["Username", "Password"]
    assert [w.value for w in at.warning] == ([notice] if notice else [])
    (script,) = scripts(at)
    assert "method: 'DELETE'" in script
