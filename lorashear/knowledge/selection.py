"""Mark the most knowledge-dense units (or layers, or groups) unprunable; LHSPG then prunes only the rest.

Units of different groups differ in size (a kv head with its query heads holds ~64× the weights of an MLP
channel), so across groups they are ranked by ``density`` (score per parameter) unless asked otherwise.
The rule applied is written into the report (``meta["selection"]``) so the plan can be audited later.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..errors import LorashearError
from .estimators import OVERLAP_KINDS
from .report import KnowledgeReport
from .scoring import unit_order

LEVELS = ("unit", "layer", "group")
SCOPES = ("global", "group")
RANK_BY = ("density", "score")


def check_gamma(gamma: float) -> float:
    """γ must be a number in [0, 1): the fraction to protect (1 would leave nothing to prune)."""
    try:
        g = float(gamma)
    except (TypeError, ValueError):
        raise LorashearError(f"gamma must be a number in [0, 1), got {gamma!r}") from None
    if not (0.0 <= g < 1.0) or math.isnan(g):
        raise LorashearError(f"gamma must be in [0, 1) (the fraction of units to keep unprunable), got {gamma!r}")
    return g


def n_selected(gamma: float, n: int) -> int:
    """How many of ``n`` items γ marks: round(γ·n), half up (so 0.25 of 6 layers marks 2)."""
    return int(math.floor(gamma * n + 0.5))


def _top(values: pd.Series, k: int) -> pd.Index:
    """Index labels of the k largest values; NaN ranks last, ties broken by position (stable, deterministic)."""
    return values.index[unit_order(values.to_numpy(dtype=np.float64, na_value=np.nan), descending=True)[:k]]


def select_unprunable(report: KnowledgeReport, gamma: float, *, level: str = "group", scope: str = "global",
                      by: str = "density") -> KnowledgeReport:
    """Return a copy of ``report`` with ``units.unprunable`` set and the rule recorded in ``meta["selection"]``.

    * ``level="unit", scope="global"``: the top round(γ·N) of all N units, ranked by ``by``;
    * ``level="unit", scope="group"``: the top round(γ·n_g) units of each group (by score within the group);
    * ``level="layer"``: the top round(γ·L) of the L layers by total (``score``) or per-parameter (``density``)
      score; every unit of a marked layer is unprunable (network-wide groups, e.g. hidden, are not in a layer);
    * ``level="group"``: the top round(γ·G) groups likewise.
    γ = 0 clears the selection.

    The default is ``level="group"``: the paper (Algorithm 3) ranks *node groups* — one layer's attention, one
    layer's MLP — and protects the top γ of those. Ranking single units across the network instead marks whole
    kinds at once (per-parameter scores of heads and hidden channels dwarf MLP channels': "top 0.2 of all units"
    marked 22 of 24 heads and 240 of 256 hidden channels but 562 of 3,840 MLP channels on the demo model).
    """
    gamma = check_gamma(gamma)
    if level not in LEVELS:
        raise LorashearError(f"unknown selection level {level!r}; choose one of {', '.join(LEVELS)}")
    if scope not in SCOPES:
        raise LorashearError(f"unknown selection scope {scope!r}; choose one of {', '.join(SCOPES)}")
    if by not in RANK_BY:
        raise LorashearError(f"unknown ranking {by!r}; choose one of {', '.join(RANK_BY)}")
    units = report.units.copy()
    units["unprunable"] = False
    overlap = units["kind"].isin(OVERLAP_KINDS)
    pool = units[~overlap]  # query heads share weights with the kv-head units: ranked apart, below
    chosen: list = []
    if level == "unit" and scope == "global":
        k = n_selected(gamma, len(pool))
        units.loc[_top(pool[by], k), "unprunable"] = True
        n_items, what = len(pool), "units"
        rule = f"top {gamma:.4g} of all units ({k} of {len(pool)}) by {by}"
    elif level == "unit":
        k = 0
        for _, rows in pool.groupby("group", sort=False):
            kg = n_selected(gamma, len(rows))
            units.loc[_top(rows["score"], kg), "unprunable"] = True
            k += kg
        n_items, what = len(pool), "units"
        rule = f"top {gamma:.4g} of the units of each group ({k} of {len(pool)} in all) by score"
    else:
        key = "layer" if level == "layer" else "group"
        ranked = pool[pool[key].notna()] if key == "layer" else pool
        agg = ranked.groupby(key).agg(score=("score", "sum"), params=("params", "sum"))
        agg["density"] = agg["score"] / agg["params"]
        k = n_selected(gamma, len(agg))
        chosen = list(_top(agg[by], k))
        units.loc[units[key].isin(chosen) & ~overlap, "unprunable"] = True
        n_items, what = len(agg), f"{level}s"
        shown = ", ".join(str(int(c)) if key == "layer" else str(c) for c in sorted(chosen, key=str))
        rule = f"top {gamma:.4g} of {what} ({k} of {len(agg)}) by {by}: {shown or 'none'}"
    meta = dict(report.meta)
    meta["selection"] = {"gamma": gamma, "level": level, "scope": scope if level == "unit" else None,
                         "by": by if not (level == "unit" and scope == "group") else "score",
                         "selected": int(k), "out_of": int(n_items), "of": what,
                         "unprunable_units": int(units.loc[~overlap, "unprunable"].sum()), "rule": rule}
    if overlap.any():
        meta["selection"]["overlap"] = _mark_overlap(units, overlap, gamma, level, scope, by, chosen)
    return KnowledgeReport(units, meta, report.blocks.copy())


def _mark_overlap(units: pd.DataFrame, overlap: pd.Series, gamma: float, level: str, scope: str, by: str,
                  chosen: list) -> dict:
    """Mark the overlapping units (GQA query heads) without letting them change the main selection.

    At the layer and group levels a query head follows its layer's attention: protected when that layer, or
    that layer's attention node group (same module), was chosen — it is part of that node group. At the unit
    level the query heads are ranked among themselves (top γ of them, or of each group). Returns the rule."""
    ov = units[overlap]
    if level == "layer":
        units.loc[overlap & units["layer"].isin(chosen), "unprunable"] = True
        rule = "query heads of the protected layers"
    elif level == "group":
        module = units["group"].astype(str).str.rsplit(":", n=1).str[0]
        protected_modules = set(module[units["group"].isin(chosen) & (units["kind"] == "attention")])
        units.loc[overlap & module.isin(protected_modules), "unprunable"] = True
        rule = "query heads of the protected attention node groups"
    elif scope == "global":
        k = n_selected(gamma, len(ov))
        units.loc[_top(ov[by], k), "unprunable"] = True
        rule = f"top {gamma:.4g} of the query heads ({k} of {len(ov)}) by {by}, ranked apart"
    else:
        for _, rows in ov.groupby("group", sort=False):
            units.loc[_top(rows["score"], n_selected(gamma, len(rows))), "unprunable"] = True
        rule = f"top {gamma:.4g} of the query heads of each group by score, ranked apart"
    return {"kinds": sorted(set(ov["kind"].astype(str))), "units": int(len(ov)),
            "unprunable_units": int(units.loc[overlap, "unprunable"].sum()), "rule": rule}
