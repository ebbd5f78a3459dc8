"""Where the ML server's CPU goes: CPU seconds per pipeline stage, for the benchmarks.

Off unless ``TAGGING_ML_PROFILE_DIR`` names a folder. Then every ``/classify`` call of the
process adds the CPU time of each stage it runs (``time.thread_time``: the CPU of the thread that
ran it, the fetch threads' decoding included, waits excluded) and rewrites
``<dir>/ml-<pid>.json`` with the running totals and the process's whole CPU time, so that a
benchmark can put the stages next to the rest (uvicorn, the request's JSON, the framework).

A sampling profiler would need py-spy (not installed where the benchmarks run) and cProfile sees
one thread only, while the pipeline's work is spread over a pool: spans of thread CPU time cost
about a microsecond each and count every thread.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PROFILE_DIR_ENV = "TAGGING_ML_PROFILE_DIR"


class StageClock:
    """Thread CPU seconds and call counts per named stage, shared by every thread of a process.

    Args:
        directory: where :meth:`dump` writes; None disables the clock (every method is then a
            no-op costing one attribute test).
    """

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        self.seconds: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.images = 0
        """Images classified (not cached) so far, the denominator of a per-image figure."""
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> StageClock:
        """On when ``TAGGING_ML_PROFILE_DIR`` is set, else off."""
        value = os.environ.get(PROFILE_DIR_ENV, "").strip()
        return cls(Path(value) if value else None)

    @property
    def enabled(self) -> bool:
        return self.directory is not None

    @contextmanager
    def stage(self, name: str, count: int = 1) -> Iterator[None]:
        """Add the CPU this thread spends in the block to ``name``."""
        if self.directory is None:
            yield
            return
        start = time.thread_time()
        try:
            yield
        finally:
            self.add(name, time.thread_time() - start, count)

    def add(self, name: str, seconds: float, count: int = 1) -> None:
        """Add ``seconds`` of CPU (and ``count`` calls) to ``name``."""
        if self.directory is None:
            return
        with self._lock:
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds
            self.counts[name] = self.counts.get(name, 0) + count

    def classified(self, images: int) -> None:
        """Count ``images`` newly classified images."""
        if self.directory is None:
            return
        with self._lock:
            self.images += images

    def dump(self) -> None:
        """Write the totals so far to ``<dir>/ml-<pid>.json`` (atomically), if on."""
        if self.directory is None:
            return
        with self._lock:
            data = {
                "pid": os.getpid(),
                "process_cpu": time.process_time(),
                "images": self.images,
                "stages": dict(self.seconds),
                "counts": dict(self.counts),
            }
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.directory / f"ml-{os.getpid()}.json"
        partial = target.with_name(target.name + ".tmp")
        partial.write_text(json.dumps(data))
        partial.replace(target)  # a reader never sees half a file


def read_profiles(directory: Path) -> list[dict[str, object]]:
    """Every process's last :meth:`StageClock.dump` in ``directory``."""
    found = []
    for path in sorted(directory.glob("ml-*.json")):
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # a process that never finished a call
    return found
