"""The "recover" job: ``lorashear.recover.recover`` in a worker; per-round deviation from dense and mixture
weights are recorded as metrics (the Jobs view plots them live)."""
from __future__ import annotations

from typing import Any

from .run_result import run_result
from .worker import JobContext


def run(params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    from lorashear.recover.run import recover

    from .kinds import RECOVER

    st = RECOVER.make_settings(params)  # the same schema the form and the CLI were checked against
    out = ctx.out_dir / "run"
    resume = ctx.resume and (out / "run.json").is_file()
    rep = recover(params["pruned"], out, st, dense=params.get("dense") or None, resume=resume, progress=ctx.progress,
                  metric=lambda step, values: ctx.metric(step, **values))
    # the trajectory's first row is the evaluation before any training: the rounds trained are the others
    result = run_result(ctx, out, rep, st.eval_protocols, rounds=len(rep["rounds"]) - 1, tokens=rep["tokens_stage1"],
                        final_weights=rep["rounds"][-1]["weights"])
    return {"artifacts": {"model": str(out / "model"), "trajectory": str(out / "trajectory.json"),
                          "report": str(out / "report.json")}, "result": result}
