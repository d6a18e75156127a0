"""Knowledge estimators: how much the calibration loss depends on each unit of each prunable group.

Four estimators, one output shape (``Scores``: one float per unit of every group, plus any block
measurements) so the report, the unprunable selection and the UI never care which one ran:

* ``ablation`` — the measured loss increase when a unit, or a block of units, is zeroed (the ground truth;
  one forward per block, with the unchanged layers before the ablated one served from a cache);
* ``lora_taylor`` — LoRAPrune's first-order estimate from LoRA gradients only: ``Ĝ = s·(∇B·A + B·∇A − ∇B·∇A)``,
  importance ``|Ĝ ⊙ W'|`` summed over the unit's producer slices; base weights never get a gradient;
* ``taylor`` — LLM-Pruner's scores from true base-weight gradients: element-wise first order ``|W·∇W|``,
  second order ``|W·∇W − ½·W·H·W|`` (H = diagonal Fisher, mean squared per-sample gradient), vector-wise
  ``|Σ W·∇W|``, aggregated over the unit's slices with sum / prod / max / last;
* ``magnitude`` — ``‖W'_u‖²``, the squared L2 norm of the unit's producer slices (no data).

GQA query heads (kind ``query_heads``, producer slices = o_proj columns, exact zero of the head's output) are
scored by ablation, taylor (o_proj columns and q rows) and magnitude (o_proj columns); LoRA-Taylor cannot
score column slices and says so (``LORA_TAYLOR_UNSCORABLE``). Their units overlap the kv-head units, so the
report keeps them out of its roll-ups.

Every score is additive over parameters (a sum of per-element or per-block contributions; hence the squared norm
for magnitude), so units of different sizes are compared per parameter downstream (``density`` in the report).
"""
from __future__ import annotations

import re
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import LorashearError
from ..groups import Group
from .calibration import backward_mean_loss, batches, check_samples, token_nll_sum
from ..adapters import is_lora_param
from .scoring import lora_importance
from .slices import ParamIndex, Slice, ZeroSlices, effective_weight, logical_name

ESTIMATORS = ("ablation", "lora_taylor", "taylor", "magnitude")
AGGREGATIONS = ("sum", "prod", "max", "last")
TAYLOR_VARIANTS = ("first", "second", "vector")
# units per ablation block: a head is one unit; MLP and hidden channels are measured in bins
DEFAULT_BINS = {"attention": 1, "query_heads": 1, "mlp": 16, "hidden": 16}

Progress = Callable[[int, int], None]  # (done, total)
MAGNITUDE_SCORE = "squared L2 norm of the producer slices"  # what a magnitude report's ``score`` is (meta notes)


@dataclass
class Scores:
    """What an estimator returns: per-unit scores of every scored group, and how they were obtained."""

    estimator: str
    units: dict[str, np.ndarray]  # group id -> float64 score per unit
    block_of: dict[str, np.ndarray] = field(default_factory=dict)  # group id -> block index per unit (ablation bins)
    blocks: list[dict] = field(default_factory=list)  # every block measurement (ablation)
    settings: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)  # base loss, uncovered parameters, ...


# Kinds whose units partition the weights they touch: per-layer totals, shares and the γ selection add them up.
ROLLUP_KINDS = ("attention", "mlp", "hidden")
# Query-head units (GQA, the i-th query head of every kv group) overlap the kv-head units of the same layer on
# q rows / o_proj columns: adding both would count each layer's attention twice. They are scored and stored
# (kind "query_heads") so the app can draw them, but the report keeps them out of every roll-up and the γ
# selection ranks without them (see ``report.KnowledgeReport`` and ``selection.select_unprunable``).
OVERLAP_KINDS = ("query_heads",)
ANALYSED_KINDS = ROLLUP_KINDS + OVERLAP_KINDS
# What LoRA-Taylor cannot score, and why: it says so in ``notes["unscored_kinds"]`` rather than inventing a number.
LORA_TAYLOR_UNSCORABLE = {
    "query_heads": "a query head's producer slices are o_proj columns, and LoRA's gradient sketch "
                   "s·∇W'·AᵀA mixes every input column of o_proj through AᵀA (rank r much below the fan-in), so "
                   "per-column importances would be noise; use taylor, ablation or magnitude for query heads",
}


def _prunable(groups: list[Group], kinds: Sequence[str] = ANALYSED_KINDS) -> list[Group]:
    out = [g for g in groups if g.prunable and g.kind in kinds]
    if not out:
        raise LorashearError("the model has no prunable groups: nothing to analyse")
    return out


def _tick(progress: Progress | None, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)


class _Steps:
    """A progress counter over ``total`` steps of work: call it after each step (``done`` counts them)."""

    def __init__(self, progress: Progress | None, total: int):
        self.progress, self.total, self.done = progress, total, 0

    def __call__(self) -> None:
        self.done += 1
        _tick(self.progress, self.done, self.total)


# ------------------------------------------------------------------------------------------- ablation
def _block_plan(g: Group, bins: dict[str, int], whole_groups: bool) -> list[tuple[str, int, list[int]]]:
    size = max(1, int(bins.get(g.kind, 1)))
    plan = [("bin" if size > 1 else "unit", b, list(range(s, min(s + size, g.n_units))))
            for b, s in enumerate(range(0, g.n_units, size))]
    # zeroing every hidden channel kills the model; every query head of a layer is its whole attention, which
    # the attention group's own whole-group block already measures
    if whole_groups and g.kind not in ("hidden", *OVERLAP_KINDS) and len(plan) > 1:
        plan.append(("group", 0, list(range(g.n_units))))
    return plan


def _decoder_layers(model: nn.Module, groups: list[Group]) -> dict[int, nn.Module]:
    """Layer index -> the decoder-layer module (``model.layers.3``) for layer-local groups, when found."""
    out: dict[int, nn.Module] = {}
    roots = [model] + [m for m in (getattr(getattr(model, "base_model", None), "model", None),) if m is not None]
    for g in groups:
        if g.layer is None or g.layer in out:
            continue
        m = re.match(rf"^(.*?\.{g.layer})(\.|$)", g.module)
        if not m:
            continue
        for root in roots:
            try:
                out[g.layer] = root.get_submodule(m.group(1))
                break
            except AttributeError:
                continue
    return out


class _PrefixCache:
    """Outputs of every decoder layer on the unablated model, per batch: ablating something in layer L
    only changes layers >= L, so layers < L return their cached output instead of recomputing it."""

    def __init__(self, layers: dict[int, nn.Module]):
        self.layers = dict(sorted(layers.items()))
        self.out: dict[int, list[Any]] = {i: [] for i in self.layers}

    def record(self):
        hooks = [mod.register_forward_hook(lambda _m, _a, o, i=i: self.out[i].append(o)) for i, mod in self.layers.items()]
        return hooks

    def skip_before(self, layer: int | None, batch: int):
        patched = []
        if layer is None:
            return patched
        for i, mod in self.layers.items():
            if i < layer:
                cached = self.out[i][batch]
                mod.forward = lambda *a, _c=cached, **k: _c
                patched.append(mod)
        return patched


def _layer_local(g: Group, idx: ParamIndex, layers: dict[int, nn.Module]) -> bool:
    """True when every producer of the group sits inside its own decoder layer (so the cache is exact)."""
    if g.layer is None or g.layer not in layers:
        return False
    inside = {id(p) for p in layers[g.layer].parameters()}
    return all(id(idx.get(m.param)) in inside for m in g.members if m.role == "producer")


@torch.no_grad()
def ablation(model: nn.Module, groups: list[Group], samples: torch.Tensor, *, bins: dict[str, int] | None = None,
             whole_groups: bool = True, batch_size: int | None = None, prefix_cache: bool = True,
             progress: Progress | None = None) -> Scores:
    """Loss increase on the calibration samples when each block of units is zeroed (producer slices, LoRA-B
    rows included). A block is one unit or a bin of ``bins[kind]`` contiguous units (default: one head, 16
    MLP channels, 16 hidden channels); each unit gets its block's increase divided by the block size, so unit
    scores add up to block scores. ``whole_groups`` also measures each layer's whole attention / MLP (kept in
    ``blocks``, not in unit scores: the effects are not additive)."""
    check_samples(samples)
    bins = {**DEFAULT_BINS, **(bins or {})}
    groups = _prunable(groups)
    idx = ParamIndex(model)
    plans = {g.id: _block_plan(g, bins, whole_groups) for g in groups}
    total = 1 + sum(len(p) for p in plans.values())
    layers = _decoder_layers(model, groups) if prefix_cache else {}
    cache = _PrefixCache(layers)
    dev = next(model.parameters()).device
    chunks = batches(samples, batch_size)
    n_tok = samples.shape[0] * (samples.shape[1] - 1)

    hooks = cache.record()
    try:
        base = sum(float(token_nll_sum(model, b.to(dev))) for b in chunks) / n_tok
    finally:
        for h in hooks:
            h.remove()
    done = 1
    _tick(progress, done, total)

    def loss_from(layer: int | None) -> float:
        s = 0.0
        for bi, b in enumerate(chunks):
            patched = cache.skip_before(layer, bi)
            try:
                s += float(token_nll_sum(model, b.to(dev)))
            finally:
                for mod in patched:
                    del mod.forward
        return s / n_tok

    units: dict[str, np.ndarray] = {}
    block_of: dict[str, np.ndarray] = {}
    blocks: list[dict] = []
    for g in groups:
        slices = idx.slices(g, ("producer",), lora_params=True)
        start = g.layer if prefix_cache and _layer_local(g, idx, layers) else None
        scores = np.zeros(g.n_units)
        bof = np.zeros(g.n_units, dtype=np.int64)
        for level, b, us in plans[g.id]:
            ut = torch.tensor(us)
            zero = [(s.tensor, s.axis, torch.nonzero(torch.isin(s.unit_of, ut)).flatten()) for s in slices]
            with ZeroSlices(zero):
                loss = loss_from(start)
            delta = loss - base
            blocks.append({"group": g.id, "level": level, "block": b, "first_unit": us[0], "n_units": len(us),
                           "loss": loss, "delta": delta})
            if level != "group":
                scores[us] = delta / len(us)
                bof[us] = b
            done += 1
            _tick(progress, done, total)
        units[g.id] = scores
        block_of[g.id] = bof
    return Scores("ablation", units, block_of, blocks,
                  settings={"bins": bins, "whole_groups": whole_groups, "batch_size": batch_size},
                  notes={"base_loss": base, "forwards": total})


# ---------------------------------------------------------------------------- slice-wise score helpers
def _aggregate(per_slice: list[torch.Tensor], how: str) -> np.ndarray:
    m = torch.stack(per_slice).double()
    if how == "sum":
        v = m.sum(0)
    elif how == "max":
        v = m.max(0).values
    elif how == "last":
        v = m[-1]
    elif how == "prod":  # in log space: dozens of small factors underflow otherwise
        v = torch.exp(torch.log(m.clamp_min(1e-300)).sum(0))
    else:
        raise LorashearError(f"unknown aggregation {how!r}; choose one of {', '.join(AGGREGATIONS)}")
    return v.numpy()


def _score_slices(groups: list[Group], slices: dict[str, list[Slice]], elem: Callable[[Slice], torch.Tensor | None],
                  *, vector: bool = False, progress: Progress | None = None, done0: int = 0,
                  total: int = 0) -> tuple[dict[str, list[torch.Tensor | None]], int]:
    """Per group, one per-unit vector per slice. ``elem(slice)`` gives the element-wise score of the slice's
    tensor (computed once per tensor and dropped before the next, so at most one weight-sized temporary
    lives at a time); ``vector`` sums the signed scores per unit first, then takes |·| (vector-wise)."""
    by_tensor: dict[int, list[tuple[str, int, Slice]]] = defaultdict(list)
    for gid, sls in slices.items():
        for k, s in enumerate(sls):
            by_tensor[id(s.tensor)].append((gid, k, s))
    out: dict[str, list[torch.Tensor | None]] = {gid: [None] * len(sls) for gid, sls in slices.items()}
    n_units = {g.id: g.n_units for g in groups}
    done = done0
    for uses in by_tensor.values():
        e = elem(uses[0][2])
        if e is not None:
            for gid, k, s in uses:
                v = s.reduce(e, n_units[gid])
                out[gid][k] = v.abs() if vector else v
        del e
        done += 1
        _tick(progress, done, total)
    return out, done


def _finish(groups: list[Group], per_slice: dict[str, list[torch.Tensor | None]], how: str) -> tuple[dict[str, np.ndarray], list[str]]:
    units, empty = {}, []
    for g in groups:
        vs = [v for v in per_slice[g.id] if v is not None]
        if vs:
            units[g.id] = _aggregate(vs, how)
        else:
            units[g.id] = np.full(g.n_units, np.nan)
            empty.append(g.id)
    return units, empty


# ---------------------------------------------------------------------------------------- LoRA-Taylor
def _lora_targets(model: nn.Module, groups: list[Group]) -> list[str]:
    """Every module whose weight holds a producer slice of a prunable group (the only slices this estimator
    scores): ``nn.Linear`` rows and ``nn.Embedding`` columns. A tied weight is adapted where it *produces*
    the unit — on the embedding, never on the tied ``lm_head``, whose adapter would see the consumer use."""
    owners: dict[int, list[tuple[str, nn.Module]]] = defaultdict(list)
    for name, mod in model.named_modules():
        for p in mod.parameters(recurse=False):
            owners[id(p)].append((name, mod))
    params = dict(model.named_parameters(remove_duplicate=False))
    out = set()
    for g in groups:
        for m in g.members:
            if m.role != "producer" or is_lora_param(m.param) or not m.param.endswith(".weight"):
                continue
            p = params.get(logical_name(m.param))
            mods = owners.get(id(p), []) if p is not None else []
            for name, mod in mods:
                if isinstance(mod, nn.Embedding) and m.axis == 1:
                    out.add(name)
                elif isinstance(mod, nn.Linear) and m.axis in (0, 1) and len(mods) == 1:  # axis 1: query heads (o_proj columns)
                    out.add(name)
    return sorted(out)


def _has_lora(model: nn.Module) -> bool:
    return any(is_lora_param(n) for n, _ in model.named_parameters())


def _fresh_embedding_adapters(peft_model: nn.Module) -> None:
    """PEFT initialises embedding adapters the other way round (A = 0, B random), which would make Ĝ mix the
    embedding *columns* — the hidden units — through B·Bᵀ. Re-initialise them like linear ones (A random,
    B = 0) so the sketch runs along the vocabulary axis and every column keeps its own gradient."""
    import math

    for mod in peft_model.modules():
        if isinstance(getattr(mod, "base_layer", None), nn.Embedding) and hasattr(mod, "lora_embedding_A"):
            with torch.no_grad():
                for name in mod.lora_embedding_A:
                    nn.init.kaiming_uniform_(mod.lora_embedding_A[name], a=math.sqrt(5))
                    nn.init.zeros_(mod.lora_embedding_B[name])


def lora_taylor(model: nn.Module, groups: list[Group], samples: torch.Tensor, *, rank: int = 8, alpha: float = 16,
                seed: int = 0, aggregate: str = "sum", unbias: bool = True, normalize_modules: bool = False,
                batch_size: int | None = None, progress: Progress | None = None) -> Scores:
    """LoRAPrune's criterion from LoRA gradients only.

    A model that already carries PEFT LoRA adapters is scored with them (e.g. after LHSPG warm-up);
    otherwise fresh adapters (``rank``, ``alpha``, seeded) are added with ``peft.get_peft_model`` on every
    module that holds a producer slice (linear rows, embedding columns) and removed again afterwards.
    Base weights keep ``requires_grad=False``: only the rank-r LoRA gradients are ever allocated, and
    ``|Ĝ ⊙ W'|`` is formed one module at a time. Producer slices without an adapter cannot be scored this
    way and are listed in ``notes["uncovered"]``. ``unbias``: see ``scoring.lora_importance`` (fresh adapters
    only). ``normalize_modules`` divides each module's per-unit vector by its L2 norm before summing (a
    detail of LoRAPrune's code; off by default because it erases the differences between layers this
    analysis is about). GQA query heads are not scored (``LORA_TAYLOR_UNSCORABLE``, listed in
    ``notes["unscored_kinds"]``)."""
    check_samples(samples)
    if aggregate not in AGGREGATIONS:
        raise LorashearError(f"unknown aggregation {aggregate!r}; choose one of {', '.join(AGGREGATIONS)}")
    if not isinstance(rank, int) or rank < 1:
        raise LorashearError(f"LoRA rank must be a positive integer, got {rank!r}")
    groups = _prunable(groups)
    unscorable = {g.kind: LORA_TAYLOR_UNSCORABLE[g.kind] for g in groups if g.kind in LORA_TAYLOR_UNSCORABLE}
    groups = [g for g in groups if g.kind not in LORA_TAYLOR_UNSCORABLE]
    if not groups:
        raise LorashearError(f"LoRA-Taylor cannot score any of the given groups: {'; '.join(unscorable.values())}")
    own_adapters = not _has_lora(model)
    flags = {id(p): p.requires_grad for p in model.parameters()}
    peft_model = model
    lora_params: list[torch.Tensor] = []
    if own_adapters:
        from peft import LoraConfig, get_peft_model

        targets = _lora_targets(model, groups)
        if not targets:
            raise LorashearError("no linear layer in the prunable groups to put LoRA adapters on")
        torch.manual_seed(seed)
        with warnings.catch_warnings():  # adapting the tied embedding is deliberate; the adapter is removed, never merged
            warnings.filterwarnings("ignore", message=".*tied layer is part of the adapter.*")
            peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0,
                                                           target_modules=targets, bias="none"))
        _fresh_embedding_adapters(peft_model)
    try:
        lora_params = [p for n, p in peft_model.named_parameters() if is_lora_param(n)]
        for n, p in peft_model.named_parameters():
            p.requires_grad_(is_lora_param(n))
            p.grad = None
        idx = ParamIndex(peft_model)
        slices = {g.id: idx.slices(g, ("producer",)) for g in groups}
        n_tensors = len({id(s.tensor) for sls in slices.values() for s in sls})
        total = len(batches(samples, batch_size)) + n_tensors
        step = _Steps(progress, total)
        was_training = peft_model.training
        peft_model.eval()
        loss = backward_mean_loss(peft_model, samples, batch_size, after_batch=step)
        peft_model.train(was_training)
        base_grads = [n for n, p in peft_model.named_parameters() if not is_lora_param(n) and p.grad is not None]
        if base_grads:  # the whole point of this estimator; fail loudly rather than report a wrong memory story
            raise RuntimeError(f"base weights received gradients: {base_grads[:3]}")

        uncovered: set[str] = set()

        def elem(s: Slice) -> torch.Tensor | None:
            imp = lora_importance(s.lora, s.tensor, unbias) if s.lora is not None else None
            if imp is None:
                uncovered.add(s.param)
            return imp

        per_slice, _ = _score_slices(groups, slices, elem, progress=progress, done0=step.done, total=total)
        if normalize_modules:
            for vs in per_slice.values():
                for k, v in enumerate(vs):
                    if v is not None:
                        vs[k] = v / (v.norm() + 1e-12)
        units, empty = _finish(groups, per_slice, aggregate)
    finally:
        for p in lora_params:
            p.grad = None
        if own_adapters:
            peft_model.unload()  # restores the original modules (nothing merged)
        for p in model.parameters():
            p.requires_grad_(flags.get(id(p), p.requires_grad))
    return Scores("lora_taylor", units, settings={"rank": rank if own_adapters else None, "alpha": alpha if own_adapters else None,
                                                    "adapters": "fresh" if own_adapters else "model's own",
                                                    "seed": seed, "aggregate": aggregate, "unbias": unbias, "normalize_modules": normalize_modules,
                                                    "roles": ["producer"], "batch_size": batch_size},
                  notes={"base_loss": loss, "uncovered": sorted(uncovered), "unscored_groups": empty,
                         "unscored_kinds": unscorable,
                         "lora_parameters": int(sum(p.numel() for p in lora_params))})


# --------------------------------------------------------------------------------------- full Taylor
def taylor(model: nn.Module, groups: list[Group], samples: torch.Tensor, *, variant: str = "first", aggregate: str = "sum",
           roles: tuple[str, ...] = ("producer", "consumer"), batch_size: int | None = None,
           progress: Progress | None = None, kinds: Sequence[str] = ANALYSED_KINDS) -> Scores:
    """LLM-Pruner's Taylor importance from the true gradient of every weight the unit touches.

    ``variant``: ``first`` = Σ|W·∇W| (element-wise, LLM-Pruner's default), ``second`` = Σ|W·∇W − ½·W·H·W|
    with H the diagonal Fisher (mean over samples of the squared per-sample gradient: one extra backward per
    sample), ``vector`` = |Σ W·∇W| per slice. Slices are the unit's producer rows then its consumer columns
    (LLM-Pruner scores every coupled weight); ``aggregate`` combines them: sum (default), prod, max, or last
    (the last slice in data-flow order — a consumer, like LLM-Pruner's last-layer-only). Needs
    weight-sized gradient buffers (two for ``second``) — the memory LoRA-Taylor avoids. ``kinds``: the group
    kinds scored (a pruning method passes its plan's kinds, GQA query heads included)."""
    check_samples(samples)
    if variant not in TAYLOR_VARIANTS:
        raise LorashearError(f"unknown Taylor variant {variant!r}; choose one of {', '.join(TAYLOR_VARIANTS)}")
    if aggregate not in AGGREGATIONS:
        raise LorashearError(f"unknown aggregation {aggregate!r}; choose one of {', '.join(AGGREGATIONS)}")
    groups = _prunable(groups, kinds)
    idx = ParamIndex(model)
    slices = {g.id: idx.slices(g, tuple(roles)) for g in groups}
    tensors = {id(s.tensor): s.tensor for sls in slices.values() for s in sls}
    flags = {id(p): p.requires_grad for p in model.parameters()}
    n = samples.shape[0]
    total = (n if variant == "second" else 0) + len(batches(samples, batch_size)) + len(tensors)
    step = _Steps(progress, total)
    was_training = model.training
    model.eval()
    fisher: dict[int, torch.Tensor] = {}
    try:
        for p in model.parameters():
            p.requires_grad_(id(p) in tensors)
            p.grad = None
        if variant == "second":
            for i in range(n):
                backward_mean_loss(model, samples[i:i + 1])
                for k, p in tensors.items():
                    if p.grad is not None:
                        sq = p.grad.detach().float().pow(2).div_(n)
                        if k in fisher:
                            fisher[k] += sq
                        else:
                            fisher[k] = sq
                    p.grad = None
                step()
        loss = backward_mean_loss(model, samples, batch_size, after_batch=step)

        def elem(s: Slice) -> torch.Tensor | None:
            g = s.tensor.grad
            if g is None:
                return None
            w = effective_weight(s).float()
            wg = w * g.detach().float()
            if variant == "second":
                h = fisher.pop(id(s.tensor), None)
                if h is not None:
                    wg = wg - 0.5 * w * h * w
            s.tensor.grad = None  # free the gradient as soon as it is used
            return wg if variant == "vector" else wg.abs_()

        per_slice, _ = _score_slices(groups, slices, elem, vector=variant == "vector", progress=progress, done0=step.done, total=total)
        units, empty = _finish(groups, per_slice, aggregate)
    finally:
        for p in model.parameters():
            p.requires_grad_(flags.get(id(p), False))
            p.grad = None
        fisher.clear()
        model.train(was_training)
    return Scores("taylor", units, settings={"variant": variant, "aggregate": aggregate, "roles": list(roles),
                                               "batch_size": batch_size},
                  notes={"base_loss": loss, "unscored_groups": empty, "fisher_samples": n if variant == "second" else 0})


# ----------------------------------------------------------------------------------------- magnitude
@torch.no_grad()
def magnitude(model: nn.Module, groups: list[Group], samples: torch.Tensor | None = None, *,
              progress: Progress | None = None, kinds: Sequence[str] = ANALYSED_KINDS) -> Scores:
    """``‖W'_u‖²``: the *squared* L2 norm of the unit's producer slices of the effective weights. Needs no data.

    Squared, not the norm itself, because scores must add up: the squared norm of a block or a group is the sum
    of its units', and score per parameter then compares a 49k-parameter head with a 768-parameter MLP channel
    fairly (``‖x_u‖ / params`` made every head look cheaper than any channel). Every consumer — the plan, the
    one-shot magnitude method, the preview, γ's density ranking — uses this number as is."""
    groups = _prunable(groups, kinds)
    idx = ParamIndex(model)
    slices = {g.id: idx.slices(g, ("producer",)) for g in groups}
    total = len({id(s.tensor) for sls in slices.values() for s in sls})
    per_slice, _ = _score_slices(groups, slices, lambda s: effective_weight(s).float().pow(2), progress=progress, total=total)
    units, empty = _finish(groups, per_slice, "sum")
    return Scores("magnitude", units, settings={"norm": "l2", "squared": True, "roles": ["producer"]},
                  notes={"score": MAGNITUDE_SCORE, "unscored_groups": empty})


def run_estimator(name: str, model: nn.Module, groups: list[Group], samples: torch.Tensor | None, *,
                  progress: Progress | None = None, **options: Any) -> Scores:
    """Dispatch by name (``lora-taylor`` and ``lora_taylor`` both work); unknown options are an error."""
    import inspect

    key = name.replace("-", "_").lower()
    fn = {"ablation": ablation, "lora_taylor": lora_taylor, "taylor": taylor, "magnitude": magnitude}.get(key)
    if fn is None:
        raise LorashearError(f"unknown estimator {name!r}; choose one of {', '.join(ESTIMATORS)}")
    params = inspect.signature(fn).parameters
    bad = [k for k in options if k not in params or k in ("model", "groups", "samples", "progress")]
    if bad:
        allowed = [k for k in params if k not in ("model", "groups", "samples", "progress")]
        raise LorashearError(f"estimator {key!r} has no option(s) {bad}; its options are {', '.join(allowed)}")
    if key != "magnitude" and samples is None:
        raise LorashearError(f"estimator {key!r} needs calibration samples")
    return fn(model, groups, samples, progress=progress, **options)
