"""The engine and migrations, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, func, insert, inspect, select, text
from sqlalchemy.orm import Session, sessionmaker

from db.engine import alembic_config, make_engine, make_session_factory, migrate, upsert
from db.models import Advertiser, Base, Image, Scrape, ScrapeClassCount, SitemapItem


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


def test_migration_0008_adds_the_confidence_to_stored_items_and_keeps_the_triggers(
    database_url: str,
) -> None:
    """Down to 0007 and up again with items stored: they stay, without a confidence, and the
    chart triggers of 0004 keep counting (the columns are added and dropped without a table copy).
    """
    engine = make_engine(database_url)
    sessions = make_session_factory(engine)

    def columns() -> set[str]:
        return {c["name"] for c in inspect(engine).get_columns("sitemap_items")}

    def add_item(session: Session, scrape_id: int, position: int, **values: object) -> None:
        row = {
            "scrape_id": scrape_id,
            "advertiser_id": advertiser_id,
            "position": position,
            "page_url": "https://dealer.example/v/1",
            "image_url": f"https://cdn.example/{position}.jpg",
            "ml_image_type": "Dealer",
            "image_type": "Dealer",
        }
        session.execute(insert(SitemapItem), [{**row, **values}])

    def counted(scrape_id: int) -> int:
        with sessions() as session:
            query = select(func.sum(ScrapeClassCount.items)).where(
                ScrapeClassCount.scrape_id == scrape_id, ScrapeClassCount.model == "image_type"
            )
            return int(session.scalar(query) or 0)

    command.downgrade(alembic_config(database_url), "0007")
    try:
        assert not {"ml_confidence", "ml_probabilities"} & columns()
        with sessions.begin() as session:
            advertiser = Advertiser(name="a", sitemap_url="http://a/")
            session.add(advertiser)
            session.flush()
            advertiser_id = advertiser.id
            # Core, naming the columns: the model has columns of later migrations (0009).
            scrape_id = session.execute(
                insert(Scrape).values(advertiser_id=advertiser_id).returning(Scrape.id)
            ).scalar_one()
            add_item(session, scrape_id, 0)  # the 0007 columns only
        assert counted(scrape_id) == 1

        migrate(database_url)
        assert {"ml_confidence", "ml_probabilities"} <= columns()
        indexes = {
            i["name"]: i["column_names"] for i in inspect(engine).get_indexes("sitemap_items")
        }
        assert indexes["ix_sitemap_items_scrape_confidence"] == [
            "scrape_id",
            "ml_confidence",
            "position",
        ]
        probabilities = {"Dealer": 0.7, "Stock": 0.2, "Placeholder": 0.1}
        with sessions.begin() as session:
            add_item(session, scrape_id, 1, ml_confidence=0.7, ml_probabilities=probabilities)
        with sessions() as session:
            stored = session.execute(
                select(SitemapItem.ml_confidence, SitemapItem.ml_probabilities)
                .where(SitemapItem.scrape_id == scrape_id)
                .order_by(SitemapItem.position)
            ).all()
        assert [tuple(row) for row in stored] == [(None, None), (0.7, probabilities)]
        assert counted(scrape_id) == 2
    finally:
        migrate(database_url)  # the PostgreSQL database is shared by the session's tests
        engine.dispose()


def test_migration_0009_adds_freshness_and_sitemap_state_keeping_rows(database_url: str) -> None:
    """Down to 0008 and up again with an image and a scrape stored: they stay, with NULL
    freshness (stale: checked again) and no sitemap state (the next scrape reads it in full)."""
    engine = make_engine(database_url)
    sessions = make_session_factory(engine)

    def columns(table: str) -> set[str]:
        return {c["name"] for c in inspect(engine).get_columns(table)}

    command.downgrade(alembic_config(database_url), "0008")
    try:
        assert "fresh_until" not in columns("images")
        assert "sitemap_state" not in columns("scrapes")
        with sessions.begin() as session:
            advertiser_id = session.execute(
                insert(Advertiser)
                .values(name="a", sitemap_url="http://a/")
                .returning(Advertiser.id)
            ).scalar_one()
            session.execute(insert(Scrape).values(advertiser_id=advertiser_id))
            session.execute(insert(Image).values(image_key="k", url="http://a/1.jpg"))
        migrate(database_url)
        assert "fresh_until" in columns("images") and "sitemap_state" in columns("scrapes")
        indexes = {i["name"]: i["column_names"] for i in inspect(engine).get_indexes("images")}
        assert indexes["ix_images_url"] == ["url"]
        with sessions() as session:
            assert session.scalar(select(Image.fresh_until)) is None
            assert session.scalar(select(Scrape.sitemap_state)) is None
    finally:
        migrate(database_url)  # the PostgreSQL database is shared by the session's tests
        engine.dispose()


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
