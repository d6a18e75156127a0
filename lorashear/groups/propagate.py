"""Pass 1: axis propagation. One walk over the graph relates every tensor axis to its inputs' axes.

Each op's effect on axes is one rule in ``axis_rules.AXIS_RULES`` (element-wise ops tie equal axes,
``linear`` ties its input's last axis to the weight's columns and its output to the weight's rows, views
factor axes, ``sdpa`` ties heads and contracts the head dim, …). This module holds the walk and the state
the rules write: the axis algebra (a union-find over atoms), each value's axes, each parameter axis's roles
and the facts later passes need (attention axes, broadcast atoms, inferred splits). An op without a rule,
or whose rule raises, is *opaque*: every class it touches is marked unprunable with a reason naming it.
"""
from __future__ import annotations

from typing import Any

from ..axes import AxisAlgebra, AxisConflict, Expr
from ..trace import OpGraph
from .axis_rules import AXIS_RULES
from .ops import op_name, rule_failure, tensor_refs


class AxisPropagation:
    def __init__(self, og: OpGraph):
        self.og = og
        self.g = og.graph
        self.alg = AxisAlgebra()
        self.vals: dict[str, Any] = {}
        self.pexpr: dict[str, list[Expr]] = {}
        self.bexpr: dict[str, list[Expr]] = {}
        self.roles: dict[tuple[str, int], set[str]] = {}
        self.attention_axes: list[tuple[str, Expr]] = []  # (kind, expr) seen at attention ops
        self.embed_out: list[Expr] = []
        self.output_axes: list[Expr] = []
        self.broadcast_atoms: list[int] = []  # created by expand / GQA repetition: copies, not units
        self.inferred_splits: list[tuple[list[int], list[int], str]] = []  # (inferred atoms, fixed atoms, reason)

    # --- values
    def fresh(self, shape, reason: str | None = None) -> list[Expr]:
        return [[self.alg.new(s, reason)] if s != 1 else [] for s in (shape or [])]

    def val(self, ref):
        if isinstance(ref, dict):
            if "node" in ref:
                return self.vals.get(ref["node"])
            if "param" in ref:
                p = ref["param"]
                if p not in self.pexpr:
                    self.pexpr[p] = self.fresh(self.og.params[p]["shape"])
                return self.pexpr[p]
            if "buffer" in ref:
                b = ref["buffer"]
                if b not in self.bexpr:
                    shape = self.og.buffers.get(b, {}).get("shape", [])
                    self.bexpr[b] = self.fresh(shape, f"fixed-size buffer '{b}'")
                return self.bexpr[b]
        return None

    def role(self, ref, axis: int, role: str) -> None:
        if isinstance(ref, dict) and "param" in ref:
            ndim = len(self.og.params[ref["param"]]["shape"])
            self.roles.setdefault((ref["param"], axis % ndim), set()).add(role)

    def shape_of(self, ref):
        if isinstance(ref, dict) and "node" in ref:
            return self.g.nodes[ref["node"]].get("shape")
        if isinstance(ref, dict) and "param" in ref:
            return self.og.params[ref["param"]]["shape"]
        return None

    def broadcast_into(self, out: list[Expr], operands) -> None:
        """Tie each operand axis (right-aligned) to the output axis unless it is a size-1 broadcast."""
        for _, v in operands:
            if v is None or (v and isinstance(v, tuple)):
                continue
            pad = len(out) - len(v)
            for i, e in enumerate(v):
                if not e:
                    continue
                j = i + pad
                if j < 0:
                    continue
                if out[j]:
                    self.alg.unify(out[j], e)
                else:
                    out[j] = e

    # --- the walk
    def run(self) -> None:
        for name, a in self.g.nodes(data=True):
            kind = a.get("kind")
            if kind == "input":
                self.vals[name] = self.fresh(a.get("shape"))
            elif kind == "output":
                for ref in tensor_refs(a["args"]):
                    v = self.val(ref)
                    if v:
                        self.alg.mark([x for e in v for x in e], f"is an axis of the model output (node {ref.get('node')})")
                        self.output_axes += [e for e in v]
            elif kind == "op":
                try:
                    out = self.apply(name, a)
                except AxisConflict as exc:
                    out = None
                    self.opaque(name, a, f"inconsistent shapes at {a['op']} (node {name}): {exc}")
                except Exception as exc:  # a bug in one rule refuses what that op touches, never the whole model
                    out = None
                    self.opaque(name, a, rule_failure(name, a, exc))
                if out is None and name not in self.vals:
                    self.opaque(name, a, f"unsupported op '{a['target']}' at node {name} ({a.get('module') or 'top'})")
                elif out is not None:
                    self.vals[name] = out

    def opaque(self, name: str, a: dict, reason: str) -> None:
        for ref in tensor_refs([a.get("args"), a.get("kwargs")]):
            v = self.val(ref)
            for exprs in (v[1] if isinstance(v, tuple) else [v or []]):
                self.alg.mark([x for e in exprs for x in e], reason)
        if a.get("shapes") is not None:
            self.vals[name] = ("tuple", [self.fresh(s, reason) for s in a["shapes"]])
        else:
            self.vals[name] = self.fresh(a.get("shape"), reason)

    def apply(self, name: str, a: dict):
        """The op's output axes from its rule; ``None`` (no rule, or the rule cannot say) makes it opaque."""
        op, args, kw = op_name(a), a["args"], a.get("kwargs") or {}
        rule = AXIS_RULES.get(op)
        return rule(self, name, a, op, args, kw) if rule is not None else None

