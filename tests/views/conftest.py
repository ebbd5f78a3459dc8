"""AppTest fixtures: the real app script on a seeded database, signed in as a given role."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import streamlit as st
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from streamlit.testing.v1 import AppTest

from db.accounts import Actor, create_user
from db.engine import make_engine, make_session_factory
from db.models import Role, User
from tests.utils.factories import actor

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def app_db(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> sessionmaker[Session]:
    """An empty migrated app database that the app under test uses."""
    monkeypatch.setenv("TAGGING_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("TAGGING_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TAGGING_ML_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("TAGGING_ML_TOKEN", "unused")
    st.cache_resource.clear()
    st.cache_data.clear()
    engine = make_engine(sqlite_url)
    yield make_session_factory(engine)
    engine.dispose()
    st.cache_resource.clear()
    st.cache_data.clear()


def ensure_account(sessions: sessionmaker[Session], signed_in: Actor) -> None:
    """Create ``signed_in``'s account unless it exists: the app reads the account on every run
    (a session whose account is missing is signed out), as it would after a real sign-in."""
    with sessions.begin() as session:
        if session.scalar(select(User.id).where(User.username == signed_in.username)) is None:
            create_user(
                session, None, signed_in.username, signed_in.role, ACCOUNT_PASSWORD, system=True
            )


ACCOUNT_PASSWORD = "account password 1"


@pytest.fixture
def open_app(
    app_db: sessionmaker[Session], request: pytest.FixtureRequest
) -> Callable[..., AppTest]:
    """``open_app(role, page)``: run app.py signed in as ``role`` and switch to ``page``."""

    def _open(role: Role | Actor | None = Role.ANALYST, page: str | None = None) -> AppTest:
        # AppTest runs the script as __main__ and leaves it there; multiprocessing's spawn would
        # then re-run app.py in every child process it starts later in this test session.
        main = sys.modules["__main__"]
        request.addfinalizer(lambda: sys.modules.__setitem__("__main__", main))
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=30)
        if role is not None:
            signed_in = role if isinstance(role, Actor) else actor(role)
            ensure_account(app_db, signed_in)
            at.session_state["actor"] = signed_in
        at.run()
        if page is not None:
            at.switch_page(page)
            at.run()
        return at

    return _open
