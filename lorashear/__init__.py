"""lorashear: structural pruning of Hugging Face causal LMs (LoRAShear) — public API.

Names are imported on first use (PEP 562), so ``import lorashear`` — and every job worker, the app's
registry and the CLI's argument parsing — does not pay for importing torch and transformers up front.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from .errors import LorashearError

_EXPORTS = {
    "trace": ["OpGraph", "load_graph", "module_tree", "trace"],
    "groups": ["Group", "Member", "find_groups", "load_groups", "save_groups"],
    "compress": ["CompressReport", "CompressionNotExact", "compress", "mask_units"],
    "export": ["save_pruned"],
    "pruned_format": ["load_pruned"],
    "loading": ["check_model_source", "load_model", "pick_device"],
    "data": ["DEMO_MODEL_DIR", "DEMO_SOURCES", "Mixture", "PackedMixture", "calibration_samples", "demo_corpus",
             "demo_instructions", "load_instructions", "load_texts", "pack", "tokenize_instructions"],
    "evaluate": ["CostReport", "PerplexityResult", "evaluate_model", "evaluate_perplexity", "measure_cost",
                 "perplexity"],
    "prune": ["LHSPG", "Plan", "PlanSpec", "PruneSettings", "load_plan", "make_plan", "prune"],
    "knowledge": ["KnowledgeReport", "analyze", "calibration_data", "load_report", "rank_agreement", "save_report",
                  "select_unprunable"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = ["LorashearError", *_WHERE]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'lorashear' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """Importing a submodule binds it on the package; for ``trace`` and ``compress`` the public name is the
    function of the same name, so keep that (``import lorashear.trace`` still works through sys.modules)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _WHERE.get(name) == name:
            if name not in vars(value):  # a lazy package (prune): bind nothing now — asking it for the function
                return  # would import torch; ``lorashear.prune`` resolves through __getattr__ on first use
            value = vars(value)[name]
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .compress import CompressionNotExact, CompressReport, compress, mask_units  # noqa: F401
    from .data import (DEMO_MODEL_DIR, DEMO_SOURCES, Mixture, PackedMixture, calibration_samples,  # noqa: F401
                       demo_corpus, demo_instructions, load_instructions, load_texts, pack, tokenize_instructions)
    from .evaluate import (CostReport, PerplexityResult, evaluate_model, evaluate_perplexity,  # noqa: F401
                           measure_cost, perplexity)
    from .export import save_pruned  # noqa: F401
    from .groups import Group, Member, find_groups, load_groups, save_groups  # noqa: F401
    from .knowledge import (KnowledgeReport, analyze, calibration_data, load_report, rank_agreement,  # noqa: F401
                            save_report, select_unprunable)
    from .loading import check_model_source, load_model, pick_device  # noqa: F401
    from .prune import LHSPG, Plan, PlanSpec, PruneSettings, load_plan, make_plan, prune  # noqa: F401
    from .pruned_format import load_pruned  # noqa: F401
    from .trace import OpGraph, load_graph, module_tree, trace  # noqa: F401
