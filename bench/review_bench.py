"""Review page speed on a 5,000-item sitemap: first render, page change, filter change.

Measured with Streamlit's AppTest, which runs the real page script in-process: the figures are
the server-side time to build the page (queries, thumbnails, widgets), not browser paint time.
Also counts JPEG decodes during the reruns: thumbnails must go to the browser as stored bytes.

    .venv/bin/python bench/review_bench.py [--items 5000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def seed(url: str, items: int) -> None:
    from sqlalchemy import insert

    from db.engine import make_engine, make_session_factory, migrate
    from db.models import Advertiser, Scrape, SitemapItem, Thumbnail, utcnow
    from db.vocab import COLORS
    from tagging.ingest.images import decode_image, make_thumbnail
    from tagging.ml.synth import render_bytes

    migrate(url)
    rng = random.Random(1)
    # 60 distinct pictures, as real thumbnails; keys are distinct per item.
    kinds = [("Dealer", rng.choice(COLORS)) for _ in range(30)]
    kinds += [("Stock", rng.choice(COLORS)) for _ in range(20)]
    kinds += [("Placeholder", None) for _ in range(10)]
    pictures = [
        make_thumbnail(decode_image(render_bytes(t, c, random.Random(i))).image)
        for i, (t, c) in enumerate(kinds)
    ]
    engine = make_engine(url)
    with make_session_factory(engine).begin() as session:
        advertiser = Advertiser(name="Big Dealer Group", sitemap_url="https://cdn.example/s.xml")
        session.add(advertiser)
        session.flush()
        scrape = Scrape(
            advertiser_id=advertiser.id,
            status="succeeded",
            finished_at=utcnow(),
            item_count=items,
            expected_items=items,
        )
        session.add(scrape)
        session.flush()
        rows, thumbs = [], []
        for position in range(items):
            image_type, color = kinds[position % len(kinds)]
            key = f"{position:032x}"
            rows.append(
                {
                    "scrape_id": scrape.id,
                    "advertiser_id": advertiser.id,
                    "position": position,
                    "page_url": f"https://dealer.example/v/{position // 4}",
                    "image_url": f"https://cdn.example/i/{position}.jpg",
                    "title": f"2021 Car {position // 4}",
                    "image_key": key,
                    "ml_image_type": image_type,
                    "ml_color": color,
                    "image_type": image_type,
                    "color": color,
                    "status": "ok",
                }
            )
            thumbs.append({"image_key": key, "jpeg": pictures[position % len(pictures)]})
        session.execute(insert(SitemapItem), rows)
        session.execute(insert(Thumbnail), thumbs)
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="review-bench-"))
    url = f"sqlite:///{work / 'app.sqlite'}"
    os.environ.update(
        TAGGING_DATABASE_URL=url,
        TAGGING_DATA_DIR=str(work),
        TAGGING_ML_URL="http://127.0.0.1:9",
        TAGGING_ML_TOKEN="bench-token-unused",  # noqa: S106 - no ML server is called
    )
    print(f"seeding {args.items:,} items with thumbnails…", flush=True)
    seed(url, args.items)

    import streamlit as st
    from PIL import JpegImagePlugin
    from streamlit.testing.v1 import AppTest

    from db.accounts import Actor
    from db.models import Role

    decodes = 0
    original_load = JpegImagePlugin.JpegImageFile.load

    def counting_load(self):
        nonlocal decodes
        decodes += 1
        return original_load(self)

    JpegImagePlugin.JpegImageFile.load = counting_load  # type: ignore[method-assign]

    first, page_change, filter_change, rerun = [], [], [], []
    rerun_decodes = 0
    for _ in range(args.repeat):
        st.cache_data.clear()
        st.cache_resource.clear()
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
        at.session_state["actor"] = Actor("bench", Role.ANALYST)
        at.run()  # home page, warms the engine
        at.switch_page("views/review.py")
        started = time.perf_counter()
        at.run()
        first.append(time.perf_counter() - started)
        assert not at.exception, at.exception

        decodes = 0
        started = time.perf_counter()
        at.run()
        rerun.append(time.perf_counter() - started)
        rerun_decodes += decodes

        page = next(n for n in at.number_input if n.label == "Page")
        page.set_value(7)
        started = time.perf_counter()
        at.run()
        page_change.append(time.perf_counter() - started)

        type_filter = next(m for m in at.multiselect if m.label == "Image Type")
        type_filter.set_value(["Stock"])
        started = time.perf_counter()
        at.run()
        filter_change.append(time.perf_counter() - started)
        tiles = [s for s in at.selectbox if str(s.key).startswith("type-")]
        assert tiles and {s.value for s in tiles} == {"Stock"}

    def ms(values: list[float]) -> str:
        return f"{statistics.median(values) * 1000:7.0f} ms (min {min(values) * 1000:.0f})"

    print(f"\nReview page, {args.items:,}-item sitemap, 24 tiles a page, median of {args.repeat}:")
    print(f"  first render (cold query cache)   {ms(first)}   target < 1000 ms")
    print(f"  rerun, nothing changed            {ms(rerun)}")
    print(f"  change of page                    {ms(page_change)}   target < 300 ms")
    print(f"  change of filter (type = Stock)   {ms(filter_change)}   target < 300 ms")
    print(f"  JPEG decodes during reruns        {rerun_decodes}   (thumbnails are sent as stored)")


if __name__ == "__main__":
    main()
