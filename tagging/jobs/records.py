"""Background jobs, the part every kind shares: run one in a queue worker with its progress and
outcome written to its row (``db.jobs``), and read or follow it from a page or the CLI.

A job's kind brings two functions: one that checks the request at the edge and records the job
(a bad parameter fails at once, in the caller's process, never in the worker), and the work
itself, which :func:`run_job` runs with a :class:`JobProgress` to report to. :func:`run_job`
marks the job running, beats its heartbeat from a thread while the work runs (``db.jobs.LEASE``:
a job whose worker died reads as failed), and records the work's result, or its failure in one
line: a :class:`~tagging.errors.TaggingError` by its message, anything else by its type and
message (and logged with its traceback).

What a page calls: :func:`get_job` for one job (its ``state``, ``phase``, ``done``/``total`` or
``fraction``, ``result``, ``error``) and :func:`list_jobs` for the newest ones.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from db import jobs as store
from db.jobs import LEASE, JobSummary
from tagging.errors import TaggingError

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 0.5
"""Seconds between two progress writes of a running job (a phase change is written at once): a
page polling the row sees it move, and the database sees two short transactions a second."""

Work = Callable[[JobSummary, "JobProgress"], Mapping[str, Any]]
"""A job's work: given the job (its ``params``) and its progress reporter, returns its result
(JSON-serializable), or raises."""


class JobProgress:
    """The progress callback of a running job, writing to its row.

    Call it with ``(done, total)`` (it is a :data:`tagging.datasets.service.Progress`), and
    :meth:`phase` with each phase's name as it starts. Each write is a short transaction of its
    own, at most every ``interval`` seconds; a new phase, a new total (the phase's first step) and
    a phase's last step are written at once. A failed write is logged and skipped: progress is
    never worth failing the job for.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        job_id: int,
        *,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sessions, self.job_id = sessions, job_id
        self.interval = PROGRESS_INTERVAL if interval is None else interval
        self._clock = clock
        self._lock = threading.Lock()
        self._written = float("-inf")
        self._pending = False
        self._written_total: int | None = None
        self._name: str | None = None
        self._started = clock()
        self._done: int = 0
        self._total: int | None = None
        self._phases: list[dict[str, Any]] = []

    def phase(self, name: str) -> None:
        """Phase ``name`` starts: its progress is unknown until the first ``(done, total)``."""
        with self._lock:
            if self._name is not None:
                self._phases.append(self._current())
            self._name, self._started = name, self._clock()
            self._done, self._total = 0, None
            self._write(phase=name)

    def __call__(self, done: int, total: int) -> None:
        """``done`` of ``total`` in the current phase."""
        with self._lock:
            self._done, self._total = done, total
            self._pending = True
            due = self._clock() - self._written >= self.interval
            if due or total != self._written_total or (total and done >= total):
                self._write()

    def flush(self) -> None:
        """Write the latest progress if the throttle held it back (the job is ending)."""
        with self._lock:
            if self._pending:
                self._write()

    @property
    def phases(self) -> list[dict[str, Any]]:
        """Each phase so far: its ``phase`` name, last ``done`` and ``total``, and ``seconds``."""
        with self._lock:
            current = [self._current()] if self._name is not None else []
            return [dict(entry) for entry in self._phases] + current

    def _current(self) -> dict[str, Any]:
        return {
            "phase": self._name,
            "done": self._done,
            "total": self._total,
            "seconds": round(self._clock() - self._started, 2),
        }

    def _write(self, phase: str | None = None) -> None:
        self._written, self._pending = self._clock(), False
        self._written_total = self._total
        try:
            with self.sessions.begin() as session:
                store.report_progress(session, self.job_id, self._done, self._total, phase)
        except Exception:  # the next write tries again
            log.warning("job %s: progress not recorded", self.job_id, exc_info=True)


class _Heartbeat:
    """A thread that beats for running job ``job_id`` every ``every`` seconds until the block
    ends, or until the job is no longer running (taken for abandoned)."""

    def __init__(self, sessions: sessionmaker[Session], job_id: int, every: float) -> None:
        self.sessions, self.job_id, self.every = sessions, job_id, every
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"job-{job_id}-heartbeat", daemon=True
        )

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                with self.sessions.begin() as session:
                    if not store.beat_job(session, self.job_id):
                        return
            except Exception:  # the next beat tries again
                log.warning("job %s: heartbeat failed", self.job_id, exc_info=True)


def failure_message(exc: BaseException) -> str:
    """One line for a job's ``error``: a TaggingError's message, else its type and message."""
    line = next((part.strip() for part in str(exc).splitlines() if part.strip()), "")
    if isinstance(exc, TaggingError):
        return line or type(exc).__name__
    return f"unexpected {type(exc).__name__}" + (f": {line}" if line else "")


def run_job(
    sessions: sessionmaker[Session],
    job_id: int,
    work: Work,
    *,
    interval: float | None = None,
    beat_every: float | None = None,
) -> JobSummary | None:
    """Run queued job ``job_id`` here (in a queue worker): running, its work, then done or failed.

    The result stored is the work's, plus ``phases`` (each phase's name, progress and seconds)
    unless the work gave its own.

    Args:
        work: What the job does (see :data:`Work`).
        interval: Seconds between progress writes (default :data:`PROGRESS_INTERVAL`).
        beat_every: Seconds between heartbeats (default a quarter of ``db.jobs.LEASE``).

    Returns:
        The job as it ended; None when it was not queued (a message delivered twice, or a job
        that was failed before its worker took it): nothing was run.
    """
    with sessions.begin() as session:
        started = store.start_job(session, job_id)
        job = store.get_job(session, job_id) if started else None
    if job is None:
        log.warning("job %s is not queued any more: not run again", job_id)
        return None
    progress = JobProgress(sessions, job_id, interval=interval)
    every = LEASE.total_seconds() / 4 if beat_every is None else beat_every
    try:
        with _Heartbeat(sessions, job_id, every):
            try:
                result = dict(work(job, progress))
            finally:
                progress.flush()  # where it stopped, even on a failure
    except TaggingError as exc:
        log.warning("job %s (%s) failed: %s", job_id, job.kind, failure_message(exc))
        _conclude(sessions, job_id, error=failure_message(exc))
    except Exception as exc:
        log.exception("job %s (%s) failed unexpectedly", job_id, job.kind)
        _conclude(sessions, job_id, error=failure_message(exc))
    else:
        result.setdefault("phases", progress.phases)
        try:
            _conclude(sessions, job_id, result=result)
        except Exception as exc:  # e.g. a result the database cannot store as JSON
            log.exception("job %s (%s): its result could not be recorded", job_id, job.kind)
            _conclude(sessions, job_id, error=f"its result could not be recorded: {exc}")
    with sessions() as session:
        return store.get_job(session, job_id)


def _conclude(
    sessions: sessionmaker[Session],
    job_id: int,
    *,
    result: Mapping[str, Any] | None = None,
    error: str | None = None,
) -> None:
    with sessions.begin() as session:
        if error is not None:
            concluded = store.fail_job(session, job_id, error)
        else:
            concluded = store.finish_job(session, job_id, result or {})
    if not concluded:
        log.warning("job %s was concluded elsewhere: its outcome here is not recorded", job_id)


# --- reading -------------------------------------------------------------------------------------


def get_job(sessions: sessionmaker[Session], job_id: int) -> JobSummary:
    """Job ``job_id`` as it is now (a running job whose worker stopped reads as failed).

    Raises:
        NotFoundError: no such job.
    """
    with sessions() as session:
        return store.get_job(session, job_id)


def list_jobs(
    sessions: sessionmaker[Session], kind: str | None = None, *, limit: int = 50
) -> list[JobSummary]:
    """The newest ``limit`` jobs, newest first; of ``kind`` only when given."""
    with sessions() as session:
        return store.list_jobs(session, kind, limit=limit)


def wait_for_job(
    sessions: sessionmaker[Session],
    job_id: int,
    *,
    progress: Callable[[JobSummary], None] | None = None,
    poll: float = 0.5,
    timeout: float | None = None,
) -> JobSummary:
    """Follow job ``job_id`` until it is done or failed (the CLI's ``--wait``).

    Args:
        progress: Called with the job at every poll (and once more when it ends).
        poll: Seconds between two reads of the job.
        timeout: Give up after this many seconds and return the job as it is then (``finished``
            false); None waits as long as it takes.

    Raises:
        NotFoundError: no such job.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        job = get_job(sessions, job_id)
        if progress is not None:
            progress(job)
        if job.finished or (deadline is not None and time.monotonic() >= deadline):
            return job
        time.sleep(poll)


__all__ = [
    "PROGRESS_INTERVAL",
    "JobProgress",
    "Work",
    "failure_message",
    "get_job",
    "list_jobs",
    "run_job",
    "wait_for_job",
]
