"""The engine and migrations, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, func, inspect, select, text
from sqlalchemy.orm import Session, sessionmaker

from db.engine import make_engine, make_session_factory, migrate, upsert
from db.models import Advertiser, Base, Image


def test_migrations_match_the_models(engine: Engine) -> None:
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == [], f"the models and the migrations differ: {diff}"
    assert {"advertisers", "scrapes", "sitemap_items", "images", "manual_fixes"} <= set(
        inspect(engine).get_table_names()
    )


def test_migrate_twice_is_a_no_op(database_url: str) -> None:
    migrate(database_url)
    engine = make_engine(database_url)
    with engine.connect() as connection:
        versions = connection.execute(text("SELECT version_num FROM alembic_version")).all()
    engine.dispose()
    assert len(versions) == 1


def test_upsert_inserts_then_updates_only_named_columns(sessions: sessionmaker[Session]) -> None:
    row = {"image_key": "k1", "url": "http://a/1.jpg", "sha256": "aa", "width": 10}
    with sessions.begin() as session:
        assert upsert(session, Image.__table__, [row], key=["image_key"], update=["width"]) == 1
    with sessions.begin() as session:
        changed = {**row, "sha256": "bb", "width": 20}
        upsert(session, Image.__table__, [changed], key=["image_key"], update=["width"])
    with sessions() as session:
        image = session.get(Image, "k1")
        assert image is not None
        assert (image.width, image.sha256) == (20, "aa")


def test_upsert_with_no_update_keeps_the_existing_row(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        upsert(
            session,
            Image.__table__,
            [{"image_key": "k", "url": "u1"}],
            key=["image_key"],
            update=[],
        )
    with sessions.begin() as session:
        inserted = upsert(
            session,
            Image.__table__,
            [{"image_key": "k", "url": "u2"}],
            key=["image_key"],
            update=[],
        )
    assert inserted == 0
    with sessions() as session:
        assert session.get(Image, "k").url == "u1"  # type: ignore[union-attr]


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.sqlite'}", create=True)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()


def test_concurrent_read_then_write_transactions_do_not_deadlock(
    sessions: sessionmaker[Session],
) -> None:
    """Each thread reads a counter and writes it back: a lock upgrade race on plain SQLite."""
    with sessions.begin() as session:
        session.add(Advertiser(name="counter", sitemap_url="http://x/0"))
    errors: list[BaseException] = []

    def bump() -> None:
        try:
            for _ in range(10):
                with sessions.begin() as session:
                    advertiser = session.scalar(
                        select(Advertiser).where(Advertiser.name == "counter").with_for_update()
                    )
                    assert advertiser is not None
                    number = int(advertiser.sitemap_url.rsplit("/", 1)[1])
                    advertiser.sitemap_url = f"http://x/{number + 1}"
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with sessions() as session:
        advertiser = session.scalar(select(Advertiser).where(Advertiser.name == "counter"))
        assert advertiser is not None
        assert advertiser.sitemap_url == "http://x/40"
        assert session.scalar(select(func.count()).select_from(Advertiser)) == 1


@pytest.mark.parametrize("url", ["sqlite:///:memory:"])
def test_session_factory_does_not_expire_on_commit(url: str) -> None:
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    factory = make_session_factory(engine)
    with factory.begin() as session:
        advertiser = Advertiser(name="a", sitemap_url="http://a/")
        session.add(advertiser)
    assert advertiser.name == "a"  # readable after the transaction closed
    engine.dispose()


def test_a_missing_sqlite_file_is_an_error_unless_created(tmp_path: Path) -> None:
    from db.errors import NotFoundError

    typo = tmp_path / "tagdsk.sqlite"
    with pytest.raises(NotFoundError, match=r"no database at .*python -m tagging migrate"):
        make_engine(f"sqlite:///{typo}")
    with pytest.raises(NotFoundError, match="no database at"):
        migrate(f"sqlite:///{typo}", create=False)
    assert not typo.exists()


def test_sqlite_files_are_created_private(tmp_path: Path) -> None:
    import os
    import stat

    old = os.umask(0o022)
    try:
        path = tmp_path / "nested" / "app.sqlite"
        migrate(f"sqlite:///{path}")  # migrate creates it
        engine = make_engine(f"sqlite:///{path}")
        with engine.begin() as connection:  # a write: the -wal and -shm files exist now
            connection.execute(text("CREATE TABLE t (x INTEGER)"))
            for suffix in ("", "-wal", "-shm"):
                mode = stat.S_IMODE(Path(f"{path}{suffix}").stat().st_mode)
                assert mode == 0o600, (suffix, oct(mode))
        engine.dispose()
        cache = tmp_path / "ml_cache.sqlite"  # the ML server's store: make_engine(create=True)
        make_engine(f"sqlite:///{cache}", create=True).dispose()
        assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    finally:
        os.umask(old)
