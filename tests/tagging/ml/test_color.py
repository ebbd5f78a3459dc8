"""The color adapter: the embedded model on synthetic cars, and the vendor's HTTP model.

The vendor is outside our control, so it is the one thing faked: a stdlib HTTP server on
127.0.0.1 that answers whatever a test tells it to, reached through the real guarded client.
"""

from __future__ import annotations

import base64
import io
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
from PIL import Image

from db.vocab import COLORS
from tagging.config import Settings
from tagging.ingest.fetch import FetchPolicy, GuardedClient
from tagging.ml.color import (
    REFERENCE_RGB,
    ColorModel,
    ColorVendorError,
    EmbeddedColorModel,
    HttpColorModel,
    color_model_from_settings,
    srgb_to_lab,
)
from tagging.ml.data import render_decoded
from tagging.ml.synth import PALETTE

# --- the embedded model ------------------------------------------------------------------------


def test_reference_paints_match_the_renderer() -> None:
    assert REFERENCE_RGB == PALETTE


def test_lab_conversion() -> None:
    lab = srgb_to_lab(np.array([[255, 255, 255], [0, 0, 0], [255, 0, 0]]))
    assert lab[0] == pytest.approx([100.0, 0.0, 0.0], abs=0.05)
    assert lab[1] == pytest.approx([0.0, 0.0, 0.0], abs=0.05)
    assert lab[2] == pytest.approx([53.24, 80.09, 67.20], abs=0.05)


def test_embedded_model_names_every_palette_color() -> None:
    model = EmbeddedColorModel()
    rng = random.Random("color-test")
    truth, images = [], []
    for color in COLORS:
        for image_type in ("Dealer", "Stock"):
            for size in ((480, 360), (640, 480), (320, 240)):
                quality = rng.randint(60, 95)
                images.append(render_decoded(image_type, color, rng, quality=quality, size=size))
                truth.append(color)
    predicted = model.predict(images)
    hits = [p == t for p, t in zip(predicted, truth, strict=True)]
    assert np.mean(hits) >= 0.9, [(t, p) for t, p in zip(truth, predicted, strict=True) if t != p]
    for color in COLORS:  # no color is given up on
        assert any(h for h, t in zip(hits, truth, strict=True) if t == color), color


def test_embedded_model_edge_cases() -> None:
    model = EmbeddedColorModel()
    assert model.predict([]) == []
    # A frame with no paint-like pixels at all (a saturated cyan) has no answer.
    assert model.predict([Image.new("RGB", (200, 150), (0, 255, 255))]) == [None]
    flat = Image.new("RGB", (200, 150), REFERENCE_RGB["Green"])
    assert model.predict([flat.convert("P"), flat.convert("RGBA")]) == ["Green", "Green"]
    assert isinstance(model, ColorModel)


# --- the fake vendor ---------------------------------------------------------------------------

Answer = Callable[[dict[str, Any]], tuple[int, bytes]]


class _VendorHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _FakeVendor

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        payload = json.loads(body)
        self.server.requests.append(payload)
        status, answer = self.server.answer(payload)
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _FakeVendor(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _VendorHandler)
        self.requests: list[dict[str, Any]] = []
        self.answer: Answer = lambda payload: (200, b"{}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1/colors"

    def answer_json(self, make: Callable[[int], Any], status: int = 200) -> None:
        """Answer ``make(number of images)`` as JSON."""
        self.answer = lambda payload: (status, json.dumps(make(len(payload["images"]))).encode())


@pytest.fixture
def vendor() -> Iterator[_FakeVendor]:
    server = _FakeVendor()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def client(vendor: _FakeVendor) -> Iterator[GuardedClient]:
    port = vendor.server_address[1]
    with GuardedClient(FetchPolicy(allowed_hosts=(f"127.0.0.1:{port}",))) as guarded:
        yield guarded


def _cars(n: int) -> list[Image.Image]:
    return [Image.new("RGB", (64, 48), (10 * i, 20, 30)) for i in range(n)]


def test_vendor_answer_is_used(vendor: _FakeVendor, client: GuardedClient) -> None:
    vendor.answer_json(lambda n: {"colors": ["Red", None, "blue"][:n], "version": "vendor-x"})
    model = HttpColorModel(vendor.url, client)
    assert model.version == "vendor"
    assert model.predict(_cars(3)) == ["Red", None, "Blue"]
    assert model.version == "vendor-x"
    # The request carries one decodable base64 JPEG per image.
    (payload,) = vendor.requests
    assert len(payload["images"]) == 3
    first = Image.open(io.BytesIO(base64.b64decode(payload["images"][0])))
    assert first.format == "JPEG" and first.size == (64, 48)


def test_unknown_colors_become_none_with_a_reason(
    vendor: _FakeVendor, client: GuardedClient, caplog: pytest.LogCaptureFixture
) -> None:
    vendor.answer_json(lambda n: {"colors": ["Teal", "Grey", "GOLD"], "version": "v2"})
    model = HttpColorModel(vendor.url, client)
    answers = model.predict_detailed(_cars(3))
    assert [a.color for a in answers] == [None, "Gray", "Gold"]
    assert answers[0].raw == "Teal" and "unknown color 'Teal'" in (answers[0].reason or "")
    assert answers[1].reason is None
    assert "Teal" in caplog.text


def test_large_requests_are_split(vendor: _FakeVendor, client: GuardedClient) -> None:
    vendor.answer_json(lambda n: {"colors": ["White"] * n, "version": "v"})
    model = HttpColorModel(vendor.url, client, max_batch=2)
    assert model.predict(_cars(5)) == ["White"] * 5
    assert [len(r["images"]) for r in vendor.requests] == [2, 2, 1]
    assert model.predict([]) == [] and len(vendor.requests) == 3


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (lambda n: {"colors": ["Red"] * (n + 1)}, "2 colors for 1 images"),
        (lambda n: {"colors": []}, "0 colors for 1 images"),
        (lambda n: {"version": "v"}, "no 'colors' list"),
        (lambda n: {"colors": "Red"}, "no 'colors' list"),
        (lambda n: ["Red"], "no 'colors' list"),
        (lambda n: {"colors": [7]}, "int as a color"),
        (lambda n: {"colors": [{"name": "Red"}]}, "dict as a color"),
    ],
)
def test_malformed_answers_raise(
    vendor: _FakeVendor,
    client: GuardedClient,
    answer: Callable[[int], Any],
    message: str,
) -> None:
    vendor.answer_json(answer)
    with pytest.raises(ColorVendorError, match=message):
        HttpColorModel(vendor.url, client).predict(_cars(1))


def test_garbage_answer_raises(vendor: _FakeVendor, client: GuardedClient) -> None:
    vendor.answer = lambda payload: (200, b"\x89PNG not json at all")
    with pytest.raises(ColorVendorError, match="non-JSON"):
        HttpColorModel(vendor.url, client).predict(_cars(1))


def test_error_status_raises(vendor: _FakeVendor, client: GuardedClient) -> None:
    vendor.answer_json(lambda n: {"error": "overloaded"}, status=503)
    with pytest.raises(ColorVendorError, match="call failed") as info:
        HttpColorModel(vendor.url, client).predict(_cars(1))
    assert info.value.code == "color_vendor"


def test_timeout_raises(vendor: _FakeVendor, client: GuardedClient) -> None:
    def slow(payload: dict[str, Any]) -> tuple[int, bytes]:
        time.sleep(1.5)
        return 200, json.dumps({"colors": ["Red"]}).encode()

    vendor.answer = slow
    started = time.monotonic()
    with pytest.raises(ColorVendorError, match="timed out"):
        HttpColorModel(vendor.url, client, timeout=0.3).predict(_cars(1))
    assert time.monotonic() - started < 1.4


def test_unreachable_vendor_raises(client: GuardedClient) -> None:
    with pytest.raises(ColorVendorError):
        HttpColorModel("http://127.0.0.1:9/colors", client, timeout=1).predict(_cars(1))


def test_model_from_settings(tmp_path: Any, client: GuardedClient) -> None:
    embedded = color_model_from_settings(
        Settings.from_env({"TAGGING_DATA_DIR": str(tmp_path)}), client
    )
    assert isinstance(embedded, EmbeddedColorModel)
    settings = Settings.from_env(
        {"TAGGING_DATA_DIR": str(tmp_path), "TAGGING_COLOR_VENDOR_URL": "http://vendor.test/c"}
    )
    vendor_model = color_model_from_settings(settings, client)
    assert isinstance(vendor_model, HttpColorModel) and vendor_model.url == "http://vendor.test/c"
    assert isinstance(vendor_model, ColorModel)
