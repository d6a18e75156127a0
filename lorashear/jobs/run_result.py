"""What the prune and recover jobs report when their run folder is written: the perplexity before/after per
protocol, how to load the model, and the conditions of the run's timings (the Compare view shows them)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..export import load_hint
from .worker import JobContext


def run_result(ctx: JobContext, out: Path, report: dict[str, Any], protocols: tuple[str, ...],
               **fields: Any) -> dict[str, Any]:
    """``fields`` (the job's own figures), then ``ppl_<protocol>_before/after``, ``load`` and ``load_avg_1m``."""
    result = dict(fields)
    for p in protocols:
        result[f"ppl_{p}_before"] = report["eval_before"][f"mean_{p}"]
        result[f"ppl_{p}_after"] = report["eval_after"][f"mean_{p}"]
    result["load"] = load_hint(out / "model")  # stock from_pretrained, or lorashear.load_pruned and why
    ctx.log(result["load"])
    result["load_avg_1m"] = os.getloadavg()[0]
    return result
