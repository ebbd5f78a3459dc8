"""The label commands in real processes: ``advertisers token``, ``fixes import``, ``report --json``
(values, predictions and sources) and ``sync --all``, against the real ML server and CDN."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.accounts import create_user
from db.models import FixSource, ManualFix, Role, SyncStatus
from tagging.api.app import create_advertiser_api
from tagging.testing import UvicornThread

pytestmark = pytest.mark.slow  # each test starts several Python processes

METRO = "Metro Car Center"


def cli(settings: object, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings.to_env()}  # type: ignore[attr-defined]
    return subprocess.run(
        [sys.executable, "-m", "tagging", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def report(settings: object) -> list[dict[str, object]]:
    run = cli(settings, "report", METRO, "--json")
    assert run.returncode == 0, run.stderr
    return list(json.loads(run.stdout)["items"])


def csv_text(rows: list[dict[str, str]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


@pytest.fixture
def scraped(app_settings: object, app_sessions: sessionmaker[Session]) -> list[dict[str, object]]:
    run = cli(app_settings, "scrape", METRO, "--json")
    assert run.returncode == 0, run.stderr
    with app_sessions.begin() as session:
        create_user(session, None, "ana", Role.ANALYST, password="a-long-password", system=True)
        create_user(session, None, "mo", Role.MANAGER, password="a-long-password", system=True)
    return [i for i in report(app_settings) if i["status"] == "ok"]


def test_report_json_has_values_predictions_and_sources(
    app_settings: object, scraped: list[dict[str, object]]
) -> None:
    item = scraped[0]
    assert {"ml_image_type", "ml_color", "image_type_source", "color_source"} <= set(item)
    assert item["image_type"] == item["ml_image_type"] and item["image_type_source"] == "ml"


def test_fixes_import_records_team_fixes_in_one_transaction(
    app_settings: object, app_sessions: sessionmaker[Session], scraped: list[dict[str, object]]
) -> None:
    first, second = scraped[0], scraped[1]
    new_type = "Stock" if first["image_type"] != "Stock" else "Dealer"
    good = [
        {
            "advertiser": METRO,
            "image_url": str(first["image_url"]),
            "field": "image_type",
            "value": new_type,
        },
        {
            "advertiser": METRO,
            "image_url": str(second["image_url"]),
            "field": "color",
            "value": "Gold",
        },
    ]

    # A bad row rejects the whole file, naming its line; nothing is recorded.
    bad = [
        *good,
        {
            "advertiser": METRO,
            "image_url": "http://nowhere/x.jpg",
            "field": "color",
            "value": "Red",
        },
    ]
    run = cli(app_settings, "fixes", "import", "-", "--user", "ana", stdin=csv_text(bad))
    assert run.returncode == 1 and "line 4" in run.stderr and "Traceback" not in run.stderr
    run = cli(app_settings, "fixes", "import", "-", "--user", "mo", stdin=csv_text(good))
    assert run.returncode == 1 and "may not" in run.stderr  # a manager may not fix
    with app_sessions() as session:
        assert session.scalars(select(ManualFix)).all() == []

    path = Path(str(app_settings.data_dir)) / "fixes.csv"  # type: ignore[attr-defined]
    path.write_text(csv_text(good))
    run = cli(app_settings, "fixes", "import", str(path), "--user", "ana", "--json")
    assert run.returncode == 0, run.stderr
    outcome = json.loads(run.stdout)
    assert len(outcome["fix_ids"]) == 2 and outcome["push_error"] is None
    with app_sessions() as session:
        fixes = session.scalars(select(ManualFix).order_by(ManualFix.id)).all()
    assert [(f.source, f.scope, f.user, f.sync_status) for f in fixes] == [
        (FixSource.IMPORT, "team", "ana", SyncStatus.SYNCED)
    ] * 2
    after = {i["image_url"]: i for i in report(app_settings)}
    assert (
        after[first["image_url"]]["image_type"],
        after[first["image_url"]]["image_type_source"],
    ) == (new_type, "fix")
    assert after[first["image_url"]]["ml_image_type"] == first["ml_image_type"]
    assert (after[second["image_url"]]["color"], after[second["image_url"]]["color_source"]) == (
        "Gold",
        "fix",
    )

    run = cli(app_settings, "sync", "--all")
    assert run.returncode == 0 and "pushed 2 fixes" in run.stdout, run.stdout + run.stderr


def test_advertisers_token_prints_a_working_token(
    app_settings: object, scraped: list[dict[str, object]]
) -> None:
    run = cli(app_settings, "advertisers", "token", METRO)
    assert run.returncode == 0, run.stderr
    token = run.stdout.strip()
    assert len(token) >= 32
    with UvicornThread(create_advertiser_api(app_settings)) as api:  # type: ignore[arg-type]
        ok = httpx.get(f"{api.url}/v1/fixes", headers={"Authorization": f"Bearer {token}"})
        wrong = httpx.get(f"{api.url}/v1/fixes", headers={"Authorization": "Bearer nope"})
    assert (ok.status_code, wrong.status_code) == (200, 401)
    missing = cli(app_settings, "advertisers", "token", "Nobody Motors")
    assert missing.returncode == 1 and "Nobody Motors" in missing.stderr
