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
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (use 1 on a busy shared CPU: timings stay meaningful)")
    p.add_argument("--json", dest="json_out", default=None, metavar="OUT", help="also write the report as JSON")


@command("eval", help="Perplexity per data source (short/long protocols) and cost of a causal LM; prints a table.")
@arguments(_eval_args)
def _eval(args: argparse.Namespace) -> int:
    import json
    import os
    from pathlib import Path

    from .evaluate import evaluate_model

    _set_threads(args.threads)
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


def _analyze_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="Hugging Face model folder, or 'demo' for the shipped demo model")
    p.add_argument("--estimator", default="lora-taylor", choices=("ablation", "lora-taylor", "taylor", "magnitude"),
                   help="ablation: measured loss increase (ground truth, slow); lora-taylor: LoRAPrune's estimate from "
                        "LoRA gradients (memory-light); taylor: LLM-Pruner's Taylor scores (base-weight gradients); "
                        "magnitude: weight norm (no data). Default: lora-taylor")
    p.add_argument("--data", action="append", metavar="SPEC",
                   help="calibration text: 'demo' (demo corpus, validation split), 'demo:test', or [NAME=]PATH; "
                        "repeat for several sources, samples are split evenly (default: demo)")
    p.add_argument("--field", default="text", help="record field holding the text (default: text)")
    p.add_argument("--samples", type=int, default=16, help="calibration windows (default: 16)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per calibration window (default: 128)")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration windows and of fresh LoRA adapters")
    p.add_argument("--batch-size", type=int, default=None, help="windows per forward (default: all at once)")
    p.add_argument("--variant", default=None, help="taylor: first (|W·∇W|, default), second (|W·∇W − ½·W·H·W|) or vector (|Σ W·∇W|)")
    p.add_argument("--aggregate", default=None, help="taylor / lora-taylor: combine a unit's slices by sum (default), prod, max or last")
    p.add_argument("--rank", type=int, default=None, help="lora-taylor: rank of the fresh LoRA adapters (default 8)")
    p.add_argument("--alpha", type=float, default=None, help="lora-taylor: LoRA alpha (default 16)")
    p.add_argument("--bins", default=None, metavar="KIND=N,...",
                   help="ablation: units per ablated block, e.g. attention=1,mlp=16,hidden=16 (the default)")
    p.add_argument("--no-whole-groups", action="store_true", help="ablation: skip zeroing each layer's whole attention / MLP")
    p.add_argument("--gamma", type=float, default=None, help="mark the top GAMMA fraction (0 <= GAMMA < 1) unprunable")
    p.add_argument("--select", default="group", choices=("unit", "layer", "group"),
                   help="what GAMMA counts: node groups (one layer's attention or MLP; the paper's, default), layers or units")
    p.add_argument("--scope", default="global", choices=("global", "group"), help="units: rank across all groups (default) or within each group")
    p.add_argument("--by", default="density", choices=("density", "score"), help="rank by score per parameter (default) or by score")
    p.add_argument("--out", required=True, help="report file: .parquet (default when no suffix) or .json")
    p.add_argument("--figures", default=None, metavar="DIR", help="also write the figures (heads, channels, layers, distribution) here")
    p.add_argument("--figure-format", default="html,png", help="comma-separated: html, png (png needs kaleido; default: html,png)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda + bf16 when present, else cpu + fp32)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


_ANALYZE_ONLY = {"variant": ("taylor",), "aggregate": ("taylor", "lora-taylor"), "rank": ("lora-taylor",),
                 "alpha": ("lora-taylor",), "bins": ("ablation",), "no_whole_groups": ("ablation",)}


@command("analyze", help="Knowledge distribution: score every unit of every prunable group; write a report and print a per-layer summary.")
@arguments(_analyze_args)
def _analyze(args: argparse.Namespace) -> int:
    from .data import DEMO_MODEL_DIR
    from .loading import load_model
    from .knowledge import analyze, calibration_data, check_gamma, summary_table
    from .knowledge.estimators import AGGREGATIONS, TAYLOR_VARIANTS

    for opt, ests in _ANALYZE_ONLY.items():
        if getattr(args, opt) not in (None, False) and args.estimator not in ests:
            raise LorashearError(f"--{opt.replace('_', '-')} applies to {' / '.join(ests)} only, not {args.estimator}")
    if args.gamma is not None:
        check_gamma(args.gamma)
    options: dict = {}
    if args.variant is not None:
        if args.variant not in TAYLOR_VARIANTS:
            raise LorashearError(f"--variant must be one of {', '.join(TAYLOR_VARIANTS)}, got {args.variant!r}")
        options["variant"] = args.variant
    if args.aggregate is not None:
        if args.aggregate not in AGGREGATIONS:
            raise LorashearError(f"--aggregate must be one of {', '.join(AGGREGATIONS)}, got {args.aggregate!r}")
        options["aggregate"] = args.aggregate
    if args.rank is not None:
        options["rank"] = args.rank
    if args.alpha is not None:
        options["alpha"] = args.alpha
    if args.bins:
        bins = {}
        for part in args.bins.split(","):
            kind, _, n = part.partition("=")
            if not n.strip().isdigit() or int(n) < 1:
                raise LorashearError(f"--bins: expected KIND=N with N >= 1 (e.g. mlp=16), got {part!r}")
            bins[kind.strip()] = int(n)
        options["bins"] = bins
    if args.no_whole_groups:
        options["whole_groups"] = False
    if args.batch_size is not None and args.estimator != "magnitude":
        options["batch_size"] = args.batch_size
    if args.estimator == "lora-taylor":
        options["seed"] = args.seed
    formats = tuple(f.strip() for f in args.figure_format.split(",") if f.strip())
    if any(f not in ("html", "png") for f in formats) or not formats:
        raise LorashearError(f"--figure-format: use html and/or png, got {args.figure_format!r}")

    model, tokenizer = load_model(args.model, device=args.device)
    source = str(DEMO_MODEL_DIR) if args.model == "demo" else args.model
    samples, data = None, None
    if args.estimator != "magnitude":
        samples, data = calibration_data(tokenizer, args.data or ["demo"], n_samples=args.samples, seq_len=args.seq_len,
                                         seed=args.seed, model=model, field=args.field)
    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if args.no_progress:
            return
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(total=total, desc=f"analyze ({args.estimator})", unit="step", file=sys.stderr)
        bar.update(done - bar.n)

    try:
        report = analyze(model, samples, estimator=args.estimator, source=source, data=data, gamma=args.gamma,
                         select_level=args.select, select_scope=args.scope, select_by=args.by, progress=progress, **options)
    finally:
        if bar is not None:
            bar.close()
    path = report.save(args.out)
    print(summary_table(report))
    print(f"wrote {path}")
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
def _plan_args(p: argparse.ArgumentParser, *, run: bool = False) -> None:
    p.add_argument("model", help="model folder, 'demo'" + ("" if run else ", or a config JSON with --meta"))
    p.add_argument("--ratio", type=float, required=True, help="fraction of the model's parameters to remove, in (0, 1)")
    p.add_argument("--kinds", default="attention,mlp", help="group kinds that may be pruned: attention (whole kv heads with their queries), "
                   "query_heads (GQA: the i-th query head of every kv group), mlp, hidden (default: attention,mlp)")
    p.add_argument("--allocation", default=None if run else "global", choices=("global", "uniform"),
                   help="global: by saliency per parameter across layers; uniform: the same fraction in every layer"
                        + (" (default: the method's — uniform for llm-pruner, else global)" if run else ""))
    p.add_argument("--layers", default=None, metavar="START:STOP", help="only prune these decoder layers, e.g. 4:30 or 0.1:0.9"
                   + (" (default: all; llm-pruner: 0.125:0.9375, the paper's 4–29 of 32)" if run else ""))
    p.add_argument("--align", type=int, default=None, metavar="N", help="keep every pruned width a multiple of N")
    p.add_argument("--knowledge", default=None, metavar="REPORT", help="knowledge report (lorashear analyze) of this model")
    p.add_argument("--gamma", type=float, default=None, help="protect the top GAMMA of the report (needs --knowledge)")
    p.add_argument("--gamma-level", default="group", choices=("unit", "layer", "group"),
                   help="what GAMMA ranks: node groups (one layer's attention or MLP; the paper's default), layers or units")


def _prune_args(p: argparse.ArgumentParser) -> None:
    _plan_args(p, run=True)
    p.add_argument("--out", required=True, help="output folder (must be empty unless --resume)")
    p.add_argument("--data", action="append", metavar="SPEC", help="training text: demo (train split) or [NAME=]PATH; repeatable")
    p.add_argument("--eval-data", action="append", metavar="SPEC", help="evaluation text (default: demo, validation split)")
    p.add_argument("--method", default="lhspg",
                   help="pruning method: lhspg (default), or a baseline on the same groups and budget: llm-pruner, "
                        "loraprune, flap, magnitude, random (lorashear.prune.methods.METHODS; docs/baselines.md)")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps in all: warm-up, periods and after (default 200; "
                   "0 = no training, for the one-shot methods flap, llm-pruner, magnitude, random)")
    g = p.add_argument_group("lhspg options")
    g.add_argument("--warmup-steps", type=int, default=None, help="LoRA warm-up steps (lhspg, loraprune; default: 10%% of --steps)")
    g.add_argument("--periods", type=int, default=None, help="pruning periods (default 4)")
    g.add_argument("--period-steps", type=int, default=None, help="steps per period (default: 30%% of --steps over the periods)")
    g.add_argument("--epsilon", type=float, default=None, help="half-space projection threshold ε in [0, 1) (default 0)")
    g.add_argument("--saliency", default=None, choices=("lora-taylor", "magnitude"), help="LHSPG's per-unit saliency (default lora-taylor)")
    g.add_argument("--score-every", type=int, default=None, help="update the saliency EMA every N steps (default 1)")
    g.add_argument("--no-merge-survivors", dest="merge_survivors", action="store_const", const=False, default=None,
                   help="do not merge surviving units' LoRA at period ends")
    b = p.add_argument_group("baseline options")
    b.add_argument("--taylor-variant", default=None,
                   help="llm-pruner: element-wise first order (default), second order (diagonal Fisher), vector-wise")
    b.add_argument("--aggregate", default=None, help="llm-pruner: per-unit aggregation (default sum)")
    b.add_argument("--calib-samples", type=int, default=None, help="llm-pruner (default 10), flap (default 128): calibration windows of --seq-len tokens")
    b.add_argument("--mask-every", type=int, default=None, help="loraprune: steps between mask updates (default 10)")
    b.add_argument("--cooldown-steps", type=int, default=None, help="loraprune: steps after the last mask update (default: 10%% of --steps)")
    b.add_argument("--no-bias-compensation", dest="bias_compensation", action="store_const", const=False, default=None,
                   help="flap: no bias compensation")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--lora-targets", default="all-linear", help="all-linear (every linear projection) or comma-separated module names")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--distill", type=float, default=0.0, help="weight of a KL term against the dense model's logits")
    p.add_argument("--eval-tokens", type=int, default=16384, help="tokens per evaluation source (before and after)")
    p.add_argument("--no-latency", action="store_true", help="skip the dense/pruned latency measurement")
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda + bf16 when present, else cpu + fp32)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _kinds(text: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in text.split(",") if k.strip())


def _plan_cmd_args(p: argparse.ArgumentParser) -> None:
    _plan_args(p)
    p.add_argument("--out", required=True, help="plan file (.json)")
    p.add_argument("--meta", action="store_true", help="structure only (a config file): units in index order")


@command("plan", help="Which units a prune run would remove at a target ratio; write plan.json and print a per-layer table.")
@arguments(_plan_cmd_args)
def _plan(args: argparse.Namespace) -> int:
    from .prune.preview import plan_model

    plan = plan_model(args.model, ratio=args.ratio, kinds=_kinds(args.kinds), allocation=args.allocation,
                      layers=args.layers, align=args.align, knowledge=args.knowledge, gamma=args.gamma,
                      gamma_level=args.gamma_level, meta=args.meta)
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


@command("prune", help="Prune a model structurally (LHSPG on LoRA, or a baseline: --method) to a parameter ratio; write the smaller model, plan and run report.")
@arguments(_prune_args)
def _prune(args: argparse.Namespace) -> int:
    from .prune.run import PruneSettings, prune

    _set_threads(args.threads)
    settings = PruneSettings(
        ratio=args.ratio, method=args.method, kinds=_kinds(args.kinds), allocation=args.allocation, layers=args.layers,
        align=args.align, knowledge=args.knowledge, gamma=args.gamma, gamma_level=args.gamma_level, steps=args.steps,
        warmup_steps=args.warmup_steps, periods=args.periods, period_steps=args.period_steps, batch_size=args.batch_size,
        seq_len=args.seq_len, lora_r=args.lora_r, lora_alpha=args.lora_alpha, lora_targets=args.lora_targets, lr=args.lr,
        epsilon=args.epsilon, saliency=args.saliency, score_every=args.score_every,
        merge_survivors=args.merge_survivors, taylor_variant=args.taylor_variant, aggregate=args.aggregate,
        calib_samples=args.calib_samples, mask_every=args.mask_every, cooldown_steps=args.cooldown_steps,
        bias_compensation=args.bias_compensation, distill=args.distill, data=tuple(args.data or ["demo"]),
        eval_data=tuple(args.eval_data or ["demo"]), eval_tokens=args.eval_tokens, seed=args.seed, device=args.device,
        checkpoint_every=args.checkpoint_every, measure_latency=not args.no_latency)
    bar = None

    def progress(fraction: float, stage: str) -> None:
        nonlocal bar
        if args.no_progress:
            return
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(total=1000, desc="prune", file=sys.stderr, bar_format="{l_bar}{bar}| {elapsed} {postfix}")
        bar.n = int(fraction * 1000)
        bar.set_postfix_str(stage)

    try:
        report = prune(args.model, args.out, settings, resume=args.resume, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    if not report.get("main", True):  # accelerate launch: process 0 reports
        return 0
    b, a = report["eval_before"], report["eval_after"]
    print(f"parameters {report['params_before']:,} → {report['params_after']:,} (removed {report['ratio_achieved']:.4f}; "
          f"target {report['ratio_target']:g})")
    for p in settings.eval_protocols:
        print(f"mean perplexity ({p}): {b[f'mean_{p}']:.2f} dense → {a[f'mean_{p}']:.2f} pruned")
    if "cost" in b and "cost" in a:
        print(f"latency (batch 1 × {a['cost']['latency_seq_len']} tokens, {a['cost']['device']}): "
              f"{b['cost']['latency_ms']:.1f} ms dense → {a['cost']['latency_ms']:.1f} ms pruned")
    print(f"wrote {args.out}/model (the pruned model), plan.json, report.json")
    return 0


# ------------------------------------------------------------------------------------------- recovery
def _recover_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("pruned", help="a pruned model folder (written by lorashear prune)")
    p.add_argument("--dense", default=None, help="the dense model it was pruned from (default: the source its sidecar names)")
    p.add_argument("--out", required=True, help="output folder (must be empty unless --resume)")
    p.add_argument("--data", action="append", metavar="SPEC", help="sources: demo, or NAME=PATH (train); repeatable")
    p.add_argument("--val", action="append", metavar="NAME=PATH", help="validation text of a NAME=PATH source")
    p.add_argument("--mixture", default="dynamic", choices=("dynamic", "static"),
                   help="dynamic: weights follow the per-source deviation from dense; static: uniform weights")
    p.add_argument("--eta", type=float, default=1.0, help="temperature of the weight update (default 1.0)")
    p.add_argument("--floor", type=float, default=0.1, help="share c of the mixture spread evenly over all sources (default 0.1)")
    p.add_argument("--tokens", type=int, default=200 * 4 * 128, help="stage-1 token budget (default 102,400)")
    p.add_argument("--round-steps", type=int, default=25, help="optimizer steps per round (default 25)")
    p.add_argument("--stop-deviation", type=float, default=None, help="stop when every source's loss is within this many nats of dense")
    p.add_argument("--val-tokens", type=int, default=8192, help="validation tokens per source for each round's loss")
    p.add_argument("--instructions", default="demo", help="Alpaca-format instructions for stage 2 ('demo', a path, or 'none')")
    p.add_argument("--instruct-steps", type=int, default=100, help="stage-2 steps (0 skips stage 2)")
    p.add_argument("--instruct-eval-every", type=int, default=20)
    p.add_argument("--instruct-patience", type=int, default=2, help="evaluations without improvement before stopping")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--eval-tokens", type=int, default=16384, help="tokens per source for the before/after perplexity")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--no-progress", action="store_true")


@command("recover", help="Recover a pruned model: adaptive multi-source LoRA rounds, then instruction tuning; write the model and its trajectory.")
@arguments(_recover_args)
def _recover(args: argparse.Namespace) -> int:
    from .recover.run import RecoverSettings, recover

    _set_threads(args.threads)
    st = RecoverSettings(
        data=tuple(args.data or ["demo"]), val_data=tuple(args.val or ()), mixture=args.mixture, eta=args.eta,
        floor=args.floor, tokens=args.tokens, round_steps=args.round_steps, stop_deviation=args.stop_deviation,
        val_tokens=args.val_tokens, instructions=None if args.instructions == "none" else args.instructions,
        instruct_steps=args.instruct_steps, instruct_eval_every=args.instruct_eval_every,
        instruct_patience=args.instruct_patience, batch_size=args.batch_size, seq_len=args.seq_len, lora_r=args.lora_r,
        lora_alpha=args.lora_alpha, lr=args.lr, eval_tokens=args.eval_tokens, seed=args.seed, device=args.device)

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
    print(f"rounds {len(rep['rounds'])}, tokens {rep['tokens_stage1']:,}; final weights "
          + ", ".join(f"{s}={w:.2f}" for s, w in last["weights"].items()))
    if rep["instruct"]["history"]:
        h = rep["instruct"]["history"]
        print(f"instruction validation loss {h[0]['val_loss']:.3f} → best {rep['instruct']['best']['val_loss']:.3f} "
              f"(step {rep['instruct']['best']['step']}){'; ' + rep['instruct']['stopped'] if rep['instruct']['stopped'] else ''}")
    print(f"wrote {args.out}/model, trajectory.json, report.json")
    return 0
