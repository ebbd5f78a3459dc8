"""``python -m tagging jobs list|show``: the background jobs (dataset builds on the task queue).

A job is recorded when it is queued (``dataset build --background``) and its worker writes its
phase, progress and outcome to it; these commands read it. :func:`follow_job` is the progress
display of ``--wait``: one progress bar per phase, on stderr, until the job ends.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

from tagging.cli.console import progress_bar
from tagging.config import Settings

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy.orm import Session, sessionmaker

    from db.jobs import JobSummary

DESCRIPTION = """\
Background jobs, newest first: what was asked, by whom, its state (queued, running, done, failed),
the phase under way and its progress, and the result or the error. A running job whose worker
stopped (no heartbeat) reads as failed.
"""


def add_jobs_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``jobs`` command to ``subparsers`` (from ``add_subparsers``)."""
    jobs = subparsers.add_parser(
        "jobs",
        help="list and show background jobs (dataset builds) and their progress",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = jobs.add_subparsers(dest="action", required=True)
    listing = sub.add_parser("list", help="the newest jobs, newest first")
    listing.add_argument("--kind", help="only jobs of this kind (e.g. dataset_build)")
    listing.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    listing.add_argument("--json", action="store_true", help="print a JSON list")
    show = sub.add_parser("show", help="one job: its progress, parameters, result or error")
    show.add_argument("job", type=int, metavar="ID")
    show.add_argument("--json", action="store_true", help="print the job as JSON")


def cmd_jobs(args: argparse.Namespace) -> int:
    """Run one ``jobs`` action; 0 on success (whatever the jobs' states)."""
    from db.engine import make_engine, make_session_factory, migrate
    from tagging.errors import InvalidInput
    from tagging.jobs.records import get_job, list_jobs

    settings = Settings.from_env()
    migrate(settings.database_url, create=settings.creates_database)
    engine = make_engine(settings.database_url)
    try:
        sessions = make_session_factory(engine)
        if args.action == "show":
            job = get_job(sessions, args.job)
            if args.json:
                print(json.dumps(job.as_dict(), indent=2, ensure_ascii=False))
            else:
                _print_job(job)
            return 0
        if args.limit < 1:
            raise InvalidInput(f"--limit must be at least 1, got {args.limit}")
        jobs = list_jobs(sessions, args.kind, limit=args.limit)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps([job.as_dict() for job in jobs], indent=2, ensure_ascii=False))
        return 0
    if not jobs:
        print("no jobs yet: python -m tagging dataset build --background queues one")
    for job in jobs:
        print(
            f"{job.id:>5} {job.kind:<14} {job.state:<8} by {job.requested_by} · "
            f"{job.created_at:%Y-%m-%d %H:%M} · {_status(job)}"
        )
    return 0


class PhaseBars:
    """Progress bars per phase: :meth:`phase` closes the bar of the last phase and opens one
    named after the new one; calling it with ``(done, total)`` moves the current bar.

    Drives a foreground build (its ``progress`` and ``phase`` callbacks) and :func:`follow_job`
    alike. Use it as a context manager: the last bar closes at the end.
    """

    def __init__(self, unit: str = "img") -> None:
        self.unit = unit
        self.name: str | None = None
        self._stack = ExitStack()
        self._bar: Callable[[int, int], None] | None = None

    def __enter__(self) -> PhaseBars:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stack.close()

    def phase(self, name: str) -> None:
        """Phase ``name`` starts: a bar of its own."""
        self._stack.close()
        self._stack = ExitStack()
        self.name = name
        self._bar = self._stack.enter_context(progress_bar(name, unit=self.unit))

    def __call__(self, done: int, total: int) -> None:
        """``done`` of ``total`` in the current phase."""
        if self._bar is None:
            self.phase("working")
        assert self._bar is not None
        self._bar(done, total)

    def show(self, job: JobSummary) -> None:
        """Show ``job`` as read now (its phase and progress)."""
        if job.phase and job.phase != self.name:
            self.phase(job.phase)
        if job.phase and job.total is not None:
            self(job.done, job.total)


def follow_job(sessions: sessionmaker[Session], job_id: int, *, poll: float = 0.5) -> JobSummary:
    """Show job ``job_id``'s progress (a bar per phase, on stderr) until it ends; the job then.

    Says once on stderr when the job waits for a worker.

    Raises:
        NotFoundError: no such job.
    """
    from db.models import JobState
    from tagging.jobs.records import wait_for_job

    told = False

    def show(job: JobSummary) -> None:
        nonlocal told
        if job.state == JobState.QUEUED and not told:
            told = True
            print(
                f"job {job.id} is queued: a training worker runs it "
                "(python -m tagging worker --queue training)",
                file=sys.stderr,
            )
        bars.show(job)

    with PhaseBars() as bars:
        return wait_for_job(sessions, job_id, progress=show, poll=poll)


def _status(job: JobSummary) -> str:
    """What a list line says of the job beyond its state."""
    if job.state == "failed":
        return job.error or "failed"
    if job.state == "done":
        result = job.result or {}
        return f"version {result['version']}" if "version" in result else "done"
    if job.phase is None:
        return "waiting for a worker" if job.state == "queued" else "starting"
    progress = f" {job.done}/{job.total}" if job.total is not None else ""
    return f"{job.phase}{progress}"


def _print_job(job: JobSummary) -> None:
    print(f"job {job.id} · {job.kind} · {job.state} · by {job.requested_by}")
    times = [f"created {job.created_at:%Y-%m-%d %H:%M:%S}"]
    if job.started_at is not None:
        times.append(f"started {job.started_at:%H:%M:%S}")
    if job.finished_at is not None:
        times.append(f"finished {job.finished_at:%H:%M:%S}")
        if job.started_at is not None:
            times.append(f"{(job.finished_at - job.started_at).total_seconds():.1f}s")
    print("  " + " · ".join(times))
    if job.phase is not None:
        progress = f" {job.done}/{job.total}" if job.total is not None else ""
        print(f"  phase: {job.phase}{progress}")
    print(f"  params: {_compact(job.params)}")
    if job.error:
        print(f"  error: {job.error}")
    for key, value in (job.result or {}).items():
        if key == "phases" and isinstance(value, list):
            print("  phases:")
            for entry in value:
                total = f"/{entry.get('total')}" if entry.get("total") is not None else ""
                print(
                    f"    {entry.get('phase')}: {entry.get('done')}{total} in "
                    f"{entry.get('seconds')}s"
                )
            continue
        print(f"  {key}: {_compact(value)}")


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=str)
