"""Image identity, safe decoding, hashes and thumbnails.

``image_key`` is how the ML cache recognises "the same image": as in the original system it is
derived from the image URL and the response headers, not the bytes, so that an unchanged image can
be recognised from a HEAD request without downloading or decoding it.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import imagehash
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


def perceptual_hash(image: Image.Image) -> str:
    """A 64-bit perceptual hash (pHash) as 16 hex digits: near-duplicates differ in few bits."""
    return str(imagehash.phash(image))


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
    thumb = image.copy()
    thumb.thumbnail(size, Image.Resampling.BILINEAR)
    out = io.BytesIO()
    thumb.save(out, format="JPEG", quality=80, optimize=False)
    return out.getvalue()
