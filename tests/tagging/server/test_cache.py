"""The ML server's cache store: fixes are idempotent, ordered, and survive re-classification."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from db.engine import make_engine
from tagging.server.cache import CacheEntry, MLCache
from tagging.server.schemas import ImageFix


@pytest.fixture
def cache(cache_url: str) -> Iterator[MLCache]:
    engine = make_engine(cache_url)
    yield MLCache(engine)
    engine.dispose()


def make_entry(key: str, image_type: str = "Dealer", color: str | None = "Red") -> CacheEntry:
    return CacheEntry(
        image_key=key,
        url=f"http://cdn.test/{key}.jpg",
        image_type=image_type,
        color=color,
        confidence=0.9,
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


def test_fix_is_applied_once_per_fix_id(cache: MLCache) -> None:
    key = "a" * 32
    cache.store([make_entry(key)], {})
    applied, record = cache.apply_fix(key, ImageFix(image_type="Stock", fix_id=7))
    assert applied and record.image_type == "Stock" and record.type_source == "manual"
    # A retry of the same push changes nothing, even if the value was changed since.
    cache.apply_fix(key, ImageFix(image_type="Placeholder", fix_id=8))
    applied, record = cache.apply_fix(key, ImageFix(image_type="Stock", fix_id=7))
    assert not applied
    assert record.image_type == "Placeholder"
    assert record.applied_fix_ids == [7, 8]


def test_an_older_fix_arriving_late_does_not_win(cache: MLCache) -> None:
    key = "c" * 32
    cache.store([make_entry(key)], {})
    cache.apply_fix(key, ImageFix(color="Blue", fix_id=20))
    applied, record = cache.apply_fix(key, ImageFix(color="Green", fix_id=19))
    assert not applied
    assert record.color == "Blue"


def test_manual_values_survive_reclassification_of_the_same_key(cache: MLCache) -> None:
    key = "d" * 32
    cache.store([make_entry(key, "Dealer", "Red")], {})
    cache.apply_fix(key, ImageFix(image_type="Stock", fix_id=1))
    stored = cache.store([make_entry(key, "Dealer", "White")], {})
    assert stored[0].image_type == "Stock"  # the fix
    assert stored[0].color == "White"  # the model's, never fixed
    record = cache.record(key)
    assert record is not None and (record.image_type, record.color) == ("Stock", "White")


def test_fix_for_an_unseen_key_creates_a_row(cache: MLCache) -> None:
    key = "e" * 32
    applied, record = cache.apply_fix(key, ImageFix(image_type="Stock", fix_id=3, url="http://u"))
    assert applied
    assert (record.image_type, record.url, record.type_source) == ("Stock", "http://u", "manual")


def test_clear_color(cache: MLCache) -> None:
    key = "f" * 32
    cache.store([make_entry(key, "Dealer", "Red")], {})
    _, record = cache.apply_fix(key, ImageFix(image_type="Placeholder", clear_color=True, fix_id=4))
    assert (record.image_type, record.color) == ("Placeholder", None)


def test_concurrent_pushes_of_the_same_fix_apply_once(cache: MLCache) -> None:
    key = "9" * 32
    cache.store([make_entry(key)], {})
    with ThreadPoolExecutor(4) as pool:
        outcomes = list(
            pool.map(lambda _: cache.apply_fix(key, ImageFix(color="Gold", fix_id=42))[0], range(8))
        )
    assert outcomes.count(True) == 1
    assert cache.record(key).applied_fix_ids == [42]  # type: ignore[union-attr]
