"""The "eval" job: perplexity per data source (short/long protocols) and cost of a model folder.

The same call as ``lorashear eval`` (``lorashear.evaluate.evaluate_model``, whose progress moves per source) with
the same settings schema; the report is the job's result and ``eval.json``.
"""
from __future__ import annotations

import os
from typing import Any

from ..jsonio import write_json_atomic
from .worker import JobContext


def run(params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    import torch

    from lorashear.evaluate import evaluate_model

    from .kinds import EVAL

    st = EVAL.make_settings(params)
    if st.threads:  # like `lorashear eval --threads`: the timings' condition, recorded in the result
        torch.set_num_threads(st.threads)
    report = evaluate_model(params["model"], **st.evaluate_args(), progress=ctx.progress)
    out = report.to_dict()
    # the conditions of the timings (the Compare view shows them next to latency and throughput)
    out.update(threads=torch.get_num_threads(), load_avg_1m=os.getloadavg()[0], max_tokens=st.max_tokens)
    path = ctx.out_dir / "eval.json"
    write_json_atomic(path, out)
    for r in report.perplexity:
        ctx.log(f"{r.source:12s} {r.protocol:5s} window {r.window:5d}  perplexity {r.ppl:.3f}")
    return {"artifacts": {"eval": path}, "result": out}
