"""Fresh PEFT LoRA adapters for a training run: the one place prune and recover runs add them.

Seeded, so a run and its resume (and every data-parallel process) start from the same adapter initialisation.
The knowledge estimators add their own (``knowledge.estimators``): they target only the prunable groups'
layers and never merge.
"""
from __future__ import annotations

from typing import Any

import torch

from .errors import LorashearError


def add_lora(model: Any, r: int = 8, alpha: float = 16.0, targets: str = "all-linear", seed: int = 0) -> Any:
    """``model`` wrapped by ``peft.get_peft_model`` with rank-``r`` adapters (no dropout, no bias) on ``targets``:
    ``"all-linear"`` or comma-separated module names. Raises LorashearError if PEFT cannot place them."""
    from peft import LoraConfig, get_peft_model

    modules: Any = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    torch.manual_seed(seed)
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=modules, bias="none")
    try:
        return get_peft_model(model, cfg)
    except ValueError as exc:
        raise LorashearError(f"cannot add LoRA adapters: {str(exc).splitlines()[0]}") from None


__all__ = ["add_lora"]
