"""How long ``dataset build`` takes, and how much memory, for 50,000 team fixes.

Seeds a fresh SQLite app database with 50,000 analyst Image Type fixes on 50,000 images (25
advertisers, three photos per vehicle page, every class), each image with a **precomputed**
content SHA-256 and pHash and no archived bytes: the build's database pull, extend, size filter,
pHash near-duplicate clustering (faiss), conflict exclusion, grouped split, manifest hashing and
storing are what is measured. Two per cent of the images are near-duplicate copies (a few pHash
bits flipped), half of them labelled otherwise (conflicts). With no archived pixels the border
crop pass has nothing to read, and the model pass (embeddings + cleanlab) is not run: model
inference is timed apart (``--inference N`` embeds N archived 480x360 JPEGs with the production
model, when one is in ``data/models``).

The build runs in a fresh process after seeding, so its peak RSS (``ru_maxrss``) is the build's.
Targets: under 60 s and under 1 GiB on a 2-core machine.

Usage::

    .venv/bin/python bench/dataset_bench.py [--fixes N] [--inference N]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TYPES = ("Dealer", "Stock", "Placeholder")


def seed(url: str, fixes: int) -> None:
    """Fill the database at ``url`` with ``fixes`` analyst fixes (bulk inserts)."""
    from sqlalchemy import insert

    from db.engine import make_engine, make_session_factory, migrate
    from db.models import (
        Advertiser,
        Image,
        ManualFix,
        Scrape,
        ScrapeStatus,
        SitemapItem,
        utcnow,
    )

    migrate(url, create=True)
    engine = make_engine(url)
    rng = random.Random(1)
    now = utcnow()
    with make_session_factory(engine).begin() as session:
        for a in range(25):
            session.add(
                Advertiser(name=f"Bench Advertiser {a}", sitemap_url=f"https://a{a}.test/s")
            )
        session.flush()
        for a in range(25):
            session.add(Scrape(advertiser_id=a + 1, status=ScrapeStatus.SUCCEEDED, finished_at=now))
        session.flush()
        images, items, rows = [], [], []
        for i in range(fixes):
            key = f"{i:032x}"
            if i % 50 == 49:  # a near-duplicate copy of the previous image
                bits = int(images[-1]["phash"], 16) ^ (1 << rng.randrange(64))
                phash = f"{bits:016x}"
            else:
                phash = f"{rng.getrandbits(64):016x}"
            label = TYPES[i % 3] if i % 100 != 99 else TYPES[(i + 1) % 3]
            advertiser = 1 + (i // 3) % 25
            url_ = f"https://cdn.test/{key}.jpg"
            images.append(
                {
                    "image_key": key,
                    "url": url_,
                    "sha256": f"{i:064x}",
                    "phash": phash,
                    "width": 480,
                    "height": 360,
                }
            )
            items.append(
                {
                    "id": i + 1,
                    "scrape_id": advertiser,
                    "advertiser_id": advertiser,
                    "position": i,
                    "page_url": f"https://a{advertiser}.test/vehicles/{i // 3}",
                    "image_url": url_,
                    "image_key": key,
                    "ml_image_type": TYPES[(i + 1) % 3],
                    "ml_color": "Red",
                    "image_type": label,
                    "color": "Red",
                    "status": "ok",
                }
            )
            rows.append(
                {
                    "uid": f"{i:032x}",
                    "image_key": key,
                    "image_url": url_,
                    "advertiser_id": advertiser,
                    "sitemap_item_id": i + 1,
                    "field": "image_type",
                    "old_value": TYPES[(i + 1) % 3],
                    "new_value": label,
                    "user": f"analyst{i % 4}",
                    "source": "analyst",
                    "created_at": now - timedelta(seconds=fixes - i),
                }
            )
        for table, values in ((Image, images), (SitemapItem, items), (ManualFix, rows)):
            for start in range(0, len(values), 10_000):
                session.execute(insert(table), values[start : start + 10_000])
    engine.dispose()


def build(url: str, archive_dir: Path) -> dict[str, object]:
    """Run ``dataset build`` (no model pass) and measure it."""
    from db.accounts import SYSTEM_ACTOR, Actor
    from db.engine import make_engine, make_session_factory
    from db.models import Role
    from tagging.datasets.archive import LocalArchive
    from tagging.datasets.service import build_version

    engine = make_engine(url)
    sessions = make_session_factory(engine)
    started = time.perf_counter()
    report = build_version(
        sessions,
        Actor(username=SYSTEM_ACTOR, role=Role.DEVELOPER),
        LocalArchive(archive_dir),
        parent=None,
        seed=0,
    )
    seconds = time.perf_counter() - started
    engine.dispose()
    return {
        "seconds": round(seconds, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rows": report.version.counts.get("rows"),
        "by_split": report.by_split,
        "exclusions": report.exclusions,
    }


def inference(n: int) -> dict[str, object] | None:
    """Embed ``n`` rendered JPEGs with the production model (timed apart from the build)."""
    from tagging.config import Settings
    from tagging.ingest.images import decode_image
    from tagging.ml.embed import embed
    from tagging.ml.model import list_versions, load_artifact
    from tagging.ml.synth import render_bytes

    models = Settings.from_env().models_dir
    if not list_versions(models):
        return None
    artifact = load_artifact(models)
    blobs = [
        render_bytes(TYPES[i % 3], None if i % 3 == 2 else "Red", random.Random(i))
        for i in range(n)
    ]
    started = time.perf_counter()
    pictures = [decode_image(b).image for b in blobs]
    embed(pictures, artifact.model, input_size=artifact.metadata.input_size)
    seconds = time.perf_counter() - started
    return {"images": n, "seconds": round(seconds, 2), "per_1000": round(seconds / n * 1000, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixes", type=int, default=50_000)
    parser.add_argument("--inference", type=int, default=500)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        url, archive = args.child.split("|")
        print(json.dumps(build(url, Path(archive))))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.sqlite"
        t0 = time.perf_counter()
        seed(url, args.fixes)
        print(f"seeded {args.fixes} fixes in {time.perf_counter() - t0:.1f}s")
        out = subprocess.run(
            [sys.executable, __file__, "--child", f"{url}|{tmp}/archive"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        result = json.loads(out.strip().splitlines()[-1])
    ok_time = result["seconds"] < 60
    ok_memory = result["peak_rss_mib"] < 1024
    print(
        f"dataset build, {args.fixes} fixes: {result['seconds']}s "
        f"({'ok' if ok_time else 'OVER'} < 60 s), peak RSS {result['peak_rss_mib']} MiB "
        f"({'ok' if ok_memory else 'OVER'} < 1024 MiB), {result['rows']} rows"
    )
    print(f"  by split {result['by_split']}")
    print(f"  exclusions {result['exclusions']}")
    timed = inference(args.inference) if args.inference else None
    if timed is None:
        print("  model inference: no production model in data/models (not timed)")
    else:
        print(
            f"  model inference (timed apart): {timed['images']} images in {timed['seconds']}s "
            f"({timed['per_1000']}s per 1,000)"
        )
    return 0 if ok_time and ok_memory else 1


if __name__ == "__main__":
    raise SystemExit(main())
