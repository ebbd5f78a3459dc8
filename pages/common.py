"""What every page shares: the cached engine and session factory, and error display.

The one place that caches: ``st.cache_resource`` for the engine, ``st.cache_data(ttl=...)`` for
query results (cleared after writes by :func:`clear_query_cache`). Sessions are never cached.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import streamlit as st
from sqlalchemy.orm import Session, sessionmaker

from db.engine import make_engine, make_session_factory, migrate
from tagging.config import Settings
from tagging.errors import TaggingError

QUERY_TTL_SECONDS = 30


@st.cache_resource
def settings() -> Settings:
    return Settings.from_env()


@st.cache_resource
def session_factory() -> sessionmaker[Session]:
    """The app database's session factory, migrated once per process."""
    url = settings().database_url
    migrate(url)
    return make_session_factory(make_engine(url))


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
