"""Minimally removable structures ("groups"), discovered from the operator graph by dimension propagation.

Pass 1 walks the graph once and relates every tensor axis to its inputs' axes through the op's semantics
(``AxisAlgebra``): element-wise ops tie equal axes, ``linear`` ties its input's last axis to the weight's
columns and its output to the weight's rows, views factor axes, ``sdpa`` ties heads (a kv head with its
query heads under GQA) and contracts the head dim. Each resulting leaf class that touches a parameter is a
candidate group; a unit is one index of it.

Pass 2 proves zero-invariance per class: with every *producer* slice of a unit set to zero, is every
value that carries the class zero at that unit wherever it is contracted, reduced or leaves the model?
Mean reductions (RMSNorm) are allowed when an exact weight/eps compensation exists. Anything the rules do
not understand marks the classes it touches unprunable with a reason naming the op and node — never a
wrong group.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .axes import AxisAlgebra, AxisConflict, Expr, layout_indices, unit_layout
from .jsonio import read_json, write_json_atomic
from .trace import OpGraph

# ------------------------------------------------------------------------------------------- op tables
_IDENTITY = {"clone", "contiguous", "alias", "detach", "dropout", "_to_copy", "to", "type_as", "lift_fresh_copy",
             "feature_dropout", "alpha_dropout", "_assert_tensor_metadata", "_to_dim_order_copy"}
_ZERO_UNARY = {"neg", "silu", "gelu", "relu", "tanh", "sin", "sqrt", "abs", "erf", "hardtanh", "leaky_relu", "elu",
               "square", "relu6", "mish", "sign", "trunc", "round", "floor", "ceil", "expm1", "sinh", "asin", "atan",
               "hardswish", "selu", "celu", "gelu_", "silu_", "relu_", "tanh_"}
_OTHER_UNARY = {"sigmoid", "exp", "cos", "rsqrt", "reciprocal", "log", "log1p", "softplus", "logical_not",
                "bitwise_not", "isnan", "isinf", "cosh", "acos", "log2", "exp2", "hardsigmoid", "erfc", "lgamma"}
_ADDITIVE = {"add", "sub", "rsub", "where", "maximum", "minimum", "lerp", "fmax", "fmin"}
_COMPARE = {"eq", "ne", "lt", "le", "gt", "ge", "__and__", "__or__", "__xor__", "logical_and", "logical_or",
            "bitwise_and", "bitwise_or", "logical_xor"}
_CREATE = {"arange", "ones", "zeros", "full", "empty", "scalar_tensor", "rand", "randn", "randint", "linspace",
           "new_ones", "new_zeros", "new_full", "new_empty", "tensor"}
_LIKE = {"ones_like", "zeros_like", "full_like", "empty_like", "rand_like", "randn_like"}
_REDUCE = {"mean", "sum", "amax", "amin", "var", "std", "logsumexp", "prod", "norm", "linalg_vector_norm", "any",
           "all", "argmax", "argmin", "count_nonzero"}
_ALONG = {"softmax", "_softmax", "log_softmax", "_log_softmax", "cumsum", "cumprod", "cummax", "sort", "topk"}
_VIEW = {"view", "reshape", "_unsafe_view", "view_copy", "_reshape_alias", "flatten", "unflatten"}

KIND_SUFFIX = {"attention": "heads", "query_heads": "query_heads", "mlp": "channels", "hidden": "hidden", "head_dim": "head_dim", "vocab": "vocab",
               "lora_rank": "lora_rank", "other": "axis"}
_LORA_RE = re.compile(r"\.lora_(A|B|embedding_A|embedding_B)(\.[^.]+)?(?=\.)")


@dataclass
class Member:
    """One parameter axis the group touches. A unit of the group is the set of indices along ``axis``
    whose digit ``pos`` in the mixed-radix ``layout`` equals the unit (outer factors give blocks)."""

    param: str
    axis: int
    role: str  # producer (zeroed to kill a unit) | consumer (reads it) | passthrough (element-wise) | index
    layout: list[int]
    pos: int

    def unit_indices(self, units) -> np.ndarray:
        return layout_indices(self.layout, self.pos, units)


@dataclass
class Group:
    id: str
    kind: str
    module: str
    layer: int | None
    n_units: int
    params_per_unit: int
    members: list[Member]
    nodes: list[str]
    prunable: bool
    reason: str | None
    compensation: list[dict] = field(default_factory=list)  # RMS norms to rescale when units go

    def producers(self) -> list[Member]:
        return [m for m in self.members if m.role == "producer"]


# ------------------------------------------------------------------------------------------ pass 1
class _Propagator:
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

    @staticmethod
    def op_of(a: dict) -> str:
        """The op name the rules dispatch on: ``max.other``/``min.other`` (two tensors, element-wise) are
        ``maximum``/``minimum``, not the reductions ``max.dim``/``min.dim``."""
        op = a["op"]
        if op in ("max", "min") and str(a.get("target", "")).endswith(".other"):
            return "maximum" if op == "max" else "minimum"
        return op

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

    def is_tensor(self, ref) -> bool:
        return isinstance(ref, dict) and any(k in ref for k in ("node", "param", "buffer"))

    # --- the walk
    def run(self) -> None:
        for name, a in self.g.nodes(data=True):
            kind = a.get("kind")
            if kind == "input":
                self.vals[name] = self.fresh(a.get("shape"))
            elif kind == "output":
                for ref in _flatten(a["args"]):
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
                    self.opaque(name, a, _rule_failure(name, a, exc))
                if out is None and name not in self.vals:
                    self.opaque(name, a, f"unsupported op '{a['target']}' at node {name} ({a.get('module') or 'top'})")
                elif out is not None:
                    self.vals[name] = out

    def opaque(self, name: str, a: dict, reason: str) -> None:
        for ref in _flatten([a.get("args"), a.get("kwargs")]):
            v = self.val(ref)
            for exprs in (v[1] if isinstance(v, tuple) else [v or []]):
                self.alg.mark([x for e in exprs for x in e], reason)
        if a.get("shapes") is not None:
            self.vals[name] = ("tuple", [self.fresh(s, reason) for s in a["shapes"]])
        else:
            self.vals[name] = self.fresh(a.get("shape"), reason)

    def apply(self, name: str, a: dict):
        op, args, kw = self.op_of(a), a["args"], a.get("kwargs") or {}
        alg = self.alg
        out_shape = a.get("shape")
        where = f"{op} at node {name}"

        if op in _IDENTITY:
            return list(self.val(args[0]))
        if op == "getitem":
            tup = self.vals.get(args[0]["node"])
            return tup[1][args[1]] if isinstance(tup, tuple) else None
        if op in _ZERO_UNARY or op in _OTHER_UNARY or op in _ADDITIVE or op in _COMPARE or op in ("mul", "div", "pow", "masked_fill", "clamp", "clamp_min", "clamp_max", "true_divide", "floor_divide", "remainder", "fmod"):
            return self.elementwise(args, out_shape)
        if op in _LIKE:
            return list(self.val(args[0]))
        if op in _CREATE:
            return self.fresh(out_shape, f"size fixed by {where}")
        if op == "linear":
            x, w = self.val(args[0]), self.val(args[1])
            alg.unify(x[-1], w[1])
            self.role(args[1], 0, "producer")
            self.role(args[1], 1, "consumer")
            if len(args) > 2 and args[2] is not None:
                alg.unify(self.val(args[2])[0], w[0])
                self.role(args[2], 0, "producer")
            return x[:-1] + [w[0]]
        if op == "addmm":
            b, x, w = self.val(args[0]), self.val(args[1]), self.val(args[2])
            alg.unify(x[1], w[0])
            self.role(args[2], 1, "producer")
            self.role(args[2], 0, "consumer")
            out = [x[0], w[1]]
            self.broadcast_into(out, [(args[0], b)])
            self.role(args[0], -1, "producer")
            return out
        if op in ("mm", "bmm", "matmul"):
            return self.matmul(args, out_shape)
        if op == "embedding":
            w, idx = self.val(args[0]), self.val(args[1])
            self.role(args[0], 1, "producer")
            self.role(args[0], 0, "index")
            alg.mark(w[0], f"rows are looked up by id (embedding at node {name}): a vocabulary/position axis")
            self.embed_out.append(w[1])
            return list(idx) + [w[1]]
        if op == "scaled_dot_product_attention":
            return self.sdpa(name, args, kw)
        if op in _VIEW:
            x = self.val(args[0])
            out = alg.factor([atom for e in x for atom in e], out_shape)
            sizes = args[1] if len(args) > 1 else None
            if op in ("view", "reshape", "_unsafe_view") and isinstance(sizes, list) and -1 in sizes:
                self.inferred_split(name, a, x, out, sizes)
            return out
        if op in ("transpose", "swapaxes"):
            x = list(self.val(args[0]))
            d0, d1 = args[1] % len(x), args[2] % len(x)
            x[d0], x[d1] = x[d1], x[d0]
            return x
        if op == "t":
            return list(reversed(self.val(args[0])))
        if op == "permute":
            x = self.val(args[0])
            return [x[d % len(x)] for d in args[1]]
        if op == "unsqueeze":
            x = list(self.val(args[0]))
            d = args[1] % (len(x) + 1)
            return x[:d] + [[]] + x[d:]
        if op == "squeeze":
            x, shape = self.val(args[0]), self.shape_of(args[0])
            dims = args[1] if len(args) > 1 else list(range(len(x)))
            dims = {d % len(x) for d in (dims if isinstance(dims, list) else [dims])}
            return [e for i, (e, s) in enumerate(zip(x, shape)) if not (s == 1 and i in dims)]
        if op in ("expand", "expand_copy", "broadcast_to"):
            x = self.val(args[0])
            pad = len(out_shape) - len(x)
            out = []
            for i, s in enumerate(out_shape):
                src = x[i - pad] if i >= pad else []
                if src or s == 1:
                    out.append(src)
                else:
                    out.append([alg.new(s, f"broadcast copies by {where}")])
                    self.broadcast_atoms.append(out[-1][0])
            return out
        if op == "slice":
            return self.slice(name, a, args)
        if op == "select":
            x = list(self.val(args[0]))
            d = args[1] % len(x)
            alg.mark(x[d], f"one index picked by {where}")
            return x[:d] + x[d + 1 :]
        if op == "cat":
            return self.cat(name, args)
        if op == "stack":
            parts = [self.val(r) for r in args[0]]
            d = (args[1] if len(args) > 1 else 0) % (len(parts[0]) + 1)
            out = [list(e) for e in parts[0]]
            for p in parts[1:]:
                for i, e in enumerate(p):
                    if e and out[i]:
                        alg.unify(out[i], e)
            return out[:d] + [[alg.new(len(parts), f"stacking axis of {where}")]] + out[d:]
        if op in ("split", "split_with_sizes", "chunk", "unbind", "tensor_split"):
            return self.split(name, a, args)
        if op in _REDUCE or op in ("max", "min", "var_mean", "std_mean", "aminmax"):
            return self.reduce(name, a, args, kw)
        if op in _ALONG:
            x = self.val(args[0])
            d = (args[1] if len(args) > 1 else kw.get("dim", -1)) % len(x)
            alg.mark(x[d], f"mixed along the axis by {where}")
            out = list(x)
            return ("tuple", [out, out]) if a.get("shapes") else out
        if op in ("layer_norm", "native_layer_norm"):
            x = self.val(args[0])
            k = len(args[1])
            for j, ref in enumerate(args[2:4]):
                if self.is_tensor(ref):
                    w = self.val(ref)
                    for i in range(k):
                        alg.unify(w[i], x[len(x) - k + i])
                    self.role(ref, 0, "passthrough" if j == 0 else "producer")
            alg.mark([t for e in x[len(x) - k :] for t in e],
                     f"centred and scaled by layer_norm at node {name} ({a.get('module')}): removing channels changes its mean and variance in a way no weight can compensate")
            if a.get("shapes"):
                stats = list(x[: len(x) - k]) + [[]] * k
                return ("tuple", [list(x), stats, stats])
            return list(x)
        if op == "rms_norm":
            x = self.val(args[0])
            k = len(args[1])
            if len(args) > 2 and self.is_tensor(args[2]):
                w = self.val(args[2])
                for i in range(k):
                    alg.unify(w[i], x[len(x) - k + i])
                self.role(args[2], 0, "passthrough")
            return list(x)
        return None  # unknown: caller marks it opaque

    def inferred_split(self, name: str, a: dict, x: list[Expr], out: list[Expr], sizes: list) -> None:
        """A view that splits one axis into an inferred (``-1``) size and a fixed one.

        The graph records one of the two factors as a constant, but not which one the module's code holds
        fixed: ``reshape(..., -1, head_dim)`` keeps the inner factor (heads shrink with pruning, exact),
        CodeGen's ``reshape(..., mp_num, -1)`` keeps the outer one (export shows it the other way round).
        So the classes inside the fixed factor are only safe when nothing removes their units: they are
        refused with the reason. A fixed dimension that is a whole input axis (``view(-1, hidden)``) is not
        a split and stays free. When the fixed factor holds part of an attention heads axis (CodeGen with
        more heads than ``mp_num``), the heads on the inferred side are refused too (``find_groups``)."""
        neg = sizes.index(-1)
        neg_leaves = {self.alg.find(t) for t in self.alg.expand(out[neg])}
        for e in x:
            axis = {self.alg.find(t) for t in self.alg.expand(e)}
            if not axis & neg_leaves:
                continue
            for j, oe in enumerate(out):
                fixed = [t for t in self.alg.expand(oe) if self.alg.find(t) in axis]
                if j == neg or not fixed or {self.alg.find(t) for t in self.alg.expand(oe)} == axis:
                    continue
                reason = (f"split by {a['op']} at node {name} ({a.get('module') or 'top'}) into an inferred (-1) "
                          f"size and a fixed size {sizes[j]}: the module may hold either factor constant, which compress "
                          "cannot rewrite")
                self.alg.mark(fixed, reason)
                self.inferred_splits.append((list(out[neg]), fixed, reason))

    def shape_of(self, ref):
        if isinstance(ref, dict) and "node" in ref:
            return self.g.nodes[ref["node"]].get("shape")
        if isinstance(ref, dict) and "param" in ref:
            return self.og.params[ref["param"]]["shape"]
        return None

    def elementwise(self, args, out_shape):
        if out_shape is None:
            return None
        out: list[Expr] = [[] for _ in out_shape]
        ops = [(r, self.val(r)) for r in _flatten(args) if self.is_tensor(r)]
        self.broadcast_into(out, ops)
        for r, _ in ops:
            if isinstance(r, dict) and "param" in r:
                for ax in range(len(self.og.params[r["param"]]["shape"])):
                    self.role(r, ax, "passthrough")
        for i, s in enumerate(out_shape):
            if s != 1 and not out[i]:
                out[i] = [self.alg.new(s)]
        return out

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

    def matmul(self, args, out_shape):
        a, b = self.val(args[0]), self.val(args[1])
        if len(a) < 2 or len(b) < 2:
            return None
        self.alg.unify(a[-1], b[-2])
        for ref, prod_ax, cons_ax in ((args[1], -1, -2), (args[0], -2, -1)):
            if isinstance(ref, dict) and "param" in ref:
                self.role(ref, prod_ax, "producer")
                self.role(ref, cons_ax, "consumer")
        batch: list[Expr] = [[] for _ in out_shape[:-2]]
        self.broadcast_into(batch, [(None, a[:-2]), (None, b[:-2])])
        if not any(isinstance(r, dict) and "param" in r for r in args[:2]):
            # activation × activation (eager attention): scores contract the head dim, attn @ v keeps v's
            self.attention_axes += [("head_dim", a[-1]), ("head_dim", b[-1])]
            for e in batch:
                self.attention_axes.append(("attention", e))
        return batch + [a[-2], b[-1]]

    def sdpa(self, name, args, kw):
        q, k, v = (self.val(r) for r in args[:3])
        alg = self.alg
        for e in (k[0], v[0]):
            if q[0] and e:
                alg.unify(q[0], e)
        nq, nk = alg.numel(q[1]), alg.numel(k[1])
        if nq == nk:
            alg.unify(q[1], k[1])
        elif nk and nq % nk == 0:
            rep = alg.new(nq // nk, f"query heads share a kv head inside sdpa (enable_gqa) at node {name}")
            self.broadcast_atoms.append(rep)
            alg.unify(q[1], list(k[1]) + [rep])
        else:
            raise AxisConflict(f"{nq} query heads vs {nk} kv heads")
        alg.unify(k[1], v[1])
        alg.unify(q[-1], k[-1])
        alg.unify(k[-2], v[-2])
        mask_ref = args[3] if len(args) > 3 else kw.get("attn_mask")
        if self.is_tensor(mask_ref):
            # a per-head bias (ALiBi) ties the head axis to whatever built it (sizes fixed by the config)
            self.broadcast_into([q[0], q[1], q[2], k[2]], [(mask_ref, self.val(mask_ref))])
        self.attention_axes += [("attention", q[1]), ("head_dim", q[-1]), ("head_dim", v[-1])]
        return [q[0], q[1], q[2], v[-1]]

    def slice(self, name, a, args):
        x = list(self.val(args[0]))
        shape = self.shape_of(args[0])
        d = (args[1] if len(args) > 1 else 0) % len(x)
        n = shape[d]
        start = args[2] if len(args) > 2 and args[2] is not None else 0
        end = args[3] if len(args) > 3 and args[3] is not None else n
        step = args[4] if len(args) > 4 else 1
        start, end = (start + n if start < 0 else start), min(end + n if end < 0 else end, n)
        m = a["shape"][d]
        if m == n:
            return x
        where = f"slice at node {name}"
        if step == 1 and m and n % m == 0 and start % m == 0:
            outer, inner = self.alg.factor(x[d], [n // m, m])
            self.alg.mark(outer, f"indices selected by {where}")
            x[d] = inner
            return x
        self.alg.mark(x[d], f"irregular {where}")
        x[d] = [self.alg.new(m, f"irregular {where}")] if m != 1 else []
        return x

    def cat(self, name, args):
        parts = [self.val(r) for r in args[0]]
        shapes = [self.shape_of(r) for r in args[0]]
        d = (args[1] if len(args) > 1 else 0) % len(parts[0])
        sizes = {s[d] for s in shapes}
        out = [[] for _ in parts[0]]
        for i in range(len(out)):
            if i == d:
                continue
            for p in parts:
                if p[i]:
                    if out[i]:
                        self.alg.unify(out[i], p[i])
                    else:
                        out[i] = p[i]
        where = f"cat at node {name}"
        if len(sizes) == 1 and sizes != {1}:
            base = parts[0][d]
            for p in parts[1:]:
                self.alg.unify(base, p[d])
            out[d] = [self.alg.new(len(parts), f"concatenation axis of {where}")] + list(base)
        else:
            for p in parts:
                self.alg.mark(p[d], f"concatenated with unequal sizes by {where}")
            out[d] = [self.alg.new(sum(s[d] for s in shapes), f"{where}")]
        return out

    def split(self, name, a, args):
        x = list(self.val(args[0]))
        d = (args[2] if len(args) > 2 else 0) % len(x) if a["op"] != "unbind" else (args[1] if len(args) > 1 else 0) % len(x)
        sizes = [s[d] if a["op"] != "unbind" else 1 for s in a["shapes"]]
        n = sum(sizes) if a["op"] != "unbind" else len(sizes)
        where = f"{a['op']} at node {name}"
        pieces = []
        if len(set(sizes)) == 1:
            m = sizes[0]
            outer, inner = self.alg.factor(x[d], [n // m, m]) if n != m else ([], x[d])
            self.alg.mark(outer, f"indices selected by {where}")
            for _ in sizes:
                y = list(x)
                if a["op"] == "unbind":
                    y.pop(d)
                else:
                    y[d] = inner
                pieces.append(y)
        else:
            self.alg.mark(x[d], f"split into unequal parts by {where}")
            for m in sizes:
                y = list(x)
                y[d] = [self.alg.new(m, f"part of {where}")]
                pieces.append(y)
        return ("tuple", pieces)

    def reduce(self, name, a, args, kw):
        op = a["op"]
        x = self.val(args[0])
        nd = len(x)
        dims = args[1] if len(args) > 1 and args[1] is not None and not isinstance(args[1], bool) else kw.get("dim")
        if dims is None or dims == []:
            dims = list(range(nd))
        dims = [d % nd for d in (dims if isinstance(dims, list) else [dims])]
        keep = (args[2] if len(args) > 2 and isinstance(args[2], bool) else kw.get("keepdim", False))
        if op not in ("mean", "sum"):
            self.alg.mark([t for d in dims for t in x[d]], f"reduced by {op} at node {name}")
        out = [([] if i in dims else e) for i, e in enumerate(x)] if keep else [e for i, e in enumerate(x) if i not in dims]
        if a.get("shapes"):
            return ("tuple", [out for _ in a["shapes"]])
        return out


def _rule_failure(name: str, a: dict, exc: Exception) -> str:
    msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return f"rule for {a.get('target', a.get('op'))} failed at node {name} ({a.get('module') or 'top'}): {type(exc).__name__}: {msg}"


def _flatten(obj):
    if isinstance(obj, list):
        for v in obj:
            yield from _flatten(v)
    elif isinstance(obj, dict) and ("node" in obj or "param" in obj or "buffer" in obj):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _flatten(v)


# ------------------------------------------------------------------------------------------ pass 2
class _ZeroFlow:
    """Which classes each value is zero on, when each class's producer slices are zeroed (all at once —
    the rules are per class, so sets evaluate every class independently in one walk)."""

    def __init__(self, prop: _Propagator):
        self.p = prop
        self.alg = prop.alg
        self.carried: dict[str, Any] = {}
        self.zero: dict[str, Any] = {}
        self.violations: dict[int, list[str]] = {}
        self.compensation: dict[int, list[dict]] = {}
        # class -> (reason, weight param) where the class is contracted by a linear without being zero but the
        # weight's input columns carry it: zeroing those columns (the consumer side) kills the unit there
        self.consumer_reach: dict[int, list[tuple[str, str]]] = {}

    def classes(self, v) -> set[int]:
        if v is None:
            return set()
        if isinstance(v, tuple):
            return set().union(*(self.classes(x) for x in v[1])) if v[1] else set()
        return {self.alg.find(a) for e in v for a in self.alg.expand(e)}

    def axis_classes(self, e: Expr) -> set[int]:
        return {self.alg.find(a) for a in self.alg.expand(e)}

    def z(self, ref) -> set[int]:
        if isinstance(ref, dict) and "node" in ref:
            z = self.zero.get(ref["node"], set())
            return z if isinstance(z, set) else set()
        if isinstance(ref, dict) and "param" in ref:
            p = ref["param"]
            out = set()
            for ax, e in enumerate(self.p.pexpr.get(p, [])):
                if "producer" in self.p.roles.get((p, ax), ()):
                    out |= self.axis_classes(e)
            return out
        return set()

    def c(self, ref) -> set[int]:
        return self.classes(self.p.val(ref)) if isinstance(ref, dict) else set()

    def violate(self, classes, reason: str) -> None:
        for k in classes:
            lst = self.violations.setdefault(k, [])
            if reason not in lst and len(lst) < 6:
                lst.append(reason)

    def run(self) -> None:
        g = self.p.g
        for name, a in g.nodes(data=True):
            if a.get("kind") != "op":
                continue
            v = self.p.vals.get(name)
            carried = self.classes(v)
            try:
                z = self.rule(name, a, carried)
            except Exception as exc:  # a bug in one rule refuses the classes that op touches, never the model
                z = set()
                touched = carried.union(*(self.c(r) for r in _flatten([a.get("args"), a.get("kwargs")])))
                self.violate(touched, _rule_failure(name, a, exc))
            self.zero[name] = z & carried

    def rule(self, name, a, carried) -> set[int]:
        op, args = self.p.op_of(a), a["args"]
        tensors = [r for r in _flatten(args) if self.p.is_tensor(r)]
        where = f"{op} at node {name} ({a.get('module') or 'top'})"
        if op == "getitem":
            return self.z(args[0])
        if op in _IDENTITY or op in _ZERO_UNARY or op in _VIEW or op in ("transpose", "swapaxes", "t", "permute", "unsqueeze", "squeeze", "expand", "expand_copy", "broadcast_to", "slice", "select", "split", "split_with_sizes", "chunk", "unbind", "tensor_split", "zeros_like", "stack") or (op == "pow" and isinstance(args[1], (int, float)) and args[1] > 0):
            if op == "stack":
                return {k for k in carried if all(k in self.z(r) for r in args[0] if k in self.c(r))}
            return self.z(args[0])
        if op in ("clamp", "clamp_min", "clamp_max"):
            lo = args[1] if op in ("clamp", "clamp_min") and len(args) > 1 else None
            hi = args[2] if op == "clamp" and len(args) > 2 else (args[1] if op == "clamp_max" else None)
            keeps_zero = (lo is None or (isinstance(lo, (int, float)) and lo <= 0)) and (hi is None or (isinstance(hi, (int, float)) and hi >= 0))
            return self.z(args[0]) if keeps_zero else set()
        if op == "cat":
            parts = args[0]
            return {k for k in carried if all(k in self.z(r) for r in parts if k in self.c(r))}
        if op in ("mul",):
            return set().union(*(self.z(r) for r in tensors)) if tensors else set()
        if op in ("div", "true_divide", "floor_divide"):
            return self.z(args[0])
        if op == "masked_fill":
            return self.z(args[0]) if args[2] == 0 else set()
        if op in _ADDITIVE:
            scalars_zero = all(s == 0 for s in args if isinstance(s, (int, float)) and not isinstance(s, bool)) if op in ("add", "sub", "rsub") else True
            ops = tensors if op != "where" else [r for r in args[1:] if self.p.is_tensor(r)]
            if not scalars_zero or (op == "where" and len(ops) < 2):
                return set()
            return {k for k in carried if all(k in self.c(r) and k in self.z(r) for r in ops)}
        if op == "linear":
            x = self.p.val(args[0])
            contracted = self.axis_classes(x[-1])
            reaching = contracted - self.z(args[0])
            self.violate(reaching, f"reaches {where} without being zero")
            if isinstance(args[1], dict) and "param" in args[1]:
                for k in reaching:
                    self.consumer_reach.setdefault(k, []).append((f"reaches {where} without being zero", args[1]["param"]))
            out = self.z(args[0]) - contracted
            wz = self.z(args[1])
            bz = self.z(args[2]) if len(args) > 2 and args[2] is not None else None
            w = self.p.val(args[1])
            for k in self.axis_classes(w[0]):
                if k in wz and (bz is None or k in bz):
                    out.add(k)
            return out
        if op in ("addmm", "mm", "bmm", "matmul"):
            i0 = 1 if op == "addmm" else 0
            ra, rb = args[i0], args[i0 + 1]
            a_, b_ = self.p.val(ra), self.p.val(rb)
            contracted = self.axis_classes(a_[-1])
            self.violate({k for k in contracted if k not in self.z(ra) and k not in self.z(rb)}, f"reaches {where} without being zero")
            out = {k for k in self.axis_classes(a_[-2]) if k in self.z(ra)} | {k for k in self.axis_classes(b_[-1]) if k in self.z(rb)}
            out |= {k for e in a_[:-2] for k in self.axis_classes(e) if k in self.z(ra)}
            out |= {k for e in b_[:-2] for k in self.axis_classes(e) if k in self.z(rb)}
            if op == "addmm" and self.p.is_tensor(args[0]):
                out &= self.z(args[0]) | (out - self.c(args[0]))
            return out
        if op == "embedding":
            return self.z(args[0])
        if op == "scaled_dot_product_attention":
            q, k, v = args[:3]
            qd = self.axis_classes(self.p.val(q)[-1])
            self.violate({c for c in qd if c not in self.z(q) and c not in self.z(k)}, f"reaches the attention scores of {where} without being zero")
            return self.z(v)
        if op in ("mean", "sum"):
            x = self.p.val(args[0])
            out_classes = carried
            reduced = self.c(args[0]) - out_classes
            notzero = reduced - self.z(args[0])
            self.violate(notzero, f"reduced by {where} without being zero")
            if op == "mean":
                for k in reduced & self.z(args[0]):
                    self.rms_compensation(k, name, a)
            return self.z(args[0])
        if op == "rms_norm":
            k_norm = self.axis_classes(self.p.val(args[0])[-1])
            for k in k_norm & self.z(args[0]):
                self.compensation.setdefault(k, []).append(
                    {"node": name, "module": a.get("module", ""), "weight": args[2].get("param") if self.p.is_tensor(args[2]) else None,
                     "eps": args[3] if len(args) > 3 else None})
            return self.z(args[0])
        return set()

    def rms_compensation(self, k: int, name: str, a: dict) -> None:
        """Accept ``mean(x**2)`` → ``+eps`` → ``rsqrt`` → ``x * ·`` → ``weight * ·``; record weight and eps."""
        g = self.p.g
        src = a["args"][0].get("node") if isinstance(a["args"][0], dict) else None
        sa = g.nodes[src] if src in g else {}
        squared = (sa.get("op") == "pow" and sa["args"][1] == 2) or (sa.get("op") == "mul" and sa["args"][0] == sa["args"][1])
        if not squared:
            return self.violate({k}, f"averaged by mean at node {name} (not an RMS norm)")
        chain = [name]
        eps = 0.0
        cur = name
        for expect in ("add", "rsqrt"):
            users = list(g.successors(cur))
            if len(users) != 1 or g.nodes[users[0]]["op"] != expect:
                if expect == "add":
                    continue
                return self.violate({k}, f"RMS statistic at node {name} is not used as x * rsqrt(mean + eps)")
            cur = users[0]
            if expect == "add":
                scalars = [x for x in g.nodes[cur]["args"] if isinstance(x, (int, float)) and not isinstance(x, bool)]
                if len(scalars) != 1 or any(self.p.is_tensor(x) for x in g.nodes[cur]["args"] if not (isinstance(x, dict) and x.get("node") == name)):
                    return self.violate({k}, f"RMS norm eps at node {cur} is not a plain number; no exact compensation")
                eps = float(scalars[0])
            chain.append(cur)
        module = a.get("module", "")
        weight = None
        for n2, b in g.nodes(data=True):
            if b.get("kind") != "op" or b.get("module") != module:
                continue
            for r in b["params"]:
                shape = self.p.og.params[r]["shape"]
                if len(shape) == 1 and k in self.axis_classes(self.p.pexpr[r][0]):
                    if b["op"] != "mul":
                        return self.violate({k}, f"norm weight '{r}' enters {b['op']} at node {n2}, not a plain scale; no exact compensation")
                    weight = r
        if weight is None:
            return self.violate({k}, f"RMS norm at node {name} ({module}) has no weight to carry the compensation")
        self.compensation.setdefault(k, []).append({"node": name, "module": module, "weight": weight, "eps": eps})


# ------------------------------------------------------------------------------------------ assembly
def _logical_module(param: str) -> str:
    path = param.rsplit(".", 1)[0] if "." in param else ""
    path = path.replace(".base_layer", "")
    path = _LORA_RE.sub("", path + ".").rstrip(".")
    path = re.sub(r"\.lora_(A|B|embedding_A|embedding_B)(\.[^.]+)?$", "", path)
    if path.startswith("base_model.model."):
        path = path[len("base_model.model.") :]
    return path


def _is_lora(param: str) -> bool:
    return bool(re.search(r"\.lora_(A|B|embedding_A|embedding_B|magnitude_vector)\b", param))


def _common_prefix(paths: list[str]) -> str:
    if not paths:
        return ""
    split = [p.split(".") for p in paths]
    out = []
    for parts in zip(*split):
        if len(set(parts)) != 1:
            break
        out.append(parts[0])
    return ".".join(out)


def _layer_of(path: str) -> int | None:
    for part in path.split("."):
        if part.isdigit():
            return int(part)
    return None


def find_groups(og: OpGraph) -> list[Group]:
    """Discover every parameter-carrying axis class of the graph, as a ``Group`` with members and a verdict."""
    prop = _Propagator(og)
    prop.run()
    flow = _ZeroFlow(prop)
    flow.run()
    alg = prop.alg

    members: dict[int, list[tuple[str, int]]] = {}
    for p, exprs in prop.pexpr.items():
        for ax, e in enumerate(exprs):
            for leaf in alg.expand(e):
                k = alg.find(leaf)
                if (p, ax) not in members.setdefault(k, []):
                    members[k].append((p, ax))
    kinds_seen: dict[int, set[str]] = {}
    for kind, e in prop.attention_axes:
        for k in flow.axis_classes(e):
            kinds_seen.setdefault(k, set()).add(kind)
    split_reasons: dict[int, list[str]] = {}
    for inferred, fixed, why in prop.inferred_splits:
        if any("attention" in kinds_seen.get(k, ()) for k in flow.axis_classes(fixed)):
            for k in flow.axis_classes(inferred):
                split_reasons.setdefault(k, []).append(f"{why} (the attention heads axis straddles the split)")
    hidden = set().union(*(flow.axis_classes(e) for e in prop.embed_out)) if prop.embed_out else set()
    output = set().union(*(flow.axis_classes(e) for e in prop.output_axes)) if prop.output_axes else set()
    broadcast = {alg.find(leaf) for a in prop.broadcast_atoms for leaf in alg.leaves(a)}

    node_index: dict[int, list[str]] = {}
    for name, v in prop.vals.items():
        if prop.g.nodes[name].get("kind") != "op":
            continue
        for k in flow.classes(v):
            node_index.setdefault(k, []).append(name)

    groups: list[Group] = []
    for k, mems in members.items():
        n_units = alg.size[k]
        if n_units <= 1:
            continue
        mlist: list[Member] = []
        for p, ax in sorted(mems):
            lay = unit_layout(alg, prop.pexpr[p][ax], k)
            roles = prop.roles.get((p, ax), set())
            role = next((r for r in ("index", "producer", "consumer", "passthrough") if r in roles), "passthrough")
            mlist.append(Member(p, ax, role, lay[0], lay[1]))
        params = [m.param for m in mlist]
        producers = [m for m in mlist if m.role == "producer"]
        seen = kinds_seen.get(k, set())
        reasons = list(alg.class_reasons(k)) + flow.violations.get(k, []) + split_reasons.get(k, [])
        if "attention" in seen and k in broadcast and not all(_is_lora(p) for p in params):
            reasons = _query_head_proof(k, mlist, reasons, flow)
        if all(_is_lora(p) for p in params):
            kind = "lora_rank"
            reasons.insert(0, "LoRA rank axis: adapter-internal, never pruned")
        elif (any(m.role == "index" for m in mlist) or k in output) and k not in hidden:
            kind = "vocab"
        elif "attention" in seen:
            kind = "query_heads" if k in broadcast else "attention"  # GQA: the i-th query head of every kv group
        elif "head_dim" in seen:
            kind = "head_dim"
            reasons.append("per-head dimension: the attention module reshapes q/k/v with one fixed head_dim")
        elif k in hidden:
            kind = "hidden"
        else:
            mods = {_layer_of(_logical_module(p)) for p in params}
            consumers = [m for m in mlist if m.role == "consumer"]
            whole_axis = all(len(m.layout) == 1 for m in mlist)  # a factor of a reshaped axis is no channel
            kind = "mlp" if len(mods) == 1 and None not in mods and producers and consumers and whole_axis else "other"
        if kind == "other":
            reasons.append("not a structure compress can rebuild (attention heads, MLP channels, hidden dimension)")
        if not producers:
            reasons.append("no parameter produces it: nothing to zero")
        module = _common_prefix([_logical_module(m.param) for m in mlist])
        per_unit = 0
        by_param: dict[str, list[Member]] = {}
        for m in mlist:
            by_param.setdefault(m.param, []).append(m)
        for p, ms in by_param.items():
            if "tied_to" in og.params[p]:
                continue  # the same tensor is counted under its first name
            shape = og.params[p]["shape"]
            keep = 1
            for ax, s in enumerate(shape):
                cut = sum(s // n_units for m in ms if m.axis == ax)
                keep *= s - cut
            per_unit += og.params[p]["numel"] - keep
        groups.append(Group(
            id="", kind=kind, module=module, layer=_layer_of(module), n_units=n_units, params_per_unit=per_unit,
            members=mlist, nodes=node_index.get(k, []), prunable=not reasons,
            reason="; ".join(dict.fromkeys(reasons)) or None, compensation=flow.compensation.get(k, []) if not reasons else []))
    _assign_ids(groups)
    order = {"hidden": 0, "attention": 1, "mlp": 2}
    groups.sort(key=lambda g: (g.layer if g.layer is not None else -1, order.get(g.kind, 3), g.id))
    return groups


_BROADCAST_REASONS = ("broadcast copies by ", "query heads share a kv head inside sdpa")


def _query_head_proof(k: int, mlist: list[Member], reasons: list[str], flow: _ZeroFlow) -> list[str]:
    """The i-th query head of every kv group (GQA): a valid structure (``repeat_kv`` only needs the same number
    of query heads per kv group), but zeroing its q rows does not zero its output (uniform attention over the
    shared values). Its zero set is on the consumer side: the columns of every linear that contracts it
    (``o_proj`` and its LoRA A). With those columns zero, the unit contributes nothing wherever it is
    contracted; attention is per head, so removing its q rows too changes nothing else. Proven here when the
    only objections are the kv broadcast itself and those contractions; ``mlist`` roles are rewritten in place
    (contracting columns → producer, q rows/bias/LoRA-B → consumer). Returns the remaining reasons."""
    reach = flow.consumer_reach.get(k, [])
    reach_reasons = {r for r, _ in reach}
    capped = len(flow.violations.get(k, [])) >= 6  # more violations may have been dropped: no proof
    rest = [r for r in reasons if not r.startswith(_BROADCAST_REASONS) and r not in reach_reasons]
    if rest or not reach or capped:
        return reasons
    zero_params = {p for _, p in reach}
    for m in mlist:
        if m.param in zero_params and m.axis == 1:
            m.role = "producer"
        elif m.role == "producer":
            m.role = "consumer"
    if not any(m.role == "producer" for m in mlist):
        return reasons
    return []


def _assign_ids(groups: list[Group]) -> None:
    seen: dict[str, int] = {}
    for g in sorted(groups, key=lambda g: (g.module, g.kind, not g.prunable, g.members[0].param, g.members[0].axis)):
        base = f"{g.module or 'model'}:{KIND_SUFFIX[g.kind]}"
        seen[base] = seen.get(base, 0) + 1
        g.id = base if seen[base] == 1 else f"{base}.{seen[base]}"


# ------------------------------------------------------------------------------------------ files
def groups_to_json(groups: list[Group]) -> dict:
    return {"format": "lorashear.groups/1", "groups": [asdict(g) for g in groups]}


def save_groups(groups: list[Group], path: str | Path) -> Path:
    return write_json_atomic(path, groups_to_json(groups))


def load_groups(path: str | Path) -> list[Group]:
    data = read_json(path, "lorashear.groups/1", "groups")
    out = []
    for d in data["groups"]:
        d = dict(d)
        d["members"] = [Member(**m) for m in d["members"]]
        out.append(Group(**d))
    return out
