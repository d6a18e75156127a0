"""Block reconstruction: once the structure is fixed, refit the surviving weights that *read* the removed units so
that each block's output matches the dense model's on calibration tokens (issue 22; the local-reconstruction
result of arXiv 2510.14444, of which FLAP's bias compensation is the one-vector special case).

What is refit: the **consumer linears** of removed units — ``o_proj`` (its input columns are the heads: a kv head's
consumer slice, a GQA query head's producer slice) and ``down_proj`` (its input columns are the MLP channels). Their
outputs *are* the attention and MLP block outputs that the residual stream adds, so fitting them to the dense
model's outputs of the same linear fits the block output. The fit always contains the block's nonlinearity in its
window: ``X`` is the pruned model's own input to the linear (after attention / after the gated activation),
computed layer by layer in order with every earlier refit already in place.

* ``block`` — closed-form ridge least squares over the KEPT input columns ``K`` of the linear:
  ``W_K = (X_Kᵀ X_K + λ I)⁻¹ X_Kᵀ Y_dense`` (rows of ``Wᵀ``; with an intercept column when the linear has a bias,
  the intercept not penalised), ``λ = ridge · mean diag(X_Kᵀ X_K)`` so that one ``ridge`` suits every width.
  Memory is bounded by one ``(|K|+1)²`` Gram and one ``(|K|+1) × d_out`` cross term per linear, accumulated over
  the calibration batches; activations are never all kept.
* ``bias`` — only the output bias moves: ``b += mean(Y_dense − Y_pruned)``, the least-squares bias shift. When the
  pruned inputs equal the dense ones on the kept columns it is exactly FLAP's ``W[:, removed] @ mean(x_removed)``;
  otherwise it also absorbs the mean drift from earlier layers. A linear without a bias is skipped with the reason
  (``methods.py`` adds zero biases through the stock config flags before tracing, or refuses the mode).

Not refit, with the reason in the report: readers of removed **hidden** channels (every projection, the norms and
the head read the residual stream; there is no one block output to fit) — the refit of o_proj / down_proj of a
model that also loses hidden channels still runs, and their removed hidden rows are put back to zero.

**PEFT models** (LHSPG at a period end): the fit targets the *effective* weight ``W + s·B·A`` — the hook sees the
LoRA layer's full output — and is written into the base weight after merging that layer's delta and zeroing B (A
kept; ``B = 0`` makes the delta exactly zero), so the model computes exactly the fitted weight and LoRA resumes
from it, as LHSPG's own merge of the survivors does. The caller resets the optimizer state of the listed factors.

Exactness is untouched: only kept columns (and the bias) are written; every removed unit's producer slices are
zeroed again afterwards, so masked = compressed still holds (``compress(verify=True)``).

How the layers are replayed: the inputs (and keyword arguments: masks, rotary embeddings) of the first decoder
layer are captured once per calibration batch, for the pruned and the dense model; every decoder layer is then run
on its own from the stored hidden states, stopping early inside a layer once a hooked linear has been seen.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..errors import LorashearError
from ..groups import Group
from ..knowledge.slices import ParamIndex, logical_name

MODES = ("none", "bias", "block")
DEFAULT_RIDGE = 1e-3
REFIT_KINDS = ("attention", "query_heads", "mlp")


class _Stop(Exception):
    """Raised by a hook once it has what it needs: the rest of the layer is not computed."""


@dataclass
class Target:
    """One consumer linear to refit: its logical path, decoder layer, removed input columns and the groups they are."""

    path: str
    layer: int
    removed: list[int]
    groups: list[str] = field(default_factory=list)


def _input_roles(g: Group) -> tuple[str, ...]:
    # a GQA query head's o_proj columns are its producer slice; every other kind's readers are its consumers
    return ("producer", "consumer") if g.kind == "query_heads" else ("consumer",)


def _linears(model: nn.Module) -> dict[int, str]:
    """id(weight) -> logical path of the linear (the PEFT LoRA layer, when wrapped) that uses it."""
    out: dict[int, str] = {}
    for path, mod in model.named_modules():
        base = mod.get_base_layer() if hasattr(mod, "get_base_layer") else mod
        if isinstance(base, nn.Linear):
            lp = logical_name(path + ".x")[:-2]
            out.setdefault(id(base.weight), lp)
    return out


def _layer_of(path: str) -> int | None:
    m = re.search(r"\.(\d+)\.", "." + path + ".")
    return int(m.group(1)) if m else None


def consumer_targets(model: nn.Module, groups: Sequence[Group], removal: Mapping[str, Sequence[int]],
                     only: Sequence[str] | None = None) -> tuple[list[Target], dict[str, str]]:
    """The linears that read removed units (of the groups in ``only``, default all), each with ALL its removed input
    columns (every group's, so the fit sees the kept set as it is now), and the groups skipped with the reason."""
    by_id = {g.id: g for g in groups}
    idx = ParamIndex(model)
    lin = _linears(model)
    removed_cols: dict[str, set[int]] = {}
    readers: dict[str, set[str]] = {}
    skipped: dict[str, str] = {}
    for gid, units in removal.items():
        if not units:
            continue
        g = by_id.get(gid)
        if g is None:
            raise LorashearError(f"removal names group {gid!r}, which is not among the model's groups")
        if g.kind not in REFIT_KINDS:
            skipped[gid] = (f"{g.kind}: not refit — its readers are every projection, the norms and the head "
                            "(the residual stream), not one block output" if g.kind == "hidden"
                            else f"{g.kind}: no block output to fit for this kind")
            continue
        u = torch.as_tensor(sorted(int(x) for x in units), dtype=torch.long)
        found = False
        for s in idx.slices(g, _input_roles(g)):
            path = lin.get(id(s.tensor))
            if s.axis != 1 or path is None or s.tensor.dim() != 2:
                continue
            found = True
            cols = torch.isin(s.unit_of, u).nonzero().flatten().tolist()
            removed_cols.setdefault(path, set()).update(cols)
            readers.setdefault(path, set()).add(gid)
        if not found:
            skipped[gid] = "no nn.Linear reads these units on its input columns (e.g. GPT-2's Conv1D): not refit"
    want = set(only) if only is not None else None
    targets = []
    for path, cols in removed_cols.items():
        if want is not None and not readers[path] & want:
            continue
        layer = _layer_of(path)
        if layer is None:
            for gid in readers[path]:
                skipped[gid] = f"{path} is not inside a numbered decoder layer: not refit"
            continue
        targets.append(Target(path, layer, sorted(cols), sorted(readers[path])))
    order = {p: i for i, (p, _) in enumerate((logical_name(n + ".x")[:-2], m) for n, m in model.named_modules())}
    targets.sort(key=lambda t: (t.layer, order.get(t.path, 0)))
    return targets, skipped


def _decoder_layers(model: nn.Module, path: str) -> tuple[nn.ModuleList, int]:
    """The ModuleList of decoder layers that holds the module at logical ``path``, and its index there."""
    mods = {logical_name(n + ".x")[:-2]: m for n, m in model.named_modules()}
    parts = path.split(".")
    for i, p in enumerate(parts):
        if p.isdigit():
            parent = mods.get(".".join(parts[:i]))
            if isinstance(parent, nn.ModuleList):
                return parent, int(p)
    raise LorashearError(f"{path}: no decoder-layer list holds it; block reconstruction needs numbered layers")


def _module(model: nn.Module, path: str) -> nn.Module:
    for n, m in model.named_modules():
        if logical_name(n + ".x")[:-2] == path:
            return m
    raise LorashearError(f"{path} is not a module of the dense reference: was it copied from another model?")


def _first_inputs(model: nn.Module, layers: nn.ModuleList, ids: torch.Tensor) -> tuple[torch.Tensor, tuple, dict]:
    """The first decoder layer's hidden states, other positional arguments and keyword arguments for ``ids``."""
    got: dict[str, Any] = {}

    def pre(mod, args, kwargs):
        got["args"], got["kwargs"] = args, dict(kwargs)
        raise _Stop

    h = layers[0].register_forward_pre_hook(pre, with_kwargs=True)
    try:
        model(input_ids=ids, use_cache=False)
    except _Stop:
        pass
    finally:
        h.remove()
    args, kwargs = got["args"], got["kwargs"]
    if args:
        return args[0], tuple(args[1:]), kwargs
    return kwargs.pop("hidden_states"), (), kwargs


def _run_layer(layer: nn.Module, hidden: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The layer's output hidden states (``None`` when a hook stopped it early)."""
    try:
        out = layer(hidden, *args, **kwargs)
    except _Stop:
        return None
    return out[0] if isinstance(out, (tuple, list)) else out


def _merge_lora(mod: nn.Module) -> list[nn.Parameter]:
    """Fold the LoRA delta of ``mod`` (a PEFT LoRA layer) into its base weight and zero B; the factors touched."""
    touched: list[nn.Parameter] = []
    if not hasattr(mod, "get_base_layer") or not hasattr(mod, "lora_A"):
        return touched
    base = mod.get_base_layer().weight
    for name in mod.active_adapters:
        if name not in mod.lora_A:
            continue
        base.data += mod.get_delta_weight(name).to(base.dtype)
        mod.lora_B[name].weight.data.zero_()
        touched += [mod.lora_A[name].weight, mod.lora_B[name].weight]
    return touched


@torch.no_grad()
def reconstruct(model: nn.Module, dense: nn.Module, groups: Sequence[Group], removal: Mapping[str, Sequence[int]],
                calib_ids: torch.Tensor, mode: str = "block", *, ridge: float = DEFAULT_RIDGE,
                only: Sequence[str] | None = None, batch_size: int = 8) -> dict[str, Any]:
    """Refit the consumer linears of the removed units of ``model`` (a masked model, plain or PEFT) to ``dense``'s
    outputs of the same linears on ``calib_ids`` (``[n, seq_len]`` token windows); see the module docstring.
    ``only``: refit just the readers of these groups (an LHSPG period's), the kept set still being all of
    ``removal``'s complement. Returns the report: per linear the block-output MSE before and after, what was
    skipped and why, and the LoRA layers whose delta was merged (``lora_merged``: the caller resets the optimizer
    state of their factors, ``lora_factors``)."""
    if mode not in MODES:
        raise LorashearError(f"unknown reconstruction mode {mode!r}; choose one of {', '.join(MODES)}")
    if ridge < 0:
        raise LorashearError(f"ridge must be >= 0, got {ridge!r}")
    report: dict[str, Any] = {"mode": mode, "ridge": float(ridge), "refit": [], "skipped": {}, "lora_merged": []}
    if mode == "none":
        return report
    targets, skipped = consumer_targets(model, groups, removal, only)
    report["skipped"] = skipped
    if not targets:
        return report
    layers, _ = _decoder_layers(model, targets[0].path)
    dlayers, _ = _decoder_layers(dense, targets[0].path)
    dev = next(model.parameters()).device
    ddev = next(dense.parameters()).device
    was, dwas = model.training, dense.training
    model.eval()
    dense.eval()
    try:
        batches = [calib_ids[i:i + batch_size] for i in range(0, calib_ids.shape[0], batch_size)]
        states = []
        for b in batches:
            hp, ap, kp = _first_inputs(model, layers, b.to(dev))
            hd, ad, kd = _first_inputs(dense, dlayers, b.to(ddev))
            states.append([hp, ap, kp, hd, ad, kd])
        by_layer: dict[int, list[Target]] = {}
        for t in targets:
            by_layer.setdefault(t.layer, []).append(t)
        for li in range(max(by_layer) + 1):
            for t in by_layer.get(li, []):
                row = _refit(t, model, dense, layers[li], dlayers[li], states, mode, ridge, report)
                report["refit"].append(row)
            if li == max(by_layer):
                break
            for st in states:  # advance both models through layer li (its refits in place)
                st[0] = _run_layer(layers[li], st[0], st[1], st[2])
                st[3] = _run_layer(dlayers[li], st[3], st[4], st[5])
    finally:
        model.train(was)
        dense.train(dwas)
    _rezero(model, groups, removal)
    if report["refit"]:
        n = sum(r["tokens"] for r in report["refit"]) or 1
        report["mse_before"] = sum(r["mse_before"] * r["tokens"] for r in report["refit"]) / n
        report["mse_after"] = sum(r["mse_after"] * r["tokens"] for r in report["refit"]) / n
    return report


def _refit(t: Target, model: nn.Module, dense: nn.Module, layer: nn.Module, dlayer: nn.Module, states: list,
           mode: str, ridge: float, report: dict) -> dict[str, Any]:
    mod, dmod = _module(model, t.path), _module(dense, t.path)
    base = mod.get_base_layer() if hasattr(mod, "get_base_layer") else mod
    d_in, d_out = base.in_features, base.out_features
    keep = torch.ones(d_in, dtype=torch.bool)
    keep[torch.as_tensor(t.removed, dtype=torch.long)] = False
    kidx = keep.nonzero().flatten()
    row: dict[str, Any] = {"linear": t.path, "layer": t.layer, "groups": t.groups, "inputs_kept": int(kidx.numel()),
                           "inputs": d_in}
    if mode == "bias" and base.bias is None:
        row.update(skipped="no bias on this linear (the config cannot carry one): bias mode leaves it as it is")
    fit_bias = base.bias is not None
    k = int(kidx.numel()) + (1 if fit_bias else 0)
    acc = base.weight.device  # float64 sums where the model is (a GPU's Gram is fast; CPU as before)
    f64 = dict(dtype=torch.float64, device=acc)
    G = torch.zeros(k, k, **f64) if mode == "block" else None
    C = torch.zeros(k, d_out, **f64) if mode == "block" else None
    yy = torch.zeros((), **f64)
    rsum = torch.zeros(d_out, **f64)
    err = torch.zeros((), **f64)
    kidx_acc = kidx.to(acc)
    n = 0
    cap: dict[str, torch.Tensor] = {}

    def grab_y(m, args, out):
        cap["y"] = out.detach()
        raise _Stop

    def grab_x(m, args, out):
        cap["x"], cap["out"] = args[0].detach(), out.detach()
        raise _Stop

    hd = dmod.register_forward_hook(grab_y)
    hp = mod.register_forward_hook(grab_x)
    try:
        for st in states:
            _run_layer(dlayer, st[3], st[4], st[5])
            _run_layer(layer, st[0], st[1], st[2])
            x = cap["x"].reshape(-1, d_in).to(acc, torch.float64)
            y = cap["y"].reshape(-1, d_out).to(acc, torch.float64)
            out = cap["out"].reshape(-1, d_out).to(acc, torch.float64)
            r = y - out
            err += r.pow(2).sum()
            rsum += r.sum(0)
            n += x.shape[0]
            if mode == "block":
                xk = x.index_select(1, kidx_acc)
                if fit_bias:
                    xk = torch.cat([xk, torch.ones(xk.shape[0], 1, **f64)], 1)
                G += xk.T @ xk
                C += xk.T @ y
                yy += y.pow(2).sum()
    finally:
        hd.remove()
        hp.remove()
    row["tokens"] = n
    row["mse_before"] = float(err / (n * d_out))
    if "skipped" in row:
        row["mse_after"] = row["mse_before"]
        return row
    w = base.weight
    if mode == "bias":
        delta = rsum / n
        base.bias.data += delta.to(base.bias.device, base.bias.dtype)
        row["mse_after"] = max(0.0, float((err - n * delta.pow(2).sum()) / (n * d_out)))
        return row
    if _merge_lora(mod):
        report["lora_merged"].append(t.path)
    nk = int(kidx.numel())
    lam = ridge * float(G.diagonal()[:nk].mean()) if nk else 0.0
    A = G.clone()
    A.diagonal()[:nk] += lam
    if lam == 0.0:  # no ridge: the least-squares solution of smallest norm
        sol = torch.linalg.pinv(A, hermitian=True) @ C
    else:
        sol = torch.linalg.solve(A, C)
    new_w = sol[:nk].T  # [d_out, |K|]
    w.data[:, kidx.to(w.device)] = new_w.to(w.device, w.dtype)
    if fit_bias:
        base.bias.data.copy_(sol[nk].to(base.bias.device, base.bias.dtype))
    # ‖Y − X_K w‖² = YᵀY − 2·tr(wᵀC) + tr(wᵀGw), in float64 on the solved weights as written
    sol_w = torch.cat([w.data[:, kidx.to(w.device)].T.to(acc, torch.float64)]
                      + ([base.bias.data.to(acc, torch.float64)[None]] if fit_bias else []), 0)
    sse = yy - 2 * (sol_w * C).sum() + (sol_w * (G @ sol_w)).sum()
    row["mse_after"] = max(0.0, float(sse / (n * d_out)))
    row["ridge_lambda"] = lam
    return row


def _rezero(model: nn.Module, groups: Sequence[Group], removal: Mapping[str, Sequence[int]]) -> None:
    """Every removed unit's producer slices back to exactly zero (a refit may have written into a removed hidden
    row of o_proj / down_proj, or merged LoRA into a removed query head's o_proj columns)."""
    from .units import unit_slices, zero_units

    ids = {gid for gid, u in removal.items() if u}
    zero_units(unit_slices(model, [g for g in groups if g.id in ids]), {g: list(u) for g, u in removal.items() if u})


def block_mse(model: nn.Module, dense: nn.Module, paths: Sequence[str], calib_ids: torch.Tensor,
              batch_size: int = 8) -> dict[str, float]:
    """Mean squared difference of each linear's output (the block output) between ``model`` and ``dense`` on the
    same tokens, each model on its own inputs: what ``reconstruct`` lowers (tests and diagnostics)."""
    out: dict[str, float] = {}
    with torch.no_grad():
        for path in paths:
            cap: dict[str, list] = {"a": [], "b": []}
            ha = _module(model, path).register_forward_hook(lambda m, a, o: cap["a"].append(o.detach().double()))
            hb = _module(dense, path).register_forward_hook(lambda m, a, o: cap["b"].append(o.detach().double()))
            try:
                for i in range(0, calib_ids.shape[0], batch_size):
                    b = calib_ids[i:i + batch_size]
                    model(input_ids=b.to(next(model.parameters()).device), use_cache=False)
                    dense(input_ids=b.to(next(dense.parameters()).device), use_cache=False)
            finally:
                ha.remove()
                hb.remove()
            a, b = torch.cat([x.cpu().flatten() for x in cap["a"]]), torch.cat([x.cpu().flatten() for x in cap["b"]])
            out[path] = float((a - b).pow(2).mean())
    return out


def lora_factors(model: nn.Module, paths: Sequence[str]) -> list[nn.Parameter]:
    """The LoRA A and B weights of the layers at these logical paths (to reset their optimizer state)."""
    out: list[nn.Parameter] = []
    for path in paths:
        mod = _module(model, path)
        for name in getattr(mod, "active_adapters", []):
            if name in getattr(mod, "lora_A", {}):
                out += [mod.lora_A[name].weight, mod.lora_B[name].weight]
    return out


def consumer_params(model: nn.Module, groups: Sequence[Group]) -> list[torch.Tensor]:
    """Weights and biases of every linear ``reconstruct`` may write for these groups (a checkpoint must hold them)."""
    full = {g.id: list(range(g.n_units)) for g in groups if g.kind in REFIT_KINDS}
    targets, _ = consumer_targets(model, groups, full)
    out: dict[int, torch.Tensor] = {}
    for t in targets:
        mod = _module(model, t.path)
        base = mod.get_base_layer() if hasattr(mod, "get_base_layer") else mod
        for p in (base.weight, base.bias):
            if p is not None:
                out.setdefault(id(p), p)
    return list(out.values())


@dataclass
class Reference:
    """What a run with ``--reconstruct`` keeps from before pruning: a frozen copy of the dense model and the
    calibration windows; ``record`` is the run report's ``method_info["reconstruct"]`` (each refit is appended to
    its ``runs``). ``release`` drops the copy once the structure is final."""

    dense: nn.Module | None
    calib_ids: torch.Tensor
    mode: str
    ridge: float
    record: dict

    def apply(self, model: nn.Module, groups: Sequence[Group], removal: Mapping[str, Sequence[int]], *,
              only: Sequence[str] | None = None, when: str = "") -> dict[str, Any]:
        """``reconstruct`` against the dense copy; a JSON summary is appended to ``record["runs"]`` and returned
        under ``"summary"`` (the full report, with ``lora_merged``, is returned)."""
        if self.dense is None:
            raise RuntimeError("the dense reference was released before the last reconstruction")
        rep = reconstruct(model, self.dense, groups, removal, self.calib_ids, self.mode, ridge=self.ridge, only=only)
        rep["summary"] = summary(rep, when)
        self.record.setdefault("runs", []).append(rep["summary"])
        return rep

    def release(self) -> None:
        self.dense = None

    def writes(self, model: nn.Module, groups: Sequence[Group]) -> list[torch.Tensor]:
        """The weights and biases a refit may write (a checkpoint must hold them to resume exactly)."""
        return consumer_params(model, groups)

    def restored(self, sched: Mapping[str, Any]) -> None:
        """After a checkpoint is loaded: the report lists the refits done before it too."""
        self.record["runs"] = list(sched.get("reconstruct", []))


def summary(rep: Mapping[str, Any], when: str = "") -> dict[str, Any]:
    """The run report's row of one reconstruction: when, which linears (layer, MSE before → after), what was skipped."""
    return {"when": when, "mode": rep["mode"], "mse_before": rep.get("mse_before"), "mse_after": rep.get("mse_after"),
            "refit": [{k: r[k] for k in ("linear", "layer", "inputs_kept", "inputs", "mse_before", "mse_after", "skipped")
                       if k in r} for r in rep["refit"]],
            "skipped": dict(rep["skipped"]), "lora_merged": list(rep["lora_merged"])}


def describe(rep: Mapping[str, Any]) -> str:
    """One line for the run's events."""
    n = sum(1 for r in rep["refit"] if "skipped" not in r)
    if rep.get("mse_before") is None:
        return f"reconstruct {rep['mode']}: nothing to refit"
    return (f"reconstruct {rep['mode']}: {n} linears refit, block-output MSE {rep['mse_before']:.4g} → "
            f"{rep['mse_after']:.4g}")


def refit(opt: Any, ref: Reference, *, only: Sequence[str] | None = None, when: str = "") -> dict:
    """Block reconstruction inside a pruning optimizer: refit against the dense reference, reset the AdamW state
    of the LoRA factors whose delta was merged into a refit weight, record the refit in the schedule (checkpointed,
    so a resumed run's report still lists it) and as an event."""
    rep = ref.apply(opt.model, opt.groups, opt.removal(), only=only, when=when)
    for p in lora_factors(opt.model, rep["lora_merged"]):
        opt.state.pop(p, None)
    opt.sched.setdefault("reconstruct", []).append(rep["summary"])
    ref.record["runs"] = list(opt.sched["reconstruct"])
    opt.sched["events"].append([opt.sched["step"], describe(rep)])
    return rep
