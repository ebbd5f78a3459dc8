"""Command line: ``python -m tagging COMMAND``.

Commands: demo, cdn, serve, scrape, report, advertisers, train, migrate, up (what ``make run``
runs). Run ``python -m tagging COMMAND --help`` for each one's options. An error prints one line
and exits 1; ``python -m tagging --debug COMMAND`` prints its traceback too.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Callable, Sequence

from tagging.cli.failures import describe
from tagging.cli.main import COMMANDS, build_parser
from tagging.errors import TaggingError


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; any error ends it with one line on stderr and exit code 1.

    ``--debug`` (before the command) prints the traceback as well.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = COMMANDS[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # every failure: one line (the traceback with --debug)
        if args.debug:
            traceback.print_exc()
        message, code = describe(exc)
        if getattr(args, "json", False):
            print(json.dumps({"error": message, "code": code}))
        hint = "" if args.debug or isinstance(exc, TaggingError) else " (--debug shows more)"
        print(f"error: {message}{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
