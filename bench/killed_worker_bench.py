"""A worker SIGKILLed in the middle of a big chunked scrape: nothing lost, nothing stored twice.

Real parts on loopback: the demo CDN (``python -m tagging cdn --latency-ms L``, a CDN far away),
the ML server (``python -m tagging serve``, the production model, its own cache file), and
``--workers`` worker processes (``python -m tagging worker --queue scrapes``) on Redis and an
app database. The advertiser's sitemap is the CDN's ``/sitemaps/big-<items>.xml``: ``--items``
(default 50,000) distinct image URLs, the demo's decodable images again and again under a
``?copy=n`` query string. The image_key hashes the URL, so the ML server fetches, decodes and
classifies every item: its cache saves nothing on a first scrape.

Once a fifth of the chunks are done, the worker holding a half-stored chunk is SIGKILLed; its
chunk's lease (``--lease`` seconds) expires, a surviving worker's reclaimer queues it again, and
that worker stores the rest of it (skipping the positions stored already).

Printed: items lost and items stored twice (both must be 0), the time to recover (from the kill
to the chunk's completion by another worker), the total time, and the items answered from the ML
server's cache: the killed worker's batches in flight, which the ML server classified and cached
but the worker never stored; the survivor asks for them again and gets the cached answers (fresh
for the CDN's ``max-age``, no image request), so the repeat costs a request, not a classification.

    python bench/killed_worker_bench.py                      # 50,000 items, 2 workers, Redis db 10
    python bench/killed_worker_bench.py --items 5000 --workers 3 --redis-url redis://host:6379/3
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from typing import Any

import common

LATENCY_MS = 20.0
"""The demo CDN's delay before every response (a CDN far away): with the ML server's fetch
threads it bounds the image rate, and it spreads a chunk's batches out in time."""


def start_cdn(stack: common.Services, data: common.BenchData, latency_ms: float) -> common.Service:
    """``python -m tagging cdn --latency-ms L`` on a free port, once its sitemap index answers."""
    port = common.free_port()
    env = common._base_env(data.demo_data_dir)
    args = ["cdn", "--port", str(port), "--latency-ms", f"{latency_ms:g}"]
    service = stack.start(common._spawn("cdn", args, env, data, port))
    common.wait_healthy(service, "/sitemap_index.xml", 60.0)
    return service


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_arguments(parser)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--chunk-size", type=int, default=500)
    parser.add_argument("--lease", type=float, default=3.0, help="chunk lease, seconds")
    parser.add_argument("--reclaim", type=float, default=0.5, help="reclaim period, seconds")
    parser.add_argument(
        "--latency-ms",
        "--delay-ms",
        dest="latency_ms",
        type=float,
        default=LATENCY_MS,
        help=f"the demo CDN's delay before every response (default {LATENCY_MS:g})",
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/10")
    parser.add_argument(
        "--database-url", help="the app database (default: a fresh SQLite file in the work dir)"
    )
    args = parser.parse_args(argv)
    if args.workers < 2:
        parser.error("--workers must be at least 2 (one is killed)")

    import redis

    from db.advertisers import add_advertiser
    from db.engine import make_engine, make_session_factory, migrate
    from tagging.config import Settings
    from tagging.demo.cdn import BIG_SITEMAP_MAX

    if not 1 <= args.items <= BIG_SITEMAP_MAX:
        parser.error(f"--items must be between 1 and {BIG_SITEMAP_MAX:,} (the CDN's big sitemap)")
    data = common.prepare(args.work)
    work = data.work
    with common.Services() as stack:
        cdn = start_cdn(stack, data, args.latency_ms)
        token = common.new_token()
        ml = common.start_ml_server(
            stack, data, cdn, token, data.path("caches", "killed-worker-ml.sqlite")
        )
        if args.database_url:
            db_url = args.database_url
            migrate(db_url)
        else:
            db_url = common.fresh_app_db(work / "db" / "killed-worker.sqlite")
        queue_name = f"killed-bench-{uuid.uuid4().hex[:8]}"
        name = f"Killed worker bench {queue_name}"
        engine = make_engine(db_url)
        stack.callback(engine.dispose)
        sessions = make_session_factory(engine)
        with sessions.begin() as session:
            add_advertiser(session, name, f"{cdn.url}/sitemaps/big-{args.items}.xml")
        worker_dir = work / "worker-data"  # the workers' data dir: nothing is kept there
        worker_dir.mkdir(parents=True, exist_ok=True)
        settings = replace(
            Settings.from_env({"TAGGING_DATA_DIR": str(worker_dir)}),
            database_url=db_url,
            ml_url=ml.url,
            ml_token=token,
            allowed_hosts=(cdn.host_entry,),
            redis_url=args.redis_url,
            queue_name=queue_name,
            scrape_chunk_size=args.chunk_size,
            chunk_lease_seconds=args.lease,
            reclaim_seconds=args.reclaim,
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("TAGGING_")}
        env.update(settings.to_env())
        # enqueue_scrape in this process queues on the workers' Redis queue.
        os.environ.update(settings.to_env())
        logs = data.path("logs", "killed-worker-0.log").parent
        common.wait_for_quiet(args.max_wait)
        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "tagging", "worker", "--queue", "scrapes", "--workers", "1"],
                env=env,
                cwd=common.ROOT,
                stderr=(logs / f"killed-worker-{n}.log").open("w"),
            )
            for n in range(args.workers)
        ]
        try:
            return _run(args, settings, sessions, name, workers)
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.send_signal(signal.SIGINT)
            for worker in workers:
                try:
                    worker.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    worker.kill()
            client = redis.Redis.from_url(args.redis_url)
            for key in client.scan_iter(f"*{queue_name}*"):
                client.delete(key)


def _run(
    args: argparse.Namespace,
    settings: Any,
    sessions: Any,
    name: str,
    workers: list[subprocess.Popen[bytes]],
) -> int:
    from sqlalchemy import func, select

    from db.accounts import Actor
    from db.models import ChunkState, Role, Scrape, ScrapeChunk, SitemapItem
    from tagging.jobs.tasks import enqueue_scrape

    pids = {str(w.pid): w for w in workers}
    started = time.perf_counter()
    enqueue_scrape(settings, Actor(username="bench", role=Role.ANALYST), name)
    bar = _progress(args.items)

    def scrape() -> Scrape | None:
        with sessions() as session:
            row = session.scalar(select(Scrape).order_by(Scrape.id.desc()).limit(1))
            if row is not None:
                session.expunge(row)
            return row

    def stored_in(session: Any, chunk: ScrapeChunk) -> int:
        positions = [int(str(item["position"])) for item in chunk.items]
        return int(
            session.scalar(
                select(func.count())
                .select_from(SitemapItem)
                .where(
                    SitemapItem.scrape_id == chunk.scrape_id,
                    SitemapItem.position.between(min(positions), max(positions)),
                )
            )
            or 0
        )

    victim: dict[str, Any] = {}
    total_chunks = -(-args.items // args.chunk_size)
    while not victim:
        if time.perf_counter() - started > 600:
            raise SystemExit("no half-stored chunk to kill within 10 minutes")
        with sessions() as session:
            done = session.scalar(
                select(func.count())
                .select_from(ScrapeChunk)
                .where(ScrapeChunk.state == ChunkState.DONE)
            )
            if (done or 0) >= total_chunks // 5:
                for chunk in session.scalars(
                    select(ScrapeChunk).where(ScrapeChunk.state == ChunkState.RUNNING)
                ):
                    pid = (chunk.claimed_by or "::").split(":")[1]
                    stored = stored_in(session, chunk)
                    if pid in pids and 0 < stored < chunk.item_count:
                        pids[pid].send_signal(signal.SIGKILL)
                        victim = {"chunk": chunk.id, "pid": pid, "stored": stored}
                        victim["at"] = time.perf_counter()
                        break
        _update(bar, scrape())
        time.sleep(0.01)
    print(
        f"killed worker {victim['pid']} with chunk {victim['chunk']} half stored "
        f"({victim['stored']} of {args.chunk_size} items)",
        file=sys.stderr,
    )
    recovered = requeued = taken = None
    while True:
        current = scrape()
        _update(bar, current)
        with sessions() as session:
            chunk = session.get_one(ScrapeChunk, victim["chunk"])
            if requeued is None and (chunk.state != ChunkState.RUNNING or chunk.attempts > 1):
                requeued = time.perf_counter()
            if taken is None and chunk.attempts > 1:
                taken = time.perf_counter()
            if recovered is None and chunk.state == ChunkState.DONE:
                recovered = time.perf_counter()
                victim["by"] = (chunk.claimed_by or "::").split(":")[1]
                victim["attempts"] = chunk.attempts
        if current is not None and current.finished_at is not None:
            break
        if time.perf_counter() - started > 1800:
            raise SystemExit("the scrape did not finish within 30 minutes")
        time.sleep(0.05)
    ended = time.perf_counter()
    if bar is not None:
        bar.close()
    assert current is not None and recovered is not None and requeued is not None
    assert taken is not None
    with sessions() as session:
        rows = session.scalar(
            select(func.count()).select_from(SitemapItem).where(SitemapItem.scrape_id == current.id)
        )
        distinct = session.scalar(
            select(func.count(func.distinct(SitemapItem.position))).where(
                SitemapItem.scrape_id == current.id,
                SitemapItem.position >= 0,
                SitemapItem.position < args.items,
            )
        )
    lost = args.items - int(distinct or 0)
    twice = int(rows or 0) - int(distinct or 0)
    common.print_table(
        f"A worker SIGKILLed mid-chunk: {args.items:,} items, {args.workers} worker processes on "
        f"Redis, chunks of {args.chunk_size}, lease {args.lease:g} s, reclaim every "
        f"{args.reclaim:g} s; the real ML server, the demo CDN {args.latency_ms:g} ms away "
        f"({common.machine()})",
        ["measure", "value"],
        [
            ["scrape status", current.status],
            ["items stored", rows],
            ["items lost", lost],
            ["items stored twice", twice],
            ["scrape's counts", f"{current.item_count} items, {current.failed_count} failed"],
            ["chunks", current.chunk_total],
            [
                "killed chunk",
                f"{victim['stored']} items stored before the kill; done by worker "
                f"{victim['by']} on attempt {victim['attempts']}",
            ],
            [
                "kill → chunk queued again (lease expired, reclaimed)",
                f"{requeued - victim['at']:.2f} s",
            ],
            [
                # The chunk queued again waits behind the chunks queued before it (FIFO).
                "kill → chunk taken over (claimed by another worker)",
                f"{taken - victim['at']:.2f} s",
            ],
            [
                "time to recover (kill → chunk done by another worker)",
                f"{recovered - victim['at']:.2f} s",
            ],
            ["total time (queued → finished)", f"{ended - started:.2f} s"],
            ["items per second", f"{args.items / (ended - started):,.0f}"],
            ["items classified by the model", current.classified_count],
            [
                "items answered from the ML cache (the killed worker's batches in flight)",
                current.cached_count,
            ],
        ],
    )
    ok = lost == 0 and twice == 0 and current.item_count == args.items
    print("ok" if ok else "FAILED: items lost or stored twice")
    return 0 if ok else 1


def _progress(total: int) -> Any:
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="item", desc="scrape", file=sys.stderr)


def _update(bar: Any, scrape: Any) -> None:
    if bar is not None and scrape is not None:
        bar.n = scrape.item_count
        bar.refresh()


if __name__ == "__main__":
    common.run_main(main)
