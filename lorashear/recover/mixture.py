"""The dynamic data adaptor: source weights that follow where the pruned model lags behind the dense one.

LoRAShear's Algorithm 5 gives the procedure — measure each source's degradation, build the next training subset
"prioritising the more degraded sources while keeping a balanced representation of the others" — but no formula.
We use Sheared-LLaMA's published dynamic batch loading update (Xia et al., 2023), the documented analogue:

    w ← (1 − c) · softmax(log w + η · (L − L_ref)) + c / n

with ``L`` the pruned model's per-source validation loss, ``L_ref`` the dense model's, ``η`` a temperature
(η = 0: weights never move) and ``c`` a floor that keeps every source at ≥ c/n of the mixture.
"""
from __future__ import annotations

import math
from typing import Mapping

from ..errors import LorashearError


def check_rule(eta: float, floor: float) -> None:
    if not (eta >= 0 and math.isfinite(eta)):
        raise LorashearError(f"temperature eta must be a finite number >= 0, got {eta!r}")
    if not 0.0 <= floor <= 1.0:
        raise LorashearError(f"floor must be in [0, 1], got {floor!r}")


def update_weights(weights: Mapping[str, float], deviation: Mapping[str, float], *, eta: float = 1.0,
                   floor: float = 0.1) -> dict[str, float]:
    """One round of the rule above; ``deviation[s] = L_s − L_ref_s`` (nats). Returns weights summing to 1."""
    check_rule(eta, floor)
    names = list(weights)
    if set(deviation) != set(names):
        raise LorashearError(f"deviations for {sorted(deviation)} but weights for {sorted(names)}")
    logits = [math.log(max(float(weights[s]), 1e-30)) + eta * float(deviation[s]) for s in names]
    top = max(logits)
    exp = [math.exp(v - top) for v in logits]
    total = sum(exp)
    n = len(names)
    return {s: (1 - floor) * e / total + floor / n for s, e in zip(names, exp)}
