"""lorashear: structural pruning of Hugging Face causal LMs (LoRAShear) — public API."""
from .errors import LorashearError

__all__ = ["LorashearError"]
