"""The "prune" job: ``lorashear.prune.prune`` in a worker, with progress, per-step metrics and artifacts recorded
in the registry (the Jobs view plots loss, sparsity and removed parameters live). A resumed job continues from
the newest checkpoint in its output folder."""
from __future__ import annotations

from typing import Any

from .run_result import run_result
from .worker import JobContext


def run(params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    from lorashear.prune.run import prune

    from .kinds import PRUNE

    settings = PRUNE.make_settings(params)  # the same schema the form and the CLI were checked against
    out = ctx.out_dir / "run"
    resume = ctx.resume and (out / "run.json").is_file()

    def metric(step: int, values: dict) -> None:
        ctx.metric(step, **values)

    report = prune(params["model"], out, settings, resume=resume, progress=ctx.progress, metric=metric)
    result = run_result(ctx, out, report, settings.eval_protocols,
                        **{k: report[k] for k in ("params_before", "params_after", "ratio_target", "ratio_achieved",
                                                  "seconds")})
    return {"artifacts": {"model": str(out / "model"), "plan": str(out / "plan.json"), "report": str(out / "report.json")},
            "result": result}
