"""The producer slices of units as tensors of a (PEFT LoRA) model, and the in-place operations every pruning
method needs on them: read a unit's effective weights, merge its LoRA-B rows into the base rows, zero it.

A unit's producer slices (``groups.Group.producers``) are rows of the base weights (or columns of an
embedding, or a bias). The effective weight of a LoRA-wrapped linear is ``W' = W + s·B·A``, and a producer
row ``i`` of ``W'`` is ``W[i] + s·B[i]·A`` — so everything LHSPG does to a unit touches only the unit's rows of
``W`` and of ``B``: no weight-sized temporary and never a gradient on ``W``.

A few units are proven on the *input* axis of a linear instead (GQA query heads: their ``o_proj`` columns are
the zero set). Column ``j`` of ``W'`` is ``W[:, j] + s·B·A[:, j]``, so such a slice carries the columns of ``A``
instead of the rows of ``B`` (``lora_side == "in"``); read, merged and zeroed the same way, in the same
``[indices, rest]`` layout.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import torch
from torch import nn

from ..errors import LorashearError
from ..groups import Group
from ..knowledge.slices import ParamIndex, Slice


@dataclass
class UnitSlice:
    """One producer slice of a group: the base tensor, the axis, and the LoRA factors of its rows."""

    group: str
    base: torch.Tensor
    axis: int
    unit_of: torch.Tensor  # index along axis -> unit (long, cpu)
    lora_b: torch.Tensor | None  # rows aligned with the indices along ``axis``
    lora_a: torch.Tensor | None
    scaling: float
    lora_side: str = "out"  # "out": the indices are rows of B; "in": columns of A (a slice on the input axis)
    source: Slice | None = None  # the knowledge slice it was made from (its LoRA layer: what saliency scores)

    def indices(self, units: Sequence[int]) -> torch.Tensor:
        return torch.isin(self.unit_of, torch.as_tensor(list(units), dtype=torch.long)).nonzero().flatten()

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Base rows ``[len(idx), rest]`` (fp32) of the given indices."""
        x = self.base.detach().index_select(self.axis, idx.to(self.base.device))
        return x.movedim(self.axis, 0).reshape(len(idx), -1).float()

    def delta(self, idx: torch.Tensor) -> torch.Tensor | None:
        """``s·B[idx]·A`` in the layout of ``rows`` (fp32), or None without LoRA."""
        if self.lora_b is None:
            return None
        i = idx.to(self.lora_b.device)
        if self.lora_side == "in":
            return (self.lora_b.detach().float() @ self.lora_a.detach().index_select(1, i).float()).T * self.scaling
        return (self.lora_b.detach().index_select(0, i).float() @ self.lora_a.detach().float()) * self.scaling

    def write(self, idx: torch.Tensor, values: torch.Tensor) -> None:
        """Set base rows ``idx`` to ``values`` (layout of ``rows``)."""
        shape = list(self.base.shape)
        shape.pop(self.axis)
        v = values.reshape(len(idx), *shape).movedim(0, self.axis).to(self.base.dtype)
        self.base.data.index_copy_(self.axis, idx.to(self.base.device), v)

    def zero_lora_rows(self, idx: torch.Tensor) -> None:
        """Zero the LoRA factor entries of these indices (rows of B, or columns of A on the input side)."""
        if self.lora_b is None:
            return
        if self.lora_side == "in":
            self.lora_a.data.index_fill_(1, idx.to(self.lora_a.device), 0.0)
        else:
            self.lora_b.data.index_fill_(0, idx.to(self.lora_b.device), 0.0)


def unit_slices(model: nn.Module, groups: Iterable[Group]) -> dict[str, list[UnitSlice]]:
    """Every producer slice of every group, with its LoRA factors when the owning layer carries an adapter."""
    index = ParamIndex(model)
    out: dict[str, list[UnitSlice]] = {}
    for g in groups:
        out[g.id] = [_unit_slice(g.id, s) for s in index.slices(g, ("producer",))]
    return out


def _unit_slice(gid: str, s: Slice) -> UnitSlice:
    a = b = None
    scaling = 0.0
    side = "out"
    layer = s.lora
    if layer is not None:
        names = [n for n in getattr(layer, "active_adapters", []) if n in getattr(layer, "lora_A", {}) or n in getattr(layer, "lora_embedding_A", {})]
        if len(names) > 1:
            raise LorashearError(f"{s.param}: more than one active LoRA adapter ({names}); pruning needs exactly one")
        if names:
            name = names[0]
            embedding = name in getattr(layer, "lora_embedding_A", {})
            out_axis = 1 if embedding or getattr(layer, "fan_in_fan_out", False) else 0
            if s.tensor.dim() != 2:
                raise LorashearError(f"{s.param}: a LoRA layer whose weight is not 2-D cannot be pruned")
            side = "out" if s.axis == out_axis else "in"
            if embedding:
                a, b = layer.lora_embedding_A[name], layer.lora_embedding_B[name]
            else:
                a, b = layer.lora_A[name].weight, layer.lora_B[name].weight
            scaling = float(layer.scaling[name])
    return UnitSlice(gid, s.tensor, s.axis, s.unit_of, b, a, scaling, side, s)


def zero_units(slices: Mapping[str, list[UnitSlice]], removal: Mapping[str, Sequence[int]]) -> None:
    """Zero base rows and their LoRA entries (B rows / A columns): the unit's effective producer weights become 0."""
    with torch.no_grad():
        for gid, units in removal.items():
            if not units:
                continue
            for us in slices[gid]:
                idx = us.indices(units)
                us.base.data.index_fill_(us.axis, idx.to(us.base.device), 0.0)
                us.zero_lora_rows(idx)


def effective_sq_norms(slices: Mapping[str, list[UnitSlice]], n_units: Mapping[str, int]) -> dict[str, torch.Tensor]:
    """``‖x_u‖²`` of the effective producer weights of every unit of every group (float64, cpu): squared, like
    ``knowledge.estimators.magnitude``, so that the score adds up over parameters."""
    out = {}
    with torch.no_grad():
        for gid, sls in slices.items():
            acc = torch.zeros(n_units[gid], dtype=torch.float64)
            for us in sls:
                idx = torch.arange(us.unit_of.numel())
                x = us.rows(idx)
                d = us.delta(idx)
                if d is not None:
                    x = x + d.to(x.device)
                acc.index_add_(0, us.unit_of, x.pow(2).sum(1).double().cpu())
            out[gid] = acc
    return out
