"""The commands behind ``python -m tagging``; each returns the process exit code."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tagging.cli.console import progress_bar
from tagging.cli.datasets import add_dataset_parser, cmd_dataset
from tagging.cli.jobs import add_jobs_parser, cmd_jobs
from tagging.cli.models import add_models_parser, cmd_models
from tagging.cli.users import add_users_parser, cmd_users
from tagging.cli.weird import add_weird_parser, cmd_weird
from tagging.config import Settings
from tagging.errors import InvalidInput

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from tagging.ingest.scrape import ScrapeSummary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tagging",
        description="Tagdesk: the demo, the ML server, scrapes, reports, accounts and findings.",
    )
    parser.add_argument("--debug", action="store_true", help="on an error, print the traceback too")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="generate the demo inventory and register its advertisers")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--cdn-url", default="http://127.0.0.1:8765", help="where `cdn` serves it")
    demo.add_argument("--force", action="store_true", help="generate again even if present")

    cdn = sub.add_parser("cdn", help="serve the demo sitemaps and images over HTTP")
    cdn.add_argument("--host", default="127.0.0.1")
    cdn.add_argument("--port", type=int, default=8765)
    cdn.add_argument(
        "--latency-ms",
        type=float,
        default=0.0,
        help="milliseconds added before every response, like a CDN far away (benchmarks)",
    )

    serve = sub.add_parser("serve", help="run the ML server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8800)
    serve.add_argument(
        "--workers",
        type=int,
        help="worker processes (default: TAGGING_ML_WORKERS, else the number of cores)",
    )

    scrape = sub.add_parser("scrape", help="scrape an advertiser's sitemap (or all of them)")
    target = scrape.add_mutually_exclusive_group(required=True)
    target.add_argument("advertiser", nargs="?", help="the advertiser's name")
    target.add_argument("--all", action="store_true", help="every advertiser, one after another")
    scrape.add_argument("--json", action="store_true", help="print the summary as JSON")
    scrape.add_argument("--batch-size", type=int, default=64)

    report = sub.add_parser("report", help="print the items of an advertiser's latest scrape")
    report.add_argument("advertiser")
    report.add_argument("--json", action="store_true", help="JSON instead of a table")
    report.add_argument("--scrape", type=int, help="a scrape id instead of the latest")

    advertisers = sub.add_parser("advertisers", help="register and list advertisers")
    adv_sub = advertisers.add_subparsers(dest="action", required=True)
    add = adv_sub.add_parser("add", help="register an advertiser")
    add.add_argument("name")
    add.add_argument("--sitemap", required=True, help="the sitemap (or sitemap index) URL")
    add.add_argument(
        "--color-from-feed", action="store_true", help="the feed gives colors: skip the ML color"
    )
    listing = adv_sub.add_parser("list", help="list advertisers and their latest scrape")
    listing.add_argument("--json", action="store_true")
    token = adv_sub.add_parser("token", help="print a new fix-API token for the advertiser")
    token.add_argument("name")
    token.add_argument("--label", help="what the token is for (shown on the Accounts page)")

    fixes = sub.add_parser("fixes", help="record team fixes from a file")
    fixes_sub = fixes.add_subparsers(dest="action", required=True)
    imports = fixes_sub.add_parser(
        "import", help="record fixes from a CSV: advertiser, image_url (or image_key), field, value"
    )
    imports.add_argument("file", help="the CSV file ('-' for standard input)")
    imports.add_argument("--user", required=True, help="the account the fixes are recorded as")
    imports.add_argument("--json", action="store_true", help="print the outcome as JSON")

    train = sub.add_parser("train", help="train an Image Type model on generated data")
    train.add_argument("--quick", action="store_true", help="a small, fast configuration")
    train.add_argument("--seed", type=int, help="override the configuration's seed")
    train.add_argument("--epochs", type=int, help="override the configuration's epochs")
    train.add_argument("--promote", action="store_true", help="make it the production model")
    train.add_argument(
        "--evaluate-demo", action="store_true", help="also measure accuracy on the demo's truth"
    )

    sub.add_parser("migrate", help="bring the app database to the newest schema")

    worker = sub.add_parser(
        "worker", help="run the task queues' workers (scrapes, fix pushes, training)"
    )
    worker.add_argument(
        "--queue",
        choices=("all", "scrapes", "pushes", "training"),
        default="all",
        help="the queue to consume (default: all, one child process per queue)",
    )
    worker.add_argument(
        "--workers", type=int, default=2, help="worker threads (of the scrapes queue with all)"
    )

    sync = sub.add_parser("sync", help="push the manual fixes the ML server has not acknowledged")
    sync.add_argument(
        "--all",
        action="store_true",
        help="push every current fix and override again (after the ML cache was lost)",
    )

    api = sub.add_parser("api", help="run the advertisers' fix API")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8810)

    add_users_parser(sub)
    add_weird_parser(sub)
    add_dataset_parser(sub)
    add_jobs_parser(sub)
    add_models_parser(sub)

    up = sub.add_parser("up", help="set up and run everything (what `make run` does)")
    up.add_argument("--app-port", type=int, default=8501)
    up.add_argument("--ml-port", type=int, default=8800)
    up.add_argument("--cdn-port", type=int, default=8765)
    up.add_argument("--api-port", type=int, default=8810)
    return parser


def _sessions(settings: Settings) -> sessionmaker[Session]:
    from db.engine import make_engine, make_session_factory, migrate

    migrate(settings.database_url, create=settings.creates_database)
    return make_session_factory(make_engine(settings.database_url))


def cmd_migrate(args: argparse.Namespace) -> int:
    from db.engine import migrate

    settings = Settings.from_env()
    migrate(settings.database_url)
    print(f"database at the newest schema: {settings.database_url}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from tagging.demo.setup import ensure_demo

    settings = Settings.from_env()
    with progress_bar("drawing the demo") as progress:
        inventory = ensure_demo(
            settings, seed=args.seed, cdn_url=args.cdn_url, force=args.force, progress=progress
        )
    print(
        f"demo: {len(inventory.advertisers)} advertisers, {len(inventory.images)} images in "
        f"{settings.demo_dir}; sitemaps at {args.cdn_url}/sitemaps/"
    )
    return 0


def cmd_cdn(args: argparse.Namespace) -> int:
    from tagging.demo.cdn import admin_token, run

    settings = Settings.from_env()
    token = admin_token(settings.data_dir)  # what tagging.demo.stage sends to re-publish
    if not math.isfinite(args.latency_ms) or args.latency_ms < 0:
        raise InvalidInput(
            f"--latency-ms must be a finite number, 0 or more; got {args.latency_ms:g}"
        )
    run(
        settings.demo_dir,
        host=args.host,
        port=args.port,
        admin_token=token,
        latency_ms=args.latency_ms,
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from tagging.cli.serve import run_ml_server

    settings = Settings.from_env()
    if args.workers is not None and args.workers < 1:
        raise InvalidInput(f"--workers must be at least 1, got {args.workers}")
    workers = args.workers or settings.ml_workers
    run_ml_server(settings, host=args.host, port=args.port, workers=workers)
    return 0


def cmd_scrape(args: argparse.Namespace) -> int:
    from db.advertisers import advertiser_names
    from tagging.ingest.fetch import client_from_settings
    from tagging.ingest.scrape import ScrapeConfig, run_scrape
    from tagging.server.client import MLClient

    settings = Settings.from_env()
    sessions = _sessions(settings)
    # Two clients on purpose: the one fetching advertisers' sitemaps must not be allowed to reach
    # the ML server, or a sitemap could aim at our own services.
    client = client_from_settings(settings)
    ml = MLClient.from_settings(settings)
    if args.all:
        with sessions() as session:
            names = advertiser_names(session)
    else:
        names = [args.advertiser]
    summaries = []
    for name in names:
        with progress_bar(f"scraping {name}") as progress:
            summary = run_scrape(
                sessions,
                name,
                ml=ml,
                client=client,
                config=ScrapeConfig(batch_size=args.batch_size),
                progress=progress,
            )
        summaries.append(summary)
        if not args.json:
            _print_summary(summary)
    if args.json:
        payload = [s.as_dict() for s in summaries]
        print(json.dumps(payload if args.all else payload[0], indent=2))
    return 0 if all(s.status != "failed" for s in summaries) else 1


def _print_summary(summary: ScrapeSummary) -> None:
    rate = summary.items / summary.seconds if summary.seconds else 0.0
    print(
        f"{summary.advertiser}: {summary.status} · {summary.items} items · "
        f"{summary.cached} cached · {summary.classified} classified · {summary.failed} failed "
        f"({summary.ml_failures} ML failures) · {summary.seconds:.1f}s ({rate:.0f} items/s)"
    )
    for problem in summary.problems:
        print(f"  ! {problem}")


def cmd_report(args: argparse.Namespace) -> int:
    from db.advertisers import get_advertiser
    from db.models import Scrape
    from db.scrapes import latest_scrape, scrape_items
    from tagging.errors import NotFoundError

    settings = Settings.from_env()
    sessions = _sessions(settings)
    with sessions() as session:
        advertiser = get_advertiser(session, args.advertiser)
        if args.scrape is not None:
            scrape = session.get(Scrape, args.scrape)
            if scrape is None or scrape.advertiser_id != advertiser.id:
                raise NotFoundError(f"{advertiser.name} has no scrape {args.scrape}")
        else:
            scrape = latest_scrape(session, advertiser.id)
            if scrape is None:
                raise NotFoundError(f"{advertiser.name} has not been scraped yet")
        items = scrape_items(session, scrape.id)
        rows = [
            {
                "vehicle_url": item.page_url,
                "image_url": item.image_url,
                "image_key": item.image_key,
                "image_type": item.image_type,
                "color": item.color,
                "ml_image_type": item.ml_image_type,
                "ml_color": item.ml_color,
                "image_type_source": item.image_type_source,
                "color_source": item.color_source,
                "status": item.status,
                "error": item.error,
            }
            for item in items
        ]
        header = {
            "advertiser": advertiser.name,
            "scrape_id": scrape.id,
            "status": scrape.status,
            "finished_at": scrape.finished_at.isoformat() if scrape.finished_at else None,
        }
    if args.json:
        print(json.dumps({**header, "items": rows}, indent=2))
        return 0
    print(f"{header['advertiser']} · scrape {header['scrape_id']} · {header['status']}")
    for row in rows:
        print(
            f"{row['image_type']:<12} {row['color'] or '-':<8} {row['status']:<10} "
            f"{row['image_url']}"
        )
    return 0


def cmd_advertisers(args: argparse.Namespace) -> int:
    from db.advertisers import add_advertiser, advertiser_overview

    settings = Settings.from_env()
    sessions = _sessions(settings)
    if args.action == "token":
        from db.accounts import create_advertiser_token
        from db.advertisers import get_advertiser

        with sessions.begin() as session:
            advertiser = get_advertiser(session, args.name)
            label = args.label or "made with `advertisers token`"
            token = create_advertiser_token(session, None, advertiser.id, label, system=True)
        print(token)
        return 0
    if args.action == "add":
        with sessions.begin() as session:
            advertiser = add_advertiser(
                session, args.name, args.sitemap, color_from_feed=args.color_from_feed
            )
            print(f"added {advertiser.name} ({advertiser.sitemap_url})")
        return 0
    with sessions() as session:
        overview = advertiser_overview(session)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        **row.__dict__,
                        "scraped_at": row.scraped_at.isoformat() if row.scraped_at else None,
                    }
                    for row in overview
                ],
                indent=2,
            )
        )
        return 0
    for row in overview:
        scraped = row.scraped_at.strftime("%Y-%m-%d %H:%M") if row.scraped_at else "never"
        feed = " · color from feed" if row.color_from_feed else ""
        print(f"{row.name:<24} {row.items:>6} items · scraped {scraped}{feed} · {row.sitemap_url}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from tagging.ml.train import TrainConfig, train

    settings = Settings.from_env()
    config = TrainConfig.quick() if args.quick else TrainConfig()
    overrides = {k: v for k, v in (("seed", args.seed), ("epochs", args.epochs)) if v is not None}
    if overrides:
        config = config.replace(**overrides)
    with progress_bar("training", unit="step") as progress:
        result = train(config, settings.models_dir, progress=progress, promote=args.promote)
    print(result.summary())
    if args.evaluate_demo:
        from tagging.ml.color import EmbeddedColorModel
        from tagging.ml.evaluate import evaluate_on_demo, format_report
        from tagging.ml.inference import TypeClassifier

        classifier = TypeClassifier.load(settings.models_dir, result.version)
        report = evaluate_on_demo(settings.demo_dir, classifier, EmbeddedColorModel())
        print(format_report(report))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from tagging.jobs.worker import run_worker

    return run_worker(args.queue, args.workers)


def cmd_fixes(args: argparse.Namespace) -> int:
    from tagging.fixes import import_fixes_csv
    from tagging.server.client import MLClient

    settings = Settings.from_env()
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read {args.file}: {exc}") from None
    saved = import_fixes_csv(_sessions(settings), MLClient.from_settings(settings), args.user, text)
    outcome = saved.outcome
    recorded = len(outcome.fix_ids) if outcome else 0
    unchanged = outcome.unchanged if outcome else 0
    if args.json:
        print(
            json.dumps(
                {
                    "fix_ids": outcome.fix_ids if outcome else [],
                    "unchanged": unchanged,
                    "push_error": saved.push_error,
                }
            )
        )
    else:
        pending = f"; pending sync: {saved.push_error}" if saved.push_error else ""
        print(f"recorded {recorded} fixes ({unchanged} already had that value){pending}")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from tagging.fixes import push_all, push_pending
    from tagging.server.client import MLClient

    settings = Settings.from_env()
    push = push_all if args.all else push_pending
    report = push(_sessions(settings), MLClient.from_settings(settings))
    print(
        f"pushed {report.synced} fixes, {report.failed} failed, {report.pending} still pending"
        + (f": {report.error}" if report.error else "")
    )
    return 0 if report.error is None else 1


def cmd_api(args: argparse.Namespace) -> int:
    from tagging.api.app import run

    run(Settings.from_env(), host=args.host, port=args.port)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from tagging.cli.up import LaunchConfig, launch

    return launch(
        Settings.from_env(),
        LaunchConfig(
            app_port=args.app_port,
            ml_port=args.ml_port,
            cdn_port=args.cdn_port,
            api_port=args.api_port,
        ),
    )


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "demo": cmd_demo,
    "cdn": cmd_cdn,
    "serve": cmd_serve,
    "scrape": cmd_scrape,
    "report": cmd_report,
    "advertisers": cmd_advertisers,
    "train": cmd_train,
    "migrate": cmd_migrate,
    "up": cmd_up,
    "worker": cmd_worker,
    "sync": cmd_sync,
    "fixes": cmd_fixes,
    "api": cmd_api,
    "users": cmd_users,
    "weird": cmd_weird,
    "dataset": cmd_dataset,
    "jobs": cmd_jobs,
    "models": cmd_models,
}
