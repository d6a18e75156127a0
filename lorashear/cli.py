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


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="Hugging Face model folder, or 'demo' for the shipped demo model")
    p.add_argument("--data", action="append", metavar="SPEC",
                   help="evaluation text: 'demo' (demo corpus, validation split), 'demo:test', or [NAME=]PATH "
                        "(.jsonl/.json/.parquet/.csv/.txt[.gz], a saved dataset folder, or a hub name when online); "
                        "repeat for several sources (default: demo)")
    p.add_argument("--field", default="text", help="record field holding the text (default: text)")
    p.add_argument("--protocol", choices=("short", "long", "both"), default="both",
                   help="short: 128-token windows (LLM-Pruner); long: min(2048, context) windows (Wanda); both")
    p.add_argument("--max-tokens", type=int, default=None, help="score only the first N tokens of each source")
    p.add_argument("--no-cost", action="store_true", help="skip parameters/MACs/latency/throughput/memory")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda + bf16 when present, else cpu + fp32)")
    p.add_argument("--tasks", default=None, help="comma-separated lm-eval tasks (needs the [eval] extra)")
    p.add_argument("--include-path", default=None, help="folder of local lm-eval task YAML files")
    p.add_argument("--limit", type=float, default=None, help="lm-eval: examples per task")
    p.add_argument("--json", dest="json_out", default=None, metavar="OUT", help="also write the report as JSON")


@command("eval", help="Perplexity per data source (short/long protocols) and cost of a causal LM; prints a table.")
@arguments(_eval_args)
def _eval(args: argparse.Namespace) -> int:
    import json
    import os
    from pathlib import Path

    from .evaluate import evaluate_model

    protocols = ("short", "long") if args.protocol == "both" else (args.protocol,)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    report = evaluate_model(args.model, data=args.data or ["demo"], field=args.field, protocols=protocols,
                            max_tokens=args.max_tokens, cost=not args.no_cost, device=args.device, tasks=tasks,
                            include_path=args.include_path, limit=limit)
    head = ("source", "protocol", "window", "perplexity", "scored tokens")
    rows = [(r.source, r.protocol, str(r.window), f"{r.ppl:.3f}", f"{r.n_tokens:,}") for r in report.perplexity]
    widths = [max(len(x[i]) for x in rows + [head]) for i in range(len(head))]
    for r in [head] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    if report.cost:
        c = report.cost
        print(f"\nparameters {c.parameters:,}   MACs/token {c.macs_per_token:,} (seq {c.macs_seq_len})   "
              f"device {c.device} {c.dtype}")
        print(f"latency {c.latency_ms:.1f} ms (batch 1 x {c.latency_seq_len} tokens)   "
              f"throughput {c.throughput_tokens_per_s:,.0f} tokens/s (batch {c.throughput_batch_size})   "
              f"peak memory {c.peak_memory_bytes / 2**20:.1f} MiB [{c.peak_memory_method}]")
    for task, res in (report.lm_eval or {}).items():
        print(f"lm-eval {task}: " + ", ".join(f"{k}={v:.4f}" for k, v in res.items() if isinstance(v, float)))
    if args.json_out:
        out = Path(args.json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        os.replace(tmp, out)
        print(f"wrote {out}")
    return 0


def _app_args(p: argparse.ArgumentParser) -> None:
    from viz.options import add_arguments  # argparse only: no Dash import until the app runs

    add_arguments(p)


@command("app", help="Start the Dash app (browse the graph and groups, launch and watch jobs) on 127.0.0.1:8050.")
@arguments(_app_args)
def _app(args: argparse.Namespace) -> int:
    try:
        from viz.app import run
    except ImportError as exc:
        raise LorashearError(f"the app needs the [app] extra (pip install 'lorashear[app]'): {exc}") from None
    return run(args)
