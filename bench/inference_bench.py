"""Batched vs one-at-a-time inference on the same decoded demo images, side by side.

* Image Type (the production model through :class:`tagging.ml.inference.TypeClassifier`): batches of
  64, as the ML server receives them from a scrape, vs one ``predict([image])`` call per image.
  Run with 1 and 2 torch threads (the ML server uses torch's default, one per core). The
  batched time is also split into preprocessing (PIL resize + tensor) and the forward pass.
* Color (the embedded model, :class:`tagging.ml.color.EmbeddedColorModel`): ``predict`` on 64
  images vs ``predict([image])`` per image.

The images are every decodable demo image, decoded as the ML server decodes them (JPEG draft
mode). Each comparison alternates its two variants round by round after a warm-up.

Usage::

    .venv/bin/python bench/inference_bench.py [--quick] [--rounds N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import common
import torch
from PIL import Image

from tagging.ingest.images import decode_image
from tagging.ml.color import EmbeddedColorModel
from tagging.ml.inference import TypeClassifier
from tagging.ml.transforms import preprocess
from tagging.server.pipeline import PipelineConfig

BATCH = 64


@dataclass
class Pair:
    """One model, one thread count: batched vs single, seconds per round."""

    model: str
    threads: int
    batched: list[float]
    single: list[float]
    background: float
    preprocess: float = 0.0
    """Best round's seconds spent preprocessing (batched Image Type only)."""

    def rate(self, seconds: list[float], count: int) -> float:
        return count / min(seconds)


def decoded_images(data: common.BenchData, limit: int | None) -> list[Image.Image]:
    draft = PipelineConfig().draft_size
    images = []
    for path in sorted(data.inventory.images):
        try:
            images.append(
                decode_image(data.inventory.file_path(path).read_bytes(), draft_size=draft)
            )
        except Exception:  # noqa: S112 - the demo's broken files: not inference's business
            continue
        if limit is not None and len(images) >= limit:
            break
    return [d.image for d in images]


def batched(predict: Callable[[Sequence[Image.Image]], object], images: list[Image.Image]) -> None:
    for start in range(0, len(images), BATCH):
        predict(images[start : start + BATCH])


def one_by_one(
    predict: Callable[[Sequence[Image.Image]], object], images: list[Image.Image]
) -> None:
    for image in images:
        predict([image])


def timed(function: Callable[[], object]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def compare(
    label: str,
    threads: int,
    predict: Callable[[Sequence[Image.Image]], object],
    images: list[Image.Image],
    rounds: int,
    max_wait: float,
) -> Pair:
    batched(predict, images)  # warm-up of both paths
    one_by_one(predict, images[:BATCH])
    common.wait_for_quiet(max_wait)
    runs: dict[str, list[float]] = {"batched": [], "single": []}
    with common.LoadMeter() as load:
        for r in common.tqdm(range(rounds), desc=f"{label}, {threads} thread(s)", leave=False):
            order = ["batched", "single"] if r % 2 == 0 else ["single", "batched"]
            for variant in order:
                run = batched if variant == "batched" else one_by_one
                runs[variant].append(timed(lambda run=run: run(predict, images)))
    return Pair(label, threads, runs["batched"], runs["single"], load.background)


def preprocess_seconds(classifier: TypeClassifier, images: list[Image.Image], rounds: int) -> float:
    size = classifier.metadata.input_size
    times = []
    for _ in range(max(1, rounds)):
        started = time.perf_counter()
        for start in range(0, len(images), BATCH):
            preprocess(images[start : start + BATCH], size)
        times.append(time.perf_counter() - started)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="512 images, 1 round")
    parser.add_argument("--rounds", type=int, help="measured rounds per variant (default 3)")
    common.add_common_arguments(parser)
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 3)

    data = common.prepare(args.work)
    images = decoded_images(data, 512 if args.quick else None)
    count = len(images)
    classifier = TypeClassifier.load(data.models_dir)
    color = EmbeddedColorModel()
    default_threads = torch.get_num_threads()
    print(f"machine: {common.machine()}")
    print(
        f"model {classifier.version} (input {classifier.metadata.input_size}px); {count} decoded "
        f"demo images; batch {BATCH}; {rounds} round(s), best reported; torch default "
        f"{default_threads} threads",
        flush=True,
    )

    # Same answers either way (eval mode: BatchNorm uses its running statistics).
    one = [p.label for image in images[:BATCH] for p in classifier.predict([image])]
    many = [p.label for p in classifier.predict(images[:BATCH])]
    agree = sum(a == b for a, b in zip(one, many, strict=True))

    pairs: list[Pair] = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            pair = compare("Image Type", threads, classifier.predict, images, rounds, args.max_wait)
            pair.preprocess = preprocess_seconds(classifier, images, rounds)
            pairs.append(pair)
    finally:
        torch.set_num_threads(default_threads)
    pairs.append(compare("color (embedded)", 1, color.predict, images, rounds, args.max_wait))

    rows = []
    for pair in pairs:
        b, s = pair.rate(pair.batched, count), pair.rate(pair.single, count)
        rows.append(
            [
                pair.model,
                pair.threads,
                1000 / b,
                b,
                1000 / s,
                s,
                f"{b / s:.1f}x",
                f"{statistics.median(pair.single) / statistics.median(pair.batched):.1f}x",
                pair.background,
            ]
        )
    common.print_table(
        f"Batched ({BATCH}) vs one-at-a-time inference · {count} images · {common.machine()}",
        [
            "model",
            "threads",
            "batched ms/img",
            "batched img/s",
            "single ms/img",
            "single img/s",
            "speed-up (best)",
            "(median)",
            "background cores",
        ],
        rows,
    )
    split = []
    for pair in pairs:
        if pair.model != "Image Type":
            continue
        total = min(pair.batched)
        forward = max(0.0, total - pair.preprocess)
        split.append(
            [
                pair.threads,
                1000 * pair.preprocess / count,
                1000 * forward / count,
                f"{pair.preprocess / total:.0%}",
            ]
        )
    common.print_table(
        "Batched Image Type: where the time goes (ms per image)",
        ["threads", "preprocess", "forward + softmax + labels", "preprocess share"],
        split,
    )
    print(f"\nbatched and one-at-a-time labels agree on {agree}/{len(one)} images")
    print(
        "color (embedded) is a per-image NumPy vote: its predict() loops over the images, so "
        "batching cannot help it; threads do not apply (NumPy on small arrays)."
    )
    return 0


if __name__ == "__main__":
    common.run_main(main)
