"""Structured pruning: the plan (which units go), the LHSPG optimizer, and the run that ends in a smaller model.

``make_plan`` → ``Plan`` (exact parameter counts, JSON); ``LHSPG`` (a ``torch.optim.Optimizer`` over LoRA
factors); ``prune`` (load → LoRA → train → compress → ``save_pruned`` → evaluate), behind the CLI and the job.
"""
from .lhspg import LHSPG
from .plan import Plan, PlanSpec, count_removed, load_plan, make_plan, parse_layers
from .run import PruneSettings, prune

__all__ = ["LHSPG", "Plan", "PlanSpec", "PruneSettings", "count_removed", "load_plan", "make_plan", "parse_layers", "prune"]
