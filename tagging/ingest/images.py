"""Image identity, safe decoding, hashes and thumbnails.

``image_key`` is how the ML cache recognises "the same image": as in the original system it is
derived from the image URL and the response headers, not the bytes, so that an unchanged image can
be recognised from a HEAD request without downloading or decoding it.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tagging.errors import ImageDecodeError

ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
"""Formats we decode. Everything else (SVG, HTML, TIFF, PSD, ...) is refused before decoding."""

MAX_PIXELS = 40_000_000
"""Decompression-bomb limit: a larger image is refused (Pillow warns at 89M and fails at 179M)."""

KEY_HEADERS: tuple[str, ...] = ("etag", "last-modified", "content-length")
"""The response headers that, with the URL, identify an image version."""

THUMBNAIL_SIZE = (240, 180)


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image ready for the models.

    Attributes:
        image: RGB, reduced with JPEG draft mode where possible, EXIF orientation applied.
        width: width of the original image in pixels.
        height: height of the original image in pixels.
        format: the container format Pillow found (``JPEG``, ``PNG``, ...).
    """

    image: Image.Image
    width: int
    height: int
    format: str


def image_key(url: str, headers: Mapping[str, str]) -> str:
    """Return the cache key of an image version.

    The key is the first 32 hex digits of SHA-256 over the URL and the ``ETag``,
    ``Last-Modified`` and ``Content-Length`` response headers (missing ones count as empty),
    one per line. A CDN that changes the URL or any of these headers therefore produces a new key,
    which is exactly why a manual fix can "not stick" (see the weird-results detectors).

    Args:
        url: the image URL as listed in the sitemap (not the final URL after redirects).
        headers: the response headers; lookup is case-insensitive.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    parts = [url, *(lowered.get(name, "").strip() for name in KEY_HEADERS)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def content_sha256(data: bytes) -> str:
    """SHA-256 of the raw bytes: recognises one file under a new URL or new headers."""
    return hashlib.sha256(data).hexdigest()


PHASH_SIZE = 8
"""Bits per side of the perceptual hash (64 bits)."""
_PHASH_INPUT = 32
"""The grey square the hash's DCT reads (``imagehash.phash``: 4 × the hash size)."""
_PRECISION_BITS = 32 - 8 - 2
"""Pillow's fixed-point precision for 8-bit resampling (``libImaging/Resample.c``)."""
_ONE = float(1 << _PRECISION_BITS)
_HALF = float(1 << (_PRECISION_BITS - 1))


def perceptual_hash(image: Image.Image) -> str:
    """A 64-bit perceptual hash (pHash) as 16 hex digits: near-duplicates differ in few bits.

    The same bits as ``imagehash.phash`` (greyscale, Lanczos to 32×32, 2-D DCT, the 8×8 lowest
    frequencies against their median), computed with two small matrix products per step. Pillow's
    Lanczos reduction to 32×32 was two thirds of the ML server's hashing time (0.28 of 0.41 ms per
    demo image): for landscape images it is replayed here with Pillow's own fixed-point
    coefficients and rounding (:func:`_lanczos_matrix`), so that the hashes stay those stored
    before (checked against ``imagehash`` in the tests).
    """
    grey_image = image.convert("L")
    width, height = grey_image.size
    if width >= height and width >= _PHASH_INPUT:
        # Pillow keeps 8-bit pixels between its two passes, the horizontal one first for such a
        # landscape image. Every product here is an integer under 2**53: float64 holds it
        # exactly, and floor() of the sum plus half is Pillow's rounding shift.
        grey = np.asarray(grey_image, dtype=np.float64)
        rows = _lanczos_matrix(height, _PHASH_INPUT)
        columns = _lanczos_matrix(width, _PHASH_INPUT)
        small = _fixed_point(rows @ _fixed_point(grey @ columns.T))
    else:
        # Portrait and tiny images: Pillow picks the order of its passes by a rule of its own
        # (checked: not always the same), so it resizes them itself.
        small = np.asarray(
            grey_image.resize((_PHASH_INPUT, _PHASH_INPUT), Image.Resampling.LANCZOS),
            dtype=np.float64,
        )
    dct = _dct_matrix(_PHASH_INPUT, PHASH_SIZE)
    # Rounded so that coefficients equal in exact arithmetic (0 for a flat image) compare equal,
    # as scipy's DCT makes them, instead of by the noise of the last bits.
    low = np.round(dct @ small @ dct.T, 6)
    bits = low > np.median(low)
    return np.packbits(bits.reshape(-1)).tobytes().hex()


def _fixed_point(sums: np.ndarray) -> np.ndarray:
    """Pillow's 8-bit result of weighted sums of its fixed-point weights: shift and clip."""
    return np.clip(np.floor((sums + _HALF) / _ONE), 0, 255)


@functools.lru_cache(maxsize=64)
def _lanczos_matrix(in_size: int, out_size: int) -> np.ndarray:
    """Pillow's Lanczos weights from ``in_size`` to ``out_size`` pixels as a dense matrix of its
    fixed-point integers (``precompute_coeffs`` and ``normalize_coeffs_8bpc`` in Resample.c)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 3.0 * filterscale
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    for out in range(out_size):
        center = (out + 0.5) * scale
        low = max(int(center - support + 0.5), 0)
        high = min(int(center + support + 0.5), in_size)
        taps = (np.arange(low, high) - center + 0.5) / filterscale
        weights = np.array([_lanczos(x) for x in taps])
        total = weights.sum()
        if total != 0.0:
            weights = weights / total
        # C's (int)(±0.5 + k * 2**22): rounding half away from zero.
        fixed = np.trunc(weights * (1 << _PRECISION_BITS) + np.where(weights < 0, -0.5, 0.5))
        matrix[out, low:high] = fixed
    return matrix


def _lanczos(x: float) -> float:
    """Pillow's Lanczos-3 filter: ``sinc(x) * sinc(x / 3)`` on (-3, 3)."""
    if not -3.0 <= x < 3.0:
        return 0.0
    return _sinc(x) * _sinc(x / 3.0)


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x *= math.pi
    return math.sin(x) / x


@functools.lru_cache(maxsize=4)
def _dct_matrix(size: int, keep: int) -> np.ndarray:
    """The first ``keep`` rows of the unnormalised DCT-II of ``size`` points (scipy's default)."""
    k = np.arange(keep).reshape(-1, 1)
    n = np.arange(size)
    return 2.0 * np.cos(np.pi * k * (2 * n + 1) / (2 * size))


def hash_distance(a: str, b: str) -> int:
    """Hamming distance between two perceptual hashes from :func:`perceptual_hash`."""
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def decode_image(data: bytes, *, draft_size: tuple[int, int] = (160, 120)) -> DecodedImage:
    """Decode untrusted bytes into an RGB image, refusing anything unsafe or broken.

    JPEGs are decoded in draft mode: libjpeg scales by 1/2, 1/4 or 1/8 while decoding, to the
    smallest size still at least ``draft_size``, which is several times faster than a full decode
    and is all the models and the thumbnail need.

    Raises:
        ImageDecodeError: empty, not an image, a format outside ``ALLOWED_FORMATS``, over
            ``MAX_PIXELS``, truncated or otherwise corrupt.
    """
    if not data:
        raise ImageDecodeError("empty file: the server sent no bytes")
    if data.lstrip()[:1] == b"<":
        raise ImageDecodeError("not an image: the body looks like HTML, XML or SVG")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageDecodeError(f"image too large to decode safely: {width}x{height} pixels")
            fmt = image.format or "unknown"
            if fmt == "JPEG":
                image.draft("RGB", draft_size)
            image.load()
            # In place: without it Pillow returns a full copy even when nothing needs turning.
            ImageOps.exif_transpose(image, in_place=True)
            return DecodedImage(image=_to_rgb(image), width=width, height=height, format=fmt)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageDecodeError("not a supported image format") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"image refused as a decompression bomb: {exc}") from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        # Pillow reports truncated and corrupt data as OSError (and a few decoders as the others).
        raise ImageDecodeError(f"corrupt or truncated image: {exc}") from exc


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any mode (P, LA, RGBA, CMYK, I;16, 1, L) to RGB; transparency goes on white."""
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        # 16-bit and float greyscale: scale to 8 bits instead of clipping everything to white.
        image = image.convert("I").point(lambda value: value / 256).convert("L")
    return image.convert("RGB")


def make_thumbnail(image: Image.Image, size: tuple[int, int] = THUMBNAIL_SIZE) -> bytes:
    """A small JPEG of ``image`` that fits in ``size``, for reviewers once the CDN URL is gone."""
    thumb = image
    if image.width > size[0] or image.height > size[1]:
        # thumbnail() works in place; an image that fits already (the ML server's drafted
        # ones) is encoded as it is, without the copy (a quarter of the thumbnail's time).
        thumb = image.copy()
        thumb.thumbnail(size, Image.Resampling.BILINEAR)
    out = io.BytesIO()
    thumb.save(out, format="JPEG", quality=80, optimize=False)
    return out.getvalue()
