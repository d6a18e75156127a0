"""Everything the views need about one traced model, derived once from a graph job's artifacts.

The app never traces: it reads ``graph.json`` / ``groups.json`` written by a "graph" job (a worker
process) and prepares lookup tables for the views (op -> groups, group rows, parameters per layer). Cached
per job, so switching tabs or sessions costs nothing.
"""
from __future__ import annotations

import threading
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx

from . import hierarchy as H


@dataclass
class ModelView:
    job_id: int
    source: str
    meta: bool
    opgraph: Any  # lorashear OpGraph
    groups: list[Any]  # lorashear Group
    hierarchy: H.Hierarchy
    group_by_id: dict[str, Any]
    op_groups: dict[str, list[str]]  # graph node -> ids of groups spanning it
    param_groups: dict[str, list[str]] = field(default_factory=dict)

    @property
    def graph(self) -> nx.MultiDiGraph:
        return self.opgraph.graph

    @property
    def n_params(self) -> int:
        return int(self.opgraph.n_params)  # tied weights counted once

    @property
    def n_layers(self) -> int:
        layers = {g.layer for g in self.groups if g.layer is not None}
        if layers:
            return max(layers) + 1
        return int(self.opgraph.config.get("num_hidden_layers") or 0)

    def group_rows(self) -> list[dict[str, Any]]:
        """One row per group for the groups table."""
        rows = []
        for g in self.groups:
            rows.append({
                "id": g.id, "kind": g.kind, "module": g.module,
                "layer": g.layer if g.layer is not None else "all",
                "units": g.n_units, "params_per_unit": g.params_per_unit,
                "params": g.n_units * g.params_per_unit,
                "members": len(g.members), "ops": len(g.nodes),
                "prunable": "yes" if g.prunable else "no", "reason": g.reason or "",
            })
        return rows

    def layer_params(self) -> dict[int | None, dict[str, int]]:
        """Parameters per block index and by what they are: attention/mlp/other; None = outside blocks."""
        out: dict[int | None, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for name, p in self.opgraph.params.items():
            if "tied_to" in p:  # one tensor under two names (embedding = lm_head): count it once
                continue
            layer = H.layer_of(name.rsplit(".", 1)[0])
            kinds = {self.group_by_id[g].kind for g in self.param_groups.get(name, ())
                     if self.group_by_id[g].layer is not None}
            what = "attention" if "attention" in kinds else "mlp" if "mlp" in kinds else "not in a per-layer group"
            out[layer][what] += int(p["numel"])
        return out


def _build(job_id: int, source: str, meta: bool, graph_path: Path, groups_path: Path) -> ModelView:
    import lorashear

    og = lorashear.load_graph(graph_path)
    groups = lorashear.load_groups(groups_path)
    tree = lorashear.module_tree(og)
    h = H.build(og.graph, tree)
    op_groups: dict[str, list[str]] = defaultdict(list)
    param_groups: dict[str, list[str]] = defaultdict(list)
    for g in groups:
        for n in g.nodes:
            op_groups[n].append(g.id)
        for m in g.members:
            if g.id not in param_groups[m.param]:
                param_groups[m.param].append(g.id)
    return ModelView(job_id, source, meta, og, groups, h, {g.id: g for g in groups}, dict(op_groups),
                     dict(param_groups))


_CACHE: "OrderedDict[int, ModelView]" = OrderedDict()
_LOCK = threading.Lock()


def load(job) -> ModelView:
    """The view of a succeeded graph job (cached, 4 most recent)."""
    with _LOCK:
        if job.id in _CACHE:
            _CACHE.move_to_end(job.id)
            return _CACHE[job.id]
    mv = _build(job.id, job.params.get("source", ""), bool(job.params.get("meta")),
                Path(job.artifacts["graph"]), Path(job.artifacts["groups"]))
    with _LOCK:
        _CACHE[job.id] = mv
        while len(_CACHE) > 4:
            _CACHE.popitem(last=False)
    return mv
