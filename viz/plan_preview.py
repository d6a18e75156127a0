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
    through the same schema as the CLI and the prune job: the method's defaults (llm-pruner's and loraprune's
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


# what each method scores units by in the run (the preview scores by weight magnitude or a knowledge report)
RUN_SCORES = {
    "lhspg": "LoRA saliency (LoRA-Taylor EMA) after the warm-up",
    "loraprune": "LoRA-Taylor importance (EMA) after the warm-up",
    "llm-pruner": "Taylor scores on calibration data",
    "flap": "fluctuation scores on calibration data",
    "magnitude": "weight magnitude ‖x_u‖²",
    "random": "seeded random scores",
}


def largest_unit(plan: dict[str, Any]) -> int:
    """An upper bound on the parameters of the planner's largest removal step (one unit, or ``align`` units of a
    group): the global planner stops within one such step of the target, whatever the scores."""
    align = (plan.get("spec") or {}).get("align") or 1
    return max((int(g.get("params_per_unit") or 0) * align for g in plan.get("groups", {}).values()), default=0)


def fidelity(data: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Which parts of this preview the run will reproduce exactly and which are an estimate, as rows (part,
    "exact" | "estimate", why). Why it exists: the preview scores units by weight magnitude (or a knowledge
    report); most methods score by something only the run can compute (LoRA saliency after warm-up, Taylor
    scores, fluctuation), so only what does not depend on the scores is exact. The planner is the same
    (``make_plan``): with global allocation its total lands within one step (``largest_unit``) of the same
    target, so the run's total can differ from the preview's by that much (e.g. 19.75 % here vs 20.00 % in an
    LHSPG run at a 20 % target)."""
    inputs, plan = data.get("inputs") or {}, data["plan"]
    method = inputs.get("method") or PlanSettings().method
    run_scores = RUN_SCORES.get(method, f"the {method} method's scores")
    preview_scores = plan.get("scores_from", "?")
    same_scores = method == "magnitude" and not inputs.get("knowledge") and not data.get("meta")
    uniform = plan.get("spec", {}).get("allocation") == "uniform"
    counts_fixed = uniform and "hidden" not in (plan.get("spec", {}).get("kinds") or ())
    step = largest_unit(plan)
    rows: list[tuple[str, str, str]] = []
    if same_scores:
        why = "same planner, same scores (weight magnitude of the dense model): this is the run's plan"
        rows += [("parameters before", "exact", "counted on the model itself"),
                 ("parameters removed / after", "exact", why), ("per-layer counts", "exact", why),
                 ("which units (maps, selection)", "exact", why)]
    else:
        rows.append(("parameters before", "exact", "counted on the model itself"))
        if counts_fixed:
            rows += [("parameters removed / after", "exact", "uniform allocation: the same fraction of every layer, "
                      "whatever the scores, with the same planner"),
                     ("per-layer counts", "exact", "uniform allocation fixes each layer's count")]
        else:
            rows += [("parameters removed / after", "estimate",
                      f"same planner and target; the run lands within one step (≤ {step:,} parameters) of the "
                      f"target {plan.get('params_target', 0):,}, as this preview does, on another unit"),
                     ("per-layer counts", "estimate", f"the run ranks units by {run_scores}, not by {preview_scores}")]
        if method == "random":
            rows.append(("which units (maps, selection)", "estimate", "the run draws them at random (seeded)"))
        else:
            rows.append(("which units (maps, selection)", "estimate",
                         f"the run chooses them by {run_scores}; this preview by {preview_scores}"
                         + ("; the report only protects (γ) in the run" if inputs.get("knowledge") else "")))
    if method == "flap":
        rows.append(("parameters of the saved model", "estimate",
                     "FLAP's bias compensation adds bias terms after pruning (a few parameters per layer)"))
    return rows


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


__all__ = ["RUN_SCORES", "fidelity", "largest_unit", "parse_inputs", "Planner", "planner", "preview", "unit_maps"]
