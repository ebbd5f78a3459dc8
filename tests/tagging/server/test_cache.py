"""The ML server's cache store: predictions and fixes apart; fixes idempotent, ordered, scoped."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from db.engine import make_engine
from tagging.server.cache import SCHEMA_VERSION, CacheEntry, MLCache, UrlState
from tagging.server.schemas import ImageFix


@pytest.fixture
def cache(cache_url: str) -> Iterator[MLCache]:
    engine = make_engine(cache_url, create=True)
    yield MLCache(engine)
    engine.dispose()


PROBABILITIES = {"Dealer": 0.9, "Stock": 0.0712, "Placeholder": 0.0288}


def make_entry(key: str, image_type: str = "Dealer", color: str | None = "Red") -> CacheEntry:
    return CacheEntry(
        image_key=key,
        url=f"http://cdn.test/{key}.jpg",
        image_type=image_type,
        color=color,
        confidence=0.9,
        probabilities=PROBABILITIES,
        type_source="model",
        color_source="model",
        model_version="type-1",
        color_model_version="color-1",
        etag='"e"',
        last_modified=None,
        content_length=100,
        sha256="ab" * 32,
        phash="0" * 16,
        width=480,
        height=360,
        thumbnail=b"jpeg",
    )


def test_store_then_read_back(cache: MLCache) -> None:
    cache.store([make_entry("a" * 32)], {"http://cdn.test/a.jpg": "a" * 32})
    assert cache.get_many(["a" * 32, "b" * 32]).keys() == {"a" * 32}
    assert cache.keys_for_urls(["http://cdn.test/a.jpg", "http://x/"]) == {
        "http://cdn.test/a.jpg": "a" * 32
    }
    assert cache.thumbnail("a" * 32) == b"jpeg"
    assert cache.count() == 1
    assert cache.get_many(["a" * 32])["a" * 32].probabilities == PROBABILITIES


def at(hour: int) -> datetime:
    return datetime(2026, 12, 1, hour, tzinfo=UTC)


def test_fix_is_applied_once_per_fix_id(cache: MLCache) -> None:
    key = "a" * 32
    cache.store([make_entry(key)], {})
    applied, record = cache.apply_fix(
        key, ImageFix(image_type="Stock", fix_id="f7", fixed_at=at(7))
    )
    assert applied and record.image_type == "Stock" and record.type_source == "fix"
    # A retry of the same push changes nothing, even if the value was changed since.
    cache.apply_fix(key, ImageFix(image_type="Dealer", fix_id="f8", fixed_at=at(8)))
    applied, record = cache.apply_fix(
        key, ImageFix(image_type="Stock", fix_id="f7", fixed_at=at(7))
    )
    assert not applied
    assert record.image_type == "Dealer"
    assert record.applied_fix_ids == ["f7", "f8"]


def test_an_older_fix_arriving_late_does_not_win(cache: MLCache) -> None:
    key = "c" * 32
    cache.store([make_entry(key)], {})
    cache.apply_fix(key, ImageFix(color="Blue", fix_id="b", fixed_at=at(10)))
    applied, record = cache.apply_fix(key, ImageFix(color="Green", fix_id="a", fixed_at=at(9)))
    assert not applied
    assert record.color == "Blue"


def test_the_prediction_is_never_overwritten_and_fixes_survive_reclassification(
    cache: MLCache,
) -> None:
    key = "d" * 32
    cache.store([make_entry(key, "Dealer", "Red")], {})
    cache.apply_fix(key, ImageFix(image_type="Stock", fix_id="f1"))
    stored = cache.store([make_entry(key, "Dealer", "White")], {})
    assert (stored[0].image_type, stored[0].color) == ("Dealer", "White")  # the model's
    record = cache.record(key)
    assert record is not None
    assert (record.image_type, record.color) == ("Stock", "White")  # the fix over the model
    assert (record.ml_image_type, record.ml_color) == ("Dealer", "White")


def test_a_fix_for_an_unseen_key_waits_for_it(cache: MLCache) -> None:
    key = "e" * 32
    applied, record = cache.apply_fix(
        key, ImageFix(image_type="Stock", fix_id="f3", url="http://u")
    )
    assert applied
    assert (record.image_type, record.ml_image_type, record.type_source) == ("Stock", None, "fix")
    cache.store([make_entry(key, "Dealer", "Red")], {})
    record = cache.record(key)
    assert record is not None and (record.image_type, record.ml_image_type) == ("Stock", "Dealer")


def test_clear_color(cache: MLCache) -> None:
    key = "f" * 32
    cache.store([make_entry(key, "Dealer", "Red")], {})
    _, record = cache.apply_fix(
        key, ImageFix(image_type="Placeholder", clear_color=True, fix_id="f4")
    )
    assert (record.image_type, record.color, record.ml_color) == ("Placeholder", None, "Red")


def test_overrides_are_per_advertiser(cache: MLCache) -> None:
    key = "1" * 32
    cache.store([make_entry(key, "Dealer", "Red")], {})
    cache.apply_fix(key, ImageFix(color="Blue", fix_id="team"))
    cache.apply_fix(key, ImageFix(color="Green", fix_id="mine", advertiser="Lakeside"))
    lakeside, metro = cache.record(key, "Lakeside"), cache.record(key, "Metro")
    assert lakeside is not None and (lakeside.color, lakeside.color_source) == ("Green", "override")
    assert metro is not None and (metro.color, metro.color_source) == ("Blue", "fix")
    assert (cache.record(key) or metro).color == "Blue"


def test_an_old_store_is_emptied_under_a_new_generation(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    engine = make_engine(url, create=True)
    with engine.begin() as connection:  # a cache written by the previous version: no meta table
        connection.execute(text("CREATE TABLE cached_images (image_key TEXT PRIMARY KEY)"))
        connection.execute(text("INSERT INTO cached_images VALUES ('x')"))
    cache = MLCache(engine)
    assert cache.count() == 0 and len(cache.generation) == 32
    assert MLCache(engine).generation == cache.generation


def test_a_store_without_the_probabilities_column_gets_it_and_keeps_its_entries(
    cache_url: str,
) -> None:
    engine = make_engine(cache_url, create=True)
    before = MLCache(engine)
    before.store([make_entry("a" * 32)], {"http://cdn.test/a.jpg": "a" * 32})
    before.apply_fix("a" * 32, ImageFix(image_type="Stock", fix_id="f1"))
    with engine.begin() as connection:  # a store of the version before probabilities were kept
        connection.execute(text("ALTER TABLE cached_images DROP COLUMN probabilities"))
    # Several server processes may open the old store at once: one adds the column.
    with ThreadPoolExecutor(4) as pool:
        opened = list(pool.map(lambda _: MLCache(engine), range(4)))
    assert {cache.generation for cache in opened} == {before.generation}  # no fix to push again
    after = opened[0]
    assert "probabilities" in {c["name"] for c in inspect(engine).get_columns("cached_images")}
    old = after.get_many(["a" * 32])["a" * 32]
    assert (old.image_type, old.confidence, old.probabilities) == ("Dealer", 0.9, None)
    assert after.record("a" * 32).applied_fix_ids == ["f1"]  # type: ignore[union-attr]
    after.store([make_entry("b" * 32)], {})
    assert after.get_many(["b" * 32])["b" * 32].probabilities == PROBABILITIES
    engine.dispose()


def test_concurrent_pushes_of_the_same_fix_apply_once(cache: MLCache) -> None:
    key = "9" * 32
    cache.store([make_entry(key)], {})
    with ThreadPoolExecutor(4) as pool:
        outcomes = list(
            pool.map(
                lambda _: cache.apply_fix(key, ImageFix(color="Gold", fix_id="f42"))[0], range(8)
            )
        )
    assert outcomes.count(True) == 1
    assert cache.record(key).applied_fix_ids == ["f42"]  # type: ignore[union-attr]


def test_url_states_keep_the_freshness_and_validators_of_the_last_answer(cache: MLCache) -> None:
    fetched = datetime(2026, 12, 1, 9, tzinfo=UTC)
    state = UrlState(
        image_key="a" * 32,
        fetched_at=fetched,
        max_age=3600,
        fresh_until=fetched + timedelta(hours=1),
        etag='"v1"',
        last_modified="Mon, 01 Jan 2024 00:00:00 GMT",
    )
    cache.store([make_entry("a" * 32)], {"http://cdn.test/a.jpg": state})
    cache.touch_urls({"http://cdn.test/b.jpg": "b" * 32})  # a bare key: nothing known of it
    states = cache.url_states(["http://cdn.test/a.jpg", "http://cdn.test/b.jpg", "http://x/"])
    got = states["http://cdn.test/a.jpg"]
    assert (got.image_key, got.max_age, got.etag, got.last_modified) == (
        "a" * 32,
        3600,
        '"v1"',
        "Mon, 01 Jan 2024 00:00:00 GMT",
    )
    assert got.is_fresh(fetched + timedelta(minutes=59))
    assert not got.is_fresh(fetched + timedelta(minutes=61))
    bare = states["http://cdn.test/b.jpg"]
    assert (bare.image_key, bare.fresh_until, bare.etag) == ("b" * 32, None, None)
    assert not bare.is_fresh(fetched)
    assert "http://x/" not in states

    # A new answer (a 304 renewing it, say) replaces every field.
    renewed = UrlState("a" * 32, fetched_at=fetched, max_age=None, fresh_until=None, etag='"v1"')
    cache.touch_urls({"http://cdn.test/a.jpg": renewed})
    again = cache.url_states(["http://cdn.test/a.jpg"])["http://cdn.test/a.jpg"]
    assert (again.max_age, again.fresh_until, again.last_modified) == (None, None, None)


def test_a_store_without_the_freshness_columns_gets_them_and_keeps_its_urls(
    cache_url: str,
) -> None:
    engine = make_engine(cache_url, create=True)
    before = MLCache(engine)
    before.store([make_entry("a" * 32)], {"http://cdn.test/a.jpg": "a" * 32})
    with engine.begin() as connection:  # a store of the version before HTTP caching
        for column in ("fetched_at", "max_age", "fresh_until", "etag", "last_modified"):
            connection.execute(text(f"ALTER TABLE url_versions DROP COLUMN {column}"))
    after = MLCache(engine)
    assert after.generation == before.generation
    state = after.url_states(["http://cdn.test/a.jpg"])["http://cdn.test/a.jpg"]
    assert (state.image_key, state.fresh_until, state.etag) == ("a" * 32, None, None)
    engine.dispose()


def test_opening_a_store_waits_for_its_lock(cache_url: str) -> None:
    """Every opener takes the store's lock (not only ``serve``): while another holds it, opening
    waits, and it goes ahead once the lock is released."""
    import threading

    from tagging.server.cache import store_lock

    holder = make_engine(cache_url, create=True)
    opener = make_engine(cache_url, create=True)
    opened = threading.Event()
    generations: list[str] = []

    def open_store() -> None:
        generations.append(MLCache(opener).generation)
        opened.set()

    try:
        with store_lock(holder):
            thread = threading.Thread(target=open_store)
            thread.start()
            assert not opened.wait(0.5), "the store was opened while another held its lock"
        assert opened.wait(30)
        thread.join()
        assert len(generations[0]) == 32
        assert MLCache(holder).generation == generations[0]
    finally:
        holder.dispose()
        opener.dispose()


def test_many_openers_of_an_old_store_rebuild_it_once(cache_url: str) -> None:
    """Openers racing on a store of another schema version: one rebuilds it, all of them then
    read the same generation, which is the one stored."""
    engine = make_engine(cache_url, create=True)
    with engine.begin() as connection:  # written by another version: its meta says so
        connection.execute(text("CREATE TABLE cache_meta (key TEXT PRIMARY KEY, value TEXT)"))
        connection.execute(text("INSERT INTO cache_meta VALUES ('schema', '0')"))
    engines = [make_engine(cache_url) for _ in range(4)]
    try:
        with ThreadPoolExecutor(len(engines)) as pool:
            generations = list(pool.map(lambda e: MLCache(e).generation, engines))
        assert len(set(generations)) == 1
        with engine.connect() as connection:
            stored = connection.scalar(
                text("SELECT value FROM cache_meta WHERE key = 'generation'")
            )
            schema = connection.scalar(text("SELECT value FROM cache_meta WHERE key = 'schema'"))
        assert stored == generations[0] and schema == SCHEMA_VERSION
    finally:
        for other in engines:
            other.dispose()
        engine.dispose()
