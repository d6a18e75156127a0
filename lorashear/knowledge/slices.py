"""From groups to tensors: which slices of which parameters make up a unit, and how to read or zero them.

Every estimator works on the same thing — a unit's *producer* slices (zeroing them kills the unit, §3 of
the brief) and, for LLM-Pruner-style Taylor scores, its consumer slices too. This module is the one place
that turns a ``Group``'s members into tensors of the model at hand, so that groups traced from the base
model also work on its PEFT-wrapped copy (``…q_proj.weight`` ↔ ``base_model.model.…q_proj.base_layer.weight``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..adapters import is_lora_param
from ..errors import LorashearError
from ..groups import Group, Member


def logical_name(param: str) -> str:
    """The base-model name of a parameter: PEFT's ``base_model.model.`` prefix and ``.base_layer`` removed."""
    if param.startswith("base_model.model."):
        param = param[len("base_model.model."):]
    return param.replace(".base_layer.", ".")


@dataclass
class Slice:
    """One member of a group on this model: the tensor, the axis, and the unit of every index on it."""

    param: str  # logical name
    role: str
    axis: int
    tensor: nn.Parameter
    unit_of: torch.Tensor  # [size along axis] -> unit id (long)
    lora: nn.Module | None  # the PEFT LoRA layer wrapping this weight, if any

    def reduce(self, elem: torch.Tensor | dict[int, torch.Tensor], n_units: int) -> torch.Tensor:
        """Sum an element-wise score tensor (same shape as the weight) into one value per unit (float64).
        ``elem`` may instead be ``{axis: per-index sums over the other axes}`` (estimators that never
        materialise the element-wise scores)."""
        if isinstance(elem, dict):
            per_index = elem[self.axis]
        else:
            other = [d for d in range(elem.dim()) if d != self.axis]
            per_index = elem.sum(dim=other) if other else elem
        out = torch.zeros(n_units, dtype=torch.float64)
        out.index_add_(0, self.unit_of, per_index.detach().to("cpu", torch.float64))
        return out


class ParamIndex:
    """Resolve group member names (exact or logical) to this model's parameters and LoRA layers."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.by_name: dict[str, nn.Parameter] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            self.by_name[name] = p
            self.by_name.setdefault(logical_name(name), p)
        self.lora_of: dict[int, nn.Module] = {}
        try:
            from peft.tuners.lora import LoraLayer
        except ImportError:  # peft is a dependency, but keep the non-LoRA estimators usable without it
            LoraLayer = ()  # noqa: N806
        for mod in model.modules():
            if LoraLayer and isinstance(mod, LoraLayer) and hasattr(mod, "base_layer"):
                w = getattr(mod.base_layer, "weight", None)
                if w is not None:
                    self.lora_of[id(w)] = mod

    def get(self, name: str) -> nn.Parameter:
        p = self.by_name.get(name)
        if p is None:
            p = self.by_name.get(logical_name(name))
        if p is None:
            raise LorashearError(f"parameter '{name}' of the groups is not in this model: were the groups traced from another model?")
        return p

    def slices(self, group: Group, roles: tuple[str, ...] = ("producer",), *, lora_params: bool = False) -> list[Slice]:
        """The group's members with the given roles as ``Slice`` objects, in data-flow-ish order:
        producers before consumers, then by layer and name. LoRA adapter members are skipped unless
        ``lora_params`` (estimators that read the effective weight ``W + s·B·A`` already include them)."""
        rank = {r: i for i, r in enumerate(roles)}
        members = [m for m in group.members if m.role in rank and (lora_params or not is_lora_param(m.param))]
        members.sort(key=lambda m: (rank[m.role], _layer_key(m.param), m.param, m.axis))
        out, seen = [], set()
        for m in members:
            p = self.get(m.param)
            key = (id(p), m.axis, m.role)
            if key in seen:  # a tied weight listed under two names is one slice
                continue
            seen.add(key)
            out.append(Slice(logical_name(m.param), m.role, m.axis, p, unit_map(m, group.n_units, p.shape[m.axis]),
                             self.lora_of.get(id(p))))
        return out


def _layer_key(param: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\.(\d+)\.", param))


def unit_map(member: Member, n_units: int, size: int) -> torch.Tensor:
    """For every index along the member's axis, the unit it belongs to (-> LongTensor of length ``size``)."""
    out = np.full(size, -1, dtype=np.int64)
    for u in range(n_units):
        out[member.unit_indices([u])] = u
    if (out < 0).any():
        raise LorashearError(f"member {member.param} axis {member.axis}: layout {member.layout} does not cover its {size} indices")
    return torch.from_numpy(out)


def effective_weight(sl: Slice) -> torch.Tensor:
    """``W' = W + s·B·A`` for a LoRA-wrapped weight (every active adapter), else ``W``; no grad."""
    w = sl.tensor.detach()
    layer = sl.lora
    if layer is None:
        return w
    w = w.clone()
    for name in getattr(layer, "active_adapters", []):
        if name in getattr(layer, "lora_embedding_A", {}):  # PEFT Embedding: ΔW = (B·A)ᵀ·s
            a, b, transposed = layer.lora_embedding_A[name].detach(), layer.lora_embedding_B[name].detach(), True
        elif name in getattr(layer, "lora_A", {}):
            a, b = layer.lora_A[name].weight.detach(), layer.lora_B[name].weight.detach()
            transposed = getattr(layer, "fan_in_fan_out", False)
        else:
            continue
        delta = (b.float() @ a.float()) * float(layer.scaling[name])
        w += (delta.T if transposed else delta).to(w.dtype)
    return w


class ZeroSlices:
    """Context manager: zero the producer slices of some units in place, restore them on exit."""

    def __init__(self, slices: list[tuple[nn.Parameter, int, torch.Tensor]]):
        self.slices = slices
        self.saved: list[torch.Tensor] = []

    def __enter__(self) -> "ZeroSlices":
        with torch.no_grad():
            for p, axis, idx in self.slices:
                idx = idx.to(p.device)
                self.saved.append(p.index_select(axis, idx).clone())
                p.index_fill_(axis, idx, 0.0)
        return self

    def __exit__(self, *exc) -> None:
        with torch.no_grad():
            # reverse order: a tensor listed twice (tied weights) gets its first, unzeroed copy back last
            for (p, axis, idx), old in reversed(list(zip(self.slices, self.saved))):
                p.index_copy_(axis, idx.to(p.device), old)
        self.saved.clear()
