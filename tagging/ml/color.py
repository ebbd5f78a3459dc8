"""The vehicle color model: a third-party model behind an adapter.

Color is not ours to train: production calls another company's model over HTTP
(:class:`HttpColorModel`). Everything else in Tagdesk sees only the :class:`ColorModel` protocol,
so the vendor can be swapped, and an embedded stand-in (:class:`EmbeddedColorModel`) answers when
no vendor is configured (development, the demo, tests).

The embedded model is deliberately classical — no weights to ship or verify. It reads the body
color where the car's side panel is (the middle of the frame), votes each pixel to the nearest
palette color in CIE Lab, and answers the winner if it wins clearly enough. The vote is
vectorised over a whole batch (:meth:`EmbeddedColorModel.votes_many`).
"""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from db.vocab import COLORS
from tagging.errors import FetchError, FetchTimeoutError, TaggingError
from tagging.ml.palette import PALETTE, RGB

if TYPE_CHECKING:
    from tagging.config import Settings
    from tagging.ingest.fetch import GuardedClient

log = logging.getLogger(__name__)

REFERENCE_RGB: dict[str, RGB] = PALETTE
"""The reference paint of each color name, in sRGB: the paints the synthetic renderer uses
(:data:`tagging.ml.palette.PALETTE`, which serving code can import without the renderer)."""


@runtime_checkable
class ColorModel(Protocol):
    """What the rest of Tagdesk needs from a color model.

    Attributes:
        version: Identifies the model in cached results (``color_model_version``).
    """

    version: str

    def predict(self, images: Sequence[Image.Image]) -> list[str | None]:
        """Name each image's vehicle body color.

        Args:
            images: Decoded RGB images of vehicles.

        Returns:
            One name from :data:`tagging.COLORS` per image, or ``None`` where the model cannot
            tell.
        """
        ...


class ColorVendorError(TaggingError):
    """The color vendor failed, timed out or answered something unusable."""

    code = "color_vendor"


# --------------------------------------------------------------------------------------------------
# the embedded model


@dataclass(frozen=True)
class EmbeddedColorConfig:
    """Tuning of :class:`EmbeddedColorModel`.

    Attributes:
        box: ``(left, top, right, bottom)`` fractions of the frame that are read. Dealer and
            stock photos frame the car side-on and centred, so this box sits inside the door
            panels: below the windows, above the wheels and the ground, clear of the bumpers.
        side: The box is resampled to ``side × side`` pixels, so every image costs the same.
        max_distance: Pixels further than this (CIE76 ΔE) from every reference color are not
            paint (trim, shadows, reflections) and do not vote.
        min_share: The winner needs this share of the votes, else the answer is ``None``.
    """

    box: tuple[float, float, float, float] = (0.33, 0.47, 0.67, 0.64)
    side: int = 32
    max_distance: float = 30.0
    min_share: float = 0.25


class EmbeddedColorModel:
    """Names the dominant body color with a palette vote in CIE Lab (see the module docstring).

    Stateless after construction, hence safe to call from several threads.
    """

    version = "embedded-lab-vote-1"

    def __init__(self, config: EmbeddedColorConfig | None = None) -> None:
        """Prepare the reference colors in Lab."""
        self.config = config or EmbeddedColorConfig()
        rgb = np.array([REFERENCE_RGB[name] for name in COLORS], dtype=np.float64)
        self._reference_lab = srgb_to_lab(rgb)

    def predict(self, images: Sequence[Image.Image]) -> list[str | None]:
        """Name the body color of each image (``None`` when no color wins clearly)."""
        return [self._winner(votes) for votes in self.votes_many(images)]

    def predict_one(self, image: Image.Image) -> str | None:
        """Name the body color of one image."""
        return self._winner(self.votes(image))

    def votes(self, image: Image.Image) -> np.ndarray:
        """The vote count of every color in :data:`tagging.COLORS`, for inspection and tests."""
        return self.votes_many([image])[0]

    def votes_many(self, images: Sequence[Image.Image]) -> np.ndarray:
        """The vote counts of a batch: one row per image, one column per color of
        :data:`tagging.COLORS`.

        Vectorised over the whole batch: a pixel's vote depends on its 8-bit RGB value alone, so
        each distinct value of the batch is converted to Lab and matched once (the side panels
        are flat paint: a batch of 64 demo images has about 5,000 distinct values among 65,536
        pixels), and the votes of every image are counted in one ``bincount``.
        """
        count = len(COLORS)
        if not images:
            return np.zeros((0, count))
        pixels = np.stack([self._body_pixels(image) for image in images])  # (n, side², 3) uint8
        packed = (
            (pixels[..., 0].astype(np.int32) << 16)
            | (pixels[..., 1].astype(np.int32) << 8)
            | pixels[..., 2]
        ).ravel()
        values = np.unique(packed)  # sorted; searchsorted below beats return_inverse 3×
        # Each distinct value's vote: the index of its nearest paint, or ``count`` (no vote).
        vote = self._nearest_paint(values)[np.searchsorted(values, packed)]
        per_image = pixels.shape[1]
        slot = np.repeat(np.arange(len(images)) * (count + 1), per_image) + vote
        tally = np.bincount(slot, minlength=len(images) * (count + 1))
        return tally.reshape(len(images), count + 1)[:, :count].astype(np.float64)

    def _nearest_paint(self, packed: np.ndarray) -> np.ndarray:
        """For packed ``0xRRGGBB`` values: the index of the nearest reference color in Lab, or
        ``len(COLORS)`` where every reference is further than ``max_distance`` (not paint)."""
        rgb = np.stack([(packed >> 16) & 0xFF, (packed >> 8) & 0xFF, packed & 0xFF], axis=-1)
        lab = srgb_to_lab(rgb.astype(np.float64))
        # The CIE76 ΔE to every reference, one channel at a time: (L² + a²) + b², summed in the
        # order np.linalg.norm sums them, without its (colors × references × 3) temporary.
        reference = self._reference_lab
        squared = np.zeros((len(lab), len(reference)))
        for channel in range(3):
            difference = lab[:, channel, None] - reference[None, :, channel]
            squared += difference * difference
        distances = np.sqrt(squared)
        nearest = distances.argmin(axis=1)
        paint = distances[np.arange(len(nearest)), nearest] <= self.config.max_distance
        return np.where(paint, nearest, len(COLORS))

    def _winner(self, votes: np.ndarray) -> str | None:
        """The color that won, if it won clearly enough (``min_share`` of the votes)."""
        total = votes.sum()
        if total <= 0:
            return None
        best = int(votes.argmax())
        return COLORS[best] if votes[best] / total >= self.config.min_share else None

    def _body_pixels(self, image: Image.Image) -> np.ndarray:
        """The box of the frame that is read, resampled to ``side × side``: ``(side², 3)`` uint8."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        w, h = image.size
        left, top, right, bottom = self.config.box
        box = (left * w, top * h, right * w, bottom * h)
        side = self.config.side
        # BOX averages each output pixel over its footprint: JPEG noise and thin seams average
        # out, while the flat panel keeps its exact color.
        patch = image.resize((side, side), Image.Resampling.BOX, box=box)
        return np.asarray(patch, dtype=np.uint8).reshape(-1, 3)


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """Convert ``(..., 3)`` sRGB values in 0–255 to CIE Lab (D65 white).

    Lab is roughly perceptually uniform, so a Euclidean distance there (ΔE) ranks "how similar
    do these paints look" far better than a distance in RGB.
    """
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    matrix = np.array(
        [
            [0.4124564, 0.3575761, 0.1804375],
            [0.2126729, 0.7151522, 0.0721750],
            [0.0193339, 0.1191920, 0.9503041],
        ]
    )
    xyz = linear @ matrix.T / np.array([0.95047, 1.0, 1.08883])
    eps = 216 / 24389
    f = np.where(xyz > eps, np.cbrt(xyz), (24389 / 27 * xyz + 16) / 116)
    fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
    return np.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], axis=-1)


# --------------------------------------------------------------------------------------------------
# the vendor's HTTP model


_KNOWN_NAMES: dict[str, str] = {name.lower(): name for name in COLORS} | {"grey": "Gray"}
"""Lower-cased vendor spellings → our names: matching is case-insensitive and accepts "Grey"."""


@dataclass(frozen=True)
class VendorColor:
    """One answer of the vendor, after validation.

    Attributes:
        color: A name from :data:`tagging.COLORS`, or ``None``.
        raw: What the vendor said.
        reason: Why ``color`` is ``None`` although the vendor named something.
    """

    color: str | None
    raw: str | None
    reason: str | None = None


class HttpColorModel:
    """The third-party color model, called over HTTP through the guarded client.

    Protocol: ``POST <url>`` with JSON ``{"images": ["<base64 JPEG>", ...]}``; the answer is
    ``{"colors": ["Red", null, ...], "version": "vendor-x"}`` with one entry per image.

    Every answer is validated: a failed or timed-out call, non-JSON, a wrong shape or a wrong
    number of colors raises :class:`ColorVendorError`. A color name we do not know is mapped to
    ``None`` (and logged with the reason) rather than failing the whole batch: the vendor
    may add colors faster than we do.

    Args:
        url: The vendor's endpoint.
        client: The guarded client (the URL's host must be allow-listed if it is private).
        timeout: Seconds for one call.
        max_batch: Images per call; larger requests are split.
        jpeg_quality: Quality of the JPEG copies sent.
        headers: Extra request headers, e.g. the vendor's API key.
    """

    def __init__(
        self,
        url: str,
        client: GuardedClient,
        *,
        timeout: float = 10.0,
        max_batch: int = 32,
        jpeg_quality: int = 90,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.url = url
        self.client = client
        self.timeout = timeout
        self.max_batch = max(1, max_batch)
        self.jpeg_quality = jpeg_quality
        self.headers = dict(headers or {})
        # Until the vendor has answered once we only know where it lives.
        self.version = "vendor"

    def predict(self, images: Sequence[Image.Image]) -> list[str | None]:
        """Name each image's body color via the vendor.

        Raises:
            ColorVendorError: The vendor failed or answered something unusable.
        """
        return [answer.color for answer in self.predict_detailed(images)]

    def predict_detailed(self, images: Sequence[Image.Image]) -> list[VendorColor]:
        """Like :meth:`predict`, keeping the vendor's raw names and the reasons for ``None``.

        Raises:
            ColorVendorError: The vendor failed or answered something unusable.
        """
        out: list[VendorColor] = []
        for start in range(0, len(images), self.max_batch):
            out.extend(self._call(images[start : start + self.max_batch]))
        return out

    def _call(self, images: Sequence[Image.Image]) -> list[VendorColor]:
        payload = {"images": [self._encode(image) for image in images]}
        try:
            result = self.client.request_json(
                "POST", self.url, json=payload, headers=self.headers, timeout=self.timeout
            )
        except FetchTimeoutError as exc:
            raise ColorVendorError(
                f"color vendor timed out after {self.timeout:g}s: {exc}"
            ) from exc
        except FetchError as exc:
            raise ColorVendorError(f"color vendor call failed: {exc}") from exc
        answers, version = parse_vendor_answer(result.body, expected=len(images))
        if version:
            self.version = version
        return answers

    def _encode(self, image: Image.Image) -> str:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=self.jpeg_quality)
        return base64.b64encode(buffer.getvalue()).decode("ascii")


def parse_vendor_answer(body: bytes, *, expected: int) -> tuple[list[VendorColor], str | None]:
    """Validate a vendor answer.

    Args:
        body: The response body.
        expected: How many colors it must contain.

    Returns:
        The validated colors, and the vendor's model version if it sent a usable one.

    Raises:
        ColorVendorError: Not JSON, not the documented shape, or the wrong number of colors.
    """
    try:
        data: Any = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ColorVendorError(f"color vendor answered non-JSON: {body[:80]!r}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("colors"), list):
        raise ColorVendorError("color vendor answer has no 'colors' list")
    colors = data["colors"]
    if len(colors) != expected:
        raise ColorVendorError(f"color vendor answered {len(colors)} colors for {expected} images")
    answers = [_validate_color(value) for value in colors]
    for answer in answers:
        if answer.reason:
            log.warning("color vendor: %s", answer.reason)
    version = data.get("version")
    if not (isinstance(version, str) and 0 < len(version) <= 64):
        version = None
    return answers, version


def _validate_color(value: Any) -> VendorColor:
    if value is None:
        return VendorColor(None, None)
    if not isinstance(value, str):
        raise ColorVendorError(f"color vendor answered a {type(value).__name__} as a color")
    name = _KNOWN_NAMES.get(value.strip().lower())
    if name is not None:
        return VendorColor(name, value)
    return VendorColor(None, value, reason=f"unknown color {value[:40]!r} mapped to None")


def color_model_from_settings(settings: Settings, client: GuardedClient) -> ColorModel:
    """The vendor's model when ``TAGGING_COLOR_VENDOR_URL`` is set, else the embedded one."""
    if settings.color_vendor_url:
        return HttpColorModel(settings.color_vendor_url, client)
    return EmbeddedColorModel()
