"""Does the llm-pruner plan depend on how its calibration windows are chunked? Run by hand, prints one line per
batch size and whether the plans are identical.

    python bench/taylor_chunks.py [--model smollm2-135m] [--ratio 0.2] [--seed 0] [--windows 64] [--threads 2]

The default recipe's one-shot plan (MLP channels, uniform over all layers), scored once at the training batch (4
windows per chunk) and once with every window in one batch: the chunks sum to the gradient of the mean loss, so the
plans should match up to float summation order. Peak memory is the one-batch run's (``/usr/bin/time -v``).
"""
from __future__ import annotations

import argparse
import time

import torch

from lorashear.groups import find_groups
from lorashear.loading import load_model
from lorashear.prune.methods import _setup_llm_pruner
from lorashear.prune.plan import PlanSpec, parse_layers
from lorashear.prune.run import PruneSettings
from lorashear.trace import trace


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--ratio", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--windows", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model, tok = load_model(a.model)
    groups = find_groups(trace(model))
    n_layers = model.config.num_hidden_layers
    plans = {}
    for bs in (4, a.windows):
        st = PruneSettings(ratio=a.ratio, seed=a.seed, calib_samples=a.windows, batch_size=bs)
        spec = PlanSpec(ratio=st.ratio, kinds=st.kinds, allocation=st.allocation, layers=parse_layers(st.layers, n_layers))
        t = time.time()
        plans[bs] = _setup_llm_pruner(model, groups, spec, st, tok)[0].removal
        print(f"batch {bs}: {time.time() - t:.1f} s, {sum(map(len, plans[bs].values()))} units removed", flush=True)
    a_, b_ = plans[4], plans[a.windows]
    diff = sum(len(set(a_.get(k, [])) ^ set(b_.get(k, []))) for k in set(a_) | set(b_))
    print(f"same plan: {diff == 0} (units differing: {diff})")


if __name__ == "__main__":
    main()
