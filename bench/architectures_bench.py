"""Training and inference images/s of every candidate architecture, side by side in one run.

Each architecture of :data:`tagging.ml.architectures.ARCHITECTURES` (default widths, 3 classes) is
measured in this one process, at each input size (default 64, the production model's, and 96):

* **training**: full optimizer steps on batches of 64, as :func:`tagging.ml.train.fit` does them:
  ``uint8`` batch → :func:`tagging.ml.transforms.to_model_input` with the training augmentation →
  forward → cross-entropy → backward → AdamW step. Rendering and decoding are left out (they are
  the same for every architecture); the data is random, which costs the same as real images.
* **inference**: forward passes of a ready, normalized batch of 64 in eval mode under
  ``torch.inference_mode`` (:func:`tagging.ml.evaluate.images_per_second`), the ML server's batch
  size. The production small CNN is also measured as served: BatchNorm folded into the
  convolutions (``TypeNet.fused_for_inference``, what ``TypeClassifier`` runs).

Torch runs 1 thread by default, as training does (``TrainConfig.threads``: on a shared 2-core
machine a second thread often makes things slower); ``--threads 2`` measures the ML server's
default. The architectures alternate round by round (the order rotates), each measurement runs
``--seconds`` after a warm-up, and the best round is reported with the median and the load
other processes put on the machine meanwhile.

Usage::

    .venv/bin/python bench/architectures_bench.py [--quick] [--rounds N] [--seconds S]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import common
import torch
from torch import nn
from tqdm import tqdm

from db.vocab import IMAGE_TYPES
from tagging.ml.architectures import ARCHITECTURES, build_architecture
from tagging.ml.evaluate import images_per_second
from tagging.ml.model import TypeNet
from tagging.ml.transforms import Augment, to_model_input

BATCH = 64
SERVED = "small_cnn (fused, as served)"


@dataclass
class Runs:
    """Images/s of one network at one input size, one entry per round."""

    name: str
    input_size: int
    parameters: int
    training: list[float] = field(default_factory=list)
    inference: list[float] = field(default_factory=list)
    background: list[float] = field(default_factory=list)


def training_rate(model: nn.Module, input_size: int, seconds: float, warmup: int = 2) -> float:
    """Images/s of full training steps on random batches of :data:`BATCH` (see the docstring)."""
    generator = torch.Generator().manual_seed(0)
    pool = 4  # a few distinct batches, cycled
    images = torch.randint(
        0, 256, (pool * BATCH, 3, input_size, input_size), dtype=torch.uint8, generator=generator
    )
    labels = torch.randint(0, len(IMAGE_TYPES), (pool * BATCH,), generator=generator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=5e-4)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.05)
    augment = Augment()
    model.train()

    def step(i: int) -> None:
        part = slice((i % pool) * BATCH, (i % pool + 1) * BATCH)
        x = to_model_input(images[part], augment, generator)
        loss = criterion(model(x), labels[part])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for i in range(warmup):
        step(i)
    steps = 0
    started = time.perf_counter()
    while True:
        step(steps)
        steps += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            break
    model.eval()
    return steps * BATCH / elapsed


def networks() -> dict[str, Callable[[], nn.Module]]:
    """Every network measured, built fresh (seeded) for each measurement."""

    def make(name: str) -> Callable[[], nn.Module]:
        def build() -> nn.Module:
            torch.manual_seed(0)
            return build_architecture(name)

        return build

    def served() -> nn.Module:
        torch.manual_seed(0)
        model = build_architecture("small_cnn")
        assert isinstance(model, TypeNet)
        return model.eval().fused_for_inference()

    builders = {name: make(name) for name in ARCHITECTURES}
    builders[SERVED] = served
    return builders


def measure(
    sizes: list[int], rounds: int, seconds: float, max_wait: float
) -> dict[tuple[str, int], Runs]:
    builders = networks()
    results = {
        (name, size): Runs(name, size, sum(p.numel() for p in build().parameters()))
        for name, build in builders.items()
        for size in sizes
    }
    keys = list(results)
    common.wait_for_quiet(max_wait)
    # quiet when stderr is not a terminal (logs, CI)
    bar = tqdm(
        total=rounds * len(keys), desc="measuring", file=sys.stderr, leave=False, disable=None
    )
    for r in range(rounds):
        order = keys[r % len(keys) :] + keys[: r % len(keys)]  # rotate who goes first
        for key in order:
            runs = results[key]
            name, size = key
            with common.LoadMeter() as load:
                if name != SERVED:  # the fused copy must not be trained
                    runs.training.append(training_rate(builders[name](), size, seconds))
                runs.inference.append(images_per_second(builders[name](), size, BATCH, seconds))
            runs.background.append(load.background)
            bar.update()
    bar.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="input 64 only, 1 round of 1 s")
    parser.add_argument("--rounds", type=int, help="measured rounds per network (default 3)")
    parser.add_argument("--seconds", type=float, help="seconds per measurement (default 4)")
    parser.add_argument(
        "--sizes", type=int, nargs="+", help="input sizes in pixels (default 64 96)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    common.add_common_arguments(parser)
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 3)
    seconds = args.seconds or (1.0 if args.quick else 4.0)
    sizes = args.sizes or ([64] if args.quick else [64, 96])

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    print(f"machine: {common.machine()}")
    print(
        f"batch {BATCH}, {len(IMAGE_TYPES)} classes, default widths; {args.threads} torch "
        f"thread(s); {rounds} round(s) of {seconds:g} s per figure, best reported",
        flush=True,
    )
    try:
        results = measure(sizes, rounds, seconds, args.max_wait)
    finally:
        torch.set_num_threads(previous_threads)

    rows = []
    served = []
    for runs in results.values():
        if runs.name == SERVED:
            served.append(runs)
            continue
        rows.append(
            [
                runs.name,
                runs.input_size,
                runs.parameters,
                max(runs.training),
                statistics.median(runs.training),
                max(runs.inference),
                statistics.median(runs.inference),
                1000 / max(runs.inference),
                max(runs.background),
            ]
        )
    common.print_table(
        f"Images/s per architecture, batch {BATCH}, {args.threads} thread(s) · {common.machine()}",
        [
            "architecture",
            "input",
            "parameters",
            "training img/s",
            "(median)",
            "inference img/s",
            "(median)",
            "inference ms/img",
            "other load (max)",
        ],
        rows,
    )
    for runs in served:
        print(
            f"{runs.name}, input {runs.input_size}: inference {max(runs.inference):,.0f} img/s "
            f"(median {statistics.median(runs.inference):,.0f}, other load "
            f"{max(runs.background):.2f})"
        )
    print(
        "\ntraining: augmentation + forward + backward + AdamW step (no rendering or decoding); "
        "inference: forward of a ready batch (no decoding or resizing)."
    )
    return 0


if __name__ == "__main__":
    common.run_main(main)
