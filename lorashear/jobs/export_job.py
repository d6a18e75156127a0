"""The "export" job: a hand selection of units (group id -> unit indices) physically removed from a model folder
and saved as a smaller model (``compress`` + ``save_pruned``), reloadable by ``lorashear.loading.load_model``.

This is the "I looked at the heatmap and want these heads gone" path: no training, no plan search. The units
come either as JSON (``{"model.layers.0.self_attn:heads": [1, 3]}``, what the app's Groups grid sends) or from a
saved plan (``lorashear plan`` / the app's "Save plan"), whose ``removal`` is used as it is. ``compress`` checks the
ids, the unit ranges and that every group keeps a unit, then verifies masked vs compressed logits; ``save_pruned``
verifies the reload before the folder appears.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .worker import JobContext


def parse_units(text: str) -> dict[str, list[int]]:
    """``{"group id": [unit, ...]}`` from JSON text; raises ValueError with a one-line, user-facing message.

    Kept import-light (no torch): the job kind's parameter check and the app call it in the Dash process."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(raw, dict) or not raw:
        raise ValueError('must be a JSON object of group id -> unit indices, e.g. {"model.layers.0.mlp:channels": [0, 5]}')
    out: dict[str, list[int]] = {}
    for gid, units in raw.items():
        if not isinstance(units, list) or not all(isinstance(u, int) and not isinstance(u, bool) for u in units):
            raise ValueError(f"units of '{gid}' must be a list of whole numbers")
        if any(u < 0 for u in units):
            raise ValueError(f"units of '{gid}' must be ≥ 0")
        if units:
            out[str(gid)] = sorted(set(units))
    if not out:
        raise ValueError("no unit selected")
    return out


def removal_of(params: dict[str, Any]) -> tuple[dict[str, list[int]], str]:
    """The removal a job's parameters ask for and where it came from (the units field, or a plan file)."""
    if params.get("units"):
        return parse_units(params["units"]), "hand selection"
    from lorashear.prune.plan import load_plan

    plan = load_plan(params["plan"])
    return {gid: list(u) for gid, u in plan.removal.items() if u}, f"plan {params['plan']}"


def run(params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    from lorashear.compress import compress
    from lorashear.evaluate import count_parameters
    from lorashear.export import load_hint, save_pruned
    from lorashear.groups import find_groups
    from lorashear.loading import load_model
    from lorashear.trace import trace

    removal, origin = removal_of(params)
    ctx.progress(0.05, "loading the model")
    model, tok = load_model(params["model"], device="cpu")
    ctx.progress(0.3, "tracing groups")
    groups = find_groups(trace(model))
    ctx.log(f"removing {sum(map(len, removal.values()))} units of {len(removal)} groups ({origin})")
    ctx.progress(0.5, "compressing (masked vs compressed logits are compared)")
    before = count_parameters(model)
    small, report = compress(model, groups, removal, verify=params.get("verify", True))
    ctx.progress(0.75, "saving (the reload is verified before the folder appears)")
    out = Path(ctx.out_dir) / "model"
    provenance = {"method": "hand selection" if origin == "hand selection" else "plan", "source": params["model"],
                  "selection": origin, "units": sum(map(len, removal.values()))}
    side = save_pruned(small, out, report=report, tokenizer=tok, provenance=provenance,
                       verify=params.get("verify", True))
    after = count_parameters(small)
    ctx.log(f"parameters {before:,} -> {after:,} ({side['case']}: {side['case_reason']})")
    ctx.log(load_hint(out))
    ctx.progress(1.0, "done")
    return {"artifacts": {"model": out},
            "result": {"params_before": before, "params_after": after, "params_removed": before - after,
                       "units_removed": sum(map(len, removal.values())), "groups": len(removal),
                       "case": side["case"], "load": load_hint(out), "max_diff": report.max_diff}}
