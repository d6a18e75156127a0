"""The "graph" job: trace a model and find its removable groups, writing graph.json and groups.json.

A real and fast job (seconds on the demo model, ~5 s for a LLaMA-2-7B config on the meta device); the app
also uses it to load the model it browses, so tracing never happens inside the Dash process.
"""
from __future__ import annotations

import hashlib
import importlib.util
from typing import Any

from .worker import JobContext

# the modules whose code decides what graph.json / groups.json contain
_GRAPH_CODE = ("lorashear.trace", "lorashear.groups", "lorashear.axes", "lorashear.loading", "lorashear.export", "lorashear.jsonio",
               "lorashear.pruned_format")


def code_fingerprint() -> str:
    """Hash of the tracing/grouping code, stored with each graph job: a cached graph made by other code
    is not reused (found without importing anything, so the check costs no torch import)."""
    h = hashlib.sha256()
    for name in _GRAPH_CODE:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            with open(spec.origin, "rb") as fh:
                h.update(name.encode() + b"\0" + fh.read())
    return h.hexdigest()[:16]


def run(params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    import lorashear  # imported here: the worker pays the torch import, not whoever lists the job kinds

    source, meta = params["source"], bool(params.get("meta", False))
    ctx.progress(0.05, "tracing" + (" on the meta device" if meta else ""))
    opgraph = lorashear.trace(source, meta=meta)
    ctx.progress(0.6, f"finding groups in {opgraph.graph.number_of_nodes()} nodes")
    groups = lorashear.find_groups(opgraph)
    ctx.progress(0.9, "saving")
    graph_path = ctx.out_dir / "graph.json"
    groups_path = ctx.out_dir / "groups.json"
    opgraph.save(graph_path)
    lorashear.save_groups(groups, groups_path)
    return {
        "artifacts": {"graph": graph_path, "groups": groups_path},
        "result": {
            "model_class": opgraph.model_class,
            "nodes": opgraph.graph.number_of_nodes(),
            "params": int(opgraph.n_params),
            "groups": len(groups),
            "prunable_groups": sum(1 for g in groups if g.prunable),
            "code": code_fingerprint(),
        },
    }
