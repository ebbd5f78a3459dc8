"""A robustness set: generated vehicle images drawn unlike the training data, with their truth.

The training data and the demo come from :mod:`tagging.ml.synth`: side views in one layout, the
car body centred, its flat side panel painted exactly the palette color, outdoor lots and light
studios, "coming soon" cards. A model can score 100% there by learning that layout. This
generator draws the same three classes differently, so that the score says how a model does on
images it was not trained on:

* **a new car drawing**: a 3D body (a side profile extruded to the car's width) seen from the
  front or rear three-quarter or the side, from slightly above, in perspective, every face shaded
  by a light from a random direction (so the paint is :data:`tagging.ml.palette.PALETTE`'s color
  times 0.4–1.1, with highlights), with glass, wheels and lights;
* **placement**: centred, off-centre, or cropped by the frame;
* **scenes**: Dealer photos at night, among trees, in an indoor showroom, before a plain wall;
  Stock photos on a white cut-out, a dark studio, a colored backdrop, a grey vignette;
  Placeholders as text cards of new layouts and wording, or grey car silhouettes (half of them
  without any text);
* **photographic nuisances**, drawn independently of the class: lighting (dark, overexposed, a
  color cast), tilt, blur, noise, heavy JPEG, small images.

Every image records its truth (Image Type, and Color — ``None`` for placeholders) and what was
applied. Nothing here is tuned to a model: the distributions are fixed per
:data:`GENERATOR_VERSION`, and changing them is a new version.

Generation is deterministic: image ``i`` draws every choice from its own ``random.Random`` seeded
with ``(seed, i)``, so the same :class:`RobustnessConfig` gives the same bytes, whatever subset is
rendered. Everything is drawn with Pillow primitives (no per-pixel Python), a few ms per image.
"""

from __future__ import annotations

import io
import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from db.vocab import COLORS, IMAGE_TYPES, PLACEHOLDER
from tagging.ingest.images import decode_image
from tagging.ml.evaluate import LabelledImage
from tagging.ml.palette import PALETTE, RGB

GENERATOR_NAME = "tagging.ml.robustness"
GENERATOR_VERSION = 1
"""Bump whenever a change alters any pixel: a recorded ``(name, version, seed)`` must always
name the same images."""

DEALER_SCENES: tuple[str, ...] = ("night", "trees", "indoor", "plain_wall")
STOCK_SCENES: tuple[str, ...] = ("white_cutout", "dark_studio", "color_backdrop", "grey_vignette")
PLACEHOLDER_SCENES: tuple[str, ...] = ("text_card", "grey_silhouette")
VIEWS: tuple[str, ...] = ("front_three_quarter", "rear_three_quarter", "side")
PLACEMENTS: tuple[str, ...] = ("centred", "off_centre", "cropped")
LIGHTINGS: tuple[str, ...] = ("dark", "overexposed", "warm_cast", "cool_cast", "green_cast")

_NORMAL_SIZES: tuple[tuple[int, int], ...] = (
    (480, 360),
    (640, 480),
    (600, 400),
    (640, 360),
    (400, 400),
    (360, 270),
)
_SMALL_SIZES: tuple[tuple[int, int], ...] = ((160, 120), (200, 150), (128, 96), (180, 120))

Point = tuple[float, float]


@dataclass(frozen=True)
class RobustnessConfig:
    """What to generate; recorded with every evaluation on the set (:meth:`to_dict`).

    Attributes:
        seed: Root of every random choice.
        n_per_class: Images per Image Type (classes exactly balanced; car colors cycle through
            :data:`tagging.COLORS`).
        photographic: Apply the photographic nuisances (lighting, tilt, blur, noise, heavy
            JPEG, small sizes). ``False`` keeps only the new drawing, placement and scenes, which
            separates "drawn differently" from "photographed badly".
        p_lighting: Probability of a lighting nuisance (one of :data:`LIGHTINGS`).
        p_tilt: Probability of a tilt of 3–10 degrees.
        p_blur: Probability of a Gaussian blur.
        p_noise: Probability of sensor noise.
        p_heavy_jpeg: Probability of JPEG quality 5–20 (else 60–92).
        p_small: Probability of a small image (128–200 pixels wide).
    """

    seed: int = 13
    n_per_class: int = 100
    photographic: bool = True
    p_lighting: float = 0.5
    p_tilt: float = 0.3
    p_blur: float = 0.3
    p_noise: float = 0.25
    p_heavy_jpeg: float = 0.3
    p_small: float = 0.25

    def __post_init__(self) -> None:
        if self.n_per_class < 1:
            raise ValueError("n_per_class must be at least 1")
        for name in ("p_lighting", "p_tilt", "p_blur", "p_noise", "p_heavy_jpeg", "p_small"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability, got {getattr(self, name)}")

    @property
    def total(self) -> int:
        """Number of images in the set."""
        return self.n_per_class * len(IMAGE_TYPES)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly record: the generator's name and version, the seed and every setting."""
        return {"generator": GENERATOR_NAME, "version": GENERATOR_VERSION, **asdict(self)}

    def describe(self) -> str:
        """One line naming the set, e.g. for a table header."""
        extra = "" if self.photographic else ", drawing only"
        return (
            f"{GENERATOR_NAME} v{GENERATOR_VERSION}, seed {self.seed}, "
            f"{self.n_per_class} per class{extra}"
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RobustnessConfig:
        """Rebuild a configuration recorded by :meth:`to_dict`.

        Raises:
            ValueError: The record is of another generator or version (its images cannot be
                reproduced by this code), or has an invalid setting.
        """
        if data.get("generator") != GENERATOR_NAME or data.get("version") != GENERATOR_VERSION:
            raise ValueError(
                f"recorded with {data.get('generator')} v{data.get('version')}; this code is "
                f"{GENERATOR_NAME} v{GENERATOR_VERSION}"
            )
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class RobustExample:
    """One generated image and its truth.

    Attributes:
        index: Position in the set (with the config, enough to regenerate it).
        data: The encoded JPEG, as a CDN would serve it.
        image_type: True Image Type.
        color: True body color (a palette name), ``None`` for placeholders.
        scene: The background or placeholder style (:data:`DEALER_SCENES`, :data:`STOCK_SCENES`,
            :data:`PLACEHOLDER_SCENES`).
        view: The car's view (:data:`VIEWS`); ``None`` without a car (text cards).
        placement: Where the car is (:data:`PLACEMENTS`); ``None`` for placeholders.
        size: ``(width, height)`` in pixels.
        nuisances: The photographic nuisances applied and their strengths, e.g.
            ``{"lighting": "dark", "gain": 0.5, "blur": 1.8, "jpeg_quality": 12}``;
            ``jpeg_quality`` is always present.
    """

    index: int
    data: bytes
    image_type: str
    color: str | None
    scene: str
    view: str | None
    placement: str | None
    size: tuple[int, int]
    nuisances: dict[str, float | int | str] = field(default_factory=dict, hash=False)

    @property
    def name(self) -> str:
        """A readable identifier, e.g. ``robust-0042-Dealer-night``."""
        return f"robust-{self.index:04d}-{self.image_type}-{self.scene}"

    def decode(self) -> Image.Image:
        """The image as the ML server decodes it (:func:`tagging.ingest.images.decode_image`)."""
        return decode_image(self.data).image

    def labelled(self) -> LabelledImage:
        """This example as :func:`tagging.ml.evaluate.evaluate_type_model` takes it."""
        return LabelledImage(self.data, self.image_type, self.color, self.name)


def generate_robustness_set(config: RobustnessConfig | None = None) -> list[RobustExample]:
    """Generate the whole set, classes interleaved (see the module docstring).

    Args:
        config: What to generate (default :class:`RobustnessConfig`).

    Returns:
        ``config.total`` examples, in index order; the same config always gives the same bytes.
    """
    config = config or RobustnessConfig()
    return [generate_example(config, index) for index in range(config.total)]


def generate_example(config: RobustnessConfig, index: int) -> RobustExample:
    """Generate image ``index`` of the set alone (the same bytes as in the whole set)."""
    image_type = IMAGE_TYPES[index % len(IMAGE_TYPES)]
    color = None if image_type == PLACEHOLDER else COLORS[(index // len(IMAGE_TYPES)) % len(COLORS)]
    # Two streams: the scene's drawing never depends on the photographic settings, so the same
    # index shows the same car in the same scene with and without nuisances (pairs compare).
    stream = f"tagdesk-robust:{GENERATOR_VERSION}:{config.seed}:{index}"
    rng = random.Random(f"{stream}:scene")
    camera = random.Random(f"{stream}:photo")
    size = camera.choice(_NORMAL_SIZES)
    small = config.photographic and camera.random() < config.p_small
    if small:
        size = camera.choice(_SMALL_SIZES)
    img = Image.new("RGB", size)
    view: str | None = None
    placement: str | None = None
    if image_type == PLACEHOLDER:
        scene = rng.choice(PLACEHOLDER_SCENES)
        if scene == "text_card":
            _text_card(img, rng)
        else:
            view = _grey_silhouette(img, rng)
    else:
        assert color is not None
        scenes = DEALER_SCENES if image_type == "Dealer" else STOCK_SCENES
        scene = rng.choice(scenes)
        view, placement = _car_scene(img, image_type, scene, color, rng)
    nuisances: dict[str, float | int | str] = {}
    if config.photographic:
        img = _photograph(img, camera, config, nuisances)
    heavy = nuisances.pop("heavy_jpeg", 0)
    quality = camera.randint(5, 20) if heavy else camera.randint(60, 92)
    nuisances["jpeg_quality"] = quality
    if small:
        nuisances["small"] = f"{size[0]}x{size[1]}"
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=quality)
    return RobustExample(
        index=index,
        data=buffer.getvalue(),
        image_type=image_type,
        color=color,
        scene=scene,
        view=view,
        placement=placement,
        size=size,
        nuisances=nuisances,
    )


def summarize(examples: Sequence[RobustExample]) -> dict[str, dict[str, int]]:
    """Counts per class, scene, view, placement and nuisance: what a set is made of."""
    nuisance_counts: Counter[str] = Counter()
    for example in examples:
        for key, value in example.nuisances.items():
            if key == "lighting":
                nuisance_counts[f"lighting:{value}"] += 1
            elif key not in ("jpeg_quality", "gain"):
                nuisance_counts[key] += 1
        if int(example.nuisances.get("jpeg_quality", 100)) <= 20:
            nuisance_counts["heavy_jpeg"] += 1
    return {
        "image_type": dict(Counter(e.image_type for e in examples)),
        "scene": dict(Counter(e.scene for e in examples)),
        "view": dict(Counter(e.view for e in examples if e.view)),
        "placement": dict(Counter(e.placement for e in examples if e.placement)),
        "nuisance": dict(sorted(nuisance_counts.items())),
    }


# --------------------------------------------------------------------------------------------------
# colors and small drawing helpers


def _clamp(v: float) -> int:
    return 0 if v < 0 else 255 if v > 255 else int(v + 0.5)


def _mix(a: Sequence[float], b: Sequence[float], t: float) -> RGB:
    """``a`` moved a fraction ``t`` of the way towards ``b``."""
    return (
        _clamp(a[0] + (b[0] - a[0]) * t),
        _clamp(a[1] + (b[1] - a[1]) * t),
        _clamp(a[2] + (b[2] - a[2]) * t),
    )


def _scale(c: Sequence[float], f: float) -> RGB:
    return (_clamp(c[0] * f), _clamp(c[1] * f), _clamp(c[2] * f))


def _grey(v: float) -> RGB:
    g = _clamp(v)
    return (g, g, g)


_WHITE: RGB = (255, 255, 255)
_BLACK: RGB = (0, 0, 0)


def _gradient(size: tuple[int, int], top: RGB, bottom: RGB) -> Image.Image:
    """A vertical gradient from ``top`` to ``bottom``, one numpy row per line."""
    w, h = size
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
    rows = np.asarray(top, np.float32) + (np.asarray(bottom, np.float32) - top) * t
    line = (rows + 0.5).astype(np.uint8)  # (h, 3)
    return Image.fromarray(np.ascontiguousarray(np.broadcast_to(line[:, None, :], (h, w, 3))))


def _soft_ellipse(
    draw: ImageDraw.ImageDraw, box: tuple[float, float, float, float], outer: RGB, inner: RGB
) -> None:
    """A blurry-edged ellipse: a few concentric ellipses from ``outer`` to ``inner``."""
    x0, y0, x1, y1 = box
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    steps = 5
    for k in range(steps):
        f = 1.0 - k / steps * 0.6
        draw.ellipse(
            (cx - rx * f, cy - ry * f, cx + rx * f, cy + ry * f),
            fill=_mix(outer, inner, (k + 1) / steps),
        )


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=max(7, size))


def _text(
    draw: ImageDraw.ImageDraw, xy: Point, text: str, size: int, fill: RGB, anchor: str = "mm"
) -> None:
    draw.text(xy, text, font=_font(size), fill=fill, anchor=anchor)


# --------------------------------------------------------------------------------------------------
# the 3D car


def _points(text: str) -> tuple[Point, ...]:
    """``"x,y x,y …"`` → points: a profile reads better on one line than one point per line."""
    return tuple((float(x), float(y)) for x, y in (pair.split(",") for pair in text.split()))


@dataclass(frozen=True)
class _Body:
    """A car as a side profile extruded to its width.

    Car space: ``x`` from the nose (0) to the tail (1), ``y`` up from the ground, ``z`` across
    from the near side (0) to the far side (``width``), all in car lengths.
    """

    outline: tuple[Point, ...]  # the side silhouette, nose → over the roof → tail → under
    glass: frozenset[int]  # edges outline[i] → outline[i + 1] that are windshield / rear window
    windows: tuple[tuple[Point, ...], ...]  # side windows on the profile
    wheels: tuple[float, float]  # axle positions
    wheel_r: float
    width: float
    belt: float  # top of the doors
    sill: float  # bottom of the doors
    doors: tuple[float, ...]  # door seams
    head: tuple[float, float]  # headlight heights
    tail: tuple[float, float]  # tail-light heights


_BODIES: dict[str, _Body] = {
    "sedan": _Body(
        outline=_points(
            "0.00,0.09 0.00,0.19 0.03,0.245 0.30,0.27 0.43,0.395 0.68,0.395 "
            "0.83,0.28 0.98,0.27 1.00,0.20 1.00,0.09 0.97,0.06 0.03,0.06"
        ),
        glass=frozenset({3, 5}),
        windows=(
            _points("0.335,0.285 0.44,0.38 0.545,0.38 0.545,0.285"),
            _points("0.56,0.285 0.56,0.38 0.67,0.38 0.79,0.285"),
        ),
        wheels=(0.19, 0.80),
        wheel_r=0.085,
        width=0.40,
        belt=0.27,
        sill=0.06,
        doors=(0.33, 0.552, 0.78),
        head=(0.165, 0.215),
        tail=(0.18, 0.235),
    ),
    "suv": _Body(
        outline=_points(
            "0.00,0.12 0.00,0.25 0.03,0.31 0.27,0.335 0.37,0.49 0.93,0.49 "
            "0.985,0.40 1.00,0.33 1.00,0.12 0.97,0.09 0.03,0.09"
        ),
        glass=frozenset({3, 5}),
        windows=(
            _points("0.31,0.35 0.38,0.47 0.56,0.47 0.56,0.35"),
            _points("0.575,0.35 0.575,0.47 0.76,0.47 0.76,0.35"),
            _points("0.775,0.35 0.775,0.47 0.915,0.47 0.95,0.40 0.95,0.35"),
        ),
        wheels=(0.18, 0.81),
        wheel_r=0.1,
        width=0.43,
        belt=0.335,
        sill=0.09,
        doors=(0.30, 0.567, 0.768),
        head=(0.22, 0.27),
        tail=(0.26, 0.32),
    ),
    "hatchback": _Body(
        outline=_points(
            "0.00,0.09 0.00,0.20 0.03,0.25 0.28,0.28 0.42,0.41 0.78,0.41 "
            "0.97,0.30 1.00,0.22 1.00,0.09 0.97,0.065 0.03,0.065"
        ),
        glass=frozenset({3, 5}),
        windows=(
            _points("0.32,0.295 0.43,0.395 0.58,0.395 0.58,0.295"),
            _points("0.595,0.295 0.595,0.395 0.77,0.395 0.89,0.295"),
        ),
        wheels=(0.17, 0.82),
        wheel_r=0.082,
        width=0.41,
        belt=0.28,
        sill=0.065,
        doors=(0.31, 0.588, 0.86),
        head=(0.17, 0.22),
        tail=(0.2, 0.26),
    ),
    "pickup": _Body(
        outline=_points(
            "0.00,0.12 0.00,0.26 0.03,0.32 0.26,0.34 0.35,0.49 0.58,0.49 "
            "0.60,0.34 1.00,0.34 1.00,0.12 0.97,0.09 0.03,0.09"
        ),
        glass=frozenset({3, 5}),
        windows=(_points("0.29,0.355 0.36,0.47 0.565,0.47 0.575,0.355"),),
        wheels=(0.17, 0.80),
        wheel_r=0.1,
        width=0.42,
        belt=0.34,
        sill=0.09,
        doors=(0.285, 0.59),
        head=(0.22, 0.28),
        tail=(0.24, 0.31),
    ),
}


def _outward_normals(outline: Sequence[Point]) -> list[Point]:
    """The unit outward normal of each edge ``outline[i] → outline[i + 1]`` in the profile."""
    n = len(outline)
    area = sum(
        outline[i][0] * outline[(i + 1) % n][1] - outline[(i + 1) % n][0] * outline[i][1]
        for i in range(n)
    )
    sign = 1.0 if area > 0 else -1.0  # counter-clockwise: (dy, -dx) points outwards
    normals = []
    for i in range(n):
        (x0, y0), (x1, y1) = outline[i], outline[(i + 1) % n]
        dx, dy = x1 - x0, y1 - y0
        length = math.hypot(dx, dy) or 1.0
        normals.append((sign * dy / length, -sign * dx / length))
    return normals


@dataclass(frozen=True)
class _Camera:
    """Car space → view: turn by ``yaw`` about the vertical, look down by ``pitch``, perspective.

    View coordinates: ``u`` right, ``v`` up, ``depth`` away from the camera (negative = closer).
    A negative yaw brings the nose towards the camera, a positive one the tail.
    """

    yaw: float
    pitch: float
    perspective: float
    half_width: float

    def rotate(self, x: float, y: float, z: float) -> tuple[float, float, float]:
        """A direction (no translation, no perspective) in view space."""
        cy, sy = math.cos(self.yaw), math.sin(self.yaw)
        cp, sp = math.cos(self.pitch), math.sin(self.pitch)
        u = x * cy + z * sy
        zz = -x * sy + z * cy
        return u, y * cp + zz * sp, -y * sp + zz * cp

    def project(self, x: float, y: float, z: float) -> tuple[float, float, float]:
        """A point of car space → ``(u, v, depth)``, perspective applied to ``u`` and ``v``."""
        u, v, depth = self.rotate(x - 0.5, y, z - self.half_width)
        f = 1.0 / (1.0 + depth * self.perspective)
        return u * f, v * f, depth


@dataclass(frozen=True)
class _CarStyle:
    """How one car is painted."""

    paint: RGB
    light: tuple[float, float, float]  # unit vector towards the light, view space
    ambient: float
    diffuse: float
    glass: RGB
    rim: RGB
    flat: RGB | None = None  # one grey for everything: a placeholder's silhouette


class _CarPainter:
    """Draws one :class:`_Body` through a :class:`_Camera` onto an image.

    View ``(u, v)`` maps to pixels by ``scale``, ``offset`` and an optional horizontal
    ``mirror``, which :func:`_place` sets after :meth:`extent` has measured the projected car.
    """

    def __init__(self, body: _Body, camera: _Camera, style: _CarStyle) -> None:
        self.body = body
        self.camera = camera
        self.style = style
        self.scale = 1.0
        self.offset = (0.0, 0.0)
        self.mirror = False

    def extent(self) -> tuple[float, float, float, float]:
        """``(u_min, v_min, u_max, v_max)`` of the projected car, wheels included."""
        b = self.body
        pts = [self.camera.project(x, y, z) for x, y in b.outline for z in (0.0, b.width)]
        for wx in b.wheels:
            for z in (0.0, b.width):
                pts.append(self.camera.project(wx, 0.0, z))
        us = [p[0] for p in pts]
        vs = [p[1] for p in pts]
        return min(us), min(vs), max(us), max(vs)

    def px(self, x: float, y: float, z: float) -> Point:
        """A car-space point in pixels."""
        u, v, _ = self.camera.project(x, y, z)
        if self.mirror:
            u = -u
        return (self.offset[0] + u * self.scale, self.offset[1] - v * self.scale)

    def shade(self, normal: tuple[float, float, float], color: RGB) -> RGB:
        """Lambert shading of a face with this car-space normal."""
        if self.style.flat is not None:
            return self.style.flat
        n = self.camera.rotate(*normal)
        lam = max(0.0, sum(a * b for a, b in zip(n, self.style.light, strict=True)))
        shaded = _scale(color, self.style.ambient + self.style.diffuse * lam)
        if n[1] > 0.75:  # roof and hood mirror the sky a little
            shaded = _mix(shaded, (226, 232, 240), 0.15)
        return shaded

    def faces_camera(self, normal: tuple[float, float, float]) -> bool:
        """Whether a face with this car-space normal is seen from its front."""
        return self.camera.rotate(*normal)[2] < -1e-6

    def shadow(self, draw: ImageDraw.ImageDraw, color: RGB) -> None:
        """The car's contact shadow on the ground."""
        w = self.body.width
        corners = [(-0.03, -0.05), (1.03, -0.05), (1.03, w + 0.05), (-0.03, w + 0.05)]
        draw.polygon([self.px(x, 0.0, z) for x, z in corners], fill=color)

    def draw(self, draw: ImageDraw.ImageDraw) -> None:
        """Paint the car: far wheels, shaded faces far to near, then near-side details."""
        b, style = self.body, self.style
        tire = _scale(style.flat, 0.8) if style.flat is not None else (24, 24, 26)
        for wx in b.wheels:  # far wheels peek out under the body
            self._wheel(draw, wx, b.width + 0.005, tire, tire)
        faces: list[tuple[float, list[Point], RGB]] = []
        normals = _outward_normals(b.outline)
        n = len(b.outline)
        for i in range(n):
            (x0, y0), (x1, y1) = b.outline[i], b.outline[(i + 1) % n]
            normal = (normals[i][0], normals[i][1], 0.0)
            if not self.faces_camera(normal):
                continue
            base = style.glass if i in b.glass else style.paint
            quad = [(x0, y0, 0.0), (x1, y1, 0.0), (x1, y1, b.width), (x0, y0, b.width)]
            faces.append(self._face(quad, normal, base))
        for z, nz in ((0.0, -1.0), (b.width, 1.0)):
            if self.faces_camera((0.0, 0.0, nz)):
                side = [(x, y, z) for x, y in b.outline]
                faces.append(self._face(side, (0.0, 0.0, nz), style.paint))
        for _, points, color in sorted(faces, key=lambda f: -f[0]):
            draw.polygon(points, fill=color)
        self._near_side(draw)
        self._lights(draw)

    def _face(
        self,
        points: list[tuple[float, float, float]],
        normal: tuple[float, float, float],
        base: RGB,
    ) -> tuple[float, list[Point], RGB]:
        depth = sum(self.camera.project(*p)[2] for p in points) / len(points)
        return depth, [self.px(*p) for p in points], self.shade(normal, base)

    def _near_side(self, draw: ImageDraw.ImageDraw) -> None:
        b, style = self.body, self.style
        side_normal = (0.0, 0.0, -1.0)
        z = -0.002
        if style.flat is None:
            panel = self.shade(side_normal, style.paint)
            # A highlight along the shoulder and a darker rocker: the paint is never one flat
            # color, as on a real car.
            shoulder = [
                (0.04, b.belt - 0.035),
                (0.96, b.belt - 0.035),
                (0.96, b.belt - 0.012),
                (0.04, b.belt - 0.012),
            ]
            draw.polygon([self.px(x, y, z) for x, y in shoulder], fill=_mix(panel, _WHITE, 0.3))
            rocker = [(0.06, b.sill), (0.94, b.sill), (0.94, b.sill + 0.03), (0.06, b.sill + 0.03)]
            draw.polygon([self.px(x, y, z) for x, y in rocker], fill=_mix(panel, _BLACK, 0.4))
            seam = _mix(panel, _BLACK, 0.45)
            for x in b.doors:
                draw.line([self.px(x, b.sill + 0.03, z), self.px(x, b.belt, z)], fill=seam)
        glass = self.shade(side_normal, style.glass)
        if style.flat is not None:
            glass = _mix(style.flat, _WHITE, 0.25)
        for window in b.windows:
            draw.polygon([self.px(x, y, z) for x, y in window], fill=glass)
        tire = _scale(style.flat, 0.75) if style.flat else (26, 26, 28)
        rim = _mix(style.flat, _WHITE, 0.3) if style.flat else style.rim
        for wx in b.wheels:
            self._wheel(draw, wx, z - 0.01, tire, rim)

    def _wheel(self, draw: ImageDraw.ImageDraw, wx: float, z: float, tire: RGB, rim: RGB) -> None:
        r = self.body.wheel_r
        for radius, color in ((r, tire), (r * 0.62, rim), (r * 0.2, _mix(rim, _BLACK, 0.3))):
            pts = [
                self.px(wx + radius * math.cos(t), r + radius * math.sin(t), z)
                for t in (k * math.pi / 8 for k in range(16))
            ]
            draw.polygon(pts, fill=color)

    def _lights(self, draw: ImageDraw.ImageDraw) -> None:
        if self.style.flat is not None:
            return
        b = self.body
        for end, (y0, y1), color in ((0.0, b.head, (250, 246, 226)), (1.0, b.tail, (190, 24, 30))):
            normal = (-1.0 if end == 0.0 else 1.0, 0.0, 0.0)
            x = end - 0.002 if end == 0.0 else end + 0.002
            if self.faces_camera(normal):
                for z0, z1 in ((0.03, 0.11), (b.width - 0.11, b.width - 0.03)):
                    quad = [(x, y0, z0), (x, y0, z1), (x, y1, z1), (x, y1, z0)]
                    draw.polygon([self.px(*p) for p in quad], fill=color)
                if end == 0.0:  # the grille between the headlights
                    g0, g1 = b.head[0] - 0.07, b.head[0] - 0.01
                    quad = [
                        (x, g0, 0.13),
                        (x, g0, b.width - 0.13),
                        (x, g1, b.width - 0.13),
                        (x, g1, 0.13),
                    ]
                    draw.polygon([self.px(*p) for p in quad], fill=(30, 31, 34))
            # The light wraps round onto the near side.
            xs = (0.0, 0.05) if end == 0.0 else (0.95, 1.0)
            quad = [
                (xs[0], y0, -0.003),
                (xs[1], y0, -0.003),
                (xs[1], y1, -0.003),
                (xs[0], y1, -0.003),
            ]
            draw.polygon([self.px(*p) for p in quad], fill=color)


def _random_camera(rng: random.Random, body: _Body, view: str) -> _Camera:
    if view == "front_three_quarter":
        yaw = -rng.uniform(20.0, 60.0)
    elif view == "rear_three_quarter":
        yaw = rng.uniform(20.0, 55.0)
    else:
        yaw = rng.uniform(-8.0, 8.0)
    return _Camera(
        yaw=math.radians(yaw),
        pitch=math.radians(rng.uniform(4.0, 18.0)),
        perspective=rng.uniform(0.05, 0.3),
        half_width=body.width / 2,
    )


def _random_light(rng: random.Random) -> tuple[float, float, float]:
    x, y, d = rng.uniform(-0.7, 0.7), rng.uniform(0.5, 1.0), -rng.uniform(0.3, 0.9)
    norm = math.sqrt(x * x + y * y + d * d)
    return (x / norm, y / norm, d / norm)


def _painter(
    rng: random.Random, paint: RGB, view: str, *, flat: RGB | None = None, exposure: float = 1.0
) -> _CarPainter:
    body = _BODIES[rng.choice(sorted(_BODIES))]
    camera = _random_camera(rng, body, view)
    # Metallic and aged paints differ a little from the reference paint; the scene's exposure
    # (night) scales the light, not the paint.
    finish = rng.uniform(0.92, 1.05)
    style = _CarStyle(
        paint=_scale(paint, finish),
        light=_random_light(rng),
        ambient=rng.uniform(0.4, 0.55) * exposure,
        diffuse=rng.uniform(0.45, 0.65) * exposure,
        glass=rng.choice([(34, 44, 58), (52, 64, 80), (24, 28, 34)]),
        rim=rng.choice([(196, 198, 204), (70, 72, 78), (160, 150, 120)]),
        flat=flat,
    )
    return _CarPainter(body, camera, style)


def _place(
    painter: _CarPainter, rng: random.Random, size: tuple[int, int], placement: str
) -> tuple[float, float]:
    """Scale and move the car for ``placement``; returns its ``(top, bottom)`` in pixels."""
    w, h = size
    u0, v0, u1, v1 = painter.extent()
    painter.mirror = rng.random() < 0.5
    if placement == "centred":
        frac, cx, cy = rng.uniform(0.6, 0.85), rng.uniform(0.45, 0.55), rng.uniform(0.5, 0.62)
    elif placement == "off_centre":
        frac = rng.uniform(0.35, 0.55)
        cx = rng.choice((rng.uniform(0.2, 0.34), rng.uniform(0.66, 0.8)))
        cy = rng.uniform(0.42, 0.72)
    else:  # cropped: 15–40% of the car is outside the frame, on one side
        frac = rng.uniform(0.85, 1.3)
        cut = rng.uniform(0.15, 0.4)
        half = frac / 2
        cx = (1 - half + cut * frac) if rng.random() < 0.5 else (half - cut * frac)
        cy = rng.uniform(0.5, 0.64)
    scale = frac * w / (u1 - u0)
    scale = min(scale, 0.9 * h / (v1 - v0)) if placement != "cropped" else scale
    painter.scale = scale
    # Centre the projected box on (cx, cy); mirroring flips the box about u = 0.
    mid_u = -(u0 + u1) / 2 if painter.mirror else (u0 + u1) / 2
    painter.offset = (cx * w - mid_u * scale, cy * h + (v0 + v1) / 2 * scale)
    top = painter.offset[1] - v1 * scale
    bottom = painter.offset[1] - v0 * scale
    return top, bottom


# --------------------------------------------------------------------------------------------------
# scenes with a car


Background = Callable[[Image.Image, ImageDraw.ImageDraw, random.Random, float], RGB]
"""Draws a scene's background behind the car; returns the car's shadow color."""


def _car_scene(
    img: Image.Image, image_type: str, scene: str, color: str, rng: random.Random
) -> tuple[str, str]:
    """Draw a Dealer or Stock picture of a car of ``color``; returns ``(view, placement)``."""
    view = rng.choices(VIEWS, weights=(0.5, 0.25, 0.25))[0]
    placement = rng.choice(PLACEMENTS)
    exposure = rng.uniform(0.62, 0.82) if scene == "night" else 1.0
    painter = _painter(rng, PALETTE[color], view, exposure=exposure)
    top, bottom = _place(painter, rng, img.size, placement)
    # The horizon (or the wall's foot) lies behind the car, somewhere between its roof and wheels.
    horizon = min(
        max(top + (bottom - top) * rng.uniform(0.15, 0.6), img.size[1] * 0.15), img.size[1] * 0.8
    )
    draw = ImageDraw.Draw(img)
    backgrounds: dict[str, Background] = {
        "night": _night,
        "trees": _trees,
        "indoor": _indoor,
        "plain_wall": _plain_wall,
        "white_cutout": _white_cutout,
        "dark_studio": _dark_studio,
        "color_backdrop": _color_backdrop,
        "grey_vignette": _grey_vignette,
    }
    shadow = backgrounds[scene](img, draw, rng, horizon)
    if image_type == "Dealer" and scene in ("night", "trees", "indoor") and rng.random() < 0.7:
        _background_cars(draw, rng, img.size, horizon, exclude=color)
    painter.shadow(draw, shadow)
    painter.draw(draw)
    return view, placement


def _background_cars(
    draw: ImageDraw.ImageDraw,
    rng: random.Random,
    size: tuple[int, int],
    horizon: float,
    exclude: str,
) -> None:
    """One or two smaller cars further back, in other colors: a lot or a showroom has several."""
    w, h = size
    for _ in range(rng.randint(1, 2)):
        other = rng.choice([c for c in COLORS if c != exclude])
        painter = _painter(rng, PALETTE[other], rng.choice(VIEWS))
        u0, v0, u1, _ = painter.extent()
        painter.mirror = rng.random() < 0.5
        painter.scale = rng.uniform(0.22, 0.38) * w / (u1 - u0)
        cx = rng.uniform(0.0, 1.0) * w
        painter.offset = (cx, horizon + rng.uniform(0.0, 0.06) * h + v0 * painter.scale)
        painter.draw(draw)


def _night(img: Image.Image, draw: ImageDraw.ImageDraw, rng: random.Random, horizon: float) -> RGB:
    w, h = img.size
    img.paste(_gradient((w, h), (6, 8, 22), (34, 36, 58)))
    # distant buildings with a few lit windows
    x = -rng.uniform(0, 0.1) * w
    while x < w:
        bw, bh = rng.uniform(0.12, 0.3) * w, rng.uniform(0.08, 0.3) * h
        draw.rectangle((x, horizon - bh, x + bw, horizon), fill=_grey(rng.uniform(14, 30)))
        for _ in range(rng.randint(2, 8)):
            wx, wy = x + rng.uniform(0.05, 0.9) * bw, horizon - rng.uniform(0.1, 0.9) * bh
            draw.rectangle((wx, wy, wx + w * 0.012, wy + h * 0.014), fill=(236, 206, 120))
        x += bw + rng.uniform(0, 0.05) * w
    asphalt = _grey(rng.uniform(28, 44))
    draw.rectangle((0, horizon, w, h), fill=asphalt)
    for _ in range(rng.randint(1, 3)):  # street lamps and the pools of light under them
        lx = rng.uniform(0.05, 0.95) * w
        top = horizon - rng.uniform(0.25, 0.45) * h
        draw.line([(lx, horizon + 0.05 * h), (lx, top)], fill=(60, 62, 66), width=max(1, w // 160))
        r = 0.025 * w
        lamp = rng.choice([(255, 226, 150), (236, 240, 255)])
        _soft_ellipse(draw, (lx - 3 * r, top - 3 * r, lx + 3 * r, top + 3 * r), (34, 36, 58), lamp)
        pool_y = horizon + rng.uniform(0.1, 0.3) * h
        _soft_ellipse(
            draw,
            (lx - 0.2 * w, pool_y - 0.05 * h, lx + 0.2 * w, pool_y + 0.05 * h),
            asphalt,
            _mix(asphalt, lamp, 0.35),
        )
    return (10, 10, 14)


def _trees(img: Image.Image, draw: ImageDraw.ImageDraw, rng: random.Random, horizon: float) -> RGB:
    w, h = img.size
    overcast = rng.random() < 0.4
    sky = ((176, 184, 194), (214, 218, 224)) if overcast else ((92, 150, 220), (200, 222, 240))
    img.paste(_gradient((w, h), *sky))
    # a tree line: overlapping crowns along the horizon, big trees at the sides
    for _ in range(rng.randint(12, 22)):
        r = rng.uniform(0.04, 0.1) * w
        cx, cy = rng.uniform(-0.05, 1.05) * w, horizon - r * rng.uniform(0.3, 1.2)
        green = (rng.randint(30, 80), rng.randint(80, 130), rng.randint(30, 70))
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=green)
    for side in (0.0, 1.0):
        if rng.random() < 0.5:
            tx = (side + rng.uniform(-0.05, 0.08) * (1 if side == 0 else -1)) * w
            draw.rectangle(
                (tx - 0.015 * w, horizon - 0.3 * h, tx + 0.015 * w, horizon + 0.08 * h),
                fill=(74, 56, 40),
            )
            r = rng.uniform(0.15, 0.25) * w
            draw.ellipse(
                (tx - r, horizon - 0.3 * h - r, tx + r, horizon - 0.3 * h + r * 0.8),
                fill=(rng.randint(30, 60), rng.randint(70, 110), rng.randint(30, 50)),
            )
    grass = (rng.randint(70, 110), rng.randint(120, 150), rng.randint(50, 80))
    draw.rectangle((0, horizon, w, horizon + 0.06 * h), fill=grass)
    road_top = horizon + 0.06 * h
    img.paste(
        _gradient(
            (w, max(1, int(h - road_top))),
            _grey(rng.uniform(110, 150)),
            _grey(rng.uniform(80, 110)),
        ),
        (0, int(road_top)),
    )
    return _grey(60)


def _indoor(img: Image.Image, draw: ImageDraw.ImageDraw, rng: random.Random, horizon: float) -> RGB:
    w, h = img.size
    wall = rng.choice([(226, 222, 212), (206, 208, 212), (236, 232, 224), (184, 190, 200)])
    img.paste(_gradient((w, h), _mix(wall, _WHITE, 0.3), wall))
    ceiling = horizon - rng.uniform(0.45, 0.7) * h
    draw.rectangle((0, 0, w, max(0.0, ceiling)), fill=_mix(wall, _WHITE, 0.5))
    for k in range(rng.randint(3, 6)):  # ceiling lights
        lx = (k + 0.5) / 5 * w
        draw.rectangle(
            (
                lx - 0.05 * w,
                max(0.0, ceiling) - 0.03 * h,
                lx + 0.05 * w,
                max(0.0, ceiling) - 0.01 * h,
            ),
            fill=(255, 255, 246),
        )
    # glazing or posters on the back wall
    if rng.random() < 0.6:
        pane = rng.uniform(0.12, 0.2) * w
        x = rng.uniform(0, pane)
        while x < w:
            draw.rectangle(
                (x, ceiling + 0.04 * h, x + pane * 0.9, horizon),
                fill=rng.choice([(170, 196, 214), (150, 176, 196)]),
            )
            x += pane
    else:
        for _ in range(rng.randint(1, 3)):
            px0 = rng.uniform(0, 0.8) * w
            draw.rectangle(
                (px0, ceiling + 0.08 * h, px0 + 0.14 * w, ceiling + 0.3 * h),
                fill=rng.choice([(196, 40, 44), (30, 70, 150), (40, 40, 44)]),
            )
    floor = rng.choice([(200, 198, 194), (224, 220, 210), (150, 150, 154)])
    img.paste(
        _gradient(
            (w, max(1, int(h - horizon))), _mix(floor, _BLACK, 0.1), _mix(floor, _WHITE, 0.2)
        ),
        (0, int(horizon)),
    )
    line = _mix(floor, _BLACK, 0.25)
    vx = rng.uniform(0.3, 0.7) * w  # tile joints converge on a vanishing point
    for k in range(-8, 9):
        draw.line([(vx + k * 0.02 * w, horizon), (vx + k * 0.25 * w, h)], fill=line)
    y, step = horizon, 0.02 * h
    while y < h:
        draw.line([(0, y), (w, y)], fill=line)
        step *= 1.5
        y += step
    return _mix(floor, _BLACK, 0.45)


def _plain_wall(
    img: Image.Image, draw: ImageDraw.ImageDraw, rng: random.Random, horizon: float
) -> RGB:
    w, h = img.size
    wall = rng.choice(
        [
            (214, 206, 190),
            (176, 178, 180),
            (232, 230, 226),
            (150, 78, 60),
            (190, 204, 214),
            (120, 124, 128),
        ]
    )
    draw.rectangle((0, 0, w, horizon), fill=wall)
    if rng.random() < 0.5:  # brick courses
        mortar = _mix(wall, _WHITE, 0.25)
        course = rng.uniform(0.025, 0.04) * h
        y, row = horizon, 0
        while y > 0:
            draw.line([(0, y), (w, y)], fill=mortar)
            brick = course * 2.6
            x = (row % 2) * brick / 2
            while x < w:
                draw.line([(x, y), (x, y - course)], fill=mortar)
                x += brick
            y -= course
            row += 1
    elif rng.random() < 0.5:  # a door or a downpipe
        dx = rng.uniform(0.05, 0.85) * w
        draw.rectangle((dx, horizon - 0.4 * h, dx + 0.1 * w, horizon), fill=_mix(wall, _BLACK, 0.3))
    ground = _grey(rng.uniform(120, 175))
    img.paste(
        _gradient((w, max(1, int(h - horizon))), ground, _mix(ground, _BLACK, 0.2)),
        (0, int(horizon)),
    )
    return _mix(ground, _BLACK, 0.5)


def _white_cutout(
    img: Image.Image, draw: ImageDraw.ImageDraw, rng: random.Random, horizon: float
) -> RGB:
    w, h = img.size
    draw.rectangle((0, 0, w, h), fill=_grey(rng.uniform(248, 255)))
    return _grey(rng.uniform(200, 225))


def _dark_studio(
    img: Image.Image, draw: ImageDraw.ImageDraw, rng: random.Random, horizon: float
) -> RGB:
    w, h = img.size
    img.paste(_gradient((w, h), _grey(rng.uniform(8, 24)), _grey(rng.uniform(36, 56))))
    spot = _grey(rng.uniform(70, 100))
    _soft_ellipse(draw, (0.05 * w, horizon - 0.05 * h, 0.95 * w, h + 0.15 * h), _grey(40), spot)
    return (8, 8, 10)


def _color_backdrop(
    img: Image.Image, draw: ImageDraw.ImageDraw, rng: random.Random, horizon: float
) -> RGB:
    w, h = img.size
    backdrop = rng.choice(
        [
            (176, 208, 214),
            (232, 200, 180),
            (200, 196, 228),
            (214, 226, 200),
            (240, 226, 200),
            (120, 140, 170),
        ]
    )
    img.paste(_gradient((w, h), _mix(backdrop, _WHITE, 0.3), _mix(backdrop, _BLACK, 0.15)))
    return _mix(backdrop, _BLACK, 0.45)


def _grey_vignette(
    img: Image.Image, draw: ImageDraw.ImageDraw, rng: random.Random, horizon: float
) -> RGB:
    w, h = img.size
    outer = _grey(rng.uniform(120, 160))
    draw.rectangle((0, 0, w, h), fill=outer)
    _soft_ellipse(draw, (-0.2 * w, -0.3 * h, 1.2 * w, 1.3 * h), outer, _grey(rng.uniform(225, 245)))
    return _grey(110)


# --------------------------------------------------------------------------------------------------
# placeholders


_DEALERS = ("RIVERSIDE AUTO", "KEYSTONE MOTORS", "BAYVIEW CARS", "SUMMIT AUTO MALL", "OAK & SONS")
_MESSAGES = (
    "Photos Coming Soon",
    "More photos soon",
    "Image unavailable",
    "Vehicle photo pending",
    "Awaiting photos",
    "NO IMAGE",
    "PHOTO TO COME",
    "Pictures on the way",
)
_CAPTIONS = ("Image coming soon", "Representative image", "No photo yet", "")


def _text_card(img: Image.Image, rng: random.Random) -> None:
    """A "photo coming soon" card unlike the training ones: brand colors, bands, a picture icon."""
    w, h = img.size
    draw = ImageDraw.Draw(img)
    brand = rng.choice([(180, 24, 32), (20, 60, 140), (18, 110, 70), (30, 30, 34), (236, 120, 20)])
    layout = rng.choice(("solid", "banded", "bordered"))
    if layout == "solid":
        draw.rectangle((0, 0, w, h), fill=brand)
        ink: RGB = (250, 250, 250)
    else:
        paper = _grey(rng.uniform(236, 252))
        draw.rectangle((0, 0, w, h), fill=paper)
        ink = _mix(brand, _BLACK, 0.2)
        if layout == "banded":
            band = rng.uniform(0.2, 0.3) * h
            draw.rectangle((0, 0, w, band), fill=brand)
            _text(draw, (w / 2, band / 2), rng.choice(_DEALERS), round(band * 0.4), (250, 250, 250))
        else:
            m = 0.05 * min(w, h)
            draw.rectangle((m, m, w - m, h - m), outline=brand, width=max(2, round(m / 3)))
    if rng.random() < 0.6:  # a "picture" glyph: a framed mountain and sun
        s = rng.uniform(0.12, 0.18) * min(w, h)
        cx, cy = w / 2, h * rng.uniform(0.38, 0.46)
        draw.rectangle(
            (cx - s, cy - s * 0.75, cx + s, cy + s * 0.75), outline=ink, width=max(1, round(s / 8))
        )
        draw.polygon(
            [
                (cx - s * 0.8, cy + s * 0.6),
                (cx - s * 0.2, cy - s * 0.2),
                (cx + s * 0.3, cy + s * 0.6),
            ],
            fill=ink,
        )
        draw.ellipse((cx + s * 0.3, cy - s * 0.55, cx + s * 0.6, cy - s * 0.25), fill=ink)
        text_y = cy + s * 1.3
    else:
        text_y = h * rng.uniform(0.45, 0.6)
    message = rng.choice(_MESSAGES)
    _text(draw, (w / 2, text_y), message, round(h * rng.uniform(0.07, 0.11)), ink)
    if layout == "solid" or rng.random() < 0.4:
        _text(
            draw,
            (w / 2, min(h * 0.92, text_y + 0.16 * h)),
            rng.choice(_DEALERS),
            round(h * 0.05),
            ink,
        )


def _grey_silhouette(img: Image.Image, rng: random.Random) -> str:
    """A grey car silhouette placeholder, half of them without any text; returns its view."""
    w, h = img.size
    draw = ImageDraw.Draw(img)
    dark = rng.random() < 0.25
    if dark:
        background = _grey(rng.uniform(40, 70))
        grey = _grey(rng.uniform(110, 150))
    else:
        background = _grey(rng.uniform(225, 250))
        grey = _grey(rng.uniform(150, 195))
    img.paste(_gradient((w, h), _mix(background, _WHITE, 0.1), background))
    view = rng.choice(VIEWS)
    painter = _painter(rng, grey, view, flat=grey)
    caption = rng.choice(_CAPTIONS) if rng.random() < 0.5 else ""
    _place(painter, rng, img.size, "centred")
    if caption:  # leave room for the caption under the car
        painter.offset = (painter.offset[0], painter.offset[1] - 0.08 * h)
    painter.draw(draw)
    if caption:
        _text(draw, (w / 2, h * 0.9), caption, round(h * 0.06), _mix(grey, _BLACK, 0.2))
    return view


# --------------------------------------------------------------------------------------------------
# photographic nuisances


def _photograph(
    img: Image.Image,
    rng: random.Random,
    config: RobustnessConfig,
    applied: dict[str, float | int | str],
) -> Image.Image:
    """Apply the nuisances a camera and a website add; record each in ``applied``."""
    w, h = img.size
    if rng.random() < config.p_lighting:
        lighting = rng.choice(LIGHTINGS)
        applied["lighting"] = lighting
        if lighting == "dark":
            gains = (rng.uniform(0.35, 0.6),) * 3
        elif lighting == "overexposed":
            gains = (rng.uniform(1.25, 1.6),) * 3
        else:
            # A white-balance error of up to ~10% per channel: enough to move every paint off
            # its reference, not so much that a white car turns beige to the eye.
            k = rng.uniform(0.6, 1.0)
            cast = {
                "warm_cast": (0.08, 0.0, -0.1),
                "cool_cast": (-0.09, -0.02, 0.09),
                "green_cast": (-0.05, 0.07, -0.06),
            }[lighting]
            gains = (1 + k * cast[0], 1 + k * cast[1], 1 + k * cast[2])
        applied["gain"] = round(sum(gains) / 3, 3)
        table = [_clamp(i * g) for g in gains for i in range(256)]
        img = img.point(table)
    if rng.random() < config.p_tilt:
        angle = rng.uniform(3.0, 10.0) * rng.choice((-1, 1))
        applied["tilt"] = round(angle, 2)
        a = math.radians(abs(angle))
        # Zoom in just enough that no corner of the rotated frame is empty.
        zoom = math.cos(a) + math.sin(a) * max(w / h, h / w)
        rotated = img.rotate(angle, resample=Image.Resampling.BILINEAR)
        cw, ch = w / zoom, h / zoom
        box = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
        img = rotated.resize((w, h), Image.Resampling.BILINEAR, box=box)
    if rng.random() < config.p_blur:
        radius = rng.uniform(0.8, 2.5) * max(1.0, w / 320)
        applied["blur"] = round(radius, 2)
        img = img.filter(ImageFilter.GaussianBlur(radius))
    if rng.random() < config.p_noise:
        sigma = rng.uniform(6.0, 18.0)
        applied["noise"] = round(sigma, 1)
        noise = np.random.default_rng(rng.getrandbits(64)).normal(0.0, sigma, (h, w, 1))
        pixels = np.asarray(img, dtype=np.float32) + noise.astype(np.float32)
        img = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))
    if rng.random() < config.p_heavy_jpeg:
        applied["heavy_jpeg"] = 1  # the quality is drawn (and recorded) at encoding
    return img
