"""The Accounts page (admins only), through the real app script (AppTest) on a seeded database."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from streamlit.testing.v1 import AppTest

from db.accounts import (
    Actor,
    advertiser_for_token,
    authenticate,
    create_user,
    list_advertiser_tokens,
    set_role,
)
from db.models import Role, User
from tests.utils.factories import actor, make_advertiser

ROOT = Path(__file__).resolve().parents[2]
PAGE = "views/admin.py"
ADMIN = actor(Role.ADMIN).username
"""``open_app(Role.ADMIN)`` signs in as this name; the account must exist, as in real life."""


@pytest.fixture
def seeded(app_db: sessionmaker[Session]) -> sessionmaker[Session]:
    with app_db.begin() as session:
        create_user(session, None, ADMIN, Role.ADMIN, "admin password 1", system=True)
        create_user(session, None, "alice", Role.ANALYST, "analyst password 1", system=True)
        make_advertiser(session, "Sunrise Motors")
    return app_db


def stored(sessions: sessionmaker[Session], username: str) -> User | None:
    with sessions() as session:
        return session.scalar(select(User).where(User.username == username))


def errors(at: AppTest) -> list[str]:
    return [element.value for element in at.error]


def test_an_admin_sees_users_and_tokens(
    seeded: sessionmaker[Session], open_app: Callable[..., AppTest]
) -> None:
    at = open_app(Role.ADMIN, PAGE)
    assert not at.exception
    assert [title.value for title in at.title] == ["Accounts"]
    users = at.dataframe[0].value
    assert list(users["username"]) == ["admin-user", "alice"]
    assert {"username", "email", "role", "disabled", "last sign-in", "failed attempts"} <= set(
        users.columns
    )
    assert [button.label for button in at.form_submit_button] == [
        "Add user",
        "Change role",
        "Reset password",
        "Create token",
    ]


def test_an_admin_adds_a_user_who_can_then_sign_in(
    seeded: sessionmaker[Session], open_app: Callable[..., AppTest]
) -> None:
    at = open_app(Role.ADMIN, PAGE)
    at.text_input(key="add_username").input("Carol")
    at.text_input(key="add_email").input("carol@example.com")
    at.selectbox(key="add_role").set_value("developer")
    at.text_input(key="add_password").input("carol password 1")
    at.form_submit_button(key="FormSubmitter:add_user-Add user").click()
    at.run()
    assert not at.exception
    assert not errors(at)
    assert [success.value for success in at.success] == ["Added carol (developer)."]
    assert "carol" in list(at.dataframe[0].value["username"])

    carol = stored(seeded, "carol")
    assert carol is not None
    assert (carol.role, carol.email) == ("developer", "carol@example.com")
    with seeded.begin() as session:
        assert authenticate(session, "carol", "carol password 1").role == Role.DEVELOPER


def test_an_invalid_user_shows_an_error_and_writes_nothing(
    seeded: sessionmaker[Session], open_app: Callable[..., AppTest]
) -> None:
    at = open_app(Role.ADMIN, PAGE)
    at.text_input(key="add_username").input("dave")
    at.text_input(key="add_password").input("short")
    at.form_submit_button(key="FormSubmitter:add_user-Add user").click()
    at.run()
    assert not at.exception
    assert errors(at) == ["a password needs at least 10 characters"]
    assert stored(seeded, "dave") is None


def test_an_admin_changes_disables_and_resets_a_user(
    seeded: sessionmaker[Session], open_app: Callable[..., AppTest]
) -> None:
    at = open_app(Role.ADMIN, PAGE)
    at.selectbox(key="change_user").set_value("alice").run()
    at.selectbox(key="role_of_alice").set_value("manager")
    at.form_submit_button(key="FormSubmitter:change_role-Change role").click()
    at.run()
    assert [success.value for success in at.success] == ["alice is now manager."]

    at.button(key="toggle_user").click().run()
    assert [success.value for success in at.success] == ["Disabled alice."]
    alice = stored(seeded, "alice")
    assert alice is not None
    assert (alice.role, alice.disabled) == ("manager", True)
    assert at.button(key="toggle_user").label == "Enable account"

    at.text_input(key="reset_password").input("a fresh password")
    at.form_submit_button(key="FormSubmitter:reset_password-Reset password").click()
    at.run()
    assert [success.value for success in at.success] == [
        "New password set for alice; every browser of it is signed out."
    ]


def test_the_last_admin_cannot_disable_themselves(
    seeded: sessionmaker[Session], open_app: Callable[..., AppTest]
) -> None:
    at = open_app(Role.ADMIN, PAGE)
    at.selectbox(key="change_user").set_value(ADMIN).run()
    at.button(key="toggle_user").click().run()
    assert not at.exception
    (message,) = errors(at)
    assert "last enabled admin" in message
    admin = stored(seeded, ADMIN)
    assert admin is not None and not admin.disabled


def test_an_admin_creates_a_token_shown_once_then_revokes_it(
    seeded: sessionmaker[Session], open_app: Callable[..., AppTest]
) -> None:
    at = open_app(Role.ADMIN, PAGE)
    at.text_input(key="token_label").input("front end")
    at.form_submit_button(key="FormSubmitter:create_token-Create token").click()
    at.run()
    assert not at.exception
    (code,) = at.code
    token = code.value
    assert "not be shown again" in at.warning[0].value
    with seeded.begin() as session:
        assert advertiser_for_token(session, token).name == "Sunrise Motors"
        (row,) = list_advertiser_tokens(session)
    assert row.label == "front end"
    assert row.created_by == ADMIN

    at.run()
    assert not at.code  # once only

    at.selectbox(key="revoke_token_id").set_value(row.id)
    at.form_submit_button(key="FormSubmitter:revoke_token-Revoke").click()
    at.run()
    assert [success.value for success in at.success] == [f"Revoked token #{row.id}."]
    with seeded() as session:
        (row,) = list_advertiser_tokens(session)
    assert row.revoked_at is not None


@pytest.mark.parametrize("role", [Role.ANALYST, Role.DEVELOPER, Role.MANAGER])
def test_other_roles_cannot_reach_the_page(
    seeded: sessionmaker[Session], open_app: Callable[..., AppTest], role: Role
) -> None:
    at = open_app(role)
    assert not at.exception
    # Not in their navigation at all...
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        at.switch_page(PAGE)
    # ...and the page itself refuses them when run directly.
    direct = AppTest.from_file(str(ROOT / PAGE), default_timeout=30)
    direct.session_state["actor"] = actor(role)
    direct.run()
    assert not direct.exception
    assert errors(direct) == ["Your role may not open this page."]
    assert not direct.dataframe
    assert not direct.text_input


def test_an_admin_demoted_meanwhile_is_refused(
    seeded: sessionmaker[Session], open_app: Callable[..., AppTest]
) -> None:
    with seeded.begin() as session:
        create_user(session, None, "root", Role.ADMIN, "root password 1", system=True)
        set_role(session, None, ADMIN, Role.ANALYST, system=True)
    # The browser session still says "admin"; the database does not, and the app reads it on
    # every run: the Accounts page is gone from the navigation...
    at = open_app(Actor(ADMIN, Role.ADMIN))
    assert not at.exception
    assert at.session_state["actor"] == Actor(ADMIN, Role.ANALYST)
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        at.switch_page(PAGE)
    # ...and the page itself, run with the stale session, refuses.
    direct = AppTest.from_file(str(ROOT / PAGE), default_timeout=30)
    direct.session_state["actor"] = Actor(ADMIN, Role.ADMIN)
    direct.run()
    assert not direct.exception
    assert errors(direct) == ["Your role may not open this page."]
    assert not direct.dataframe
