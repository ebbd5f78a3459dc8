"""Set up the demo: generate the inventory once, then register its advertisers."""

from __future__ import annotations

import json
from collections.abc import Callable

from db.engine import make_engine, make_session_factory, migrate
from db.queries import upsert_advertiser
from tagging.config import Settings
from tagging.demo.generate import DemoInventory, generate_demo


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
    manifest = settings.demo_dir / "manifest.json"
    if force or not manifest.exists() or json.loads(manifest.read_text()).get("seed") != seed:
        generate_demo(settings.demo_dir, seed=seed, progress=progress)
    inventory = DemoInventory.load(settings.demo_dir)
    register_demo_advertisers(settings, inventory, cdn_url)
    return inventory


def register_demo_advertisers(settings: Settings, inventory: DemoInventory, cdn_url: str) -> None:
    """Register every demo advertiser against the CDN at ``cdn_url``."""
    migrate(settings.database_url)
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
