"""The ML server's memory under hostile and heavy requests, measured on a real server process.

``python -m tagging serve`` runs as a subprocess (see :mod:`common`); its resident set is read
from ``/proc/PID/status`` (``VmRSS`` now, ``VmHWM`` the peak so far) after each stage:

1. **idle**: started, then one small warm-up ``/classify`` (torch, the pools, the cache loaded);
2. **unauthenticated POSTs**: ``--posts`` (6) concurrent POSTs of ``--post-mib`` (60) MB bodies
   without a token (the body limit answers 401 before reading them);
3. **oversized POSTs**: the same with the token (413 from the declared length);
4. **large images**: one ``/classify`` batch of ``--images`` (48) noise images of about
   ``--image-mib`` (14) MiB each, half JPEG and half PNG, served by a stdlib server on loopback
   in this process (allow-listed through ``TAGGING_ALLOWED_HOSTS``); every URL is distinct, so
   every image is downloaded and decoded.

Stages 1–3 run on one server, then 1 and 4 on a new one, so that each peak belongs to its own
stage. Every figure comes from this one run (about a minute, plus the demo and model set-up the
first time). Usage::

    .venv/bin/python bench/memory_bench.py [--quick] [--images N] [--image-mib M]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
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
    """``(VmRSS, VmHWM)`` of ``pid`` in bytes."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) * 1024
    return values["VmRSS"], values["VmHWM"]


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_arguments(parser)
    parser.add_argument("--quick", action="store_true", help="12 images, 3 posts of 20 MB")
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--image-mib", type=float, default=14.0)
    parser.add_argument("--posts", type=int, default=6)
    parser.add_argument("--post-mib", type=float, default=60.0)
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.posts, args.post_mib = 12, 3, 20.0

    data = common.prepare(args.work)
    print(f"machine: {common.machine()}", flush=True)
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
