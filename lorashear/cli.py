"""The ``lorashear`` command line: every subcommand lives here and only calls the library.

User mistakes (``LorashearError``) become one line on stderr and exit code 2; no traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Callable, Iterator

from .errors import LorashearError
from .settings import SettingsError

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
    except SettingsError as exc:  # a field refused past the parser (e.g. by the planner): name it as a flag
        spelled = exc if exc.respelled else exc.spelled(
            lambda n: n if n in ("model", "pruned") else "--" + n.replace("_", "-"))  # positionals by their name
        print(f"lorashear {args.command}: error: {spelled}", file=sys.stderr)
        return 2
    except LorashearError as exc:
        print(f"lorashear {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lorashear {args.command}: interrupted", file=sys.stderr)
        return 130


# ---------------------------------------------------------------------------------------------- commands
# (each command: parse -> one library call -> print / write)


@contextlib.contextmanager
def _progress_bar(desc: str, *, off: bool = False) -> Iterator[Callable[[float, str], None]]:
    """A ``progress(fraction, stage)`` callback drawing a tqdm bar on stderr, created on the first call (so a run
    refused before its work starts prints no bar fragment), closed when the block ends."""
    bar = None

    def progress(fraction: float, stage: str) -> None:
        nonlocal bar
        if off:
            return
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(total=1000, desc=desc, file=sys.stderr, bar_format="{l_bar}{bar}| {elapsed} {postfix}")
        bar.n = int(fraction * 1000)
        bar.set_postfix_str(stage)

    try:
        yield progress
    finally:
        if bar is not None:
            bar.close()


def _set_threads(threads: int | None) -> None:
    """``--threads N``: torch's CPU threads (1 on a busy shared CPU keeps timings meaningful)."""
    if threads is None:
        return
    if threads < 1:
        raise LorashearError(f"--threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)



def _graph_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model directory (plain, pruned by lorashear, or a LoRA adapter), 'demo', or a config JSON file")
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
    from .evaluate_settings import EvalSettings
    from .settings import add_arguments

    p.add_argument("model", help="Hugging Face model folder, or 'demo' for the shipped demo model")
    add_arguments(p, EvalSettings)
    p.add_argument("--json", dest="json_out", default=None, metavar="OUT", help="also write the report as JSON")


@command("eval", help="Perplexity per data source (short/long protocols) and cost of a causal LM; prints a table.")
@arguments(_eval_args)
def _eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_model
    from .evaluate_settings import EvalSettings
    from .settings import from_args

    settings = from_args(EvalSettings, args)
    _set_threads(settings.threads)
    report = evaluate_model(args.model, **settings.evaluate_args())
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
        from .jsonio import write_json_atomic

        print(f"wrote {write_json_atomic(args.json_out, report.to_dict())}")
    return 0


def _analyze_args(p: argparse.ArgumentParser) -> None:
    from .knowledge.settings import AnalyzeSettings
    from .settings import add_arguments

    p.add_argument("model", help="Hugging Face model folder, or 'demo' for the shipped demo model")
    p.add_argument("--out", required=True, help="report file: .parquet (default when no suffix) or .json")
    add_arguments(p, AnalyzeSettings, groups={})
    p.add_argument("--figures", default=None, metavar="DIR", help="also write the figures (heads, channels, layers, distribution) here")
    p.add_argument("--figure-format", default="html,png", help="comma-separated: html, png (png needs kaleido; default: html,png)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


@command("analyze", help="Knowledge distribution: score every unit of every prunable group; write a report and print a per-layer summary.")
@arguments(_analyze_args)
def _analyze(args: argparse.Namespace) -> int:
    from .knowledge import summary_table
    from .knowledge.run import analyze_model
    from .knowledge.settings import AnalyzeSettings
    from .settings import from_args

    settings = from_args(AnalyzeSettings, args)
    formats = tuple(f.strip() for f in args.figure_format.split(",") if f.strip())
    if any(f not in ("html", "png") for f in formats) or not formats:
        raise LorashearError(f"--figure-format: use html and/or png, got {args.figure_format!r}")
    with _progress_bar(f"analyze ({settings.estimator})", off=args.no_progress) as progress:
        report = analyze_model(args.model, args.out, settings, progress=progress)
    print(summary_table(report))
    print(f"wrote {report.path}")
    if args.figures:
        try:
            from viz.knowledge_figures import write_figures
        except ImportError as exc:
            raise LorashearError(f"--figures needs plotly (pip install 'lorashear[app]'): {exc}") from None
        paths, warnings = write_figures(report, args.figures, formats)
        for w in warnings:
            print(f"note: {w}", file=sys.stderr)
        print(f"wrote {len(paths)} figure files to {args.figures}")
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


# ------------------------------------------------------------------------------------------- worker pool
def _worker_args(p: argparse.ArgumentParser) -> None:
    import os

    p.add_argument("--queue", default=os.environ.get("LORASHEAR_QUEUE"), metavar="redis://[:PASSWORD@]HOST:PORT/DB",
                   help="the Redis broker of the pool, as given to 'lorashear app --queue' (default: $LORASHEAR_QUEUE; "
                        "put a password there rather than on the command line, where ps shows it)")
    p.add_argument("--concurrency", type=int, default=None, help="jobs run at once (default: one per --gpus entry, else 1)")
    p.add_argument("--gpus", default=None, metavar="0,1,...", help="CUDA devices; each job slot gets one of them")
    p.add_argument("--runs", default=None, metavar="DIR",
                   help="where the app's runs folder is mounted on this machine (default: the same path as on the app's)")
    p.add_argument("--allow-entry", action="append", default=[], metavar="MODULE:FUNCTION",
                   help="also run jobs of this entry point (besides the built-in job kinds); repeatable")
    p.add_argument("--hostname", default=None, help="Celery node name (default: lorashear@HOST)")
    p.add_argument("--loglevel", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))


@command("worker", help="Run jobs of a 'lorashear app --queue' on this machine: a Celery worker on the Redis broker.")
@arguments(_worker_args)
def _worker(args: argparse.Namespace) -> int:
    if not args.queue:
        raise LorashearError("--queue redis://HOST:PORT/DB is required (or set LORASHEAR_QUEUE)")
    try:
        from .jobs.celery_app import run_worker
    except ImportError as exc:
        raise LorashearError(f"the worker needs the [queue] extra (pip install 'lorashear[queue]'): {exc}") from None
    gpus = tuple(g.strip() for g in (args.gpus or "").split(",") if g.strip())
    return run_worker(args.queue, concurrency=args.concurrency, gpus=gpus, runs=args.runs, allow=tuple(args.allow_entry),
                      hostname=args.hostname, loglevel=args.loglevel)


# ------------------------------------------------------------------------------------------- pruning
def _run_arguments(p: argparse.ArgumentParser) -> None:
    """The options of a command that runs a training (prune, recover): not settings of the run itself."""
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress output")


def _plan_args(p: argparse.ArgumentParser) -> None:
    from .prune.settings import PlanSettings
    from .settings import add_arguments

    p.add_argument("model", help="model folder, 'demo', or a config JSON with --meta")
    add_arguments(p, PlanSettings)


def _prune_args(p: argparse.ArgumentParser) -> None:
    from .prune.settings import PruneSettings
    from .settings import add_arguments

    p.add_argument("model", help="model folder, 'demo', a .gguf file or a named model")
    p.add_argument("--out", required=True, help="output folder (must be empty unless --resume)")
    add_arguments(p, PruneSettings, groups={"lhspg": "lhspg options", "loraprune": "lhspg/loraprune options",
                                             "llm-pruner": "baseline options", "flap": "baseline options"})
    _run_arguments(p)


def _plan_cmd_args(p: argparse.ArgumentParser) -> None:
    _plan_args(p)
    p.add_argument("--out", required=True, help="plan file (.json)")
    p.add_argument("--meta", action="store_true", help="structure only (a config file): units in index order")


@command("plan", help="Which units a prune run would remove at a target ratio; write plan.json and print a per-layer table.")
@arguments(_plan_cmd_args)
def _plan(args: argparse.Namespace) -> int:
    from .prune.preview import plan_model
    from .prune.settings import PlanSettings
    from .settings import from_args

    settings = from_args(PlanSettings, args)
    plan = plan_model(args.model, meta=args.meta, **settings.plan_args())
    path = plan.save(args.out)
    _print_plan(plan)
    print(f"wrote {path}")
    return 0


def _print_plan(plan) -> None:
    rows = sorted(plan.by_layer().items(), key=lambda kv: (kv[0] == "model", int(kv[0]) if kv[0].isdigit() else 0))
    kinds = list(plan.spec.kinds)
    print("layer  " + "  ".join(f"{k:>10}" for k in kinds))
    for layer, counts in rows:
        print(f"{layer:>5}  " + "  ".join(f"{counts.get(k, 0):>10,}" for k in kinds))
    print(f"parameters {plan.params_total:,} → {plan.params_total - plan.params_removed:,}: removed {plan.params_removed:,} "
          f"({plan.ratio_achieved:.4f}; target {plan.spec.ratio:g} = {plan.params_target:,}); scores: {plan.scores_from}")


@command("prune", help="Prune a model structurally to a parameter ratio (by default LLM-Pruner's one-shot Taylor over MLP channels, distilled and trained; --method lhspg for LoRAShear's own); write the smaller model, plan and run report.")
@arguments(_prune_args)
def _prune(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .export import load_hint
    from .prune.run import prune
    from .prune.settings import PruneSettings
    from .settings import from_args

    settings = from_args(PruneSettings, args)
    _set_threads(args.threads)
    with _progress_bar("prune", off=args.no_progress) as progress:
        report = prune(args.model, args.out, settings, resume=args.resume, progress=progress)
    if not report.get("main", True):  # accelerate launch: process 0 reports
        return 0
    b, a = report["eval_before"], report["eval_after"]
    print(f"parameters {report['params_before']:,} → {report['params_after']:,} (removed {report['ratio_achieved']:.4f}; "
          f"target {report['ratio_target']:g})")
    print(f"training after the structure is final: {report['train_reason']}")
    for p in settings.eval_protocols:
        print(f"mean perplexity ({p}): {b[f'mean_{p}']:.2f} dense → {a[f'mean_{p}']:.2f} pruned")
    if "cost" in b and "cost" in a:
        print(f"latency (batch 1 × {a['cost']['latency_seq_len']} tokens, {a['cost']['device']}): "
              f"{b['cost']['latency_ms']:.1f} ms dense → {a['cost']['latency_ms']:.1f} ms pruned")
    print(f"wrote {args.out}/model (the pruned model), plan.json, report.json")
    print(load_hint(Path(args.out) / "model"))
    return 0


# --------------------------------------------------------------------------------------------- export
def _export_args(p: argparse.ArgumentParser) -> None:
    from .export_settings import ExportSettings
    from .settings import add_arguments

    p.add_argument("model", help="a model folder (pruned or not; a prune run folder uses its model/), 'demo', a "
                                 ".gguf file or a named model")
    p.add_argument("--out", required=True, help="the output: a folder (--format hf) or a .gguf file (--format gguf)")
    add_arguments(p, ExportSettings)


@command("export", help="Write a model as a Hugging Face folder or a GGUF file that llama.cpp runs, optionally after removing a hand selection of units or a saved plan's.")
@arguments(_export_args)
def _export(args: argparse.Namespace) -> int:
    from .deploy import export
    from .export_settings import ExportSettings
    from .settings import from_args

    settings = from_args(ExportSettings, args)
    info = export(args.model, args.out, settings,
                  progress=lambda f, stage: print(f"[{f * 100:5.1f}%] {stage}", file=sys.stderr, flush=True))
    if info.get("selection"):
        print(f"removed {info['units_removed']} units of {info['groups']} groups ({info['selection']}): parameters "
              f"{info['params_before']:,} → {info['params_after']:,}")
    layers = info.get("layers") or []
    what = info.get("architecture") or info["format"]
    print(f"wrote {info['path']} ({info['format']}, {info['dtype']}, {what}, {len(layers)} layers)")
    print(f"load or run with: {info.get('hint')}")
    for note in info.get("notes") or []:
        print(f"note: {note}", file=sys.stderr)
    if info.get("llama_cpp"):  # --measure
        f = info["llama_cpp"]
        print(f"llama.cpp: prompt {f['prompt_tokens_per_s']:,.1f} tok/s, generation {f['gen_tokens_per_s']:,.1f} tok/s "
              f"({f['threads']} threads, median of {f['reps']}; load {f['load_avg_after']}); in {info['llama_cpp_json']}")
    return 0


# ------------------------------------------------------------------------------------------- recovery
def _recover_args(p: argparse.ArgumentParser) -> None:
    from .recover.settings import RecoverSettings
    from .settings import add_arguments

    p.add_argument("pruned", help="a pruned model folder (written by lorashear prune)")
    p.add_argument("--dense", default=None, help="the dense model it was pruned from (default: the source its sidecar names)")
    p.add_argument("--out", required=True, help="output folder (must be empty unless --resume)")
    add_arguments(p, RecoverSettings)
    _run_arguments(p)


@command("recover", help="Recover a pruned model: adaptive multi-source LoRA rounds, then instruction tuning; write the model and its trajectory.")
@arguments(_recover_args)
def _recover(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .export import load_hint
    from .recover.run import recover
    from .recover.settings import RecoverSettings
    from .settings import from_args

    st = from_args(RecoverSettings, args)
    _set_threads(args.threads)

    def progress(fraction: float, stage: str) -> None:
        if not args.no_progress:
            print(f"[{fraction * 100:5.1f}%] {stage}", file=sys.stderr, flush=True)

    rep = recover(args.pruned, args.out, st, dense=args.dense, resume=args.resume, progress=progress)
    if not rep.get("main", True):  # accelerate launch: process 0 reports
        return 0
    srcs = list(rep["reference_loss"])
    print("source      " + "  ".join(f"{s:>12}" for s in srcs))
    for p in st.eval_protocols:
        for tag, ev in (("pruned", rep["eval_before"]), ("recovered", rep["eval_after"])):
            vals = {r["source"]: r["ppl"] for r in ev["perplexity"] if r["protocol"] == p}
            print(f"{tag + ' ' + p:12s}" + "  ".join(f"{vals[s]:>12.2f}" for s in srcs))
    last = rep["rounds"][-1]
    print(f"rounds {len(rep['rounds']) - 1}, tokens {rep['tokens_stage1']:,}; final weights "
          + ", ".join(f"{s}={w:.2f}" for s, w in last["weights"].items()))
    if rep["instruct"]["history"]:
        h = rep["instruct"]["history"]
        print(f"instruction validation loss {h[0]['val_loss']:.3f} → best {rep['instruct']['best']['val_loss']:.3f} "
              f"(step {rep['instruct']['best']['step']}){'; ' + rep['instruct']['stopped'] if rep['instruct']['stopped'] else ''}")
    print(f"wrote {args.out}/model, trajectory.json, report.json")
    print(load_hint(Path(args.out) / "model"))
    return 0
