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
    group_ops: dict[str, list[str]] = field(default_factory=dict)  # group id -> every op it spans (group_op_map)

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
                "members": len(g.members), "ops": len(self.group_ops.get(g.id, g.nodes)),
                "prunable": "yes" if g.prunable else "no", "reason": g.reason or "",
            })
        return rows

    def layer_sizes(self) -> list[dict[str, Any]]:
        """The real widths of every block (a pruned model's config still says the dense sizes): query heads, kv
        heads (attention units), MLP channels — from the groups the trace found on the model's own module
        shapes; where a block has no such group (one kv head left is no group: it cannot lose its last unit), from
        the pruned folder's sidecar (``layer_sizes``, recorded by compress), else the config (a dense model's
        config is its truth). None where neither knows."""
        by_layer: dict[int, dict[str, Any]] = defaultdict(dict)
        for key, sizes in (self.sidecar().get("layer_sizes") or {}).items():
            if str(key).isdigit():
                by_layer[int(key)].update({k: int(v) for k, v in sizes.items()
                                           if k in ("attention", "query_heads", "mlp")})
        cfg = self.opgraph.config or {}
        if not self.sidecar():
            kv_cfg = cfg.get("num_key_value_heads") or cfg.get("num_attention_heads")
            q_cfg = cfg.get("num_attention_heads")
            for layer in {g.layer for g in self.groups if g.layer is not None}:
                if kv_cfg:
                    by_layer[layer].setdefault("attention", int(kv_cfg))
                    if q_cfg and int(q_cfg) != int(kv_cfg):
                        by_layer[layer].setdefault("query_heads", int(q_cfg) // int(kv_cfg))
                if cfg.get("intermediate_size"):
                    by_layer[layer].setdefault("mlp", int(cfg["intermediate_size"]))
        for g in self.groups:
            if g.layer is not None and g.kind in ("attention", "query_heads", "mlp"):
                by_layer[g.layer][g.kind] = g.n_units
        out = []
        for layer in sorted(by_layer):
            d = by_layer[layer]
            kv = d.get("attention")
            q = kv * d["query_heads"] if kv is not None and "query_heads" in d else kv
            out.append({"layer": layer, "heads": q, "kv_heads": kv, "mlp": d.get("mlp")})
        return out

    def sidecar(self) -> dict[str, Any]:
        """The pruned folder's ``lorashear.json`` (empty for a dense folder, a config file or a missing one)."""
        if not hasattr(self, "_sidecar"):
            from lorashear.errors import LorashearError
            from lorashear.pruned_format import read_sidecar

            try:
                side = read_sidecar(self.source) if self.source and Path(self.source).is_dir() else None
            except (LorashearError, OSError):
                side = None
            object.__setattr__(self, "_sidecar", side or {})
        return self._sidecar

    def hidden_size(self) -> int | None:
        """The residual width as traced (the hidden group's units), None without a hidden group."""
        return next((g.n_units for g in self.groups if g.kind == "hidden"), None)

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


def group_op_map(graph: nx.MultiDiGraph, params: dict[str, dict], groups: list[Any]) -> dict[str, list[str]]:
    """Group id -> every op that reads or writes one of its units: the ops whose output carries the group's axis
    (``Group.nodes``) *and* every op that reads a member parameter.

    ``Group.nodes`` alone misses the consumers that contract the axis away — ``o_proj`` of an attention group,
    ``down_proj`` of an MLP group — whose output no longer has it, though their weight columns are removed with
    the unit; highlighting a group must light them too. Tied weights (one tensor under two names) match under
    either name."""
    canon = {name: p.get("tied_to", name) for name, p in params.items()}
    readers: dict[str, list[str]] = defaultdict(list)  # canonical parameter -> ops reading it
    for node, a in graph.nodes(data=True):
        for p in a.get("params") or ():
            readers[canon.get(p, p)].append(node)
    out: dict[str, list[str]] = {}
    for g in groups:
        ops = list(dict.fromkeys(g.nodes))
        seen = set(ops)
        for m in g.members:
            for node in readers.get(canon.get(m.param, m.param), ()):
                if node not in seen:
                    seen.add(node)
                    ops.append(node)
        out[g.id] = ops
    return out


def _build(job_id: int, source: str, meta: bool, graph_path: Path, groups_path: Path) -> ModelView:
    import lorashear

    og = lorashear.load_graph(graph_path)
    groups = lorashear.load_groups(groups_path)
    tree = lorashear.module_tree(og)
    h = H.build(og.graph, tree)
    op_groups: dict[str, list[str]] = defaultdict(list)
    param_groups: dict[str, list[str]] = defaultdict(list)
    group_ops = group_op_map(og.graph, og.params, groups)
    for g in groups:
        for n in group_ops[g.id]:
            op_groups[n].append(g.id)
        for m in g.members:
            if g.id not in param_groups[m.param]:
                param_groups[m.param].append(g.id)
    return ModelView(job_id, source, meta, og, groups, h, {g.id: g for g in groups}, dict(op_groups),
                     dict(param_groups), group_ops)


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
