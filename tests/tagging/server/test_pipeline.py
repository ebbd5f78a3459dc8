"""The ML server's fetch/decode flow over real HTTP: bad URLs stay per-item errors, and the bytes
of downloaded images stay within the process's byte budget however large the batch.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tagging.ml.color import EmbeddedColorModel
from tagging.server.app import create_app
from tagging.server.pipeline import ByteBudget, PipelineConfig, model_image
from tagging.testing import UvicornThread
from tests.tagging.server.test_app import classify, demo_urls
from tests.utils.servers import ML_TOKEN, ml_settings

AUTH = {"Authorization": f"Bearer {ML_TOKEN}"}


def test_malformed_urls_are_their_items_errors_not_the_batchs(
    ml_server: object, cdn: object, demo_dir: Path
) -> None:
    good = demo_urls(cdn, demo_dir, limit=3)
    bad = [
        "http://a..b/x.jpg",
        "http://" + "a" * 300 + ".com/x.jpg",
        "http://" + "b" * 64 + ".com/x.jpg",
        "http://[::1/x.jpg",
        cdn.url.rstrip("/") + "/cdn/" + "c" * 2100 + ".jpg",  # type: ignore[attr-defined]
    ]
    results = classify(ml_server, [good[0], *bad, *good[1:]], thumbnails=False)["results"]
    assert len(results) == len(bad) + len(good)
    for result in [results[0], *results[-2:]]:
        assert result["error"] is None and result["image_type"] is not None, result
    for result, url in zip(results[1:-2], bad, strict=True):
        assert result["url"] == url
        assert result["image_type"] is None and result["error_code"] == "blocked_url", result
    messages = [r["error"] for r in results[1:-2]]
    assert "empty label" in messages[0]
    assert "over the 253" in messages[1] and "over the 63" in messages[2]
    assert "not a valid URL" in messages[3]
    assert "over the 2,048-character cap" in messages[4] and len(messages[4]) < 300


# --- the byte budget ---------------------------------------------------------------------------


def noise_png(width: int, height: int, seed: int) -> bytes:
    """A PNG of random pixels: it does not compress, so its size is about width × height × 3."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG", compress_level=1)
    return out.getvalue()


class _ImageServer(ThreadingHTTPServer):
    """Serves ``images[path]``; paths under ``/chunked/`` without a Content-Length."""

    daemon_threads = True

    def __init__(self, images: dict[str, bytes]) -> None:
        super().__init__(("127.0.0.1", 0), _ImageHandler)
        self.images = images

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ImageHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ImageServer

    def do_GET(self) -> None:
        body = self.server.images[self.path]
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("ETag", f'"{hash(body)}"')
        chunked = self.path.startswith("/chunked/")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        time.sleep(0.05)  # downloads overlap, so that an unbudgeted pipeline would hold many
        for start in range(0, len(body), 65536):
            piece = body[start : start + 65536]
            self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def images() -> Iterator[_ImageServer]:
    served = {f"/plain/{i}.png": noise_png(400, 350, i) for i in range(8)}
    served |= {f"/chunked/{i}.png": noise_png(400, 350, 100 + i) for i in range(4)}
    served["/plain/huge.png"] = noise_png(1100, 700, 999)  # over the whole budget below
    server = _ImageServer(served)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_downloaded_bytes_stay_within_the_budget_and_every_image_is_classified(
    tmp_path: Path, classifier: object, images: _ImageServer
) -> None:
    budget = 1024 * 1024
    host = images.base.split("://", 1)[1]
    settings = ml_settings(tmp_path, f"sqlite:///{tmp_path / 'ml_cache.sqlite'}", host)
    app = create_app(
        settings,  # type: ignore[arg-type]
        classifier=classifier,  # type: ignore[arg-type]
        color_model=EmbeddedColorModel(),
        pipeline_config=PipelineConfig(max_bytes_in_flight=budget),
    )
    urls = [images.base + path for path in images.images]
    with UvicornThread(app) as server:
        response = httpx.post(
            f"{server.url}/classify",
            json={"urls": urls, "thumbnails": False},
            headers=AUTH,
            timeout=120,
        )
        pipeline = app.state.tagging.pipeline
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert [r["error"] for r in results] == [None] * len(urls)
        assert results[-1]["width"] == 1100  # the original's size, not the reduced image's
        # Two 400 KiB images at most fit at once; each chunked one held the whole budget (its
        # size is unknown until read), and the huge one was let through alone.
        assert 400 * 1024 < pipeline.budget.peak <= budget
        assert pipeline.budget.held == 0


def test_byte_budget_serves_in_order_and_caps_oversized_requests() -> None:
    budget = ByteBudget(100)
    assert budget.acquire(60) == 60
    order: list[str] = []

    def take(name: str, size: int) -> None:
        taken = budget.acquire(size)
        order.append(name)
        budget.release(taken)

    big = threading.Thread(target=take, args=("big", 500))  # more than all: waits for all
    big.start()
    time.sleep(0.1)
    small = threading.Thread(target=take, args=("small", 10))  # fits, but queues behind big
    small.start()
    time.sleep(0.1)
    assert order == [] and budget.held == 60
    budget.release(60)
    big.join(5)
    small.join(5)
    assert order == ["big", "small"]
    assert budget.held == 0 and budget.peak == 100


def test_model_image_keeps_small_images_and_reduces_large_ones() -> None:
    small = Image.new("RGB", (240, 180))
    assert model_image(small, (320, 240)) is small
    large = model_image(Image.new("RGB", (4000, 3000)), (320, 240))
    assert large.width <= 320 and large.height <= 240 and large.width >= 160
    tall = model_image(Image.new("RGB", (300, 5000)), (320, 240))
    assert tall.height <= 240


# --- HTTP caching: fresh images cost no request, stale ones a conditional GET -----------------


def image_requests(cdn: object) -> dict[tuple[str, int], int]:
    """The demo CDN's image responses so far, per (method, status)."""
    counts: dict[tuple[str, int], int] = {}
    for (method, kind, status), n in cdn.requests.items():  # type: ignore[attr-defined]
        if kind == "image":
            counts[(method, status)] = counts.get((method, status), 0) + n
    return counts


def test_a_fresh_image_costs_no_request_to_the_cdn(
    ml_server: object, cdn: object, demo_dir: Path
) -> None:
    urls = demo_urls(cdn, demo_dir, limit=6)
    first = classify(ml_server, urls)["results"]
    assert image_requests(cdn) == {("GET", 200): len(urls)}
    assert all(r["fresh_until"] for r in first)  # the demo CDN says max-age=3600

    second = classify(ml_server, urls)["results"]
    assert image_requests(cdn) == {("GET", 200): len(urls)}, "no request while fresh"
    assert [r["image_key"] for r in second] == [r["image_key"] for r in first]
    assert all(r["cached"] for r in second)
    assert [r["fresh_until"] for r in second] == [r["fresh_until"] for r in first]


def test_a_stale_image_is_revalidated_with_a_conditional_get_and_keeps_its_key(
    ml_server: object, cdn: object, demo_dir: Path
) -> None:
    cdn.image_max_age = 0  # type: ignore[attr-defined]
    urls = demo_urls(cdn, demo_dir, limit=6)
    first = classify(ml_server, urls)["results"]
    assert all(r["fresh_until"] is None for r in first)  # stale at once
    second = classify(ml_server, urls)["results"]
    # One conditional GET per image, answered 304 (no body); no HEAD, no second download.
    assert image_requests(cdn) == {("GET", 200): len(urls), ("GET", 304): len(urls)}
    assert [r["image_key"] for r in second] == [r["image_key"] for r in first]
    assert all(r["cached"] and r["error"] is None for r in second)


class _Versioned(BaseHTTPRequestHandler):
    """One image per path whose ETag, body and caching headers a test changes at will."""

    protocol_version = "HTTP/1.1"
    server: _VersionedServer

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def _answer(self, head: bool) -> None:
        image = self.server.images[self.path]
        matches = self.headers.get("If-None-Match") == image["etag"]
        status = 304 if matches and image["etag"] else 200
        self.server.log.append((self.command, self.path, status))
        self.send_response(status)
        self.send_header("ETag", image["etag"])
        for name in ("Cache-Control", "Expires"):
            if image.get(name):
                self.send_header(name, image[name])
        if status == 304:
            self.end_headers()
            return
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(image["body"])))
        self.end_headers()
        if not head:
            self.wfile.write(image["body"])

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _VersionedServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Versioned)
        self.images: dict[str, dict[str, Any]] = {}
        self.log: list[tuple[str, str, int]] = []

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def versioned(tmp_path: Path, classifier: object) -> Iterator[tuple[_VersionedServer, str]]:
    """A versioned image server and an ML server allowed to reach it (its URL)."""
    images = _VersionedServer()
    threading.Thread(target=images.serve_forever, args=(0.05,), daemon=True).start()
    host = images.base.split("://", 1)[1]
    settings = ml_settings(tmp_path, f"sqlite:///{tmp_path / 'ml_cache.sqlite'}", host)
    app = create_app(settings, classifier=classifier, color_model=EmbeddedColorModel())  # type: ignore[arg-type]
    with UvicornThread(app) as server:
        yield images, server.url
    images.shutdown()
    images.server_close()


def post(ml_url: str, urls: list[str], **options: object) -> list[dict[str, Any]]:
    response = httpx.post(
        f"{ml_url}/classify", json={"urls": urls, **options}, headers=AUTH, timeout=60
    )
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    return results


def test_a_changed_etag_gives_a_new_key_and_the_image_is_classified_again(
    versioned: tuple[_VersionedServer, str],
) -> None:
    images, ml_url = versioned
    images.images["/car.png"] = {
        "body": noise_png(64, 48, 1),
        "etag": '"v1"',
        "Cache-Control": "no-cache",
    }
    url = images.base + "/car.png"
    (first,) = post(ml_url, [url])
    (same,) = post(ml_url, [url])
    assert same["image_key"] == first["image_key"] and same["cached"]
    assert images.log[-1] == ("GET", "/car.png", 304)  # no-cache: asked every time, 304

    images.images["/car.png"] = {
        "body": noise_png(64, 48, 2),
        "etag": '"v2"',
        "Cache-Control": "no-cache",
    }
    (changed,) = post(ml_url, [url])
    assert images.log[-1] == ("GET", "/car.png", 200)
    assert changed["image_key"] != first["image_key"]
    assert not changed["cached"] and changed["sha256"] != first["sha256"]  # classified again


def test_no_store_means_a_head_and_expires_gives_a_lifetime(
    versioned: tuple[_VersionedServer, str],
) -> None:
    images, ml_url = versioned
    images.images["/private.png"] = {
        "body": noise_png(64, 48, 3),
        "etag": '"p1"',
        "Cache-Control": "no-store",
    }
    images.images["/expires.png"] = {
        "body": noise_png(64, 48, 4),
        "etag": '"e1"',
        "Expires": format_datetime(datetime.now(UTC) + timedelta(days=1), usegmt=True),
    }
    urls = [images.base + "/private.png", images.base + "/expires.png"]
    first = post(ml_url, urls)
    assert first[0]["fresh_until"] is None
    until = datetime.fromisoformat(first[1]["fresh_until"])
    assert abs(until - (datetime.now(UTC) + timedelta(days=1))) < timedelta(minutes=1)
    images.log.clear()
    second = post(ml_url, urls)
    # no-store keeps no validators: a HEAD settles the key; the Expires one is not asked at all.
    assert images.log == [("HEAD", "/private.png", 200)]
    assert [r["image_key"] for r in second] == [r["image_key"] for r in first]
    assert all(r["cached"] for r in second)


def test_no_thumbnail_is_sent_for_a_key_the_caller_has(
    ml_server: object, cdn: object, demo_dir: Path
) -> None:
    urls = demo_urls(cdn, demo_dir, limit=4)
    first = classify(ml_server, urls)["results"]
    assert all(r["thumbnail_b64"] for r in first)
    known = [first[0]["image_key"], first[1]["image_key"]]
    again = classify(ml_server, urls, known_keys=known)["results"]
    assert [bool(r["thumbnail_b64"]) for r in again] == [False, False, True, True]
    fresh = classify(ml_server, demo_urls(cdn, demo_dir, limit=6)[4:], known_keys=known)
    assert all(r["thumbnail_b64"] for r in fresh["results"])  # new images: thumbnails as ever
