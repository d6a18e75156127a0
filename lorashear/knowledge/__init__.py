"""Knowledge distribution analysis: how much each unit, layer and group of a model matters (brief §4).

Estimators (``ablation``, ``lora_taylor``, ``taylor``, ``magnitude``) score the units of the prunable
groups; ``analyze`` wraps one run into a ``KnowledgeReport`` (per-unit table + roll-ups + provenance) that
saves to Parquet or JSON; ``select_unprunable`` marks the most knowledge-dense fraction γ unprunable.
Every score adds up over parameters (magnitude is ``‖x_u‖²``); ``knowledge.scoring`` holds the rules the pruning
methods share with the estimators (unit order, saliency EMA, LoRA-Taylor accumulation).
Attributes load lazily, so ``lorashear.knowledge.settings`` (the CLI's and the job form's schema) imports
without torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "analyze": ".analysis", "rank_agreement": ".analysis",
    "calibration_data": ".calibration", "mean_loss": ".calibration",
    **{n: ".estimators" for n in ("AGGREGATIONS", "DEFAULT_BINS", "ESTIMATORS", "TAYLOR_VARIANTS", "Scores", "ablation",
                                  "lora_taylor", "magnitude", "run_estimator", "taylor")},
    **{n: ".report" for n in ("FORMAT", "UNIT_COLUMNS", "KnowledgeReport", "check_model", "load_report",
                              "model_identity", "save_report", "summary_table")},
    **{n: ".selection" for n in ("LEVELS", "check_gamma", "select_unprunable")},
    "analyze_model": ".run", "AnalyzeSettings": ".settings",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'lorashear.knowledge' has no attribute {name!r}")
    return getattr(importlib.import_module(mod, __name__), name)
