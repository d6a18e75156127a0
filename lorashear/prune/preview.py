"""A plan for a model before any training: the units a run with these settings would remove.

Scores come from a knowledge report when one is given (its estimator's per-unit scores, used as they are: every
estimator's scores add up over parameters; and γ's unprunable set), otherwise from weight magnitude (``‖x_u‖²`` of
the producer slices), or index order on a meta-device model (structure only). LHSPG fixes its own plan after
warm-up from its saliency, with the same counting and the same allocation, so the numbers (parameters before/after,
units per group) are the run's; which units go may differ.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .plan import Plan, PlanSpec, make_plan, parse_layers, protected_from_report


def plan_model(model: Any, *, ratio: float, kinds: Sequence[str] = ("attention", "mlp"), allocation: str = "global",
               layers: str | None = None, align: int | None = None, knowledge: str | None = None,
               gamma: float | None = None, gamma_level: str = "group", meta: bool = False,
               groups: list | None = None) -> Plan:
    """``model``: a model object, folder, ``demo`` or config file (``meta``: structure only)."""
    from ..errors import LorashearError
    from ..settings import SettingsError
    from ..groups import find_groups
    from ..loading import load_causal_lm
    from ..trace import trace
    from .plan import check_ratio

    check_ratio(ratio)
    if isinstance(model, str) and model == "demo":
        from ..data import DEMO_MODEL_DIR

        model = DEMO_MODEL_DIR
    model = load_causal_lm(model, meta=meta)
    if groups is None:
        groups = find_groups(trace(model))
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None) or 1
    protected: dict[str, list[int]] = {}
    scores: dict[str, np.ndarray] | None = None
    source = "none (index order)"
    if gamma is not None and not knowledge:
        raise SettingsError.one("gamma", "gamma needs a knowledge report")
    if knowledge:
        from ..knowledge import load_report, select_unprunable

        try:
            rep = load_report(knowledge, model)
        except SettingsError:
            raise
        except LorashearError as exc:  # a missing, malformed or other-model report: the knowledge field's fault
            raise SettingsError.one("knowledge", str(exc).splitlines()[0]) from None
        if gamma is not None:
            rep = select_unprunable(rep, gamma, level=gamma_level)
        protected = protected_from_report(rep, groups)
        scores = {str(g): rows.sort_values("unit")["score"].to_numpy(dtype=np.float64)
                  for g, rows in rep.units.groupby("group", sort=False)}
        source = f"knowledge report {knowledge} ({rep.meta.get('estimator', '?')})"
    elif not meta:
        from ..knowledge.estimators import magnitude

        # squared norms add over parameters, so score per parameter compares units of different sizes fairly
        scores = magnitude(model, [g for g in groups if g.prunable]).units
        source = "weight magnitude ‖x_u‖²"
    spec = PlanSpec(ratio=ratio, kinds=tuple(kinds), allocation=allocation, layers=parse_layers(layers, n_layers),
                    align=align, protected=protected)
    return make_plan(model, groups, spec, scores, scores_from=source)
