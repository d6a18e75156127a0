"""The "analyze" job: knowledge distribution of a model — a score for every unit of every prunable group
(``lorashear.knowledge.analyze``), saved as a knowledge report the app's Knowledge view reads.

The same call as ``lorashear analyze`` (``knowledge.run.analyze_model``) with the same settings schema.
"""
from __future__ import annotations

from typing import Any

from .worker import JobContext


def run(params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    from lorashear.knowledge.run import analyze_model

    from .kinds import ANALYZE

    report = analyze_model(params["model"], ctx.out_dir / "knowledge.parquet", ANALYZE.make_settings(params),
                           progress=ctx.progress)
    kinds = report.by_kind()
    result = {
        "estimator": report.estimator,
        "units": int(len(report.units)),
        "unprunable": int(report.units["unprunable"].sum()),
        "seconds": report.meta.get("seconds"),
        "by_kind": {str(r["kind"]): {"units": int(r["units"]), "score": float(r["score"])}
                    for _, r in kinds.iterrows()},
    }
    return {"artifacts": {"report": report.path}, "result": result}
