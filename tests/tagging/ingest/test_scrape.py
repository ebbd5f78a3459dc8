"""Scrapes end to end over real HTTP on loopback: demo CDN → scrape → ML server → database.

And :func:`after_scrape` (carry fixes over, refresh the findings) on crafted scrapes, on SQLite
and PostgreSQL.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Collection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db.advertisers import add_advertiser
from db.findings import list_findings, set_auto_carry
from db.fixes import FixChange
from db.models import (
    Advertiser,
    FixSource,
    Image,
    ItemStatus,
    ManualFix,
    Role,
    Scrape,
    SitemapItem,
    SyncStatus,
    Thumbnail,
)
from db.scrapes import scrape_items
from tagging.demo.generate import DemoInventory
from tagging.errors import PermissionDenied
from tagging.fixes import save_fixes
from tagging.ingest.fetch import client_from_settings
from tagging.ingest.scrape import (
    ScrapeConfig,
    ScrapeSummary,
    after_scrape,
    run_scrape,
    run_scrapes,
)
from tagging.server.client import MLClient
from tagging.server.schemas import ClassifyRequest, ClassifyResponse
from tests.utils.factories import actor
from tests.utils.servers import ML_TOKEN
from tests.utils.world import World, photos, republished

ANALYST = actor(Role.ANALYST, "ana")
MANAGER = actor(Role.MANAGER, "max")
LEGACY = {"type": "Placeholder", "color": "N/A"}


def scrape(
    settings: object, sessions: sessionmaker[Session], name: str, **config: object
) -> ScrapeSummary:
    client = client_from_settings(settings)  # type: ignore[arg-type]
    ml = MLClient.from_settings(settings)  # type: ignore[arg-type]
    ml.timeout = float(config.pop("timeout", 60.0))  # type: ignore[arg-type]
    try:
        return run_scrape(sessions, name, ml=ml, client=client, config=ScrapeConfig(**config))  # type: ignore[arg-type]
    finally:
        client.close()
        ml.client.close()


def test_scrape_stores_every_item_then_rescrape_is_all_cache_hits(
    app_settings: object, app_sessions: sessionmaker[Session], demo_dir: Path
) -> None:
    inventory = DemoInventory.load(demo_dir)
    harbor = inventory.advertiser("harbor-autos")
    first = scrape(app_settings, app_sessions, harbor.name, batch_size=16)
    listed = sum(len(v.images) for v in harbor.vehicles)
    assert first.items == listed
    broken = {p for p in harbor.image_paths() if inventory.images[p].kind == "broken"}
    assert broken, "the demo gives Harbor Autos broken files"
    assert first.failed >= len(broken)
    assert first.classified + first.cached + first.failed == first.items
    assert first.status == "completed_with_errors"

    with app_sessions() as session:
        items = scrape_items(session, first.scrape_id)
        assert len(items) == listed
        assert [i.position for i in items] == sorted(i.position for i in items)
        for item in items:
            path = item.image_url.split("://", 1)[1].split("/", 1)[1]
            if "/" + path in broken:
                assert item.status == ItemStatus.ERROR and item.error
                assert (item.image_type, item.color) == ("Placeholder", None)  # the seed's defaults
                assert (item.ml_confidence, item.ml_probabilities) == (None, None)  # no model's
            else:
                assert item.status == ItemStatus.OK, item.error
                assert item.image_key and item.model_version
                # The model's probability of its answer, and of every class.
                assert item.ml_probabilities is not None
                assert set(item.ml_probabilities) == {"Dealer", "Stock", "Placeholder"}
                assert item.ml_probabilities[item.ml_image_type] == item.ml_confidence
        keys = {i.image_key for i in items if i.image_key and i.status == ItemStatus.OK}
        assert session.scalar(
            select(func.count()).select_from(Image).where(Image.image_key.in_(keys))
        ) == len(keys)
        assert session.scalar(select(func.count()).select_from(Thumbnail)) == len(keys)

    second = scrape(app_settings, app_sessions, harbor.name, batch_size=16)
    assert second.classified == 0, "an unchanged sitemap must be all cache hits"
    assert second.cached == first.classified + first.cached
    assert second.failed == first.failed  # broken files are tried again, and fail again
    with app_sessions() as session:
        before = {
            (i.image_url, i.image_key, i.image_type, i.color)
            for i in scrape_items(session, first.scrape_id)
        }
        after = {
            (i.image_url, i.image_key, i.image_type, i.color)
            for i in scrape_items(session, second.scrape_id)
        }
        cold, cached = (
            {
                i.image_url: (i.ml_confidence, i.ml_probabilities)
                for i in scrape_items(session, scrape_id)
            }
            for scrape_id in (first.scrape_id, second.scrape_id)
        )
    assert before == after
    assert cached == cold  # the cache's answers carry the probabilities too


def test_color_from_feed_is_not_replaced_by_the_ml_color(
    app_settings: object, app_sessions: sessionmaker[Session], demo_dir: Path
) -> None:
    inventory = DemoInventory.load(demo_dir)
    valley = next(a for a in inventory.advertisers if a.color_from_feed)
    summary = scrape(app_settings, app_sessions, valley.name)
    with app_sessions() as session:
        items = scrape_items(session, summary.scrape_id)
    assert items and all(i.ml_color is None for i in items)  # the color model was not asked
    feed = {v.page_path: v.feed_color for v in valley.vehicles}
    for item in items:
        expected = feed["/" + item.page_url.split("://", 1)[1].split("/", 1)[1]]
        if item.status == ItemStatus.OK:
            assert item.color == expected and item.feed_color == expected


def test_ml_server_down_marks_ml_failures_and_a_rerun_fixes_them(
    app_settings: object, app_sessions: sessionmaker[Session], demo_dir: Path
) -> None:
    from dataclasses import replace

    inventory = DemoInventory.load(demo_dir)
    name = inventory.advertisers[0].name
    down = replace(app_settings, ml_url="http://127.0.0.1:9")  # type: ignore[type-var]
    started = time.perf_counter()
    failed = scrape(down, app_sessions, name, batch_size=8, max_consecutive_ml_failures=2)
    assert time.perf_counter() - started < 20, "a down server must fail fast, not per item"
    assert failed.ml_failures == failed.items > 0
    assert failed.status == "completed_with_errors"
    assert any("relaunch" in p for p in failed.problems)
    with app_sessions() as session:
        items = scrape_items(session, failed.scrape_id)
    assert {(i.status, i.image_type, i.color, i.ml_confidence) for i in items} == {
        (ItemStatus.ML_FAILURE, "Placeholder", None, None)
    }
    assert all(i.ml_probabilities is None for i in items)

    fixed = scrape(app_settings, app_sessions, name)
    assert fixed.ml_failures == 0
    assert fixed.classified > 0
    with app_sessions() as session:  # the failed scrape is kept as it was: nothing is lost
        assert len(scrape_items(session, failed.scrape_id)) == failed.items


class _MisbehavingML(BaseHTTPRequestHandler):
    """An ML server gone wrong: answers garbage, or nothing in time."""

    mode = "garbage"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.mode == "slow":
            time.sleep(3)
        body = b"<html>502 Bad Gateway</html>" if self.mode == "garbage" else b'{"results": []}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("mode", ["garbage", pytest.param("slow", marks=pytest.mark.slow)])
def test_misbehaving_ml_server_gives_ml_failures(
    mode: str, app_settings: object, app_sessions: sessionmaker[Session], demo_dir: Path
) -> None:
    from dataclasses import replace

    handler = type("Handler", (_MisbehavingML,), {"mode": mode})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings = replace(app_settings, ml_url=f"http://127.0.0.1:{server.server_address[1]}")  # type: ignore[type-var]
        name = DemoInventory.load(demo_dir).advertisers[0].name
        summary = scrape(
            settings, app_sessions, name, batch_size=8, timeout=1.0, max_consecutive_ml_failures=2
        )
    finally:
        server.shutdown()
    assert summary.ml_failures == summary.items > 0
    with app_sessions() as session:
        items = scrape_items(session, summary.scrape_id)
    errors = {i.error for i in items}
    expected = "timed out" if mode == "slow" else "not a valid"
    assert any(expected in (e or "") for e in errors), errors


def test_republished_images_get_new_keys_and_are_classified_again(
    app_settings: object, app_sessions: sessionmaker[Session], demo_dir: Path, cdn: object
) -> None:
    name = DemoInventory.load(demo_dir).advertiser("sunrise-motors").name
    first = scrape(app_settings, app_sessions, name)
    moved = cdn.state.republish(0.3, seed=1)  # type: ignore[attr-defined]
    assert moved
    second = scrape(app_settings, app_sessions, name)
    assert second.failed == first.failed
    assert 0 < second.classified <= len(moved) + first.failed
    with app_sessions() as session:
        old = {i.image_key for i in scrape_items(session, first.scrape_id)}
        new = {i.image_key for i in scrape_items(session, second.scrape_id)}
        assert new - old, "republished images come back under new image_keys"
        # Same bytes under the new key: the content hash recognises them.
        moved_keys = new - old
        shas = session.scalars(select(Image.sha256).where(Image.image_key.in_(moved_keys))).all()
        old_shas = set(session.scalars(select(Image.sha256).where(Image.image_key.in_(old))).all())
    assert set(shas) <= old_shas


# --- re-scraping an unchanged sitemap ----------------------------------------------------------


class CountingML(MLClient):
    """The ML client, counting calls and keeping the answers; it sends ``known_keys`` (the keys
    the app has thumbnails for) as :class:`ClassifyRequest` allows, through the public guarded
    client, whatever this client's version does with it."""

    def __init__(self, settings: object) -> None:
        client = client_from_settings(settings, extra_allowed=[settings.ml_host_entry()])  # type: ignore[arg-type, attr-defined]
        super().__init__(settings.ml_url, settings.ml_token, client)  # type: ignore[attr-defined]
        self.answers: list[ClassifyResponse] = []

    def classify(
        self,
        urls: list[str],
        *,
        color: bool = True,
        thumbnails: bool = True,
        advertiser: str | None = None,
        known_keys: Collection[str] = (),
    ) -> ClassifyResponse:
        request = ClassifyRequest(
            urls=urls,
            color=color,
            thumbnails=thumbnails,
            advertiser=advertiser,
            known_keys=list(known_keys),
        )
        answer = ClassifyResponse.model_validate_json(
            self.client.request_json(
                "POST",
                f"{self.base_url}/classify",
                json=request.model_dump(),
                headers={"Authorization": f"Bearer {self.token}"},
                timeout=60,
            ).body
        )
        self.answers.append(answer)
        return answer


def counted_scrape(
    settings: object, sessions: sessionmaker[Session], name: str
) -> tuple[ScrapeSummary, CountingML]:
    client = client_from_settings(settings)  # type: ignore[arg-type]
    ml = CountingML(settings)
    try:
        return run_scrape(sessions, name, ml=ml, client=client), ml
    finally:
        client.close()
        ml.client.close()


def items_by_url(sessions: sessionmaker[Session], scrape_id: int) -> dict[str, SitemapItem]:
    with sessions() as session:
        return {i.image_url: i for i in scrape_items(session, scrape_id)}


def test_an_unchanged_sitemap_copies_the_items_of_fresh_images_without_a_request(
    app_settings: object, app_sessions: sessionmaker[Session], demo_dir: Path, cdn: object
) -> None:
    name = DemoInventory.load(demo_dir).advertiser("sunrise-motors").name
    first, _ = counted_scrape(app_settings, app_sessions, name)
    assert not first.sitemap_unchanged and first.failed == 0 and first.copied == 0
    images = cdn.requests_for("image")  # type: ignore[attr-defined]
    sitemaps = dict(cdn.requests)  # type: ignore[attr-defined]

    second, ml = counted_scrape(app_settings, app_sessions, name)
    assert second.sitemap_unchanged and second.status == "succeeded"
    assert second.copied == second.items == second.cached == first.items
    assert ml.answers == [], "fresh images: the ML server is not even asked"
    assert cdn.requests_for("image") == images  # type: ignore[attr-defined]
    new = {k: n - sitemaps.get(k, 0) for k, n in cdn.requests.items()}  # type: ignore[attr-defined]
    assert {k: n for k, n in new.items() if n} == {("GET", "sitemap", 304): 1}

    before, after = (items_by_url(app_sessions, s.scrape_id) for s in (first, second))
    assert before.keys() == after.keys()
    for url, item in after.items():
        old = before[url]
        assert item.id != old.id and item.scrape_id == second.scrape_id and item.cached
        same = ("position", "image_key", "image_type", "color", "ml_confidence", "title")
        assert [getattr(item, f) for f in same] == [getattr(old, f) for f in same]
    with app_sessions() as session:
        assert session.get_one(Scrape, second.scrape_id).sitemap_state is not None


def test_a_fix_made_since_the_last_scrape_shows_on_the_copied_items(
    app_settings: object, app_sessions: sessionmaker[Session], demo_dir: Path
) -> None:
    name = DemoInventory.load(demo_dir).advertiser("sunrise-motors").name
    first, _ = counted_scrape(app_settings, app_sessions, name)
    items = [i for i in items_by_url(app_sessions, first.scrape_id).values()][:2]
    other = {"Dealer": "Stock", "Stock": "Dealer", "Placeholder": "Dealer"}
    # An analyst's fix through the app: it is written on the latest scrape's items too.
    ml = MLClient.from_settings(app_settings)  # type: ignore[arg-type]
    saved = save_fixes(
        app_sessions,
        ml,
        ANALYST,
        [FixChange(items[0].id, "image_type", other[items[0].image_type])],
    )
    ml.client.close()
    assert saved.fix_ids
    # A fix recorded without touching these items (made while they were being stored, say).
    with app_sessions.begin() as session:
        session.add(
            ManualFix(
                image_key=items[1].image_key,
                image_url=items[1].image_url,
                advertiser_id=items[1].advertiser_id,
                field="color",
                new_value="Gold",
                user="ana",
            )
        )
    second, _ = counted_scrape(app_settings, app_sessions, name)
    assert second.sitemap_unchanged and second.copied == first.items
    after = items_by_url(app_sessions, second.scrape_id)
    fixed = after[items[0].image_url]
    assert (fixed.image_type, fixed.image_type_source) == (other[items[0].image_type], "fix")
    assert fixed.ml_image_type == items[0].ml_image_type  # the prediction stays the model's
    recolored = after[items[1].image_url]
    assert (recolored.color, recolored.color_source) == ("Gold", "fix")
    untouched = [i for url, i in after.items() if url not in {it.image_url for it in items}]
    assert all(i.image_type_source == "ml" for i in untouched)


def test_a_changed_sitemap_is_read_and_classified_as_ever(
    app_settings: object, app_sessions: sessionmaker[Session], demo_dir: Path, cdn: object
) -> None:
    name = DemoInventory.load(demo_dir).advertiser("sunrise-motors").name
    first, _ = counted_scrape(app_settings, app_sessions, name)
    moved = cdn.state.republish(0.5, seed=2)  # type: ignore[attr-defined]
    second, ml = counted_scrape(app_settings, app_sessions, name)
    assert not second.sitemap_unchanged and second.copied == 0
    assert second.items == first.items and ml.answers
    assert 0 < second.classified <= len(moved)
    # Images that did not move are still fresh: the ML server answered them without the CDN.
    assert second.cached == second.items - second.classified


def test_stale_images_are_revalidated_and_known_thumbnails_not_sent_again(
    app_settings: object, app_sessions: sessionmaker[Session], demo_dir: Path, cdn: object
) -> None:
    cdn.image_max_age = 0  # type: ignore[attr-defined]
    name = DemoInventory.load(demo_dir).advertiser("sunrise-motors").name
    first, first_ml = counted_scrape(app_settings, app_sessions, name)
    assert all(r.thumbnail_b64 for a in first_ml.answers for r in a.results if not r.error)
    images = dict(cdn.requests)  # type: ignore[attr-defined]
    second, ml = counted_scrape(app_settings, app_sessions, name)
    assert second.sitemap_unchanged and second.copied == 0  # nothing fresh to copy
    assert second.cached == second.items and second.classified == 0
    before, after = (items_by_url(app_sessions, s.scrape_id) for s in (first, second))
    new = {k: n - images.get(k, 0) for k, n in cdn.requests.items()}  # type: ignore[attr-defined]
    assert {k: n for k, n in new.items() if n} == {
        ("GET", "sitemap", 304): 1,
        ("GET", "image", 304): len(before),  # one conditional GET per URL: no body, no HEAD
    }
    results = [r for answer in ml.answers for r in answer.results]
    assert {r.url for r in results} == set(before)
    assert not any(r.thumbnail_b64 for r in results), "the app has every thumbnail already"
    assert {u: i.image_key for u, i in after.items()} == {u: i.image_key for u, i in before.items()}


def test_a_new_feed_setting_reads_the_sitemap_again(
    app_settings: object, app_sessions: sessionmaker[Session], demo_dir: Path
) -> None:
    name = DemoInventory.load(demo_dir).advertiser("sunrise-motors").name
    counted_scrape(app_settings, app_sessions, name)
    with app_sessions.begin() as session:
        session.scalars(
            select(Advertiser).where(Advertiser.name == name)
        ).one().color_from_feed = True
    second, _ = counted_scrape(app_settings, app_sessions, name)
    assert not second.sitemap_unchanged and second.copied == 0


def test_run_scrapes_refreshes_the_findings_once(
    app_settings: object,
    app_sessions: sessionmaker[Session],
    demo_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tagging.ingest.scrape as scrape_module

    calls: list[dict[str, object]] = []
    real = scrape_module.refresh_findings

    def counting(session: Session, **kwargs: object) -> object:
        calls.append(kwargs)
        return real(session, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(scrape_module, "refresh_findings", counting)
    names = [a.name for a in DemoInventory.load(demo_dir).advertisers[:3]]
    client = client_from_settings(app_settings)  # type: ignore[arg-type]
    ml = MLClient.from_settings(app_settings)  # type: ignore[arg-type]
    try:
        summaries = run_scrapes(app_sessions, names, ml=ml, client=client)
    finally:
        client.close()
        ml.client.close()
    assert [s.advertiser for s in summaries] == names
    assert all(s.status in ("succeeded", "completed_with_errors") for s in summaries)
    assert calls == [{}]  # one refresh, of every advertiser's findings


def test_unreadable_sitemap_fails_the_scrape_clearly_and_keeps_history(
    app_settings: object, app_sessions: sessionmaker[Session]
) -> None:
    with app_sessions.begin() as session:
        add_advertiser(session, "Private", "http://10.1.2.3/sitemap.xml")
    summary = scrape(app_settings, app_sessions, "Private")
    assert summary.status == "failed" and summary.items == 0
    assert "private" in summary.problems[0].lower()
    with app_sessions() as session:
        scrape_row = session.get(Scrape, summary.scrape_id)
        assert scrape_row is not None and scrape_row.finished_at is not None
        assert "private" in (scrape_row.error or "").lower()
        assert session.scalar(select(func.count()).select_from(SitemapItem)) == 0


def test_a_sitemap_cannot_aim_at_the_ml_server(
    app_settings: object, app_sessions: sessionmaker[Session], ml_server: object
) -> None:
    """The ML server is allow-listed for the ML client only, never for advertisers' URLs."""
    with app_sessions.begin() as session:
        add_advertiser(session, "Sneaky", f"{ml_server.url}/openapi.json")  # type: ignore[attr-defined]
    summary = scrape(app_settings, app_sessions, "Sneaky")
    assert summary.status == "failed"
    assert "TAGGING_ALLOWED_HOSTS" in summary.problems[0]


@pytest.mark.slow
def test_report_json_cli(
    app_settings: object, app_sessions: sessionmaker[Session], demo_dir: Path
) -> None:
    """The CLI in a real process: scrape --json then report --json."""
    import os
    import subprocess
    import sys

    name = DemoInventory.load(demo_dir).advertiser("summit-auto-group").name
    env = {**os.environ, **app_settings.to_env()}  # type: ignore[attr-defined]
    run = subprocess.run(
        [sys.executable, "-m", "tagging", "scrape", name, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["advertiser"] == name and summary["items"] > 0
    report = subprocess.run(
        [sys.executable, "-m", "tagging", "report", name, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    assert data["scrape_id"] == summary["scrape_id"]
    assert len(data["items"]) == summary["items"]
    assert set(data["items"][0]) >= {
        "vehicle_url",
        "image_url",
        "image_key",
        "image_type",
        "color",
        "status",
    }
    missing = subprocess.run(
        [sys.executable, "-m", "tagging", "report", "Nobody", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 1
    assert "no advertiser named" in json.loads(missing.stdout)["error"]


# --- after_scrape: fixes carried over and findings refreshed once the items are stored ---


def test_after_scrape_carries_over_only_for_advertisers_who_asked(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        _, second = republished(session)
    result = after_scrape(sessions, second.id)
    assert result is not None and result.carried_fix_ids == []
    assert result.refresh is not None and len(result.refresh.opened) == 1

    with sessions.begin() as session:
        with pytest.raises(PermissionDenied):
            set_auto_carry(session, MANAGER, second.advertiser_id, True)
        set_auto_carry(session, ANALYST, second.advertiser_id, True)
        assert session.get_one(Advertiser, second.advertiser_id).auto_carry_fixes
    result = after_scrape(sessions, second.id)  # no ML client: the worker pushes them later
    assert result is not None and len(result.carried_fix_ids) == 1 and result.pushed == 0
    with sessions() as session:
        fix = session.get_one(ManualFix, result.carried_fix_ids[0])
        assert (fix.user, fix.source, fix.sync_status) == (
            "system",
            FixSource.CARRY_OVER,
            SyncStatus.PENDING,
        )
        assert list_findings(session) == []


def test_after_scrape_never_fails_the_scrape(
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with sessions.begin() as session:
        world = World(session)
        scrape = world.scrape(world.advertiser("Metro"), [{"name": "m-old", **LEGACY}])
    assert after_scrape(sessions, 999_999) is None  # no such scrape

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("detector bug")

    monkeypatch.setattr("tagging.ingest.scrape.refresh_findings", broken)
    with caplog.at_level(logging.ERROR, logger="tagging.ingest.scrape"):
        assert after_scrape(sessions, scrape.id) is None
    assert "were not refreshed" in caplog.text


def test_after_scrape_sees_the_scrape_before_it_is_marked_finished(
    sessions: sessionmaker[Session],
) -> None:
    """``run_scrape`` calls it just before ``close_scrape``: the scrape counts as the latest."""
    with sessions.begin() as session:
        world = World(session)
        metro = world.advertiser("Metro")
        world.scrape(metro, photos("m", 4))
        running = world.scrape(
            metro, [*photos("m", 4), {"name": "m-old", **LEGACY}], finished=False
        )
    result = after_scrape(sessions, running.id)
    assert result is not None and len(result.refresh.opened) == 1  # type: ignore[union-attr]
    with sessions() as session:
        (finding,) = list_findings(session)
    assert finding.scrape_id == running.id


def test_after_scrape_pushes_carried_fixes_at_once_with_the_scrapes_ml_client(
    sessions: sessionmaker[Session], ml_server: object, app_settings: object
) -> None:
    with sessions.begin() as session:
        _, second = republished(session)
        set_auto_carry(session, ANALYST, second.advertiser_id, True)
    ml = MLClient.from_settings(app_settings)  # type: ignore[arg-type]
    result = after_scrape(sessions, second.id, ml=ml)
    assert result is not None and len(result.carried_fix_ids) == 1 and result.pushed == 1
    with sessions() as session:
        fix = session.get_one(ManualFix, result.carried_fix_ids[0])
        assert (fix.source, fix.sync_status) == (FixSource.CARRY_OVER, SyncStatus.SYNCED)
    record = requests.get(
        f"{ml_server.url}/images/{fix.image_key}",  # type: ignore[attr-defined]
        headers={"Authorization": f"Bearer {ML_TOKEN}"},
        timeout=5,
    ).json()
    assert (record["image_type"], record["applied_fix_ids"]) == ("Stock", [fix.uid])


def test_the_heartbeat_thread_beats_while_the_scrape_works_and_stops_after(
    sessions: sessionmaker[Session],
) -> None:
    """Between batches (a slow ML server) the thread keeps the scrape's lease alive."""
    from datetime import timedelta

    from db.models import Scrape, as_utc, utcnow
    from db.scrapes import start_scrape
    from tagging.ingest.scrape import Heartbeat
    from tests.utils.factories import make_advertiser

    old = utcnow() - timedelta(hours=1)
    with sessions.begin() as session:
        scrape = start_scrape(
            session, make_advertiser(session).id, trigger="cli", requested_by=None
        )
        scrape.heartbeat_at = old
        scrape_id = scrape.id

    def heartbeat() -> object:
        with sessions() as session:
            return as_utc(session.get_one(Scrape, scrape_id).heartbeat_at)

    heartbeat_thread = Heartbeat(sessions, scrape_id)
    heartbeat_thread.every = 0.05
    with heartbeat_thread:
        deadline = time.monotonic() + 10
        while heartbeat() == old and time.monotonic() < deadline:
            time.sleep(0.05)
        assert heartbeat() != old
    with sessions.begin() as session:
        session.get_one(Scrape, scrape_id).heartbeat_at = old
    time.sleep(0.3)
    assert heartbeat() == old  # stopped with the block
