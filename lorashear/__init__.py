"""lorashear: structural pruning of Hugging Face causal LMs (LoRAShear) — public API."""
from .compress import CompressReport, compress, mask_units
from .data import (DEMO_MODEL_DIR, DEMO_SOURCES, Mixture, PackedMixture, calibration_samples, demo_corpus,
                   demo_instructions, load_instructions, load_texts, pack, tokenize_instructions)
from .errors import LorashearError
from .evaluate import (CostReport, PerplexityResult, evaluate_model, evaluate_perplexity, load_model,
                       measure_cost, perplexity, pick_device)
from .export import load_pruned, save_pruned
from .groups import Group, Member, find_groups, load_groups, save_groups
from .knowledge import (KnowledgeReport, analyze, calibration_data, load_report, rank_agreement, save_report,
                        select_unprunable)
from .trace import OpGraph, load_graph, module_tree, trace

__all__ = ["LorashearError", "trace", "OpGraph", "load_graph", "module_tree", "find_groups", "Group", "Member",
           "save_groups", "load_groups", "compress", "mask_units", "CompressReport", "save_pruned", "load_pruned",
           "DEMO_MODEL_DIR", "DEMO_SOURCES", "demo_corpus", "demo_instructions", "load_texts", "load_instructions",
           "pack", "Mixture", "PackedMixture", "calibration_samples", "tokenize_instructions",
           "load_model", "pick_device", "perplexity", "evaluate_perplexity", "evaluate_model", "measure_cost",
           "PerplexityResult", "CostReport",
           "analyze", "KnowledgeReport", "load_report", "save_report", "select_unprunable", "rank_agreement",
           "calibration_data"]
