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

import json
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from lorashear.prune.names import PLAN_KINDS
from lorashear.prune.settings import PlanSettings
from lorashear.settings import SettingsError, parse

KINDS = PLAN_KINDS  # the kinds a prune job accepts, query heads included (a model without GQA just has none)


def parse_inputs(values: dict[str, Any]) -> tuple[PlanSettings | None, dict[str, str]]:
    """Form values (the plan fields and the run's method) -> (settings, {}) or (None, {field: one-line message}),
    through the same schema as the CLI and the prune job: the method's defaults (llm-pruner's layer range and
    uniform allocation) are resolved exactly as the run resolves them."""
    try:
        return parse(PlanSettings, values), {}
    except SettingsError as exc:
        return None, exc.errors


class Planner:
    """The model object and groups of one browsed model, and the plans made on them."""

    def __init__(self, mv: Any):
        from lorashear.loading import load_causal_lm

        self.mv = mv
        self.meta = bool(mv.meta)
        self.model = load_causal_lm(mv.source, meta=self.meta)
        self.groups = list(mv.groups)
        self._plans: "OrderedDict[str, Any]" = OrderedDict()
        self._lock = threading.Lock()

    def plan(self, settings: PlanSettings):
        """The library's plan for ``settings`` (``plan_model``, the run's planner); LorashearError with the library's
        message on settings it refuses (an unreachable ratio, an empty layer range, …)."""
        from lorashear.prune.preview import plan_model

        key = json.dumps(settings.plan_args(), sort_keys=True)
        with self._lock:
            if key in self._plans:
                self._plans.move_to_end(key)
                return self._plans[key]
            p = plan_model(self.model, meta=self.meta, groups=self.groups, **settings.plan_args())
            self._plans[key] = p
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


def preview(mv: Any, settings: PlanSettings) -> dict[str, Any]:
    """Everything the Prune tab shows for ``settings``: the plan (its JSON), the per-layer rows and the removed
    units per group, as a JSON-able dict (it goes into a ``dcc.Store``); ``inputs`` are the resolved settings the
    prune job is then given, so the run plans with exactly these values."""
    pl = planner(mv)
    plan = pl.plan(settings)
    return {"inputs": settings.to_dict(), "plan": plan.to_dict(), "layers": pl.per_layer(plan),
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


__all__ = ["parse_inputs", "Planner", "planner", "preview", "unit_maps"]
