"""One call from a model and calibration tokens to a saved-able knowledge report, and estimator comparison.

``analyze`` is what the CLI, the app's jobs and LHSPG call: it traces the groups if not given, runs one
estimator on the prunable groups, wraps the scores with the model's identity, the data and the settings,
and optionally applies the unprunable selection.
"""
from __future__ import annotations

import platform
import time
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..errors import LorashearError
from ..groups import Group
from .estimators import Progress, run_estimator
from .report import FORMAT, KnowledgeReport, build_report, model_identity
from .selection import check_gamma, select_unprunable


def analyze(model: nn.Module, samples: torch.Tensor | None = None, *, estimator: str = "lora_taylor",
            groups: list[Group] | None = None, source: str | None = None, data: dict | None = None,
            gamma: float | None = None, select_level: str = "group", select_scope: str = "global",
            select_by: str = "density", progress: Progress | None = None, **options: Any) -> KnowledgeReport:
    """Score every unit of every prunable group of ``model`` with ``estimator`` on ``samples``
    (``[n, seq_len]`` token ids; not needed for ``magnitude``) and return a ``KnowledgeReport``.

    ``options`` go to the estimator (e.g. ``variant="second"``, ``aggregate="max"``, ``rank=8``, ``bins={...}``);
    ``source`` and ``data`` describe the model path and the calibration data in the report; with ``gamma``,
    the top γ fraction is marked unprunable (see ``select_unprunable``)."""
    if gamma is not None:
        check_gamma(gamma)  # fail before minutes of compute, not after
    if groups is None:
        from ..groups import find_groups
        from ..trace import trace

        groups = find_groups(trace(model))
    t0 = time.perf_counter()
    scores = run_estimator(estimator, model, groups, samples, progress=progress, **options)
    seconds = time.perf_counter() - t0
    dev = next(model.parameters()).device
    meta = {
        "format": FORMAT,
        "model": model_identity(model, source),
        "data": data if data is not None else ({"tokens": int(samples.numel()), "n_samples": int(samples.shape[0]),
                                                "seq_len": int(samples.shape[1])} if samples is not None and scores.estimator != "magnitude" else None),
        "estimator": scores.estimator,
        "settings": scores.settings,
        "notes": scores.notes,
        "seconds": round(seconds, 3),
        "device": str(dev),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "selection": None,
    }
    report = build_report(scores, groups, meta)
    if gamma is not None:
        report = select_unprunable(report, gamma, level=select_level, scope=select_scope, by=select_by)
    return report


# ------------------------------------------------------------------------------------------ comparison
def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ok = ~(np.isnan(a) | np.isnan(b))
    if ok.sum() < 3:
        return float("nan")
    ra = pd.Series(a[ok]).rank().to_numpy()
    rb = pd.Series(b[ok]).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def rank_agreement(report: KnowledgeReport, reference: KnowledgeReport) -> pd.DataFrame:
    """Spearman rank correlation of ``report``'s scores with ``reference``'s (usually ablation), per group kind.

    Both are compared at the reference's resolution: where the reference measured bins of units, the
    report's unit scores are summed over the same bins. ``spearman``: pooled over every group of the kind
    (across layers); ``spearman_within``: mean of the per-group correlations (ranking inside one layer)."""
    ref = reference.units[["group", "kind", "unit", "block", "score"]].rename(columns={"score": "ref"})
    mine = report.units[["group", "unit", "score"]]
    m = ref.merge(mine, on=["group", "unit"], how="inner")
    if m.empty:
        raise LorashearError("the two reports share no (group, unit): are they for the same model?")
    blocks = m.groupby(["group", "block"], sort=False).agg(kind=("kind", "first"), ref=("ref", "sum"), score=("score", "sum")).reset_index()
    rows = []
    for kind, b in blocks.groupby("kind", sort=False):
        within = [_spearman(x["score"].to_numpy(), x["ref"].to_numpy()) for _, x in b.groupby("group")]
        within = [w for w in within if not np.isnan(w)]
        rows.append({"kind": kind, "n": len(b), "groups": b["group"].nunique(),
                     "spearman": _spearman(b["score"].to_numpy(), b["ref"].to_numpy()),
                     "spearman_within": float(np.mean(within)) if within else float("nan")})
    return pd.DataFrame(rows)
