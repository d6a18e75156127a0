"""lorashear: structural pruning of Hugging Face causal LMs (LoRAShear) — public API."""
from .compress import CompressReport, compress, mask_units
from .errors import LorashearError
from .export import load_pruned, save_pruned
from .groups import Group, Member, find_groups, load_groups, save_groups
from .trace import OpGraph, load_graph, module_tree, trace

__all__ = ["LorashearError", "trace", "OpGraph", "load_graph", "module_tree", "find_groups", "Group", "Member",
           "save_groups", "load_groups", "compress", "mask_units", "CompressReport", "save_pruned", "load_pruned"]
