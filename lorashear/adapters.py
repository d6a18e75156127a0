"""PEFT LoRA adapters: which parameters are adapter factors, and fresh adapters for a training run.

``is_lora_param`` is the one test of "is this parameter a LoRA factor" that the knowledge estimators, the pruning
optimizers (only LoRA trains; base weights stay frozen) and recovery (only LoRA is checkpointed) all use. It
lives here, below every stage, because it is a fact about PEFT's parameter names, not about any one stage.

``add_lora`` is the one place prune and recover runs add adapters. Seeded, so a run and its resume (and every
data-parallel process) start from the same adapter initialisation. The knowledge estimators add their own
(``knowledge.estimators``): they target only the prunable groups' layers and never merge.
"""
from __future__ import annotations

import re
from typing import Any

from .errors import LorashearError

# PEFT's adapter tensors: LoRA A/B of linear layers, of embeddings, and DoRA's magnitude vector
_LORA_PARAM = re.compile(r"\.lora_(A|B|embedding_A|embedding_B|magnitude_vector)\b")


def is_lora_param(param: str) -> bool:
    """Whether ``param`` (a name from ``named_parameters``, PEFT prefixes or not) is a LoRA adapter tensor."""
    return bool(_LORA_PARAM.search(param))


def add_lora(model: Any, r: int = 8, alpha: float = 16.0, targets: str = "all-linear", seed: int = 0) -> Any:
    """``model`` wrapped by ``peft.get_peft_model`` with rank-``r`` adapters (no dropout, no bias) on ``targets``:
    ``"all-linear"`` or comma-separated module names. Raises LorashearError if PEFT cannot place them."""
    import torch  # here, not at the top: ``is_lora_param`` is a name test and must not need torch
    from peft import LoraConfig, get_peft_model

    modules: Any = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    torch.manual_seed(seed)
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=modules, bias="none")
    try:
        return get_peft_model(model, cfg)
    except ValueError as exc:
        raise LorashearError(f"cannot add LoRA adapters: {str(exc).splitlines()[0]}") from None


__all__ = ["add_lora", "is_lora_param"]
