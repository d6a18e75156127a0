"""LHSPG against the baselines on the same groups, data, plan rules and budget; run by hand, prints the table.

    python bench/prune_compare.py [--model demo] [--ratios 0.2,0.5] [--seeds 0,1,2] [--steps 200]
                                  [--methods lhspg,llm-pruner,loraprune,flap,flap-0,magnitude,random]
                                  [--eval-tokens 16384] [--threads N] [--json OUT]
                                  [--set periods=2,distill=1.0 --label NAME]  # a variant of every pruned row
                                  [--holdout SOURCE]  # train on the other demo sources; SOURCE is evaluated only
                                  [--self-data]  # one more training source: text sampled from the dense model
                                  [--dense-full]  # also the dense model with full-parameter training, same budget

Every row is one ``lorashear.prune.prune`` run (or ``finetune_dense`` for the dense references) in a fresh
process, so wall time and peak memory (``ru_maxrss``) are the run's own. All runs: ``--steps`` optimizer steps ×
batch 4 × 128 tokens (200 × 4 × 128 = 102,400 training tokens by default), LoRA r = 8, α = 16 on every linear
projection, lr 2e-4, the demo training stream, the same seed's batches; every method at its own defaults
otherwise (LLM-Pruner: element-wise first order, sum, uniform over layers 0.125:0.9375, 10 calibration windows;
LoRAPrune: warm-up/cool-down 10 %, mask every 10 steps; FLAP: 128 calibration windows, bias compensation;
``flap-0``: FLAP with ``--steps 0``, no training at all). Kinds attention + MLP, LoRA recovery without distillation
and LLM-Pruner's layer range and 10 windows are pinned here (``TABLE_RECIPE``, ``LLM_PRUNER_PAPER``): they are what
these tables (docs/baselines.md) measured, no longer ``lorashear prune``'s defaults (MLP channels only, distillation,
full training for small models, every layer, 64 windows); ``--set kinds=mlp,distill=1.0,train=full,layers=null,
calib_samples=64`` is that recipe as a variant. Calibration tokens (one-shot methods) are extra and reported.
Perplexity per source on the demo validation split under both protocols (``short``: 128-token windows, ``long``:
the model's context), mean ± std over seeds.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LABELS = {"dense": "dense", "dense+lora": "dense + same LoRA budget", "dense+full": "dense + same budget, full-parameter",
          "lhspg": "LHSPG",
          "llm-pruner": "LLM-Pruner (elem. 1st, sum)", "loraprune": "LoRAPrune", "flap": "FLAP + LoRA budget",
          "flap-0": "FLAP, no training", "magnitude": "magnitude + LoRA", "random": "random + LoRA"}
DEFAULT_METHODS = ("lhspg", "llm-pruner", "loraprune", "flap", "flap-0", "magnitude", "random")
DENSE = ("dense", "dense+lora", "dense+full")  # unpruned reference rows (ratio 0)
# what the tables promise (the docstring, docs/baselines.md): attention + MLP, LoRA recovery, no distillation,
# LLM-Pruner over the paper's layer range on the paper's 10 calibration windows — pinned, since ``lorashear prune``
# now defaults to MLP channels only, distillation, full training for small models, every layer and 64 windows
TABLE_RECIPE = {"kinds": ("attention", "mlp"), "distill": 0.0, "train": "lora"}
BUDGET_KEYS = ("lr", "lr_schedule", "lora_r", "lora_alpha", "lora_targets")  # --set keys the dense rows take too
LLM_PRUNER_PAPER = {"layers": "0.125:0.9375", "calib_samples": 10}  # the paper's layers 4–29 of 32 (fractions), 10 windows


def _one(spec: dict) -> dict:
    """One run in this (fresh) process; returns the row."""
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    from lorashear.prune.run import PruneSettings, finetune_dense, prune

    base = dict(steps=spec["steps"], batch_size=4, seq_len=128, seed=spec["seed"], eval_tokens=spec["eval_tokens"],
                measure_latency=False, checkpoint_every=10**9)
    if spec.get("holdout"):  # train on the other sources only; every source is still evaluated
        from lorashear.data import DEMO_CORPUS_DIR, DEMO_SOURCES

        base["data"] = tuple(f"{s}={DEMO_CORPUS_DIR / s / 'train.jsonl.gz'}" for s in DEMO_SOURCES
                             if s != spec["holdout"])
    if spec.get("self_data"):  # text sampled from the dense model: one more training source of every trained row
        base["data"] = tuple(base.get("data", ("demo",))) + ("self",)
    t = time.time()
    method = spec["method"]
    if method in DENSE:
        from lorashear.evaluate import count_parameters, perplexity_summary
        from lorashear.loading import load_model
        from lorashear.prune.run import _data

        # a variant's training-budget settings (lr, its schedule, LoRA shape) apply to the dense references too
        st = PruneSettings(**base, **{k: v for k, v in spec.get("set", {}).items() if k in BUDGET_KEYS})
        model, tok = load_model(spec["model"], device="cpu")
        params = count_parameters(model)
        if method == "dense":
            _, sources = _data(st, tok, model)
            ev = perplexity_summary(model, tok, sources, st.eval_protocols, st.eval_tokens)
        else:
            ev = finetune_dense(spec["model"], st, full=method == "dense+full")["eval_after"]
        info = {}
    else:
        kw = dict(base, **TABLE_RECIPE, **(LLM_PRUNER_PAPER if method == "llm-pruner" else {}))
        kw.update(ratio=spec["ratio"], method="flap" if method == "flap-0" else method, **spec.get("set", {}))
        if method == "flap-0":
            kw["steps"] = 0
        with tempfile.TemporaryDirectory() as d:
            rep = prune(spec["model"], Path(d) / "run", **kw)
        ev, params = rep["eval_after"], rep["params_after"]
        info = {"ratio_achieved": rep["ratio_achieved"], "params_before": rep["params_before"],
                "calibration_tokens": rep["calibration_tokens"], "tokens_trained": rep["tokens_trained"],
                "scores_from": rep["scores_from"], "allocation": rep["settings"]["allocation"],
                "layers": rep["settings"]["layers"]}
        if (rep.get("teacher") or {}).get("eval"):  # the corrected teacher = dense + the same budget, this run's
            tev = rep["teacher"]["eval"]
            info["teacher"] = {"kind": rep["teacher"]["kind"], "mean_short": tev["mean_short"],
                               "mean_long": tev["mean_long"]}
    ppl = {f"{r['source']}/{r['protocol']}": r["ppl"] for r in ev["perplexity"]}
    return {**spec, "ppl": ppl, "mean_short": ev["mean_short"], "mean_long": ev["mean_long"], "params": params,
            "seconds": round(time.time() - t, 1), "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "threads": torch.get_num_threads(), **info}


def _spawn(spec: dict) -> dict:
    r = subprocess.run([sys.executable, __file__, "_one", json.dumps(spec)], capture_output=True, text=True, cwd=ROOT)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not lines:
        err = (r.stderr.strip().splitlines() or ["?"])[-1]
        return {**spec, "error": err}
    return json.loads(lines[-1])


def _ms(vals: list[float], fmt: str = "{:.2f}") -> str:
    vals = [v for v in vals if v is not None]
    if not vals:
        return "—"
    if len(vals) == 1:
        return fmt.format(vals[0])
    return f"{fmt.format(statistics.mean(vals))} ± {fmt.format(statistics.stdev(vals))}"


def table(rows: list[dict]) -> str:
    ok = [r for r in rows if "error" not in r]
    sources = sorted({k.split("/")[0] for r in ok for k in r["ppl"]})
    out = []
    ratios = sorted({r["ratio"] for r in rows if r["ratio"]})
    for ratio in ratios:
        out.append(f"\n### ρ = {ratio}\n")
        held = {r.get("holdout") for r in ok} - {None}
        mark = (lambda s: f"{s} (held out)" if s in held else s) if len(held) == 1 else (lambda s: s)
        head = ["method", "params", "removed"] + [f"{mark(s)} short" for s in sources] + ["mean short"] + \
               [f"{mark(s)} long" for s in sources] + ["mean long", "× dense+budget (short)", "seconds", "peak MiB",
                                                       "seeds"]
        ref, ref_full = {}, {}
        for r in ok:
            if r["method"] in ("dense+lora", "dense+full") and not r.get("set"):  # the references at the defaults
                (ref if r["method"] == "dense+lora" else ref_full).setdefault(r.get("holdout"), []).append(r["mean_short"])
        if ref_full:
            head.insert(head.index("seconds"), "× dense+full (short)")
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        order = list(DENSE) + [m for m in LABELS if m not in DENSE]
        variants = sorted({(order.index(r["method"]), r["method"], r.get("variant", "")) for r in rows})
        for _, m, var in variants:
            rs = [r for r in ok if r["method"] == m and r.get("variant", "") == var and (r["ratio"] in (0.0, ratio))]
            errs = [r for r in rows if r["method"] == m and r.get("variant", "") == var and r["ratio"] == ratio
                    and "error" in r]
            if not rs and not errs:
                continue
            name = LABELS[m] + (f" [{var}]" if var else "")
            if not rs:
                out.append(f"| {name} | failed: {errs[0]['error'][:120]} |")
                continue
            cells = [name, f"{statistics.mean(r['params'] for r in rs) / 1e6:.3f} M",
                     _ms([r.get("ratio_achieved") for r in rs], "{:.4f}") if m not in DENSE else "0"]
            for prot in ("short", "long"):
                cells += [_ms([r["ppl"].get(f"{s}/{prot}") for r in rs]) for s in sources]
                cells.append("**" + _ms([r[f"mean_{prot}"] for r in rs]) + "**")
            for refs in (ref, ref_full) if ref_full else (ref,):
                base_ref = refs.get(rs[0].get("holdout"))
                cells.append(f"{statistics.mean(r['mean_short'] for r in rs) / statistics.mean(base_ref):.3f}"
                             if base_ref else "—")
            cells += [_ms([r["seconds"] for r in rs], "{:.0f}"), _ms([r["peak_rss_mib"] for r in rs], "{:.0f}"),
                      ",".join(str(r["seed"]) for r in rs)]
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def verdict(rows: list[dict]) -> str:
    """Does LHSPG have the lowest mean perplexity (short protocol) at each ratio, outside one std?"""
    ok = [r for r in rows if "error" not in r]
    lines = []
    for ratio in sorted({r["ratio"] for r in ok if r["ratio"]}):
        by = {}
        for r in ok:
            if r["ratio"] == ratio and r["method"] not in DENSE:
                key = r["method"] + (f" [{r['variant']}]" if r.get("variant") else "")
                by.setdefault(key, []).append(r["mean_short"])
        if "lhspg" not in by:
            continue
        mean = {m: statistics.mean(v) for m, v in by.items()}
        sd = {m: statistics.stdev(v) if len(v) > 1 else 0.0 for m, v in by.items()}
        best = min(mean, key=mean.get)
        others = {m: v for m, v in mean.items() if m != "lhspg"}
        runner = min(others, key=others.get) if others else None
        if runner is None:
            lines.append(f"ρ={ratio}: only LHSPG in these rows ({mean['lhspg']:.2f}): nothing to compare")
        elif best == "lhspg":
            clear = mean["lhspg"] + sd["lhspg"] < mean[runner] - sd[runner]
            one = min(len(by["lhspg"]), len(by[runner])) < 2
            lines.append(f"ρ={ratio}: LHSPG lowest ({mean['lhspg']:.2f}) vs {runner} {mean[runner]:.2f} — "
                         + ("one seed: no std, not a significance claim" if one else
                            "outside one std" if clear else "NOT outside one std"))
        else:
            lines.append(f"ρ={ratio}: LHSPG is NOT the lowest: {best} {mean[best]:.2f} vs LHSPG {mean['lhspg']:.2f} "
                         f"(rank {sorted(mean, key=mean.get).index('lhspg') + 1} of {len(mean)})")
    return "\n".join(lines)


def _settings(text: str | None) -> dict:
    """``periods=2,distill=1.0,allocation=uniform`` -> {"periods": 2, "distill": 1.0, "allocation": "uniform"}; an item
    without ``=`` continues the previous key's list: ``kinds=attention,mlp,train=full`` -> kinds ["attention", "mlp"]."""
    out: dict = {}
    key = None
    for item in filter(None, (text or "").split(",")):
        name, sep, raw = item.partition("=")
        if not sep:
            if key is None:
                sys.exit(f"--set wants KEY=VALUE, got {item!r}")
            out[key] = (out[key] if isinstance(out[key], list) else [out[key]]) + [item.strip()]
            continue
        key = name.strip()
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw.strip()
    return out


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "_one":
        print(json.dumps(_one(json.loads(sys.argv[2]))), flush=True)
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--ratios", default="0.2,0.5")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    ap.add_argument("--eval-tokens", type=int, default=16384)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="write every row here (rows already in it are not run again)")
    ap.add_argument("--no-dense", action="store_true", help="skip the dense and dense + LoRA rows (e.g. a second "
                    "process for other ratios; merge the JSON files with --table)")
    ap.add_argument("--dense-full", action="store_true", help="also the dense model given the budget as full-parameter "
                    "training (every parameter, AdamW, same steps/data/lr): the fair reference for --set train=full rows")
    ap.add_argument("--set", default=None, metavar="KEY=VALUE,...", help="prune settings for every pruned row "
                    "(e.g. periods=2,distill=1.0): a variant, run and tabled apart from the defaults; needs --label")
    ap.add_argument("--label", default="", help="the variant's name in the table and the JSON rows")
    ap.add_argument("--holdout", default=None, metavar="SOURCE", help="train every row on the other demo sources; "
                    "SOURCE is only evaluated (a recipe that only adapts to its training domain shows there)")
    ap.add_argument("--self-data", action="store_true", help="add text sampled from the dense model (--data self) "
                    "as one more training source of every trained row, the dense references included")
    ap.add_argument("--table", default=None, metavar="A.json,B.json", help="only print the table of these row files")
    args = ap.parse_args()
    if args.table:
        rows = [r for f in args.table.split(",") for r in json.loads(Path(f).read_text())]
        print(f"model {rows[0]['model']}; {rows[0]['steps']} steps × 4 × 128 tokens per run; seeds "
              f"{sorted({r['seed'] for r in rows})}; eval tokens per source {rows[0]['eval_tokens']}; device cpu, "
              f"threads {rows[0].get('threads')}")
        print(table(rows))
        print("\n" + verdict(rows))
        return
    settings = _settings(args.set)
    if settings and not args.label:
        sys.exit("--set needs --label (the variant's name in the table)")
    ratios = [float(x) for x in args.ratios.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in LABELS]
    if bad:
        sys.exit(f"unknown method(s) {bad}; choose from {', '.join(LABELS)}")
    rows: list[dict] = []
    if args.json and Path(args.json).is_file():
        rows = json.loads(Path(args.json).read_text())
    done = {(r["method"], r.get("variant", ""), r["ratio"], r["seed"]) for r in rows if "error" not in r}
    rows = [r for r in rows if "error" not in r]
    common = dict(model=args.model, steps=args.steps, eval_tokens=args.eval_tokens, threads=args.threads)
    held = {}
    if args.holdout:
        from lorashear.data import DEMO_SOURCES

        if args.holdout not in DEMO_SOURCES:
            sys.exit(f"--holdout: one of the demo sources {', '.join(DEMO_SOURCES)}")
        held = {"holdout": args.holdout, "variant": f"holdout {args.holdout}"}
    if args.self_data:
        common["self_data"] = True
        held["variant"] = " ".join(v for v in (held.get("variant", ""), "self data") if v)
    # the dense references under a variant's budget settings (e.g. lr_schedule=cosine) are their own rows
    budget_set = {k: v for k, v in settings.items() if k in BUDGET_KEYS}
    dense_var = dict(held)
    if budget_set:
        dense_var.update(set=budget_set, variant=" ".join(
            v for v in (",".join(f"{k}={v}" for k, v in budget_set.items()), held.get("variant", "")) if v))
    plan = []
    for seed in seeds:
        if not args.no_dense:
            # (the LoRA reference = the corrected teacher keeps a constant lr: lr_schedule alone leaves it as it is)
            plan += [dict(common, method=m, ratio=0.0, seed=seed, **dense_var)
                     for m in ("dense", "dense+lora") if not budget_set
                     or (m == "dense+lora" and set(budget_set) - {"lr_schedule"})]
        if args.dense_full:
            plan.append(dict(common, method="dense+full", ratio=0.0, seed=seed, **dense_var))
        variant = " ".join(v for v in (args.label, held.get("variant", "")) if v)
        plan += [dict(common, method=m, ratio=ratio, seed=seed, **{**held, **({"variant": variant} if variant else {})},
                      **({"set": settings} if args.label else {}))
                 for ratio in ratios for m in methods]
    for spec in plan:
        if (spec["method"], spec.get("variant", ""), spec["ratio"], spec["seed"]) in done:
            continue
        t = time.time()
        row = _spawn(spec)
        rows.append(row)
        print(f"[seed {spec['seed']} ρ={spec['ratio']}] {spec['method']}"
              + (f" [{spec['variant']}]" if spec.get("variant") else "") + ": "
              + (f"mean short {row['mean_short']:.2f} long {row['mean_long']:.2f} ({time.time() - t:.0f} s)"
                 if "error" not in row else f"FAILED {row['error']}"), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
    import torch

    print(f"\nmodel {args.model}; {args.steps} steps × 4 × 128 tokens per run; seeds {seeds}; "
          f"device cpu, threads {rows[0].get('threads') if rows else torch.get_num_threads()}")
    print(table(rows))
    print("\n" + verdict(rows))


if __name__ == "__main__":
    main()
