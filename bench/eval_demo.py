#!/usr/bin/env python
"""Benchmark the dense demo model: perplexity per source and protocol (with a unigram baseline), cost.

Run by hand (not a test): ``python bench/eval_demo.py [--split validation] [--model demo] [--json OUT]``.
The numbers in ``docs/demo_model.md`` and the README come from this script. A pruned model folder can be
passed with ``--model`` to compare against the dense numbers under the same protocols.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from lorashear.data import demo_corpus  # noqa: E402
from lorashear.evaluate import evaluate_perplexity, measure_cost, unigram_perplexity  # noqa: E402
from lorashear.loading import load_model  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--split", default="validation", choices=("validation", "test"))
    ap.add_argument("--device", default=None)
    ap.add_argument("--seq-len", type=int, default=128, help="latency/throughput sequence length")
    ap.add_argument("--batch-size", type=int, default=8, help="throughput batch size")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tok = load_model(args.model, device=args.device)
    data = demo_corpus(args.split)
    train = demo_corpus("train")
    t0 = time.time()
    rows = evaluate_perplexity(model, tok, data, protocols=("short", "long"))
    ppl_s = time.time() - t0
    unigram = {s: unigram_perplexity(train[s], data[s], tok) for s in data}
    cost = measure_cost(model, seq_len=args.seq_len, batch_size=args.batch_size)
    long_cost = measure_cost(model, seq_len=model.config.max_position_embeddings, batch_size=args.batch_size)

    print(f"model {args.model}  split {args.split}  device {cost.device} {cost.dtype}  "
          f"threads {torch.get_num_threads()}  (perplexity took {ppl_s:.0f}s)")
    print(f"{'source':12s} {'protocol':8s} {'window':>6s} {'ppl':>9s} {'unigram':>9s} {'ratio':>6s} {'tokens':>8s}")
    for r in rows:
        u = unigram[r.source]
        print(f"{r.source:12s} {r.protocol:8s} {r.window:6d} {r.ppl:9.2f} {u:9.2f} {r.ppl / u:6.3f} {r.n_tokens:8,d}")
    for c in (cost, long_cost):
        print(f"seq {c.latency_seq_len:4d}: latency {c.latency_ms:7.1f} ms (batch 1)   throughput "
              f"{c.throughput_tokens_per_s:8,.0f} tok/s (batch {c.throughput_batch_size})   "
              f"peak mem {c.peak_memory_bytes / 2**20:6.1f} MiB")
    print(f"parameters {cost.parameters:,}   MACs/token {cost.macs_per_token:,} (seq {cost.macs_seq_len}), "
          f"{long_cost.macs_per_token:,} (seq {long_cost.macs_seq_len})   memory: {cost.peak_memory_method}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "perplexity": [r.to_dict() for r in rows], "unigram": unigram,
            "cost": [cost.to_dict(), long_cost.to_dict()],
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
