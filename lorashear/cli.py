"""The ``lorashear`` command line: every subcommand lives here and only calls the library.

User mistakes (``LorashearError``) become one line on stderr and exit code 2; no traceback.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from .errors import LorashearError

# name -> (add_arguments, run); each run(args) returns an exit code.
_COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]] = {}


def command(name: str, help: str):
    """Register ``run`` under ``name``; the decorated function's ``add_arguments`` attribute fills the parser."""

    def wrap(run):
        _COMMANDS[name] = (getattr(run, "add_arguments", lambda p: None), run, help)
        return run

    return wrap


def arguments(fn: Callable[[argparse.ArgumentParser], None]):
    def wrap(run):
        run.add_arguments = fn
        return run

    return wrap


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lorashear", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_arguments, run, help_text) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except LorashearError as exc:
        print(f"lorashear {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lorashear {args.command}: interrupted", file=sys.stderr)
        return 130


# ---------------------------------------------------------------------------------------------- commands
# (each command: parse -> one library call -> print / write)

