"""Cluster throughput: N queue workers and M ML replicas scraping through a CDN 50 ms away.

Every part is a real process on loopback, laid out as ``deploy/compose.yaml`` lays out the
cluster:

* the demo CDN, ``python -m tagging cdn --latency-ms 50`` (``--latency-ms``): every response,
  sitemap or image, waits 50 ms first, like an advertiser's CDN on the other side of a network;
* M ML replicas (``--replicas``, default 1 and 2), each ``python -m tagging serve --workers P``
  (``--ml-processes``, default 2 as in the compose file), sharing one PostgreSQL cache store
  (``TAGGING_ML_CACHE_URL``), a fresh database per replica layout;
* N task workers (``--workers``, default 1, 2 and 4): N ``python -m tagging worker`` processes of
  one thread each (``--queue scrapes`` too when the worker has that option) on one Redis queue
  (``--redis``, default db 7, flushed before each measurement);
* the app database on PostgreSQL (``--postgres``): a fresh, migrated database per measurement.

Scrapes are queued through :func:`tagging.jobs.tasks.enqueue_scrape`, as the app's "Relaunch
scrape" queues them, and the clock runs from the first enqueue to the last ``finished_at`` of
the scrapes (``scrapes.status`` left "running"). Two scenarios (``--scenarios``):

* ``demo``: every demo advertiser (6 sitemaps, 1,711 items): one scrape each, so several workers
  help even when one scrape runs in one worker;
* ``big``: one advertiser whose synthetic sitemap lists ``--big-items`` (default 2,000) distinct
  image URLs (the demo CDN's images with ``?n=``, which the CDN ignores when it looks an image
  up), served from this process with the same latency: only a scrape split into chunks that
  several workers take (``TAGGING_SCRAPE_CHUNK_SIZE``, ``--chunk-size``) can use more than one.

Every measurement starts cold: a new CDN process on a new port, so every image URL (and so every
image_key) is one no cache has seen, and a new app database; the "cached" column shows it.

CPU: each process group's CPU seconds during the measurement (from ``/proc``: ML replicas with
their uvicorn workers, the queue workers, the CDN, PostgreSQL and Redis (the whole servers:
other users of them count too), and this process), the cores they kept busy on average, and the
load of everything else on the machine.

Usage::

    .venv/bin/python bench/cluster_bench.py [--quick] [--workers 1,2,4] [--replicas 1,2]
        [--scenarios demo,big] [--big-items 2000] [--latency-ms 50] [--rounds 1]
        [--postgres URL] [--redis URL] [--chunk-size N]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from xml.sax.saxutils import escape

import common

from tagging.server.pipeline import PipelineConfig

DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS = "redis://127.0.0.1:6379/7"
BIG_ADVERTISER = "Bench Big Advertiser"
IMAGES_PER_PAGE = 5
GROUPS = ("ML", "workers", "CDN", "PostgreSQL", "Redis", "bench")


@dataclass
class Measurement:
    scenario: str
    workers: int
    replicas: int
    scrapes: int
    items: int
    classified: int
    cached: int
    failed: int
    ml_failures: int
    seconds: float
    cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds of each process group (:data:`GROUPS`) during the measurement."""
    other_load: float = 0.0
    """Cores the rest of the machine used meanwhile, on average."""
    ml_by_replica: list[float] = field(default_factory=list)
    """CPU seconds of each ML replica (its uvicorn workers included), in TAGGING_ML_URLS order."""

    @property
    def replica_split(self) -> str:
        total = sum(self.ml_by_replica) or 1.0
        return "/".join(f"{100 * c / total:.0f}" for c in self.ml_by_replica) + " %"

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds else 0.0

    @property
    def cores_busy(self) -> float:
        return sum(self.cpu.values()) / self.seconds if self.seconds else 0.0


# --- the worker's command line: today's, or H1's queues ----------------------------------------


def worker_args(threads: int) -> list[str]:
    """``python -m tagging worker`` arguments for one scrape worker process.

    The queues per workload arrive in steps: with ``--queue`` the worker takes only scrapes (as
    the compose file's scrape workers do); without it, today's single queue.
    """
    result = subprocess.run(
        [sys.executable, "-m", "tagging", "worker", "--help"],
        cwd=common.ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    args = ["worker", "--workers", str(threads)]
    if "--queue" in result.stdout:
        args += ["--queue", "scrapes"]
    return args


# --- PostgreSQL databases and Redis ------------------------------------------------------------


@contextlib.contextmanager
def fresh_database(admin_url: str, prefix: str, *, migrated: bool) -> Iterator[str]:
    """A new PostgreSQL database (migrated as the app database if asked), dropped afterwards."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from db.engine import make_engine, migrate

    admin = make_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        if migrated:
            migrate(url)
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def redis_db(url: str) -> int:
    from redis.connection import parse_url

    return int(parse_url(url).get("db", 0))


def wait_for_consumers(
    redis_url: str, count: int, workers: Sequence[common.Service], timeout: float = 90.0
) -> None:
    """Wait until ``count`` consumers block on the queue (``BRPOP`` on our Redis db).

    Starting a worker (imports, the first connection) takes seconds; timing from the enqueue
    with workers still starting would measure their start-up, not the scrapes.
    """
    import redis

    client = redis.Redis.from_url(redis_url)
    db = str(redis_db(redis_url))
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for worker in workers:
                if worker.process.poll() is not None:
                    tail = worker.log_path.read_text(errors="replace")[-2000:]
                    raise SystemExit(f"{worker.name} exited:\n{tail}")
            waiting = [
                c
                for c in client.client_list()
                if str(c.get("db")) == db and str(c.get("cmd")) in ("brpop", "blpop", "bzpopmin")
            ]
            if len(waiting) >= count:
                return
            time.sleep(0.2)
    finally:
        client.close()
    raise SystemExit(f"{count} workers did not reach the queue within {timeout:.0f}s")


# --- CPU of process groups ---------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int] | None:
    """``(comm, ppid)`` of ``pid``, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    return comm, int(raw.rsplit(")", 1)[1].split()[1])


def server_pids(comm: str) -> list[int]:
    """The top processes named ``comm`` (a server's main process, not its children)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat and stat[0] == comm:
                parent = _stat(stat[1])
                if parent is None or parent[0] != comm:
                    found.append(int(entry.name))
    return found


class CpuMeter:
    """CPU seconds per process group between :meth:`start` and :meth:`stop`, and the load of
    everything else on the machine (its busy time minus all of ours and the servers')."""

    def __init__(
        self, ml: Sequence[common.Service], workers: Sequence[common.Service], cdn: common.Service
    ) -> None:
        self.ml, self.workers, self.cdn = ml, workers, cdn
        # The postmaster's tree counts its reaped backends too (cutime): connections opened and
        # closed per task would otherwise slip through between two readings.
        self.postgres = server_pids("postgres")
        self.redis = server_pids("redis-server")

    def read(self) -> dict[str, float]:
        tree = common._tree_cpu_seconds
        times = os.times()
        return {
            "ML": sum(s.cpu_seconds() for s in self.ml),
            "workers": sum(s.cpu_seconds() for s in self.workers),
            "CDN": self.cdn.cpu_seconds(),
            "PostgreSQL": sum(tree(pid) for pid in self.postgres),
            "Redis": sum(tree(pid) for pid in self.redis),
            "bench": times.user + times.system,  # this process: polling, the big sitemap
        }

    def start(self) -> None:
        self._start = (time.perf_counter(), common.machine_busy_seconds(), self.read())
        self._replicas = [s.cpu_seconds() for s in self.ml]

    def stop(self) -> tuple[dict[str, float], float, list[float]]:
        """CPU seconds per group, the other load (cores), CPU seconds per ML replica."""
        wall = time.perf_counter() - self._start[0]
        busy = common.machine_busy_seconds() - self._start[1]
        end = self.read()
        used = {k: max(0.0, end[k] - self._start[2][k]) for k in end}
        replicas = [s.cpu_seconds() - b for s, b in zip(self.ml, self._replicas, strict=True)]
        # Our other descendants (services of no group) are few and idle: they count as "other".
        other = max(0.0, busy - sum(used.values())) / wall if wall > 0 else 0.0
        return used, other, replicas


# --- the big advertiser's sitemap --------------------------------------------------------------


def big_sitemap(cdn_url: str, paths: Sequence[str], count: int) -> bytes:
    """A urlset of ``count`` image items, 5 per page, every URL distinct (``?n=``)."""
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9" '
        'xmlns:image="http://www.google.com/schemas/sitemap-image/1.1">\n'
    ]
    for page_start in range(0, count, IMAGES_PER_PAGE):
        page = page_start // IMAGES_PER_PAGE
        parts.append(f"<url><loc>{cdn_url}/vehicles/big-{page}</loc>")
        for n in range(page_start, min(page_start + IMAGES_PER_PAGE, count)):
            url = escape(f"{cdn_url}{paths[n % len(paths)]}?n={n}")
            parts.append(
                f"<image:image><image:loc>{url}</image:loc>"
                f"<image:title>Vehicle {page}</image:title></image:image>"
            )
        parts.append("</url>\n")
    parts.append("</urlset>\n")
    return "".join(parts).encode()


class SitemapServer(ThreadingHTTPServer):
    """One XML document at ``/big.xml``, answered after the CDN's latency (same network)."""

    daemon_threads = True

    def __init__(self, body: bytes, latency_ms: float) -> None:
        super().__init__((common.HOST, 0), _SitemapHandler)
        self.body, self.latency = body, latency_ms / 1000
        threading.Thread(target=self.serve_forever, args=(0.1,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://{common.HOST}:{self.server_address[1]}/big.xml"

    @property
    def host_entry(self) -> str:
        return f"{common.HOST}:{self.server_address[1]}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _SitemapHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: SitemapServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        time.sleep(self.server.latency)
        if self.path.split("?", 1)[0] != "/big.xml":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(self.server.body)))
        self.end_headers()
        self.wfile.write(self.server.body)


# --- one measurement ---------------------------------------------------------------------------


@dataclass
class Cluster:
    """What stays up across the measurements of one replica layout."""

    data: common.BenchData
    args: argparse.Namespace
    token: str
    ml: list[common.Service]
    worker_args: list[str]
    warm: bool = False


def start_cdn(stack: common.Services, data: common.BenchData, latency_ms: float) -> common.Service:
    """``python -m tagging cdn --latency-ms L`` on a new free port: new image URLs, cold keys."""
    port = common.free_port()
    env = common._base_env(data.demo_data_dir)
    args = ["cdn", "--port", str(port), "--latency-ms", f"{latency_ms:g}"]
    service = stack.start(common._spawn("cdn", args, env, data, port))
    common.wait_healthy(service, "/sitemap_index.xml", 60.0)
    return service


def start_replicas(
    stack: common.Services, data: common.BenchData, args: argparse.Namespace, token: str, store: str
) -> list[common.Service]:
    """M ``serve --workers P`` replicas on the shared store, started together, once healthy."""
    services = []
    for i in range(1, args.replicas_now + 1):
        port = common.free_port()
        env = common._base_env(
            data.model_data_dir,
            ml_token=token,
            # Any loopback port: every measurement's CDN listens on a new one.
            allowed_hosts=(common.HOST,),
            ml_cache_url=store,
            ml_workers=args.ml_processes,
        )
        argv = ["serve", "--port", str(port), "--workers", str(args.ml_processes)]
        services.append(stack.start(common._spawn(f"ml-{i}", argv, env, data, port)))
    for service in services:
        common.wait_healthy(service, "/health", 180.0)
    return services


def warm_up(cluster: Cluster, cdn: common.Service) -> None:
    """Classify URLs no sitemap lists (``?warmup=``) with a call per uvicorn process at once, so
    that each loads torch's kernels and its pools before the first measurement."""
    from dataclasses import replace

    from tagging.server.client import MLClient

    unused = cluster.data.path("unused.sqlite")
    settings = replace(
        common.app_settings(cluster.data, unused, cluster.ml[0], cluster.token, []),
        ml_urls=tuple(s.url for s in cluster.ml),
    )
    ml = MLClient.from_settings(settings)
    images = cluster.data.inventory.images
    paths = [p for p, img in sorted(images.items()) if img.kind == "ok"][:192]
    urls = [f"{cdn.url}{p}?warmup={i}" for i, p in enumerate(paths)]
    batches = [urls[i : i + 16] for i in range(0, len(urls), 16)]
    try:
        calls = 2 * len(cluster.ml) * cluster.args.ml_processes
        with ThreadPoolExecutor(max_workers=calls) as pool:
            list(pool.map(ml.classify, batches))
    finally:
        ml.client.close()
    cluster.warm = True


def register(
    scenario: str, database_url: str, cdn: common.Service, data: common.BenchData, url: str | None
) -> list[str]:
    """Register the scenario's advertisers in the fresh app database; their names."""
    from db.advertisers import add_advertiser
    from db.engine import make_engine, make_session_factory

    engine = make_engine(database_url)
    try:
        with make_session_factory(engine).begin() as session:
            if scenario == "big":
                assert url is not None
                add_advertiser(session, BIG_ADVERTISER, url)
                return [BIG_ADVERTISER]
            for advertiser in data.inventory.advertisers:
                add_advertiser(
                    session,
                    advertiser.name,
                    cdn.url + advertiser.sitemap_path,
                    color_from_feed=advertiser.color_from_feed,
                )
            return [a.name for a in data.inventory.advertisers]
    finally:
        engine.dispose()


def measure(cluster: Cluster, scenario: str, workers: int) -> Measurement:
    """One cold run: new CDN, new app database, N fresh workers; enqueue, wait, count."""
    import redis

    args, data = cluster.args, cluster.data
    sitemap: SitemapServer | None = None
    # The database is dropped after the processes using it are stopped (inner context first).
    with (
        fresh_database(args.postgres, "tagdesk_cluster_app", migrated=True) as database_url,
        common.Services() as stack,
    ):
        cdn = start_cdn(stack, data, args.latency_ms)
        if not cluster.warm:
            warm_up(cluster, cdn)
        allowed = [cdn.host_entry]
        if scenario == "big":
            paths = sorted(data.inventory.images)
            sitemap = SitemapServer(big_sitemap(cdn.url, paths, args.big_items), args.latency_ms)
            stack.callback(sitemap.close)
            allowed.append(sitemap.host_entry)
        names = register(scenario, database_url, cdn, data, sitemap.url if sitemap else None)

        redis.Redis.from_url(args.redis).flushdb()
        worker_dir = data.work / "worker-data"  # the workers' data dir: nothing is kept there
        worker_dir.mkdir(parents=True, exist_ok=True)
        env = common._base_env(
            worker_dir,
            database_url=database_url,
            ml_url=cluster.ml[0].url,
            ml_urls=tuple(s.url for s in cluster.ml),
            ml_token=cluster.token,
            allowed_hosts=tuple(allowed),
            redis_url=args.redis,
        )
        if args.chunk_size:
            env["TAGGING_SCRAPE_CHUNK_SIZE"] = str(args.chunk_size)
        queue_workers = [
            stack.start(common._spawn(f"worker-{i}", cluster.worker_args, env, data, i))
            for i in range(1, workers + 1)
        ]
        wait_for_consumers(args.redis, workers, queue_workers)

        common.wait_for_quiet(args.max_wait)
        meter = CpuMeter(cluster.ml, queue_workers, cdn)
        meter.start()
        started = datetime.now(UTC)
        enqueue(args, database_url, names)
        finished = wait_for_scrapes(database_url, names, args.timeout, queue_workers)
        cpu, other, by_replica = meter.stop()
        counts = count_items(database_url)
    seconds = (finished - started).total_seconds()
    return Measurement(
        scenario=scenario,
        workers=workers,
        replicas=len(cluster.ml),
        seconds=seconds,
        cpu=cpu,
        other_load=other,
        ml_by_replica=by_replica,
        **counts,
    )


def enqueue(args: argparse.Namespace, database_url: str, names: Sequence[str]) -> None:
    from db.accounts import Actor
    from db.models import Role
    from tagging.config import Settings
    from tagging.jobs.tasks import enqueue_scrape

    # The queue is built from the environment once per process (tagging.jobs.tasks.task_queue):
    # main() put TAGGING_REDIS_URL there before the first enqueue.
    settings = Settings.from_env({**os.environ, "TAGGING_DATABASE_URL": database_url})
    actor = Actor(username="bench", role=Role.ANALYST)
    for name in names:
        enqueue_scrape(settings, actor, name)


def wait_for_scrapes(
    database_url: str, names: Sequence[str], timeout: float, workers: Sequence[common.Service]
) -> datetime:
    """Poll until every advertiser has a scrape and none is running; the last ``finished_at``."""
    from sqlalchemy import select

    from db.engine import make_engine
    from db.models import Advertiser, Scrape, ScrapeStatus

    engine = make_engine(database_url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with engine.connect() as connection:
                rows = connection.execute(
                    select(Advertiser.name, Scrape.status, Scrape.finished_at).join(
                        Scrape, Scrape.advertiser_id == Advertiser.id
                    )
                ).all()
            seen = {row.name for row in rows}
            if seen >= set(names) and all(
                row.status != ScrapeStatus.RUNNING and row.finished_at for row in rows
            ):
                failed = [row.name for row in rows if row.status == ScrapeStatus.FAILED]
                if failed:
                    raise SystemExit(f"scrapes failed: {failed} (see {workers[0].log_path})")
                return max(common_utc(row.finished_at) for row in rows)
            for worker in workers:
                if worker.process.poll() is not None:
                    tail = worker.log_path.read_text(errors="replace")[-2000:]
                    raise SystemExit(f"{worker.name} exited mid-run:\n{tail}")
            time.sleep(0.1)
    finally:
        engine.dispose()
    raise SystemExit(
        f"the scrapes did not finish within {timeout:.0f}s (see {workers[0].log_path})"
    )


def common_utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime (SQLite-style naive values are UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def count_items(database_url: str) -> dict[str, int]:
    """Scrapes and items as stored: rows of ``sitemap_items``, the scrapes' own counters."""
    from sqlalchemy import func, select

    from db.engine import make_engine
    from db.models import ItemStatus, Scrape, SitemapItem

    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            items = connection.scalar(select(func.count()).select_from(SitemapItem)) or 0
            ml_failures = connection.scalar(
                select(func.count())
                .select_from(SitemapItem)
                .where(SitemapItem.status == ItemStatus.ML_FAILURE)
            )
            totals = connection.execute(
                select(
                    func.count(Scrape.id),
                    func.sum(Scrape.classified_count),
                    func.sum(Scrape.cached_count),
                    func.sum(Scrape.failed_count),
                )
            ).one()
    finally:
        engine.dispose()
    return {
        "scrapes": int(totals[0] or 0),
        "items": int(items),
        "classified": int(totals[1] or 0),
        "cached": int(totals[2] or 0),
        "failed": int(totals[3] or 0),
        "ml_failures": int(ml_failures or 0),
    }


# --- the report --------------------------------------------------------------------------------


def report(runs: list[Measurement], args: argparse.Namespace, fetch_threads: int) -> None:
    best: dict[tuple[str, int, int], Measurement] = {}
    for run in runs:
        key = (run.scenario, run.workers, run.replicas)
        if key not in best or run.rate > best[key].rate:
            best[key] = run
    ordered = sorted(
        best.values(),
        key=lambda r: (args.scenario_list.index(r.scenario), r.replicas, r.workers),
    )
    base = {
        s: max((r.rate for r in ordered if r.scenario == s and (r.workers, r.replicas) == (1, 1)),
               default=0.0)
        for s in args.scenario_list
    }  # fmt: skip
    rows = [
        [
            r.scenario,
            r.workers,
            r.replicas,
            r.items,
            round(r.seconds, 1),
            round(r.rate),
            f"{r.rate / base[r.scenario]:.2f}×" if base[r.scenario] else "n/a",
            r.classified,
            r.cached,
            r.failed,
            r.ml_failures,
            round(r.cores_busy, 2),
            round(r.other_load, 2),
        ]
        for r in ordered
    ]
    common.print_table(
        f"Cold scrapes through a CDN {args.latency_ms:g} ms away (best of {args.rounds} "
        "round(s); clock: first enqueue to last finished_at)",
        [
            "scenario",
            "workers",
            "ML replicas",
            "items",
            "seconds",
            "images/s",
            "vs 1w×1r",
            "classified",
            "cached",
            "failed",
            "ML failures",
            "cores busy",
            "other load",
        ],
        rows,
    )
    cpu_rows = [
        [
            r.scenario,
            r.workers,
            r.replicas,
            *[round(r.cpu.get(g, 0.0), 1) for g in GROUPS],
            round(sum(r.cpu.values()), 1),
            round(1000 * r.cpu.get("ML", 0.0) / max(1, r.classified), 2),
            r.replica_split,
        ]
        for r in ordered
    ]
    common.print_table(
        "CPU seconds per process group during each measurement (PostgreSQL and Redis: the whole "
        "servers)",
        [
            "scenario",
            "workers",
            "ML replicas",
            *GROUPS,
            "total",
            "ML ms/classified",
            "ML by replica",
        ],
        cpu_rows,
    )
    print()
    for line in verdicts(ordered, args, fetch_threads):
        print(line)


def verdicts(
    runs: list[Measurement], args: argparse.Namespace, fetch_threads: int
) -> Iterator[str]:
    """Per scenario and replica layout: how throughput grew with workers and what held it."""
    from tagging.config import available_cores
    from tagging.ingest.scrape import ScrapeConfig

    cores = available_cores()
    config = ScrapeConfig()
    for scenario in args.scenario_list:
        for replicas in args.replica_list:
            series = [r for r in runs if r.scenario == scenario and r.replicas == replicas]
            if len(series) < 2:
                continue
            fetch = replicas * args.ml_processes * fetch_threads
            network_cap = fetch / (args.latency_ms / 1000) if args.latency_ms else float("inf")
            steps = " → ".join(f"{r.workers}w {r.rate:,.0f}/s" for r in series)
            stop = next(
                (b for a, b in itertools.pairwise(series) if b.rate < 1.1 * a.rate),
                None,
            )
            if stop is None:
                where = "still growing at the last step"
            else:
                # Other processes' CPU counts: on a shared machine they hold cores we would use.
                machine = stop.cores_busy + stop.other_load
                if machine >= 0.8 * cores:
                    cause = (
                        f"CPU: {machine:.1f} of {cores} cores busy, {stop.cores_busy:.1f} ours + "
                        f"{stop.other_load:.1f} other processes"
                    )
                elif scenario == "big" and not args.chunked:
                    cause = "not CPU: one scrape runs in one worker (no chunks)"
                else:
                    cause = (
                        f"not CPU ({machine:.1f} of {cores} cores busy): the network, through "
                        "the ML fetch threads"
                    )
                where = f"stops at {stop.workers} workers ({cause})"
            last = series[-1]
            per_image = sum(last.cpu.values()) / max(1, last.items)
            yield (
                f"{scenario}, {replicas} replica(s): {steps}; {where}. Network bound: "
                f"{fetch} ML fetch threads → ≤ {network_cap:,.0f} images/s at "
                f"{args.latency_ms:g} ms (a worker keeps {config.in_flight} batches of "
                f"{config.batch_size} in flight). CPU bound: {1000 * per_image:.1f} ms of CPU "
                f"per image, all processes → ≤ {cores / per_image:,.0f} images/s on {cores} "
                "idle cores."
            )


# --- main --------------------------------------------------------------------------------------


def int_list(raw: str) -> list[int]:
    return [int(v) for v in raw.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="workers 1,2; 1 replica; 800 items")
    parser.add_argument("--workers", help="worker processes to try (default 1,2,4)")
    parser.add_argument("--replicas", help="ML replicas to try (default 1,2)")
    parser.add_argument("--scenarios", default="demo,big", help="demo, big (default both)")
    parser.add_argument("--big-items", type=int, help="items of the big advertiser (2000)")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="the CDN's (default 50)")
    parser.add_argument(
        "--ml-processes", type=int, default=2, help="uvicorn workers per replica (default 2)"
    )
    parser.add_argument("--rounds", type=int, default=1, help="rounds per cell, best shown")
    parser.add_argument("--chunk-size", type=int, help="TAGGING_SCRAPE_CHUNK_SIZE for workers")
    parser.add_argument("--timeout", type=float, default=300.0, help="per measurement (s)")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("TAGGING_TEST_POSTGRES_URL") or DEFAULT_POSTGRES,
        help="PostgreSQL URL whose server gets the fresh databases (default "
        "$TAGGING_TEST_POSTGRES_URL, else the local server's `test`)",
    )
    parser.add_argument(
        "--redis", default=DEFAULT_REDIS, help=f"the queue (default {DEFAULT_REDIS})"
    )
    common.add_common_arguments(parser)
    args = parser.parse_args(argv)
    args.worker_list = int_list(args.workers or ("1,2" if args.quick else "1,2,4"))
    args.replica_list = int_list(args.replicas or ("1" if args.quick else "1,2"))
    args.scenario_list = [s for s in args.scenarios.split(",") if s]
    args.big_items = args.big_items or (800 if args.quick else 2000)
    if set(args.scenario_list) - {"demo", "big"}:
        parser.error("--scenarios: demo, big")
    # Before anything builds the task queue (tagging.jobs.tasks.task_queue reads the environment
    # once): the scrapes this process enqueues go to the workers' Redis db.
    os.environ["TAGGING_REDIS_URL"] = args.redis

    data = common.prepare(args.work)
    fetch_threads = PipelineConfig().fetch_workers
    argv_worker = worker_args(1)
    args.chunked = "--queue" in argv_worker  # the queues arrived with the chunked scrapes
    demo_items = sum(len(v.images) for a in data.inventory.advertisers for v in a.vehicles)
    print(f"machine: {common.machine()}")
    print(
        f"model {data.model_version}; CDN latency {args.latency_ms:g} ms; ML replicas "
        f"`serve --workers {args.ml_processes}` ({fetch_threads} fetch threads per process) on "
        f"one fresh PostgreSQL store per layout; workers `python -m tagging "
        f"{' '.join(argv_worker)}` × N on {args.redis}; scenarios: "
        + ", ".join(
            f"demo ({len(data.inventory.advertisers)} advertisers, {demo_items:,} items)"
            if s == "demo"
            else f"big (1 advertiser, {args.big_items:,} items)"
            for s in args.scenario_list
        )
        + f"; {args.rounds} round(s)",
        flush=True,
    )
    runs: list[Measurement] = []
    for replicas in args.replica_list:
        args.replicas_now = replicas
        with (
            common.Services() as stack,
            fresh_database(args.postgres, "tagdesk_cluster_ml", migrated=False) as store,
        ):
            token = common.new_token()
            ml = start_replicas(stack, data, args, token, store)
            cluster = Cluster(data, args, token, ml, argv_worker)
            for number in range(1, args.rounds + 1):
                for scenario in args.scenario_list:
                    for workers in args.worker_list:
                        run = measure(cluster, scenario, workers)
                        runs.append(run)
                        print(
                            f"  round {number} {scenario} {workers}w×{replicas}r: "
                            f"{run.rate:,.0f} images/s ({run.items:,} items in "
                            f"{run.seconds:.1f}s, {run.cores_busy:.2f} cores busy, other load "
                            f"{run.other_load:.2f})",
                            flush=True,
                        )
    report(runs, args, fetch_threads)
    return 0


if __name__ == "__main__":
    common.run_main(main)
