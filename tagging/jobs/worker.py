"""``python -m tagging worker``: the consumers of the task queues (:mod:`tagging.jobs.tasks`).

``--queue scrapes|pushes|training`` runs one queue's consumer in this process (the scrapes one
with its reclaimer thread, the pushes one with the periodic scheduler); ``--queue all`` (the
default) runs one child process per queue and stops them all on Ctrl-C or SIGTERM, or when one of
them exits.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from types import FrameType

from tagging.config import Settings
from tagging.errors import InvalidInput

QUEUE_CHOICES = ("all", "scrapes", "pushes", "training")
"""What ``--queue`` takes."""


def run_worker(queue: str, workers: int) -> int:
    """Consume ``queue`` (or every queue, ``"all"``) with ``workers`` threads until stopped.

    With ``"all"`` the scrapes queue gets ``workers`` threads, the others one each: a push is
    short, and two trainings at once would only share the cores. Returns the exit code.

    Raises:
        InvalidInput: an unknown queue, or fewer than one worker.
    """
    if queue not in QUEUE_CHOICES:
        raise InvalidInput(f"--queue must be one of {', '.join(QUEUE_CHOICES)}, got {queue!r}")
    if workers < 1:
        raise InvalidInput(f"--workers must be at least 1, got {workers}")
    if queue == "all":
        return _run_all(workers)
    return _run_one(queue, workers)


def _run_one(queue: str, workers: int) -> int:
    from tagging.jobs.tasks import Reclaimer, task_queue

    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s {queue}[%(process)d] %(levelname)s %(message)s"
    )
    queues = task_queue()
    # Only the pushes queue has periodic tasks; a scrapes or training consumer that scheduled
    # them would only enqueue nothing every minute.
    consumer = queues.of(queue).create_consumer(
        workers=workers, worker_type="thread", periodic=queue == "pushes"
    )
    reclaimer = Reclaimer(Settings.from_env(), queues).start() if queue == "scrapes" else None
    try:
        consumer.run()  # until SIGINT (graceful) or SIGTERM; huey handles both
    finally:
        if reclaimer is not None:
            reclaimer.stop()
    return 0


def _run_all(workers: int) -> int:
    counts = {"scrapes": workers, "pushes": 1, "training": 1}
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "tagging", "worker", "--queue", queue, "--workers", str(n)]
        )
        for queue, n in counts.items()
    ]
    stopping = False

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stopping and all(child.poll() is None for child in children):
            time.sleep(0.2)
        if not stopping:  # one exited on its own: stop the others
            stop(signal.SIGTERM, None)
        code = 0
        for child in children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            code = code or (child.returncode if child.returncode and child.returncode > 0 else 0)
        return code
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
