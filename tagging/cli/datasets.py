"""``python -m tagging dataset init|build|list|show|freeze|export|replay|archive``.

The same use cases the Dataset curation page calls (:mod:`tagging.datasets.service`).

``init`` makes version 1: the generated set the production model was trained on, re-rendered
from its metadata and frozen. ``build`` with the default ``--parent latest`` runs ``init`` itself
when there is no version yet, so every version's lineage ends there; ``--parent none`` builds from
the fixes alone. With a production model, ``build`` also runs the model-assisted prune (embedding
conflicts excluded, likely label errors listed for review); ``--no-model`` skips it. Without
``--user`` a command acts as the machine's operator (``system``, with a developer's rights), as the
other commands do; with it, as that account, whose role is checked.

``build --background`` checks the request, records a job and queues it on the training queue
(:func:`tagging.jobs.tasks.enqueue_dataset_build`: the same steps, run by
``python -m tagging worker``), and prints the job's id; ``--wait`` then follows its progress and
prints what a foreground build prints. ``python -m tagging jobs show ID`` reads it later.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from tagging.cli.console import progress_bar
from tagging.config import Settings
from tagging.errors import InvalidInput

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from db.accounts import Actor
    from tagging.datasets.archive import ArchiveStore
    from tagging.datasets.service import VersionReport
    from tagging.jobs.dataset_builds import DatasetBuildParams

    Sessions = sessionmaker[Session]

DESCRIPTION = """\
Dataset versions: build one from the team's fixes (pull, size filter, near-duplicate conflicts,
crop, split, extend the parent), list and show them, freeze, export an ImageFolder tree, and
replay one to check that its recipe and inputs give the same manifest.
"""


def add_dataset_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``dataset`` command to ``subparsers`` (from ``add_subparsers``)."""
    dataset = subparsers.add_parser(
        "dataset",
        help="build, list, show, freeze, export and replay dataset versions",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = dataset.add_subparsers(dest="action", required=True)
    init = sub.add_parser(
        "init", help="version 1: the generated set the production model was trained on"
    )
    init.add_argument("--user", help="the account to build as (default: the operator)")
    init.add_argument("--workers", type=int, default=2, help="rendering processes")
    init.add_argument("--json", action="store_true", help="print the version as JSON")
    build = sub.add_parser(
        "build",
        help="run the automatic steps into a new draft version (makes version 1 first if none)",
    )
    build.add_argument("--parent", default="latest", help="a version number, or latest")
    build.add_argument("--since", help="only fixes after this date (YYYY-MM-DD, UTC)")
    build.add_argument("--min-size", default="0x0", help="size filter, WIDTHxHEIGHT")
    build.add_argument("--seed", type=int, default=0, help="the split's random seed")
    build.add_argument(
        "--test-set",
        action="append",
        default=[],
        metavar="NAME=ADVERTISER",
        help="a named per-advertiser test set (repeatable); kept in every later version",
    )
    build.add_argument(
        "--no-model",
        action="store_true",
        help="skip the embedding pass and the label-issue ranking (no production model needed)",
    )
    build.add_argument("--freeze", action="store_true", help="freeze the version once built")
    build.add_argument("--user", help="the account to build as (default: the operator)")
    build.add_argument(
        "--background",
        action="store_true",
        help="queue the build as a job on the training queue and print its id",
    )
    build.add_argument(
        "--wait",
        action="store_true",
        help="with --background: follow the job's progress, then print what a build prints",
    )
    build.add_argument("--json", action="store_true", help="print the version as JSON")
    listing = sub.add_parser("list", help="every version, newest first")
    listing.add_argument("--json", action="store_true")
    show = sub.add_parser("show", help="one version: counts per split and class, exclusions")
    show.add_argument("version", type=int)
    show.add_argument("--json", action="store_true")
    freeze = sub.add_parser("freeze", help="freeze a draft: it never changes again")
    freeze.add_argument("version", type=int)
    freeze.add_argument("--user", help="the account to freeze as (default: the operator)")
    freeze.add_argument("--json", action="store_true")
    export = sub.add_parser("export", help="write manifest.csv and {train,test}/{class}/ images")
    export.add_argument("version", type=int)
    export.add_argument("--out", required=True, help="a new or empty folder")
    export.add_argument("--json", action="store_true")
    replay = sub.add_parser("replay", help="rebuild a version; is the manifest the same?")
    replay.add_argument("version", type=int)
    replay.add_argument("--json", action="store_true")
    archive = sub.add_parser("archive", help="fetch the fixed images not archived yet (retry)")
    archive.add_argument("--json", action="store_true")


def cmd_dataset(args: argparse.Namespace) -> int:
    """Run one ``dataset`` action; 0 on success (``replay``: 1 when the manifest differs)."""
    from db.engine import make_engine, make_session_factory, migrate
    from tagging.datasets.archive import archive_from_settings

    settings = Settings.from_env()
    migrate(settings.database_url, create=settings.creates_database)
    engine = make_engine(settings.database_url)
    try:
        sessions = make_session_factory(engine)
        archive = archive_from_settings(settings)
        handler = _ACTIONS[args.action]
        return handler(args, settings, sessions, archive)
    finally:
        engine.dispose()


def _actor(sessions: Sessions, username: str | None) -> Actor:
    from db.accounts import SYSTEM_ACTOR, Actor, account_actor
    from db.models import Role
    from tagging.errors import PermissionDenied

    if username is None:
        # The operator at the machine's shell: a developer's rights, recorded as "system".
        return Actor(username=SYSTEM_ACTOR, role=Role.DEVELOPER)
    with sessions() as session:
        actor = account_actor(session, username)
    if actor is None:
        raise PermissionDenied(f"no enabled account named {username!r}")
    return actor


def _since(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"--since must be a date (YYYY-MM-DD), got {text!r}") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _build(
    args: argparse.Namespace, settings: Settings, sessions: Sessions, archive: ArchiveStore
) -> int:
    from tagging.curation.size import parse_size
    from tagging.jobs.dataset_builds import (
        DatasetBuildParams,
        check_dataset_build,
        run_dataset_build,
        test_sets_of,
    )

    if args.wait and not args.background:
        raise InvalidInput("--wait follows a background build: add --background")
    params = DatasetBuildParams(
        parent=None if args.parent in ("none", "") else args.parent,
        since=_since(args.since),
        min_size=parse_size(args.min_size),
        seed=args.seed,
        named_test_sets=test_sets_of(args.test_set),
        use_model=not args.no_model,
        freeze=args.freeze,
    )
    actor = _actor(sessions, args.user)
    if args.background:
        return _build_in_background(args, settings, sessions, actor, params)
    from tagging.cli.jobs import PhaseBars

    actor, params = check_dataset_build(settings, sessions, actor, params)
    with PhaseBars() as bars:
        outcome = run_dataset_build(
            settings, sessions, actor, params, progress=bars, phase=bars.phase
        )
    first = outcome.first
    if first is not None and not args.json:
        print(f"made version 1 from the model's generated training set ({_rows(first)} rows)")
    _print_report(outcome.report, args.json)
    return 0


def _build_in_background(
    args: argparse.Namespace,
    settings: Settings,
    sessions: Sessions,
    actor: Actor,
    params: DatasetBuildParams,
) -> int:
    """Queue the build as a job; with ``--wait``, follow it and print what a build prints."""
    from tagging.cli.jobs import follow_job
    from tagging.datasets.service import show_version
    from tagging.jobs.tasks import enqueue_dataset_build

    job_id = enqueue_dataset_build(
        settings,
        actor,
        parent=params.parent,
        since=params.since,
        min_size=params.min_size,
        seed=params.seed,
        test_fraction=params.test_fraction,
        named_test_sets=params.named_test_sets,
        use_model=params.use_model,
        freeze=params.freeze,
    )
    if not args.wait:
        if args.json:
            print(json.dumps({"job": job_id, "kind": "dataset_build", "state": "queued"}))
        else:
            print(
                f"queued job {job_id} (dataset build, on the training queue): "
                f"python -m tagging jobs show {job_id}"
            )
        return 0
    print(f"queued job {job_id} (dataset build): following it", file=sys.stderr)
    job = follow_job(sessions, job_id)
    if job.state != "done" or job.result is None:
        message = f"job {job_id} failed: {job.error or job.state}"
        if args.json:
            print(json.dumps({"error": message, "code": "job_failed", "job": job_id}))
        print(f"error: {message}", file=sys.stderr)
        return 1
    first = job.result.get("first_version")
    if isinstance(first, dict) and not args.json:
        print(f"made version 1 from the model's generated training set ({first.get('rows')} rows)")
    _print_report(show_version(sessions, int(job.result["version"])), args.json)
    return 0


def _init(
    args: argparse.Namespace, settings: Settings, sessions: Sessions, archive: ArchiveStore
) -> int:
    from tagging.datasets.service import first_version

    actor = _actor(sessions, args.user)
    with progress_bar("rendering", unit="img") as bar:
        report = first_version(
            sessions, actor, archive, settings.models_dir, workers=args.workers, progress=bar
        )
    _print_report(report, args.json)
    return 0


def _rows(report: VersionReport) -> int:
    return int(report.version.counts.get("rows") or 0)


def _print_report(report: VersionReport, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.as_dict(), indent=2, ensure_ascii=False))
        return
    v = report.version
    parent = f" (parent {v.parent})" if v.parent is not None else ""
    print(
        f"version {v.number}{parent} · {v.state} · by {v.created_by} · {v.counts.get('rows')} rows"
    )
    for split, counts in report.by_split.items():
        print(f"  {split:<5} " + " · ".join(f"{name} {n}" for name, n in counts.items()))
    if report.exclusions:
        print("  excluded: " + " · ".join(f"{k} {n}" for k, n in report.exclusions.items()))
    for warning in report.warnings:
        print(f"  ! {warning}")
    model_split = v.inputs.get("model_split")
    if isinstance(model_split, dict):
        print(
            f"  generated by {v.inputs.get('generator')} seed {v.inputs.get('seed')}, model "
            f"{v.inputs.get('model')}: its own split leaked {model_split.get('leaking_pairs')} "
            "near-duplicate pairs; this split is grouped"
        )
    prune = report.prune
    if prune:
        print(
            f"  model {prune['model']}: {prune['embedded']} embedded in "
            f"{prune['inference_seconds']}s · {len(prune['embedding_conflicts'])} embedding "
            f"conflicts · {prune['label_issues_total']} likely label errors (for review)"
        )
        for issue in prune["label_issues"][:10]:
            print(
                f"    #{issue['rank']:<3} {issue['sha256'][:12]} {issue['given']} → "
                f"{issue['suggested']} ({issue['self_confidence']:.3f}) "
                f"{issue['advertiser'] or '-'} · {issue['origin']}"
            )
        shares = list(prune["advertisers"].items())[:5]
        if shares:
            print(
                "    flagged share by advertiser: " + ", ".join(f"{a} {s:.0%}" for a, s in shares)
            )
    print(f"  manifest sha256 {v.manifest_sha256}")


def _list(
    args: argparse.Namespace, settings: Settings, sessions: Sessions, archive: ArchiveStore
) -> int:
    from tagging.datasets.service import list_versions

    versions = list_versions(sessions)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "version": v.number,
                        "parent": v.parent,
                        "state": v.state,
                        "created_by": v.created_by,
                        "created_at": v.created_at.isoformat(),
                        "manifest_sha256": v.manifest_sha256,
                        "counts": v.counts,
                    }
                    for v in versions
                ],
                indent=2,
            )
        )
        return 0
    if not versions:
        print("no dataset versions yet: python -m tagging dataset build")
    for v in versions:
        parent = v.parent if v.parent is not None else "-"
        print(
            f"{v.number:>4} {v.state:<7} parent {parent!s:<4} {v.counts.get('included', 0):>7} "
            f"training rows · {v.created_at:%Y-%m-%d %H:%M} by {v.created_by} · "
            f"{v.manifest_sha256[:12]}"
        )
    return 0


def _show(
    args: argparse.Namespace, settings: Settings, sessions: Sessions, archive: ArchiveStore
) -> int:
    from tagging.datasets.service import show_version

    _print_report(show_version(sessions, args.version), args.json)
    return 0


def _freeze(
    args: argparse.Namespace, settings: Settings, sessions: Sessions, archive: ArchiveStore
) -> int:
    from tagging.datasets.service import freeze

    version = freeze(sessions, _actor(sessions, args.user), args.version)
    if args.json:
        print(json.dumps({"version": version.number, "state": version.state}))
    else:
        print(f"version {version.number} frozen · manifest sha256 {version.manifest_sha256}")
    return 0


def _export(
    args: argparse.Namespace, settings: Settings, sessions: Sessions, archive: ArchiveStore
) -> int:
    from tagging.datasets.service import export_version

    report = export_version(sessions, archive, args.version, Path(args.out))
    if args.json:
        print(
            json.dumps(
                {"out": str(report.out_dir), "images": report.images, "by_split": report.by_split}
            )
        )
    else:
        print(f"exported {report.images} images of version {args.version} to {report.out_dir}")
    return 0


def _replay(
    args: argparse.Namespace, settings: Settings, sessions: Sessions, archive: ArchiveStore
) -> int:
    from tagging.datasets.service import replay_version

    report = replay_version(sessions, archive, args.version)
    if args.json:
        print(json.dumps(report.as_dict()))
    elif report.same:
        print(f"version {args.version}: same manifest ({report.replayed_sha256})")
    else:
        why = "its inputs changed" if not report.same_inputs else "the steps give another result"
        print(
            f"version {args.version}: DIFFERENT manifest ({why}): stored "
            f"{report.stored_sha256}, replayed {report.replayed_sha256}"
        )
    return 0 if report.same else 1


def _archive(
    args: argparse.Namespace, settings: Settings, sessions: Sessions, archive: ArchiveStore
) -> int:
    from tagging.datasets.service import archive_pending
    from tagging.ingest.fetch import client_from_settings

    with client_from_settings(settings) as client:
        report = archive_pending(sessions, archive, client)
    if args.json:
        print(
            json.dumps({"stored": report.stored, "failed": report.failed, "errors": report.errors})
        )
    else:
        print(f"archived {report.stored} images, {report.failed} failed (retried next time)")
    return 0


_ACTIONS = {
    "init": _init,
    "build": _build,
    "list": _list,
    "show": _show,
    "freeze": _freeze,
    "export": _export,
    "replay": _replay,
    "archive": _archive,
}
