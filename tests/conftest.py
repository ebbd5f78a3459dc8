"""Fixtures shared by the whole suite: databases (SQLite and PostgreSQL), a trained model, the
demo inventory, and real servers on loopback (demo CDN, ML server).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from db.engine import make_engine, make_session_factory, migrate
from db.models import Base
from tests.utils.servers import cdn_host, ml_settings

# Tests never touch a developer's real data: modules that read the environment at import time
# (the task queue) get a throwaway data dir.
os.environ["TAGGING_DATA_DIR"] = tempfile.mkdtemp(prefix="tagdesk-tests-")
os.environ.pop("TAGGING_REDIS_URL", None)

POSTGRES_URL = os.environ.get("TAGGING_TEST_POSTGRES_URL")
REQUIRE_POSTGRES = os.environ.get("TAGGING_REQUIRE_POSTGRES") == "1"
REDIS_URL = os.environ.get("TAGGING_TEST_REDIS_URL")
REQUIRE_REDIS = os.environ.get("TAGGING_REQUIRE_REDIS") == "1"


# --- databases ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (migrating once is much faster)."""
    path = tmp_path_factory.mktemp("template") / "app.sqlite"
    migrate(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test session, dropped at the end."""
    if not POSTGRES_URL:
        if REQUIRE_POSTGRES:
            pytest.fail("TAGGING_REQUIRE_POSTGRES=1 but TAGGING_TEST_POSTGRES_URL is not set")
        pytest.skip("PostgreSQL tests need TAGGING_TEST_POSTGRES_URL (CI sets it)")
    admin = make_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"tagdesk_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        if REQUIRE_POSTGRES:
            pytest.fail(f"PostgreSQL at {POSTGRES_URL} is unreachable: {exc}")
        pytest.skip(f"PostgreSQL at {POSTGRES_URL} is unreachable: {exc}")
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    migrate(url)
    try:
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def redis_queue() -> Iterator[tuple[str, str]]:
    """Redis for a queue test: its URL, and a queue name of its own (``TAGGING_QUEUE_NAME``), so
    that parallel runs sharing the server do not collide; the name's keys are deleted after."""
    if not REDIS_URL:
        if REQUIRE_REDIS:
            pytest.fail("TAGGING_REQUIRE_REDIS=1 but TAGGING_TEST_REDIS_URL is not set")
        pytest.skip("Redis tests need TAGGING_TEST_REDIS_URL (CI sets it)")
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except Exception as exc:
        if REQUIRE_REDIS:
            pytest.fail(f"Redis at {REDIS_URL} is unreachable: {exc}")
        pytest.skip(f"Redis at {REDIS_URL} is unreachable: {exc}")
    name = f"tagdesk-test-{uuid.uuid4().hex[:10]}"
    try:
        yield REDIS_URL, name
    finally:
        for key in client.scan_iter(f"*{name}*"):
            client.delete(key)
        client.close()


def _truncate_all(url: str) -> None:
    engine = make_engine(url)
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path
) -> Iterator[str]:
    """The app database URL, once on SQLite and once on PostgreSQL, empty and migrated."""
    if request.param == "sqlite":
        path = tmp_path / "app.sqlite"
        shutil.copy(sqlite_template, path)
        yield f"sqlite:///{path}"
        return
    url = request.getfixturevalue("postgres_database")
    _truncate_all(url)
    yield url
    _truncate_all(url)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    """A migrated SQLite app database, for tests that are not about the database."""
    path = tmp_path / "app-sqlite.sqlite"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def cache_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL for the ML server's cache store, once on SQLite and once on PostgreSQL."""
    from tagging.server.cache import CacheBase

    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ml_cache.sqlite'}"
        return
    url = request.getfixturevalue("postgres_database")
    yield url
    engine = make_engine(url)
    CacheBase.metadata.drop_all(engine)
    engine.dispose()


# --- model, demo inventory, servers on loopback ------------------------------------------------


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A quickly trained production Image Type model (seconds; the full one is tested apart)."""
    from tagging.ml.train import TrainConfig, train

    path = tmp_path_factory.mktemp("models")
    train(TrainConfig.quick(), path, promote=True)
    return path


@pytest.fixture(scope="session")
def classifier(models_dir: Path):
    from tagging.ml.inference import TypeClassifier

    return TypeClassifier.load(models_dir)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo inventory (a tenth of the real one, every case kept)."""
    from tagging.demo.generate import generate_demo

    path = tmp_path_factory.mktemp("demo")
    generate_demo(path, seed=7, scale=0.1)
    return path


@pytest.fixture
def cdn(demo_dir: Path) -> Iterator[object]:
    """The demo CDN on a free loopback port (fresh state: republishing does not leak)."""
    from tagging.demo.cdn import make_server

    server = make_server(demo_dir, port=0)
    server.serve_in_thread()
    yield server
    server.shutdown()


@pytest.fixture
def ml_server(tmp_path: Path, cdn: object, classifier: object) -> Iterator[object]:
    """The real ML server (FastAPI on uvicorn) on a free loopback port, allowed to reach the CDN."""
    from tagging.ml.color import EmbeddedColorModel
    from tagging.server.app import create_app
    from tagging.testing import UvicornThread

    settings = ml_settings(tmp_path, f"sqlite:///{tmp_path / 'ml_cache.sqlite'}", cdn_host(cdn))
    app = create_app(settings, classifier=classifier, color_model=EmbeddedColorModel())  # type: ignore[arg-type]
    with UvicornThread(app) as server:
        yield server


@pytest.fixture
def app_settings(tmp_path: Path, sqlite_url: str, ml_server: object, cdn: object) -> object:
    """Settings of a scrape or app process talking to ``ml_server`` and ``cdn``."""
    return ml_settings(
        tmp_path,
        f"sqlite:///{tmp_path / 'ml_cache.sqlite'}",
        cdn_host(cdn),
        database_url=sqlite_url,
        ml_url=ml_server.url,  # type: ignore[attr-defined]
    )


@pytest.fixture
def app_sessions(
    app_settings: object, demo_dir: Path, cdn: object
) -> Iterator[sessionmaker[Session]]:
    """Sessions of the app database of ``app_settings``, with the demo advertisers registered."""
    from tagging.demo.generate import DemoInventory
    from tagging.demo.setup import register_demo_advertisers

    register_demo_advertisers(app_settings, DemoInventory.load(demo_dir), cdn.url)  # type: ignore[arg-type, attr-defined]
    engine = make_engine(app_settings.database_url)  # type: ignore[attr-defined]
    yield make_session_factory(engine)
    engine.dispose()
