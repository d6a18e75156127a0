"""Recovery benchmark, run by hand; prints a table from one run.

    python bench/recovery.py [--model demo] [--ratios 0.2,0.5] [--seeds 0,1,2] [--tokens 102400] [--json OUT]

For each ratio: one LHSPG model of the demo (``prune --method lhspg`` over attention + MLP with LoRA and no
distillation — LHSPG's defaults when this bench was written — seed 0, 200 steps × 4 × 128). Then, per
seed and the same stage-1 token budget: recovery with the dynamic mixture, with the static uniform mixture, and no
recovery — per-source perplexity (128-token windows, ``--eval-tokens`` per source of the demo validation split),
the mean, and the worst-source deviation from dense (Δ NLL, nats). Last, one run with the instruction stage (seed 0)
reports the instruction validation loss and what the stage does to the pretraining sources.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _ms(vals):
    if len(vals) == 1:
        return f"{vals[0]:.2f}"
    return f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f}"


def _ppl(ev, proto="short"):
    return {r["source"]: r["ppl"] for r in ev["perplexity"] if r["protocol"] == proto}


def main() -> None:
    from lorashear.evaluate import evaluate_perplexity, perplexity_summary
    from lorashear.loading import load_model
    from lorashear.prune.run import PruneSettings, prune
    from lorashear.recover.run import RecoverSettings, recover

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--ratios", default="0.2,0.5")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--tokens", type=int, default=200 * 4 * 128)
    p.add_argument("--eval-tokens", type=int, default=8192)
    p.add_argument("--val-tokens", type=int, default=4096)
    p.add_argument("--instruct-steps", type=int, default=100)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--pruned", default=None, metavar="DIR[,DIR]",
                   help="pruned model folders to recover, one per --ratios entry, instead of pruning here "
                        "(e.g. the model/ of a `lorashear prune` run on SmolLM2)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    ratios = [float(x) for x in a.ratios.split(",")]
    seeds = [int(x) for x in a.seeds.split(",")]
    given = a.pruned.split(",") if a.pruned else []
    if given and len(given) != len(ratios):
        p.error("--pruned needs one folder per --ratios entry")
    work = Path(tempfile.mkdtemp(prefix="bench-recovery-"))
    common = dict(tokens=a.tokens, val_tokens=a.val_tokens, eval_tokens=a.eval_tokens, eval_protocols=("short",))
    dense, tok = load_model(a.model, device="cpu")
    from lorashear.data import demo_corpus, texts_for_tokens

    val = {s: texts_for_tokens(t, tok, a.eval_tokens) for s, t in demo_corpus("validation").items()}
    dense_rows = {r.source: r for r in evaluate_perplexity(dense, tok, val, protocols=("short",), max_tokens=a.eval_tokens)}
    rows = []
    for ratio in ratios:
        t = time.time()
        if given:
            pruned_dir = Path(given[ratios.index(ratio)])
            small, _ = load_model(pruned_dir, device="cpu")
            ev = perplexity_summary(small, tok, val, ("short",), a.eval_tokens)
            del small
            print(f"given ρ={ratio}: {pruned_dir}", flush=True)
        else:
            pr = prune(a.model, work / f"pruned-{ratio}", PruneSettings(
                ratio=ratio, method="lhspg", kinds=("attention", "mlp"), distill=0.0, train="lora",
                eval_tokens=a.eval_tokens, measure_latency=False))
            print(f"LHSPG ρ={ratio}: {pr['params_after']:,} params, {time.time() - t:.0f} s", flush=True)
            pruned_dir, ev = work / f"pruned-{ratio}" / "model", pr["eval_after"]
        rows.append({"ratio": ratio, "variant": "no recovery", "seed": 0, "eval": ev})
        for seed in seeds:
            for mixture in ("dynamic", "static"):
                t = time.time()
                rep = recover(pruned_dir, work / f"rec-{ratio}-{mixture}-{seed}",
                              RecoverSettings(mixture=mixture, seed=seed, instruct_steps=0, **common))
                rows.append({"ratio": ratio, "variant": mixture, "seed": seed, "eval": rep["eval_after"],
                             "final_weights": rep["rounds"][-1]["weights"]})
                print(f"  {mixture} seed {seed}: mean {rep['eval_after']['mean_short']:.2f}, final weights "
                      + ", ".join(f"{k}={v:.2f}" for k, v in rep["rounds"][-1]["weights"].items()) + f" ({time.time() - t:.0f} s)", flush=True)
        if a.instruct_steps <= 0:
            continue
        rep = recover(pruned_dir, work / f"rec-{ratio}-instruct", RecoverSettings(seed=0, instruct_steps=a.instruct_steps, **common))
        rows.append({"ratio": ratio, "variant": "dynamic + instructions", "seed": 0, "eval": rep["eval_after"],
                     "instruct": rep["instruct"]})
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    sources = list(dense_rows)
    print(f"\nmodel {a.model}; demo validation, 128-token windows, {a.eval_tokens} tokens per source; stage-1 budget {a.tokens:,} tokens; "
          f"seeds {seeds}; cpu, {torch.get_num_threads()} threads; Δ = NLL − dense NLL (nats)")
    print(" | ".join(["ratio", "variant"] + sources + ["mean", "worst Δ"]))
    print(" | ".join(["-", "dense"] + [f"{dense_rows[s].ppl:.2f}" for s in sources]
                     + [f"{statistics.mean(r.ppl for r in dense_rows.values()):.2f}", "0"]))
    for ratio in ratios:
        for variant in ("no recovery", "static", "dynamic", "dynamic + instructions"):
            sel = [r for r in rows if r["ratio"] == ratio and r["variant"] == variant]
            if not sel:
                continue
            per = {s: [_ppl(r["eval"])[s] for r in sel] for s in sources}
            means = [statistics.mean(_ppl(r["eval"]).values()) for r in sel]
            worst = [max(math.log(_ppl(r["eval"])[s]) - dense_rows[s].nll for s in sources) for r in sel]
            print(" | ".join([f"{ratio:g}", variant] + [_ms(per[s]) for s in sources] + [_ms(means), _ms(worst)]))
        ins = next((r["instruct"] for r in rows if r["ratio"] == ratio and r["variant"] == "dynamic + instructions"), None)
        if ins is None:
            continue
        print(f"ρ={ratio:g} instruction validation loss {ins['history'][0]['val_loss']:.3f} → best {ins['best']['val_loss']:.3f} "
              f"(step {ins['best']['step']}){'; ' + ins['stopped'] if ins['stopped'] else ''}")


if __name__ == "__main__":
    main()
