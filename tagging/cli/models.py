"""``python -m tagging models train|list``: Image Type candidates from a frozen dataset version.

``train`` trains a grid (:mod:`tagging.ml.candidates`: ``quick``, ``default`` or a TOML file) on
version N's train split, evaluates every candidate and the production model on the version's test
split, its named per-advertiser test sets and the robustness set, saves each candidate (never
promoted) and logs it to MLflow (the best gets the ``challenger`` alias). In the foreground it
shows a progress bar per candidate and epoch (quiet when stderr is not a terminal);
``--background`` queues it as a job on the training queue (``python -m tagging worker`` runs it)
and prints the job's id. ``--init-weights PATH`` starts every torchvision candidate from a local
state-dict file (checked against each before anything runs). Without ``--user`` a command acts as
the machine's operator (``system``, with a developer's rights), as the other commands do.

``list`` prints every model in the models folder: its architecture, its metrics per evaluation set
(candidates trained here record them) and which one is production.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from tagging.config import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from db.accounts import Actor
    from tagging.cli.jobs import PhaseBars
    from tagging.ml.candidates import CandidateConfig, EpochPoint, TrainingListener

DESCRIPTION = """\
Image Type candidates: train a grid of configurations on a frozen dataset version (in the
foreground or as a background job), evaluate them and production on the version's test split,
its per-advertiser test sets and the robustness set, and list the models with their metrics.
"""


def add_models_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``models`` command to ``subparsers`` (from ``add_subparsers``)."""
    models = subparsers.add_parser(
        "models",
        help="train candidates from a dataset version, list them with their metrics",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = models.add_subparsers(dest="action", required=True)
    train = sub.add_parser("train", help="train a grid of candidates on a frozen dataset version")
    train.add_argument("--dataset", type=int, required=True, metavar="VERSION")
    train.add_argument(
        "--grid",
        default="quick",
        help="quick (4 candidates, minutes), default (6, longer) or a FILE.toml",
    )
    train.add_argument(
        "--init-weights",
        metavar="PATH",
        help="start every torchvision candidate from this local state-dict file",
    )
    train.add_argument("--user", help="the account to train as (default: the operator)")
    train.add_argument(
        "--background",
        action="store_true",
        help="queue the training as a job on the training queue and print its id",
    )
    train.add_argument("--json", action="store_true", help="print the result as JSON")
    listing = sub.add_parser("list", help="every model, its metrics per evaluation set")
    listing.add_argument("--json", action="store_true", help="print a JSON list")


def cmd_models(args: argparse.Namespace) -> int:
    """Run one ``models`` action; 0 on success."""
    settings = Settings.from_env()
    if args.action == "list":
        return _list(args, settings)
    from db.engine import make_engine, make_session_factory, migrate

    migrate(settings.database_url, create=settings.creates_database)
    engine = make_engine(settings.database_url)
    try:
        return _train(args, settings, make_session_factory(engine))
    finally:
        engine.dispose()


def _train(args: argparse.Namespace, settings: Settings, sessions: sessionmaker[Session]) -> int:
    from tagging.cli.jobs import PhaseBars
    from tagging.jobs.training import TrainingParams, check_training, run_training
    from tagging.ml.candidates import load_grid

    grid = load_grid(args.grid).with_init_weights(args.init_weights)
    params = TrainingParams(dataset_version=args.dataset, grid=grid)
    actor = _actor(sessions, args.user)
    if args.background:
        from tagging.jobs.tasks import enqueue_training_grid

        job_id = enqueue_training_grid(settings, actor, args.dataset, grid)
        if args.json:
            print(json.dumps({"job": job_id, "kind": "training", "state": "queued"}))
        else:
            print(
                f"queued job {job_id} (training {len(grid.candidates)} candidates on version "
                f"{args.dataset}, on the training queue): python -m tagging jobs show {job_id}"
            )
        return 0
    check_training(sessions, actor, params)
    with PhaseBars(unit="step") as bars:
        result = run_training(settings, sessions, params, listener=_bar_listener(bars))
    if args.json:
        print(json.dumps(result.as_dict(), indent=2, ensure_ascii=False))
        return 0
    summary = result.as_dict()
    print(
        f"trained {len(result.candidates)} candidates on dataset version {result.dataset_version} "
        f"({result.grid} grid) in {result.seconds:.0f}s; best: {result.best} (not promoted)"
    )
    rows = [(c["name"], c["version"], c["evaluations"]) for c in summary["candidates"]]
    if result.production is not None:
        production = result.production
        rows.append((f"production {production['version']}", "", production["evaluations"]))
    _print_table(rows)
    if result.experiment:
        print(f"MLflow experiment {result.experiment}; the best is the 'challenger' alias")
    return 0


def _bar_listener(bars: PhaseBars) -> TrainingListener:
    """A listener driving ``bars`` (a bar per candidate's epoch), with a line per epoch's curve
    points above the bars when stderr is a terminal."""
    from tqdm import tqdm

    from tagging.ml.candidates import TrainingListener

    class BarListener(TrainingListener):
        def phase(self, name: str) -> None:
            bars.phase(name)

        def step(self, done: int, total: int) -> None:
            bars(done, total)

        def epoch(self, index: int, candidate: CandidateConfig, point: EpochPoint) -> None:
            if sys.stderr.isatty():
                tqdm.write(
                    f"{candidate.name} epoch {point.epoch}/{candidate.epochs}: train loss "
                    f"{point.train_loss:.3f}, val loss {point.val_loss:.3f}, val accuracy "
                    f"{point.val_accuracy:.1%}",
                    file=sys.stderr,
                )

    return BarListener()


def _list(args: argparse.Namespace, settings: Settings) -> int:
    from tagging.ml.model import list_versions, production_version, read_metadata

    models_dir = settings.models_dir
    production = production_version(models_dir)
    entries: list[dict[str, Any]] = []
    for version in reversed(list_versions(models_dir)):
        meta = read_metadata(models_dir, version)
        config = meta.train_config
        entries.append(
            {
                "version": version,
                "name": config.get("name") or version,
                "architecture": meta.architecture_name,
                "width": meta.width,
                "input_size": meta.input_size,
                "production": version == production,
                "created_at": meta.created_at,
                "dataset_version": meta.training_data.get("dataset_version"),
                "evaluations": meta.metrics.get("evaluations", {}),
                "images_per_second": meta.metrics.get("images_per_second"),
            }
        )
    if args.json:
        print(json.dumps(entries, indent=2, ensure_ascii=False))
        return 0
    if not entries:
        print(f"no model in {models_dir}: python -m tagging train, or models train --dataset N")
        return 0
    for entry in entries:
        mark = "*" if entry["production"] else " "
        dataset = entry["dataset_version"]
        print(
            f"{mark} {entry['version']}  {entry['name']}  ({entry['architecture']}, "
            f"{entry['input_size']}px"
            + (f", dataset {dataset}" if dataset is not None else "")
            + ")"
            + ("  PRODUCTION" if entry["production"] else "")
        )
        for set_name, metrics in entry["evaluations"].items():
            print(f"      {set_name:<24} {_cell(metrics)}")
    return 0


def _print_table(rows: list[tuple[str, str, dict[str, Any]]]) -> None:
    sets: list[str] = []
    for _, _, evaluations in rows:
        sets += [s for s in evaluations if s not in sets]
    width = max([len(name) for name, _, _ in rows] + [9])
    print(f"{'candidate':<{width}}  " + "  ".join(f"{s[:22]:>22}" for s in sets))
    for name, _, evaluations in rows:
        cells = [_cell(evaluations[s]) if s in evaluations else "—" for s in sets]
        print(f"{name:<{width}}  " + "  ".join(f"{c:>22}" for c in cells))


def _cell(metrics: dict[str, Any]) -> str:
    ece = metrics.get("ece")
    return f"acc {metrics.get('accuracy', 0):.1%}" + (f" ECE {ece:.3f}" if ece is not None else "")


def _actor(sessions: sessionmaker[Session], username: str | None) -> Actor:
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
