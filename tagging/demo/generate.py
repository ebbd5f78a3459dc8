"""Generate the demo inventory: six advertisers, their vehicles, and ~1,700 synthetic images.

The demo is a small, reproducible copy of the world the app meets in production. Every awkward case
the app must handle is planted on purpose and recorded in ``manifest.json``:

* **Sunrise Motors** (``cdn/sunrise``): mostly dealer-lot photos; several vehicles share one
  "coming soon" placeholder URL; one vehicle title carries HTML (``<b>``/``<script>``).
* **Lakeside Auto** and **Metro Car Center** share the CDN folder ``cdn/shared-cdn`` and list
  some of the *same* image URLs (the same cars, syndicated to both).
* **Valley Trucks** (``cdn/valley``): trucks and SUVs; its feed configures the color
  (``color_from_feed``) and every vehicle carries a ``feed_color``.
* **Harbor Autos** (``cdn/harbor``): stock-photo heavy, tiny images (60x45...), broken files
  (truncated JPEG, empty file, HTML pages, an SVG) and valid odd ones (palette PNG, CMYK JPEG).
* **Summit Auto Group** (``cdn/summit``): a mix, plus near-duplicates of Sunrise photos
  (re-encoded, resized, slightly cropped) at its own URLs, and a few WebP files.

Reproducibility: every image is drawn from a ``random.Random`` seeded by ``(seed, path)``, so the
order in which worker processes finish does not matter and the same seed gives byte-identical
files and manifest.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import random
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from PIL import Image

from db.vocab import COLORS
from tagging.errors import ConfigError, NotFoundError
from tagging.ml.synth import render

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1

HTML_TITLE = "2019 Toyota Camry SE <b>Sale</b> <script>alert(1)</script>"
"""The one vehicle title carrying markup, so the app can prove it shows titles as text."""

PUBLISHED_AT = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
"""The demo CDN's first publication time; images get deterministic offsets from it."""

# --------------------------------------------------------------------------------------------------
# the manifest model


@dataclass(frozen=True)
class DemoImage:
    """One file on the demo CDN and what it truly shows.

    Attributes:
        path: The URL path, e.g. ``/cdn/sunrise/12345-1.jpg``.
        image_type: The true Image Type, or ``None`` for files that are not a decodable picture.
        color: The true body color, or ``None`` (placeholders, broken files).
        kind: ``ok``, ``too_small``, ``broken`` or ``near_duplicate``.
        detail: What is special: ``truncated_jpeg``, ``empty``, ``html_page``, ``svg``,
            ``palette_png``, ``cmyk_jpeg``, ``shared_inventory``, ``shared_placeholder``,
            ``webp`` or ``None``.
        content_type: The Content-Type the CDN serves it with (it may lie, see ``detail``).
        width: Pixel width, ``None`` when not decodable.
        height: Pixel height, ``None`` when not decodable.
        size_bytes: The file's length.
        sha256: Hex digest of the file's bytes.
        published_at: When the CDN first published it (ISO 8601, UTC).
        duplicate_of: For near-duplicates, the path of the original picture.
        advertisers: Slugs of the advertisers whose sitemaps list it.
    """

    path: str
    image_type: str | None
    color: str | None
    kind: str
    detail: str | None
    content_type: str
    width: int | None
    height: int | None
    size_bytes: int
    sha256: str
    published_at: str
    duplicate_of: str | None = None
    advertisers: tuple[str, ...] = ()


@dataclass(frozen=True)
class DemoVehicle:
    """One vehicle page in an advertiser's sitemap."""

    page_path: str
    title: str
    feed_color: str | None
    images: tuple[str, ...]


@dataclass(frozen=True)
class DemoAdvertiser:
    """One advertiser: its sitemap, CDN folder and vehicles."""

    name: str
    slug: str
    sitemap_path: str
    host_folder: str
    color_from_feed: bool
    vehicles: tuple[DemoVehicle, ...]

    def image_paths(self) -> list[str]:
        """Every image path its sitemap lists, first occurrence order, without repeats."""
        return list(dict.fromkeys(p for v in self.vehicles for p in v.images))


@dataclass(frozen=True)
class DemoInventory:
    """The generated demo, as recorded in ``manifest.json``."""

    root: Path
    seed: int
    advertisers: tuple[DemoAdvertiser, ...]
    images: dict[str, DemoImage] = field(repr=False)

    @classmethod
    def load(cls, out_dir: Path) -> DemoInventory:
        """Read the manifest of the demo generated in ``out_dir``.

        Raises:
            NotFoundError: There is no manifest (run the generator first).
            ConfigError: The manifest is not one this code understands.
        """
        path = Path(out_dir) / MANIFEST_NAME
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise NotFoundError(f"no demo manifest at {path}; generate the demo first") from exc
        except (OSError, ValueError) as exc:
            raise ConfigError(f"unreadable demo manifest {path}: {exc}") from exc
        if raw.get("manifest_version") != MANIFEST_VERSION:
            raise ConfigError(f"demo manifest {path} has an unknown version; regenerate it")
        advertisers = tuple(
            DemoAdvertiser(
                name=a["name"],
                slug=a["slug"],
                sitemap_path=a["sitemap_path"],
                host_folder=a["host_folder"],
                color_from_feed=a["color_from_feed"],
                vehicles=tuple(
                    DemoVehicle(
                        page_path=v["page_path"],
                        title=v["title"],
                        feed_color=v["feed_color"],
                        images=tuple(i["path"] for i in v["images"]),
                    )
                    for v in a["vehicles"]
                ),
            )
            for a in raw["advertisers"]
        )
        images = {
            p: DemoImage(path=p, **{**d, "advertisers": tuple(d["advertisers"])})
            for p, d in raw["images"].items()
        }
        return cls(Path(out_dir), raw["seed"], advertisers, images)

    def advertiser(self, slug: str) -> DemoAdvertiser:
        """The advertiser called ``slug``.

        Raises:
            NotFoundError: No such advertiser.
        """
        for adv in self.advertisers:
            if adv.slug == slug:
                return adv
        raise NotFoundError(f"no demo advertiser {slug!r}")

    def image(self, path_or_url: str) -> DemoImage:
        """The image at a path or a full URL (its query string is ignored).

        Raises:
            NotFoundError: The path is not a demo image.
        """
        path = urlsplit(path_or_url).path or path_or_url
        try:
            return self.images[path]
        except KeyError:
            raise NotFoundError(f"{path_or_url!r} is not a demo image") from None

    def ground_truth(self, path_or_url: str) -> tuple[str | None, str | None]:
        """``(image_type, color)`` of the image; ``(None, None)`` for files that are not pictures.

        Raises:
            NotFoundError: The path is not a demo image.
        """
        img = self.image(path_or_url)
        return img.image_type, img.color

    def file_path(self, path: str) -> Path:
        """Where the file served at URL path ``path`` lives on disk."""
        return self.root / path.lstrip("/")

    def vehicle_count(self) -> int:
        """How many vehicle pages all sitemaps list together."""
        return sum(len(a.vehicles) for a in self.advertisers)


# --------------------------------------------------------------------------------------------------
# the plan: what to draw, decided before drawing anything


@dataclass(frozen=True)
class _AdvertiserSpec:
    name: str
    slug: str
    folder: str
    vehicles: int  # at scale 1.0
    modes: dict[str, float]  # vehicle photo mode -> weight
    shapes: dict[str, float]
    color_from_feed: bool = False


_ADVERTISERS = (
    _AdvertiserSpec(
        "Sunrise Motors",
        "sunrise-motors",
        "sunrise",
        108,
        {"dealer": 0.75, "stock": 0.05, "placeholder": 0.12, "mixed": 0.08},
        {"sedan": 3, "suv": 3, "hatchback": 2, "pickup": 1, "coupe": 1, "wagon": 1},
    ),
    _AdvertiserSpec(
        "Lakeside Auto",
        "lakeside-auto",
        "shared-cdn",
        88,
        {"dealer": 0.42, "stock": 0.32, "placeholder": 0.18, "mixed": 0.08},
        {"sedan": 3, "suv": 3, "hatchback": 2, "pickup": 1, "coupe": 1, "wagon": 1},
    ),
    _AdvertiserSpec(
        "Metro Car Center",
        "metro-car-center",
        "shared-cdn",
        76,
        {"dealer": 0.42, "stock": 0.32, "placeholder": 0.18, "mixed": 0.08},
        {"sedan": 4, "suv": 2, "hatchback": 3, "pickup": 1, "coupe": 1, "wagon": 1},
    ),
    _AdvertiserSpec(
        "Valley Trucks",
        "valley-trucks",
        "valley",
        90,
        {"dealer": 0.42, "stock": 0.32, "placeholder": 0.18, "mixed": 0.08},
        {"pickup": 6, "suv": 4},
        color_from_feed=True,
    ),
    _AdvertiserSpec(
        "Harbor Autos",
        "harbor-autos",
        "harbor",
        96,
        {"dealer": 0.12, "stock": 0.68, "placeholder": 0.15, "mixed": 0.05},
        {"sedan": 3, "suv": 3, "hatchback": 2, "pickup": 1, "coupe": 1, "wagon": 1},
    ),
    _AdvertiserSpec(
        "Summit Auto Group",
        "summit-auto-group",
        "summit",
        86,
        {"dealer": 0.42, "stock": 0.32, "placeholder": 0.18, "mixed": 0.08},
        {"sedan": 3, "suv": 3, "hatchback": 2, "pickup": 1, "coupe": 1, "wagon": 1},
    ),
)

# Flattened real-world shares: whites, blacks, grays and silvers lead, but every color is common
# enough to train and evaluate on.
_COLOR_WEIGHTS = {
    "Black": 14,
    "White": 14,
    "Silver": 11,
    "Gray": 11,
    "Red": 9,
    "Blue": 9,
    "Green": 5,
    "Brown": 5,
    "Beige": 5,
    "Gold": 4,
    "Orange": 4,
    "Yellow": 4,
    "Purple": 4,
}
assert tuple(_COLOR_WEIGHTS) == COLORS

_MODELS: dict[str, tuple[str, ...]] = {
    "sedan": (
        "Honda Civic", "Honda Accord", "Toyota Camry", "Toyota Corolla", "Nissan Altima",
        "Hyundai Elantra", "Hyundai Sonata", "Kia K5", "Chevrolet Malibu", "Mazda Mazda3",
        "Subaru Legacy", "BMW 3 Series", "Audi A4", "Mercedes-Benz C-Class",
    ),
    "coupe": (
        "Ford Mustang", "Chevrolet Camaro", "BMW 4 Series", "Toyota GR86", "Nissan Z",
        "Subaru BRZ",
    ),
    "hatchback": (
        "Volkswagen Golf", "Mazda Mazda3 Hatchback", "Honda Fit", "Toyota Corolla Hatchback",
        "Kia Rio 5-Door", "Chevrolet Bolt EV", "Hyundai Veloster",
    ),
    "wagon": (
        "Subaru Outback", "Volvo V60", "Volkswagen Golf SportWagen", "Audi A4 allroad",
        "Mercedes-Benz E-Class Wagon",
    ),
    "suv": (
        "Toyota RAV4", "Honda CR-V", "Ford Explorer", "Jeep Grand Cherokee", "Chevrolet Tahoe",
        "Subaru Forester", "Hyundai Tucson", "Kia Sorento", "Nissan Rogue", "Mazda CX-5",
        "Mercedes-Benz GLC 300 4MATIC®",
    ),
    "pickup": (
        "Ford F-150", "Chevrolet Silverado 1500", "Ram 1500", "Toyota Tacoma", "Toyota Tundra",
        "GMC Sierra 1500", "Nissan Frontier", "Honda Ridgeline",
    ),
}  # fmt: skip
_TRIMS = ("LX", "EX", "EX-L", "SE", "XLE", "LE", "Sport", "Limited", "Touring", "Premium", "SEL",
          "S", "SV", "SL", "Base")  # fmt: skip
_TRUCK_TRIMS = ("XLT", "Lariat", "LT", "Big Horn", "TRD Off-Road", "SLT", "Laramie", "SR5")
_TRUCK_EXTRAS = ("", "", " 4x4", " Crew Cab", " 4x4 & Tow Package", " Crew Cab 4WD")

_SIZES = (((480, 360), 70), ((640, 480), 12), ((400, 300), 12), ((320, 240), 6))
_TINY_SIZES = ((60, 45), (80, 60), (100, 75), (64, 48))


@dataclass
class _ImageJob:
    """Everything needed to produce one file, independent of any other job."""

    path: str
    image_type: str  # what is drawn; broken files record no truth in the manifest
    color: str | None
    shape: str | None
    size: tuple[int, int]
    fmt: str  # JPEG | PNG | WEBP | special writers below
    quality: int
    kind: str
    detail: str | None
    content_type: str
    seed: str
    duplicate_of: _ImageJob | None = None
    crop: tuple[float, float, float, float] | None = None  # near-duplicate crop fractions
    advertisers: list[str] = field(default_factory=list)


def _weighted(rng: random.Random, weights: dict[str, float] | dict[str, int]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _color_deck(rng: random.Random) -> Iterator[str]:
    """Vehicle colors in exactly the weighted shares, shuffled deck after deck.

    Independent draws leave the rarer colors short in some seeds; a deck guarantees each color
    its share of vehicles.
    """
    deck = [c for c, n in _COLOR_WEIGHTS.items() for _ in range(n)]
    while True:
        rng.shuffle(deck)
        yield from deck


def _pick_size(rng: random.Random) -> tuple[int, int]:
    return rng.choices([s for s, _ in _SIZES], weights=[w for _, w in _SIZES])[0]


def _title(rng: random.Random, shape: str) -> str:
    year = rng.randrange(2012, 2025)
    model = rng.choice(_MODELS[shape])
    if shape == "pickup":
        return f"{year} {model} {rng.choice(_TRUCK_TRIMS)}{rng.choice(_TRUCK_EXTRAS)}"
    return f"{year} {model} {rng.choice(_TRIMS)}"


def _photo_types(rng: random.Random, mode: str) -> list[str]:
    """The Image Types of one vehicle page's photos, 1 to 6 of them."""
    if mode == "dealer":
        types = ["Dealer"] * rng.choice((1, 2, 3, 3, 4, 4, 5, 6))
    elif mode == "stock":
        types = ["Stock"] * rng.choice((1, 2, 2, 3, 3, 4))
    elif mode == "placeholder":
        return ["Placeholder"] * rng.choice((1, 1, 2))
    else:
        types = ["Dealer"] * rng.randrange(1, 4) + ["Stock"]
    # Dealers often end a gallery with a "more photos coming soon" card.
    if len(types) < 6 and rng.random() < 0.3:
        types.append("Placeholder")
    return types


@dataclass
class _Plan:
    seed: int
    advertisers: list[dict[str, Any]]
    jobs: dict[str, _ImageJob]


def _plan(seed: int, scale: float) -> _Plan:
    """Decide every advertiser, vehicle and image without drawing anything."""
    rng = random.Random(f"tagdesk-demo:{seed}")
    jobs: dict[str, _ImageJob] = {}
    advertisers: list[dict[str, Any]] = []
    used_ids: set[int] = set()

    def new_job(path: str, image_type: str, color: str | None, shape: str, slug: str) -> _ImageJob:
        size = _pick_size(rng)
        job = _ImageJob(
            path=path,
            image_type=image_type,
            color=color if image_type != "Placeholder" else None,
            shape=shape,
            size=size,
            fmt="JPEG",
            quality=rng.choice((80, 85, 85, 90)),
            kind="ok",
            detail=None,
            content_type="image/jpeg",
            seed=f"{seed}:{path}",
            advertisers=[slug],
        )
        jobs[path] = job
        return job

    def new_id() -> int:
        while True:
            vid = rng.randrange(10000, 99999)
            if vid not in used_ids:
                used_ids.add(vid)
                return vid

    colors = _color_deck(rng)
    by_slug: dict[str, dict[str, Any]] = {}
    for spec in _ADVERTISERS:
        n_vehicles = max(4, round(spec.vehicles * scale))
        vehicles: list[dict[str, Any]] = []
        for _ in range(n_vehicles):
            vid = new_id()
            shape = _weighted(rng, spec.shapes)
            color = next(colors)
            types = _photo_types(rng, _weighted(rng, spec.modes))
            paths = []
            for n, image_type in enumerate(types, start=1):
                path = f"/cdn/{spec.folder}/{vid}-{n}.jpg"
                new_job(path, image_type, color, shape, spec.slug)
                paths.append(path)
            vehicles.append(
                {
                    "page_path": f"/{spec.slug}/vehicles/{vid}",
                    "title": _title(rng, shape),
                    "feed_color": color if spec.color_from_feed else None,
                    "images": paths,
                    "_shape": shape,
                    "_color": color,
                }
            )
        adv: dict[str, Any] = {
            "name": spec.name,
            "slug": spec.slug,
            "sitemap_path": f"/sitemaps/{spec.slug}.xml",
            "host_folder": spec.folder,
            "color_from_feed": spec.color_from_feed,
            "vehicles": vehicles,
        }
        advertisers.append(adv)
        by_slug[spec.slug] = adv

    _plant_special_cases(rng, seed, scale, by_slug, jobs, new_job, new_id)

    # Which advertisers list each image (shared inventory lists one path under two).
    for job in jobs.values():
        job.advertisers = []
    for adv in advertisers:
        for veh in adv["vehicles"]:
            for p in veh["images"]:
                if adv["slug"] not in jobs[p].advertisers:
                    jobs[p].advertisers.append(adv["slug"])
    return _Plan(seed, advertisers, jobs)


def _plant_special_cases(
    rng: random.Random,
    seed: int,
    scale: float,
    by_slug: dict[str, dict[str, Any]],
    jobs: dict[str, _ImageJob],
    new_job: Callable[[str, str, str | None, str, str], _ImageJob],
    new_id: Callable[[], int],
) -> None:
    """Add the awkward cases; each exists at any ``scale`` so small test demos cover them all."""
    sunrise = by_slug["sunrise-motors"]
    # A title with markup, which the app must show as text.
    sunrise["vehicles"][min(2, len(sunrise["vehicles"]) - 1)]["title"] = HTML_TITLE

    # One "coming soon" card reused by several vehicles, as dealer sites do.
    shared_ph = "/cdn/sunrise/coming-soon.jpg"
    job = new_job(shared_ph, "Placeholder", None, "sedan", "sunrise-motors")
    job.size = (480, 360)
    job.detail = "shared_placeholder"
    for _ in range(max(2, round(5 * scale))):
        vid = new_id()
        shape = rng.choice(("sedan", "suv", "hatchback"))
        sunrise["vehicles"].append(
            {
                "page_path": f"/sunrise-motors/vehicles/{vid}",
                "title": _title(rng, shape),
                "feed_color": None,
                "images": [shared_ph],
                "_shape": shape,
                "_color": None,
            }
        )

    # Lakeside and Metro syndicate some of the same cars: Metro's pages list Lakeside's URLs.
    lakeside, metro = by_slug["lakeside-auto"], by_slug["metro-car-center"]
    candidates = [v for v in lakeside["vehicles"] if len(v["images"]) >= 2]
    n_shared = min(len(candidates), max(2, round(16 * scale)))
    for veh in rng.sample(candidates, n_shared):
        vid = new_id()
        for p in veh["images"]:
            jobs[p].detail = "shared_inventory"
        metro["vehicles"].append(
            {
                "page_path": f"/metro-car-center/vehicles/{vid}",
                "title": veh["title"],
                "feed_color": None,
                "images": list(veh["images"]),
                "_shape": veh["_shape"],
                "_color": veh["_color"],
            }
        )
    rng.shuffle(metro["vehicles"])

    # Summit re-lists some Sunrise cars with re-encoded, resized, slightly cropped copies.
    summit = by_slug["summit-auto-group"]
    originals = [v for v in sunrise["vehicles"] if v["_color"] is not None]
    n_dup = min(len(originals), max(2, round(12 * scale)))
    for veh in rng.sample(originals, n_dup):
        vid = new_id()
        paths = []
        for n, src in enumerate(veh["images"], start=1):
            orig = jobs[src]
            path = f"/cdn/summit/{vid}-{n}.jpg"
            dup = new_job(path, orig.image_type, orig.color, orig.shape or "", "")
            dup.kind = "near_duplicate"
            dup.duplicate_of = orig
            w, h = orig.size
            dup.size = rng.choice(((w * 5 // 6, h * 5 // 6), (w * 4 // 3, h * 4 // 3), (w, h)))
            dup.quality = rng.choice((55, 65, 72))
            c = [rng.uniform(0.0, 0.05) for _ in range(4)]
            dup.crop = (c[0], c[1], c[2], c[3])
            paths.append(path)
        summit["vehicles"].append(
            {
                "page_path": f"/summit-auto-group/vehicles/{vid}",
                "title": veh["title"],
                "feed_color": None,
                "images": paths,
                "_shape": veh["_shape"],
                "_color": veh["_color"],
            }
        )
    rng.shuffle(summit["vehicles"])
    # A few WebP files, which a modern CDN serves.
    for veh in summit["vehicles"][: max(2, round(8 * scale))]:
        for n, p in enumerate(veh["images"]):
            job = jobs[p]
            if job.kind != "ok":
                continue
            del jobs[p]
            job.path = p.rsplit(".", 1)[0] + ".webp"
            job.fmt, job.content_type, job.detail = "WEBP", "image/webp", "webp"
            jobs[job.path] = job
            veh["images"][n] = job.path

    # Harbor: tiny images and broken or odd files, each added to a vehicle with room for it.
    harbor = by_slug["harbor-autos"]
    roomy = [v for v in harbor["vehicles"] if len(v["images"]) < 6 and v["_color"] is not None]
    rng.shuffle(roomy)
    slots = iter(roomy * 3)

    def add(name: str, image_type: str, veh: dict[str, Any]) -> _ImageJob:
        vid = veh["page_path"].rsplit("/", 1)[1]
        path = f"/cdn/harbor/{vid}-{name}"
        job = new_job(path, image_type, veh["_color"], veh["_shape"], "harbor-autos")
        veh["images"].append(path)
        return job

    def next_slot() -> dict[str, Any]:
        veh = next(slots)
        while len(veh["images"]) >= 6:
            veh = next(slots)
        return veh

    for i in range(max(4, round(14 * scale))):
        job = add(f"small{i}.jpg", rng.choice(("Stock", "Stock", "Dealer")), next_slot())
        job.size = _TINY_SIZES[i % len(_TINY_SIZES)]
        job.kind = "too_small"
    specials = [
        ("broken.jpg", "truncated_jpeg", "image/jpeg"),
        ("partial.jpg", "truncated_jpeg", "image/jpeg"),
        ("empty.jpg", "empty", "image/jpeg"),
        ("error.jpg", "html_page", "image/jpeg"),  # the lying CDN: HTML labelled as a JPEG
        ("gone.jpg", "html_page", "text/html; charset=utf-8"),
        ("logo.svg", "svg", "image/svg+xml"),
        ("palette.png", "palette_png", "image/png"),
        ("indexed.png", "palette_png", "image/png"),
        ("print.jpg", "cmyk_jpeg", "image/jpeg"),
        ("press.jpg", "cmyk_jpeg", "image/jpeg"),
    ]
    for name, detail, content_type in specials:
        job = add(name, "Stock", next_slot())
        job.detail, job.content_type = detail, content_type
        if detail in ("palette_png", "cmyk_jpeg"):
            continue  # valid pictures with their true type and color
        # Drawn like any picture (a truncated JPEG starts as one); the manifest records no truth.
        job.kind = "broken"


# --------------------------------------------------------------------------------------------------
# drawing


_HTML_PAGE = b"""<!DOCTYPE html>
<html><head><title>404 Not Found</title></head>
<body><h1>Not Found</h1><p>The requested image was not found on this server.</p></body></html>
"""

_SVG = b"""<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="480" height="360" viewBox="0 0 480 360">
  <rect width="480" height="360" fill="#e8e8e8"/>
  <text x="240" y="190" font-size="28" text-anchor="middle" fill="#777">Harbor Autos</text>
</svg>
"""


def _draw_job(job: _ImageJob) -> Image.Image:
    rng = random.Random(job.seed)
    return render(job.image_type, job.color, rng, job.size, shape=job.shape or None)


def _encode(img: Image.Image, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    if fmt == "PNG":
        img.save(buf, format="PNG", optimize=False)
    elif fmt == "WEBP":
        img.save(buf, format="WEBP", quality=quality, method=2)
    else:
        img.save(buf, format=fmt, quality=quality)
    return buf.getvalue()


def _produce(job: _ImageJob) -> tuple[bytes, int | None, int | None]:
    """The file's bytes and its pixel size (``None`` when it is not a decodable picture)."""
    if job.detail == "empty":
        return b"", None, None
    if job.detail == "html_page":
        return _HTML_PAGE, None, None
    if job.detail == "svg":
        return _SVG, None, None
    if job.duplicate_of is not None:
        src = _draw_job(job.duplicate_of)
        w, h = src.size
        left, top, right, bottom = job.crop or (0.0, 0.0, 0.0, 0.0)
        box = (round(w * left), round(h * top), round(w * (1 - right)), round(h * (1 - bottom)))
        img = src.crop(box).resize(job.size, Image.Resampling.BILINEAR)
    else:
        img = _draw_job(job)
    if job.detail == "truncated_jpeg":
        data = _encode(img, "JPEG", job.quality)
        return data[: len(data) * 2 // 5], None, None
    if job.detail == "palette_png":
        pal = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
        return _encode(pal, "PNG", 0), img.width, img.height
    if job.detail == "cmyk_jpeg":
        return _encode(img.convert("CMYK"), "JPEG", job.quality), img.width, img.height
    return _encode(img, job.fmt, job.quality), img.width, img.height


def _produce_and_write(args: tuple[_ImageJob, str]) -> tuple[str, int | None, int | None, int, str]:
    job, root = args
    data, w, h = _produce(job)
    target = Path(root) / job.path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return job.path, w, h, len(data), hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------------
# public entry point


def generate_demo(
    out_dir: Path,
    seed: int = 7,
    progress: Callable[[int, int], None] | None = None,
    *,
    scale: float = 1.0,
    workers: int | None = None,
) -> DemoInventory:
    """Generate the demo inventory into ``out_dir`` and return it.

    Writes ``out_dir/cdn/<host folder>/...`` and ``out_dir/manifest.json``. A previous demo in
    ``out_dir`` is replaced.

    Args:
        out_dir: The demo directory (usually ``Settings.demo_dir``).
        seed: Same seed, same files, byte for byte.
        progress: Called as ``progress(done, total)`` after each image (e.g. to drive tqdm).
        scale: Fraction of the full vehicle counts; every special case is still planted, so
            ``scale=0.1`` gives a small but complete demo for tests.
        workers: Processes to draw with; ``None`` means up to 2 for a full demo, 1 for small
            ones (a pool costs more than it saves on a few hundred images).

    Returns:
        The inventory, as :meth:`DemoInventory.load` would read it back.

    Raises:
        ConfigError: ``out_dir`` holds a ``cdn`` folder that is not from a previous demo, or
            ``scale`` is not positive.
    """
    if scale <= 0:
        raise ConfigError(f"scale must be positive, got {scale}")
    out_dir = Path(out_dir)
    cdn_dir = out_dir / "cdn"
    manifest_path = out_dir / MANIFEST_NAME
    if cdn_dir.exists():
        # Only a folder we generated may be wiped: never delete someone else's files.
        if not manifest_path.exists():
            raise ConfigError(f"{cdn_dir} exists but is not a generated demo; refusing to replace")
        shutil.rmtree(cdn_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    plan = _plan(seed, scale)
    jobs = list(plan.jobs.values())
    total = len(jobs)
    if workers is None:
        workers = min(2, multiprocessing.cpu_count()) if total > 400 else 1
    results: dict[str, tuple[int | None, int | None, int, str]] = {}
    root = str(out_dir)
    for done, (path, w, h, n, digest) in enumerate(_run(jobs, root, workers), start=1):
        results[path] = (w, h, n, digest)
        if progress is not None:
            progress(done, total)

    manifest = _manifest(plan, results)
    tmp = manifest_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(manifest_path)
    return DemoInventory.load(out_dir)


def _run(
    jobs: list[_ImageJob], root: str, workers: int
) -> Iterator[tuple[str, int | None, int | None, int, str]]:
    args = [(job, root) for job in jobs]
    if workers <= 1:
        yield from map(_produce_and_write, args)
        return
    # An executor, not a Pool: a worker that dies raises BrokenProcessPool instead of hanging.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context()) as pool:
        yield from pool.map(_produce_and_write, args, chunksize=16)


def _manifest(
    plan: _Plan, results: dict[str, tuple[int | None, int | None, int, str]]
) -> dict[str, Any]:
    images: dict[str, Any] = {}
    for i, path in enumerate(sorted(plan.jobs)):
        job = plan.jobs[path]
        w, h, n, digest = results[path]
        # Spread first publication over a month so Last-Modified varies between files.
        published = PUBLISHED_AT + timedelta(minutes=(i * 7919) % (30 * 24 * 60))
        broken = job.kind == "broken"
        images[path] = {
            "image_type": None if broken else job.image_type,
            "color": None if broken else job.color,
            "kind": job.kind,
            "detail": job.detail,
            "content_type": job.content_type,
            "width": w,
            "height": h,
            "size_bytes": n,
            "sha256": digest,
            "published_at": published.isoformat(),
            "duplicate_of": job.duplicate_of.path if job.duplicate_of else None,
            "advertisers": job.advertisers,
        }
    advertisers = [
        {
            **{k: v for k, v in adv.items() if k != "vehicles"},
            "vehicles": [
                {
                    "page_path": veh["page_path"],
                    "title": veh["title"],
                    "feed_color": veh["feed_color"],
                    "images": [{"path": p} for p in veh["images"]],
                }
                for veh in adv["vehicles"]
            ],
        }
        for adv in plan.advertisers
    ]
    return {
        "manifest_version": MANIFEST_VERSION,
        "seed": plan.seed,
        "advertisers": advertisers,
        "images": images,
    }
