"""The "analyze" job: knowledge distribution of a model — a score for every unit of every prunable group
(``lorashear.knowledge.analyze``), saved as a knowledge report the app's Knowledge view reads.

Same steps as ``lorashear analyze``: load the model, draw calibration windows, run the estimator with a
progress callback (the job's progress bar), optionally mark the top γ unprunable, save the report.
"""
from __future__ import annotations

from typing import Any

from .worker import JobContext


def run(params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    from lorashear.loading import load_model
    from lorashear.knowledge import analyze, calibration_data

    estimator = params["estimator"]
    ctx.progress(0.02, "loading model")
    device = None if params["device"] == "auto" else params["device"]
    model, tokenizer = load_model(params["model"], device=device)
    samples, data = None, None
    if estimator != "magnitude":
        ctx.progress(0.08, "drawing calibration windows")
        specs = [s.strip() for s in params["data"].split(",") if s.strip()]
        samples, data = calibration_data(tokenizer, specs, n_samples=params["samples"], seq_len=params["seq_len"],
                                         seed=params["seed"], model=model)
    options: dict[str, Any] = {"seed": params["seed"]} if estimator == "lora-taylor" else {}

    def progress(done: int, total: int) -> None:
        ctx.progress(0.1 + 0.85 * done / max(total, 1), f"{estimator}: {done}/{total}")

    report = analyze(model, samples, estimator=estimator, source=params["model"], data=data,
                     gamma=params.get("gamma"), select_level=params.get("select", "group"),
                     select_scope=params.get("scope", "global"), select_by=params.get("by", "density"),
                     progress=progress, **options)
    ctx.progress(0.97, "saving the report")
    path = report.save(ctx.out_dir / "knowledge.parquet")
    kinds = report.by_kind()
    result = {
        "estimator": report.estimator,
        "units": int(len(report.units)),
        "unprunable": int(report.units["unprunable"].sum()),
        "seconds": report.meta.get("seconds"),
        "by_kind": {str(r["kind"]): {"units": int(r["units"]), "score": float(r["score"])}
                    for _, r in kinds.iterrows()},
    }
    return {"artifacts": {"report": path}, "result": result}
