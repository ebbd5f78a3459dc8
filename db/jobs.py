"""Background jobs and their progress (table ``jobs``): record one, start it, report its progress,
finish or fail it, and read them back.

A job is written by two sides: whoever asks for it (:func:`create_job`, state ``queued``) and the
queue worker that runs it (:func:`start_job`, :func:`report_progress`, :func:`beat_job`,
:func:`finish_job`, :func:`fail_job`). Every function takes a Session and leaves the transaction
to its caller; the worker reports progress in a short transaction of its own per call, throttled
(``tagging.jobs.records``), so a page polling the row sees it move.

**The lease.** A running job's worker pushes ``heartbeat_at`` forward with every progress report
and from a heartbeat thread. A running job silent for :data:`LEASE` was abandoned (its worker
died, or the machine stopped): it *reads* as failed, "the worker stopped", in every
:class:`JobSummary` (:func:`get_job`, :func:`list_jobs`), whether or not
:func:`expire_stale_jobs` has written it so yet (as scrapes do with theirs,
:func:`db.scrapes.expire_abandoned_scrapes`). Should that worker come back and finish after all,
its own word (:func:`finish_job`, :func:`fail_job`) replaces the guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from db.errors import InvalidInput, NotFoundError
from db.models import Job, JobState, as_utc, utcnow

LEASE = timedelta(minutes=2)
"""A running job whose heartbeat is older than this was abandoned. Its worker beats every
``LEASE / 4`` whatever it is doing, and with every progress report."""

WORKER_STOPPED = "the worker stopped"
"""How the error of a job abandoned by its worker begins."""

MAX_KIND = 32
MAX_PHASE = 200


@dataclass(frozen=True)
class JobSummary:
    """A job as callers see it, the lease applied (a silent running job reads as failed).

    Attributes:
        id: The job's number (``jobs show ID``).
        kind: What it does (``dataset_build``, ``training``…).
        state: ``queued``, ``running``, ``done`` or ``failed``.
        requested_by: Who asked for it.
        done: Progress of the current phase.
        total: The current phase's total; None while unknown.
        phase: The step under way (or the last one, once finished).
        params: What was asked.
        result: What a done job produced; None otherwise.
        error: Why a failed job failed, in one line; None otherwise.
    """

    id: int
    kind: str
    state: str
    requested_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    done: int
    total: int | None
    phase: str | None
    params: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None

    @property
    def finished(self) -> bool:
        """Whether it is over, done or failed (nothing will change it any more)."""
        return self.state in (JobState.DONE, JobState.FAILED)

    @property
    def fraction(self) -> float | None:
        """``done / total`` of the current phase, between 0 and 1; None while the total is
        unknown (a page shows an indeterminate bar then)."""
        if not self.total:
            return None
        return min(max(self.done / self.total, 0.0), 1.0)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (``jobs show --json``)."""

        def moment(value: datetime | None) -> str | None:
            return value.isoformat() if value is not None else None

        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "requested_by": self.requested_by,
            "created_at": moment(self.created_at),
            "started_at": moment(self.started_at),
            "finished_at": moment(self.finished_at),
            "heartbeat_at": moment(self.heartbeat_at),
            "phase": self.phase,
            "done": self.done,
            "total": self.total,
            "params": self.params,
            "result": self.result,
            "error": self.error,
        }


def create_job(
    session: Session, kind: str, requested_by: str, params: Mapping[str, Any]
) -> JobSummary:
    """A new queued job (flushed: it has its id).

    Args:
        kind: What it does, at most :data:`MAX_KIND` characters.
        requested_by: Who asks (an account's username, or ``system``).
        params: JSON-serializable parameters: the worker reads everything it needs from here.

    Raises:
        InvalidInput: an empty or overlong kind, or no requester.
    """
    if not kind or len(kind) > MAX_KIND:
        raise InvalidInput(f"a job's kind is 1 to {MAX_KIND} characters, got {kind!r:.60}")
    if not requested_by:
        raise InvalidInput("a job needs who asked for it")
    job = Job(
        kind=kind,
        state=JobState.QUEUED,
        requested_by=requested_by[:200],
        created_at=utcnow(),
        progress_done=0,
        params=dict(params),
    )
    session.add(job)
    session.flush()
    return _summary(job, utcnow())


def start_job(session: Session, job_id: int) -> bool:
    """Mark queued job ``job_id`` running, with its first heartbeat.

    Returns:
        False when it was not queued (already taken, finished, or no such job): a message the
        queue delivered twice runs the job once.
    """
    now = utcnow()
    started = session.execute(
        update(Job)
        .where(and_(Job.id == job_id, Job.state == JobState.QUEUED))
        .values(state=JobState.RUNNING, started_at=now, heartbeat_at=now)
        .execution_options(synchronize_session=False)
    )
    return _changed(started)


def report_progress(
    session: Session,
    job_id: int,
    done: int,
    total: int | None,
    phase: str | None = None,
) -> bool:
    """Record a running job's progress (``done`` of ``total`` in ``phase``); also a heartbeat.

    The worker calls it in a short transaction of its own, at most every half second or so.
    ``phase`` None keeps the current one.

    Returns:
        False when the job is not running any more (e.g. taken for abandoned): nothing written.
    """
    values: dict[str, Any] = {
        "progress_done": max(int(done), 0),
        "progress_total": None if total is None else max(int(total), 0),
        "heartbeat_at": utcnow(),
    }
    if phase is not None:
        values["phase"] = phase[:MAX_PHASE]
    reported = session.execute(
        update(Job)
        .where(and_(Job.id == job_id, Job.state == JobState.RUNNING))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return _changed(reported)


def beat_job(session: Session, job_id: int) -> bool:
    """The running job's worker is alive: push its heartbeat forward.

    Returns:
        False when the job is not running any more (the heartbeat thread stops then).
    """
    beaten = session.execute(
        update(Job)
        .where(and_(Job.id == job_id, Job.state == JobState.RUNNING))
        .values(heartbeat_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return _changed(beaten)


def finish_job(session: Session, job_id: int, result: Mapping[str, Any]) -> bool:
    """Mark job ``job_id`` done with its ``result`` (JSON-serializable).

    Applies to a running job, or to one marked failed because its heartbeat went stale (its
    worker came back: its word replaces the lease's guess).

    Returns:
        False when the job was neither (queued, finished, or no such job): nothing written.
    """
    return _conclude(session, job_id, state=JobState.DONE, result=dict(result), error=None)


def fail_job(session: Session, job_id: int, error: str) -> bool:
    """Mark job ``job_id`` failed, ``error`` saying why (its first line is kept).

    Applies to a queued job (its task could not be queued, or cannot run), a running one, or one
    marked failed because its heartbeat went stale (the worker's own reason replaces the guess).

    Returns:
        False when the job was done or failed already, or does not exist: nothing written.
    """
    line = next((part.strip() for part in error.splitlines() if part.strip()), "failed")
    return _conclude(
        session,
        job_id,
        state=JobState.FAILED,
        result=None,
        error=line,
        from_queued=True,
    )


def get_job(session: Session, job_id: int) -> JobSummary:
    """Job ``job_id``, the lease applied.

    Raises:
        NotFoundError: no such job.
    """
    job = session.get(Job, job_id)
    if job is None:
        raise NotFoundError(f"no job {job_id}")
    return _summary(job, utcnow())


def list_jobs(session: Session, kind: str | None = None, *, limit: int = 50) -> list[JobSummary]:
    """The newest ``limit`` jobs, newest first (of ``kind`` only, when given), the lease applied."""
    query = select(Job).order_by(Job.id.desc()).limit(max(int(limit), 1))
    if kind is not None:
        query = query.where(Job.kind == kind)
    now = utcnow()
    return [_summary(job, now) for job in session.scalars(query)]


def expire_stale_jobs(session: Session, *, now: datetime | None = None) -> list[int]:
    """Write as failed every running job whose heartbeat is older than :data:`LEASE`.

    What every reader already sees (:func:`get_job` applies the rule), written down so that the
    row says it too. Only jobs still running change, so a job finishing at the same moment keeps
    its own result. Returns the ids marked.
    """
    now = now or utcnow()
    expired = []
    stale = session.scalars(
        select(Job).where(and_(Job.state == JobState.RUNNING, _stale(now))).order_by(Job.id)
    ).all()
    for job in stale:
        marked = session.execute(
            update(Job)
            .where(and_(Job.id == job.id, Job.state == JobState.RUNNING, _stale(now)))
            .values(state=JobState.FAILED, finished_at=now, error=_stopped(job))
            .execution_options(synchronize_session=False)
        )
        if _changed(marked):
            expired.append(job.id)
    return expired


# --- helpers -------------------------------------------------------------------------------------


def _stale(now: datetime) -> ColumnElement[bool]:
    heartbeat = func.coalesce(Job.heartbeat_at, Job.started_at, Job.created_at)
    return heartbeat < now - LEASE


def _stopped(job: Job) -> str:
    last = as_utc(job.heartbeat_at or job.started_at or job.created_at)
    return f"{WORKER_STOPPED}: no heartbeat since {last:%Y-%m-%d %H:%M:%S} UTC"


def _conclude(
    session: Session,
    job_id: int,
    *,
    state: JobState,
    result: dict[str, Any] | None,
    error: str | None,
    from_queued: bool = False,
) -> bool:
    allowed = [
        Job.state == JobState.RUNNING,
        # Taken for abandoned, yet its worker reports: the worker knows better.
        and_(Job.state == JobState.FAILED, Job.error.startswith(WORKER_STOPPED)),
    ]
    if from_queued:
        allowed.append(Job.state == JobState.QUEUED)
    concluded = session.execute(
        update(Job)
        .where(and_(Job.id == job_id, or_(*allowed)))
        .values(state=state, finished_at=utcnow(), result=result, error=error)
        .execution_options(synchronize_session=False)
    )
    return _changed(concluded)


def _changed(outcome: object) -> bool:
    return bool(cast("CursorResult[Any]", outcome).rowcount)


def _summary(job: Job, now: datetime) -> JobSummary:
    state, error, finished_at = job.state, job.error, as_utc(job.finished_at)
    heartbeat = as_utc(job.heartbeat_at or job.started_at or job.created_at)
    if state == JobState.RUNNING and heartbeat is not None and now - heartbeat >= LEASE:
        state, error = JobState.FAILED, _stopped(job)
    created = as_utc(job.created_at)
    assert created is not None  # the column is NOT NULL
    return JobSummary(
        id=job.id,
        kind=job.kind,
        state=str(state),
        requested_by=job.requested_by,
        created_at=created,
        started_at=as_utc(job.started_at),
        finished_at=finished_at,
        heartbeat_at=as_utc(job.heartbeat_at),
        done=int(job.progress_done or 0),
        total=job.progress_total,
        phase=job.phase,
        params=dict(job.params or {}),
        result=dict(job.result) if job.result is not None else None,
        error=error,
    )
