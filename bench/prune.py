"""LHSPG benchmark, run by hand; prints tables and ratios from one run.

    python bench/prune.py quality  [--model demo] [--ratios 0.2,0.5] [--seeds 0,1,2] [--budgets 200,400]
                                   [--kinds attention,mlp --kinds attention,mlp,hidden] [--json OUT]
    python bench/prune.py steptime [--model demo] [--steps 20]        LHSPG step / plain LoRA step (pruning phase)
    python bench/prune.py kd       [--model demo] [--steps 20] [--top-k 64]
                                                                      distillation step / plain LoRA step: median
                                                                      step time (interleaved) and peak RSS (fresh
                                                                      process each), with ratios
    python bench/prune.py memory   [--hidden 1536 --layers 16]        peak RSS, LHSPG run / plain LoRA training,
                                                                      each in a fresh process, random-init LLaMA ≥ 500M
    python bench/prune.py latency  [--hidden 1536 --layers 16]        CPU latency dense / pruned at ρ = 0.2 (plan by
                                                                      magnitude, compress), batch 1 and 8, ± --align
    python bench/prune.py latency  --model smollm2-135m --pruned OUT/model[,OUT2/model]
                                                                      a real model against its pruned folders

Quality: for each budget (optimizer steps × batch 4 × 128 tokens, the whole run) and seed — (a) dense, (b) dense +
the same LoRA budget (``finetune_dense``: same adapters, data stream, steps, lr), (c) LHSPG at each ratio and set of
group kinds; perplexity per source under both protocols on the demo validation split (``--eval-tokens`` per source),
mean ± std over seeds. Everything says its device and threads.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _ms(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "—"
    if len(vals) == 1:
        return f"{vals[0]:.2f}"
    return f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f}"


def quality(args) -> None:
    from lorashear.prune.run import PruneSettings, finetune_dense, prune

    rows = []
    for budget in args.budgets:
        for seed in args.seeds:
            base = dict(steps=budget, batch_size=4, seq_len=128, seed=seed, eval_tokens=args.eval_tokens,
                        measure_latency=False, checkpoint_every=10**9)
            t = time.time()
            ref = finetune_dense(args.model, PruneSettings(**base))
            rows.append({"budget": budget, "seed": seed, "method": "dense", "ratio": 0.0, "kinds": "-",
                         "eval": ref["eval_before"], "params": None, "seconds": 0})
            rows.append({"budget": budget, "seed": seed, "method": "dense + same LoRA budget", "ratio": 0.0, "kinds": "-",
                         "eval": ref["eval_after"], "params": None, "seconds": round(time.time() - t, 1)})
            print(f"[budget {budget} seed {seed}] dense {ref['eval_before']['mean_short']:.2f} → +LoRA {ref['eval_after']['mean_short']:.2f}", flush=True)
            for ratio in args.ratios:
                for kinds in args.kinds:
                    with tempfile.TemporaryDirectory() as d:
                        t = time.time()
                        # LHSPG with LoRA recovery and no distillation (what this table measures; not the defaults)
                        rep = prune(args.model, Path(d) / "run", PruneSettings(ratio=ratio, kinds=tuple(kinds.split(",")),
                                                                               method="lhspg", distill=0.0, train="lora",
                                                                               **base))
                    rows.append({"budget": budget, "seed": seed, "method": "LHSPG", "ratio": ratio, "kinds": kinds,
                                 "eval": rep["eval_after"], "params": rep["params_after"],
                                 "achieved": rep["ratio_achieved"], "seconds": round(time.time() - t, 1)})
                    print(f"[budget {budget} seed {seed}] LHSPG ρ={ratio} {kinds}: {rep['eval_after']['mean_short']:.2f} "
                          f"({rep['params_after']:,} params, {time.time() - t:.0f} s)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    sources = [r["source"] for r in rows[0]["eval"]["perplexity"] if r["protocol"] == "short"]
    print(f"\ndevice cpu, torch threads {torch.get_num_threads()}, eval {args.eval_tokens} tokens per source "
          f"(demo validation), seeds {args.seeds}; budget = optimizer steps × 4 × 128 tokens for the whole run")
    for proto in ("short", "long"):
        print(f"\nperplexity, protocol {proto} — mean ± std over seeds")
        head = ["budget", "method", "ratio", "kinds", "params"] + sources + ["mean", "vs (b)"]
        print(" | ".join(head))
        keys = []
        for r in rows:
            k = (r["budget"], r["method"], r["ratio"], r["kinds"])
            if k not in keys:
                keys.append(k)
        refs = {}
        for k in keys:
            sel = [r for r in rows if (r["budget"], r["method"], r["ratio"], r["kinds"]) == k]
            per_src = [_ms([next(p["ppl"] for p in r["eval"]["perplexity"] if p["source"] == s and p["protocol"] == proto)
                            for r in sel]) for s in sources]
            means = [r["eval"][f"mean_{proto}"] for r in sel]
            if k[1] == "dense + same LoRA budget":
                refs[k[0]] = statistics.mean(means)
            rel = f"{statistics.mean(means) / refs[k[0]] - 1:+.1%}" if k[0] in refs and k[1] == "LHSPG" else ""
            params = sel[0]["params"]
            print(" | ".join([str(k[0]), k[1], f"{k[2]:g}", k[3], f"{params:,}" if params else "5,180,672"] + per_src + [_ms(means), rel]))


# ---------------------------------------------------------------------------------------------- step time
def steptime(args) -> None:
    from lorashear.adapters import add_lora
    from lorashear.loading import load_model
    from lorashear.groups import find_groups
    from lorashear.prune import LHSPG, PlanSpec
    from lorashear.trace import trace

    def setup(kind):
        model, _ = load_model(args.model, device="cpu")
        groups = find_groups(trace(model))
        pm = add_lora(model, seed=0)
        if kind == "lora":
            opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=2e-4)
        else:  # schedule long enough that every timed step is a pruning-period step
            opt = LHSPG(pm, groups, PlanSpec(0.2), warmup_steps=1, periods=1, period_steps=10**6)
        return pm, opt

    g = torch.Generator().manual_seed(0)
    vocab = 4096 if args.model == "demo" else 32000
    batches = [torch.randint(0, vocab, (4, 128), generator=g) for _ in range(args.steps + 2)]
    runs = {k: setup(k) for k in ("lora", "lhspg")}
    times = {k: [] for k in runs}
    for i, ids in enumerate(batches):
        for k, (pm, opt) in runs.items():  # interleaved: both see the same machine load
            t = time.perf_counter()
            loss = pm(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i >= 2:
                times[k].append(time.perf_counter() - t)
    a, b = statistics.median(times["lora"]), statistics.median(times["lhspg"])
    print(f"model {args.model}, batch 4 × 128, LoRA r=8 all linear, threads {torch.get_num_threads()}, {args.steps} steps, interleaved")
    print(f"plain LoRA step (AdamW)   median {a * 1000:.1f} ms")
    print(f"LHSPG step (pruning phase, saliency every step)  median {b * 1000:.1f} ms")
    print(f"ratio LHSPG / LoRA: {b / a:.3f} (target ≤ 1.15)")


# ------------------------------------------------------------------------------------------ distillation
KD_MODES = ("lora", "kd", "kd-top-k")


def _kd_setup(model_name: str, mode: str, top_k: int):
    """A LoRA student of ``model_name`` and its loss: next-token (``lora``) or next-token + KL from a frozen
    teacher (a second copy of the model: the cost of any teacher, dense or corrected, is the same)."""
    from lorashear import distill, runs
    from lorashear.adapters import add_lora
    from lorashear.loading import load_model

    model, _ = load_model(model_name, device="cpu")
    teacher = None
    if mode != "lora":
        teacher, _ = load_model(model_name, device="cpu")
        teacher = teacher.eval().requires_grad_(False)
    pm = add_lora(model, seed=0)
    pm.train()
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=2e-4)
    loss_fn = runs.causal_lm_loss if mode == "lora" else distill.loss_fn(
        teacher, 1.0, top_k=top_k if mode == "kd-top-k" else None)
    return pm, opt, loss_fn, int(model.config.vocab_size)


def _kd_batches(vocab: int, n: int, batch: int, seq: int):
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, vocab, (batch, seq), generator=g) for _ in range(n)]


def _kd_child(model_name: str, mode: str, steps: int, top_k: int, threads: int) -> None:
    from lorashear import runs

    torch.set_num_threads(threads)
    pm, opt, loss_fn, vocab = _kd_setup(model_name, mode, top_k)
    rss = lambda key: next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key)) / 1024
    before = rss("VmRSS")
    for t, ids in enumerate(_kd_batches(vocab, steps, 4, 128)):
        runs.train_step(pm, opt, {"input_ids": ids, "labels": ids}, t, loss_fn=loss_fn)
    print(json.dumps({"mode": mode, "rss_before_mib": before, "vmhwm_mib": rss("VmHWM")}))


def kd(args) -> None:
    """Step time (interleaved in one process, median of ``--steps`` after 2 warm-up steps) and peak RSS (each mode
    in a fresh process, ``--steps`` steps) of a distillation step against a plain LoRA step; batch 4 × 128."""
    from lorashear import runs

    modes = KD_MODES if args.top_k else KD_MODES[:2]
    setups = {m: _kd_setup(args.model, m, args.top_k) for m in modes}
    batches = _kd_batches(setups["lora"][3], args.steps + 2, 4, 128)
    times = {m: [] for m in modes}
    for i, ids in enumerate(batches):
        for m, (pm, opt, loss_fn, _) in setups.items():  # interleaved: every mode sees the same machine load
            t = time.perf_counter()
            runs.train_step(pm, opt, {"input_ids": ids, "labels": ids}, i, loss_fn=loss_fn)
            if i >= 2:
                times[m].append(time.perf_counter() - t)
    del setups
    mem = {}
    for m in modes:
        out = subprocess.run([sys.executable, __file__, "_kdchild", args.model, m, str(args.steps), str(args.top_k or 0),
                              str(torch.get_num_threads())], capture_output=True, text=True, check=True, cwd=ROOT)
        mem[m] = json.loads(out.stdout.strip().splitlines()[-1])
    load = os.getloadavg()[0]
    print(f"model {args.model}, batch 4 × 128, LoRA r=8 all linear, AdamW, CPU fp32, threads {torch.get_num_threads()}, "
          f"median of {args.steps} steps (interleaved, after 2 warm-up); peak RSS = VmHWM of a fresh process running "
          f"{args.steps} steps; load average at the end {load:.2f}")
    names = {"lora": "plain LoRA (next-token)", "kd": "KD (next-token + KL, full vocabulary)",
             "kd-top-k": f"KD, teacher top-{args.top_k}"}
    base_t, base_m = statistics.median(times["lora"]), mem["lora"]
    print("step | median ms | × LoRA | peak RSS MiB | × LoRA | peak − RSS before training MiB | × LoRA")
    for m in modes:
        t, r = statistics.median(times[m]), mem[m]
        work, base_work = r["vmhwm_mib"] - r["rss_before_mib"], base_m["vmhwm_mib"] - base_m["rss_before_mib"]
        print(f"{names[m]} | {t * 1000:.1f} | {t / base_t:.2f} | {r['vmhwm_mib']:,.0f} | "
              f"{r['vmhwm_mib'] / base_m['vmhwm_mib']:.2f} | {work:,.0f} | {work / base_work:.2f}")
    print("targets (issue 22): KD step ≤ 1.5× a plain LoRA step; peak memory ≤ 1.3×")


# --------------------------------------------------------------------------------------------- memory
def _big_config(args):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=32000, hidden_size=args.hidden, intermediate_size=int(args.hidden * 8 / 3) // 64 * 64,
                       num_attention_heads=args.hidden // 128, num_key_value_heads=args.hidden // 128,
                       num_hidden_layers=args.layers, max_position_embeddings=512)


def _memory_child(mode: str, hidden: int, layers: int, steps: int) -> None:
    from lorashear.adapters import add_lora
    from lorashear.groups import find_groups
    from lorashear.loading import model_from_config
    from lorashear.prune import LHSPG, PlanSpec
    from lorashear.trace import trace

    from lorashear.prune.memory import return_large_frees_to_os

    return_large_frees_to_os()  # the allocator setting LHSPG applies, for both modes: same malloc, same comparison
    args = argparse.Namespace(hidden=hidden, layers=layers)
    model = model_from_config(_big_config(args), seed=0)
    n = sum(p.numel() for p in model.parameters())
    groups = find_groups(trace(model, seq_len=8)) if mode == "lhspg" else None
    pm = add_lora(model, seed=0)
    if mode == "lora":
        opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=2e-4)
    else:
        opt = LHSPG(pm, groups, PlanSpec(0.2), warmup_steps=1, periods=1, period_steps=steps)
    ids = torch.randint(0, 32000, (1, 64))
    for _ in range(steps + 1):
        loss = pm(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
    print(json.dumps({"mode": mode, "params": n, "vmhwm_mib": hwm / 1024}))


def memory(args) -> None:
    res = {}
    for mode in ("lora", "lhspg"):
        out = subprocess.run([sys.executable, __file__, "_memchild", mode, str(args.hidden), str(args.layers), str(args.steps)],
                             capture_output=True, text=True, check=True, cwd=ROOT)
        res[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"random-init LLaMA, {res['lora']['params']:,} parameters (fp32), batch 1 × 64 tokens, LoRA r=8 all linear, "
          f"{args.steps + 1} steps, fresh process each; peak RSS = VmHWM")
    for mode in ("lora", "lhspg"):
        print(f"{mode:6s} peak RSS {res[mode]['vmhwm_mib']:,.0f} MiB")
    print(f"ratio LHSPG / plain LoRA: {res['lhspg']['vmhwm_mib'] / res['lora']['vmhwm_mib']:.3f} (target ≤ 1.10)")


# -------------------------------------------------------------------------------------------- latency
def latency(args) -> None:
    """Dense vs pruned forward latency, interleaved. Without ``--pruned``: a random-init LLaMA of ``--hidden`` /
    ``--layers`` and its uniform ρ = 0.2 compressions (± align 64). With ``--pruned DIR[,DIR]``: ``--model`` (any
    source the loader takes, e.g. ``smollm2-135m``) against those pruned folders (``lorashear prune --out``)."""
    from lorashear.compress import compress
    from lorashear.groups import find_groups
    from lorashear.loading import load_causal_lm, model_from_config
    from lorashear.prune.preview import plan_model
    from lorashear.trace import trace

    if args.pruned:
        model = load_causal_lm(args.model).eval()
        what = f"{args.model} ({type(model).__name__})"
        variants = {"dense": model}
        for d in args.pruned.split(","):
            variants[Path(d).parent.name if Path(d).name == "model" else Path(d).name] = load_causal_lm(d).eval()
    else:
        model = model_from_config(_big_config(args), seed=0)
        what = "random-init LLaMA"
        groups = find_groups(trace(model, seq_len=8))
        variants = {"dense": model}
        for align in (None, 64):
            plan = plan_model(model, ratio=0.2, groups=groups, align=align, allocation="uniform")
            small, _ = compress(model, groups, plan.removal)
            variants[f"ρ=0.2 uniform{' align 64' if align else ''}"] = small
    n = sum(p.numel() for p in model.parameters())
    vocab = int(model.config.vocab_size)
    g = torch.Generator().manual_seed(0)
    res = {}
    for batch in (1, 8):
        ids = torch.randint(0, vocab, (batch, 128), generator=g)
        times = {k: [] for k in variants}
        with torch.no_grad():
            for k, m in variants.items():
                m(input_ids=ids)  # warm-up
            for _ in range(args.iters):
                for k, m in variants.items():  # interleaved
                    t = time.perf_counter()
                    m(input_ids=ids)
                    times[k].append(time.perf_counter() - t)
        res[batch] = {k: statistics.median(v) for k, v in times.items()}
    load = os.getloadavg()[0]
    print(f"{what} {n:,} parameters, CPU fp32, threads {torch.get_num_threads()}, 128 tokens, median of {args.iters}, "
          f"interleaved; load average at the end {load:.2f}")
    for batch, r in res.items():
        for k, v in r.items():
            params = sum(p.numel() for p in variants[k].parameters())
            print(f"batch {batch}  {k:24s} {params:>13,} params  {v * 1000:8.1f} ms  speed-up {r['dense'] / v:.2f}×")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_kdchild":
        _kd_child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_memchild":
        _memory_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("quality", "steptime", "kd", "memory", "latency"))
    p.add_argument("--model", default="demo")
    p.add_argument("--ratios", default="0.2,0.5")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--budgets", default="200,400")
    p.add_argument("--kinds", action="append", default=None)
    p.add_argument("--eval-tokens", type=int, default=16384)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--hidden", type=int, default=1536)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--pruned", default=None, help="latency: pruned folders to time against --model")
    p.add_argument("--top-k", type=int, default=None, help="kd: also time a teacher top-K step")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.ratios = [float(x) for x in args.ratios.split(",")]
    args.seeds = [int(x) for x in args.seeds.split(",")]
    args.budgets = [int(x) for x in args.budgets.split(",")]
    args.kinds = args.kinds or ["attention,mlp"]
    {"quality": quality, "steptime": steptime, "kd": kd, "memory": memory, "latency": latency}[args.what](args)


if __name__ == "__main__":
    main()
