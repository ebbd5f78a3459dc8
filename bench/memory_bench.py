"""Memory of the scrape process at 100,000 and 500,000 items, and of the ML server under hostile
and heavy requests, each measured on a real process.

**The scrape process** (``--scrape-items``, default 100,000 and 500,000): a sitemap index whose
sub-sitemaps hold 50,000 items each (10,000 pages of 5 images: the protocol's 50,000 ``<url>`` per
document are far from reached), served by a stdlib server in this process, is scraped by a child
process into a fresh SQLite app database. The ML server is a stub in this process that answers
every ``/classify`` at once with made-up results (and a 400-byte thumbnail each): the ML server's
own memory is measured below, and a real one would need 20 minutes for 500,000 new images. The
child runs :func:`tagging.ingest.scrape.run_scrape` as ``python -m tagging scrape`` does, and
reports its peak RSS (``ru_maxrss``) twice: once its items are stored, and after the weird-result
findings are refreshed (:func:`after_scrape`): the scrape's whole peak. Then, in the same child,
"before": the refresh with the detectors of :data:`BEFORE_COMMIT` (read with ``git show`` into a
temporary package; they loaded every item of every latest scrape as Python objects), last because
a peak only grows, its writes rolled back (``--skip-before``: not run). A second child then
re-scrapes the unchanged sitemap (every document answers 304, every image is fresh: the items are
copied in one ``INSERT ... SELECT``). Target: the scrape's whole peak, refresh included, under
300 MiB at 500,000 items. The child is started by a small wrapper, as in ``scrape_bench.py``
(Linux keeps a process's peak RSS across ``exec``).

**The ML server** (skipped with ``--skip-server``):

``python -m tagging serve`` runs as a subprocess (see :mod:`common`); its resident set, with its
uvicorn workers' when it runs several, is read from ``/proc/PID/status`` (``VmRSS`` now, ``VmHWM``
the peak so far, each summed over the processes) after each stage:

1. **idle**: started, then one small warm-up ``/classify`` (torch, the pools, the cache loaded);
2. **unauthenticated POSTs**: ``--posts`` (6) concurrent POSTs of ``--post-mib`` (60) MB bodies
   without a token (the body limit answers 401 before reading them);
3. **oversized POSTs**: the same with the token (413 from the declared length);
4. **large images**: one ``/classify`` batch of ``--images`` (48) noise images of about
   ``--image-mib`` (14) MiB each, half JPEG and half PNG, served by a stdlib server on loopback
   in this process (allow-listed through ``TAGGING_ALLOWED_HOSTS``); every URL is distinct, so
   every image is downloaded and decoded.

Stages 1–3 run on one server, then 1 and 4 on a new one, so that each peak belongs to its own
stage. Every figure comes from this one run (the server part about a minute, plus the demo and
model set-up the first time; the scrapes about 4 minutes per 500,000 items). Usage::

    .venv/bin/python bench/memory_bench.py [--quick] [--images N] [--image-mib M]
        [--scrape-items 100000,500000] [--skip-scrape] [--skip-server] [--skip-before]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import common
import httpx
import numpy as np
from PIL import Image

MIB = 1024 * 1024


def noise_image(fmt: str, target_bytes: int, seed: int) -> bytes:
    """A noise image of about ``target_bytes`` (noise does not compress: size ≈ pixels)."""
    bytes_per_pixel = 1.12 if fmt == "JPEG" else 3.0  # measured: JPEG q95 noise, PNG level 1
    pixels = int(target_bytes / bytes_per_pixel)
    width = int((pixels * 1.5) ** 0.5)
    height = pixels // width
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    if fmt == "JPEG":
        Image.fromarray(array).save(out, format="JPEG", quality=95)
    else:
        Image.fromarray(array).save(out, format="PNG", compress_level=1)
    return out.getvalue()


class ImageServer(ThreadingHTTPServer):
    """``/N.jpg`` and ``/N.png`` for any N: the same bytes under every URL."""

    daemon_threads = True

    def __init__(self, jpeg: bytes, png: bytes) -> None:
        super().__init__((common.HOST, 0), _Handler)
        self.jpeg, self.png = jpeg, png

    @property
    def host_entry(self) -> str:
        return f"{common.HOST}:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ImageServer

    def do_GET(self) -> None:
        png = self.path.endswith(".png")
        body = self.server.png if png else self.server.jpeg
        self.send_response(200)
        self.send_header("Content-Type", "image/png" if png else "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def memory(pid: int) -> tuple[int, int]:
    """``(VmRSS, VmHWM)`` in bytes of ``pid`` and its live children, summed.

    ``serve`` may run uvicorn's workers as child processes: they hold the models and serve the
    requests, so the supervisor alone says little. The sum of the peaks is an upper bound of the
    whole server's peak.
    """
    total_rss = total_hwm = 0
    for process in [pid, *_children(pid)]:
        values: dict[str, int] = {}
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{process}/status").read_text().splitlines():
                name, _, rest = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    values[name] = int(rest.split()[0]) * 1024
        total_rss += values.get("VmRSS", 0)
        total_hwm += values.get("VmHWM", 0)
    return total_rss, total_hwm


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(p) for p in (task / "children").read_text().split()]
    return found


def big_posts(url: str, count: int, size: int, headers: dict[str, str]) -> Counter[str]:
    """``count`` concurrent POSTs of ``size`` bytes each; how they ended."""
    body = b"x" * size

    def one(_: int) -> str:
        try:
            response = httpx.post(
                f"{url}/classify",
                content=body,
                headers={**headers, "Content-Type": "application/json"},
                timeout=120,
            )
            return str(response.status_code)
        except httpx.HTTPError as exc:
            return type(exc).__name__

    with ThreadPoolExecutor(count) as pool:
        return Counter(pool.map(one, range(count)))


# --- the scrape process ------------------------------------------------------------------------

SCRAPE_ITEMS = (100_000, 500_000)
ITEMS_PER_DOCUMENT = 50_000
IMAGES_PER_PAGE = 5
TARGET_SCRAPE_RSS = 300 * MIB

BEFORE_COMMIT = "9c095499536ca7f43cc87b3d0e4546b4735d40c4"
"""The last commit whose detectors loaded every latest item as Python objects: the "before"."""
BEFORE_MODULES = (
    "base", "common", "facts", "registry", "ml_outage", "advertiser_placeholder",
    "legacy_placeholder", "shared_cdn_conflict", "fix_not_sticking", "near_duplicates",
    "criteria_shift",
)  # fmt: skip

SCRAPE_CHILD = """
import json, resource, sys, time
from db.engine import make_engine, make_session_factory
from tagging.config import Settings
from tagging.ingest.fetch import client_from_settings
from tagging.ingest.scrape import ScrapeConfig, after_scrape, run_scrape
from tagging.server.client import MLClient

def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

settings = Settings.from_env()
sessions = make_session_factory(make_engine(settings.database_url))
client, ml = client_from_settings(settings), MLClient.from_settings(settings)
started = peak()
summary = run_scrape(sessions, sys.argv[1], ml=ml, client=client,
                     config=ScrapeConfig(refresh_findings=False))
stored = peak()
begun = time.perf_counter()
after_scrape(sessions, summary.scrape_id, ml=ml)
result = {**summary.as_dict(), "peak_started": started, "peak_stored": stored,
          "peak_refreshed": peak(), "refresh_seconds": time.perf_counter() - begun}
if len(sys.argv) > 2:
    # The same refresh with the detectors of BEFORE_COMMIT (sys.argv[2]: their package's parent),
    # last: a process's peak only grows, so this one's is the scrape's peak as it was.
    sys.path.insert(0, sys.argv[2])
    from before_detectors.facts import load_facts
    from before_detectors.registry import detect_all
    from db.findings import store_candidates
    from db.models import Scrape
    begun = time.perf_counter()
    with sessions() as session:
        advertiser_id = session.get_one(Scrape, summary.scrape_id).advertiser_id
        facts = load_facts(session, advertiser_id=advertiser_id, scrape_id=summary.scrape_id)
        candidates = detect_all(facts)
        store_candidates(session, candidates, advertiser_id=advertiser_id)
        session.rollback()
    result.update(peak_before=peak(), before_seconds=time.perf_counter() - begun,
                  before_candidates=len(candidates))
print(json.dumps(result))
"""
"""What ``python -m tagging scrape NAME`` does, with the findings' refresh measured apart; then,
given a ``before_detectors`` package, the refresh as it was before (its writes rolled back)."""


def before_detectors(target: Path) -> Path | None:
    """The detectors of :data:`BEFORE_COMMIT` as the package ``before_detectors`` under
    ``target`` (read with ``git show``; the work tree is not touched), or None without git."""
    package = target / "before_detectors"
    package.mkdir(parents=True, exist_ok=True)
    for name in BEFORE_MODULES:
        shown = subprocess.run(
            ["git", "show", f"{BEFORE_COMMIT}:tagging/detectors/{name}.py"],
            cwd=common.ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        if shown.returncode != 0:
            return None
        code = shown.stdout.replace("tagging.detectors.", "before_detectors.")
        (package / f"{name}.py").write_text(code)
    (package / "__init__.py").write_text("")
    return target


WRAPPER = """
import json, resource, subprocess, sys
child = subprocess.run(sys.argv[2:], stdout=subprocess.PIPE, check=False)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], "w") as file:
    out = child.stdout.decode(errors="replace")
    json.dump({"maxrss_kib": usage.ru_maxrss, "exit": child.returncode, "out": out}, file)
"""
"""Runs the child and records its ``ru_maxrss`` (its only child, so RUSAGE_CHILDREN is the
child's). A small interpreter: the child does not inherit a large process's peak."""


def urlset_document(base: str, tag: str, first: int, count: int) -> bytes:
    """``count`` image items, 5 per page, every image URL distinct."""
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9" '
        'xmlns:image="http://www.google.com/schemas/sitemap-image/1.1">\n'
    ]
    for page_start in range(first, first + count, IMAGES_PER_PAGE):
        page = page_start // IMAGES_PER_PAGE
        parts.append(f"<url><loc>{base}/vehicles/{tag}/{page}</loc>")
        for n in range(page_start, min(page_start + IMAGES_PER_PAGE, first + count)):
            parts.append(
                f"<image:image><image:loc>{base}/img/{tag}/{n}.jpg</image:loc>"
                f"<image:title>Vehicle {page}</image:title></image:image>"
            )
        parts.append("</url>\n")
    parts.append("</urlset>\n")
    return "".join(parts).encode()


class DocumentServer(ThreadingHTTPServer):
    """Fixed documents by path, with an ETag each (304 to ``If-None-Match``), and the stub ML
    server's ``/classify``, which answers every URL at once with a made-up result."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__((common.HOST, 0), _DocumentHandler)
        self.documents: dict[str, bytes] = {}
        self.etags: dict[str, str] = {}
        self.thumbnail = base64.b64encode(_tiny_jpeg()).decode()
        self.classified = 0

    @property
    def base(self) -> str:
        return f"http://{common.HOST}:{self.server_address[1]}"

    @property
    def host_entry(self) -> str:
        return f"{common.HOST}:{self.server_address[1]}"

    def add(self, path: str, body: bytes) -> None:
        self.documents[path] = body
        self.etags[path] = f'"{hashlib.sha256(body).hexdigest()[:16]}"'


def _tiny_jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (24, 18), (120, 30, 30)).save(out, format="JPEG", quality=80)
    return out.getvalue()


class _DocumentHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: DocumentServer

    def do_GET(self) -> None:
        body = self.server.documents.get(self.path)
        if body is None:
            self.send_error(404)
            return
        etag = self.server.etags[self.path]
        if self.headers.get("If-None-Match") == etag:
            self.send_response(304)
            self.send_header("ETag", etag)
            self.end_headers()
            return
        self._send(body, "application/xml", {"ETag": etag})

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        fresh_until = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        results = []
        for url in request["urls"]:
            digest = hashlib.sha256(url.encode()).hexdigest()
            results.append(
                {
                    "url": url,
                    "image_key": digest[:32],
                    "image_type": "Dealer",
                    "color": "Black",
                    "ml_image_type": "Dealer",
                    "ml_color": "Black",
                    "confidence": 0.9,
                    "probabilities": {"Dealer": 0.9, "Stock": 0.06, "Placeholder": 0.04},
                    "model_version": "stub-1",
                    "color_model_version": "stub-color-1",
                    "type_source": "model",
                    "color_source": "model",
                    "etag": f'"{digest[:12]}"',
                    "content_length": 20_000,
                    "sha256": digest,
                    "phash": digest[:16],
                    "width": 480,
                    "height": 360,
                    "thumbnail_b64": self.server.thumbnail,
                    "fresh_until": fresh_until,
                }
            )
        self.server.classified += len(results)
        body = json.dumps(
            {"results": results, "model_version": "stub-1", "color_model_version": "stub-color-1"}
        ).encode()
        self._send(body, "application/json")

    def _send(self, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def scrape_child(
    advertiser: str, env: dict[str, str], rusage_path: Path, before: Path | None = None
) -> dict[str, Any]:
    """Run :data:`SCRAPE_CHILD` for ``advertiser`` under the wrapper; its summary and peaks."""
    rusage_path.unlink(missing_ok=True)
    command = [sys.executable, "-c", SCRAPE_CHILD, advertiser, *([str(before)] if before else [])]
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", WRAPPER, str(rusage_path), *command],
        env=env,
        cwd=common.ROOT,
        check=False,
    )
    wall = time.perf_counter() - started
    usage = json.loads(rusage_path.read_text())
    if usage["exit"] != 0 or not usage["out"].strip():
        raise SystemExit(f"the scrape of {advertiser} failed (exit {usage['exit']})")
    summary: dict[str, Any] = json.loads(usage["out"].strip().splitlines()[-1])
    summary["peak_rss"] = usage["maxrss_kib"] * 1024
    summary["wall_seconds"] = wall
    return summary


def scrape_memory(
    data: common.BenchData, counts: Sequence[int], max_wait: float, *, before: bool = True
) -> list[list[object]]:
    """Scrape a ``count``-item sitemap, then again unchanged, in child processes; table rows."""
    before_path = before_detectors(data.work / "before") if before else None
    if before and before_path is None:
        print(f"no git or no commit {BEFORE_COMMIT[:7]}: no 'before' figures", file=sys.stderr)
    from db.advertisers import add_advertiser
    from db.engine import make_engine, make_session_factory

    server = DocumentServer()
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    rows: list[list[object]] = []
    try:
        for count in counts:
            tag = f"m{count}"
            children = []
            for first in range(0, count, ITEMS_PER_DOCUMENT):
                path = f"/{tag}/part-{first // ITEMS_PER_DOCUMENT}.xml"
                size = min(ITEMS_PER_DOCUMENT, count - first)
                server.add(path, urlset_document(server.base, tag, first, size))
                children.append(server.base + path)
            entries = "".join(f"<sitemap><loc>{url}</loc></sitemap>" for url in children)
            server.add(
                f"/{tag}/index.xml",
                (
                    '<?xml version="1.0" encoding="UTF-8"?><sitemapindex '
                    f'xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{entries}</sitemapindex>'
                ).encode(),
            )
            database = data.path("db", f"memory-scrape-{count}.sqlite")
            db_url = common.fresh_app_db(database)
            engine = make_engine(db_url)
            name = f"Memory bench {count:,}"
            with make_session_factory(engine).begin() as session:
                add_advertiser(session, name, f"{server.base}/{tag}/index.xml")
            engine.dispose()
            env = {k: v for k, v in os.environ.items() if not k.startswith("TAGGING_")}
            env.update(
                {
                    "TAGGING_DATA_DIR": str(data.work / "data"),
                    "TAGGING_DATABASE_URL": db_url,
                    "TAGGING_ML_URL": server.base,
                    "TAGGING_ML_TOKEN": "stub-token-0123456789",
                    "TAGGING_ALLOWED_HOSTS": server.host_entry,
                }
            )
            size = sum(len(server.documents[u.removeprefix(server.base)]) for u in children)
            for label in ("first scrape", "re-scrape, unchanged"):
                common.wait_for_quiet(max_wait)
                print(f"{label}: {count:,} items in a child process", file=sys.stderr, flush=True)
                result = scrape_child(
                    name, env, data.path("logs", "memory-scrape-rusage.json"), before_path
                )
                refreshed = result["peak_refreshed"]
                was = result.get("peak_before")
                rows.append(
                    [
                        f"{count:,} items ({len(children)} documents, {size / 1e6:.0f} MB): "
                        f"{label}",
                        result["items"],
                        result["copied"],
                        f"{result['seconds']:.1f}",
                        common.mib(result["peak_started"]),
                        common.mib(result["peak_stored"]),
                        f"{result['refresh_seconds']:.2f}",
                        common.mib(refreshed),
                        f"{result['before_seconds']:.2f}" if was else "-",
                        common.mib(was) if was else "-",
                        common.mib(result["peak_rss"]),
                        "ok" if refreshed < TARGET_SCRAPE_RSS else "MISSED",
                    ]
                )
    finally:
        server.shutdown()
        server.server_close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_arguments(parser)
    parser.add_argument("--quick", action="store_true", help="12 images, 3 posts of 20 MB")
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--image-mib", type=float, default=14.0)
    parser.add_argument("--posts", type=int, default=6)
    parser.add_argument("--post-mib", type=float, default=60.0)
    parser.add_argument(
        "--scrape-items",
        default=",".join(str(n) for n in SCRAPE_ITEMS),
        help="items of the scraped sitemaps, comma-separated (default 100000,500000; "
        "--quick 20000)",
    )
    parser.add_argument("--skip-scrape", action="store_true", help="only the ML server")
    parser.add_argument(
        "--skip-before",
        action="store_true",
        help=f"no refresh with the detectors of {BEFORE_COMMIT[:7]} (the 'before' figures)",
    )
    parser.add_argument("--skip-server", action="store_true", help="only the scrape process")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.posts, args.post_mib = 12, 3, 20.0
        args.scrape_items = "20000"

    data = common.prepare(args.work)
    print(f"machine: {common.machine()}", flush=True)
    if not args.skip_scrape:
        counts = [int(n) for n in args.scrape_items.split(",") if n.strip()]
        common.print_table(
            "Scrape process (child, fresh SQLite app DB, stub ML server): peak RSS "
            "(ru_maxrss) at its start, once its items are stored, after the findings' refresh "
            "(the scrape's whole peak); then, in the same process, the refresh as it was "
            f"before (detectors of {BEFORE_COMMIT[:7]}, every latest item loaded; run last, "
            "its writes rolled back)",
            ["sitemap", "items", "copied", "scrape s", "peak at start",
             "peak, items stored", "refresh s", "peak, after refresh", "before: refresh s",
             "before: peak", "child ru_maxrss", "< 300 MiB (whole scrape)"],
            scrape_memory(data, counts, args.max_wait, before=not args.skip_before),
        )  # fmt: skip
    if args.skip_server:
        return 0
    target = int(args.image_mib * MIB)
    jpeg, png = noise_image("JPEG", target, 1), noise_image("PNG", target, 2)
    image_server = ImageServer(jpeg, png)
    threading.Thread(target=image_server.serve_forever, args=(0.05,), daemon=True).start()
    token = common.new_token()
    rows: list[list[object]] = []

    with common.Services() as stack:
        cdn = common.start_cdn(stack, data)
        auth = {"Authorization": f"Bearer {token}"}
        warm = next(p for p, image in data.inventory.images.items() if image.kind == "ok")
        server_pid = 0

        def stage(name: str, outcome: str, seconds: float) -> None:
            rss, hwm = memory(server_pid)
            rows.append([name, outcome, f"{seconds:.1f}", common.mib(rss), common.mib(hwm)])

        def fresh_server(name: str) -> common.Service:
            """A new ML server, warmed up with one demo image, its idle memory recorded."""
            nonlocal server_pid
            ml = common.start_ml_server(
                stack,
                data,
                cdn,
                token,
                data.path(f"memory-bench-{name}.sqlite"),
                extra_allowed=(image_server.host_entry,),
            )
            server_pid = ml.process.pid
            start = time.perf_counter()
            response = httpx.post(
                f"{ml.url}/classify", json={"urls": [cdn.url + warm]}, headers=auth, timeout=120
            )
            stage(f"{name}: idle, after one warm-up image", str(response.status_code), 0.0)
            rows[-1][2] = f"{time.perf_counter() - start:.1f}"
            return ml

        # Each part on a server of its own, so that each peak is that part's alone.
        ml = fresh_server("server 1")
        common.wait_for_quiet(args.max_wait)
        size = int(args.post_mib * 1_000_000)
        for name, headers in (("unauthenticated", {}), ("authenticated, oversized", auth)):
            start = time.perf_counter()
            ended = big_posts(ml.url, args.posts, size, headers)
            outcome = ", ".join(f"{n}× {status}" for status, n in sorted(ended.items()))
            label = f"server 1: {args.posts} concurrent {args.post_mib:g} MB POSTs, {name}"
            stage(label, outcome, time.perf_counter() - start)
        ml.stop()

        ml = fresh_server("server 2")
        common.wait_for_quiet(args.max_wait)
        base = f"http://{image_server.host_entry}"
        urls = [f"{base}/{i}.{'png' if i % 2 else 'jpg'}" for i in range(args.images)]
        start = time.perf_counter()
        response = httpx.post(
            f"{ml.url}/classify",
            json={"urls": urls, "thumbnails": False},
            headers=auth,
            timeout=600,
        )
        seconds = time.perf_counter() - start
        if response.status_code == 200:
            results = response.json()["results"]
            errors = Counter(r["error_code"] for r in results if r["error"])
            outcome = f"{len(results) - sum(errors.values())} classified" + "".join(
                f", {n}× {code}" for code, n in errors.items()
            )
        else:
            outcome = f"HTTP {response.status_code}"
        label = (
            f"server 2: {args.images} images of {len(jpeg) / MIB:.1f} MiB (JPEG) / "
            f"{len(png) / MIB:.1f} MiB (PNG) in one /classify"
        )
        stage(label, outcome, seconds)

    image_server.shutdown()
    common.print_table(
        "ML server memory (VmRSS now, VmHWM = peak so far) after each stage",
        ["stage", "answers", "seconds", "VmRSS", "VmHWM"],
        rows,
    )
    return 0


if __name__ == "__main__":
    common.run_main(main)
