"""The plan preview: which units a prune run with these settings would remove, computed by the library's own
planner (``lorashear.prune.preview.plan_model`` — the function behind ``lorashear plan``; its ``make_plan`` is
what every pruning method ends with), never by a re-implementation in the app.

Why it runs in the Dash process, unlike everything else that touches a model: a slider move must answer in well
under a second, and a worker process would spend longer importing torch. What it needs is cheap to keep: the
model object (on the meta device for a structure-only model; for a model with weights, loaded once on the CPU,
because the magnitude scores that ``plan_model`` falls back to need them) and the groups the graph job already
found. Both are cached per browsed model; results are cached per settings, so going back to a slider position
is free.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from lorashear.errors import LorashearError
from lorashear.prune.names import PLAN_KINDS

KINDS = PLAN_KINDS  # the kinds a prune job accepts, query heads included (a model without GQA just has none)


@dataclass(frozen=True)
class PlanInputs:
    """The plan form, as the prune job's parameters spell them (``to_job_params``)."""

    ratio: float
    kinds: tuple[str, ...] = ("attention", "mlp")
    allocation: str = "global"
    layers: str | None = None
    align: int | None = None
    knowledge: str | None = None  # knowledge report path
    gamma: float | None = None

    def to_job_params(self) -> dict[str, Any]:
        """Parameters of a prune job that runs this plan's settings (the same PlanSpec fields)."""
        out: dict[str, Any] = {"ratio": self.ratio, "kinds": ",".join(self.kinds), "allocation": self.allocation}
        for k in ("layers", "align", "knowledge", "gamma"):
            if getattr(self, k) not in (None, ""):
                out[k] = getattr(self, k)
        return out


def parse_inputs(ratio: Any, kinds: list[str] | None, allocation: str | None, layers: str | None, align: Any,
                 knowledge: str | None, gamma: Any) -> tuple[PlanInputs | None, dict[str, str]]:
    """Form values -> (inputs, {}) or (None, {field: one-line message}) — messages shown next to each field."""
    errors: dict[str, str] = {}

    def number(name: str, raw: Any, kind: type, lo: float, hi: float | None) -> Any:
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return None
        try:
            v = float(raw)
        except (TypeError, ValueError):
            errors[name] = "must be a number"
            return None
        if kind is int and v != int(v):
            errors[name] = "must be a whole number"
            return None
        if v < lo or (hi is not None and v > hi) or not np.isfinite(v):
            errors[name] = f"must be in [{lo:g}, {hi:g}]" if hi is not None else f"must be ≥ {lo:g}"
            return None
        return kind(v)

    r = number("ratio", ratio, float, 0.0, 1.0)
    if r is None and "ratio" not in errors:
        errors["ratio"] = "required"
    elif r is not None and not 0.0 < r < 1.0:
        errors["ratio"] = "must be strictly between 0 and 1"
    ks = tuple(k for k in KINDS if k in (kinds or []))
    if not ks:
        errors["kinds"] = "choose at least one group kind"
    if allocation not in ("global", "uniform"):
        errors["allocation"] = "global or uniform"
    a = number("align", align, int, 1, None)
    g = number("gamma", gamma, float, 0.0, 0.999)
    if g is not None and not knowledge:
        errors["gamma"] = "γ needs a knowledge report"
    lay = (layers or "").strip() or None
    if lay is not None and ":" not in lay:
        errors["layers"] = "START:STOP, e.g. 1:5 or 0.1:0.9"
    if errors:
        return None, errors
    return PlanInputs(r, ks, allocation, lay, a, knowledge or None, g), {}


class Planner:
    """The model object and groups of one browsed model, and the plans made on them."""

    def __init__(self, mv: Any):
        from lorashear.loading import load_causal_lm

        self.mv = mv
        self.meta = bool(mv.meta)
        self.model = load_causal_lm(mv.source, meta=self.meta)
        self.groups = list(mv.groups)
        self._plans: "OrderedDict[PlanInputs, Any]" = OrderedDict()
        self._lock = threading.Lock()

    def plan(self, inputs: PlanInputs):
        """The library's plan for ``inputs`` (``plan_model``); LorashearError with the library's message on
        settings it refuses (an unreachable ratio, an empty layer range, …)."""
        from lorashear.prune.preview import plan_model

        with self._lock:
            if inputs in self._plans:
                self._plans.move_to_end(inputs)
                return self._plans[inputs]
            p = plan_model(self.model, ratio=inputs.ratio, kinds=inputs.kinds, allocation=inputs.allocation,
                           layers=inputs.layers, align=inputs.align, knowledge=inputs.knowledge, gamma=inputs.gamma,
                           meta=self.meta, groups=self.groups)
            self._plans[inputs] = p
            while len(self._plans) > 32:
                self._plans.popitem(last=False)
            return p

    def per_layer(self, plan: Any) -> list[dict[str, Any]]:
        """Parameters before / removed / after per block (and 'model' for network-wide groups such as hidden),
        counted exactly the way the planner counts: one ``ParamCounter``, per-layer groups first in layer order,
        network-wide groups last, so an element shared by a head and a hidden channel is counted once (in the
        layer) and the rows add up to ``plan.params_removed``."""
        from lorashear.prune.plan import ParamCounter

        counter = ParamCounter(self.model, self.groups)
        by_id = {g.id: g for g in self.groups}
        removed: dict[Any, int] = {}
        order = sorted(plan.removal, key=lambda gid: (by_id[gid].layer is None, by_id[gid].layer or 0, gid))
        for gid in order:
            key = by_id[gid].layer if by_id[gid].layer is not None else "model"
            removed[key] = removed.get(key, 0) + counter.add(gid, plan.removal[gid])
        before = {k: sum(v.values()) for k, v in self.mv.layer_params().items()}
        rows = []
        for layer in sorted(k for k in before if k is not None):
            units = {g.kind: (plan.groups.get(g.id, {}).get("kept", g.n_units), g.n_units)
                     for g in self.groups if g.layer == layer and g.kind in ("attention", "mlp")}
            rows.append({"layer": layer, "before": before[layer], "removed": removed.get(layer, 0),
                         "after": before[layer] - removed.get(layer, 0),
                         "heads": units.get("attention"), "channels": units.get("mlp")})
        rows.append({"layer": "outside blocks", "before": before.get(None, 0), "removed": removed.get("model", 0),
                     "after": before.get(None, 0) - removed.get("model", 0), "heads": None, "channels": None})
        return rows


_PLANNERS: "OrderedDict[int, Planner]" = OrderedDict()
_LOCK = threading.Lock()


def planner(mv: Any) -> Planner:
    """The planner of a browsed model (graph job), cached for the two most recent models."""
    with _LOCK:
        if mv.job_id in _PLANNERS:
            _PLANNERS.move_to_end(mv.job_id)
            return _PLANNERS[mv.job_id]
    p = Planner(mv)
    with _LOCK:
        _PLANNERS[mv.job_id] = p
        while len(_PLANNERS) > 2:
            _PLANNERS.popitem(last=False)
    return p


def preview(mv: Any, inputs: PlanInputs) -> dict[str, Any]:
    """Everything the Prune tab shows for ``inputs``: the plan (its JSON), the per-layer rows and the removed
    units per group, as a JSON-able dict (it goes into a ``dcc.Store``)."""
    pl = planner(mv)
    plan = pl.plan(inputs)
    return {"inputs": asdict(inputs), "plan": plan.to_dict(), "layers": pl.per_layer(plan),
            "model_job": mv.job_id, "source": mv.source, "meta": mv.meta}


def unit_maps(mv: Any, plan: dict[str, Any], kind: str) -> tuple[list[int], np.ndarray, np.ndarray]:
    """(layers, planned-removed map, unprunable/protected map) for layer × unit of ``kind`` (attention: head
    units; mlp: channels). 1 = removed, 0 = kept, NaN where a layer has fewer units."""
    gs = sorted((g for g in mv.groups if g.kind == kind and g.layer is not None), key=lambda g: g.layer)
    layers = [g.layer for g in gs]
    width = max((g.n_units for g in gs), default=0)
    z = np.full((len(gs), width), np.nan)
    for i, g in enumerate(gs):
        z[i, : g.n_units] = 0.0
        for u in plan.get("removal", {}).get(g.id, []):
            z[i, int(u)] = 1.0
    protected = np.zeros_like(z, dtype=bool)
    for i, g in enumerate(gs):
        for u in (plan.get("spec", {}).get("protected") or {}).get(g.id, []):
            protected[i, int(u)] = True
    return layers, z, protected


__all__ = ["PlanInputs", "parse_inputs", "Planner", "planner", "preview", "unit_maps"]
