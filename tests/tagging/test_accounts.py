"""A new password or a disabled account ends the user's sessions in every browser."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from db.accounts import create_user
from db.models import Role
from db.user_sessions import check_session, open_session
from tagging.accounts import change_disabled, reset_password
from tagging.errors import PermissionDenied
from tests.utils.factories import actor

LIMITS = {"idle": timedelta(hours=8), "max_age": timedelta(hours=12)}


def active(session: Session, session_id: int) -> bool:
    return check_session(session, session_id=session_id, **LIMITS).actor is not None


@pytest.fixture
def two_browsers(sessions: sessionmaker[Session]) -> list[int]:
    with sessions.begin() as session:
        create_user(session, None, "ana", Role.ANALYST, password="first-password", system=True)
        create_user(session, None, "bob", Role.ANALYST, password="bobs-password", system=True)
        create_user(session, None, "root", Role.ADMIN, password="roots-password", system=True)
        ids = [open_session(session, "ana").session_id for _ in range(2)]
        ids.append(open_session(session, "bob").session_id)
        assert all(active(session, i) for i in ids)
    return ids


def test_a_password_reset_signs_every_browser_of_that_user_out(
    sessions: sessionmaker[Session], two_browsers: list[int]
) -> None:
    ana_home, ana_work, bob = two_browsers
    with sessions.begin() as session:
        user, ended = reset_password(session, actor(Role.ADMIN, "root"), "ana", "second-password")
    assert (user.username, ended) == ("ana", 2)
    with sessions() as session:
        assert not active(session, ana_home) and not active(session, ana_work)
        assert active(session, bob)  # nobody else's


def test_disabling_signs_out_and_enabling_does_not_revive(
    sessions: sessionmaker[Session], two_browsers: list[int]
) -> None:
    ana_home, _, bob = two_browsers
    with sessions.begin() as session:
        assert change_disabled(session, None, "ana", True, system=True)[1] == 2
    with sessions.begin() as session:
        assert change_disabled(session, None, "ana", False, system=True)[1] == 0
    with sessions() as session:
        assert not active(session, ana_home) and active(session, bob)


def test_only_an_admin_may_and_a_refusal_ends_nothing(
    sessions: sessionmaker[Session], two_browsers: list[int]
) -> None:
    with sessions.begin() as session, pytest.raises(PermissionDenied):
        reset_password(session, actor(Role.ANALYST, "bob"), "ana", "second-password")
    with sessions() as session:
        assert active(session, two_browsers[0])
