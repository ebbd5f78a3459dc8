"""What every page shares: the cached engine and clients, the session-state keys, the signed-in
user, error display.

Caching: ``st.cache_resource`` here for the settings, the engine and the clients;
``st.cache_data(ttl=...)`` for query results in :mod:`views.loaders` (cleared after writes by
:func:`clear_query_cache`). Sessions are never cached.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

import streamlit as st
from sqlalchemy.orm import Session, sessionmaker

from db.accounts import Actor, Permission
from db.engine import make_engine, make_session_factory, migrate
from db.models import utcnow
from tagging.config import Settings
from tagging.errors import TaggingError
from tagging.server.client import MLClient

QUERY_TTL_SECONDS = 30
SESSION_IDLE = timedelta(minutes=Settings.from_env().session_idle_minutes)
"""A signed-in session that has been idle this long must sign in again."""

# Session-state keys of the signed-in session (the sign-in page and the tests use them too).
ACTOR = "actor"
"""The signed-in :class:`db.accounts.Actor`."""
SIGNED_IN_AT = "signed_in_at"
LAST_SEEN_AT = "last_seen_at"
SIGNED_OUT = "signed_out"
"""Set by :func:`sign_out`: the sign-in page says "Signed out"."""
SESSION_EXPIRED = "session_expired"
"""Set when an idle session is signed out: the sign-in page says so."""


@st.cache_resource
def settings() -> Settings:
    return Settings.from_env()


@st.cache_resource
def session_factory() -> sessionmaker[Session]:
    """The app database's session factory, migrated once per process."""
    url = settings().database_url
    migrate(url)
    return make_session_factory(make_engine(url))


@st.cache_resource
def ml_client() -> MLClient:
    """The ML server's client (its token stays on the server side, never in the page)."""
    return MLClient.from_settings(settings())


def clear_query_cache() -> None:
    """Call after every write so that the next render reads fresh data."""
    st.cache_data.clear()


@contextmanager
def shown_errors() -> Iterator[None]:
    """Show a Tagdesk error as ``st.error`` instead of a traceback."""
    try:
        yield
    except TaggingError as exc:
        st.error(str(exc), icon="⚠️")


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
    """The signed-in user, or None (also when the session has been idle too long)."""
    actor: Actor | None = st.session_state.get(ACTOR)
    if actor is None:
        return None
    last_seen: datetime = st.session_state.get(LAST_SEEN_AT) or utcnow()
    if utcnow() - last_seen > SESSION_IDLE:
        sign_out()
        st.session_state[SESSION_EXPIRED] = True
        return None
    st.session_state[LAST_SEEN_AT] = utcnow()
    return actor


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
