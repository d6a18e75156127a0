"""The "prune" job: ``lorashear.prune.prune`` in a worker, with progress, per-step metrics and artifacts recorded
in the registry (the Jobs view plots loss, sparsity and removed parameters live). A resumed job continues from
the newest checkpoint in its output folder."""
from __future__ import annotations

import os
from typing import Any

from .worker import JobContext


def run(params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    from lorashear.prune.run import PruneSettings, prune

    kinds = tuple(k.strip() for k in params.get("kinds", "attention,mlp").split(",") if k.strip())
    method = params.get("method") or "lhspg"
    only = {"epsilon": params.get("epsilon") or 0.0} if method == "lhspg" else {}  # method-specific form fields
    settings = PruneSettings(
        ratio=params["ratio"], method=method, kinds=kinds, **only,
        allocation=params.get("allocation") or None, layers=params.get("layers") or None,
        align=params.get("align"), knowledge=params.get("knowledge") or None, gamma=params.get("gamma"),
        steps=200 if params.get("steps") is None else params["steps"], batch_size=params.get("batch_size") or 4, seq_len=params.get("seq_len") or 128,
        lr=params.get("lr") or 2e-4, seed=params.get("seed") or 0,
        data=tuple(s.strip() for s in (params.get("data") or "demo").split(",") if s.strip()),
        eval_tokens=params.get("eval_tokens") or 16384,
        device=None if params.get("device") in (None, "auto") else params["device"])
    out = ctx.out_dir / "run"
    resume = ctx.resume and (out / "run.json").is_file()

    def metric(step: int, values: dict) -> None:
        ctx.metric(step, **values)

    report = prune(params["model"], out, settings, resume=resume, progress=ctx.progress, metric=metric)
    result = {k: report[k] for k in ("params_before", "params_after", "ratio_target", "ratio_achieved", "seconds")}
    for p in settings.eval_protocols:
        result[f"ppl_{p}_before"] = report["eval_before"][f"mean_{p}"]
        result[f"ppl_{p}_after"] = report["eval_after"][f"mean_{p}"]
    result["load_avg_1m"] = os.getloadavg()[0]  # the conditions of the run's timings (the Compare view shows them)
    return {"artifacts": {"model": str(out / "model"), "plan": str(out / "plan.json"), "report": str(out / "report.json")},
            "result": result}
