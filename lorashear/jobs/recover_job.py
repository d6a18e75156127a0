"""The "recover" job: ``lorashear.recover.recover`` in a worker; per-round deviation from dense and mixture
weights are recorded as metrics (the Jobs view plots them live)."""
from __future__ import annotations

import os
from typing import Any

from .worker import JobContext


def run(params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    from lorashear.recover.run import RecoverSettings, recover

    st = RecoverSettings(
        data=tuple(s.strip() for s in (params.get("data") or "demo").split(",") if s.strip()),
        mixture=params.get("mixture") or "dynamic", eta=params.get("eta") if params.get("eta") is not None else 1.0,
        floor=params.get("floor") if params.get("floor") is not None else 0.1, tokens=params.get("tokens") or 102400,
        round_steps=params.get("round_steps") or 25,
        instructions=None if (params.get("instructions") or "demo") == "none" else (params.get("instructions") or "demo"),
        instruct_steps=params.get("instruct_steps") if params.get("instruct_steps") is not None else 100,
        eval_tokens=params.get("eval_tokens") or 16384, seed=params.get("seed") or 0,
        device=None if params.get("device") in (None, "auto") else params["device"])
    out = ctx.out_dir / "run"
    resume = ctx.resume and (out / "run.json").is_file()
    rep = recover(params["pruned"], out, st, dense=params.get("dense") or None, resume=resume, progress=ctx.progress,
                  metric=lambda step, values: ctx.metric(step, **values))
    result = {"rounds": len(rep["rounds"]), "tokens": rep["tokens_stage1"],
              "final_weights": rep["rounds"][-1]["weights"]}
    for p in st.eval_protocols:
        result[f"ppl_{p}_before"] = rep["eval_before"][f"mean_{p}"]
        result[f"ppl_{p}_after"] = rep["eval_after"][f"mean_{p}"]
    result["load_avg_1m"] = os.getloadavg()[0]  # the conditions of the run's timings (the Compare view shows them)
    return {"artifacts": {"model": str(out / "model"), "trajectory": str(out / "trajectory.json"),
                          "report": str(out / "report.json")}, "result": result}
