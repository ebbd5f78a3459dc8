"""How fast the Misclassification page's queries are on a big history, on SQLite and PostgreSQL.

Seeds 1,000,000 sitemap items (25 advertisers scraped daily for 8 weeks, an Image Type model
promotion and a color model update on the way, two ML outages) and 50,000 manual fixes (some of
them reverted later) into

* a fresh SQLite file (``executemany`` in chunks of 20,000 rows), and
* a fresh PostgreSQL database ``tagdesk_bench_<random>`` created on the server of
  ``TAGGING_TEST_POSTGRES_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``)
  with ``COPY``, and dropped at the end,

then prints the time of each chart query of :mod:`db.charts` on both (median of 5 runs after one
warm-up, over the whole 8 weeks and over one advertiser), and the page's render time: AppTest runs
``views/charts.py`` against the seeded SQLite file with the query cache empty.

Targets: every chart query under 300 ms on both databases, the whole page under 2 s.

Usage::

    .venv/bin/python bench/charts_bench.py [--items N] [--fixes N] [--no-postgres] [--keep]

:func:`seed_sqlite` and :func:`seed_postgres` are also what a demo database for the page can be
made with (``--items 40000 --fixes 3000 --keep`` keeps the SQLite file).
"""

from __future__ import annotations

import argparse
import io
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import common

from db.charts import (
    ChartFilter,
    advertiser_rates,
    chart_options,
    confusion,
    confusion_images,
    correction_rate,
    ml_failures,
    model_versions,
    most_fixed_images,
    period_rates,
)
from db.engine import make_engine, make_session_factory, migrate
from db.vocab import COLORS

DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TARGET_QUERY_MS = 300.0
TARGET_PAGE_S = 2.0
CHUNK = 20_000
RUNS = 5

TYPE_VERSIONS = (("itype-2026.01", 0), ("itype-2026.02", 35))
"""(version, first day): the Image Type model is promoted on day 35."""
COLOR_VERSIONS = (("vendor-3.1", 0), ("vendor-3.2", 21))
OUTAGES = {(17, a) for a in range(4)} | {(40, 7)}
"""(day, advertiser) scrapes during an ML outage: every item is an ML failure."""


# --- the synthetic history ---------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """How big the seeded history is."""

    items: int = 1_000_000
    fixes: int = 50_000
    advertisers: int = 25
    days: int = 56
    seed: int = 5

    @property
    def first_day(self) -> date:
        # The history ends yesterday, so that "the last 8 weeks" covers all of it.
        return datetime.now(UTC).date() - timedelta(days=self.days)


@dataclass
class History:
    """The generated history, streamed: scrapes and fixes in memory, items day by day."""

    shape: Shape
    sizes: list[int]
    """Images per scrape of each advertiser."""
    names: list[str]
    scrapes: list[tuple[Any, ...]]
    first_item_id: dict[tuple[int, int], int]
    """(day, advertiser) → id of the scrape's first item."""
    fixes: list[tuple[Any, ...]]
    keys: list[str]
    """Every image key that got a fix (for the thumbnails)."""


SCRAPE_COLUMNS = (
    "id",
    "advertiser_id",
    "started_at",
    "finished_at",
    "status",
    "trigger",
    "item_count",
    "cached_count",
    "classified_count",
    "failed_count",
    "ml_failure_count",
    "expected_items",
    "seconds",
)
ITEM_COLUMNS = (
    "id",
    "scrape_id",
    "advertiser_id",
    "position",
    "page_url",
    "image_url",
    "title",
    "image_key",
    "ml_image_type",
    "ml_color",
    "image_type",
    "color",
    "status",
    "cached",
    "model_version",
    "color_model_version",
)
FIX_COLUMNS = (
    "id",
    "image_key",
    "image_url",
    "advertiser_id",
    "sitemap_item_id",
    "field",
    "old_value",
    "new_value",
    "user",
    "source",
    "created_at",
    "sync_status",
    "sync_attempts",
)


def _key(advertiser: int, day: int, position: int) -> str:
    # Each vehicle image is replaced about once a month (staggered): new keys over time.
    generation = (day + position % 30) // 30
    return f"{advertiser + 1:08x}{generation:08x}{position:016x}"


def _ml_values(advertiser: int, day: int, position: int) -> tuple[str, str | None]:
    generation = (day + position % 30) // 30
    h = (advertiser * 7919 + position * 104729 + generation * 1299709) % 1000
    image_type = "Dealer" if h < 700 else "Stock" if h < 920 else "Placeholder"
    color = None if h % 37 == 0 else COLORS[(h * 31) % len(COLORS)]
    return image_type, color


def _version(versions: tuple[tuple[str, int], ...], day: int) -> str:
    return next(name for name, first in reversed(versions) if day >= first)


def _status(advertiser: int, day: int, position: int) -> str:
    if (day, advertiser) in OUTAGES:
        return "ml_failure"
    h = (advertiser * 31 + position * 17 + day * 7) % 1000
    if h < 3:
        return "ml_failure"
    if h < 12:
        return "error"
    return "ok"


def build_history(shape: Shape) -> History:
    """Scrapes and fixes (items are generated per day by :func:`item_rows`)."""
    rnd = random.Random(shape.seed)
    weights = [rnd.uniform(0.3, 2.5) for _ in range(shape.advertisers)]
    per_day = shape.items // shape.days
    sizes = [max(1, int(per_day * w / sum(weights))) for w in weights]
    sizes[0] += per_day - sum(sizes)
    remainder = shape.items - per_day * shape.days
    names = [f"Bench Motors {a + 1:02d}" for a in range(shape.advertisers)]

    scrapes, first_item_id = [], {}
    next_item = 1
    for day in range(shape.days):
        midnight = datetime.combine(shape.first_day + timedelta(days=day), datetime.min.time(), UTC)
        for advertiser in range(shape.advertisers):
            size = sizes[advertiser] + (
                remainder if (day, advertiser) == (shape.days - 1, 0) else 0
            )
            statuses = [_status(advertiser, day, p) for p in range(size)]
            failed = sum(s != "ok" for s in statuses)
            ml_failed = statuses.count("ml_failure")
            cached = sum(
                1
                for p, s in enumerate(statuses)
                if s == "ok" and day > 0 and (day + p % 30) % 30 != 0
            )
            started = midnight + timedelta(hours=2, minutes=2 * advertiser)
            scrape_id = len(scrapes) + 1
            scrapes.append(
                (
                    scrape_id,
                    advertiser + 1,
                    started,
                    started + timedelta(seconds=size / 300),
                    "completed_with_errors" if failed else "succeeded",
                    "schedule",
                    size,
                    cached,
                    size - failed - cached,
                    failed,
                    ml_failed,
                    size,
                    size / 300,
                )
            )
            first_item_id[(day, advertiser)] = next_item
            next_item += size

    fixes = _fix_rows(shape, rnd, sizes, names, first_item_id)
    keys = sorted({row[1] for row in fixes})
    return History(shape, sizes, names, scrapes, first_item_id, fixes, keys)


def _fix_rows(
    shape: Shape,
    rnd: random.Random,
    sizes: list[int],
    names: list[str],
    first_item_id: dict[tuple[int, int], int],
) -> list[tuple[Any, ...]]:
    """Fixes with a realistic shape: the rate drops after each model update; a few advertisers
    fix much more than others, one of them more and more; ~8% of fixes are reverted later."""
    appetite = [rnd.choice((0.3, 0.6, 1.0, 1.0, 1.5, 3.0)) for _ in sizes]
    appetite[4] = 4.0  # A noisy one.
    confusions = {
        "Dealer": (("Stock", 0.8), ("Placeholder", 0.2)),
        "Stock": (("Dealer", 0.9), ("Placeholder", 0.1)),
        "Placeholder": (("Dealer", 0.6), ("Stock", 0.4)),
    }
    events: list[tuple[datetime, int, int, int, str, str, str, str]] = []
    current: dict[tuple[str, str], str | None] = {}
    day_weights = []
    for day in range(shape.days):
        type_w = 1.0 if day < TYPE_VERSIONS[1][1] else 0.5
        color_w = 0.8 if day < COLOR_VERSIONS[1][1] else 0.55
        day_weights.append((type_w, color_w))
    advertiser_weights = [s * w for s, w in zip(sizes, appetite, strict=True)]
    first_day = shape.first_day
    planned = shape.fixes * 20
    while len(events) < shape.fixes and planned > 0:
        planned -= 1
        day = rnd.choices(range(shape.days), weights=[t + c for t, c in day_weights])[0]
        advertiser = rnd.choices(range(len(sizes)), weights=advertiser_weights)[0]
        if advertiser == 9 and day < shape.days // 2 and rnd.random() < 0.7:
            continue  # Advertiser 10 fixes much more in the second half: a mover.
        position = rnd.randrange(sizes[advertiser])
        if _status(advertiser, day, position) != "ok":
            continue
        type_w, color_w = day_weights[day]
        field = "image_type" if rnd.random() < type_w / (type_w + color_w) else "color"
        key = _key(advertiser, day, position)
        ml_type, ml_color = _ml_values(advertiser, day, position)
        old = current.get((key, field), ml_type if field == "image_type" else ml_color)
        if field == "image_type":
            choices = confusions[old or "Dealer"]
            new = rnd.choices([c for c, _ in choices], weights=[w for _, w in choices])[0]
        else:
            new = rnd.choice([c for c in COLORS if c != old])
        current[(key, field)] = new
        source = rnd.choices(["analyst", "advertiser", "carry_over"], weights=[70, 25, 5])[0]
        user = (
            f"advertiser:{names[advertiser]}"
            if source == "advertiser"
            else rnd.choice(["alice", "bob", "chen", "dana"])
        )
        midnight = datetime.combine(first_day + timedelta(days=day), datetime.min.time(), UTC)
        when = midnight + timedelta(seconds=rnd.randrange(8 * 3600, 20 * 3600))
        item_id = first_item_id[(day, advertiser)] + position
        events.append(
            (when, advertiser, item_id, position, key, field, str(old), new, user, source)
        )
        if rnd.random() < 0.08 and len(events) < shape.fixes:
            later = when + timedelta(hours=rnd.randrange(1, 72))
            if later.date() < datetime.now(UTC).date():
                current[(key, field)] = old
                events.append(
                    (
                        later,
                        advertiser,
                        item_id,
                        position,
                        key,
                        field,
                        new,
                        str(old),
                        "bob",
                        "analyst",
                    )
                )
    events.sort(key=lambda e: e[0])
    rows = []
    for fix_id, (when, advertiser, item_id, _, key, field, old, new, user, source) in enumerate(
        events, start=1
    ):
        rows.append(
            (
                fix_id,
                key,
                f"https://cdn{advertiser + 1}.example/{key}.jpg",
                advertiser + 1,
                item_id,
                field,
                None if old == "None" else old,
                new,
                user,
                source,
                when,
                "synced",
                1,
            )
        )
    return rows


def item_rows(history: History) -> Iterator[list[tuple[Any, ...]]]:
    """The sitemap items, one scrape after another, in chunks of about :data:`CHUNK` rows."""
    chunk: list[tuple[Any, ...]] = []
    shape = history.shape
    for scrape in history.scrapes:
        scrape_id, advertiser_id, started = scrape[0], scrape[1], scrape[2]
        advertiser = advertiser_id - 1
        day = (started.date() - shape.first_day).days
        item_id = history.first_item_id[(day, advertiser)]
        type_version = _version(TYPE_VERSIONS, day)
        color_version = _version(COLOR_VERSIONS, day)
        for position in range(scrape[6]):
            status = _status(advertiser, day, position)
            key = _key(advertiser, day, position)
            ml_type, ml_color = _ml_values(advertiser, day, position)
            ok = status == "ok"
            if not ok:
                ml_type, ml_color = "Placeholder", None
            chunk.append(
                (
                    item_id + position,
                    scrape_id,
                    advertiser_id,
                    position,
                    f"https://dealer{advertiser_id}.example/vehicles/{position}",
                    f"https://cdn{advertiser_id}.example/{key}.jpg",
                    f"Vehicle {position}",
                    key if status != "error" else None,
                    ml_type,
                    ml_color,
                    ml_type,
                    ml_color,
                    status,
                    ok and day > 0 and (day + position % 30) % 30 != 0,
                    type_version if ok else None,
                    color_version if ok else None,
                )
            )
            if len(chunk) >= CHUNK:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def thumbnail_jpeg(text: str = "", color: str = "#8b949e") -> bytes:
    """A small JPEG (what the scrape stores is ~3 KB; this one is smaller)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (96, 72), color)
    if text:
        ImageDraw.Draw(image).text((4, 4), text, fill="white")
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=70)
    return buffer.getvalue()


# --- loading -----------------------------------------------------------------------------------


def _sqlite_value(value: Any) -> Any:
    # SQLAlchemy's own SQLite text format for DateTime, so that reads through it parse.
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


def seed_sqlite(path: Path, history: History, thumbnails: Callable[[str], bytes]) -> str:
    """A new migrated SQLite file at ``path`` with ``history``; its URL."""
    url = common.fresh_app_db(path)
    engine = make_engine(url)
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("PRAGMA synchronous=OFF")
        cursor.execute("BEGIN")
        cursor.executemany(
            "INSERT INTO advertisers (id, name, sitemap_url, color_from_feed, created_at) "
            "VALUES (?, ?, ?, 0, ?)",
            [
                (
                    i + 1,
                    name,
                    f"https://dealer{i + 1}.example/sitemap.xml",
                    _sqlite_value(_start(history)),
                )
                for i, name in enumerate(history.names)
            ],
        )
        _sqlite_insert(cursor, "scrapes", SCRAPE_COLUMNS, history.scrapes)
        for chunk in item_rows(history):
            _sqlite_insert(cursor, "sitemap_items", ITEM_COLUMNS, chunk)
        for start in range(0, len(history.fixes), CHUNK):
            _sqlite_insert(
                cursor, "manual_fixes", FIX_COLUMNS, history.fixes[start : start + CHUNK]
            )
        cursor.executemany(
            "INSERT INTO thumbnails (image_key, jpeg) VALUES (?, ?)",
            [(key, thumbnails(key)) for key in history.keys],
        )
        cursor.execute("COMMIT")
        cursor.close()
    finally:
        raw.close()
        engine.dispose()
    return url


def _sqlite_insert(cursor: Any, table: str, columns: tuple[str, ...], rows: list[Any]) -> None:
    names = ", ".join(f'"{c}"' for c in columns)
    marks = ", ".join("?" for _ in columns)
    cursor.executemany(
        f"INSERT INTO {table} ({names}) VALUES ({marks})",  # noqa: S608 - our own constants
        [tuple(_sqlite_value(v) for v in row) for row in rows],
    )


def _start(history: History) -> datetime:
    return datetime.combine(history.shape.first_day, datetime.min.time(), UTC)


def seed_postgres(url: str, history: History, thumbnails: Callable[[str], bytes]) -> None:
    """Load ``history`` into the migrated, empty PostgreSQL database at ``url`` with COPY."""
    engine = make_engine(url)
    raw = engine.raw_connection()
    try:
        with raw.cursor() as cursor:
            _copy(
                cursor,
                "advertisers",
                ("id", "name", "sitemap_url", "color_from_feed", "created_at"),
                [
                    (
                        i + 1,
                        name,
                        f"https://dealer{i + 1}.example/sitemap.xml",
                        False,
                        _start(history),
                    )
                    for i, name in enumerate(history.names)
                ],
            )
            _copy(cursor, "scrapes", SCRAPE_COLUMNS, history.scrapes)
            with cursor.copy(f"COPY sitemap_items ({', '.join(ITEM_COLUMNS)}) FROM STDIN") as copy:
                for chunk in item_rows(history):
                    for row in chunk:
                        copy.write_row(row)
            _copy(cursor, "manual_fixes", FIX_COLUMNS, history.fixes)
            _copy(
                cursor,
                "thumbnails",
                ("image_key", "jpeg"),
                [(key, thumbnails(key)) for key in history.keys],
            )
            # Explicit ids were loaded: move each sequence past them, as inserts would have.
            for table in ("advertisers", "scrapes", "sitemap_items", "manual_fixes"):
                cursor.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "  # noqa: S608
                    f"(SELECT max(id) FROM {table}))"
                )
        raw.commit()
        # What autovacuum would do soon after a load this size: statistics and visibility map.
        raw.driver_connection.autocommit = True  # type: ignore[attr-defined]
        with raw.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
    finally:
        raw.close()
        engine.dispose()


def _copy(cursor: Any, table: str, columns: tuple[str, ...], rows: list[Any]) -> None:
    quoted = ", ".join(f'"{c}"' for c in columns)
    with cursor.copy(f"COPY {table} ({quoted}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


# --- measuring ---------------------------------------------------------------------------------


def chart_queries(
    shape: Shape, advertiser_id: int
) -> list[tuple[str, str, Callable[[Any, ChartFilter], object]]]:
    """(chart, query, call) of every query the page makes, in the page's order."""
    top_cell: dict[str, tuple[str, str]] = {}

    def cells(session: Any, f: ChartFilter, field: str) -> object:
        found = confusion(session, f, field)
        off = [c for c in found if c.ml_value != c.fixed_value] or found
        if off:
            best = max(off, key=lambda c: c.images)
            top_cell[field] = (best.ml_value, best.fixed_value)
        return found

    def images(session: Any, f: ChartFilter) -> object:
        ml, fixed = top_cell.get("image_type", ("Dealer", "Stock"))
        return confusion_images(session, f, "image_type", ml, fixed)

    return [
        ("filters", "chart_options", lambda s, f: chart_options(s)),
        ("1 correction rate", "period_rates", period_rates),
        ("1 correction rate", "correction_rate week", lambda s, f: correction_rate(s, f, "week")),
        ("1 correction rate", "correction_rate day", lambda s, f: correction_rate(s, f, "day")),
        ("2 confusion", "confusion image_type", lambda s, f: cells(s, f, "image_type")),
        ("2 confusion", "confusion color", lambda s, f: cells(s, f, "color")),
        ("2 confusion", "confusion_images", images),
        ("3 by advertiser", "advertiser_rates", advertiser_rates),
        (
            "4 model version",
            "model_versions image_type",
            lambda s, f: model_versions(s, f, "image_type"),
        ),
        ("4 model version", "model_versions color", lambda s, f: model_versions(s, f, "color")),
        ("5 ML failures", "ml_failures", ml_failures),
        ("6 most fixed", "most_fixed_images", most_fixed_images),
    ]


def measure(url: str, shape: Shape) -> list[tuple[str, str, str, float, float]]:
    """(chart, query, scope, median ms, max ms) of each query, all 8 weeks and one advertiser."""
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    today = datetime.now(UTC).date()
    everything = ChartFilter(today - timedelta(days=shape.days), today - timedelta(days=1))
    one = ChartFilter(everything.date_from, everything.date_to, advertiser_ids=(5,))
    results = []
    try:
        for scope, chart_filter in (("8 weeks, all", everything), ("8 weeks, 1 advertiser", one)):
            for chart, name, call in chart_queries(shape, 5):
                times = []
                with sessions() as session:
                    call(session, chart_filter)  # warm-up: the page's 2nd visitor, not a cold disk
                    for _ in range(RUNS):
                        started = time.perf_counter()
                        call(session, chart_filter)
                        times.append((time.perf_counter() - started) * 1000)
                results.append((chart, name, scope, statistics.median(times), max(times)))
    finally:
        engine.dispose()
    return results


def page_times(url: str, data_dir: Path, shape: Shape) -> list[tuple[str, float]]:
    """Seconds of AppTest runs of the page (default period: the last 4 weeks).

    The first run of a process (connects, migrates), one with the query cache cleared, one
    cached (a rerun within the cache's 30 s), and one after picking the whole 8 weeks (a new
    filter: every query runs again).
    """
    import streamlit as st
    import streamlit.logger
    from streamlit.testing.v1 import AppTest

    from db.accounts import Actor
    from db.models import Role

    os.environ.update(
        {
            "TAGGING_DATABASE_URL": url,
            "TAGGING_DATA_DIR": str(data_dir),
            "TAGGING_ML_URL": "http://127.0.0.1:9",
            "TAGGING_ML_TOKEN": "unused",
        }
    )
    # AppTest runs without a server: Streamlit warns about it on every run.
    streamlit.logger.set_log_level("error")
    st.cache_resource.clear()
    st.cache_data.clear()
    page = str(common.ROOT / "views" / "charts.py")
    times = []
    at = None
    for label, clear in (
        ("first run (new process: connects, migrates)", False),
        ("query cache cleared", True),
        ("cached (a rerun within 30 s)", False),
    ):
        if clear:
            st.cache_data.clear()
        at = AppTest.from_file(page, default_timeout=120)
        at.session_state["actor"] = Actor("manager", Role.MANAGER)
        started = time.perf_counter()
        at.run()
        times.append((label, time.perf_counter() - started))
        if at.exception:
            raise SystemExit(f"the page failed: {at.exception[0].message}")
    assert at is not None
    today = datetime.now(UTC).date()
    period = at.date_input[0].set_value((today - timedelta(days=shape.days), today))
    started = time.perf_counter()
    period.run()
    times.append(("8 weeks picked (a new filter: fresh queries)", time.perf_counter() - started))
    if at.exception:
        raise SystemExit(f"the page failed: {at.exception[0].message}")
    return times


# --- main --------------------------------------------------------------------------------------


def _ok(value: float, target: float) -> str:
    return "yes" if value < target else "NO"


def _report(label: str, results: list[tuple[str, str, str, float, float]]) -> None:
    common.print_table(
        f"{label}: chart queries, median and max of {RUNS} runs "
        f"(ms; target < {TARGET_QUERY_MS:.0f})",
        ["chart", "query", "scope", "median ms", "max ms", "ok"],
        [
            (chart, name, scope, median, worst, _ok(worst, TARGET_QUERY_MS))
            for chart, name, scope, median, worst in results
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=Shape.items)
    parser.add_argument("--fixes", type=int, default=Shape.fixes)
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--postgres-url", default=os.environ.get("TAGGING_TEST_POSTGRES_URL"))
    parser.add_argument("--keep", type=Path, help="keep the SQLite database at this path")
    args = parser.parse_args()
    shape = Shape(items=args.items, fixes=args.fixes)
    print(common.machine())

    started = time.perf_counter()
    history = build_history(shape)
    print(
        f"history: {len(history.scrapes):,} scrapes, {shape.items:,} items, "
        f"{len(history.fixes):,} fixes, {len(history.keys):,} fixed images "
        f"({time.perf_counter() - started:.1f} s to generate)",
        flush=True,
    )
    jpeg = thumbnail_jpeg()

    with tempfile.TemporaryDirectory(prefix="tagdesk-charts-bench-") as work:
        path = args.keep or Path(work) / "charts.sqlite"
        started = time.perf_counter()
        sqlite_url = seed_sqlite(path, history, lambda _: jpeg)
        print(f"SQLite seeded in {time.perf_counter() - started:.1f} s: {path}", flush=True)
        sqlite_results = measure(sqlite_url, shape)
        _report("SQLite", sqlite_results)

        common.print_table(
            f"Page render, AppTest against the SQLite file (s; target < {TARGET_PAGE_S:.0f})",
            ["run", "seconds", "ok"],
            [
                (label, seconds, "-" if label.startswith("first") else _ok(seconds, TARGET_PAGE_S))
                for label, seconds in page_times(sqlite_url, Path(work), shape)
            ],
        )

    if args.no_postgres:
        return
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    base = args.postgres_url or DEFAULT_POSTGRES
    name = f"tagdesk_bench_{uuid.uuid4().hex[:10]}"
    admin = make_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # Reported, and PostgreSQL skipped, as the tests do.
        admin.dispose()
        print(f"\nPostgreSQL skipped: {base} is unreachable ({exc})", file=sys.stderr)
        return
    url = make_url(base).set(database=name).render_as_string(hide_password=False)
    try:
        migrate(url)
        started = time.perf_counter()
        seed_postgres(url, history, lambda _: jpeg)
        print(f"\nPostgreSQL seeded in {time.perf_counter() - started:.1f} s: {name}", flush=True)
        _report("PostgreSQL", measure(url, shape))
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        print(f"dropped {name}")


if __name__ == "__main__":
    main()
