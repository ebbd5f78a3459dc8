"""Labels you can trust, end to end over real HTTP on loopback (demo CDN → scrape → ML server →
app database, and the advertisers' fix API):

* an advertiser's override of a shared image leaves the other advertiser's next scrape unchanged;
* a lost ML cache undoes no fix: the next scrape still shows every fix, with no manual step, and
  the worker's round fills the new cache again;
* when the CDN re-publishes an image, its fix is carried over automatically, with a history row.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.accounts import create_advertiser_token
from db.advertisers import get_advertiser
from db.engine import make_engine, make_session_factory
from db.fixes import FixChange
from db.models import FixSource, LabelSource, ManualFix, SitemapItem, SyncStatus
from db.scrapes import latest_scrape, scrape_items
from tagging.api.app import create_advertiser_api
from tagging.demo.generate import DemoInventory
from tagging.demo.setup import register_demo_advertisers
from tagging.fixes import push_all, save_fixes, sync_fixes
from tagging.ingest.fetch import client_from_settings
from tagging.ingest.scrape import ScrapeConfig, ScrapeSummary, run_scrape
from tagging.server.client import MLClient
from tagging.testing import UvicornThread
from tests.utils.factories import actor

LAKESIDE, METRO = "Lakeside Auto", "Metro Car Center"


@pytest.fixture
def settings(app_settings: object, database_url: str) -> object:
    """The app's settings on SQLite, then on PostgreSQL (the production database)."""
    return replace(app_settings, database_url=database_url)  # type: ignore[type-var]


@pytest.fixture
def sessions(settings: object, demo_dir: Path, cdn: object) -> Iterator[sessionmaker[Session]]:
    register_demo_advertisers(settings, DemoInventory.load(demo_dir), cdn.url)  # type: ignore[arg-type, attr-defined]
    engine = make_engine(settings.database_url)  # type: ignore[attr-defined]
    yield make_session_factory(engine)
    engine.dispose()


def scrape(settings: object, sessions: sessionmaker[Session], name: str) -> ScrapeSummary:
    client = client_from_settings(settings)  # type: ignore[arg-type]
    ml = MLClient.from_settings(settings)  # type: ignore[arg-type]
    try:
        return run_scrape(sessions, name, ml=ml, client=client, config=ScrapeConfig())
    finally:
        client.close()
        ml.client.close()


def latest_items(sessions: sessionmaker[Session], name: str) -> list[SitemapItem]:
    with sessions() as session:
        advertiser = get_advertiser(session, name)
        scrape_row = latest_scrape(session, advertiser.id)
        assert scrape_row is not None
        return scrape_items(session, scrape_row.id)


def other_type(value: str) -> str:
    return "Stock" if value != "Stock" else "Dealer"


def test_an_advertisers_override_leaves_the_others_scrape_unchanged(
    settings: object, sessions: sessionmaker[Session]
) -> None:
    scrape(settings, sessions, LAKESIDE)
    scrape(settings, sessions, METRO)
    metro_before = {i.image_url: i for i in latest_items(sessions, METRO) if i.image_key}
    shared = next(
        i
        for i in latest_items(sessions, LAKESIDE)
        if i.image_url in metro_before and i.status == "ok"
    )
    chosen = other_type(shared.image_type)
    with sessions.begin() as session:
        lakeside_id = get_advertiser(session, LAKESIDE).id
        token = create_advertiser_token(session, None, lakeside_id, "test", system=True)

    api_app = create_advertiser_api(settings)  # type: ignore[arg-type]
    with UvicornThread(api_app) as api:
        response = httpx.post(
            f"{api.url}/v1/fixes",
            json={
                "fixes": [{"image_url": shared.image_url, "field": "image_type", "value": chosen}]
            },
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
    assert response.status_code == 200, response.text
    assert response.json()["sync"] == "synced"

    scrape(settings, sessions, METRO)
    scrape(settings, sessions, LAKESIDE)
    metro_after = {i.image_url: i for i in latest_items(sessions, METRO) if i.image_key}
    for url, before in metro_before.items():  # not one of Metro's values moved
        after = metro_after[url]
        assert (after.image_type, after.color, after.ml_image_type) == (
            before.image_type,
            before.color,
            before.ml_image_type,
        ), url
    assert metro_after[shared.image_url].image_type_source == LabelSource.ML
    lakeside = {i.image_url: i for i in latest_items(sessions, LAKESIDE)}[shared.image_url]
    assert (lakeside.image_type, lakeside.image_type_source) == (chosen, LabelSource.OVERRIDE)
    assert lakeside.ml_image_type == shared.ml_image_type  # the prediction stays the model's
    with sessions() as session:
        history = list(session.scalars(select(ManualFix)))
    assert [(f.source, f.scope) for f in history] == [(FixSource.ADVERTISER, "advertiser")]


def test_a_lost_ml_cache_undoes_no_fix(
    settings: object,
    sessions: sessionmaker[Session],
    tmp_path: Path,
    cdn: object,
    classifier: object,
) -> None:
    from tagging.ml.color import EmbeddedColorModel
    from tagging.server.app import create_app
    from tests.utils.servers import cdn_host, ml_settings

    # Images stale at once: the re-scrape of the unchanged sitemap then asks the new ML server
    # about every image instead of copying the items of fresh ones.
    cdn.image_max_age = 0  # type: ignore[attr-defined]
    scrape(settings, sessions, METRO)
    items = [i for i in latest_items(sessions, METRO) if i.status == "ok"][:5]
    changes = [FixChange(i.id, "image_type", other_type(i.image_type)) for i in items]
    ml = MLClient.from_settings(settings)  # type: ignore[arg-type]
    saved = save_fixes(sessions, ml, actor(), changes)
    assert saved.push_error is None and len(saved.fix_ids) >= len(items)
    assert sync_fixes(sessions, ml).pending == 0  # the generation is remembered
    ml.client.close()

    # The ML server comes back on an empty cache store: a new generation.
    fresh = ml_settings(tmp_path, f"sqlite:///{tmp_path / 'new_cache.sqlite'}", cdn_host(cdn))
    app = create_app(fresh, classifier=classifier, color_model=EmbeddedColorModel())  # type: ignore[arg-type]
    with UvicornThread(app) as server:
        settings = replace(settings, ml_url=server.url)  # type: ignore[type-var]
        summary = scrape(settings, sessions, METRO)
        assert summary.cached == 0  # the cache really forgot everything
        after = {i.id: i for i in latest_items(sessions, METRO)}
        for item, change in zip(items, changes, strict=True):
            now = next(a for a in after.values() if a.image_url == item.image_url)
            assert (now.image_type, now.image_type_source) == (change.new_value, LabelSource.FIX)
            assert now.ml_image_type == item.ml_image_type

        new_ml = MLClient.from_settings(settings)
        try:
            record = new_ml.get_image(items[0].image_key or "")
            assert record is not None and record.type_source == "model"  # before the round
            report = sync_fixes(sessions, new_ml)  # the worker's round sees a new generation
            assert report.error is None and report.synced >= len(items)
            for item, change in zip(items, changes, strict=True):
                record = new_ml.get_image(item.image_key or "")
                assert record is not None
                assert (record.image_type, record.type_source) == (change.new_value, "fix")
            assert push_all(sessions, new_ml).synced >= len(items)  # `sync --all`: idempotent
        finally:
            new_ml.client.close()


def test_a_republished_image_keeps_its_fix_with_a_history_row(
    settings: object, sessions: sessionmaker[Session], cdn: object
) -> None:
    scrape(settings, sessions, METRO)
    item = next(i for i in latest_items(sessions, METRO) if i.status == "ok")
    fixed = other_type(item.image_type)
    ml = MLClient.from_settings(settings)  # type: ignore[arg-type]
    try:
        saved = save_fixes(sessions, ml, actor(), [FixChange(item.id, "image_type", fixed)])
    finally:
        ml.client.close()
    assert saved.push_error is None

    cdn.state.republish(1.0, seed=3)  # type: ignore[attr-defined]  # every image: new URL + headers
    summary = scrape(settings, sessions, METRO)
    assert summary.carried >= 1
    moved = [
        i
        for i in latest_items(sessions, METRO)
        if i.status == "ok" and i.ml_image_type == item.ml_image_type and i.image_key
    ]
    with sessions() as session:
        carried = session.scalars(
            select(ManualFix).where(ManualFix.source == FixSource.CARRY_OVER)
        ).all()
        (row,) = [c for c in carried if c.field == "image_type" and c.new_value == fixed]
        assert row.image_key != item.image_key
        assert row.sync_status == SyncStatus.SYNCED  # pushed at once
        new_item = session.scalar(
            select(SitemapItem)
            .where(SitemapItem.scrape_id == moved[0].scrape_id)
            .where(SitemapItem.image_key == row.image_key)
        )
        assert new_item is not None
        assert (new_item.image_type, new_item.image_type_source) == (fixed, LabelSource.FIX)
    # The next scrape matches the new key directly: nothing is carried twice.
    assert scrape(settings, sessions, METRO).carried == 0
