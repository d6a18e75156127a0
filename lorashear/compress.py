"""Exact physical removal of units: the masked model and the smaller model give the same logits.

``mask_units`` zeroes the producer slices of the chosen units (what LHSPG converges to); ``compress``
removes every member slice (producers, consumers, pass-through norm weights, LoRA rows/columns) with
``index_select``, rescales RMSNorm weight and eps so that the smaller mean equals the masked one, and
brings module attributes and the config in line with the new sizes.

``compress`` verifies itself by default: it masks the units on the model it is about to slice (the zeroed
producer slices are removed anyway, so this costs no copy), runs it on a small seeded batch, compresses,
runs the smaller model on the same batch and raises ``CompressionNotExact`` naming the groups (and, when
cheap, the offending ones) if the logits disagree beyond tolerance. A module that derives sizes from its own
constants (CodeGen's ``mp_num``) is caught here even where the graph cannot show it.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import LorashearError
from .evaluate import forward_logits
from .groups import Group

Removal = dict[str, list[int]]  # group id -> units to remove

# attention-module attributes that count heads or head*dim and must shrink with removed heads
_HEAD_ATTRS = ("num_heads", "num_attention_heads", "n_head", "n_heads", "num_key_value_heads", "num_kv_heads",
               "embed_dim", "split_size", "all_head_size", "inner_dim")
# ... and those that count query heads (per kv group or in all) when the i-th query head of every kv group goes
_QUERY_HEAD_ATTRS = ("num_key_value_groups", "num_heads", "num_attention_heads", "n_head", "n_heads", "all_head_size")
_MLP_ATTRS = ("intermediate_size", "ffn_dim", "n_inner")
_HIDDEN_ATTRS = ("hidden_size", "d_model")
_CONFIG_MLP = ("intermediate_size", "ffn_dim", "n_inner")


@dataclass
class CompressReport:
    removed: Removal
    params_before: int
    params_after: int
    module_attrs: dict[str, dict[str, float | int]] = field(default_factory=dict)
    layer_sizes: dict[str, dict[str, int]] = field(default_factory=dict)
    uniform: bool = True
    config_before: dict = field(default_factory=dict)  # what to save when the new sizes make no valid config
    verified: bool = False  # masked and compressed logits compared on a seeded batch
    max_diff: float | None = None
    tolerance: float | None = None


class CompressionNotExact(LorashearError):
    """The compressed model does not compute what the masked model computes."""


VERIFY_BATCH, VERIFY_SEQ = 2, 16


def verify_tolerance(logits: torch.Tensor) -> float:
    """Allowed max |masked − compressed|: 1e-4 in fp32 (the exactness bar), 5e-2 in half precision (the
    smaller matrices sum in another order), both relative to the logits' scale when it exceeds 1."""
    scale = max(1.0, float(logits.float().abs().max()))
    return (1e-4 if logits.dtype in (torch.float32, torch.float64) else 5e-2) * scale


def verification_batch(model: nn.Module, *, batch: int = VERIFY_BATCH, seq_len: int = VERIFY_SEQ, seed: int = 0) -> torch.Tensor:
    """A small seeded batch of token ids within the model's vocabulary and context, on its device."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = getattr(base, "config", None)
    vocab = int(getattr(cfg, "vocab_size", None) or 2)
    ctx = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or seq_len
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, min(seq_len, int(ctx))), generator=gen)
    return ids.to(next(model.parameters()).device)


def validate_removal(groups: list[Group], removal: Removal) -> dict[str, Group]:
    """Check ids, prunability and unit ranges; every group keeps at least one unit."""
    by_id = {g.id: g for g in groups}
    for gid, units in removal.items():
        g = by_id.get(gid)
        if g is None:
            raise LorashearError(f"unknown group '{gid}'")
        if not units:
            continue
        if not g.prunable:
            raise LorashearError(f"group '{gid}' is not prunable: {g.reason}")
        bad = [u for u in units if not 0 <= int(u) < g.n_units]
        if bad:
            raise LorashearError(f"group '{gid}' has units 0..{g.n_units - 1}; got {bad[:5]}")
        if len(set(units)) >= g.n_units:
            raise LorashearError(f"group '{gid}': removing all {g.n_units} units would remove the structure; keep at least one")
    return by_id


def _param_slices(groups_by_id: dict[str, Group], removal: Removal, roles=None) -> dict[str, dict[int, torch.Tensor]]:
    """param name -> axis -> sorted indices to remove (union over groups)."""
    out: dict[str, dict[int, set[int]]] = {}
    for gid, units in removal.items():
        if not units:
            continue
        for m in groups_by_id[gid].members:
            if roles is not None and m.role not in roles:
                continue
            out.setdefault(m.param, {}).setdefault(m.axis, set()).update(int(i) for i in m.unit_indices(units))
    return {p: {ax: torch.tensor(sorted(ix), dtype=torch.long) for ax, ix in axes.items()} for p, axes in out.items()}


def mask_units(model: nn.Module, groups: list[Group], removal: Removal) -> None:
    """Zero the producer slices of the given units in place (the masked model of the exactness test)."""
    by_id = validate_removal(groups, removal)
    with torch.no_grad():
        for name, axes in _param_slices(by_id, removal, roles={"producer"}).items():
            w = model.get_parameter(name)
            for ax, idx in axes.items():
                w.index_fill_(ax, idx.to(w.device), 0.0)


def _owners(model: nn.Module) -> dict[int, list[tuple[nn.Module, str]]]:
    """Every (module, attribute) holding each parameter object — tied weights have several."""
    owners: dict[int, list[tuple[nn.Module, str]]] = {}
    for mod in model.modules():
        for attr, p in mod._parameters.items():
            if p is not None:
                owners.setdefault(id(p), []).append((mod, attr))
    return owners


def compress(model: nn.Module, groups: list[Group], removal: Removal, *, inplace: bool = False,
             verify: bool = True) -> tuple[nn.Module, CompressReport]:
    """Return a physically smaller model of the same class without the given units, and a report.

    ``verify`` (default) checks the result against the masked model on a small seeded batch and raises
    ``CompressionNotExact`` when they disagree; it costs two forward passes of 2×16 tokens and one logits
    tensor of memory (measured in docs/groups.md). ``verify=False`` skips it for very large models.
    """
    by_id = validate_removal(groups, removal)
    removal = {gid: sorted({int(u) for u in units}) for gid, units in removal.items() if units}
    original = None if inplace else model
    if not inplace:
        model = copy.deepcopy(model)
    reference = ids = None
    if verify and removal and not any(p.is_meta for p in model.parameters()):  # a meta model has no numbers to check
        ids = verification_batch(model)
        mask_units(model, groups, removal)  # in place: the zeroed producer slices are about to be removed
        reference = forward_logits(model, ids)
    params_before = sum(p.numel() for p in model.parameters())
    owners = _owners(model)
    attrs: dict[str, dict[str, float | int]] = {}
    path_of = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}

    with torch.no_grad():
        # 1. norm compensation (before slicing: weight sizes are still the masked model's)
        for gid, units in removal.items():
            g = by_id[gid]
            for comp in g.compensation:
                w = model.get_parameter(comp["weight"])
                d = w.shape[0]
                k = len(next(m for m in g.members if m.param == comp["weight"]).unit_indices(units))
                ratio = d / (d - k)
                w.mul_(math.sqrt(ratio))
                mod = model.get_submodule(comp["module"]) if comp.get("module") else None
                if mod is not None and comp.get("eps"):
                    for attr in ("variance_epsilon", "eps", "epsilon"):
                        val = getattr(mod, attr, None)
                        if isinstance(val, float) and math.isclose(val, comp["eps"], rel_tol=1e-6):
                            setattr(mod, attr, val * ratio)
                            attrs.setdefault(comp["module"], {})[attr] = val * ratio
        # 2. slice every member
        by_tensor: dict[int, tuple[nn.Parameter, dict[int, torch.Tensor]]] = {}
        for name, axes in _param_slices(by_id, removal).items():
            p = model.get_parameter(name)  # tied names resolve to one tensor: merge their slices
            _, merged = by_tensor.setdefault(id(p), (p, {}))
            for ax, idx in axes.items():
                merged[ax] = torch.unique(torch.cat([merged[ax], idx])) if ax in merged else idx
        for p, axes in by_tensor.values():
            new = p.data
            for ax, idx in sorted(axes.items()):
                keep = _complement(new.shape[ax], idx)
                new = new.index_select(ax, keep.to(new.device))
            newp = nn.Parameter(new.contiguous(), requires_grad=p.requires_grad)
            for mod, attr in owners.get(id(p), []):
                mod._parameters[attr] = newp
    # 3. module attributes follow the new shapes
    _sync_shape_attrs(model, path_of, attrs)
    for gid, units in removal.items():
        g = by_id[gid]
        remaining, total = g.n_units - len(units), g.n_units
        names = {"attention": _HEAD_ATTRS, "query_heads": _QUERY_HEAD_ATTRS, "mlp": _MLP_ATTRS}.get(g.kind, ())
        if names:
            for path in _candidate_paths(model, g.module):
                mod = model.get_submodule(path)
                hits = [a for a in names if isinstance(getattr(mod, a, None), int) and not isinstance(getattr(mod, a), bool)]
                for attr in hits:
                    val = getattr(mod, attr)
                    if val % total == 0:
                        setattr(mod, attr, val * remaining // total)
                        attrs.setdefault(path, {})[attr] = val * remaining // total
                if hits:
                    break
        if g.kind == "hidden":
            for path, mod in model.named_modules():
                for attr in _HIDDEN_ATTRS:
                    if getattr(mod, attr, None) == total:
                        setattr(mod, attr, remaining)
                        attrs.setdefault(path, {})[attr] = remaining
    layer_sizes, uniform = _layer_sizes(groups, removal)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    before = base.config.to_dict() if hasattr(base, "config") else {}
    _update_config(model, groups, removal, uniform)
    report = CompressReport(removal, params_before, sum(p.numel() for p in model.parameters()), attrs, layer_sizes, uniform, before)
    if reference is not None:
        report.tolerance = verify_tolerance(reference)
        try:
            out = forward_logits(model, ids)
        except Exception as exc:  # a module that kept an old size fails outright instead of computing wrong numbers
            raise CompressionNotExact(
                f"the compressed model fails to run ({type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}) "
                f"after removing units of {_names(removal)}" + _culprits(original, groups, removal)) from None
        report.max_diff = float((out.float() - reference.float()).abs().max()) if out.shape == reference.shape else float("inf")
        report.verified = True
        if not report.max_diff <= report.tolerance:
            raise CompressionNotExact(
                f"compression is not exact: masked and compressed logits differ by {report.max_diff:.3g} "
                f"(tolerance {report.tolerance:.1g}) after removing units of {_names(removal)}"
                + _culprits(original, groups, removal) + "; a module of this architecture derives sizes that compress cannot rewrite")
    return model, report


def _names(removal: Removal, limit: int = 6) -> str:
    ids = list(removal)
    return ", ".join(ids[:limit]) + (f" and {len(ids) - limit} more groups" if len(ids) > limit else "")


_BISECT_MAX_GROUPS, _BISECT_MAX_PARAMS = 32, 50_000_000


def _culprits(original: nn.Module | None, groups: list[Group], removal: Removal) -> str:
    """Which single groups are not exact on their own — when the untouched model is at hand and small
    enough that one masked + compressed trial per group is cheap."""
    if original is None or len(removal) <= 1:
        return ""
    n = sum(p.numel() for p in original.parameters())
    if len(removal) > _BISECT_MAX_GROUPS or n > _BISECT_MAX_PARAMS:
        return " (compress those groups one at a time to find the offending one)"
    bad = []
    for gid, units in removal.items():
        try:
            compress(original, groups, {gid: units}, verify=True)
        except CompressionNotExact:
            bad.append(gid)
    return f"; on its own, not exact: {', '.join(bad)}" if bad else "; every group is exact on its own, only their combination is not"


def _complement(n: int, idx: torch.Tensor) -> torch.Tensor:
    keep = torch.ones(n, dtype=torch.bool)
    keep[idx] = False
    return keep.nonzero().flatten()


def _candidate_paths(model: nn.Module, logical: str) -> list[str]:
    """The module at ``logical`` path (also under a PEFT ``base_model.model.`` prefix) and its ancestors up
    to the layer, nearest first: head counts live on the attention module, not on its projections."""
    names = dict(model.named_modules())
    parts = logical.split(".") if logical else []
    out = []
    for i in range(len(parts), 0, -1):
        path = ".".join(parts[:i])
        out += [p for p in (path, f"base_model.model.{path}") if p in names]
        if parts[i - 1].isdigit():
            break
    return out


def _sync_shape_attrs(model: nn.Module, path_of: dict[int, str], attrs: dict) -> None:
    from transformers.pytorch_utils import Conv1D

    for mod in model.modules():
        path = path_of.get(id(mod), "")
        changed = {}
        w = getattr(mod, "weight", None) if isinstance(getattr(mod, "weight", None), torch.Tensor) else None
        if isinstance(mod, nn.Linear) and w is not None:
            changed = {"in_features": w.shape[1], "out_features": w.shape[0]}
        elif isinstance(mod, nn.Embedding) and w is not None:
            changed = {"num_embeddings": w.shape[0], "embedding_dim": w.shape[1]}
        elif isinstance(mod, Conv1D) and w is not None:
            changed = {"nf": w.shape[1], "nx": w.shape[0]}
        elif isinstance(mod, nn.LayerNorm) and w is not None:
            changed = {"normalized_shape": (w.shape[0],)}
        elif hasattr(mod, "base_layer") and hasattr(mod, "in_features"):  # PEFT LoRA wrapper
            bw = mod.get_base_layer().weight
            fan_in_fan_out = getattr(mod, "fan_in_fan_out", False)
            changed = {"in_features": bw.shape[0 if fan_in_fan_out else 1], "out_features": bw.shape[1 if fan_in_fan_out else 0]}
        for attr, val in changed.items():
            if getattr(mod, attr, None) != val:
                setattr(mod, attr, val)
                attrs.setdefault(path, {})[attr] = list(val) if isinstance(val, tuple) else val


def _layer_sizes(groups: list[Group], removal: Removal) -> tuple[dict[str, dict[str, int]], bool]:
    """Remaining units per layer and kind; uniform when every layer keeps the same count per kind."""
    sizes: dict[str, dict[str, int]] = {}
    for g in groups:
        if g.kind in ("attention", "query_heads", "mlp", "hidden") and g.prunable:
            key = "model" if g.layer is None else str(g.layer)
            sizes.setdefault(key, {})[g.kind] = g.n_units - len(removal.get(g.id, []))
    per_kind: dict[str, set[int]] = {}
    for s in sizes.values():
        for kind, n in s.items():
            per_kind.setdefault(kind, set()).add(n)
    return sizes, all(len(v) == 1 for v in per_kind.values())


def _update_config(model: nn.Module, groups: list[Group], removal: Removal, uniform: bool) -> None:
    """Write the new sizes into the config when one config can describe every layer."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = getattr(base, "config", None)
    if cfg is None:
        return
    if getattr(cfg, "head_dim", None) is None and getattr(cfg, "num_attention_heads", None) and hasattr(cfg, "hidden_size"):
        # write the head size every config omits when it is hidden_size / heads (Qwen2, OLMo2, Granite, …):
        # once hidden or heads shrink, that quotient is no longer the head size the weights and the rotary
        # inv_freq (a non-persistent buffer rebuilt from the config) were made with
        cfg.head_dim = cfg.hidden_size // cfg.num_attention_heads
    for kind in ("hidden", "attention", "query_heads", "mlp"):
        gs = [g for g in groups if g.kind == kind and g.prunable]
        if not gs or not any(removal.get(g.id) for g in gs):
            continue
        keep = {g.n_units - len(removal.get(g.id, [])) for g in gs}
        total = gs[0].n_units
        if len(keep) != 1 or not uniform:
            continue
        r = keep.pop()
        if kind == "hidden":
            eps_ratio = total / r
            cfg.hidden_size = r
            for eps_name in ("rms_norm_eps",):
                if isinstance(getattr(cfg, eps_name, None), float) and gs[0].compensation:
                    setattr(cfg, eps_name, getattr(cfg, eps_name) * eps_ratio)
        elif kind == "attention":
            if getattr(cfg, "head_dim", None) is None and hasattr(cfg, "num_attention_heads"):
                cfg.head_dim = cfg.hidden_size // cfg.num_attention_heads
            for name in ("num_attention_heads", "num_key_value_heads"):
                val = getattr(cfg, name, None)
                if isinstance(val, int) and val % total == 0:
                    setattr(cfg, name, val * r // total)
        elif kind == "query_heads":  # r of total query heads per kv group remain: only the query head count shrinks
            if getattr(cfg, "head_dim", None) is None and hasattr(cfg, "num_attention_heads"):
                cfg.head_dim = cfg.hidden_size // cfg.num_attention_heads
            val = getattr(cfg, "num_attention_heads", None)
            if isinstance(val, int) and val % total == 0:
                cfg.num_attention_heads = val * r // total
        elif kind == "mlp":
            for name in _CONFIG_MLP:
                val = getattr(cfg, name, None)
                if isinstance(val, int) and val % total == 0:
                    setattr(cfg, name, val * r // total)
                    break
