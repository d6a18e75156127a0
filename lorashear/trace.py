"""Trace a causal LM into an operator dependency graph (``torch.export``, held in networkx).

The graph is self-contained: every op node keeps its aten target, its arguments (node references,
parameter references and constants, JSON-safe), its module path and class, output shape/dtype, the
parameters it reads and a FLOPs estimate. That lets group discovery and the app work from a JSON file
without re-tracing the model.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import torch
from torch import nn

from .errors import LorashearError
from .jsonio import read_json, write_json_atomic
from .loading import load_causal_lm

_SKIP_TARGETS = {"aten._assert_tensor_metadata.default", "aten._assert_scalar.default", "aten.sym_constrain_range_for_size.default"}
_WRAPPER = "m"  # attribute name of the traced model inside the export wrapper (stripped from all paths)


@dataclass
class OpGraph:
    """An operator dependency graph of one model.

    ``graph`` holds op nodes plus one ``input`` node per model input and one ``output`` node; parameters are
    not nodes (each op lists the ones it reads). ``params`` maps every parameter name to its shape/dtype.
    """

    graph: nx.MultiDiGraph
    model_class: str
    config: dict
    params: dict[str, dict] = field(default_factory=dict)
    buffers: dict[str, dict] = field(default_factory=dict)
    example_shape: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "format": "lorashear.graph/1",
            "model_class": self.model_class,
            "config": self.config,
            "params": self.params,
            "buffers": self.buffers,
            "example_shape": self.example_shape,
            "graph": nx.node_link_data(self.graph, edges="edges"),
        }

    def save(self, path: str | Path) -> Path:
        return write_json_atomic(path, self.to_dict())

    @property
    def n_params(self) -> int:
        return sum(p["numel"] for p in self.params.values() if "tied_to" not in p)


def load_graph(path: str | Path) -> OpGraph:
    """Read a graph written by ``OpGraph.save``."""
    data = read_json(path, "lorashear.graph/1", "graph")
    g = nx.node_link_graph(data["graph"], directed=True, multigraph=True, edges="edges")
    return OpGraph(g, data["model_class"], data["config"], data["params"], data.get("buffers", {}), data.get("example_shape", []))


class _LogitsWrapper(nn.Module):
    """Calls the model the way the brief prescribes: no KV cache, logits out."""

    def __init__(self, model: nn.Module):
        super().__init__()
        setattr(self, _WRAPPER, model)

    def forward(self, input_ids):
        return getattr(self, _WRAPPER)(input_ids=input_ids, use_cache=False).logits


def _strip(name: str) -> str:
    if name == _WRAPPER:
        return ""
    return name[len(_WRAPPER) + 1 :] if name.startswith(_WRAPPER + ".") else name


def _config_dict(model: nn.Module) -> dict:
    cfg = getattr(model, "config", None)
    if cfg is None:
        return {}
    try:
        return json.loads(cfg.to_json_string(use_diff=False))
    except Exception:  # a config with non-JSON fields still traces; the UI just shows less
        return {"model_type": getattr(cfg, "model_type", None)}


def export_model(model: nn.Module, *, batch: int = 2, seq_len: int = 16) -> torch.export.ExportedProgram:
    """``torch.export`` (non-strict) of ``model`` wrapped to return logits, on the model's own device."""
    try:
        device = next(model.parameters()).device
    except StopIteration:
        raise LorashearError(f"{type(model).__name__} has no parameters; nothing to trace") from None
    cfg = getattr(model, "config", None)
    vocab = int(getattr(cfg, "vocab_size", 2) or 2)
    max_pos = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or seq_len
    seq_len = min(seq_len, int(max_pos))
    ids = torch.randint(0, vocab, (batch, seq_len), device=device)
    # torch prints the whole traced program (hundreds of lines) to stderr and its logs when export fails:
    # hold both back and report one line; on success, pass on what was written
    held = io.StringIO()
    disabled = logging.root.manager.disable
    try:
        logging.disable(logging.WARNING)
        with torch.no_grad(), contextlib.redirect_stderr(held), contextlib.redirect_stdout(held):
            ep = torch.export.export(_LogitsWrapper(model), (ids,), strict=False)
    except Exception as exc:  # export failures are reported, not re-raised as tracebacks
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LorashearError(f"torch.export failed for {type(model).__name__}: {type(exc).__name__}: {first[:300]}") from None
    finally:
        logging.disable(disabled)
    if held.getvalue().strip():
        sys.stderr.write(held.getvalue())
    return ep


def trace(source: Any, *, meta: bool = False, batch: int = 2, seq_len: int = 16) -> OpGraph:
    """Trace ``source`` (model, model directory or config file) into an ``OpGraph``.

    ``meta=True`` builds the model on the meta device from its config: the structure of a 70B model
    without loading a single weight.
    """
    model = load_causal_lm(source, meta=meta)
    if not hasattr(model, "config") and not hasattr(getattr(model, "base_model", None), "config"):
        raise LorashearError(f"{type(model).__name__} is not a Hugging Face model (no config)")
    ep = export_model(model, batch=batch, seq_len=seq_len)
    return graph_from_export(ep, model)


# ------------------------------------------------------------------------------------------ conversion
def graph_from_export(ep: torch.export.ExportedProgram, model: nn.Module) -> OpGraph:
    sig = ep.graph_signature
    param_of = {k: _strip(v) for k, v in sig.inputs_to_parameters.items()}
    buffer_of = {k: _strip(v) for k, v in sig.inputs_to_buffers.items()}
    const_of = {k: _strip(v) for k, v in getattr(sig, "inputs_to_lifted_tensor_constants", {}).items()}
    user_inputs = set(sig.user_inputs)

    g = nx.MultiDiGraph()
    params: dict[str, dict] = {}
    buffers: dict[str, dict] = {}
    for node in ep.graph.nodes:
        if node.op != "placeholder":
            continue
        val = node.meta.get("val")
        info = {"shape": list(val.shape), "dtype": str(val.dtype).replace("torch.", ""), "numel": int(val.numel())} if isinstance(val, torch.Tensor) else {}
        if node.name in param_of:
            params[param_of[node.name]] = info
        elif node.name in buffer_of or node.name in const_of:
            buffers[buffer_of.get(node.name) or const_of[node.name]] = info
        elif node.name in user_inputs:
            g.add_node(node.name, kind="input", op="input", target="input", module="", module_class="",
                       shape=info.get("shape"), dtype=info.get("dtype"), params=[], buffers=[], flops=0, args=[], kwargs={})

    def ref(a):
        if isinstance(a, torch.fx.Node):
            if a.name in param_of:
                return {"param": param_of[a.name]}
            if a.name in buffer_of:
                return {"buffer": buffer_of[a.name]}
            if a.name in const_of:
                return {"buffer": const_of[a.name]}
            return {"node": a.name}
        if isinstance(a, (list, tuple)):
            return [ref(x) for x in a]
        if isinstance(a, dict):
            return {"dict": {str(k): ref(v) for k, v in a.items()}}
        if a is None or isinstance(a, (bool, int, str)):
            return a
        if isinstance(a, float):
            return a if a == a and abs(a) != float("inf") else {"float": str(a)}
        if isinstance(a, torch.dtype):
            return {"dtype": str(a).replace("torch.", "")}
        return {"repr": str(a)}

    for node in ep.graph.nodes:
        if node.op == "output":
            args = ref(node.args[0])
            g.add_node("output", kind="output", op="output", target="output", module="", module_class="",
                       shape=None, dtype=None, params=[], buffers=[], flops=0, args=args, kwargs={})
            for src in _node_refs(args):
                g.add_edge(src, "output", shape=g.nodes[src].get("shape"))
            continue
        if node.op != "call_function" or str(node.target) in _SKIP_TARGETS:
            continue
        target = str(node.target)
        if target.startswith("aten."):
            op = target.split(".")[1]
        else:
            op = getattr(node.target, "__name__", target)
        stack = node.meta.get("nn_module_stack") or {}
        path, cls = ("", "")
        if stack:
            path, cls = list(stack.values())[-1]
            cls = cls if isinstance(cls, str) else getattr(cls, "__qualname__", str(cls))
            path, cls = _strip(path), cls.rsplit(".", 1)[-1]
        val = node.meta.get("val")
        shape = list(val.shape) if isinstance(val, torch.Tensor) else None
        dtype = str(val.dtype).replace("torch.", "") if isinstance(val, torch.Tensor) else None
        args = ref(list(node.args))
        kwargs = ref(dict(node.kwargs))["dict"] if node.kwargs else {}
        attrs = dict(kind="op", op=op, target=target, module=path, module_class=cls, shape=shape, dtype=dtype,
                     args=args, kwargs=kwargs,
                     params=sorted({p["param"] for p in _leaf_refs(args, "param")} | {p["param"] for p in _leaf_refs(kwargs, "param")}),
                     buffers=sorted({p["buffer"] for p in _leaf_refs(args, "buffer")}))
        if isinstance(val, (list, tuple)):
            attrs["shapes"] = [list(v.shape) if isinstance(v, torch.Tensor) else None for v in val]
        attrs["flops"] = _flops(op, attrs, g)
        g.add_node(node.name, **attrs)
        for src in _node_refs([args, kwargs]):
            if src in g:
                g.add_edge(src, node.name, shape=g.nodes[src].get("shape"))

    # tied weights (embedding = lm_head) are one tensor under several names: the graph reads it under one of
    # them (its canonical name); the others are recorded as aliases and counted once
    used = {p for _, a in g.nodes(data=True) for p in a.get("params", [])}
    aliases: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if name in params:
            aliases.setdefault(id(p), []).append(name)
    for names in aliases.values():
        canonical = next((n for n in names if n in used), names[0])
        for n in names:
            if n != canonical:
                params[n]["tied_to"] = canonical
    base = getattr(model, "get_base_model", lambda: model)()
    example = next((a["shape"] for _, a in g.nodes(data=True) if a.get("kind") == "input"), [])
    return OpGraph(g, type(model).__name__ if not hasattr(model, "peft_config") else f"{type(model).__name__}({type(base).__name__})",
                   _config_dict(base), params, buffers, example)


def _leaf_refs(obj, key):
    if isinstance(obj, dict):
        if key in obj and len(obj) == 1:
            yield obj
        else:
            for v in obj.values():
                yield from _leaf_refs(v, key)
    elif isinstance(obj, list):
        for v in obj:
            yield from _leaf_refs(v, key)


def _node_refs(obj) -> list[str]:
    return [r["node"] for r in _leaf_refs(obj, "node")]


def _numel(shape) -> int:
    n = 1
    for s in shape or []:
        n *= int(s)
    return n


def _flops(op: str, attrs: dict, g: nx.MultiDiGraph) -> int:
    """Rough FLOPs of one op for the traced example input (2 per multiply-add; 1 per element otherwise)."""
    out = attrs.get("shape")
    args = attrs["args"]

    def shape_of(a):
        if isinstance(a, dict) and "node" in a:
            return g.nodes[a["node"]].get("shape") if a["node"] in g else None
        return None

    if op == "linear" and out:
        x = shape_of(args[0])
        return 2 * _numel(out) * (x[-1] if x else 1)
    if op in ("matmul", "bmm", "mm") and out:
        a = shape_of(args[0])
        return 2 * _numel(out) * (a[-1] if a else 1)
    if op == "addmm" and out:
        a = shape_of(args[1])
        return 2 * _numel(out) * (a[-1] if a else 1)
    if op.startswith("scaled_dot_product") and out:
        q, k = shape_of(args[0]), shape_of(args[1])
        if q and k:
            return 4 * _numel(q[:-1]) * k[-2] * q[-1]
    if op in ("view", "reshape", "_unsafe_view", "transpose", "permute", "unsqueeze", "squeeze", "expand", "slice", "alias", "getitem", "to", "_to_copy", "clone", "contiguous"):
        return 0
    return _numel(out) if out else 0


# --------------------------------------------------------------------------------------- module view
def module_tree(opgraph: OpGraph) -> dict:
    """Module-path tree with op counts and parameter counts (what the UI's collapsed view is built from)."""
    root = {"path": "", "class": opgraph.model_class, "n_ops": 0, "n_params": 0, "children": {}}

    def node_for(path: str) -> dict:
        cur = root
        if not path:
            return cur
        parts = path.split(".")
        for i in range(len(parts)):
            key = ".".join(parts[: i + 1])
            cur = cur["children"].setdefault(key, {"path": key, "class": "", "n_ops": 0, "n_params": 0, "children": {}})
        return cur

    for _, attrs in opgraph.graph.nodes(data=True):
        if attrs.get("kind") != "op":
            continue
        path = attrs.get("module", "")
        n = node_for(path)
        if attrs.get("module_class") and not n["class"]:
            n["class"] = attrs["module_class"]
        cur = root
        cur["n_ops"] += 1
        if path:
            parts = path.split(".")
            for i in range(len(parts)):
                cur = cur["children"][".".join(parts[: i + 1])]
                cur["n_ops"] += 1
    for name, info in opgraph.params.items():
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        root["n_params"] += info.get("numel", 0)
        if owner:
            parts = owner.split(".")
            cur = root
            for i in range(len(parts)):
                key = ".".join(parts[: i + 1])
                cur = cur["children"].setdefault(key, {"path": key, "class": "", "n_ops": 0, "n_params": 0, "children": {}})
                cur["n_params"] += info.get("numel", 0)

    def finish(n: dict) -> dict:
        n["children"] = [finish(c) for c in n["children"].values()]
        return n

    return finish(root)
