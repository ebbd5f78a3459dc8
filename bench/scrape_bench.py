"""Scrape throughput end to end over real HTTP on loopback: CDN → scrape → ML server → database.

Measured side by side in one run, against real ``python -m tagging cdn`` / ``serve`` subprocesses:

1. a cold scrape of every demo advertiser (the ML server starts on a fresh, empty cache file;
   a new SQLite app database), then a re-scrape of the same unchanged sitemaps: each sitemap
   answers 304 to its ETag, and the items of images still fresh by the CDN's ``Cache-Control:
   max-age`` are copied in one ``INSERT ... SELECT`` (the failed ones are asked again).
   Seconds and images/s of each, their ratio side by side, and where the wall time goes. Both
   run as ``run_scrapes`` (one after another, one findings refresh at the end). The ML server
   runs with ``TAGGING_ML_PROFILE_DIR`` (:mod:`tagging.server.stages`): the CPU of each of its
   pipeline stages per image is printed beside the CDN's and the scrape's;
2. the single-core decode rate of the same demo images (``decode_image`` in draft mode as the ML
   server calls it, one thread of this process), measured in the same run, and the cold scrape's
   images/s as a share of it;
3. a large scrape (50,000 items, ``--quick``: 5,000) of a synthetic sitemap served by a small
   stdlib server in this process, whose image URLs point at the demo CDN's images, each made
   distinct by a query string (``?n=12345``, which the demo CDN ignores when it looks an image
   up, so every URL gets the real ETag/Last-Modified/Content-Length). That scrape runs in a child
   process (``python -m tagging scrape``) whose peak RSS (``ru_maxrss``, taken by a small wrapper
   process, see :data:`RUSAGE_WRAPPER`) is reported, next to the ML server's own peak
   (``VmHWM``) and the throughput. A 1,000-item scrape first gives the fixed part of the peak.

Usage::

    .venv/bin/python bench/scrape_bench.py [--quick] [--large N] [--skip-large] [--ml-workers N]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from xml.sax.saxutils import escape

import common

from tagging.config import Settings
from tagging.ingest.scrape import ScrapeConfig
from tagging.server.stages import PROFILE_DIR_ENV, read_profiles

TARGET_COLD = 500.0
"""Images/s a cold scrape should reach (CDN, ML server and scrape sharing 2 cores)."""
TARGET_CACHED_RATIO = 20.0
"""How many times faster than cold a re-scrape of unchanged sitemaps should be."""
TARGET_PEAK_RSS = 1024**3
IMAGES_PER_PAGE = 5
LARGE_ADVERTISER = "Bench Large Sitemap"
BASELINE_ADVERTISER = "Bench Baseline Sitemap"
BASELINE_ITEMS = 1_000


@dataclass
class ScrapeRun:
    label: str
    items: int
    classified: int
    cached: int
    failed: int
    ml_failures: int
    copied: int
    seconds: float
    phases: dict[str, float]
    ml_calls: int = 0
    ml_call_seconds: float = 0.0
    ml_stages: dict[str, float] = field(default_factory=dict)
    """CPU seconds of each ML server pipeline stage during the run (all workers)."""
    cpu: dict[str, float] | None = None
    """CPU seconds each process used during the run."""
    background: float = 0.0
    """Cores other processes on the machine used meanwhile, on average."""

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds else 0.0


# --- the demo: cold scrape, then cached re-scrape ------------------------------------------------


def warm_up(settings: Settings, cdn: common.Service, data: common.BenchData) -> None:
    """Two classify calls on URLs no scrape lists (``?warmup=``), then the same again (cached).

    This loads torch's kernels, the thread pools and the connection pools of both sides, so the
    measured scrape does not pay one-off start-up costs; the demo's own URLs stay uncached.
    """
    from tagging.server.client import MLClient

    paths = [p for p, img in sorted(data.inventory.images.items()) if img.kind == "ok"][:128]
    urls = [f"{cdn.url}{p}?warmup={i}" for i, p in enumerate(paths)]
    ml = MLClient.from_settings(settings)
    try:
        for _ in range(2):
            for start in range(0, len(urls), 64):
                ml.classify(urls[start : start + 64])
    finally:
        ml.client.close()


def scrape_advertisers(
    label: str,
    settings: Settings,
    names: list[str],
    services: dict[str, common.Service],
    max_wait: float,
    config: ScrapeConfig,
) -> ScrapeRun:
    """Scrape ``names`` one after another in this process (``run_scrapes``: one findings
    refresh for them all at the end).

    The main thread's time is split into checking or reading the sitemaps, copying the items
    of an unchanged one, writing batches to the app database, refreshing the findings, and the
    rest, which is mostly waiting for the ML server (four calls stay in flight). Sub-sitemaps
    are parsed as their items are taken, so that part of "sitemap" counts as waiting.
    """
    import tagging.ingest.scrape as scrape_module
    from db.engine import make_engine, make_session_factory
    from tagging.ingest.fetch import client_from_settings
    from tagging.ingest.scrape import run_scrapes
    from tagging.server.client import MLClient

    watch = common.Stopwatch()
    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    client = client_from_settings(settings)
    ml = MLClient.from_settings(settings)
    # functools.wraps keeps the signature: the scrape looks for a known_keys parameter there.
    ml.classify = functools.wraps(ml.classify)(watch.wrap("ml_call", ml.classify))  # type: ignore[method-assign]
    wrapped = (
        "read_sitemap",
        "unchanged_documents",
        "copy_fresh_items",
        "_store_batch",
        "after_scrapes",
        "close_scrape",
    )
    originals = {name: getattr(scrape_module, name) for name in wrapped}
    totals = dict.fromkeys(("items", "classified", "cached", "failed", "ml_failures", "copied"), 0)
    try:
        for name, function in originals.items():
            setattr(scrape_module, name, watch.wrap(name, function))
        common.wait_for_quiet(max_wait)
        load = common.LoadMeter()
        cpu_before = {name: service.cpu_seconds() for name, service in services.items()}
        cpu_before["scrape (this process)"] = time.process_time()
        started = time.perf_counter()
        with load, common.progress_bar(f"{label}: {len(names)} advertisers") as bar:
            done: dict[str, tuple[int, int]] = {}

            def progress(name: str) -> Callable[[int, int], None]:
                def update(items: int, total: int) -> None:
                    done[name] = (items, total)
                    bar(sum(d for d, _ in done.values()), sum(t for _, t in done.values()))

                return update

            summaries = run_scrapes(
                sessions, names, ml=ml, client=client, config=config, progress=progress
            )
        seconds = time.perf_counter() - started
        for summary in summaries:
            for key in totals:
                totals[key] += getattr(summary, key)
            if summary.status == "failed":
                raise SystemExit(f"the scrape of {summary.advertiser} failed: {summary.problems}")
        cpu = {name: service.cpu_seconds() for name, service in services.items()}
        cpu["scrape (this process)"] = time.process_time()
        cpu = {name: cpu[name] - cpu_before[name] for name in cpu}
    finally:
        for name, function in originals.items():
            setattr(scrape_module, name, function)
        client.close()
        ml.client.close()
        engine.dispose()
    main_thread = sum(watch.seconds.get(k, 0.0) for k in originals)
    phases = {
        "sitemap: read, or checked unchanged (304)": watch.seconds.get("read_sitemap", 0.0)
        + watch.seconds.get("unchanged_documents", 0.0),
        "copy of fresh items (INSERT ... SELECT)": watch.seconds.get("copy_fresh_items", 0.0),
        "waiting for the ML server, and the rest": max(0.0, seconds - main_thread),
        "app DB writes (batches)": watch.seconds.get("_store_batch", 0.0),
        "findings refresh (once)": watch.seconds.get("after_scrapes", 0.0),
        "scrape bookkeeping": watch.seconds.get("close_scrape", 0.0),
    }
    return ScrapeRun(
        label=label,
        seconds=seconds,
        phases=phases,
        ml_calls=watch.calls.get("ml_call", 0),
        ml_call_seconds=watch.seconds.get("ml_call", 0.0),
        cpu=cpu,
        background=load.background,
        **totals,
    )


# --- the large synthetic sitemap ---------------------------------------------------------------


def large_sitemap(cdn: common.Service, data: common.BenchData, count: int, tag: str) -> bytes:
    """A urlset of ``count`` image items, every URL distinct (``?<tag>=``), cycling the demo images.

    The images are the demo's own mix (the broken files included), 5 per vehicle page.
    """
    paths = sorted(data.inventory.images)
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9" '
        'xmlns:image="http://www.google.com/schemas/sitemap-image/1.1">\n'
    ]
    for page_start in range(0, count, IMAGES_PER_PAGE):
        page = page_start // IMAGES_PER_PAGE
        parts.append(f"<url><loc>{cdn.url}/vehicles/{tag}{page}</loc>")
        for n in range(page_start, min(page_start + IMAGES_PER_PAGE, count)):
            url = escape(f"{cdn.url}{paths[n % len(paths)]}?{tag}={n}")
            parts.append(
                f"<image:image><image:loc>{url}</image:loc>"
                f"<image:title>Vehicle {page}</image:title></image:image>"
            )
        parts.append("</url>\n")
    parts.append("</urlset>\n")
    return "".join(parts).encode()


class SitemapServer(ThreadingHTTPServer):
    """Serves fixed XML documents by path (stdlib only, loopback, from a daemon thread)."""

    daemon_threads = True

    def __init__(self, documents: dict[str, bytes]) -> None:
        self.documents = documents
        super().__init__((common.HOST, 0), _SitemapHandler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True, name="sitemap")

    def url(self, path: str) -> str:
        return f"http://{common.HOST}:{self.server_address[1]}{path}"

    @property
    def host_entry(self) -> str:
        return f"{common.HOST}:{self.server_address[1]}"

    def __enter__(self) -> SitemapServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


class _SitemapHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: SitemapServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        body = self.server.documents.get(self.path.split("?", 1)[0])
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@dataclass
class ChildScrape:
    """A ``python -m tagging scrape`` child process's summary and resource use."""

    items: int
    classified: int
    cached: int
    failed: int
    ml_failures: int
    seconds: float
    """The scrape's own timing (from its summary: sitemap to last batch stored)."""
    wall_seconds: float
    """The child process from start to exit (interpreter start-up and migration included)."""
    peak_rss: int
    """``ru_maxrss`` of the child, bytes."""
    background: float

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds else 0.0


@dataclass
class LargeRun:
    baseline: ChildScrape
    large: ChildScrape
    ml_peak_rss: int | None
    sitemap_bytes: int


RUSAGE_WRAPPER = """
import json, os, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
try:
    _pid, status, usage = os.wait4(child.pid, 0)
except KeyboardInterrupt:
    child.terminate()
    raise
with open(sys.argv[1], "w") as out:
    json.dump({"maxrss_kib": usage.ru_maxrss, "exit": os.waitstatus_to_exitcode(status)}, out)
sys.exit(os.waitstatus_to_exitcode(status))
"""
"""Runs a command and records its ``ru_maxrss``.

Why a wrapper: Linux carries a process's peak RSS across ``exec``, so a child forked straight
from this (large) benchmark process would report at least this process's RSS at the fork. The
wrapper is a small interpreter; the scrape it forks starts from that small footprint.
"""


def child_scrape(
    advertiser: str,
    env: dict[str, str],
    meter: common.LoadMeter,
    max_wait: float,
    rusage_path: Path,
) -> ChildScrape:
    common.wait_for_quiet(max_wait)
    rusage_path.unlink(missing_ok=True)
    command = [sys.executable, "-m", "tagging", "scrape", advertiser, "--json"]
    started = time.perf_counter()
    with meter:
        child = subprocess.Popen(
            [sys.executable, "-c", RUSAGE_WRAPPER, str(rusage_path), *command],
            env=env,
            cwd=common.ROOT,
            stdout=subprocess.PIPE,
        )
        try:
            out, _ = child.communicate()
        except BaseException:
            child.terminate()
            child.wait()
            raise
    wall = time.perf_counter() - started
    try:
        usage = json.loads(rusage_path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"the scrape of {advertiser} left no resource usage") from exc
    try:
        summary = json.loads(out)
    except ValueError as exc:
        raise SystemExit(f"the scrape of {advertiser} printed no summary") from exc
    if usage["exit"] != 0 and (summary.get("status") == "failed" or "error" in summary):
        raise SystemExit(f"the scrape of {advertiser} failed: {summary}")
    return ChildScrape(
        items=summary["items"],
        classified=summary["classified"],
        cached=summary["cached"],
        failed=summary["failed"],
        ml_failures=summary["ml_failures"],
        seconds=summary["seconds"],
        wall_seconds=wall,
        peak_rss=usage["maxrss_kib"] * 1024,  # ru_maxrss is in KiB on Linux
        background=meter.background,
    )


def large_scrape(
    stack: common.Services,
    data: common.BenchData,
    cdn: common.Service,
    token: str,
    count: int,
    max_wait: float,
) -> LargeRun:
    """Scrape a ``count``-item sitemap from a child process, on a fresh ML cache and app DB.

    A 1,000-item scrape runs first in its own child (other URLs, same ML server): its peak RSS
    is the baseline that tells the fixed cost of a scrape process from what grows with items.
    """
    from db.advertisers import add_advertiser
    from db.engine import make_engine, make_session_factory

    documents = {
        "/baseline.xml": large_sitemap(cdn, data, BASELINE_ITEMS, "b"),
        "/large.xml": large_sitemap(cdn, data, count, "n"),
    }
    ml = start_ml(stack, data, cdn, token, f"large-{count}")
    db_url = common.fresh_app_db(data.path("db", f"app-large-{count}.sqlite"))
    with SitemapServer(documents) as sitemap_server:
        settings = common.app_settings(
            data, Path(db_url.removeprefix("sqlite:///")), ml, token, [cdn.host_entry]
        )
        warm_up(settings, cdn, data)
        engine = make_engine(db_url)
        with make_session_factory(engine).begin() as session:
            add_advertiser(session, BASELINE_ADVERTISER, sitemap_server.url("/baseline.xml"))
            add_advertiser(session, LARGE_ADVERTISER, sitemap_server.url("/large.xml"))
        engine.dispose()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TAGGING_")}
        env.update(
            {
                "TAGGING_DATA_DIR": str(data.work / "data"),
                "TAGGING_DATABASE_URL": db_url,
                "TAGGING_ML_URL": ml.url,
                "TAGGING_ML_TOKEN": token,
                # The scrape reads only the sitemap itself; the ML server fetches the images.
                "TAGGING_ALLOWED_HOSTS": sitemap_server.host_entry,
            }
        )
        rusage_path = data.path("logs", "scrape-rusage.json")
        print(f"baseline scrape: {BASELINE_ITEMS:,} items", file=sys.stderr, flush=True)
        baseline = child_scrape(BASELINE_ADVERTISER, env, common.LoadMeter(), max_wait, rusage_path)
        print(f"large scrape: {count:,} items in a child process", file=sys.stderr, flush=True)
        large = child_scrape(LARGE_ADVERTISER, env, common.LoadMeter(), max_wait, rusage_path)
    ml_peak = ml.peak_rss_bytes()
    ml.stop()
    return LargeRun(baseline, large, ml_peak, len(documents["/large.xml"]))


# --- main --------------------------------------------------------------------------------------


def start_ml(
    stack: common.Services,
    data: common.BenchData,
    cdn: common.Service,
    token: str,
    name: str,
    *,
    workers: int | None = None,
    profile_dir: Path | None = None,
) -> common.Service:
    """A new ML server on a fresh, empty cache file (a cold cache).

    Args:
        workers: its uvicorn worker processes (default ``TAGGING_ML_WORKERS``: the cores).
        profile_dir: where it writes its CPU per stage (``TAGGING_ML_PROFILE_DIR``), emptied
            first; None: no profile.
    """
    cache = data.path("caches", f"ml-cache-{name}.sqlite")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{cache}{suffix}").unlink(missing_ok=True)
    overrides = {} if workers is None else {"ml_workers": workers}
    env = common._base_env(
        data.model_data_dir,
        ml_token=token,
        allowed_hosts=(cdn.host_entry,),
        ml_cache_url=f"sqlite:///{cache}",
        **overrides,
    )
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
        for old in profile_dir.glob("ml-*.json"):
            old.unlink()
        env[PROFILE_DIR_ENV] = str(profile_dir)
    port = common.free_port()
    service = stack.start(common._spawn("ml", ["serve", "--port", str(port)], env, data, port))
    common.wait_healthy(service, "/health", 120.0)
    return service


def stage_totals(profile_dir: Path) -> dict[str, float]:
    """CPU seconds per ML server stage so far, summed over its worker processes."""
    totals: dict[str, float] = {}
    for profile in read_profiles(profile_dir):
        stages = profile["stages"]
        assert isinstance(stages, dict)
        for name, seconds in stages.items():
            totals[name] = totals.get(name, 0.0) + float(seconds)
    return totals


@dataclass
class DemoRuns:
    names: list[str]
    config: ScrapeConfig
    rounds: list[tuple[ScrapeRun, ScrapeRun]]
    """(cold, cached) per round, each round on a new ML server with an empty cache."""
    ml_peak_rss: int | None
    decode: DecodeRate | None = None
    """The single-core decode rate of the same images, measured after the scrapes."""

    @property
    def best(self) -> tuple[ScrapeRun, ScrapeRun]:
        """The round with the fastest cold scrape (the least disturbed by other processes)."""
        return max(self.rounds, key=lambda pair: pair[0].rate)


def demo_scrapes(
    stack: common.Services,
    data: common.BenchData,
    cdn: common.Service,
    token: str,
    names: list[str],
    config: ScrapeConfig,
    args: argparse.Namespace,
    rounds: int,
) -> DemoRuns:
    from tagging.demo.setup import register_demo_advertisers

    pairs: list[tuple[ScrapeRun, ScrapeRun]] = []
    ml_peak: int | None = None
    for number in range(1, rounds + 1):
        profile_dir = data.path("profiles", f"demo-{number}", "x").parent
        ml = start_ml(
            stack,
            data,
            cdn,
            token,
            f"demo-{number}",
            workers=args.ml_workers,
            profile_dir=profile_dir,
        )
        db_path = data.path("db", f"app-demo-{number}.sqlite")
        common.fresh_app_db(db_path)
        settings = common.app_settings(data, db_path, ml, token, [cdn.host_entry])
        register_demo_advertisers(settings, data.inventory, cdn.url)
        warm_up(settings, cdn, data)

        services = {"ML server": ml, "CDN": cdn}
        runs: dict[str, ScrapeRun] = {}
        for label in ("cold", "cached"):
            before = stage_totals(profile_dir)
            runs[label] = scrape_advertisers(
                f"{label} #{number}", settings, names, services, args.max_wait, config
            )
            after = stage_totals(profile_dir)
            runs[label].ml_stages = {k: v - before.get(k, 0.0) for k, v in after.items()}
        pairs.append((runs["cold"], runs["cached"]))
        peak = ml.peak_rss_bytes()
        ml_peak = max(ml_peak or 0, peak or 0) or None
        ml.stop()
    return DemoRuns(names, config, pairs, ml_peak)


# --- the single-core decode rate of the same images ---------------------------------------------


@dataclass
class DecodeRate:
    images: int
    """Demo images that decode (the broken ones are left out)."""
    seconds: float
    """Best pass over all of them, one thread."""
    background: float

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


def decode_rate(data: common.BenchData, max_wait: float, passes: int = 3) -> DecodeRate:
    """Decode every demo image the sitemaps list as the ML server does (``decode_image`` with
    ``PipelineConfig.draft_size``), from memory, on one thread of this process: best of
    ``passes`` after a warm-up pass."""
    from tagging.errors import ImageDecodeError
    from tagging.ingest.images import decode_image
    from tagging.server.pipeline import PipelineConfig

    draft = PipelineConfig().draft_size
    bodies = []
    for path in sorted(data.inventory.images):
        body = data.inventory.file_path(path).read_bytes()
        try:
            decode_image(body, draft_size=draft)  # the warm-up pass, and the filter
        except ImageDecodeError:
            continue
        bodies.append(body)
    best = float("inf")
    common.wait_for_quiet(max_wait)
    with common.LoadMeter() as load:
        for _ in range(passes):
            started = time.perf_counter()
            for body in bodies:
                decode_image(body, draft_size=draft)
            best = min(best, time.perf_counter() - started)
    return DecodeRate(len(bodies), best, load.background)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="two advertisers and a 5,000-item large scrape"
    )
    parser.add_argument("--large", type=int, help="items of the large scrape (default 50,000)")
    parser.add_argument("--skip-large", action="store_true", help="only the demo scrapes")
    parser.add_argument("--skip-demo", action="store_true", help="only the large scrape")
    parser.add_argument(
        "--rounds",
        type=int,
        help="cold + cached demo rounds, each on a new ML server (default 3, --quick 1); the "
        "round with the fastest cold scrape is reported in detail",
    )
    parser.add_argument(
        "--in-flight", type=int, help="ScrapeConfig.in_flight for the demo scrapes (default 4)"
    )
    parser.add_argument(
        "--batch-size", type=int, help="ScrapeConfig.batch_size for the demo scrapes (default 64)"
    )
    parser.add_argument(
        "--ml-workers",
        type=int,
        help="uvicorn worker processes of the ML server (default TAGGING_ML_WORKERS: the cores)",
    )
    common.add_common_arguments(parser)
    args = parser.parse_args(argv)
    large_count = args.large or (5_000 if args.quick else 50_000)
    overrides = {"in_flight": args.in_flight, "batch_size": args.batch_size}
    config = ScrapeConfig(**{k: v for k, v in overrides.items() if v is not None})

    data = common.prepare(args.work)
    names = [a.name for a in data.inventory.advertisers]
    if args.quick:
        names = names[:2]
    token = common.new_token()
    print(f"machine: {common.machine()}")
    print(f"model {data.model_version}; demo {data.demo_dir}; work {data.work}", flush=True)

    demo: DemoRuns | None = None
    large: LargeRun | None = None
    with common.Services() as stack:
        cdn = common.start_cdn(stack, data)
        if not args.skip_demo:
            rounds = args.rounds or (1 if args.quick else 3)
            demo = demo_scrapes(stack, data, cdn, token, names, config, args, rounds)
            demo.decode = decode_rate(data, args.max_wait)
        if not args.skip_large:
            large = large_scrape(stack, data, cdn, token, large_count, args.max_wait)

    results: list[list[object]] = []
    if demo is not None:
        results += report_demo(demo)
    if large is not None:
        results += report_large(large)
    common.print_table(
        f"Scrape benchmark · {common.machine()}", ["", "value", "target", ""], results
    )
    return 0


# --- the report --------------------------------------------------------------------------------


def report_demo(demo: DemoRuns) -> list[list[object]]:
    """Print the demo tables; return the summary rows."""
    (cold, cached), config = demo.best, demo.config
    ratio = cached.rate / cold.rate if cold.rate else 0.0
    rows = []
    for run in (run for pair in demo.rounds for run in pair):
        rows.append(
            [
                run.label,
                run.items,
                run.classified,
                run.cached,
                run.copied,
                run.failed,
                run.seconds,
                run.rate,
                run.ml_calls,
                run.ml_call_seconds / run.ml_calls if run.ml_calls else 0.0,
                f"{run.background:.2f}",
            ]
        )
    common.print_table(
        f"Demo scrape, {len(demo.names)} advertisers ({', '.join(demo.names)}); "
        f"batch {config.batch_size}, {config.in_flight} in flight",
        ["run", "items", "classified", "cached", "copied", "failed", "seconds", "images/s",
         "ML calls", "s/call", "other load"],
        rows,
    )  # fmt: skip
    common.print_table(
        "Cold vs cached, side by side (each round: a new ML server, the same run)",
        ["round", "cold s", "cold img/s", "cached s", "cached img/s", "cached / cold",
         "other load cold/cached"],
        [[f"#{number}", c.seconds, c.rate, r.seconds, r.rate,
          f"{r.rate / c.rate:.1f}x" if c.rate else "-", f"{c.background:.2f}/{r.background:.2f}"]
         for number, (c, r) in enumerate(demo.rounds, 1)],
    )  # fmt: skip
    common.print_table(
        f"Where the scrape's wall time goes (main thread; {cold.label} and {cached.label})",
        ["phase", "cold s", "cold %", "cached s", "cached %"],
        [
            [
                phase,
                cold.phases[phase],
                f"{cold.phases[phase] / cold.seconds:.0%}",
                cached.phases[phase],
                f"{cached.phases[phase] / cached.seconds:.0%}",
            ]
            for phase in cold.phases
        ],
    )
    common.print_table(
        f"CPU used per process ({cold.label} and {cached.label}; 2 cores give 2 CPU-s per s)",
        ["process", "cold CPU s", "cold ms/img", "cached CPU s", "cached ms/img"],
        _cpu_rows(cold, cached),
    )
    common.print_table(
        f"Where the CPU per image goes ({cold.label}; ms per sitemap item; ML server stages: "
        "thread CPU time, TAGGING_ML_PROFILE_DIR)",
        ["process: part", "CPU s", "ms/img", "share"],
        _profile_rows(cold),
    )
    decode_rows: list[list[object]] = []
    if demo.decode is not None:
        decode = demo.decode
        decode_rows = [
            [f"single-core decode of the same images ({decode.images:,}; draft, 1 thread)",
             f"{decode.rate:,.0f} images/s", "", f"other load {decode.background:.2f}"],
            ["cold scrape / single-core decode", f"{cold.rate / decode.rate:.2f}", "", ""],
        ]  # fmt: skip
    median_cold = statistics.median(pair[0].rate for pair in demo.rounds)
    median_cached = statistics.median(pair[1].rate for pair in demo.rounds)
    median_ratio = statistics.median(
        pair[1].rate / pair[0].rate for pair in demo.rounds if pair[0].rate
    )
    return [
        ["cold scrape images/s (best round)", cold.rate, f">= {TARGET_COLD:.0f}",
         _ok(cold.rate >= TARGET_COLD)],
        *decode_rows,
        ["cached re-scrape images/s (same round)", cached.rate, "", ""],
        ["cached / cold", f"{ratio:.1f}x", f">= {TARGET_CACHED_RATIO:.0f}x (goal 50x)",
         _ok(ratio >= TARGET_CACHED_RATIO)],
        [f"median of {len(demo.rounds)} rounds: cold / cached images/s, ratio",
         f"{median_cold:,.0f} / {median_cached:,.0f}, {median_ratio:.1f}x", "", ""],
        ["ML server peak RSS (demo)", common.mib(demo.ml_peak_rss), "", ""],
        ["other processes' load, cold/cached (cores)",
         f"{cold.background:.2f}/{cached.background:.2f}", "", ""],
    ]  # fmt: skip


def report_large(run: LargeRun) -> list[list[object]]:
    """Print the large-scrape table; return the summary rows."""
    rows = []
    for label, child in (("baseline", run.baseline), ("large", run.large)):
        rows.append(
            [
                label,
                child.items,
                child.classified,
                child.failed,
                child.seconds,
                child.wall_seconds,
                child.rate,
                common.mib(child.peak_rss),
                f"{child.background:.2f}",
            ]
        )
    common.print_table(
        f"Large synthetic sitemap ({run.sitemap_bytes / 1e6:.1f} MB), scraped by a child process "
        "(fresh ML cache)",
        ["run", "items", "classified", "failed", "scrape s", "process s", "images/s",
         "peak RSS", "other load"],
        rows,
    )  # fmt: skip
    large, baseline = run.large, run.baseline
    extra_items = large.items - baseline.items
    growth = (large.peak_rss - baseline.peak_rss) / extra_items * 1000 if extra_items > 0 else 0.0
    return [
        [f"large scrape ({large.items:,} items) images/s", large.rate, "", ""],
        ["large scrape child peak RSS", common.mib(large.peak_rss), "< 1024 MiB",
         _ok(large.peak_rss < TARGET_PEAK_RSS)],
        [f"  {baseline.items:,}-item scrape peak RSS (~fixed cost)",
         common.mib(baseline.peak_rss), "", ""],
        ["  growth per 1,000 items", f"{growth / 1024:,.0f} KiB", "", ""],
        ["ML server peak RSS (large)", common.mib(run.ml_peak_rss), "", ""],
        ["other processes' load, large (cores)", f"{large.background:.2f}", "", ""],
    ]  # fmt: skip


def _cpu_rows(cold: ScrapeRun, cached: ScrapeRun) -> list[list[object]]:
    assert cold.cpu is not None and cached.cpu is not None
    rows: list[list[object]] = []
    for name in [*cold.cpu, "all three"]:
        a = sum(cold.cpu.values()) if name == "all three" else cold.cpu[name]
        b = sum(cached.cpu.values()) if name == "all three" else cached.cpu[name]
        rows.append([name, a, 1000 * a / cold.items, b, 1000 * b / cached.items])
    rows.append(
        [
            "(other processes, not ours)",
            cold.background * cold.seconds,
            1000 * cold.background * cold.seconds / cold.items,
            cached.background * cached.seconds,
            1000 * cached.background * cached.seconds / cached.items,
        ]
    )
    return rows


def _profile_rows(run: ScrapeRun) -> list[list[object]]:
    """The ML server's stages, the rest of its CPU, the CDN, and the scrape's parts."""
    assert run.cpu is not None
    rows: list[tuple[str, float]] = []
    stages = sorted(run.ml_stages.items(), key=lambda kv: -kv[1])
    rows += [(f"ML server: {name}", seconds) for name, seconds in stages]
    measured = sum(run.ml_stages.values())
    rows.append(
        ("ML server: the rest (uvicorn, HTTP, request parsing, threads)",
         max(0.0, run.cpu["ML server"] - measured))
    )  # fmt: skip
    rows.append(("CDN", run.cpu["CDN"]))
    writes = run.phases["app DB writes (batches)"]
    scrape = run.cpu["scrape (this process)"]
    rows.append(("scrape: app DB writes (main thread, wall)", min(writes, scrape)))
    rows.append(("scrape: the rest (sitemaps, ML client, JSON)", max(0.0, scrape - writes)))
    total = sum(seconds for _, seconds in rows)
    out: list[list[object]] = [
        [name, seconds, 1000 * seconds / run.items, f"{seconds / total:.0%}"]
        for name, seconds in rows
    ]
    out.append(["all three processes", total, 1000 * total / run.items, "100%"])
    return out


def _ok(passed: bool) -> str:
    return "ok" if passed else "MISSED"


if __name__ == "__main__":
    common.run_main(main)
