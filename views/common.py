"""What every page shares: the cached engine and clients, the session-state keys, the signed-in
user, error display, and :func:`plain` for text from outside.

Caching: ``st.cache_resource`` here for the settings, the engine and the clients;
``st.cache_data(ttl=...)`` for query results in :mod:`views.loaders` (cleared after writes by
:func:`clear_query_cache`). Sessions are never cached.

Advertiser-supplied text (titles, feed colors, URLs, advertiser names) and anything quoting it
(error messages) is never given to a widget that reads Markdown as it is: show it with
``st.text``/``st.code`` or in a dataframe cell, or pass it through :func:`plain` first.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

import streamlit as st
from sqlalchemy.orm import Session, sessionmaker

from db.accounts import Actor, Permission, SignInThrottle, account_actor
from db.engine import make_engine, make_session_factory, migrate
from db.models import utcnow
from db.user_sessions import (
    HANDOFF_TTL,
    SessionCheck,
    SessionState,
    check_session,
    open_session,
    revoke_session,
)
from tagging.config import Settings
from tagging.detectors.refresh import BackgroundRefresh
from tagging.errors import TaggingError
from tagging.server.client import MLClient

QUERY_TTL_SECONDS = 30
SESSION_IDLE = timedelta(minutes=Settings.from_env().session_idle_minutes)
"""A signed-in session that has been idle this long must sign in again."""
SESSION_MAX = timedelta(hours=Settings.from_env().session_max_hours)
"""A signed-in session this old must sign in again, however active it has been."""

_MARKDOWN_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")
"""Every ASCII punctuation character: CommonMark lets a backslash escape each of them."""


def plain(text: object) -> str:
    """``text`` for a widget that reads Markdown, shown literally: every ASCII punctuation
    character is backslash-escaped, so nothing in it becomes a link, an image (no request to its
    URL), HTML, emphasis, a heading or list, LaTeX or a Streamlit directive such as ``:red[…]``.

    Escape each outside value, not our Markdown around it::

        st.success(f"Scrape of **{plain(name)}** queued.")
    """
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", str(text))


# Session-state keys of the signed-in session (the sign-in page and the tests use them too).
ACTOR = "actor"
"""The signed-in :class:`db.accounts.Actor`."""
SIGNED_IN_AT = "signed_in_at"
LAST_SEEN_AT = "last_seen_at"
SIGNED_OUT = "signed_out"
"""Set by :func:`sign_out`: the sign-in page says "Signed out"."""
SESSION_EXPIRED = "session_expired"
"""Set when an idle or too old session is signed out: the sign-in page says so."""
ACCOUNT_CLOSED = "account_closed"
"""Set when the signed-in account was disabled or deleted: the sign-in page says so."""
CLIENT_KEY = "sign_in_client"
"""This browser session's throttle key when the connection has no address (localhost)."""
USER_SESSION = "user_session"
"""The id of the signed-in browser's ``user_sessions`` row (:mod:`db.user_sessions`)."""
COOKIE_HANDOFF = "session_handoff"
"""``(code, issued_at)``: the one-time code the page hands the browser for its session cookie
(:mod:`views.session_cookie`), until the browser has claimed it."""
FORGET_COOKIE = "session_cookie_forget"
"""Set when the browser's session cookie is dead (signed out, expired): the page drops it."""
COOKIE_TRIED = "session_cookie_tried"
"""The session cookie sent with this browser session's connection has been tried (it cannot
change while the connection lasts)."""
SESSION_COOKIE = "tagdesk_session"
"""The session cookie: a random token; HttpOnly, SameSite=Strict, set by the app's HTTP route."""


@st.cache_resource
def settings() -> Settings:
    return Settings.from_env()


@st.cache_resource
def session_factory() -> sessionmaker[Session]:
    """The app database's session factory, migrated once per process."""
    url = settings().database_url
    migrate(url, create=settings().creates_database)
    return make_session_factory(make_engine(url))


@st.cache_resource
def ml_client() -> MLClient:
    """The ML server's client (its token stays on the server side, never in the page)."""
    return MLClient.from_settings(settings())


@st.cache_resource
def findings_refresher() -> BackgroundRefresh:
    """Refreshes the findings after a fix in a thread, then clears the query caches."""
    return BackgroundRefresh(session_factory(), clear_query_cache)


@st.cache_resource
def sign_in_throttle() -> SignInThrottle:
    """The process's memory of failed sign-ins, per client and per unknown username."""
    return SignInThrottle()


def client_key() -> str:
    """Who is signing in, for the per-client throttle: the connection's address, or (when
    Streamlit has none, e.g. on localhost) a key of this browser session."""
    address = st.context.ip_address
    if isinstance(address, str) and address:  # (AppTest hands a mock instead)
        return f"ip:{address}"
    if CLIENT_KEY not in st.session_state:
        st.session_state[CLIENT_KEY] = f"session:{secrets.token_hex(8)}"
    return str(st.session_state[CLIENT_KEY])


def clear_query_cache() -> None:
    """Call after every write so that the next render reads fresh data."""
    st.cache_data.clear()


@contextmanager
def shown_errors() -> Iterator[None]:
    """Show a Tagdesk error as ``st.error`` instead of a traceback."""
    try:
        yield
    except TaggingError as exc:
        # Messages quote names and values from outside: shown literally.
        st.error(plain(exc), icon="⚠️")


def sign_in(actor: Actor) -> None:
    """Sign this browser session in as ``actor`` (authenticated by the caller), and open the
    server-side session that the browser's cookie will carry to reloads and other tabs."""
    now = utcnow()
    with session_factory().begin() as session:
        opened = open_session(session, actor.username, now=now, purge_before=now - 2 * SESSION_MAX)
    st.session_state[ACTOR] = actor
    st.session_state[SIGNED_IN_AT] = st.session_state[LAST_SEEN_AT] = now
    st.session_state[USER_SESSION] = opened.session_id
    st.session_state[COOKIE_HANDOFF] = (opened.handoff, now)
    st.session_state.pop(FORGET_COOKIE, None)


def sign_out() -> None:
    """Sign out: the server-side session is revoked (every tab of this browser is signed out at
    its next click, a reload shows the sign-in page) and the page drops the cookie."""
    session_id = st.session_state.pop(USER_SESSION, None)
    if session_id is not None:
        with session_factory().begin() as session:
            revoke_session(session, session_id=session_id)
        st.session_state[FORGET_COOKIE] = True
    for key in (ACTOR, SIGNED_IN_AT, LAST_SEEN_AT, COOKIE_HANDOFF):
        st.session_state.pop(key, None)
    st.session_state[SIGNED_OUT] = True
    if oidc_configured() and getattr(st.user, "is_logged_in", False):
        st.logout()


def _cookie_token() -> str | None:
    try:
        value = st.context.cookies.get(SESSION_COOKIE)
    except Exception:  # no connection (bare script runs)
        return None
    return value if isinstance(value, str) and value else None  # (AppTest hands a mock)


def _restore_from_cookie() -> Actor | None:
    """Sign in from the session cookie this connection brought (a reload, a link, another tab);
    tried once per browser session. A dead cookie is dropped, with the reason shown."""
    if st.session_state.get(COOKIE_TRIED):
        return None
    st.session_state[COOKIE_TRIED] = True
    token = _cookie_token()
    if token is None:
        return None
    with session_factory().begin() as session:
        check = check_session(session, token=token, idle=SESSION_IDLE, max_age=SESSION_MAX)
    if not check.active or check.actor is None:
        st.session_state[FORGET_COOKIE] = True
        if check.state is SessionState.EXPIRED:
            st.session_state[SESSION_EXPIRED] = True
        elif check.state is SessionState.CLOSED:
            st.session_state[ACCOUNT_CLOSED] = True
        return None
    now = utcnow()
    st.session_state[ACTOR] = check.actor
    st.session_state[USER_SESSION] = check.session_id
    st.session_state[SIGNED_IN_AT] = check.created_at or now
    st.session_state[LAST_SEEN_AT] = now
    st.session_state.pop(SIGNED_OUT, None)
    return check.actor


def _end_session(check: SessionCheck) -> None:
    """Sign this browser session out after its server-side session ended elsewhere or expired."""
    sign_out()
    if check.state is SessionState.CLOSED:
        st.session_state[ACCOUNT_CLOSED] = True
    elif check.state is not SessionState.REVOKED:
        st.session_state[SESSION_EXPIRED] = True


def current_actor() -> Actor | None:
    """The signed-in user as the database has it now, or None.

    None also when the session has been idle too long (:data:`SESSION_IDLE`), is older than
    :data:`SESSION_MAX`, or its account has been disabled or deleted meanwhile; the session is
    then signed out. The account is read again on every run (one indexed query), so a new role
    applies from the next click on, and the library's ``require`` checks that role.
    """
    actor: Actor | None = st.session_state.get(ACTOR)
    if actor is None:
        actor = _restore_from_cookie()
        if actor is None:
            return None
    session_id = st.session_state.get(USER_SESSION)
    if session_id is not None:
        return _current_session_actor(actor, session_id)
    # Signed in without a server-side session (tests set the session state directly): the
    # limits are checked on this browser session's own clock.
    now = utcnow()
    last_seen: datetime = st.session_state.get(LAST_SEEN_AT) or now
    signed_in_at: datetime = st.session_state.setdefault(SIGNED_IN_AT, now)
    if now - last_seen > SESSION_IDLE or now - signed_in_at > SESSION_MAX:
        sign_out()
        st.session_state[SESSION_EXPIRED] = True
        return None
    with session_factory()() as session:
        fresh = account_actor(session, actor.username)
    if fresh is None:
        sign_out()
        st.session_state[ACCOUNT_CLOSED] = True
        return None
    if fresh != actor:
        st.session_state[ACTOR] = fresh
    st.session_state[LAST_SEEN_AT] = now
    return fresh


def _current_session_actor(actor: Actor, session_id: int) -> Actor | None:
    """The server-side session's user, checked (limits, sign-out elsewhere, account) and seen.

    The session's row, not this browser session, holds the idle and absolute clocks: every tab
    of the browser shares it, and signing out in one ends all of them.
    """
    with session_factory().begin() as session:
        check = check_session(
            session, session_id=session_id, idle=SESSION_IDLE, max_age=SESSION_MAX
        )
    if not check.active or check.actor is None:
        _end_session(check)
        return None
    handoff = st.session_state.get(COOKIE_HANDOFF)
    if handoff is not None and (check.cookie_set or utcnow() - handoff[1] > HANDOFF_TTL):
        st.session_state.pop(COOKIE_HANDOFF, None)
    if check.actor != actor:
        st.session_state[ACTOR] = check.actor
    st.session_state[LAST_SEEN_AT] = utcnow()
    return check.actor


def require_page(permission: Permission) -> Actor:
    """Stop the page with a message unless the signed-in user may ``permission``."""
    actor = current_actor()
    if actor is None or not actor.can(permission):
        st.error("Your role may not open this page.", icon="🔒")
        st.stop()
    return actor


def oidc_configured() -> bool:
    """Whether single sign-on (OpenID Connect) is configured: an ``[auth]`` section in the
    Streamlit secrets."""
    try:
        return "auth" in st.secrets
    except Exception:
        return False
