"""Trace LLaMA-2-7B, Llama-3-8B (GQA) and Llama-3-70B on the meta device and build their groups.

Each model runs in a fresh subprocess so that peak RSS and wall time are its own (imports included, as a
user running `lorashear graph` would see them). Prints a table; run by hand:

    python bench/graph_scale.py [--repeat 3]

Targets on a 2-core machine: 7B/8B ≤ 10 s and ≤ 3 GB peak RSS; 70B ≤ 60 s.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ["llama-2-7b", "llama-3-8b", "llama-3-70b"]
TARGET_S = {"llama-2-7b": 10, "llama-3-8b": 10, "llama-3-70b": 60}

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from lorashear import find_groups, trace
t1 = time.perf_counter()
og = trace(sys.argv[1], meta=True)
t2 = time.perf_counter()
groups = find_groups(og)
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "trace_s": t2 - t1, "groups_s": t3 - t2, "total_s": t3 - t0,
                  "rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "nodes": og.graph.number_of_nodes(),
                  "params": og.n_params, "groups": len(groups), "prunable": sum(g.prunable for g in groups)}))
"""


def run_once(name: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(ROOT / "configs" / f"{name}.json")],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"{'model':<13}{'params':>16}{'nodes':>7}{'groups':>8}{'prunable':>9}{'import s':>10}{'trace s':>9}{'groups s':>9}{'total s':>9}{'target':>8}{'peak RSS GB':>12}")
    for name in CONFIGS:
        runs = [run_once(name) for _ in range(args.repeat)]
        med = {k: statistics.median(r[k] for r in runs) for k in ("import_s", "trace_s", "groups_s", "total_s", "rss_gb")}
        r = runs[0]
        print(f"{name:<13}{r['params']:>16,}{r['nodes']:>7}{r['groups']:>8}{r['prunable']:>9}{med['import_s']:>10.2f}{med['trace_s']:>9.2f}"
              f"{med['groups_s']:>9.2f}{med['total_s']:>9.2f}{TARGET_S[name]:>8}{med['rss_gb']:>12.2f}")
    print(f"(medians of {args.repeat} fresh processes; total = import + trace + groups; ratio to target = total / target)")


if __name__ == "__main__":
    main()
