"""Set up the demo: generate the inventory once, then register its advertisers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from db.advertisers import upsert_advertiser
from db.engine import make_engine, make_session_factory, migrate
from tagging.config import Settings
from tagging.demo.generate import DemoInventory, generate_demo
from tagging.errors import TaggingError


def ensure_demo(
    settings: Settings,
    *,
    seed: int = 7,
    cdn_url: str = "http://127.0.0.1:8765",
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> DemoInventory:
    """Generate the demo under ``settings.demo_dir`` unless it is there with the same seed.

    Registers (or updates) every demo advertiser with its sitemap URL on ``cdn_url``.
    """
    inventory = None if force else _load_if_current(settings.demo_dir, seed)
    if inventory is None:
        inventory = generate_demo(settings.demo_dir, seed=seed, progress=progress)
    register_demo_advertisers(settings, inventory, cdn_url)
    return inventory


def _load_if_current(demo_dir: Path, seed: int) -> DemoInventory | None:
    """The demo on disk if it was made with ``seed`` by this manifest version, else None."""
    try:
        inventory = DemoInventory.load(demo_dir)
    except (OSError, ValueError, KeyError, TaggingError):
        return None
    return inventory if inventory.seed == seed else None


def register_demo_advertisers(settings: Settings, inventory: DemoInventory, cdn_url: str) -> None:
    """Register every demo advertiser against the CDN at ``cdn_url``."""
    migrate(settings.database_url, create=settings.creates_database)
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine).begin() as session:
            for advertiser in inventory.advertisers:
                upsert_advertiser(
                    session,
                    advertiser.name,
                    cdn_url.rstrip("/") + advertiser.sitemap_path,
                    color_from_feed=advertiser.color_from_feed,
                )
    finally:
        engine.dispose()
