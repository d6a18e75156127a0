"""What discovery produces: a ``Group`` (one minimally removable structure) and its ``Member`` axes."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..axes import layout_indices

KIND_SUFFIX = {"attention": "heads", "query_heads": "query_heads", "mlp": "channels", "hidden": "hidden", "head_dim": "head_dim", "vocab": "vocab",
               "lora_rank": "lora_rank", "other": "axis"}


@dataclass
class Member:
    """One parameter axis the group touches. A unit of the group is the set of indices along ``axis``
    whose digit ``pos`` in the mixed-radix ``layout`` equals the unit (outer factors give blocks)."""

    param: str
    axis: int
    role: str  # producer (zeroed to kill a unit) | consumer (reads it) | passthrough (element-wise) | index
    layout: list[int]
    pos: int

    def unit_indices(self, units) -> np.ndarray:
        return layout_indices(self.layout, self.pos, units)


@dataclass
class Group:
    id: str
    kind: str
    module: str
    layer: int | None
    n_units: int
    params_per_unit: int
    members: list[Member]
    nodes: list[str]
    prunable: bool
    reason: str | None
    compensation: list[dict] = field(default_factory=list)  # RMS norms to rescale when units go

    def producers(self) -> list[Member]:
        return [m for m in self.members if m.role == "producer"]
