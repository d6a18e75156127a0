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



def _graph_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model directory, or a config JSON file")
    p.add_argument("--meta", action="store_true", help="structure only: build on the meta device, load no weights")
    p.add_argument("--out", required=True, help="folder for graph.json and groups.json")
    p.add_argument("--width", type=int, default=100, help="characters of each reason to print")


@command("graph", help="Trace a model into its operator graph and removable groups; write JSON and print the groups.")
@arguments(_graph_args)
def _graph(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .groups import find_groups, save_groups
    from .trace import trace

    og = trace(args.model, meta=args.meta)
    groups = find_groups(og)
    out = Path(args.out)
    og.save(out / "graph.json")
    save_groups(groups, out / "groups.json")
    rows = [(g.id, g.kind, str(g.n_units), f"{g.params_per_unit:,}", "yes" if g.prunable else f"no: {(g.reason or '')[: args.width]}") for g in groups]
    head = ("group", "kind", "units", "params/unit", "prunable")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(4)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths + [0])))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths + [0])))
    print(f"\n{og.model_class}: {og.graph.number_of_nodes():,} graph nodes, {og.n_params:,} parameters, "
          f"{len(groups)} groups ({sum(g.prunable for g in groups)} prunable); wrote {out / 'graph.json'} and {out / 'groups.json'}")
    return 0

