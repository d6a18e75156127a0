"""FLAP (An et al., AAAI'24) on our groups: fluctuation-based importance from calibration activations, and the
bias compensation that adds the removed units' mean contribution back into the consumer's bias.

* **Importance** (FLAP's WIFV metric): for every consumer slice of a unit — the input columns of the linear
  layer that reads the unit (``o_proj`` for a head, ``down_proj`` for an MLP channel, every reader of a hidden
  channel; for a GQA query head, whose zero set is its ``o_proj`` columns, those producer columns) — the variance over calibration tokens of that input column times the squared norm of the weight
  column, summed over the unit's columns and slices; then **standardised per kind within each layer** (z-score
  over the units of each group — one layer's heads, one layer's MLP channels — as FLAP's code standardises each
  layer's score vector), so heads and channels of every layer rank on one scale.
* **Bias compensation**: after the plan is fixed, ``bias += W[:, removed] @ mean_input[removed]`` on each
  consumer of a removed head / MLP channel: the pruned model outputs, on average, what the dense one did.
  LLaMA-style configs carry such biases only as ``attention_bias`` / ``mlp_bias`` (every projection of the
  block gets a bias), so ``add_biases`` turns those flags on and adds zero biases *before* the groups are traced:
  the exported model then reloads with the stock class, biases included. A config that cannot carry them gets no
  compensation (the run report says so) — never a model that reloads differently from what was evaluated.
"""
from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..groups import Group
from ..knowledge.slices import ParamIndex

ATTENTION_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_LINEARS = ("gate_proj", "up_proj", "down_proj")
COMPENSATED_KINDS = ("attention", "query_heads", "mlp")


def add_biases(model: nn.Module, kinds: Sequence[str]) -> dict[str, Any]:
    """Give every attention / MLP projection a zero bias through the stock config flags (``attention_bias``,
    ``mlp_bias``) for the pruned kinds; undone when the config cannot describe the result."""
    from ..loading import model_from_config

    cfg = model.config
    flags = {"attention_bias": ATTENTION_LINEARS} if {"attention", "query_heads"} & set(kinds) else {}
    if "mlp" in kinds:
        flags["mlp_bias"] = MLP_LINEARS
    flags = {f: names for f, names in flags.items() if hasattr(cfg, f)}
    if not flags:
        return {"biases": "none added: the config has no attention_bias / mlp_bias field", "params_added": 0}
    added: list[tuple[nn.Linear, str]] = []
    old = {f: getattr(cfg, f) for f in flags}
    for f, names in flags.items():
        setattr(cfg, f, True)
        for path, mod in model.named_modules():
            if isinstance(mod, nn.Linear) and path.rsplit(".", 1)[-1] in names and mod.bias is None:
                p = next(mod.parameters())
                mod.bias = nn.Parameter(torch.zeros(mod.out_features, dtype=p.dtype, device=p.device), requires_grad=False)
                added.append((mod, path))
    ref = model_from_config(copy.deepcopy(cfg), meta=True)
    have = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    if set(have) != set(want):
        for mod, _ in added:
            mod.bias = None
        for f, v in old.items():
            setattr(cfg, f, v)
        return {"biases": "none added: the stock config cannot describe the biases FLAP needs", "params_added": 0}
    return {"biases": f"{', '.join(flags)} set: {len(added)} zero biases added", "params_added": sum(m.out_features for m, _ in added)}


def _linear_owners(model: nn.Module) -> dict[int, list[nn.Linear]]:
    out: dict[int, list[nn.Linear]] = defaultdict(list)
    for mod in model.modules():
        if isinstance(mod, nn.Linear):
            out[id(mod.weight)].append(mod)
    return out


def _input_roles(g: Group) -> tuple[str, ...]:
    """Where a unit's input columns are: its consumers' — except a GQA query head, proven by its o_proj columns,
    which are its producer slice (its q rows are the consumers, on the output axis)."""
    return ("producer", "consumer") if g.kind == "query_heads" else ("consumer",)


@torch.no_grad()
def fluctuation(model: nn.Module, groups: Sequence[Group], samples: torch.Tensor, *, batch_size: int = 8
                ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict]:
    """(raw WIFV score per unit, the same standardised per group, input statistics for ``compensate``)."""
    idx = ParamIndex(model)
    owners = _linear_owners(model)
    slices = {g.id: [s for s in idx.slices(g, _input_roles(g)) if s.axis == 1 and owners.get(id(s.tensor))] for g in groups}
    mods = {id(m): m for sls in slices.values() for s in sls for m in owners[id(s.tensor)]}
    stats: dict[int, list] = {}

    def hook(mod, args):
        x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
        st = stats.setdefault(id(mod), [torch.zeros(x.shape[1], dtype=torch.float64, device=x.device),
                                        torch.zeros(x.shape[1], dtype=torch.float64, device=x.device), 0])
        st[0] += x.sum(0)
        st[1] += (x * x).sum(0)
        st[2] += x.shape[0]

    handles = [m.register_forward_pre_hook(hook) for m in mods.values()]
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    try:
        for i in range(0, samples.shape[0], batch_size):
            model(input_ids=samples[i:i + batch_size].to(dev), use_cache=False)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    mean = {k: (s / n).cpu() for k, (s, _, n) in stats.items()}
    var = {k: (q / n).cpu() - mean[k] ** 2 for k, (_, q, n) in stats.items()}
    raw: dict[str, np.ndarray] = {}
    for g in groups:
        acc = torch.zeros(g.n_units, dtype=torch.float64)
        for s in slices[g.id]:
            col = s.tensor.detach().double().pow(2).sum(0).cpu()
            for m in owners[id(s.tensor)]:
                if id(m) in var:
                    acc += s.reduce({1: var[id(m)].clamp_min(0) * col}, g.n_units)
        raw[g.id] = acc.numpy()
    std: dict[str, np.ndarray] = {}
    for g in groups:  # per kind within each layer: FLAP's code standardises each layer's vector of a module kind
        v = raw[g.id]
        sd = float(v.std(ddof=1)) if v.size > 1 else 0.0
        std[g.id] = (v - v.mean()) / (sd if sd > 0 else 1.0)
    return raw, std, {"mean": mean, "slices": slices, "owners": owners}


def plan_scores(groups: Sequence[Group], z: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Scores for ``make_plan`` that rank units by their standardised score itself (FLAP's global order), not per
    parameter: ``make_plan`` divides by the unit's parameters, so multiply by them (after a shift to > 0)."""
    lo = min(float(v.min()) for v in z.values() if v.size)
    return {g.id: (z[g.id] - lo + 1e-6) * max(1, g.params_per_unit) for g in groups if g.id in z}


@torch.no_grad()
def compensate(groups: Sequence[Group], removal: dict[str, list[int]], stats: dict) -> dict[str, Any]:
    """``bias += W[:, removed] @ mean_input[removed]`` on every consumer of a removed head / MLP channel."""
    kinds = {g.id: g.kind for g in groups}
    done, skipped, total = set(), set(), 0.0
    for gid, units in removal.items():
        if not units or kinds.get(gid) not in COMPENSATED_KINDS:
            continue
        for s in stats["slices"].get(gid, []):
            cols = torch.isin(s.unit_of, torch.as_tensor(units, dtype=torch.long)).nonzero().flatten()
            for m in stats["owners"][id(s.tensor)]:
                if id(m) not in stats["mean"]:
                    continue
                if m.bias is None:
                    skipped.add(s.param)
                    continue
                mu = stats["mean"][id(m)][cols].to(m.weight.device, torch.float64)
                add = m.weight.detach().index_select(1, cols.to(m.weight.device)).double() @ mu
                m.bias.data += add.to(m.bias.dtype)
                total += float(add.abs().sum())
                done.add(s.param)
    return {"compensated": sorted(done), "not_compensated": sorted(skipped), "bias_added_l1": total}
