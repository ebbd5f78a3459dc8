"""Signed-in browsers (``db.user_sessions``): open, hand the cookie over once, check the idle and
absolute limits, sign out. Every test runs on SQLite and on PostgreSQL (the ``sessions`` fixture).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from db.accounts import Actor, create_user, set_disabled, set_role
from db.models import Role, User, UserSession
from db.user_sessions import (
    HANDOFF_TTL,
    TOUCH_INTERVAL,
    SessionCheck,
    SessionState,
    check_session,
    claim_handoff,
    digest,
    open_session,
    revoke_session,
    revoke_user_sessions,
)
from tagging.errors import NotFoundError

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
IDLE = timedelta(minutes=30)
MAX_AGE = timedelta(hours=8)


@pytest.fixture
def people(sessions: sessionmaker[Session]) -> sessionmaker[Session]:
    with sessions.begin() as session:
        create_user(session, None, "root", Role.ADMIN, "admin password 1", system=True)
        create_user(session, None, "alice", Role.ANALYST, "alice password 1", system=True)
    return sessions


def signed_in(sessions: sessionmaker[Session], username: str = "alice") -> tuple[int, str]:
    """Open a session at T0 and claim its cookie: ``(session id, token)``."""
    with sessions.begin() as session:
        opened = open_session(session, username, now=T0)
    with sessions.begin() as session:
        token = claim_handoff(
            session, opened.handoff, idle=IDLE, max_age=MAX_AGE, now=T0 + timedelta(seconds=1)
        )
    assert token is not None
    return opened.session_id, token


def check(
    sessions: sessionmaker[Session],
    now: datetime,
    *,
    token: str | None = None,
    session_id: int | None = None,
) -> SessionCheck:
    with sessions.begin() as session:
        return check_session(
            session, token=token, session_id=session_id, idle=IDLE, max_age=MAX_AGE, now=now
        )


def test_a_session_is_opened_its_cookie_claimed_once_and_only_hashes_are_stored(
    people: sessionmaker[Session],
) -> None:
    with people.begin() as session:
        opened = open_session(session, " Alice ", now=T0)
    with people.begin() as session:
        token = claim_handoff(session, opened.handoff, idle=IDLE, max_age=MAX_AGE, now=T0)
    assert token is not None and len(token) >= 43 and token != opened.handoff
    # The code is good for one try.
    with people.begin() as session:
        assert claim_handoff(session, opened.handoff, idle=IDLE, max_age=MAX_AGE, now=T0) is None

    with people() as session:
        row = session.scalars(select(UserSession)).one()
        stored = " ".join(
            str(value) for value in session.execute(select(UserSession.__table__)).one()
        )
        assert row.id == opened.session_id
        assert row.token_sha256 == digest(token)
        assert row.handoff_sha256 is None
        assert token not in stored and opened.handoff not in stored  # only their hashes

    found = check(people, T0 + timedelta(minutes=5), token=token)
    assert found.state is SessionState.ACTIVE and found.active
    assert found.actor == Actor("alice", Role.ANALYST)
    assert found.session_id == opened.session_id and found.cookie_set
    assert found.created_at == T0
    # The page knows its session by id: same answer.
    assert check(people, T0 + timedelta(minutes=5), session_id=opened.session_id).actor == (
        Actor("alice", Role.ANALYST)
    )


def test_unknown_tokens_codes_and_accounts_are_refused(people: sessionmaker[Session]) -> None:
    signed_in(people)
    for token in ("", "  ", "not a token", "x" * 500):
        assert check(people, T0, token=token).state is SessionState.UNKNOWN
    assert check(people, T0, session_id=999).state is SessionState.UNKNOWN
    assert check(people, T0).state is SessionState.UNKNOWN
    with people.begin() as session:
        for code in ("", "nope", "x" * 500):
            assert claim_handoff(session, code, idle=IDLE, max_age=MAX_AGE, now=T0) is None
    with people.begin() as session, pytest.raises(NotFoundError):
        open_session(session, "nobody", now=T0)


def test_a_handoff_expires(people: sessionmaker[Session]) -> None:
    with people.begin() as session:
        opened = open_session(session, "alice", now=T0)
    late = T0 + HANDOFF_TTL + timedelta(seconds=1)
    with people.begin() as session:
        assert claim_handoff(session, opened.handoff, idle=IDLE, max_age=MAX_AGE, now=late) is None
    # The page's own session goes on without a cookie.
    found = check(people, late, session_id=opened.session_id)
    assert found.active and not found.cookie_set


def test_an_idle_session_expires_and_activity_keeps_it_alive(
    people: sessionmaker[Session],
) -> None:
    _, token = signed_in(people)
    assert check(people, T0 + IDLE - timedelta(seconds=1), token=token).active
    # That check was activity: the idle clock starts again from there.
    assert check(people, T0 + 2 * IDLE - timedelta(seconds=2), token=token).active
    assert check(people, T0 + 4 * IDLE, token=token).state is SessionState.EXPIRED


def test_last_seen_is_written_at_most_once_a_minute(people: sessionmaker[Session]) -> None:
    session_id, token = signed_in(people)
    check(people, T0 + timedelta(seconds=20), token=token)
    with people() as session:
        seen = session.scalar(select(UserSession.last_seen_at).where(UserSession.id == session_id))
        assert seen is not None and seen.replace(tzinfo=UTC) == T0
    check(people, T0 + TOUCH_INTERVAL, token=token)
    with people() as session:
        seen = session.scalar(select(UserSession.last_seen_at).where(UserSession.id == session_id))
        assert seen is not None and seen.astimezone(UTC) == T0 + TOUCH_INTERVAL


def test_a_session_expires_at_its_maximum_age_however_active(
    people: sessionmaker[Session],
) -> None:
    _, token = signed_in(people)
    now = T0
    while now < T0 + MAX_AGE - IDLE / 2:
        now += IDLE / 2
        assert check(people, now, token=token).active
    assert check(people, T0 + MAX_AGE + timedelta(seconds=1), token=token).state is (
        SessionState.EXPIRED
    )


def test_signing_out_revokes_the_session_for_good(people: sessionmaker[Session]) -> None:
    session_id, token = signed_in(people)
    other_id, other_token = signed_in(people, "root")
    with people.begin() as session:
        assert revoke_session(session, session_id=session_id, now=T0 + timedelta(minutes=1))
    with people.begin() as session:
        assert not revoke_session(session, session_id=session_id)  # already signed out
        assert not revoke_session(session)
    assert check(people, T0 + timedelta(minutes=2), token=token).state is SessionState.REVOKED
    assert check(people, T0 + timedelta(minutes=2), session_id=session_id).state is (
        SessionState.REVOKED
    )
    # Another browser's session is untouched.
    assert check(people, T0 + timedelta(minutes=2), token=other_token).active
    # By the cookie's token too (what a route would use).
    with people.begin() as session:
        assert revoke_session(session, token=other_token)
    assert check(people, T0 + timedelta(minutes=2), session_id=other_id).state is (
        SessionState.REVOKED
    )


def test_a_revoked_session_cannot_claim_its_cookie(people: sessionmaker[Session]) -> None:
    with people.begin() as session:
        opened = open_session(session, "alice", now=T0)
    with people.begin() as session:
        revoke_session(session, session_id=opened.session_id)
    with people.begin() as session:
        assert claim_handoff(session, opened.handoff, idle=IDLE, max_age=MAX_AGE, now=T0) is None


def test_every_session_of_a_user_can_be_revoked(people: sessionmaker[Session]) -> None:
    tokens = [signed_in(people)[1] for _ in range(3)]
    _, root_token = signed_in(people, "root")
    with people.begin() as session:
        assert revoke_user_sessions(session, "ALICE") == 3
    assert {check(people, T0, token=token).state for token in tokens} == {SessionState.REVOKED}
    assert check(people, T0, token=root_token).active


def test_the_account_is_read_again_on_every_check(people: sessionmaker[Session]) -> None:
    session_id, token = signed_in(people)
    with people.begin() as session:
        set_role(session, None, "alice", Role.MANAGER, system=True)
    assert check(people, T0, token=token).actor == Actor("alice", Role.MANAGER)
    with people.begin() as session:
        set_disabled(session, None, "alice", True, system=True)
    found = check(people, T0, token=token)
    assert found.state is SessionState.CLOSED and found.actor is None
    with people.begin() as session:
        session.execute(delete(User).where(User.username == "alice"))
    # The account's sessions go with it.
    assert check(people, T0, session_id=session_id).state is SessionState.UNKNOWN


def test_old_sessions_are_purged_when_a_new_one_opens(people: sessionmaker[Session]) -> None:
    signed_in(people)
    with people.begin() as session:
        open_session(
            session, "root", now=T0 + timedelta(days=3), purge_before=T0 + timedelta(days=1)
        )
    with people() as session:
        assert [row.user.username for row in session.scalars(select(UserSession))] == ["root"]
