"""A fast renderer of believable synthetic vehicle images, for the demo inventory and training.

Three kinds of picture, one per :data:`tagging.IMAGE_TYPES` class:

* ``Dealer``: a car seen from the side on an outdoor dealer lot (sky, clouds, asphalt with parking
  lines, a showroom, other parked cars further back, sometimes a price sticker or banner).
* ``Stock``: the same kind of car in a studio (light gradient, floor reflection and shadow).
* ``Placeholder``: a "photo coming soon" card with an icon and text; it has no color.

The body of the main car always covers the middle of the frame and its flat side panel is painted
exactly :data:`tagging.ml.palette.PALETTE` ``[color]`` (times a slight brightness factor), so a
color model that looks at the center region finds the body color. Everything is drawn with Pillow
primitives (no per-pixel Python work), which keeps a 480x360 image well under 10 ms.

Rendering is deterministic: the same ``random.Random`` state gives the same pixels.
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from db.vocab import COLORS, IMAGE_TYPES, PLACEHOLDER
from tagging.ml.palette import PALETTE, RGB

BODY_SHAPES: tuple[str, ...] = ("sedan", "suv", "hatchback", "pickup", "coupe", "wagon")
"""The car silhouettes the renderer picks from."""

PLACEHOLDER_TEXTS: tuple[str, ...] = (
    "Photo coming soon",
    "Image not available",
    "No photo",
    "Photos coming soon",
    "No image available",
    "Picture coming soon",
)

_DEALER_NAMES = ("AUTO SALES", "MOTORS", "PRE-OWNED", "CAR CENTER", "AUTO GROUP", "CERTIFIED")
_STICKERS = ("SALE", "NEW ARRIVAL", "LOW MILES", "1 OWNER", "CERTIFIED", "REDUCED")

Point = tuple[float, float]


# --------------------------------------------------------------------------------------------------
# colors


def _clamp(v: float) -> int:
    return 0 if v < 0 else 255 if v > 255 else int(v + 0.5)


def _mix(a: Sequence[float], b: Sequence[float], t: float) -> RGB:
    """``a`` moved a fraction ``t`` of the way towards ``b``."""
    return (
        _clamp(a[0] + (b[0] - a[0]) * t),
        _clamp(a[1] + (b[1] - a[1]) * t),
        _clamp(a[2] + (b[2] - a[2]) * t),
    )


def _rgb(values: Iterable[float]) -> RGB:
    """Three channel values, clamped."""
    r, g, b = (_clamp(v) for v in values)
    return (r, g, b)


def _scale(c: Sequence[float], f: float) -> RGB:
    return (_clamp(c[0] * f), _clamp(c[1] * f), _clamp(c[2] * f))


_WHITE: RGB = (255, 255, 255)
_BLACK: RGB = (0, 0, 0)


# --------------------------------------------------------------------------------------------------
# geometry


@dataclass(frozen=True)
class _View:
    """Maps scene pixels to image pixels: a slight rotation about the image center."""

    cx: float
    cy: float
    cos: float
    sin: float

    def __call__(self, x: float, y: float) -> Point:
        dx, dy = x - self.cx, y - self.cy
        return (self.cx + dx * self.cos - dy * self.sin, self.cy + dx * self.sin + dy * self.cos)


@dataclass(frozen=True)
class _Pen:
    """Draws car-space shapes: ``x`` in car lengths from the nose, ``h`` in car lengths up.

    ``mirror_h`` draws the upside-down floor reflection; ``shade`` maps every color (brightness,
    reflection fading, silhouettes).
    """

    draw: ImageDraw.ImageDraw
    view: _View
    left: float
    ground: float
    length: float
    facing_left: bool
    shade: Callable[[RGB], RGB]
    mirror_h: bool = False

    def pt(self, x: float, h: float) -> Point:
        if not self.facing_left:
            x = 1.0 - x
        if self.mirror_h:
            h = -h * 0.85  # a floor reflection is foreshortened
        return self.view(self.left + x * self.length, self.ground - h * self.length)

    def poly(self, pts: Sequence[Point], fill: RGB, outline: RGB | None = None) -> None:
        self.draw.polygon(
            [self.pt(x, h) for x, h in pts],
            fill=self.shade(fill),
            outline=None if outline is None else self.shade(outline),
        )

    def circle(self, x: float, h: float, r: float, fill: RGB) -> None:
        px, py = self.pt(x, h)
        rr = r * self.length
        ry = rr * (0.85 if self.mirror_h else 1.0)
        self.draw.ellipse((px - rr, py - ry, px + rr, py + ry), fill=self.shade(fill))

    def line(self, pts: Sequence[Point], fill: RGB, width: float) -> None:
        w = max(1, round(width * self.length))
        self.draw.line([self.pt(x, h) for x, h in pts], fill=self.shade(fill), width=w)


# --------------------------------------------------------------------------------------------------
# car silhouettes


@dataclass(frozen=True)
class _Profile:
    """One car side view in car space (nose at x=0, tail at x=1, ground at h=0)."""

    body: list[Point]  # the painted lower body, nose to tail over the top, back along the sill
    cabin: list[Point]  # the painted greenhouse around the windows
    windows: list[list[Point]]
    wheel_x: tuple[float, float]
    wheel_r: float
    belt: float  # height of the beltline (top of the doors)
    sill: float  # height of the bottom of the doors
    head: list[Point]
    tail: list[Point]
    doors: list[float]  # x positions of the door seams
    bed: list[Point] | None = None  # a pickup's open bed (drawn dark inside)


def _profile(shape: str, rng: random.Random) -> _Profile:
    """The silhouette of ``shape``, with small random changes of proportion."""
    j = rng.uniform(-1.0, 1.0)
    k = rng.uniform(-1.0, 1.0)
    if shape == "sedan":
        belt, roof, sill = 0.255 + 0.01 * j, 0.385 + 0.01 * k, 0.065
        a, b, c, d = 0.29, 0.43, 0.67, 0.82  # windshield base, roof front, roof back, deck start
        body = [
            (0.0, 0.115), (0.004, 0.19), (0.03, 0.225), (a, belt), (d, belt + 0.008),
            (0.975, belt), (1.0, 0.205), (0.996, 0.11), (0.965, sill), (0.035, sill),
        ]  # fmt: skip
        tail_h = (0.2, belt - 0.01)
    elif shape == "coupe":
        belt, roof, sill = 0.24 + 0.01 * j, 0.35 + 0.01 * k, 0.06
        a, b, c, d = 0.31, 0.47, 0.62, 0.85
        body = [
            (0.0, 0.11), (0.004, 0.18), (0.03, 0.215), (a, belt), (d, belt + 0.005),
            (0.98, belt - 0.005), (1.0, 0.2), (0.996, 0.105), (0.965, sill), (0.035, sill),
        ]  # fmt: skip
        tail_h = (0.19, belt - 0.015)
    elif shape == "hatchback":
        belt, roof, sill = 0.275 + 0.01 * j, 0.425 + 0.01 * k, 0.07
        a, b, c, d = 0.27, 0.42, 0.78, 0.965
        body = [
            (0.0, 0.12), (0.005, 0.2), (0.035, 0.24), (a, belt), (d, belt + 0.01),
            (1.0, belt - 0.01), (1.0, 0.12), (0.97, sill), (0.04, sill),
        ]  # fmt: skip
        tail_h = (0.2, belt)
    elif shape == "wagon":
        belt, roof, sill = 0.265 + 0.01 * j, 0.405 + 0.01 * k, 0.07
        a, b, c, d = 0.27, 0.42, 0.93, 0.985
        body = [
            (0.0, 0.115), (0.004, 0.195), (0.03, 0.23), (a, belt), (d, belt + 0.01),
            (1.0, belt - 0.01), (1.0, 0.12), (0.97, sill), (0.035, sill),
        ]  # fmt: skip
        tail_h = (0.2, belt)
    elif shape == "suv":
        belt, roof, sill = 0.315 + 0.012 * j, 0.485 + 0.012 * k, 0.095
        a, b, c, d = 0.26, 0.38, 0.92, 0.975
        body = [
            (0.0, 0.15), (0.004, 0.245), (0.025, 0.285), (a, belt), (d, belt + 0.01),
            (1.0, belt - 0.01), (1.0, 0.15), (0.975, sill), (0.03, sill),
        ]  # fmt: skip
        tail_h = (0.24, belt)
    elif shape == "pickup":
        belt, roof, sill = 0.32 + 0.01 * j, 0.48 + 0.01 * k, 0.1
        a, b, c, d = 0.27, 0.37, 0.55, 0.6
        body = [
            (0.0, 0.155), (0.004, 0.25), (0.025, 0.29), (a, belt), (0.6, belt + 0.01),
            (0.6, belt + 0.025), (1.0, belt + 0.025), (1.0, 0.14), (0.98, sill), (0.03, sill),
        ]  # fmt: skip
        tail_h = (0.24, belt)
    else:
        raise ValueError(f"unknown body shape {shape!r}")

    if shape == "pickup":
        cabin = [(a - 0.01, belt), (b, roof), (c, roof), (d, belt + 0.01)]
        windows = [
            [(a + 0.035, belt + 0.012), (b + 0.01, roof - 0.02), (0.455, roof - 0.02),
             (0.455, belt + 0.012)],
            [(0.47, belt + 0.012), (0.47, roof - 0.02), (c - 0.02, roof - 0.02),
             (c + 0.01, belt + 0.012)],
        ]  # fmt: skip
        doors = [0.46, 0.59]
        bed = [
            (0.62, belt + 0.025),
            (0.985, belt + 0.025),
            (0.985, belt + 0.012),
            (0.62, belt + 0.012),
        ]
    else:
        top = roof + 0.005
        cabin = [
            (a - 0.01, belt),
            (b - 0.02, roof - 0.01),
            (b + 0.02, top),
            (c - 0.02, top),
            (c + 0.02, roof - 0.012),
            (d, belt + 0.008),
        ]
        mid = a + (c - a) * 0.52
        slope_f = (b - a) / max(roof - belt, 1e-3)
        slope_r = (d - c) / max(roof - belt, 1e-3)
        win_top = roof - 0.022
        win_bot = belt + 0.012

        def on_front(h: float) -> float:
            return a + (h - belt) * slope_f + 0.035

        def on_rear(h: float) -> float:
            return d - (h - belt) * slope_r - 0.035

        windows = [
            [(on_front(win_bot), win_bot), (on_front(win_top), win_top), (mid - 0.008, win_top),
             (mid - 0.008, win_bot)],
            [(mid + 0.012, win_bot), (mid + 0.012, win_top), (on_rear(win_top), win_top),
             (on_rear(win_bot), win_bot)],
        ]  # fmt: skip
        doors = [a + 0.02, mid + 0.002, min(c + 0.03, 0.8)]
        bed = None

    r = {"suv": 0.088, "pickup": 0.09}.get(shape, 0.074)
    wx = (0.18 + 0.01 * j, 0.8 - 0.01 * k) if shape != "pickup" else (0.17, 0.81)
    head = [(0.003, 0.19), (0.01, 0.215), (0.065, 0.222), (0.06, 0.19)]
    if shape in ("suv", "pickup"):
        head = [(0.003, 0.24), (0.01, 0.275), (0.07, 0.282), (0.066, 0.245)]
    tail = [(1.0, tail_h[0]), (1.0, tail_h[1]), (0.965, tail_h[1]), (0.97, tail_h[0])]
    return _Profile(body, cabin, windows, wx, r, belt, sill, head, tail, doors, bed)


def _draw_car(pen: _Pen, prof: _Profile, body: RGB, rng: random.Random) -> None:
    """Paint one car: lower body, shading bands, greenhouse, windows, lights, wheels."""
    glass = (38, 48, 62) if rng.random() < 0.7 else (70, 88, 108)
    light_band = _mix(body, _WHITE, 0.22)
    dark_band = _mix(body, _BLACK, 0.35)
    trim = (28, 28, 30)

    pen.poly(prof.body, body)
    pen.poly(prof.cabin, body)
    # The lighter shoulder and darker rocker stay thin so the flat panel dominates the body color.
    top = prof.belt
    pen.poly(
        [(0.03, top - 0.012), (0.97, top - 0.012), (0.97, top - 0.028), (0.03, top - 0.028)],
        light_band,
    )
    pen.poly(
        [
            (0.04, prof.sill + 0.022),
            (0.96, prof.sill + 0.022),
            (0.96, prof.sill),
            (0.04, prof.sill),
        ],
        dark_band,
    )
    for win in prof.windows:
        pen.poly(win, glass)
        # A pale diagonal reflection makes the glass read as glass.
        (x0, h0), h1 = win[0], win[2][1]
        pen.poly(
            [
                (x0 + 0.02, h0),
                (x0 + 0.045, h0),
                (x0 + 0.045 + (h1 - h0) * 0.4, h1),
                (x0 + 0.02 + (h1 - h0) * 0.4, h1),
            ],
            _mix(glass, _WHITE, 0.18),
        )
    if prof.bed is not None:
        pen.poly(prof.bed, dark_band)
    for x in prof.doors:
        pen.line([(x, prof.belt + 0.004), (x, prof.sill + 0.03)], _mix(body, _BLACK, 0.45), 0.003)
    handle = _mix(body, _BLACK, 0.3)
    for x in prof.doors[:2]:
        pen.poly(
            [
                (x + 0.03, prof.belt - 0.04),
                (x + 0.075, prof.belt - 0.04),
                (x + 0.075, prof.belt - 0.05),
                (x + 0.03, prof.belt - 0.05),
            ],
            handle,
        )
    # mirror
    mx = prof.windows[0][0][0] + 0.005
    pen.poly(
        [
            (mx, prof.belt + 0.01),
            (mx + 0.035, prof.belt + 0.01),
            (mx + 0.035, prof.belt + 0.04),
            (mx + 0.005, prof.belt + 0.035),
        ],
        body,
    )
    pen.poly(prof.head, (250, 246, 222))
    pen.poly(prof.tail, (196, 22, 26) if body != PALETTE["Red"] else (120, 10, 12))
    # bumpers
    pen.poly([(0.0, 0.115), (0.06, 0.115), (0.06, prof.sill + 0.005), (0.03, prof.sill)], trim)
    pen.poly([(1.0, 0.11), (0.94, 0.11), (0.94, prof.sill + 0.005), (0.975, prof.sill)], trim)
    r = prof.wheel_r
    rim = (200, 202, 206) if rng.random() < 0.7 else (60, 62, 66)
    for wx in prof.wheel_x:
        pen.circle(wx, r, r * 1.14, (18, 18, 20))  # wheel arch
        pen.circle(wx, r, r, (30, 30, 32))  # tire
        pen.circle(wx, r, r * 0.62, rim)
        pen.circle(wx, r, r * 0.5, _mix(rim, _BLACK, 0.25))
        for s in range(5):
            ang = s * 2 * math.pi / 5 + 0.3
            pen.line(
                [(wx, r), (wx + math.cos(ang) * r * 0.55, r + math.sin(ang) * r * 0.55)], rim, 0.008
            )
        pen.circle(wx, r, r * 0.14, _mix(rim, _BLACK, 0.1))


# --------------------------------------------------------------------------------------------------
# helpers


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=max(8, size))


def _gradient(size: tuple[int, int], top: RGB, bottom: RGB, split: float = 1.0) -> Image.Image:
    """A vertical gradient from ``top`` to ``bottom`` over the first ``split`` of the height."""
    w, h = size
    stop = max(1, round(h * split))
    column = Image.new("RGB", (1, h), bottom)
    px = column.load()
    assert px is not None
    for y in range(stop):
        px[0, y] = _mix(top, bottom, y / stop)
    # A 1-pixel column stretched sideways is much cheaper than a full-size numpy gradient.
    return column.resize((w, h), Image.Resampling.NEAREST)


def _text_size(draw: ImageDraw.ImageDraw, text: str, size: int) -> tuple[float, float]:
    box = draw.textbbox((0, 0), text, font=_font(size))
    return box[2] - box[0], box[3] - box[1]


def _text_center(
    draw: ImageDraw.ImageDraw, xy: Point, text: str, size: int, fill: RGB
) -> tuple[float, float, float, float]:
    font = _font(size)
    box = draw.textbbox((0, 0), text, font=font)
    tw, th = box[2] - box[0], box[3] - box[1]
    x, y = xy[0] - tw / 2 - box[0], xy[1] - th / 2 - box[1]
    draw.text((x, y), text, font=font, fill=fill)
    return (xy[0] - tw / 2, xy[1] - th / 2, xy[0] + tw / 2, xy[1] + th / 2)


def _other_color(rng: random.Random, exclude: str | None) -> str:
    return rng.choice([c for c in COLORS if c != exclude])


def _price(rng: random.Random) -> str:
    return f"${rng.randrange(8, 62)},{rng.randrange(0, 10)}{rng.choice('59')}{rng.choice('05')}"


# --------------------------------------------------------------------------------------------------
# scenes


def _place_car(rng: random.Random, w: int, h: int, shape: str) -> tuple[float, float, float]:
    """Where the main car goes: ``(left, ground, length)`` so its side panel covers the center."""
    length = w * rng.uniform(0.74, 0.96)
    prof_mid = {"suv": 0.2, "pickup": 0.2}.get(shape, 0.16)  # the middle of the door panel
    center_x = w / 2 + rng.uniform(-0.04, 0.04) * w
    # The door panel's middle lands near the vertical center, a little lower on average.
    panel_y = h * rng.uniform(0.5, 0.6)
    ground = panel_y + prof_mid * length
    return center_x - length / 2, ground, length


def _dealer(
    img: Image.Image, color: str, shape: str, rng: random.Random, shade: Callable[[RGB], RGB]
) -> None:
    w, h = img.size
    draw = ImageDraw.Draw(img)
    angle = math.radians(rng.uniform(-2.0, 2.0))
    view = _View(w / 2, h / 2, math.cos(angle), math.sin(angle))
    left, ground, length = _place_car(rng, w, h, shape)
    horizon = ground - length * rng.uniform(0.3, 0.42)
    horizon = min(horizon, h * 0.55)

    def poly(pts: Sequence[Point], fill: RGB) -> None:
        draw.polygon([view(x, y) for x, y in pts], fill=shade(fill))

    # sky
    overcast = rng.random() < 0.25
    sky_top = (
        (150, 156, 166) if overcast else (rng.randrange(60, 110), rng.randrange(130, 170), 228)
    )
    sky_bot = (205, 208, 212) if overcast else (196, 220, 242)
    img.paste(_gradient((w, h), shade(sky_top), shade(sky_bot), split=max(0.05, horizon / h)))
    for _ in range(rng.randrange(2, 7)):
        cx, cy = rng.uniform(0, w), rng.uniform(0, horizon * 0.7)
        cw = rng.uniform(0.08, 0.2) * w
        cloud = (246, 247, 250) if not overcast else (220, 222, 226)
        for _ in range(rng.randrange(3, 6)):
            ox, oy = rng.uniform(-cw, cw) * 0.6, rng.uniform(-cw, cw) * 0.12
            rx, ry = cw * rng.uniform(0.3, 0.55), cw * rng.uniform(0.18, 0.3)
            p = view(cx + ox, cy + oy)
            draw.ellipse((p[0] - rx, p[1] - ry, p[0] + rx, p[1] + ry), fill=shade(cloud))
        draw.ellipse(
            (view(cx - cw * 0.8, cy)[0], cy, view(cx + cw * 0.8, cy)[0], cy + cw * 0.22),
            fill=shade(cloud),
        )

    # trees behind the building
    for _ in range(rng.randrange(2, 8)):
        tx = rng.uniform(-0.05, 1.05) * w
        tr = rng.uniform(0.04, 0.09) * w
        ty = horizon - tr * rng.uniform(0.6, 1.6)
        green = (rng.randrange(40, 80), rng.randrange(90, 130), rng.randrange(40, 70))
        p = view(tx, ty)
        draw.ellipse((p[0] - tr, p[1] - tr, p[0] + tr, p[1] + tr), fill=shade(green))
        poly(
            [(tx - 3, ty + tr), (tx + 3, ty + tr), (tx + 3, horizon), (tx - 3, horizon)],
            (70, 52, 38),
        )

    # showroom building
    bx0 = rng.uniform(-0.3, 0.3) * w
    bx1 = bx0 + rng.uniform(0.6, 1.1) * w
    bh = rng.uniform(0.12, 0.24) * h
    wall = rng.choice(
        [(226, 224, 218), (200, 202, 206), (232, 226, 208), (178, 84, 64), (70, 88, 120)]
    )
    poly([(bx0, horizon - bh), (bx1, horizon - bh), (bx1, horizon), (bx0, horizon)], wall)
    sign_c = rng.choice([(190, 30, 40), (24, 60, 140), (20, 20, 24), (230, 230, 230)])
    poly(
        [
            (bx0, horizon - bh),
            (bx1, horizon - bh),
            (bx1, horizon - bh * 0.72),
            (bx0, horizon - bh * 0.72),
        ],
        sign_c,
    )
    glass = (60, 84, 108)
    n_pane = rng.randrange(3, 8)
    pane_w = (bx1 - bx0) / n_pane
    for i in range(n_pane):
        x = bx0 + i * pane_w
        poly(
            [
                (x + pane_w * 0.08, horizon - bh * 0.62),
                (x + pane_w * 0.92, horizon - bh * 0.62),
                (x + pane_w * 0.92, horizon),
                (x + pane_w * 0.08, horizon),
            ],
            glass,
        )
    sign_text = rng.choice(_DEALER_NAMES)
    text_c = (250, 250, 250) if sum(sign_c) < 500 else (30, 30, 30)
    _text_center(
        draw,
        view((bx0 + bx1) / 2, horizon - bh * 0.86),
        sign_text,
        max(8, round(bh * 0.2)),
        shade(text_c),
    )
    # pennant strings
    if rng.random() < 0.5:
        y0 = horizon - bh * rng.uniform(1.05, 1.4)
        n = rng.randrange(10, 22)
        for i in range(n):
            x = i * w / n
            flag = rng.choice([(220, 30, 30), (30, 80, 200), (250, 250, 250), (250, 200, 20)])
            poly([(x, y0), (x + w / n * 0.8, y0), (x + w / n * 0.4, y0 + h * 0.04)], flag)

    # asphalt
    asphalt_top = (rng.randrange(88, 118),) * 3
    asphalt_bot = (rng.randrange(56, 80),) * 3
    ground_img = _gradient((w, h), shade(asphalt_top), shade(asphalt_bot))
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).polygon(
        [view(-w, horizon), view(2 * w, horizon), view(2 * w, 3 * h), view(-w, 3 * h)], fill=255
    )
    img.paste(ground_img, (0, 0), mask)
    curb = (170, 170, 166)
    poly([(-w, horizon), (2 * w, horizon), (2 * w, horizon + 3), (-w, horizon + 3)], curb)

    # parking lines converge towards a vanishing point above the horizon
    line_c = (236, 236, 230) if rng.random() < 0.7 else (230, 196, 40)
    vx, vy = w * rng.uniform(0.3, 0.7), horizon - h * 0.6
    spacing = rng.uniform(0.32, 0.5) * w
    offset = rng.uniform(0, spacing)
    x = -w + offset
    while x < 2 * w:
        y_start = horizon + (ground - horizon) * 0.15
        t0 = (y_start - vy) / (3 * h - vy)
        xa = vx + (x - vx) * t0
        lw = 1.0 + 0.008 * spacing
        poly(
            [(xa - lw * t0, y_start), (xa + lw * t0, y_start), (x + lw, 3 * h), (x - lw, 3 * h)],
            line_c,
        )
        x += spacing

    # other parked cars, smaller and further back, partly hidden by the main car
    for _ in range(rng.randrange(1, 4)):
        s_len = length * rng.uniform(0.4, 0.6)
        s_ground = horizon + (ground - horizon) * rng.uniform(0.12, 0.35)
        s_left = rng.uniform(-0.35, 0.95) * w
        other = PALETTE[_other_color(rng, color)]
        pen = _Pen(draw, view, s_left, s_ground, s_len, rng.random() < 0.5, shade)
        _draw_car(pen, _profile(rng.choice(BODY_SHAPES), rng), other, rng)

    # the main car and its shadow
    sh = _mix(asphalt_bot, _BLACK, 0.45)
    p0, p1 = view(left + length * 0.02, ground), view(left + length * 0.98, ground)
    draw.ellipse((p0[0], p0[1] - length * 0.03, p1[0], p1[1] + length * 0.035), fill=shade(sh))
    pen = _Pen(draw, view, left, ground, length, rng.random() < 0.5, shade)
    prof = _profile(shape, rng)
    _draw_car(pen, prof, PALETTE[color], rng)

    # price sticker on a window, or a banner across a corner
    roll = rng.random()
    if roll < 0.35:
        win = prof.windows[rng.randrange(len(prof.windows))]
        xs = [x for x, _ in win]
        hs = [hh for _, hh in win]
        cxh = (sum(xs) / len(xs), sum(hs) / len(hs))
        c = pen.pt(*cxh)
        size = max(9, round(length * 0.028))
        text = _price(rng)
        tw, th = _text_size(draw, text, size)
        pad = size * 0.35
        paper = (250, 224, 40) if rng.random() < 0.6 else (250, 250, 250)
        draw.rectangle(
            (c[0] - tw / 2 - pad, c[1] - th / 2 - pad, c[0] + tw / 2 + pad, c[1] + th / 2 + pad),
            fill=paper,
        )
        _text_center(draw, c, text, size, (20, 20, 20))
    elif roll < 0.5:
        bc = rng.choice([(200, 24, 30), (20, 60, 160), (240, 200, 20)])
        bh2 = h * 0.1
        top_side = rng.random() < 0.5
        y0 = 0 if top_side else h - bh2
        draw.rectangle((0, y0, w, y0 + bh2), fill=bc)
        text = f"{rng.choice(_STICKERS)}  {_price(rng)}"
        tc = (250, 250, 250) if bc != (240, 200, 20) else (20, 20, 20)
        _text_center(draw, (w / 2, y0 + bh2 / 2), text, round(bh2 * 0.55), tc)


def _stock(
    img: Image.Image, color: str, shape: str, rng: random.Random, shade: Callable[[RGB], RGB]
) -> None:
    w, h = img.size
    draw = ImageDraw.Draw(img)
    angle = math.radians(rng.uniform(-1.0, 1.0))
    view = _View(w / 2, h / 2, math.cos(angle), math.sin(angle))
    left, ground, length = _place_car(rng, w, h, shape)
    tint = rng.choice([(0, 0, 0), (4, 2, -4), (-4, 0, 6), (2, 2, 2)])
    top = _rgb(rng.uniform(236, 255) + t for t in tint)
    floor_line = ground - length * rng.uniform(0.12, 0.22)
    wall_bot = _rgb(c - rng.uniform(18, 40) for c in top)
    floor = _rgb(c - rng.uniform(4, 16) for c in wall_bot)
    # A seamless studio sweep: the wall darkens towards the floor line, the floor lightens forwards.
    img.paste(_gradient((w, h), shade(top), shade(wall_bot), split=max(0.05, floor_line / h)))
    floor_img = _gradient((w, h), shade(floor), shade(_mix(floor, _WHITE, 0.35)))
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).polygon(
        [view(-w, floor_line), view(2 * w, floor_line), view(2 * w, 3 * h), view(-w, 3 * h)],
        fill=255,
    )
    img.paste(floor_img.crop((0, 0, w, h)), (0, 0), mask)

    facing_left = rng.random() < 0.5
    prof = _profile(shape, rng)
    floor_c = _mix(floor, _WHITE, 0.2)

    def faded(c: RGB) -> RGB:
        return shade(_mix(c, floor_c, 0.78))

    mirror = _Pen(draw, view, left, ground, length, facing_left, faded, mirror_h=True)
    _draw_car(mirror, prof, PALETTE[color], random.Random(0))
    sh = _mix(floor, _BLACK, 0.55)
    p0, p1 = view(left + length * 0.04, ground), view(left + length * 0.96, ground)
    draw.ellipse((p0[0], p0[1] - length * 0.018, p1[0], p1[1] + length * 0.018), fill=shade(sh))
    pen = _Pen(draw, view, left, ground, length, facing_left, shade)
    _draw_car(pen, prof, PALETTE[color], random.Random(1))
    if rng.random() < 0.3:
        text = rng.choice(
            ("Stock photo", "Stock image. Actual vehicle may vary", "Image for illustration only")
        )
        _text_center(draw, (w / 2, h * 0.95), text, max(8, round(h * 0.035)), (120, 120, 124))


def _camera_icon(
    draw: ImageDraw.ImageDraw, cx: float, cy: float, s: float, c: RGB, bg: RGB
) -> None:
    draw.rounded_rectangle((cx - s, cy - s * 0.6, cx + s, cy + s * 0.7), radius=s * 0.18, fill=c)
    draw.rounded_rectangle(
        (cx - s * 0.35, cy - s * 0.82, cx + s * 0.35, cy - s * 0.5), radius=s * 0.08, fill=c
    )
    draw.ellipse((cx - s * 0.48, cy - s * 0.4, cx + s * 0.48, cy + s * 0.56), fill=bg)
    draw.ellipse((cx - s * 0.32, cy - s * 0.24, cx + s * 0.32, cy + s * 0.4), fill=c)
    draw.ellipse((cx + s * 0.6, cy - s * 0.45, cx + s * 0.8, cy - s * 0.28), fill=bg)


def _placeholder(img: Image.Image, rng: random.Random, shade: Callable[[RGB], RGB]) -> None:
    w, h = img.size
    draw = ImageDraw.Draw(img)
    style = rng.random()
    if style < 0.45:
        bg = rng.choice([(232, 232, 232), (242, 242, 244), (224, 228, 234), (250, 250, 250)])
        img.paste(shade(bg), (0, 0, w, h))
        fg = _mix(bg, _BLACK, rng.uniform(0.3, 0.5))
    elif style < 0.8:
        top = rng.choice([(236, 238, 242), (220, 226, 236), (244, 240, 232)])
        bottom = _mix(top, _BLACK, rng.uniform(0.08, 0.2))
        img.paste(_gradient((w, h), shade(top), shade(bottom)))
        bg = _mix(top, bottom, 0.5)
        fg = _mix(bg, _BLACK, rng.uniform(0.35, 0.5))
    else:
        bg = rng.choice([(52, 56, 62), (30, 40, 70), (96, 20, 28), (40, 42, 46)])
        img.paste(shade(bg), (0, 0, w, h))
        fg = _mix(bg, _WHITE, rng.uniform(0.45, 0.65))
    if rng.random() < 0.4:
        m = round(min(w, h) * 0.04)
        draw.rectangle((m, m, w - m, h - m), outline=shade(fg), width=max(1, round(m * 0.15)))
    cx = w / 2 + rng.uniform(-0.03, 0.03) * w
    icon_y = h * rng.uniform(0.36, 0.44)
    icon = rng.random()
    if icon < 0.5:
        _camera_icon(draw, cx, icon_y, min(w, h) * rng.uniform(0.11, 0.16), shade(fg), shade(bg))
    else:
        # A flat silhouette of a car: the same drawing as the real ones, in one color.
        length = w * rng.uniform(0.32, 0.46)
        flat = shade(fg)
        view = _View(w / 2, h / 2, 1.0, 0.0)
        pen = _Pen(
            draw,
            view,
            cx - length / 2,
            icon_y + length * 0.2,
            length,
            rng.random() < 0.5,
            lambda _c: flat,
        )
        _draw_car(pen, _profile(rng.choice(BODY_SHAPES), rng), fg, random.Random(0))
        if icon > 0.8:
            # a "no car" sign: a ring with a slash through the silhouette
            r = length * 0.5
            cy = icon_y + length * 0.08
            lw = max(2, round(r * 0.08))
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=flat, width=lw)
            d = r * 0.7
            draw.line((cx - d, cy - d, cx + d, cy + d), fill=flat, width=lw)
    text = rng.choice(PLACEHOLDER_TEXTS)
    if rng.random() < 0.5:
        text = text.upper()
    size = round(h * rng.uniform(0.065, 0.09))
    _text_center(draw, (cx, h * rng.uniform(0.68, 0.74)), text, size, shade(fg))
    if rng.random() < 0.35:
        sub = rng.choice(("Call for details", "Check back soon", "Contact dealer for photos"))
        _text_center(draw, (cx, h * 0.84), sub, round(size * 0.55), shade(fg))


# --------------------------------------------------------------------------------------------------
# public API


def render(
    image_type: str,
    color: str | None,
    rng: random.Random,
    size: tuple[int, int] = (480, 360),
    *,
    shape: str | None = None,
) -> Image.Image:
    """Draw one synthetic image.

    Args:
        image_type: One of :data:`tagging.IMAGE_TYPES`.
        color: The body color, one of :data:`tagging.COLORS`, for ``Dealer`` and ``Stock``;
            must be ``None`` for ``Placeholder``.
        rng: The source of every random choice; the same state gives the same pixels.
        size: ``(width, height)`` in pixels.
        shape: One of :data:`BODY_SHAPES` to draw, so several photos of one vehicle agree;
            ``None`` lets ``rng`` pick. Ignored for placeholders.

    Returns:
        An RGB image of ``size``.

    Raises:
        ValueError: Unknown ``image_type``, ``color`` or ``shape``, a color on a placeholder, no
            color on a car, or a size too small to draw.
    """
    if image_type not in IMAGE_TYPES:
        raise ValueError(f"unknown image type {image_type!r}; expected one of {IMAGE_TYPES}")
    if image_type == PLACEHOLDER:
        if color is not None:
            raise ValueError("a Placeholder image has no color; pass color=None")
    elif color not in PALETTE:
        raise ValueError(f"unknown color {color!r}; expected one of {COLORS}")
    w, h = size
    if w < 8 or h < 8:
        raise ValueError(f"size {size} is too small to draw")
    if shape is not None and shape not in BODY_SHAPES:
        raise ValueError(f"unknown body shape {shape!r}; expected one of {BODY_SHAPES}")
    # The shape is drawn from rng even when given, so passing it does not shift later choices.
    picked = rng.choice(BODY_SHAPES)
    shape = shape or picked
    brightness = rng.uniform(0.94, 1.06)

    def shade(c: RGB) -> RGB:
        return _scale(c, brightness)

    img = Image.new("RGB", (w, h))
    if image_type == "Dealer":
        assert color is not None
        _dealer(img, color, shape, rng, shade)
    elif image_type == "Stock":
        assert color is not None
        _stock(img, color, shape, rng, shade)
    else:
        _placeholder(img, rng, shade)
    return img


def render_bytes(
    image_type: str,
    color: str | None,
    rng: random.Random,
    size: tuple[int, int] = (480, 360),
    fmt: str = "JPEG",
    quality: int = 85,
    *,
    shape: str | None = None,
) -> bytes:
    """Draw one synthetic image (see :func:`render`) and encode it.

    Args:
        image_type: One of :data:`tagging.IMAGE_TYPES`.
        color: The body color, or ``None`` for a placeholder.
        rng: The source of every random choice.
        size: ``(width, height)`` in pixels.
        fmt: A Pillow format name such as ``"JPEG"``, ``"PNG"`` or ``"WEBP"``.
        quality: The encoder quality for lossy formats.
        shape: One of :data:`BODY_SHAPES`, or ``None`` to let ``rng`` pick.

    Returns:
        The encoded file's bytes (deterministic for a given rng state).
    """
    img = render(image_type, color, rng, size, shape=shape)
    buf = io.BytesIO()
    if fmt.upper() in ("JPEG", "JPG", "WEBP"):
        img.save(buf, format=fmt, quality=quality)
    else:
        img.save(buf, format=fmt)
    return buf.getvalue()
