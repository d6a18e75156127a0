"""Cost of compress's self-verification and save_pruned's round-trip proof, on the demo model and a
random-init LLaMA-shaped model. Run by hand (numbers go to docs/groups.md):

    python bench/compress_verify.py [--threads 1] [--big HIDDEN,LAYERS,INTERMEDIATE,VOCAB]

For each model: trace + find_groups, remove a quarter of every attention and MLP group's units, then time
``compress(verify=False)`` vs ``compress(verify=True)`` and ``save_pruned(verify=False)`` vs
``save_pruned(verify=True)``, each with the process's peak RSS over the RSS at its start (Linux VmHWM, reset
before each step via /proc/self/clear_refs).
"""
from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lorashear import compress, find_groups, save_pruned, trace  # noqa: E402
from lorashear.evaluate import _cpu_peak_rss  # noqa: E402
from lorashear.loading import load_causal_lm, model_from_config  # noqa: E402


def _vm_rss() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))


def step(fn):
    """(seconds, peak RSS growth over the RSS at the start in MiB, result)."""
    gc.collect()
    start = _vm_rss()
    box = {}
    t = time.perf_counter()

    def run():
        box["out"] = fn()

    peak, _ = _cpu_peak_rss(run)
    return time.perf_counter() - t, (peak - start) / 2**20, box["out"]


def measure(name: str, model, order=(False, True)) -> None:
    n = sum(p.numel() for p in model.parameters())
    t = time.perf_counter()
    groups = find_groups(trace(model))
    traced = time.perf_counter() - t
    removal = {g.id: list(range(0, g.n_units, 4)) for g in groups if g.prunable and g.kind in ("attention", "mlp")}
    print(f"{name}: {n / 1e6:.1f} M parameters, trace+groups {traced:.1f} s, {len(removal)} groups pruned by 1/4", flush=True)
    small = report = None
    for verify in order:
        small = report = None
        dt, mem, (small, report) = step(lambda: compress(model, groups, removal, verify=verify))
        print(f"  compress verify={verify!s:5}  {dt:6.2f} s  peak RSS +{mem:7.1f} MiB"
              + (f"  max diff {report.max_diff:.2e} (tol {report.tolerance:.0e})" if verify else ""), flush=True)
    with tempfile.TemporaryDirectory() as d:
        for verify in (False, True):
            dt, mem, side = step(lambda: save_pruned(small, Path(d) / f"m{verify}", report=report, verify=verify))
            print(f"  save_pruned verify={verify!s:5}  {dt:6.2f} s  peak RSS +{mem:7.1f} MiB  ({side['case']})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--verify-first", action="store_true", help="run compress(verify=True) before verify=False")
    ap.add_argument("--big", default="1024,16,2816,32000", help="HIDDEN,LAYERS,INTERMEDIATE,VOCAB of the random-init LLaMA")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    order = (True, False) if args.verify_first else (False, True)
    measure("demo", load_causal_lm("demo"), order)
    from transformers import LlamaConfig

    h, layers, inter, vocab = (int(x) for x in args.big.split(","))
    cfg = LlamaConfig(hidden_size=h, num_hidden_layers=layers, intermediate_size=inter, vocab_size=vocab,
                      num_attention_heads=h // 64, num_key_value_heads=h // 64, max_position_embeddings=2048)
    measure(f"llama {args.big}", model_from_config(cfg), order)


if __name__ == "__main__":
    main()
