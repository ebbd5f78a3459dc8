"""The review page's original image: fetched through the guarded client, re-encoded to fit."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tagging.errors import BlockedURLError, ImageDecodeError
from tagging.ingest.originals import ORIGINAL_SIZE, fetch_original
from tests.utils.servers import ml_settings, static_server


def _png(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


BODIES = {"/big.png": (_png((1600, 1200)), "image/png"), "/page.png": (b"<html>", "image/png")}


@pytest.fixture
def server() -> Iterator[str]:
    with static_server(BODIES) as host:
        yield host


def test_the_original_is_a_jpeg_that_fits(server: str, tmp_path: Path) -> None:
    settings = ml_settings(tmp_path, "sqlite://", server)
    jpeg = fetch_original(settings, f"http://{server}/big.png")  # type: ignore[arg-type]
    image = Image.open(io.BytesIO(jpeg))
    assert image.format == "JPEG"
    assert image.size == ORIGINAL_SIZE


def test_blocked_and_broken_originals_are_tagging_errors(server: str, tmp_path: Path) -> None:
    with pytest.raises(BlockedURLError):
        fetch_original(ml_settings(tmp_path, "sqlite://"), f"http://{server}/big.png")  # type: ignore[arg-type]
    with pytest.raises(ImageDecodeError):
        fetch_original(ml_settings(tmp_path, "sqlite://", server), f"http://{server}/page.png")  # type: ignore[arg-type]
