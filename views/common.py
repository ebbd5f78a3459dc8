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
from tagging.config import Settings
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
    st.session_state[ACTOR] = actor
    st.session_state[SIGNED_IN_AT] = st.session_state[LAST_SEEN_AT] = utcnow()


def sign_out() -> None:
    for key in (ACTOR, SIGNED_IN_AT, LAST_SEEN_AT):
        st.session_state.pop(key, None)
    st.session_state[SIGNED_OUT] = True
    if _oidc_configured() and getattr(st.user, "is_logged_in", False):
        st.logout()


def current_actor() -> Actor | None:
    """The signed-in user as the database has it now, or None.

    None also when the session has been idle too long (:data:`SESSION_IDLE`), is older than
    :data:`SESSION_MAX`, or its account has been disabled or deleted meanwhile; the session is
    then signed out. The account is read again on every run (one indexed query), so a new role
    applies from the next click on, and the library's ``require`` checks that role.
    """
    actor: Actor | None = st.session_state.get(ACTOR)
    if actor is None:
        return None
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


def require_page(permission: Permission) -> Actor:
    """Stop the page with a message unless the signed-in user may ``permission``."""
    actor = current_actor()
    if actor is None or not actor.can(permission):
        st.error("Your role may not open this page.", icon="🔒")
        st.stop()
    return actor


def _oidc_configured() -> bool:
    try:
        return "auth" in st.secrets
    except Exception:
        return False
