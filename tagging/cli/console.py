"""Terminal output shared by the commands: progress bars (quiet when stderr is not a terminal)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tqdm import tqdm


@contextmanager
def progress_bar(description: str, *, unit: str = "img") -> Iterator[Callable[[int, int], None]]:
    """A tqdm bar driven by ``(done, total)`` callbacks, on stderr so JSON stdout stays clean."""
    bar: tqdm[Any] | None = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(
                total=total,
                desc=description,
                unit=unit,
                file=sys.stderr,
                leave=False,
                disable=None,  # quiet when stderr is not a terminal (logs, CI)
            )
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()
