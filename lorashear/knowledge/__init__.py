"""Knowledge distribution analysis: how much each unit, layer and group of a model matters (brief §4).

Estimators (``ablation``, ``lora_taylor``, ``taylor``, ``magnitude``) score the units of the prunable
groups; ``analyze`` wraps one run into a ``KnowledgeReport`` (per-unit table + roll-ups + provenance) that
saves to Parquet or JSON; ``select_unprunable`` marks the most knowledge-dense fraction γ unprunable.
Every score adds up over parameters (magnitude is ``‖x_u‖²``); ``knowledge.scoring`` holds the rules the pruning
methods share with the estimators (unit order, saliency EMA, LoRA-Taylor accumulation).
"""
from .analysis import analyze, rank_agreement
from .calibration import calibration_data, mean_loss
from .estimators import (AGGREGATIONS, DEFAULT_BINS, ESTIMATORS, TAYLOR_VARIANTS, Scores, ablation, lora_taylor, magnitude,
                         run_estimator, taylor)
from .report import FORMAT, UNIT_COLUMNS, KnowledgeReport, check_model, load_report, model_identity, save_report, summary_table
from .selection import LEVELS, check_gamma, select_unprunable

__all__ = ["analyze", "rank_agreement", "calibration_data", "mean_loss", "ablation", "lora_taylor", "taylor", "magnitude",
           "run_estimator", "Scores", "ESTIMATORS", "AGGREGATIONS", "TAYLOR_VARIANTS", "DEFAULT_BINS", "KnowledgeReport",
           "load_report", "save_report", "summary_table", "check_model", "model_identity", "FORMAT", "UNIT_COLUMNS", "select_unprunable",
           "check_gamma", "LEVELS"]
