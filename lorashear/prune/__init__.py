"""Structured pruning: the plan (which units go), the pruning optimizers (LHSPG and the baselines), and the run
that ends in a smaller model.

``make_plan`` → ``Plan`` (exact parameter counts, JSON); ``PruningOptimizer`` (what every pruning optimizer
shares: a ``torch.optim.Optimizer`` over LoRA factors) and ``LHSPG``; ``methods`` (the registry behind
``--method``: lhspg, llm-pruner, loraprune, flap, magnitude, random);
``prune`` (load → LoRA → train → compress → ``save_pruned`` → evaluate), behind the CLI and the job.
Attributes load lazily, so ``lorashear.prune.names`` is importable without torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_WHERE = {"LHSPG": ".lhspg", "Plan": ".plan", "PlanSpec": ".plan", "count_removed": ".plan", "load_plan": ".plan",
          "make_plan": ".plan", "parse_layers": ".plan", "PruneSettings": ".settings", "PlanSettings": ".settings",
          "prune": ".run", "METHODS": ".names", "PruningOptimizer": ".masked"}

__all__ = ["LHSPG", "METHODS", "Plan", "PlanSettings", "PlanSpec", "PruneSettings", "PruningOptimizer", "count_removed",
           "load_plan", "make_plan", "parse_layers", "prune"]


def __getattr__(name: str) -> Any:
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'lorashear.prune' has no attribute {name!r}")
    return getattr(importlib.import_module(mod, __name__), name)
