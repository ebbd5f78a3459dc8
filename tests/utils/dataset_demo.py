"""The demo as ``make run`` leaves it, for the dataset-curation tests (the page in Chromium, the
CLI headless): every demo advertiser scraped, the weird cases and the team's dataset fixes staged,
and version 1 (the generated set the model was trained on) recorded. Also the checks every built
version must pass once exported (no near-duplicate and no vehicle page across train and test).
"""

from __future__ import annotations

import csv
import hashlib
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image as PILImage
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.accounts import ensure_demo_accounts
from db.engine import make_engine, make_session_factory
from db.models import Image, Role
from tagging.__main__ import main
from tagging.datasets.archive import LocalArchive
from tagging.datasets.service import first_version
from tagging.demo.generate import DemoInventory
from tagging.demo.setup import register_demo_advertisers
from tagging.demo.stage import WeirdDemoReport, stage_weird_cases
from tagging.ingest.fetch import client_from_settings
from tagging.ingest.images import decode_image, hash_distance, perceptual_hash
from tagging.ingest.scrape import ScrapeConfig, run_scrape
from tagging.server.client import MLClient
from tests.utils.factories import actor

DEVELOPER = actor(Role.DEVELOPER, "developer")
"""The demo's developer account (``db.accounts.ensure_demo_accounts``)."""

EXPORT_COLUMNS = [
    "sha256",
    "path",
    "image_type",
    "color",
    "split",
    "advertiser",
    "page_url",
    "cluster",
    "origin",
]
"""``manifest.csv``'s header, as a trainer reads it."""

NEAR = 6
"""pHash distance at or under which two pictures are near-duplicates."""


@dataclass(frozen=True)
class StagedDemo:
    """The staged demo: its database, the app's archive and what the staging did."""

    sessions: sessionmaker[Session]
    inventory: DemoInventory
    archive: LocalArchive
    report: WeirdDemoReport
    flipped_key: str
    """The image_key of the Dealer photo the analyst labelled Placeholder on purpose."""
    conflict_keys: tuple[str, str]
    """The image_keys of the near-duplicate pair the analyst labelled two ways."""

    def sha256_of(self, image_key: str) -> str:
        with self.sessions() as session:
            sha = session.scalar(select(Image.sha256).where(Image.image_key == image_key))
        assert sha, f"no content hash for {image_key}"
        return str(sha)


def demo_accounts(app_settings: object) -> None:
    """The demo's accounts, one per role (``staged_demo`` makes them too: this is for signing in
    while the demo is being staged)."""
    engine = make_engine(app_settings.database_url)  # type: ignore[attr-defined]
    try:
        with make_session_factory(engine).begin() as session:
            ensure_demo_accounts(session)
    finally:
        engine.dispose()


@contextmanager
def staged_demo(
    app_settings: object, demo_dir: Path, cdn: object, models_dir: Path
) -> Iterator[StagedDemo]:
    """The small test demo as ``make run`` leaves it, in ``app_settings``' database and data dir.

    Every advertiser is scraped (real HTTP: CDN → ML server → database), the weird cases and the
    dataset fixes are staged (``stage_weird_cases``), the production model is put in the data
    dir's ``models`` (the page ranks label errors with it, the CLI builds with it) and version 1 is
    recorded from it. The fixed images are not archived yet: a build's pull fetches them.
    """
    inventory = DemoInventory.load(demo_dir)
    register_demo_advertisers(app_settings, inventory, cdn.url)  # type: ignore[arg-type, attr-defined]
    engine = make_engine(app_settings.database_url)  # type: ignore[attr-defined]
    sessions = make_session_factory(engine)
    try:
        with sessions.begin() as session:
            ensure_demo_accounts(session)
        for advertiser in inventory.advertisers:
            client = client_from_settings(app_settings)  # type: ignore[arg-type]
            ml = MLClient.from_settings(app_settings)  # type: ignore[arg-type]
            try:
                run_scrape(sessions, advertiser.name, ml=ml, client=client, config=ScrapeConfig())
            finally:
                client.close()
                ml.client.close()
        report = stage_weird_cases(
            app_settings,  # type: ignore[arg-type]
            sessions,
            cdn_url=cdn.url,  # type: ignore[attr-defined]
            cdn_token=cdn.admin_token,  # type: ignore[attr-defined]
        )
        assert set(report.dataset) == {"classes", "conflict", "flipped"}, report.dataset
        # "Dealer KEY fixed as Placeholder"; "KEY (Dealer) and its copy KEY fixed as Stock"
        flipped_key = report.dataset["flipped"].split()[1]
        conflict = report.dataset["conflict"].split()
        data_models = app_settings.models_dir  # type: ignore[attr-defined]
        shutil.copytree(models_dir, data_models, dirs_exist_ok=True)
        archive = LocalArchive(app_settings.archive_dir)  # type: ignore[attr-defined]
        first_version(sessions, DEVELOPER, archive, data_models, workers=1)
        yield StagedDemo(
            sessions, inventory, archive, report, flipped_key, (conflict[0], conflict[5])
        )
    finally:
        engine.dispose()


def run_cli(
    app_settings: object,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    *args: str,
) -> str:
    """``python -m tagging ARGS`` through its entry point, in ``app_settings``' environment; its
    standard output (a failure fails the test, quoting the one-line error)."""
    for name, value in app_settings.to_env().items():  # type: ignore[attr-defined]
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    assert code == 0, f"python -m tagging {' '.join(args)} exited {code}: {err.strip()}"
    return out


def check_export(out_dir: Path, archive: LocalArchive) -> list[dict[str, str]]:
    """Check an exported ImageFolder tree as a trainer gets it; its ``manifest.csv`` rows.

    ``manifest.csv`` has the export columns and one row per picture, each picture in its row's
    ``split/image_type`` folder; no picture in ``train`` is a near-duplicate of one in ``test``
    (pHash distance ≤ 6) and no vehicle page has pictures on both sides.

    The pHash is computed here, not read from the manifest: of the image each picture is named
    after (its sha256, the archived original), hashed as the ML server hashes every image (the
    draft decode). (Not of the exported file: the export encodes every picture again, which moves
    some pHashes by 2 to 4 bits.)
    """
    with (out_dir / "manifest.csv").open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == EXPORT_COLUMNS
        rows = list(reader)
    pictures = sorted(out_dir.rglob("*.jpg"))
    assert len(pictures) == len(rows) > 0
    by_sha = {row["sha256"]: row for row in rows}
    sides: dict[str, list[str]] = {"train": [], "test": []}
    hashes: dict[str, str] = {}
    for picture in pictures:
        split, image_type, sha = picture.parts[-3], picture.parts[-2], picture.stem
        assert (by_sha[sha]["split"], by_sha[sha]["image_type"]) == (split, image_type)
        with PILImage.open(picture) as image:
            image.verify()  # a picture a trainer can open
        original = archive.get(sha)
        assert hashlib.sha256(original).hexdigest() == sha
        hashes[sha] = perceptual_hash(decode_image(original).image)
        sides[split].append(sha)
    assert sides["train"] and sides["test"]
    near = [
        (a, b, hash_distance(hashes[a], hashes[b]))
        for a in sides["train"]
        for b in sides["test"]
        if hash_distance(hashes[a], hashes[b]) <= NEAR
    ]
    assert near == [], f"near-duplicates across train and test: {near[:5]}"
    pages: dict[str, set[str]] = {}
    for row in rows:
        if row["page_url"]:
            pages.setdefault(row["page_url"], set()).add(row["split"])
    assert pages, "no vehicle page in the export: the team's fixes are missing"
    both = sorted(page for page, splits in pages.items() if len(splits) > 1)
    assert both == [], f"vehicle pages on both sides: {both[:5]}"
    return rows
