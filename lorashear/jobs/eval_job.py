"""The "eval" job: perplexity per data source (short/long protocols) and cost of a model folder.

Calls the same library functions as ``lorashear eval`` (``lorashear.evaluate``), one source at a time so
the progress bar moves per source; the report is the job's result and ``eval.json``.
"""
from __future__ import annotations

import json
import os
from typing import Any

from .worker import JobContext


def run(params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    import torch

    from lorashear.data import load_sources
    from lorashear.evaluate import EvalReport, evaluate_perplexity, measure_cost
    from lorashear.loading import load_model

    from .kinds import EVAL

    st = EVAL.make_settings(params)
    if st.threads:  # like `lorashear eval --threads`: the timings' condition, recorded in the result
        torch.set_num_threads(st.threads)
    protocols = st.protocols
    ctx.progress(0.02, "loading data")
    sources = load_sources(list(st.data), field=st.field)  # data errors before the slow model load
    ctx.progress(0.1, "loading model")
    model, tokenizer = load_model(params["model"], device=st.device)
    steps = len(sources) + (1 if st.cost else 0)
    rows = []
    for i, (name, texts) in enumerate(sources.items()):
        ctx.progress(0.15 + 0.8 * i / steps, f"perplexity on {name}")
        rows += evaluate_perplexity(model, tokenizer, {name: texts}, protocols=protocols,
                                    max_tokens=st.max_tokens)
    report = EvalReport(params["model"], rows)
    if st.cost:
        ctx.progress(0.15 + 0.8 * len(sources) / steps, "measuring cost")
        report.cost = measure_cost(model)
    out = report.to_dict()
    # the conditions of the timings (the Compare view shows them next to latency and throughput)
    out.update(threads=torch.get_num_threads(), load_avg_1m=os.getloadavg()[0], max_tokens=st.max_tokens)
    path = ctx.out_dir / "eval.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    for r in rows:
        ctx.log(f"{r.source:12s} {r.protocol:5s} window {r.window:5d}  perplexity {r.ppl:.3f}")
    return {"artifacts": {"eval": path}, "result": out}
