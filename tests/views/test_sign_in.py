"""The sign-in page, through the real app script (AppTest) on a seeded database."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import streamlit as st
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker
from streamlit.testing.v1 import AppTest

from db.accounts import CLIENT_MAX_FAILURES, Actor, create_user, set_disabled, set_role
from db.models import Role, User, utcnow
from views.common import SESSION_MAX

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "analyst password 1"


@pytest.fixture
def seeded(app_db: sessionmaker[Session]) -> sessionmaker[Session]:
    with app_db.begin() as session:
        create_user(session, None, "alice", Role.ANALYST, PASSWORD, system=True)
        create_user(session, None, "root", Role.ADMIN, "admin password 1", system=True)
    return app_db


def attempt(at: AppTest, username: str, password: str) -> AppTest:
    at.text_input(key="sign_in_username").input(username)
    at.text_input(key="sign_in_password").input(password)
    at.form_submit_button[0].click()
    return at.run()


def errors(at: AppTest) -> list[str]:
    return [element.value for element in at.error]


def test_a_visitor_sees_only_the_sign_in_page(
    seeded: sessionmaker[Session], open_app: Callable[..., AppTest]
) -> None:
    at = open_app(None)
    assert not at.exception
    assert [title.value for title in at.title] == ["Tagdesk"]
    assert [widget.label for widget in at.text_input] == ["Username", "Password"]
    assert [button.label for button in at.form_submit_button] == ["Sign in"]
    assert not at.sidebar.caption  # no "Signed in as", no navigation
    assert not at.warning and not at.success and not at.error
    # Without OpenID Connect configured there is no SSO button.
    assert [button.label for button in at.button] == ["Sign in"]


def test_wrong_password_and_unknown_user_show_the_same_error(
    seeded: sessionmaker[Session], open_app: Callable[..., AppTest]
) -> None:
    at = attempt(open_app(None), "alice", "not the password")
    assert errors(at) == ["wrong username or password"]
    assert "actor" not in at.session_state
    at = attempt(at, "nobody", PASSWORD)
    assert errors(at) == ["wrong username or password"]
    at = attempt(at, "alice", "")
    assert errors(at) == ["Enter your username and password."]


def test_the_right_password_signs_in_and_shows_the_navigation(
    seeded: sessionmaker[Session], open_app: Callable[..., AppTest]
) -> None:
    at = attempt(open_app(None), "Alice", PASSWORD)
    assert not at.exception
    assert not errors(at)
    assert at.session_state["actor"] == Actor("alice", Role.ANALYST)

    at.run()
    assert not at.exception
    assert [caption.value for caption in at.sidebar.caption] == ["Signed in as **alice** · analyst"]
    assert not at.text_input  # no sign-in form: Home, the default page
    assert [title.value for title in at.title] == ["Tagdesk"]
    with seeded() as session:
        assert session.scalar(select(User.last_login_at).where(User.username == "alice"))


def test_repeated_failures_lock_the_account(
    seeded: sessionmaker[Session], open_app: Callable[..., AppTest]
) -> None:
    at = open_app(None)
    for _ in range(4):
        assert errors(attempt(at, "alice", "wrong password")) == ["wrong username or password"]
    assert errors(attempt(at, "alice", "wrong password")) == [
        "too many failed sign-ins: try again in 30 s"
    ]
    # Even the right password waits for the lock to end.
    (message,) = errors(attempt(at, "alice", PASSWORD))
    assert message.startswith("too many failed sign-ins: try again in ")
    assert "actor" not in at.session_state


def test_a_disabled_account_is_told_so(
    seeded: sessionmaker[Session], open_app: Callable[..., AppTest]
) -> None:
    with seeded.begin() as session:
        set_disabled(session, None, "alice", True, system=True)
    at = attempt(open_app(None), "alice", PASSWORD)
    assert errors(at) == ["this account is disabled"]
    assert "actor" not in at.session_state


def _app_with_state(**state: object) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=30)
    for key, value in state.items():
        at.session_state[key] = value
    return at.run()


def test_an_idle_session_expires_with_a_notice(seeded: sessionmaker[Session]) -> None:
    at = _app_with_state(
        actor=Actor("alice", Role.ANALYST), last_seen_at=utcnow() - timedelta(days=3)
    )
    assert not at.exception
    assert [warning.value for warning in at.warning] == ["Your session expired, sign in again."]
    assert not at.success  # not also "Signed out"
    assert "actor" not in at.session_state
    assert [widget.label for widget in at.text_input] == ["Username", "Password"]
    assert not at.sidebar.caption


def test_signing_out_shows_a_notice(seeded: sessionmaker[Session]) -> None:
    at = _app_with_state(signed_out=True)
    assert [success.value for success in at.success] == ["Signed out."]
    # The notice is shown once.
    at.run()
    assert not at.success


def test_a_session_older_than_its_maximum_expires_however_active(
    seeded: sessionmaker[Session],
) -> None:
    at = _app_with_state(
        actor=Actor("alice", Role.ANALYST),
        signed_in_at=utcnow() - SESSION_MAX - timedelta(minutes=1),
        last_seen_at=utcnow(),
    )
    assert not at.exception
    assert [warning.value for warning in at.warning] == ["Your session expired, sign in again."]
    assert "actor" not in at.session_state


def test_disabling_a_signed_in_user_signs_them_out_at_their_next_click(
    seeded: sessionmaker[Session], open_app: Callable[..., AppTest]
) -> None:
    at = open_app(Actor("alice", Role.ANALYST), "views/history.py")
    assert [title.value for title in at.title] == ["Fix history"]
    with seeded.begin() as session:
        set_disabled(session, None, "alice", True, system=True)
    at.run()
    assert not at.exception
    assert "actor" not in at.session_state
    assert [warning.value for warning in at.warning] == [
        "You were signed out: your account is disabled or no longer exists."
    ]
    assert [widget.label for widget in at.text_input] == ["Username", "Password"]
    assert not at.sidebar.caption
    # Signing in again is refused too.
    assert errors(attempt(at, "alice", PASSWORD)) == ["this account is disabled"]


def test_a_deleted_account_is_signed_out(
    seeded: sessionmaker[Session], open_app: Callable[..., AppTest]
) -> None:
    at = open_app(Actor("alice", Role.ANALYST))
    with seeded.begin() as session:
        session.execute(delete(User).where(User.username == "alice"))
    at.run()
    assert "actor" not in at.session_state
    assert [w.value for w in at.warning] == [
        "You were signed out: your account is disabled or no longer exists."
    ]


def test_a_role_change_applies_at_the_next_run(
    seeded: sessionmaker[Session], open_app: Callable[..., AppTest]
) -> None:
    at = open_app(Actor("alice", Role.ANALYST))
    with seeded.begin() as session:
        set_role(session, None, "alice", Role.MANAGER, system=True)
    at.run()
    assert at.session_state["actor"] == Actor("alice", Role.MANAGER)
    assert [caption.value for caption in at.sidebar.caption] == ["Signed in as **alice** · manager"]


def test_failures_from_one_browser_are_throttled_whatever_the_usernames(
    seeded: sessionmaker[Session], open_app: Callable[..., AppTest]
) -> None:
    at = open_app(None)
    for n in range(CLIENT_MAX_FAILURES):
        assert errors(attempt(at, f"guess{n}", "wrong password")) == ["wrong username or password"]
    # Even the right password of an account nobody tried waits.
    (message,) = errors(attempt(at, "alice", PASSWORD))
    assert re.fullmatch(r"too many failed sign-ins from here: try again in (8\d\d|900) s", message)
    assert "actor" not in at.session_state
    # Without an address (localhost), another browser session is another client.
    other = attempt(open_app(None), "alice", PASSWORD)
    assert not errors(other)
    assert other.session_state["actor"] == Actor("alice", Role.ANALYST)


def test_failures_from_one_address_are_throttled_in_every_browser(
    seeded: sessionmaker[Session], open_app: Callable[..., AppTest], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(type(st.context), "ip_address", property(lambda self: "203.0.113.7"))
    first = open_app(None)
    for n in range(CLIENT_MAX_FAILURES):
        attempt(first, f"guess{n}", "wrong password")
    (message,) = errors(attempt(open_app(None), "alice", PASSWORD))
    assert message.startswith("too many failed sign-ins from here: try again in ")
    monkeypatch.setattr(type(st.context), "ip_address", property(lambda self: "198.51.100.9"))
    assert not errors(attempt(open_app(None), "alice", PASSWORD))


def test_an_unknown_username_locks_like_a_real_account(
    seeded: sessionmaker[Session], open_app: Callable[..., AppTest]
) -> None:
    # Five failures each, from two browsers (the per-client limit is not what is tested here).
    answers = {}
    for username in ("alice", "ghost"):
        at = open_app(None)
        answers[username] = [errors(attempt(at, username, "wrong password"))[0] for _ in range(5)]
    assert (
        answers["alice"]
        == answers["ghost"]
        == [
            *["wrong username or password"] * 4,
            "too many failed sign-ins: try again in 30 s",
        ]
    )
