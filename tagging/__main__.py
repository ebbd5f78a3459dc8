"""Command line: ``python -m tagging COMMAND``.

Commands: demo, cdn, serve, scrape, report, advertisers, train, migrate, up (what ``make run``
runs). Run ``python -m tagging COMMAND --help`` for each one's options.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from tagging.cli.main import COMMANDS, build_parser
from tagging.errors import TaggingError


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = COMMANDS[args.command]
    try:
        return handler(args)
    except TaggingError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"error": str(exc), "code": exc.code}))
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
