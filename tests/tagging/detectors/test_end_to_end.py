"""The detectors end to end over real HTTP: demo CDN → scrape → ML server → fix → re-publish →
rescrape → carry over; and the demo staging every case."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.advertisers import get_advertiser
from db.engine import make_engine, make_session_factory
from db.findings import list_findings
from db.fixes import FixChange, apply_fixes
from db.models import FixSource, ManualFix, Role, Severity, SyncStatus
from db.scrapes import scrape_items
from db.vocab import FIX_NOT_STICKING, ML_OUTAGE
from tagging.demo.generate import DemoInventory
from tagging.demo.setup import register_demo_advertisers
from tagging.detectors.registry import DETECTORS
from tagging.detectors.remedies import carry_over_finding
from tagging.fixes import push_pending
from tagging.ingest.fetch import client_from_settings
from tagging.ingest.scrape import ScrapeConfig, ScrapeSummary, run_scrape
from tagging.server.client import MLClient
from tests.utils.factories import actor
from tests.utils.servers import ML_TOKEN


class _FlakyML(BaseHTTPRequestHandler):
    """Forwards the first ``answer`` classify calls to the real ML server, then answers 503."""

    target = ""
    answer = 0
    calls = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.lock:
            type(self).calls += 1
            forward = type(self).calls <= self.answer
        if forward:
            upstream = requests.post(
                self.target + self.path,
                data=body,
                headers={
                    "Authorization": self.headers.get("Authorization", ""),
                    "Content-Type": "application/json",
                },
                timeout=60,
            )
            status, payload = upstream.status_code, upstream.content
        else:
            status, payload = 503, b'{"detail": "overloaded"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def flaky_ml(ml_server: object) -> Iterator[str]:
    handler = type("Flaky", (_FlakyML,), {"target": ml_server.url, "answer": 2, "calls": 0})  # type: ignore[attr-defined]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _scrape(
    settings: object, sessions: sessionmaker[Session], name: str, **config: Any
) -> ScrapeSummary:
    client = client_from_settings(settings)  # type: ignore[arg-type]
    ml = MLClient.from_settings(settings)  # type: ignore[arg-type]
    try:
        return run_scrape(sessions, name, ml=ml, client=client, config=ScrapeConfig(**config))
    finally:
        client.close()
        ml.client.close()


def test_end_to_end_outage_relaunch_then_republish_and_carry_over(
    app_settings: object, demo_dir: Path, cdn: object, ml_server: object, flaky_ml: str
) -> None:
    register_demo_advertisers(app_settings, DemoInventory.load(demo_dir), cdn.url)  # type: ignore[arg-type, attr-defined]
    engine = make_engine(app_settings.database_url)  # type: ignore[attr-defined]
    sessions = make_session_factory(engine)
    analyst = actor(Role.ANALYST, "ana")
    try:
        # 1. The ML server answers two batches, then fails: the scrape's findings say so.
        lakeside = DemoInventory.load(demo_dir).advertiser("lakeside-auto")
        assert len(lakeside.image_paths()) == sum(len(v.images) for v in lakeside.vehicles)
        flaky = replace(app_settings, ml_url=flaky_ml)  # type: ignore[type-var]
        failed = _scrape(
            flaky, sessions, lakeside.name, batch_size=8, max_consecutive_ml_failures=99
        )
        assert 0 < failed.ml_failures < failed.items and failed.failed == failed.ml_failures
        with sessions() as session:
            (outage,) = list_findings(session, detector=ML_OUTAGE)
        assert outage.scrape_id == failed.scrape_id
        # Fewer than half the images went unanswered: a warning (most of them: critical).
        assert outage.evidence["count"] < outage.evidence["items"] / 2
        assert outage.severity == Severity.WARNING

        # Relaunch: only the failed images are classified, the rest come from the ML cache.
        relaunched = _scrape(app_settings, sessions, lakeside.name, batch_size=8)
        assert relaunched.classified == failed.ml_failures
        assert relaunched.cached == failed.items - failed.ml_failures
        with sessions() as session:
            assert list_findings(session, detector=ML_OUTAGE) == []

        # 2. Sunrise: a scrape, the CDN moves half the images and encodes them again (other
        # bytes, the same picture), two moved ones get fixed.
        sunrise = get_name(sessions, "Sunrise Motors")
        first = _scrape(app_settings, sessions, sunrise)
        moved = republish(app_settings, cdn, share=0.5, seed=1, recompress=True)
        with sessions.begin() as session:
            items = [
                i
                for i in scrape_items(session, first.scrape_id)
                if urlsplit(i.image_url).path in moved and i.image_type in ("Dealer", "Stock")
            ][:2]
            assert len(items) == 2
            changes = [
                FixChange(i.id, "image_type", "Stock" if i.image_type == "Dealer" else "Dealer")
                for i in items
            ]
            fixed = {i.image_url: c.new_value for i, c in zip(items, changes, strict=True)}
            outcome = apply_fixes(session, analyst, changes)
        ml = MLClient.from_settings(app_settings)  # type: ignore[arg-type]
        assert push_pending(sessions, ml, fix_ids=outcome.fix_ids).synced == 2

        # The rescrape sees them under new keys and new bytes, with the ML labels: a perceptual
        # match is not proof, so the fixes are not carried over but raised for a person.
        assert _scrape(app_settings, sessions, sunrise).carried == 0
        with sessions() as session:
            unstuck = list_findings(session, detector=FIX_NOT_STICKING)
        assert len(unstuck) == 2
        assert {f.evidence["matched_url"] for f in unstuck} == set(fixed)
        assert all(f.evidence["match"] == "phash" for f in unstuck)

        # 3. Carry one over by hand: history row with source carry_over, the ML cache has it.
        with sessions.begin() as session:
            carried = carry_over_finding(session, analyst, unstuck[0].id)
        assert push_pending(sessions, ml, fix_ids=carried.fix_ids).synced == 1
        new_key = unstuck[0].evidence["image_key"]
        wanted = fixed[unstuck[0].evidence["matched_url"]]
        record = requests.get(
            f"{ml_server.url}/images/{new_key}",  # type: ignore[attr-defined]
            headers={"Authorization": f"Bearer {ML_TOKEN}"},
            timeout=10,
        )
        assert record.status_code == 200 and record.json()["image_type"] == wanted
        with sessions() as session:
            row = session.scalars(select(ManualFix).where(ManualFix.image_key == new_key)).one()
            assert (row.source, row.user, row.new_value) == (FixSource.CARRY_OVER, "ana", wanted)
            assert row.sync_status == SyncStatus.SYNCED

        # 4. Every image moves again, with the same bytes: an exact content match carries the
        # confirmed fix over by itself, with a history row, for every advertiser.
        republish(app_settings, cdn, share=1.0, seed=2)
        third = _scrape(app_settings, sessions, sunrise)
        with sessions() as session:
            auto = session.scalars(
                select(ManualFix).where(ManualFix.user == "system").order_by(ManualFix.id)
            ).all()
            assert {f.source for f in auto} == {FixSource.CARRY_OVER}
            assert {f.sync_status for f in auto} == {SyncStatus.SYNCED}
            assert len(auto) == 1 and auto[0].new_value == wanted  # under its third key
            now = {i.image_key: i.image_type for i in scrape_items(session, third.scrape_id)}
        for fix in auto:
            assert now[fix.image_key] == fix.new_value
            cached = ml.get_image(fix.image_key)
            assert cached is not None and cached.image_type == fix.new_value
        ml.client.close()
    finally:
        engine.dispose()


def republish(
    settings: object, cdn: object, *, share: float, seed: int, recompress: bool = False
) -> dict[str, str]:
    """POST the demo CDN's admin endpoint through the guarded client: ``{old path: new path}``."""
    url = f"{cdn.url}/_admin/republish?share={share}&seed={seed}&recompress={int(recompress)}"  # type: ignore[attr-defined]
    headers = {"Authorization": f"Bearer {cdn.admin_token}"}  # type: ignore[attr-defined]
    with client_from_settings(settings) as client:  # type: ignore[arg-type]
        return json.loads(client.request_json("POST", url, headers=headers).body)["paths"]


def get_name(sessions: sessionmaker[Session], name: str) -> str:
    with sessions() as session:
        return get_advertiser(session, name).name


@pytest.mark.slow
def test_the_demo_stages_every_case(
    app_settings: object, demo_dir: Path, cdn: object, ml_server: object
) -> None:
    """What ``make run`` shows after its first scrape: each detector has a finding."""
    from tagging.demo.stage import stage_weird_cases

    register_demo_advertisers(app_settings, DemoInventory.load(demo_dir), cdn.url)  # type: ignore[arg-type, attr-defined]
    engine = make_engine(app_settings.database_url)  # type: ignore[attr-defined]
    sessions = make_session_factory(engine)
    try:
        for advertiser in DemoInventory.load(demo_dir).advertisers:
            _scrape(app_settings, sessions, advertiser.name)
        report = stage_weird_cases(
            app_settings, sessions, cdn_url=cdn.url, cdn_token=cdn.admin_token
        )  # type: ignore[arg-type, attr-defined]
        assert report.skipped is None
        assert set(report.findings) == set(DETECTORS), report
        assert set(report.staged) == set(DETECTORS)
        # Staged once: a second call (a later `make run`) changes nothing.
        again = stage_weird_cases(
            app_settings, sessions, cdn_url=cdn.url, cdn_token=cdn.admin_token
        )  # type: ignore[arg-type, attr-defined]
        assert again.skipped and not again.staged
    finally:
        engine.dispose()
