"""Signed-in browsers: the server side of the app's session cookie.

A session is a ``user_sessions`` row. Signing in opens one (:func:`open_session`) and returns a
one-time *handoff* code that the page gives the browser; the browser trades it, over a plain
HTTP request, for the session's *token* (:func:`claim_handoff`), which the HTTP response sets as
an HttpOnly cookie: the token never passes through the page, a URL or a log. Every run of a
signed-in page checks the session (:func:`check_session`): not signed out, not idle longer than
``idle``, not older than ``max_age``, its account still enabled. Signing out revokes the row
(:func:`revoke_session`), in every tab of that browser at its next click.

Only SHA-256 hashes of the token and of the code are stored; both are 256-bit random values, so
looking them up by hash leaks nothing by timing and a stolen database opens no session.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, joinedload

from db.accounts import Actor
from db.errors import NotFoundError
from db.models import Role, User, UserSession, as_utc, utcnow

HANDOFF_TTL = timedelta(minutes=2)
"""The browser must claim its cookie this soon after signing in."""
TOUCH_INTERVAL = timedelta(minutes=1)
"""``last_seen_at`` is written at most this often, not on every click."""
MAX_SECRET_LENGTH = 128


class SessionState(enum.StrEnum):
    ACTIVE = "active"
    UNKNOWN = "unknown"
    """No session has this token or id (or it was purged)."""
    REVOKED = "revoked"
    """Signed out."""
    EXPIRED = "expired"
    """Idle too long, or too old."""
    CLOSED = "closed"
    """Its account was disabled or deleted."""


@dataclass(frozen=True)
class SessionCheck:
    """What :func:`check_session` found."""

    state: SessionState
    session_id: int | None = None
    actor: Actor | None = None
    """The account as the database has it now (only for an active session)."""
    created_at: datetime | None = None
    cookie_set: bool = False
    """The browser has claimed its cookie (the handoff is used up)."""

    @property
    def active(self) -> bool:
        return self.state is SessionState.ACTIVE


@dataclass(frozen=True)
class OpenedSession:
    session_id: int
    handoff: str
    """Give this to the browser (once): :func:`claim_handoff` trades it for the cookie's token."""


def digest(secret: str) -> str:
    """The stored form of a token or handoff code."""
    return hashlib.sha256(secret.encode()).hexdigest()


def _state(row: UserSession, now: datetime, idle: timedelta, max_age: timedelta) -> SessionState:
    if row.revoked_at is not None:
        return SessionState.REVOKED
    created = as_utc(row.created_at) or now
    last_seen = as_utc(row.last_seen_at) or created
    if now - last_seen > idle or now - created > max_age:
        return SessionState.EXPIRED
    if row.user is None or row.user.disabled:
        return SessionState.CLOSED
    return SessionState.ACTIVE


def open_session(
    session: Session,
    username: str,
    *,
    now: datetime | None = None,
    purge_before: datetime | None = None,
) -> OpenedSession:
    """Open a session for ``username`` (who has just signed in).

    ``purge_before``: also delete every session created before then (long expired ones).

    Raises:
        NotFoundError: no such account.
    """
    now = as_utc(now) or utcnow()
    user_id = session.scalar(select(User.id).where(User.username == username.strip().lower()))
    if user_id is None:
        raise NotFoundError(f"no account named {username!r}")
    if purge_before is not None:
        session.execute(delete(UserSession).where(UserSession.created_at < purge_before))
    handoff = secrets.token_urlsafe(32)
    row = UserSession(
        user_id=user_id, handoff_sha256=digest(handoff), created_at=now, last_seen_at=now
    )
    session.add(row)
    session.flush()
    return OpenedSession(session_id=row.id, handoff=handoff)


def claim_handoff(
    session: Session,
    handoff: str,
    *,
    idle: timedelta,
    max_age: timedelta,
    now: datetime | None = None,
) -> str | None:
    """Trade a handoff code for the session's new token (what the cookie holds), once.

    None when the code is unknown, already used, older than :data:`HANDOFF_TTL`, or its session
    is no longer active.
    """
    handoff = (handoff or "").strip()
    if not handoff or len(handoff) > MAX_SECRET_LENGTH:
        return None
    now = as_utc(now) or utcnow()
    row = session.scalar(
        select(UserSession)
        .options(joinedload(UserSession.user))
        .where(UserSession.handoff_sha256 == digest(handoff))
        .with_for_update(of=UserSession)
    )
    if row is None:
        return None
    # Used up whatever happens next: a code is good for one try.
    row.handoff_sha256 = None
    created = as_utc(row.created_at) or now
    if now - created > HANDOFF_TTL or _state(row, now, idle, max_age) is not SessionState.ACTIVE:
        session.flush()
        return None
    token = secrets.token_urlsafe(32)
    row.token_sha256 = digest(token)
    session.flush()
    return token


def check_session(
    session: Session,
    *,
    token: str | None = None,
    session_id: int | None = None,
    idle: timedelta,
    max_age: timedelta,
    now: datetime | None = None,
) -> SessionCheck:
    """Check the session with this cookie ``token`` (or this ``session_id``) and note that it
    was seen now (written at most every :data:`TOUCH_INTERVAL`).

    Active only when it is not signed out, has not been idle longer than ``idle``, is not older
    than ``max_age`` and its account is enabled; the :class:`Actor` then has the account's
    current role.
    """
    now = as_utc(now) or utcnow()
    query = select(UserSession).options(joinedload(UserSession.user))
    if token is not None:
        token = token.strip()
        if not token or len(token) > MAX_SECRET_LENGTH:
            return SessionCheck(SessionState.UNKNOWN)
        query = query.where(UserSession.token_sha256 == digest(token))
    elif session_id is not None:
        query = query.where(UserSession.id == session_id)
    else:
        return SessionCheck(SessionState.UNKNOWN)
    row = session.scalar(query)
    if row is None:
        return SessionCheck(SessionState.UNKNOWN)
    state = _state(row, now, idle, max_age)
    actor: Actor | None = None
    if state is SessionState.ACTIVE:
        actor = Actor(username=row.user.username, role=Role(row.user.role))
        last_seen = as_utc(row.last_seen_at) or now
        if now - last_seen >= TOUCH_INTERVAL:
            row.last_seen_at = now
            session.flush()
    return SessionCheck(
        state,
        session_id=row.id,
        actor=actor,
        created_at=as_utc(row.created_at),
        cookie_set=row.token_sha256 is not None,
    )


def revoke_session(
    session: Session,
    *,
    token: str | None = None,
    session_id: int | None = None,
    now: datetime | None = None,
) -> bool:
    """Sign the session with this ``token`` (or ``session_id``) out, for good; its handoff, if
    unused, dies with it. True if a session was signed out now."""
    if token is None and session_id is None:
        return False
    query = select(UserSession).where(UserSession.revoked_at.is_(None))
    if token is not None:
        query = query.where(UserSession.token_sha256 == digest(token.strip()))
    else:
        query = query.where(UserSession.id == session_id)
    row = session.scalar(query.with_for_update())
    if row is None:
        return False
    row.revoked_at = as_utc(now) or utcnow()
    row.handoff_sha256 = None
    session.flush()
    return True


def revoke_user_sessions(session: Session, username: str, *, now: datetime | None = None) -> int:
    """Sign every browser of ``username`` out (e.g. after a password change); how many."""
    rows = session.scalars(
        select(UserSession)
        .join(User)
        .where(User.username == username.strip().lower(), UserSession.revoked_at.is_(None))
        .with_for_update(of=UserSession)
    ).all()
    moment = as_utc(now) or utcnow()
    for row in rows:
        row.revoked_at = moment
        row.handoff_sha256 = None
    session.flush()
    return len(rows)
