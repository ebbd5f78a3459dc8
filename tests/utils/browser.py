"""Helpers of the browser tests: the scraped demo they start from, and picking in a selectbox."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from db.accounts import ensure_demo_accounts
from db.engine import make_engine, make_session_factory
from tagging.demo.generate import DemoInventory
from tagging.demo.setup import register_demo_advertisers
from tagging.ingest.fetch import GuardedClient, client_from_settings
from tagging.ingest.scrape import run_scrape
from tagging.server.client import MLClient


@dataclass(frozen=True)
class ScrapedDemo:
    sessions: sessionmaker[Session]
    client: GuardedClient
    """The guarded client the scrape used (for scraping again)."""


@contextmanager
def scraped_demo(app_settings: object, demo_dir: Path, cdn: object) -> Iterator[ScrapedDemo]:
    """The demo's advertisers and accounts, and one real scrape of the page's default advertiser."""
    inventory = DemoInventory.load(demo_dir)
    register_demo_advertisers(app_settings, inventory, cdn.url)  # type: ignore[arg-type, attr-defined]
    engine = make_engine(app_settings.database_url)  # type: ignore[attr-defined]
    sessions = make_session_factory(engine)
    with sessions.begin() as session:
        ensure_demo_accounts(session)
    name = sorted(a.name for a in inventory.advertisers)[0]  # the page's default advertiser
    client = client_from_settings(app_settings)  # type: ignore[arg-type]
    try:
        run_scrape(sessions, name, ml=MLClient.from_settings(app_settings), client=client)  # type: ignore[arg-type]
        yield ScrapedDemo(sessions, client)
    finally:
        client.close()
        engine.dispose()


def choose(page: object, key: str, option: str) -> None:
    """Pick ``option`` in the Streamlit selectbox whose widget key is ``key``."""
    page.locator(f".st-key-{key}").get_by_role("combobox").click()  # type: ignore[attr-defined]
    page.get_by_role("option", name=option, exact=True).click()  # type: ignore[attr-defined]
