"""Image identity, hashes, thumbnails and safe decoding of hostile bytes."""

from __future__ import annotations

import io
import random

import pytest
from PIL import Image

from tagging.errors import ImageDecodeError
from tagging.ingest.images import (
    MAX_PIXELS,
    content_sha256,
    decode_image,
    hash_distance,
    image_key,
    make_thumbnail,
    perceptual_hash,
)
from tagging.ml.synth import render


def encode(image: Image.Image, fmt: str = "JPEG", **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def car_like(size: tuple[int, int] = (480, 360)) -> Image.Image:
    image = Image.new("RGB", size, (120, 170, 230))
    image.paste((200, 30, 30), (size[0] // 4, size[1] // 3, 3 * size[0] // 4, 2 * size[1] // 3))
    return image


class TestImageKey:
    def test_depends_on_url_and_each_header(self) -> None:
        headers = {
            "ETag": '"abc"',
            "Last-Modified": "Tue, 01 Dec 2026 10:00:00 GMT",
            "Content-Length": "10",
        }
        base = image_key("http://cdn/a.jpg", headers)
        assert len(base) == 32
        assert image_key("http://cdn/a.jpg", {k.lower(): v for k, v in headers.items()}) == base
        assert image_key("http://cdn/b.jpg", headers) != base
        for name in headers:
            assert image_key("http://cdn/a.jpg", {**headers, name: "changed"}) != base

    def test_ignores_other_headers(self) -> None:
        headers = {"ETag": '"abc"'}
        assert image_key("u", {**headers, "Date": "now", "Server": "x"}) == image_key("u", headers)


class TestDecode:
    def test_jpeg_is_draft_decoded_and_keeps_original_size(self) -> None:
        decoded = decode_image(encode(car_like((1920, 1440))), draft_size=(160, 120))
        assert (decoded.width, decoded.height) == (1920, 1440)
        assert decoded.image.size == (240, 180)  # 1/8 scale, the smallest >= 160x120
        assert decoded.image.mode == "RGB" and decoded.format == "JPEG"

    @pytest.mark.parametrize(
        ("mode", "fmt"),
        [
            ("P", "PNG"),
            ("LA", "PNG"),
            ("RGBA", "PNG"),
            ("CMYK", "JPEG"),
            ("I;16", "PNG"),
            ("L", "JPEG"),
            ("1", "PNG"),
        ],
    )
    def test_every_mode_becomes_rgb(self, mode: str, fmt: str) -> None:
        image = car_like((64, 48)).convert("RGBA" if mode in ("LA", "RGBA") else "RGB")
        image = image.convert(mode) if mode != "I;16" else Image.new("I;16", (64, 48), 40000)
        decoded = decode_image(encode(image, fmt))
        assert decoded.image.mode == "RGB"
        if mode == "I;16":  # 16-bit values are scaled, not clipped to white
            assert decoded.image.getpixel((0, 0))[0] == 40000 // 256

    def test_transparent_png_goes_on_white(self) -> None:
        decoded = decode_image(encode(Image.new("RGBA", (8, 8), (0, 0, 0, 0)), "PNG"))
        assert decoded.image.getpixel((4, 4)) == (255, 255, 255)

    def test_exif_orientation_is_applied(self) -> None:
        image = car_like((400, 200))
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90° clockwise when shown
        decoded = decode_image(encode(image, exif=exif.tobytes()), draft_size=(400, 200))
        assert decoded.image.size == (200, 400)

    @pytest.mark.parametrize(
        ("data", "message"),
        [
            (b"", "empty"),
            (b"<!DOCTYPE html><html><body>Not found</body></html>", "HTML"),
            (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
            (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "corrupt|not a supported"),
            (b"just some text, not an image", "not a supported"),
        ],
    )
    def test_garbage_is_a_clear_error(self, data: bytes, message: str) -> None:
        with pytest.raises(ImageDecodeError, match=message):
            decode_image(data)

    def test_truncated_jpeg_is_an_error(self) -> None:
        data = encode(car_like())
        with pytest.raises(ImageDecodeError, match=r"truncated|corrupt"):
            decode_image(data[: len(data) // 2])

    def test_format_outside_the_allow_list_is_refused(self) -> None:
        with pytest.raises(ImageDecodeError, match="not a supported"):
            decode_image(encode(car_like((32, 32)), "TIFF"))

    def test_decompression_bomb_is_refused_without_decoding(self) -> None:
        side = int(MAX_PIXELS**0.5) + 100
        bomb = encode(Image.new("L", (side, side)), "PNG", optimize=True)
        assert len(bomb) < 200_000  # tiny on the wire, ~45 MB once decoded
        with pytest.raises(ImageDecodeError, match=r"too large|bomb"):
            decode_image(bomb)


class TestHashes:
    def test_sha256_is_of_the_bytes(self) -> None:
        assert content_sha256(b"abc").startswith("ba7816bf")

    def test_perceptual_hash_sees_near_duplicates(self) -> None:
        original = render("Dealer", "Red", random.Random(1))
        recompressed = decode_image(encode(original.resize((400, 300)), quality=40)).image
        other = render("Dealer", "Red", random.Random(2))
        a, b, c = (perceptual_hash(i) for i in (original, recompressed, other))
        assert len(a) == 16
        assert hash_distance(a, b) <= 4
        assert hash_distance(a, c) > 12  # another car of the same color on another lot

    @pytest.mark.parametrize(
        "size",
        [(480, 360), (240, 180), (160, 120), (640, 20), (33, 31), (32, 32), (300, 300),
         (360, 480), (309, 618), (5, 40), (31, 33), (1, 1), (1000, 700)],
    )  # fmt: skip
    def test_perceptual_hash_is_imagehash_phash_bit_for_bit(self, size: tuple[int, int]) -> None:
        """The hashes stored before the faster implementation stay comparable: the same bits as
        ``imagehash.phash`` on photos, noise, flat images, landscape, portrait and tiny ones."""
        import imagehash

        rng = random.Random(size[0] * 1000 + size[1])
        images = [
            render("Dealer", "Red", rng).resize(size),
            Image.effect_noise(size, 5).convert("RGB"),
            Image.effect_noise(size, 80).convert("RGB"),
            Image.new("RGB", size, (200, 10, 10)),
            decode_image(encode(render("Stock", "Blue", rng).resize(size), quality=60)).image,
        ]
        for image in images:
            assert perceptual_hash(image) == str(imagehash.phash(image))


def test_a_thumbnail_of_an_image_that_fits_leaves_it_untouched() -> None:
    image = car_like((240, 180))
    before = image.tobytes()
    thumb = Image.open(io.BytesIO(make_thumbnail(image)))
    assert thumb.size == (240, 180) and image.tobytes() == before


def test_thumbnail_is_a_small_jpeg() -> None:
    data = make_thumbnail(car_like((480, 360)))
    thumb = Image.open(io.BytesIO(data))
    assert thumb.format == "JPEG"
    assert thumb.size == (240, 180)
    assert len(data) < 20_000
