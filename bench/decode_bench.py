"""JPEG draft-mode decode vs full decode of the demo images, side by side in one process.

Both modes go through :func:`tagging.ingest.images.decode_image`, so EXIF transposition and RGB
conversion are included and only the draft differs: ``draft`` is the ML server's setting
(``PipelineConfig.draft_size``, libjpeg scales by 1/2, 1/4 or 1/8 while decoding), ``full`` asks
for a draft larger than any image, which leaves the scale at 1. The same JPEG bytes (every demo
JPEG that decodes, read into memory first) are decoded by one thread, two threads and two
processes; the two modes alternate round by round, after a warm-up pass of each.

It also times the rest of the ML server's per-image work on the decoded image (what
``ClassificationPipeline._decode`` does after decoding): SHA-256 of the bytes, perceptual hash,
thumbnail, so the decode can be put in proportion.

Usage::

    .venv/bin/python bench/decode_bench.py [--quick] [--rounds N]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass

import common
from PIL import Image

from tagging.ingest.images import content_sha256, decode_image, make_thumbnail, perceptual_hash
from tagging.server.pipeline import PipelineConfig

DRAFT_SIZE = PipelineConfig().draft_size
FULL_SIZE = (1 << 16, 1 << 16)
"""A draft request larger than any image: Pillow keeps the scale at 1 (a full decode)."""
MODES = {"draft": DRAFT_SIZE, "full": FULL_SIZE}
CHUNK = 16
STAGE_IMAGES = 400
"""Images the per-step table uses (it keeps them decoded: full-size ones take 0.5 MB each)."""

_images: list[bytes] = []
"""The JPEG bytes; set in this process and, by fork, in the pool's worker processes."""


def decode_range(mode: str, start: int, stop: int) -> int:
    size = MODES[mode]
    for data in _images[start:stop]:
        decode_image(data, draft_size=size)
    return stop - start


def load_jpegs(data: common.BenchData, limit: int | None) -> list[bytes]:
    """Every demo JPEG that decodes in both modes (broken ones are another benchmark's topic)."""
    out = []
    for path in sorted(data.inventory.images):
        body = data.inventory.file_path(path).read_bytes()
        if body[:2] != b"\xff\xd8":
            continue
        try:
            decode_image(body, draft_size=DRAFT_SIZE)
        except Exception:  # noqa: S112 - a broken JPEG of the demo: not what is measured here
            continue
        out.append(body)
        if limit is not None and len(out) >= limit:
            break
    return out


@dataclass
class Measurement:
    mode: str
    runner: str
    seconds: list[float]
    background: float
    """Cores other processes used meanwhile, on average."""

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def run_pass(executor: Executor | None, mode: str, count: int) -> float:
    """Decode every image once in ``mode``; wall seconds."""
    started = time.perf_counter()
    if executor is None:
        decode_range(mode, 0, count)
    else:
        starts = range(0, count, CHUNK)
        done = sum(
            executor.map(
                decode_range, [mode] * len(starts), starts, [min(s + CHUNK, count) for s in starts]
            )
        )
        assert done == count
    return time.perf_counter() - started


def measure(rounds: int, count: int, max_wait: float) -> list[Measurement]:
    runners: list[tuple[str, Callable[[], Executor | None]]] = [
        ("1 thread", lambda: None),
        ("2 threads", lambda: ThreadPoolExecutor(2)),
        ("2 processes", lambda: ProcessPoolExecutor(2)),
    ]
    results: list[Measurement] = []
    for name, make in runners:
        executor = make()
        try:
            for mode in MODES:  # warm-up (and, for processes, the fork) before measuring
                run_pass(executor, mode, count)
            per_mode: dict[str, list[float]] = {mode: [] for mode in MODES}
            common.wait_for_quiet(max_wait)
            with common.LoadMeter() as load:
                for r in common.tqdm(range(rounds), desc=f"decode, {name}", leave=False):
                    order = list(MODES) if r % 2 == 0 else list(reversed(MODES))
                    for mode in order:
                        per_mode[mode].append(run_pass(executor, mode, count))
        finally:
            if executor is not None:
                executor.shutdown()
        results += [Measurement(mode, name, per_mode[mode], load.background) for mode in MODES]
    return results


def per_image_stages(images: Sequence[bytes], rounds: int) -> list[list[object]]:
    """Milliseconds per image of each step of the ML server's ``_decode``, draft vs full."""
    rows: list[list[object]] = []
    decoded = {
        mode: [decode_image(b, draft_size=size).image for b in images]
        for mode, size in MODES.items()
    }
    steps: list[tuple[str, Callable[[str], None]]] = [
        ("decode", lambda mode: decode_range(mode, 0, len(images))),  # images is _images[:n]
        ("sha256 of the bytes", lambda mode: [content_sha256(b) for b in images]),
        ("perceptual hash", lambda mode: [perceptual_hash(i) for i in decoded[mode]]),
        ("thumbnail (240x180 JPEG)", lambda mode: [make_thumbnail(i) for i in decoded[mode]]),
    ]
    totals = dict.fromkeys(MODES, 0.0)
    for name, step in steps:
        row: list[object] = [name]
        for mode in MODES:
            step(mode)  # warm-up
            times = []
            for _ in range(rounds):
                started = time.perf_counter()
                step(mode)
                times.append(time.perf_counter() - started)
            ms = 1000 * min(times) / len(images)
            totals[mode] += ms
            row.append(ms)
        rows.append(row)
    rows.append(["all of _decode", *totals.values()])
    for row in rows:
        row.append(f"{row[2] / row[1]:.1f}x" if row[1] else "")  # type: ignore[operator]
    sizes = {mode: decoded[mode][0].size for mode in MODES}
    print(f"first image decodes to {sizes['draft']} (draft) vs {sizes['full']} (full)")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="300 images, 2 rounds")
    parser.add_argument("--rounds", type=int, help="measured passes per mode (default 5)")
    common.add_common_arguments(parser)
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 5)

    data = common.prepare(args.work)
    global _images
    _images = load_jpegs(data, 300 if args.quick else None)
    count = len(_images)
    sizes = Counter(Image.open(io.BytesIO(b)).size for b in _images)
    ((common_size, common_count),) = sizes.most_common(1)
    print(f"machine: {common.machine()}")
    print(
        f"{count} demo JPEGs ({sum(map(len, _images)) / count / 1024:.0f} KiB on average, "
        f"{common_count} of them {common_size[0]}x{common_size[1]}), draft_size={DRAFT_SIZE}, "
        f"{rounds} rounds per mode, best round reported",
        flush=True,
    )

    results = measure(rounds, count, args.max_wait)
    common.wait_for_quiet(args.max_wait)
    with common.LoadMeter() as stage_load:
        stage_rows = per_image_stages(_images[:STAGE_IMAGES], rounds)

    by = {(m.runner, m.mode): m for m in results}
    rows = []
    for runner in dict.fromkeys(m.runner for m in results):
        draft, full = by[(runner, "draft")], by[(runner, "full")]
        rows.append(
            [
                runner,
                1000 * draft.best / count,
                count / draft.best,
                1000 * full.best / count,
                count / full.best,
                f"{full.best / draft.best:.2f}x",
                f"{full.median / draft.median:.2f}x",
                draft.background,
            ]
        )
    common.print_table(
        f"ML server per-image work after the download, 1 thread, {len(_images[:STAGE_IMAGES])} "
        f"images (ms per image, best round; other load {stage_load.background:.1f} cores)",
        ["step", "draft ms", "full ms", "full/draft"],
        stage_rows,
    )
    common.print_table(
        f"Draft vs full JPEG decode · {count} images · {common.machine()}",
        [
            "runner",
            "draft ms/img",
            "draft img/s",
            "full ms/img",
            "full img/s",
            "speed-up (best)",
            "(median)",
            "background cores",
        ],
        rows,
    )
    print(
        "ms/img is wall time per image: with 2 workers, the pool's throughput. background cores: "
        "CPU other processes used meanwhile."
    )
    return 0


if __name__ == "__main__":
    common.run_main(main)
