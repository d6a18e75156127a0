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
from .report import KnowledgeReport

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
    v = values.to_numpy(dtype=np.float64, na_value=np.nan)
    order = np.lexsort((np.arange(len(v)), -np.nan_to_num(v, nan=-np.inf)))
    return values.index[order[:k]]


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
    if level == "unit" and scope == "global":
        k = n_selected(gamma, len(units))
        units.loc[_top(units[by], k), "unprunable"] = True
        n_items, what = len(units), "units"
        rule = f"top {gamma:.4g} of all units ({k} of {len(units)}) by {by}"
    elif level == "unit":
        k = 0
        for _, rows in units.groupby("group", sort=False):
            kg = n_selected(gamma, len(rows))
            units.loc[_top(rows["score"], kg), "unprunable"] = True
            k += kg
        n_items, what = len(units), "units"
        rule = f"top {gamma:.4g} of the units of each group ({k} of {len(units)} in all) by score"
    else:
        key = "layer" if level == "layer" else "group"
        pool = units[units[key].notna()] if key == "layer" else units
        agg = pool.groupby(key).agg(score=("score", "sum"), params=("params", "sum"))
        agg["density"] = agg["score"] / agg["params"]
        k = n_selected(gamma, len(agg))
        chosen = list(_top(agg[by], k))
        units.loc[units[key].isin(chosen), "unprunable"] = True
        n_items, what = len(agg), f"{level}s"
        shown = ", ".join(str(int(c)) if key == "layer" else str(c) for c in sorted(chosen, key=str))
        rule = f"top {gamma:.4g} of {what} ({k} of {len(agg)}) by {by}: {shown or 'none'}"
    meta = dict(report.meta)
    meta["selection"] = {"gamma": gamma, "level": level, "scope": scope if level == "unit" else None,
                         "by": by if not (level == "unit" and scope == "group") else "score",
                         "selected": int(k), "out_of": int(n_items), "of": what,
                         "unprunable_units": int(units["unprunable"].sum()), "rule": rule}
    return KnowledgeReport(units, meta, report.blocks.copy())
