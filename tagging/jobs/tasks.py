"""Background work through task queues (huey): one queue per workload, so none starves another.

| queue | tasks | periodic |
| --- | --- | --- |
| ``scrapes`` | ``scrape_task`` (coordinator), ``scrape_chunk_task``, ``scrape_fan_in_task`` | — |
| ``pushes`` | ``push_pending_task``, ``expire_scrapes_task``, ``expire_jobs_task``, \
``archive_pending_task`` | 1/min |
| ``training`` | ``train_task``, ``dataset_build_task``, ``training_grid_task`` | — |

A scrape is split into chunks of its sitemap (:mod:`tagging.ingest.chunks`): the coordinator
queues one chunk task per ``TAGGING_SCRAPE_CHUNK_SIZE`` items as it reads, so every scrapes worker
works on one big advertiser; the last chunk's worker finishes the scrape, exactly once.

Embedded default: one SQLite queue per workload in the data dir (``tasks-scrapes.sqlite``...). With
``TAGGING_REDIS_URL`` set, Redis carries them instead (huey names ``tagdesk-scrapes``...; the prefix
is ``TAGGING_QUEUE_NAME``), so workers on several machines share them. ``python -m tagging worker``
runs the consumers (:func:`run_worker`).

**The reclaimer** runs as a thread in every scrapes worker (:class:`Reclaimer`), every
``TAGGING_RECLAIM_SECONDS`` (default half the chunk lease), not as a huey periodic task: huey
schedules those per minute, in the queue behind the chunks it must rescue, and once per consumer.
The thread runs whatever the queue holds, as often as a benchmark needs, and each of its actions is
elected by a conditional UPDATE, so N workers queue each lost chunk once.

**Periodic tasks** run on the pushes queue only; every pushes consumer schedules them (huey's
scheduler is per consumer), so each run first takes the minute's slot in the queue's storage
(``put_if_empty`` of a key naming the minute): with N workers, each still runs once a minute.

**Jobs** (:mod:`tagging.jobs.records`, table ``jobs``): a long task the app or the CLI follows
(a dataset build, :func:`enqueue_dataset_build`) is recorded as a job before it is queued; its
worker writes its phase, progress, result or error there, and beats its heartbeat, so a job whose
worker died reads as failed.

The queue carries only names and ids; the work reads everything else from the database, so a
task retried after a crash does the same thing. The queues are built on first use
(:func:`task_queue`), never at import time: importing this module opens no file and no connection.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from huey import Huey, PriorityRedisHuey, SqliteHuey, crontab
from huey.api import TaskWrapper

from db.accounts import Actor, Permission, require
from db.advertisers import get_advertiser
from db.engine import create_private_file, make_engine, make_session_factory
from db.jobs import expire_stale_jobs, fail_job
from db.scrapes import expire_abandoned_scrapes, running_scrape
from tagging.config import Settings
from tagging.errors import Conflict

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from datetime import datetime

    from sqlalchemy.orm import Session, sessionmaker

    from tagging.curation.split import NamedTestSet
    from tagging.ingest.chunks import ReclaimReport
    from tagging.ml.candidates import Grid

log = logging.getLogger(__name__)

QUEUES = ("scrapes", "pushes", "training")
"""The workloads, one queue each."""
RECLAIMED_PRIORITY = 10
"""Of a chunk (or fan-in) the reclaimer queues again: ahead of the chunks still waiting, so a
killed worker's chunk is redone within a lease or two, not after the whole backlog."""


def make_huey(settings: Settings, queue: str = "scrapes") -> Huey:
    """The queue of one workload: Redis when ``settings.redis_url`` is set, else SQLite in the
    data dir (one file per queue)."""
    name = f"{settings.queue_name}-{queue}"
    if settings.redis_url:
        # The priority flavour (a sorted set; Redis 5+): a reclaimed chunk jumps the queue.
        return PriorityRedisHuey(name, url=settings.redis_url)
    queue_file = settings.data_dir / f"tasks-{queue}.sqlite"
    create_private_file(queue_file)  # 0600 before SQLite creates it (an empty file is valid)
    return SqliteHuey(name, filename=str(queue_file))


@dataclass(frozen=True)
class TaskQueue:
    """The queues and the tasks registered on them (call a task to enqueue it)."""

    scrapes: Huey
    pushes: Huey
    training: Huey
    scrape: TaskWrapper
    scrape_chunk: TaskWrapper
    scrape_fan_in: TaskWrapper
    push_pending: TaskWrapper
    expire_scrapes: TaskWrapper
    expire_jobs: TaskWrapper
    train: TaskWrapper
    dataset_build: TaskWrapper
    archive_pending: TaskWrapper | None = None
    """The periodic archiving of the images queued at fix time (:func:`archive_pending_task`)."""
    training_grid: TaskWrapper | None = None
    """A grid of Image Type candidates (:func:`training_grid_task`)."""

    @property
    def huey(self) -> Huey:
        """The scrapes queue, where the app's relaunches go."""
        return self.scrapes

    def of(self, queue: str) -> Huey:
        """The huey instance of ``queue`` (one of :data:`QUEUES`)."""
        return {"scrapes": self.scrapes, "pushes": self.pushes, "training": self.training}[queue]


def build_queues(settings: Settings) -> TaskQueue:
    """The three queues of ``settings`` with every task registered (a test builds its own)."""
    scrapes = make_huey(settings, "scrapes")
    pushes = make_huey(settings, "pushes")
    training = make_huey(settings, "training")
    # A coordinator retried after a crash starts a new scrape; the one it left is expired.
    scrape = scrapes.task(retries=1, retry_delay=30, name="scrape_task")(scrape_task)
    # No retries for chunks and fan-ins: a failed one keeps its lease until it expires, then the
    # reclaimer queues it again (the same path as a worker killed mid-chunk).
    chunk = scrapes.task(name="scrape_chunk_task")(scrape_chunk_task)
    fan = scrapes.task(name="scrape_fan_in_task")(scrape_fan_in_task)
    push = pushes.periodic_task(crontab(minute="*"), name="push_pending_task")(
        _once_a_minute(pushes, "push_pending_task", push_pending_task)
    )
    expire = pushes.periodic_task(crontab(minute="*"), name="expire_scrapes_task")(
        _once_a_minute(pushes, "expire_scrapes_task", expire_scrapes_task)
    )
    expire_jobs = pushes.periodic_task(crontab(minute="*"), name="expire_jobs_task")(
        _once_a_minute(pushes, "expire_jobs_task", expire_jobs_task)
    )
    train = training.task(name="train_task")(train_task)
    # No retries: a build that failed says why in its job; the job is not run twice.
    dataset_build = training.task(name="dataset_build_task")(dataset_build_task)
    # No retries either: a failed training says why in its job.
    training_grid = training.task(name="training_grid_task")(training_grid_task)
    # An image queued at fix time is archived within a minute, whatever the consumers.
    archive = pushes.periodic_task(crontab(minute="*"), name="archive_pending_task")(
        _once_a_minute(pushes, "archive_pending_task", archive_pending_task)
    )
    return TaskQueue(
        scrapes=scrapes,
        pushes=pushes,
        training=training,
        scrape=scrape,
        scrape_chunk=chunk,
        scrape_fan_in=fan,
        push_pending=push,
        expire_scrapes=expire,
        expire_jobs=expire_jobs,
        train=train,
        dataset_build=dataset_build,
        archive_pending=archive,
        training_grid=training_grid,
    )


@functools.cache
def task_queue() -> TaskQueue:
    """The process's queues, built from the settings on first use, with their tasks registered.

    The workers (``python -m tagging worker``) and every producer call this, so both sides know
    the same task names.
    """
    return build_queues(Settings.from_env())


def _once_a_minute(huey: Huey, name: str, function: Any) -> Any:
    """``function`` run at most once per minute across every consumer of ``huey``."""

    @functools.wraps(function)
    def once() -> Any:
        minute = int(time.time() // 60)
        if not huey.put_if_empty(f"periodic:{name}:{minute}", b"1"):
            return None  # another consumer ran it this minute
        for earlier in range(minute - 3, minute):  # not every storage expires keys: tidy up
            huey.delete(f"periodic:{name}:{earlier}")
        return function()

    return once


# --- the tasks -----------------------------------------------------------------------------------


def _scrape_context(settings: Settings) -> Any:
    from tagging.ingest.scrape import ScrapeConfig

    return ScrapeConfig(chunk_size=settings.scrape_chunk_size)


def scrape_task(advertiser_name: str, requested_by: str | None) -> dict[str, Any]:
    """Scrape one advertiser (the app's "Relaunch scrape"): the coordinator, which splits the
    sitemap into chunks for the scrapes workers."""
    from dataclasses import replace

    from tagging.ingest.chunks import coordinate_scrape
    from tagging.ingest.fetch import client_from_settings
    from tagging.server.client import MLClient

    settings = Settings.from_env()
    engine = make_engine(settings.database_url)
    client = client_from_settings(settings)
    ml = MLClient.from_settings(settings)
    queues = task_queue()
    try:
        summary = coordinate_scrape(
            make_session_factory(engine),
            advertiser_name,
            ml=ml,
            client=client,
            enqueue_chunk=queues.scrape_chunk,
            config=replace(_scrape_context(settings), trigger="app", requested_by=requested_by),
            lease=timedelta(seconds=settings.chunk_lease_seconds),
        )
        return summary.as_dict()
    finally:
        client.close()
        ml.client.close()
        engine.dispose()


def scrape_chunk_task(chunk_id: int) -> dict[str, Any]:
    """Classify and store one chunk of a scrape; finish the scrape if it was the last."""
    from tagging.ingest.chunks import run_chunk
    from tagging.server.client import MLClient

    settings = Settings.from_env()
    engine = make_engine(settings.database_url)
    ml = MLClient.from_settings(settings)
    try:
        outcome = run_chunk(
            make_session_factory(engine),
            chunk_id,
            ml=ml,
            config=_scrape_context(settings),
            lease=timedelta(seconds=settings.chunk_lease_seconds),
        )
        return {
            **{k: v for k, v in asdict(outcome).items() if k != "finished"},
            "finished": outcome.finished.status if outcome.finished else None,
        }
    finally:
        ml.client.close()
        engine.dispose()


def scrape_fan_in_task(scrape_id: int, finisher: str) -> str | None:
    """Finish a chunked scrape the reclaimer elected ``finisher`` for (its last chunk's worker
    died before finishing it); returns its status, or None when it was no longer this one's."""
    from tagging.ingest.chunks import fan_in
    from tagging.server.client import MLClient

    settings = Settings.from_env()
    engine = make_engine(settings.database_url)
    ml = MLClient.from_settings(settings)
    try:
        summary = fan_in(
            make_session_factory(engine),
            scrape_id,
            ml=ml,
            config=_scrape_context(settings),
            lease=timedelta(seconds=settings.chunk_lease_seconds),
            finisher=finisher,
            elected=True,
        )
        return summary.status if summary else None
    finally:
        ml.client.close()
        engine.dispose()


def push_pending_task() -> dict[str, Any]:
    """Every minute: push the fixes the ML server has not acknowledged yet, and every current
    fix again when its cache is a new generation (it lost its memory)."""
    from tagging.fixes import sync_fixes
    from tagging.server.client import MLClient

    settings = Settings.from_env()
    engine = make_engine(settings.database_url)
    ml = MLClient.from_settings(settings)
    try:
        return sync_fixes(make_session_factory(engine), ml).__dict__
    finally:
        ml.client.close()
        engine.dispose()


def expire_scrapes_task() -> list[int]:
    """Every minute: mark failed the running scrapes whose process died (no heartbeat).

    Returns the ids of the scrapes marked failed (see :func:`db.scrapes.expire_abandoned_scrapes`).
    """
    settings = Settings.from_env()
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine).begin() as session:
            return expire_abandoned_scrapes(session)
    finally:
        engine.dispose()


def expire_jobs_task() -> list[int]:
    """Every minute: write as failed the running jobs whose worker stopped (no heartbeat).

    Readers see them failed already (:mod:`db.jobs`); this makes the rows say so. Returns the ids
    marked (see :func:`db.jobs.expire_stale_jobs`).
    """
    settings = Settings.from_env()
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine).begin() as session:
            return expire_stale_jobs(session)
    finally:
        engine.dispose()


def archive_pending_task() -> dict[str, Any]:
    """Every minute: fetch the fixed images queued for the training-image archive.

    A fix queues its image in its own transaction, with no network; this round fetches them
    through the guarded client and stores them (:func:`tagging.datasets.service.archive_pending`).
    A failed fetch stays queued for the next minute.
    """
    from tagging.datasets.archive import archive_from_settings
    from tagging.datasets.service import archive_pending
    from tagging.ingest.fetch import client_from_settings

    settings = Settings.from_env()
    engine = make_engine(settings.database_url)
    try:
        with client_from_settings(settings) as client:
            report = archive_pending(
                make_session_factory(engine), archive_from_settings(settings), client
            )
        return {"stored": report.stored, "failed": report.failed}
    finally:
        engine.dispose()


def train_task(
    quick: bool = False,
    promote: bool = False,
    seed: int | None = None,
    epochs: int | None = None,
) -> dict[str, Any]:
    """Train an Image Type model, as ``python -m tagging train`` does (on the training queue, so
    a long training delays no scrape or push).

    Returns:
        The new model's ``version``, whether it was ``promoted``, its ``val_accuracy`` and
        ``seconds`` per phase.
    """
    from tagging.ml.train import TrainConfig, train

    settings = Settings.from_env()
    config = TrainConfig.quick() if quick else TrainConfig()
    overrides = {k: v for k, v in (("seed", seed), ("epochs", epochs)) if v is not None}
    if overrides:
        config = config.replace(**overrides)
    result = train(config, settings.models_dir, promote=promote)
    return {
        "version": result.version,
        "promoted": result.promoted,
        "val_accuracy": result.val_accuracy,
        "seconds": result.seconds,
    }


def dataset_build_task(job_id: int) -> dict[str, Any]:
    """Run queued dataset build job ``job_id`` (on the training queue, so a long build delays no
    scrape or push): its phases, progress and outcome are written to the job
    (:func:`tagging.jobs.dataset_builds.run_dataset_build_job`).

    Returns:
        The job's id, whether this task ``ran`` it (not when it was not queued any more: a
        message delivered twice runs the job once) and its final ``state`` when it did.
    """
    from tagging.jobs.dataset_builds import run_dataset_build_job

    settings = Settings.from_env()
    engine = make_engine(settings.database_url)
    try:
        job = run_dataset_build_job(settings, make_session_factory(engine), job_id)
        return {"job": job_id, "ran": job is not None, "state": job.state if job else None}
    finally:
        engine.dispose()


def training_grid_task(job_id: int) -> dict[str, Any]:
    """Run queued training job ``job_id`` (on the training queue: scrapes never wait behind it,
    and the ML server keeps serving production): its phases, progress, live curves and outcome
    are written as :mod:`tagging.jobs.training` says.

    Returns:
        The job's id, whether this task ``ran`` it and its final ``state`` when it did.
    """
    from tagging.jobs.training import run_training_job

    settings = Settings.from_env()
    engine = make_engine(settings.database_url)
    try:
        job = run_training_job(settings, make_session_factory(engine), job_id)
        return {"job": job_id, "ran": job is not None, "state": job.state if job else None}
    finally:
        engine.dispose()


# --- the reclaimer -------------------------------------------------------------------------------


def queued_chunks(queues: TaskQueue) -> set[int]:
    """The chunks whose task waits in the scrapes queue (not taken by a worker yet)."""
    return {
        int(task.args[0])
        for task in queues.scrapes.pending()
        if task.name == queues.scrape_chunk.name and task.args
    }


class Reclaimer:
    """A thread of a scrapes worker running :func:`tagging.ingest.chunks.reclaim` every
    ``settings.reclaim_period`` seconds until stopped (a failed pass is logged and retried)."""

    def __init__(self, settings: Settings, queues: TaskQueue) -> None:
        self.settings, self.queues = settings, queues
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chunk-reclaimer", daemon=True)

    def start(self) -> Reclaimer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        engine = make_engine(self.settings.database_url)
        try:
            sessions = make_session_factory(engine)
            while not self._stop.wait(self.settings.reclaim_period):
                try:
                    self.run_once(sessions)
                except Exception:
                    log.warning("chunk reclaim failed (retried next period)", exc_info=True)
        finally:
            engine.dispose()

    def run_once(self, sessions: sessionmaker[Session]) -> ReclaimReport:
        """One pass (see :func:`tagging.ingest.chunks.reclaim`); its report."""
        from tagging.ingest.chunks import reclaim

        queues = self.queues
        report = reclaim(
            sessions,
            enqueue_chunk=lambda chunk_id: queues.scrapes.enqueue(
                queues.scrape_chunk.s(chunk_id, priority=RECLAIMED_PRIORITY)
            ),
            enqueue_fan_in=lambda scrape_id, finisher: queues.scrapes.enqueue(
                queues.scrape_fan_in.s(scrape_id, finisher, priority=RECLAIMED_PRIORITY)
            ),
            lease=timedelta(seconds=self.settings.chunk_lease_seconds),
            in_queue=queued_chunks(queues),
        )
        if report.expired or report.lost or report.fan_ins:
            log.info(
                "reclaimed: chunks %s (lease expired), %s (message lost); fan-ins %s",
                report.expired,
                report.lost,
                report.fan_ins,
            )
        return report


# --- producers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Queued:
    task_id: str
    advertiser: str


def enqueue_scrape(settings: Settings, actor: Actor | None, advertiser_name: str) -> Queued:
    """Queue a scrape of ``advertiser_name`` on behalf of ``actor``.

    Its completion shows in the database: the scrape's status leaves "running" once its last
    chunk is stored and the fan-in has finished it.

    Raises:
        PermissionDenied: the actor may not relaunch scrapes.
        NotFoundError: no such advertiser.
        Conflict: a scrape of this advertiser is already running (a scrape whose process
            died, with no heartbeat for ``db.scrapes.LEASE``, is marked failed instead).
    """
    actor = require(actor, Permission.RELAUNCH)
    engine = make_engine(settings.database_url)
    try:
        with make_session_factory(engine).begin() as session:
            advertiser = get_advertiser(session, advertiser_name)
            expire_abandoned_scrapes(session, advertiser.id)
            running = running_scrape(session, advertiser.id)
            if running is not None:
                raise Conflict(
                    f"a scrape of {advertiser.name} is already running (started "
                    f"{running.started_at:%H:%M:%S}): wait for it to finish"
                )
            name = advertiser.name
    finally:
        engine.dispose()
    result = task_queue().scrape(name, actor.username)
    return Queued(task_id=result.id, advertiser=name)


def enqueue_training(*, quick: bool = False, promote: bool = False, seed: int | None = None) -> str:
    """Queue a training run on the training queue (:func:`train_task`); its task id."""
    return str(task_queue().train(quick=quick, promote=promote, seed=seed).id)


def enqueue_dataset_build(
    settings: Settings,
    actor: Actor | None,
    *,
    parent: int | str | None = "latest",
    since: datetime | None = None,
    min_size: tuple[int, int] = (0, 0),
    seed: int = 0,
    test_fraction: float = 0.2,
    named_test_sets: Sequence[NamedTestSet] = (),
    use_model: bool = True,
    freeze: bool = False,
) -> int:
    """Queue a dataset build on the training queue on behalf of ``actor``; the job's id.

    The request is checked here, so a bad parameter fails at once
    (:func:`tagging.jobs.dataset_builds.check_dataset_build`); then the job is recorded, queued,
    and :func:`dataset_build_task` runs it. Follow it with
    :func:`tagging.jobs.records.get_job` (or ``wait_for_job``): its ``phase``, ``done`` of
    ``total``, then ``state`` done with the version's summary as ``result``, or failed with its
    ``error``. The parameters are :func:`tagging.datasets.service.build_version`'s (see
    :class:`tagging.jobs.dataset_builds.DatasetBuildParams`), plus ``use_model`` (run the
    model-assisted prune when there is a production model) and ``freeze``.

    Raises:
        PermissionDenied: the actor may not curate datasets.
        InvalidInput: a parameter of the wrong type or out of range, or ``latest`` with no
            version and no production model to make version 1 from.
        NotFoundError: no such parent, or no such advertiser for a named test set.
        Conflict: the parent is a draft.
    """
    from tagging.jobs.dataset_builds import DatasetBuildParams, record_dataset_build

    params = DatasetBuildParams(
        parent=parent,
        since=since,
        min_size=min_size,
        seed=seed,
        test_fraction=test_fraction,
        named_test_sets=tuple(named_test_sets),
        use_model=use_model,
        freeze=freeze,
    )
    engine = make_engine(settings.database_url)
    try:
        sessions = make_session_factory(engine)
        job = record_dataset_build(settings, sessions, actor, params)
        _queue_job(sessions, job.id, task_queue().dataset_build)
    finally:
        engine.dispose()
    return job.id


def _queue_job(
    sessions: sessionmaker[Session], job_id: int, task: Callable[[int], object] | None
) -> None:
    """Queue recorded job ``job_id`` with ``task``; if it cannot be queued it would never run, so
    the job is failed with why (rather than left queued forever) and the error raised."""
    try:
        if task is None:
            raise RuntimeError("the queue has no task for this job")
        task(job_id)
    except Exception as exc:
        with sessions.begin() as session:
            fail_job(session, job_id, f"could not be queued: {exc}")
        raise


def enqueue_training_grid(
    settings: Settings, actor: Actor | None, dataset_version: int, grid: Grid
) -> int:
    """Queue the training of ``grid``'s candidates on frozen ``dataset_version`` on the training
    queue, on behalf of ``actor``; the job's id.

    The request is checked here (:func:`tagging.jobs.training.check_training`), so a bad one fails
    at once; then the job is recorded, queued, and :func:`training_grid_task` runs it. Follow it
    with :func:`tagging.jobs.records.get_job` (phase ``candidate 2/4: …, epoch 3/6``, ``done`` of
    ``total`` steps) and :func:`tagging.jobs.training.live_curves`.

    Raises:
        PermissionDenied: the actor may not train models.
        InvalidInput: a bad version number.
        NotFoundError: no such dataset version.
        Conflict: the version is a draft.
        ModelError: starting weights that are missing or do not fit.
    """
    from tagging.jobs.training import TrainingParams, record_training

    params = TrainingParams(dataset_version=dataset_version, grid=grid)
    engine = make_engine(settings.database_url)
    try:
        sessions = make_session_factory(engine)
        job = record_training(sessions, actor, params)
        _queue_job(sessions, job.id, task_queue().training_grid)
    finally:
        engine.dispose()
    return job.id
