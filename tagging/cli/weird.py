"""``python -m tagging weird [ADVERTISER] [--json] [--refresh]``: open weird-result findings.

For scripts and alerting: the exit code is 0 whether or not there are findings (an error, e.g. an
unknown advertiser, exits 1); ``--json`` prints a list of findings, most severe first::

    python -m tagging weird --json | jq '.[] | select(.severity == "critical")'
"""

from __future__ import annotations

import argparse
import json

from tagging.config import Settings

DESCRIPTION = """\
Print the open weird-result findings (most severe first), of every advertiser or of one.
Exit code 0 whether there are findings or not; --json for scripts and alerting.
"""


def add_weird_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``weird`` command to ``subparsers`` (from ``add_subparsers``)."""
    weird = subparsers.add_parser(
        "weird",
        help="print open weird-result findings (for scripts and alerting)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    weird.add_argument("advertiser", nargs="?", help="only this advertiser's findings")
    weird.add_argument("--json", action="store_true", help="a JSON list instead of text")
    weird.add_argument(
        "--refresh", action="store_true", help="run every detector first (as after a scrape)"
    )


def cmd_weird(args: argparse.Namespace) -> int:
    """Print the open findings; 0 on success, whatever they say."""
    from db.advertisers import get_advertiser
    from db.engine import make_engine, make_session_factory, migrate
    from db.findings import list_findings
    from tagging.detectors.refresh import refresh_findings

    settings = Settings.from_env()
    migrate(settings.database_url, create=settings.creates_database)
    engine = make_engine(settings.database_url)
    try:
        sessions = make_session_factory(engine)
        advertiser_id = None
        if args.advertiser:
            with sessions() as session:
                advertiser_id = get_advertiser(session, args.advertiser).id
        if args.refresh:
            with sessions.begin() as session:
                refresh_findings(session)
        with sessions() as session:
            findings = list_findings(session, advertiser_id=advertiser_id)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps([f.as_dict() for f in findings], indent=2, ensure_ascii=False))
        return 0
    if not findings:
        print("no open findings")
        return 0
    for finding in findings:
        where = f"{finding.advertiser or '-'}" + (
            f" · scrape {finding.scrape_id}" if finding.scrape_id else ""
        )
        print(f"[{finding.severity}] {finding.case} · {where} · finding {finding.id}")
        print(f"  {finding.explanation}")
    return 0
