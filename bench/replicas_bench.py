"""Cold demo scrape with 1 vs N ML server worker processes, and with 2 ML replicas, side by side.

Each layout is a real ``python -m tagging serve`` (or two) on loopback with a fresh, empty cache
store, and the scrape runs in this process as ``scrape --all`` does (every demo advertiser, one
after another, ``ScrapeConfig`` defaults unless told), through ``MLClient``:

* ``1 worker``: ``serve --workers 1`` (one process: the layout before issue 11);
* ``N workers``: ``serve --workers N`` (N = the cores: uvicorn worker processes sharing the
  listening socket and one SQLite store);
* ``2 replicas``: two ``serve --workers 1`` on one shared store, the client given both URLs
  (``TAGGING_ML_URLS``), spreading batches and failing over.

Layouts alternate round by round (ABCABC) after a warm-up of each new server, so slow drift of
the machine hits them alike; the best round of each is shown with the median. The ML server CPU
column is the whole process tree (uvicorn's workers included).

Usage::

    .venv/bin/python bench/replicas_bench.py [--quick] [--rounds N] [--in-flight N]
        [--layouts 1w,Nw,2r] [--postgres URL]

``--postgres URL`` puts every layout's store in a fresh PostgreSQL database (created and dropped
per run) instead of a fresh SQLite file.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import common

from tagging.config import available_cores
from tagging.ingest.scrape import ScrapeConfig

LAYOUTS = {
    "1w": "1 ML server, 1 worker",
    "Nw": "1 ML server, {n} workers",
    "2r": "2 ML replicas, 1 worker each",
}


@dataclass
class Run:
    layout: str
    items: int
    classified: int
    ml_failures: int
    seconds: float
    ml_cpu: float
    scrape_cpu: float
    background: float
    calls: list[int] = field(default_factory=list)
    process_cpu: list[float] = field(default_factory=list)
    """CPU seconds of each ML server process that did work (uvicorn's workers, or each
    single-process server), largest first."""

    @property
    def cpu_split(self) -> str:
        total = sum(self.process_cpu) or 1.0
        busy = [c for c in self.process_cpu if c / total >= 0.02]
        return "/".join(f"{100 * c / total:.0f}" for c in busy) + " %"

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds else 0.0


def start_serve(
    stack: common.Services,
    data: common.BenchData,
    cdn: common.Service,
    token: str,
    cache_url: str,
    workers: int,
    name: str,
) -> common.Service:
    """``python -m tagging serve --workers W`` on a free port, once healthy."""
    port = common.free_port()
    env = common._base_env(
        data.model_data_dir,
        ml_token=token,
        allowed_hosts=(cdn.host_entry,),
        ml_cache_url=cache_url,
        ml_workers=workers,
    )
    args = ["serve", "--port", str(port), "--workers", str(workers)]
    service = stack.start(common._spawn(name, args, env, data, port))
    common.wait_healthy(service, "/health", 180.0)
    return service


@contextmanager
def fresh_store(data: common.BenchData, postgres: str | None, name: str) -> Iterator[str]:
    """A new, empty cache store: a SQLite file, or a PostgreSQL database dropped afterwards."""
    if not postgres:
        path = data.path("caches", f"replicas-{name}.sqlite")
        for suffix in ("", "-wal", "-shm", ".lock"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        yield f"sqlite:///{path}"
        return
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from db.engine import make_engine

    admin = make_engine(postgres, isolation_level="AUTOCOMMIT")
    database = f"tagdesk_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{database}"'))
    try:
        yield make_url(postgres).set(database=database).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        admin.dispose()


def warm_up(ml: object, cdn: common.Service, data: common.BenchData, services: int) -> None:
    """Classify URLs no sitemap lists (``?warmup=``) with several calls at once, so that every
    worker process loads torch's kernels before the measured scrape."""
    from concurrent.futures import ThreadPoolExecutor

    paths = [p for p, img in sorted(data.inventory.images.items()) if img.kind == "ok"][:256]
    urls = [f"{cdn.url}{p}?warmup={i}" for i, p in enumerate(paths)]
    batches = [urls[i : i + 16] for i in range(0, len(urls), 16)]
    with ThreadPoolExecutor(max_workers=2 * services) as pool:
        list(pool.map(lambda batch: ml.classify(batch), batches))  # type: ignore[attr-defined]


def cold_scrape(
    layout: str,
    data: common.BenchData,
    cdn: common.Service,
    token: str,
    urls: list[str],
    ml_services: list[common.Service],
    config: ScrapeConfig,
    max_wait: float,
) -> Run:
    from db.engine import make_engine, make_session_factory
    from tagging.demo.setup import register_demo_advertisers
    from tagging.ingest.fetch import client_from_settings
    from tagging.ingest.scrape import run_scrape
    from tagging.server.client import MLClient

    db_path = data.path("db", f"app-replicas-{layout}.sqlite")
    common.fresh_app_db(db_path)
    settings = common.app_settings(data, db_path, ml_services[0], token, [cdn.host_entry])
    settings = replace(settings, ml_urls=tuple(urls))
    register_demo_advertisers(settings, data.inventory, cdn.url)
    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    client = client_from_settings(settings)
    ml = MLClient.from_settings(settings)
    names = [a.name for a in data.inventory.advertisers]
    totals = dict.fromkeys(("items", "classified", "ml_failures"), 0)
    try:
        warm_up(ml, cdn, data, len(urls))
        for replica in ml.replicas:
            replica.calls = 0
        common.wait_for_quiet(max_wait)
        ml_cpu = sum(common._tree_cpu_seconds(s.process.pid) for s in ml_services)
        per_process = worker_cpu(ml_services)
        scrape_cpu = time.process_time()
        started = time.perf_counter()
        with common.LoadMeter() as load:
            for name in names:
                summary = run_scrape(sessions, name, ml=ml, client=client, config=config)
                if summary.status == "failed":
                    raise SystemExit(f"the scrape of {name} failed: {summary.problems}")
                for key in totals:
                    totals[key] += getattr(summary, key)
        seconds = time.perf_counter() - started
        ml_cpu = sum(common._tree_cpu_seconds(s.process.pid) for s in ml_services) - ml_cpu
        after = worker_cpu(ml_services)
        process_cpu = sorted(
            (after[pid] - per_process.get(pid, 0.0) for pid in after), reverse=True
        )
        scrape_cpu = time.process_time() - scrape_cpu
    finally:
        client.close()
        ml.client.close()
        engine.dispose()
    return Run(
        layout=layout,
        seconds=seconds,
        ml_cpu=ml_cpu,
        scrape_cpu=scrape_cpu,
        background=load.background,
        calls=[r.calls for r in ml.replicas],
        process_cpu=process_cpu,
        **totals,
    )


def worker_cpu(services: list[common.Service]) -> dict[int, float]:
    """CPU seconds of every process serving requests: each server's uvicorn worker processes
    (its children), or the server itself when it has none that work."""
    found: dict[int, float] = {}
    for service in services:
        children = common._children(service.process.pid)
        for pid in children or [service.process.pid]:
            found[pid] = common.process_cpu_seconds(pid)
    return found


def run_layout(
    layout: str,
    number: int,
    data: common.BenchData,
    cdn: common.Service,
    args: argparse.Namespace,
    config: ScrapeConfig,
    cores: int,
) -> Run:
    token = common.new_token()
    with (
        common.Services() as stack,
        fresh_store(data, args.postgres, f"{layout}-{number}") as store,
    ):
        if layout == "2r":
            services = [
                start_serve(stack, data, cdn, token, store, 1, f"ml-{layout}-{i}") for i in (1, 2)
            ]
        else:
            workers = 1 if layout == "1w" else cores
            services = [start_serve(stack, data, cdn, token, store, workers, f"ml-{layout}")]
        return cold_scrape(
            layout, data, cdn, token, [s.url for s in services], services, config, args.max_wait
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round")
    parser.add_argument("--rounds", type=int, help="rounds per layout (default 2)")
    parser.add_argument("--in-flight", type=int, help="ScrapeConfig.in_flight (default 2)")
    parser.add_argument("--batch-size", type=int, help="ScrapeConfig.batch_size (default 64)")
    parser.add_argument(
        "--layouts", default="1w,Nw,2r", help="which layouts, comma-separated (default all)"
    )
    parser.add_argument("--postgres", help="PostgreSQL URL for the cache stores (default SQLite)")
    common.add_common_arguments(parser)
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 2)
    layouts = [name for name in args.layouts.split(",") if name]
    unknown = set(layouts) - set(LAYOUTS)
    if unknown:
        parser.error(f"unknown layouts {sorted(unknown)}; choose from {sorted(LAYOUTS)}")
    overrides = {"in_flight": args.in_flight, "batch_size": args.batch_size}
    config = ScrapeConfig(**{k: v for k, v in overrides.items() if v is not None})
    cores = available_cores()

    data = common.prepare(args.work)
    print(f"machine: {common.machine()}")
    print(
        f"demo: {len(data.inventory.advertisers)} advertisers; model {data.model_version}; "
        f"cold scrape of every advertiser per run; in_flight {config.in_flight}, batch "
        f"{config.batch_size}; store {'PostgreSQL' if args.postgres else 'SQLite'}; "
        f"{rounds} round(s) per layout, alternating",
        flush=True,
    )
    runs: dict[str, list[Run]] = {layout: [] for layout in layouts}
    with common.Services() as stack:
        cdn = common.start_cdn(stack, data)
        for number in range(1, rounds + 1):
            for layout in layouts:
                run = run_layout(layout, number, data, cdn, args, config, cores)
                runs[layout].append(run)
                print(
                    f"  round {number} {layout}: {run.rate:,.0f} images/s "
                    f"({run.items} items in {run.seconds:.1f}s, other load "
                    f"{run.background:.2f})",
                    flush=True,
                )

    base = max(r.rate for r in runs[layouts[0]])
    rows = []
    for layout in layouts:
        best = max(runs[layout], key=lambda r: r.rate)
        rows.append(
            [
                LAYOUTS[layout].format(n=cores),
                round(best.rate),
                round(statistics.median(r.rate for r in runs[layout])),
                f"{best.rate / base:.2f}×",
                best.items,
                best.ml_failures,
                round(1000 * best.ml_cpu / max(1, best.classified), 2),
                round(1000 * best.scrape_cpu / max(1, best.items), 2),
                "/".join(str(c) for c in best.calls),
                best.cpu_split,
                round(best.background, 2),
            ]
        )
    common.print_table(
        "Cold scrape of the demo by ML server layout (best round; median of all rounds)",
        [
            "layout",
            "images/s",
            "median",
            f"vs {layouts[0]}",
            "items",
            "ML failures",
            "ML CPU ms/classified",
            "scrape CPU ms/item",
            "batches per replica",
            "ML CPU by process",
            "other load",
        ],
        rows,
    )
    return 0


if __name__ == "__main__":
    common.run_main(main)
