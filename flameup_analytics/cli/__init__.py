"""The ``flameup-analytics`` command line (also ``python -m flameup_analytics``).

One module per command group (:mod:`._spool`, :mod:`._send`, :mod:`._check`,
:mod:`._import`, :mod:`._devserver`, :mod:`._relay`), each adding its parser and running its
commands; :mod:`._common` holds what they share. Exit codes: 0 success, 1 the command ran but did
not fully succeed (messages left, refused, a check failed), 2 bad usage or configuration; ``check``
adds 3 (passed with warnings).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .._version import __version__
from ..errors import ConfigurationError
from ._check import add_parser as add_check
from ._common import EXIT_USAGE, UsageError, configuration_message, usage
from ._devserver import add_parser as add_devserver
from ._import import add_parser as add_import
from ._relay import add_parser as add_relay
from ._send import add_parser as add_send
from ._spool import add_parser as add_spool

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        return usage(parser, args)
    try:
        code: int = args.run(args)
    except ConfigurationError as exc:
        print(f"flameup-analytics: {configuration_message(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"flameup-analytics: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flameup-analytics",
        description="Tools for the Flameup Python SDK. Reads FLAMEUP_API_KEY, FLAMEUP_WORKSPACE_ID "
        "and FLAMEUP_HOST like the client does.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in (add_spool, add_send, add_check, add_import, add_devserver, add_relay):
        add(commands)
    return parser
