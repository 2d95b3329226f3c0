"""Internal. What the command groups share: exit codes, usage errors, and the connection options."""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from .._config import DEFAULT_HOST
from ..errors import ConfigurationError

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE = 0, 1, 2

# The client options a command line can set, as the shell spells them.
_FLAGS = {"api_key": "--api-key", "workspace_id": "--workspace-id", "host": "--host"}
# How the client's errors advise a Python caller: "pass api_key=... or set FLAMEUP_API_KEY".
_PYTHON_SPELLING = re.compile(r"\b(?P<option>api_key|workspace_id|host)=\.\.\.")


class UsageError(Exception):
    """The command line asks for something that cannot be done as asked (exit 2)."""


def usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def add_connection_options(parser: argparse.ArgumentParser, *, api_key: bool = True) -> None:
    """Add ``--host``, ``--workspace-id`` and (unless ``api_key=False``) ``--api-key``."""
    group = parser.add_argument_group("connection (each overrides its environment variable)")
    if api_key:
        group.add_argument("--api-key", metavar="KEY", help="the API key (default: $FLAMEUP_API_KEY)")
    group.add_argument("--workspace-id", metavar="ID", help="the workspace (default: $FLAMEUP_WORKSPACE_ID)")
    group.add_argument(
        "--host", metavar="URL", help=f"the API's address (default: $FLAMEUP_HOST, else {DEFAULT_HOST})"
    )


def client_options(args: argparse.Namespace) -> dict[str, Any]:
    """The connection options as ``Client`` arguments; None (not given) reads the environment."""
    return {"api_key": args.api_key, "workspace_id": args.workspace_id, "host": args.host}


def configuration_message(error: ConfigurationError) -> str:
    """The error's text, with the advice it gives Python callers (``api_key=...``) in the shell's terms."""
    message = _PYTHON_SPELLING.sub(lambda match: _FLAGS[match["option"]], str(error))
    if error.option in ("api_key", "workspace_id"):
        # Not English words (unlike "host"): every mention is the option's.
        message = re.sub(rf"\b{error.option}\b", _FLAGS[error.option], message)
    return message
