"""Per-unit scoring rules that the knowledge estimators and the pruning methods share, written once.

* ``unit_order`` — which units go first: lowest score first (or highest, for a selection), unscored (NaN) units
  last, ties by index. The plan, LHSPG's periods, LoRAPrune's mask updates and the γ selection all rank this way;
  one definition keeps "which unit is less important" the same question everywhere.
* ``ema_update`` — the saliency EMA ``s ← β·s + (1 − β)·new`` that LHSPG and LoRAPrune keep in their
  checkpointed schedule (as JSON lists).
* ``lora_importance`` — LoRAPrune's ``|Ĝ ⊙ W'|`` of one LoRA-wrapped weight, reduced per row and per column;
  ``lora_taylor_units`` — those sums accumulated per unit over a group's slices (what the pruning optimizers
  call every step; the ``lora_taylor`` estimator aggregates the same per-module sums its own way).

Scores here are *additive*: a unit's score is a sum over its parameters (or slices), so a group's or a block's
score is the sum of its units' and "score per parameter" compares units of different sizes. That is why
``estimators.magnitude`` reports the squared norm ``‖x_u‖²`` and never ``‖x_u‖``.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, MutableMapping, Sequence

import numpy as np
import torch
from torch import nn

from .slices import Slice


def unit_order(scores: Any, *, descending: bool = False, exclude: Iterable[int] = ()) -> np.ndarray:
    """Unit indices ordered by score — ascending (least important first) unless ``descending`` — with NaN
    (unscored) units last either way and ties broken by index, so the order is total and deterministic.
    ``exclude``: units left out (already removed, or unprunable)."""
    s = np.asarray(scores, dtype=np.float64)
    nan = np.isnan(s)
    key = np.where(nan, 0.0, -s if descending else s)
    order = np.lexsort((np.arange(len(s)), key, nan))  # last key first: scored before unscored, then by score
    skip = np.fromiter(exclude, dtype=np.int64)
    return order[~np.isin(order, skip)] if skip.size else order


def ema_update(store: MutableMapping[str, list], new: Mapping[str, Any], beta: float) -> None:
    """``store[g] ← β·store[g] + (1 − β)·new[g]`` for every group in ``new`` (``new[g]`` alone the first time).
    Kept as plain lists: the store is part of an optimizer's JSON schedule state that checkpoints resume from."""
    for gid, v in new.items():
        v = np.asarray(v, dtype=np.float64)
        old = store.get(gid)
        store[gid] = (v if old is None else beta * np.asarray(old) + (1 - beta) * v).tolist()


_CHUNK_ELEMENTS = 1 << 22  # elements of Ĝ formed at a time (16 MiB in fp32), whatever the module's size


def lora_importance(layer: nn.Module, weight: torch.Tensor, unbias: bool = True) -> dict[int, torch.Tensor] | None:
    """Per-index sums of ``|Ĝ ⊙ W'|`` along each axis of the weight (``{0: row sums, 1: column sums}``, fp32),
    with ``Ĝ = s·(∇B·A + B·∇A − ∇B·∇A)`` summed over the active adapters and ``W' = W + s·B·A``. Built in
    chunks of rows and reduced on the fly, so no weight-sized tensor is ever allocated — only the rank-r
    factors, their gradients and one 16 MiB chunk.

    With a fresh adapter (B = 0, hence ∇A = 0) the estimate is ``Ĝ = s²·∇W'·AᵀA``: a rank-r sketch of the
    true gradient along the input axis whose expectation over A (iid, zero-mean entries) is
    ``s²·(‖A‖²_F / in)·∇W'``. ``unbias`` divides that factor out, so that the estimate is on the gradient's
    scale in every module (modules with different fan-in would otherwise be weighted differently when a
    unit's slices are summed, e.g. o_proj and down_proj rows in the hidden group). Trained adapters
    (B ≠ 0) always use the formula as is. None when no adapter got a gradient."""
    parts = []
    embedding = isinstance(getattr(layer, "base_layer", None), nn.Embedding)
    for name in getattr(layer, "active_adapters", []):
        if embedding and name in layer.lora_embedding_A:  # PEFT Embedding: ΔW = (B·A)ᵀ·s
            a, b = layer.lora_embedding_A[name], layer.lora_embedding_B[name]
        elif name in getattr(layer, "lora_A", {}):
            a, b = layer.lora_A[name].weight, layer.lora_B[name].weight
        else:
            continue
        if a.grad is None and b.grad is None:
            continue
        ga = torch.zeros_like(a) if a.grad is None else a.grad
        gb = torch.zeros_like(b) if b.grad is None else b.grad
        a, b, ga, gb = (t.detach().float() for t in (a, b, ga, gb))
        s = float(layer.scaling[name])
        g_scale = s
        if unbias and not b.any():
            g_scale = a.shape[1] / (s * float(a.pow(2).sum()))  # s / (s²·‖A‖²_F / in)
        parts.append((a, b, ga, gb, s, g_scale))
    if not parts:
        return None
    transposed = embedding or getattr(layer, "fan_in_fan_out", False)
    w = weight.detach()
    w = w.T if transposed else w  # work in (out, in)
    row_sums = torch.empty(w.shape[0], dtype=torch.float32, device=w.device)
    col_sums = torch.zeros(w.shape[1], dtype=torch.float32, device=w.device)
    step = max(1, _CHUNK_ELEMENTS // max(1, w.shape[1]))
    for r0 in range(0, w.shape[0], step):
        rows = slice(r0, r0 + step)
        g = torch.zeros((min(step, w.shape[0] - r0), w.shape[1]), dtype=torch.float32, device=w.device)
        w_eff = w[rows].float().clone()
        for a, b, ga, gb, s, g_scale in parts:
            # ∇B·A + B·∇A − ∇B·∇A = ∇B·(A − ∇A) + B·∇A
            g.addmm_(gb[rows], a - ga, alpha=g_scale).addmm_(b[rows], ga, alpha=g_scale)
            w_eff.addmm_(b[rows], a, alpha=s)
        imp = g.mul_(w_eff).abs_()
        row_sums[rows] = imp.sum(1)
        col_sums += imp.sum(0)
    return {0: col_sums, 1: row_sums} if transposed else {0: row_sums, 1: col_sums}


def lora_taylor_units(slices: Mapping[str, Sequence[Slice]], n_units: Mapping[str, int], *, unbias: bool = True,
                      normalize: bool = False) -> dict[str, np.ndarray] | None:
    """Per group, the LoRA-Taylor importance of every unit: ``lora_importance`` of each slice's weight (once per
    tensor, shared by the groups that slice it), summed over the unit's indices and over the group's slices
    (float64). ``normalize`` divides each slice's per-unit vector by its L2 norm (+1e-8) before the sum, as
    LoRAPrune's code does per module. Slices without a LoRA layer add nothing. None when no adapter has a
    gradient yet (e.g. before the first backward): there is nothing to score, and a caller keeping an EMA
    must not fold in zeros."""
    cache: dict[int, dict[int, torch.Tensor] | None] = {}
    out: dict[str, np.ndarray] = {}
    any_grad = False
    for gid, sls in slices.items():
        acc = torch.zeros(n_units[gid], dtype=torch.float64)
        for s in sls:
            if s.lora is None:
                continue
            key = id(s.tensor)
            if key not in cache:
                cache[key] = lora_importance(s.lora, s.tensor, unbias=unbias)
            imp = cache[key]
            if imp is None:
                continue
            any_grad = True
            if normalize:
                v = s.reduce(imp, n_units[gid])
                acc += v / (v.norm() + 1e-8)
            else:  # straight into the accumulator: per-index sums keyed by the weight's own axes
                acc.index_add_(0, s.unit_of, imp[s.axis].detach().to("cpu", torch.float64))
        out[gid] = acc.numpy()
    return out if any_grad else None


__all__ = ["unit_order", "ema_update", "lora_importance", "lora_taylor_units"]
