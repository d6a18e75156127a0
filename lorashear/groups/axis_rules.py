"""Pass 1's op → rule table: how each aten op relates its output axes to its inputs' axes.

A rule is ``rule(p, name, a, op, args, kw)`` with ``p`` the ``AxisPropagation`` whose state it updates,
``name``/``a`` the node and its attributes, ``op`` the dispatch name (``ops.op_name``) and the node's
arguments; it returns the output's axes (a list of ``Expr``, or ``("tuple", [...])`` for multi-output ops),
or ``None`` when it cannot say — the walk then makes the op opaque. Adding support for an op is one entry
in ``AXIS_RULES`` (and, for pass 2, one in ``zero_rules.ZERO_RULES``).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..axes import AxisConflict, Expr
from .ops import (rule_table, ADDITIVE, ALONG, BINARY, COMPARE, CREATE, EXPAND, IDENTITY, LAYER_NORM, LIKE, MATMUL, OTHER_UNARY, REDUCE,
                  REDUCE_TUPLE, SPLIT, VIEW, ZERO_UNARY, is_tensor, tensor_refs)

# A rule receives the walk (propagate.AxisPropagation) as its first argument; the table does not import the walk that imports
# it, so the annotations name it through this alias.
AxisPropagation = Any

AxisRule = Callable[["AxisPropagation", str, dict, str, Any, dict], Any]


def identity(p, name, a, op, args, kw):
    return list(p.val(args[0]))


def getitem(p, name, a, op, args, kw):
    tup = p.vals.get(args[0]["node"])
    return tup[1][args[1]] if isinstance(tup, tuple) else None


def elementwise(p, name, a, op, args, kw):
    out_shape = a.get("shape")
    if out_shape is None:
        return None
    out: list[Expr] = [[] for _ in out_shape]
    ops = [(r, p.val(r)) for r in tensor_refs(args)]
    p.broadcast_into(out, ops)
    for r, _ in ops:
        if isinstance(r, dict) and "param" in r:
            for ax in range(len(p.og.params[r["param"]]["shape"])):
                p.role(r, ax, "passthrough")
    for i, s in enumerate(out_shape):
        if s != 1 and not out[i]:
            out[i] = [p.alg.new(s)]
    return out


def create(p, name, a, op, args, kw):
    return p.fresh(a.get("shape"), f"size fixed by {op} at node {name}")


def linear(p, name, a, op, args, kw):
    x, w = p.val(args[0]), p.val(args[1])
    p.alg.unify(x[-1], w[1])
    p.role(args[1], 0, "producer")
    p.role(args[1], 1, "consumer")
    if len(args) > 2 and args[2] is not None:
        p.alg.unify(p.val(args[2])[0], w[0])
        p.role(args[2], 0, "producer")
    return x[:-1] + [w[0]]


def addmm(p, name, a, op, args, kw):
    b, x, w = p.val(args[0]), p.val(args[1]), p.val(args[2])
    p.alg.unify(x[1], w[0])
    p.role(args[2], 1, "producer")
    p.role(args[2], 0, "consumer")
    out = [x[0], w[1]]
    p.broadcast_into(out, [(args[0], b)])
    p.role(args[0], -1, "producer")
    return out


def matmul(p, name, a, op, args, kw):
    x, y = p.val(args[0]), p.val(args[1])
    if len(x) < 2 or len(y) < 2:
        return None
    p.alg.unify(x[-1], y[-2])
    for ref, prod_ax, cons_ax in ((args[1], -1, -2), (args[0], -2, -1)):
        if isinstance(ref, dict) and "param" in ref:
            p.role(ref, prod_ax, "producer")
            p.role(ref, cons_ax, "consumer")
    batch: list[Expr] = [[] for _ in a.get("shape")[:-2]]
    p.broadcast_into(batch, [(None, x[:-2]), (None, y[:-2])])
    if not any(isinstance(r, dict) and "param" in r for r in args[:2]):
        # activation × activation (eager attention): scores contract the head dim, attn @ v keeps v's
        p.attention_axes += [("head_dim", x[-1]), ("head_dim", y[-1])]
        for e in batch:
            p.attention_axes.append(("attention", e))
    return batch + [x[-2], y[-1]]


def embedding(p, name, a, op, args, kw):
    w, idx = p.val(args[0]), p.val(args[1])
    p.role(args[0], 1, "producer")
    p.role(args[0], 0, "index")
    p.alg.mark(w[0], f"rows are looked up by id (embedding at node {name}): a vocabulary/position axis")
    p.embed_out.append(w[1])
    return list(idx) + [w[1]]


def sdpa(p, name, a, op, args, kw):
    q, k, v = (p.val(r) for r in args[:3])
    alg = p.alg
    for e in (k[0], v[0]):
        if q[0] and e:
            alg.unify(q[0], e)
    nq, nk = alg.numel(q[1]), alg.numel(k[1])
    if nq == nk:
        alg.unify(q[1], k[1])
    elif nk and nq % nk == 0:
        rep = alg.new(nq // nk, f"query heads share a kv head inside sdpa (enable_gqa) at node {name}")
        p.broadcast_atoms.append(rep)
        alg.unify(q[1], list(k[1]) + [rep])
    else:
        raise AxisConflict(f"{nq} query heads vs {nk} kv heads")
    alg.unify(k[1], v[1])
    alg.unify(q[-1], k[-1])
    alg.unify(k[-2], v[-2])
    mask_ref = args[3] if len(args) > 3 else kw.get("attn_mask")
    if is_tensor(mask_ref):
        # a per-head bias (ALiBi) ties the head axis to whatever built it (sizes fixed by the config)
        p.broadcast_into([q[0], q[1], q[2], k[2]], [(mask_ref, p.val(mask_ref))])
    p.attention_axes += [("attention", q[1]), ("head_dim", q[-1]), ("head_dim", v[-1])]
    return [q[0], q[1], q[2], v[-1]]


def view(p, name, a, op, args, kw):
    x = p.val(args[0])
    out = p.alg.factor([atom for e in x for atom in e], a.get("shape"))
    sizes = args[1] if len(args) > 1 else None
    if op in ("view", "reshape", "_unsafe_view") and isinstance(sizes, list) and -1 in sizes:
        inferred_split(p, name, a, x, out, sizes)
    return out


# Modules whose code fixes the *outer* factor of a split that torch.export records with the outer factor as -1:
# the graph is then identical to the common ``reshape(..., -1, head_dim)`` (CodeGen with n_head == mp_num looks
# exactly like GPT-NeoX), so only the module can tell. The inferred side is refused there, naming the node.
FIXED_OUTER_SPLITS = {"CodeGenAttention": "mp_num = 4 in reshape(qkv, (..., mp_num, -1))"}


def inferred_split(p: AxisPropagation, name: str, a: dict, x: list[Expr], out: list[Expr], sizes: list) -> None:
    """A view that splits one axis into an inferred (``-1``) size and a fixed one.

    The graph records one of the two factors as a constant, but not which one the module's code holds
    fixed: ``reshape(..., -1, head_dim)`` keeps the inner factor (heads shrink with pruning, exact),
    CodeGen's ``reshape(..., mp_num, -1)`` keeps the outer one (export shows it the other way round).
    So the classes inside the fixed factor are only safe when nothing removes their units: they are
    refused with the reason. A fixed dimension that is a whole input axis (``view(-1, hidden)``) is not
    a split and stays free. When the fixed factor holds part of an attention heads axis (CodeGen with
    more heads than ``mp_num``), the heads on the inferred side are refused too (``build.find_groups``); in a
    module listed in ``FIXED_OUTER_SPLITS`` the inferred side is refused outright."""
    alg = p.alg
    neg = sizes.index(-1)
    neg_leaves = {alg.find(t) for t in alg.expand(out[neg])}
    for e in x:
        axis = {alg.find(t) for t in alg.expand(e)}
        if not axis & neg_leaves:
            continue
        for j, oe in enumerate(out):
            fixed = [t for t in alg.expand(oe) if alg.find(t) in axis]
            if j == neg or not fixed or {alg.find(t) for t in alg.expand(oe)} == axis:
                continue
            reason = (f"split by {a['op']} at node {name} ({a.get('module') or 'top'}) into an inferred (-1) "
                      f"size and a fixed size {sizes[j]}: the module may hold either factor constant, which compress "
                      "cannot rewrite")
            alg.mark(fixed, reason)
            p.inferred_splits.append((list(out[neg]), fixed, reason))
            held = FIXED_OUTER_SPLITS.get(a.get("module_class", ""))
            if held:
                alg.mark(out[neg], f"split by {a['op']} at node {name} ({a.get('module') or 'top'}): {a['module_class']} "
                                   f"holds the outer factor constant ({held}) where the graph shows -1, so removing its "
                                   "units would shift the blocks the module cuts")


def transpose(p, name, a, op, args, kw):
    x = list(p.val(args[0]))
    d0, d1 = args[1] % len(x), args[2] % len(x)
    x[d0], x[d1] = x[d1], x[d0]
    return x


def t(p, name, a, op, args, kw):
    return list(reversed(p.val(args[0])))


def permute(p, name, a, op, args, kw):
    x = p.val(args[0])
    return [x[d % len(x)] for d in args[1]]


def unsqueeze(p, name, a, op, args, kw):
    x = list(p.val(args[0]))
    d = args[1] % (len(x) + 1)
    return x[:d] + [[]] + x[d:]


def squeeze(p, name, a, op, args, kw):
    x, shape = p.val(args[0]), p.shape_of(args[0])
    dims = args[1] if len(args) > 1 else list(range(len(x)))
    dims = {d % len(x) for d in (dims if isinstance(dims, list) else [dims])}
    return [e for i, (e, s) in enumerate(zip(x, shape)) if not (s == 1 and i in dims)]


def expand(p, name, a, op, args, kw):
    x = p.val(args[0])
    out_shape = a.get("shape")
    pad = len(out_shape) - len(x)
    out = []
    for i, s in enumerate(out_shape):
        src = x[i - pad] if i >= pad else []
        if src or s == 1:
            out.append(src)
        else:
            out.append([p.alg.new(s, f"broadcast copies by {op} at node {name}")])
            p.broadcast_atoms.append(out[-1][0])
    return out


def slice_(p, name, a, op, args, kw):
    x = list(p.val(args[0]))
    shape = p.shape_of(args[0])
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
        outer, inner = p.alg.factor(x[d], [n // m, m])
        p.alg.mark(outer, f"indices selected by {where}")
        x[d] = inner
        return x
    p.alg.mark(x[d], f"irregular {where}")
    x[d] = [p.alg.new(m, f"irregular {where}")] if m != 1 else []
    return x


def select(p, name, a, op, args, kw):
    x = list(p.val(args[0]))
    d = args[1] % len(x)
    p.alg.mark(x[d], f"one index picked by {op} at node {name}")
    return x[:d] + x[d + 1 :]


def cat(p, name, a, op, args, kw):
    parts = [p.val(r) for r in args[0]]
    shapes = [p.shape_of(r) for r in args[0]]
    d = (args[1] if len(args) > 1 else 0) % len(parts[0])
    sizes = {s[d] for s in shapes}
    out = [[] for _ in parts[0]]
    for i in range(len(out)):
        if i == d:
            continue
        for part in parts:
            if part[i]:
                if out[i]:
                    p.alg.unify(out[i], part[i])
                else:
                    out[i] = part[i]
    where = f"cat at node {name}"
    if len(sizes) == 1 and sizes != {1}:
        base = parts[0][d]
        for part in parts[1:]:
            p.alg.unify(base, part[d])
        out[d] = [p.alg.new(len(parts), f"concatenation axis of {where}")] + list(base)
    else:
        for part in parts:
            p.alg.mark(part[d], f"concatenated with unequal sizes by {where}")
        out[d] = [p.alg.new(sum(s[d] for s in shapes), f"{where}")]
    return out


def stack(p, name, a, op, args, kw):
    parts = [p.val(r) for r in args[0]]
    d = (args[1] if len(args) > 1 else 0) % (len(parts[0]) + 1)
    out = [list(e) for e in parts[0]]
    for part in parts[1:]:
        for i, e in enumerate(part):
            if e and out[i]:
                p.alg.unify(out[i], e)
    return out[:d] + [[p.alg.new(len(parts), f"stacking axis of {op} at node {name}")]] + out[d:]


def split(p, name, a, op, args, kw):
    x = list(p.val(args[0]))
    d = (args[2] if len(args) > 2 else 0) % len(x) if a["op"] != "unbind" else (args[1] if len(args) > 1 else 0) % len(x)
    sizes = [s[d] if a["op"] != "unbind" else 1 for s in a["shapes"]]
    n = sum(sizes) if a["op"] != "unbind" else len(sizes)
    where = f"{a['op']} at node {name}"
    pieces = []
    if len(set(sizes)) == 1:
        m = sizes[0]
        outer, inner = p.alg.factor(x[d], [n // m, m]) if n != m else ([], x[d])
        p.alg.mark(outer, f"indices selected by {where}")
        for _ in sizes:
            y = list(x)
            if a["op"] == "unbind":
                y.pop(d)
            else:
                y[d] = inner
            pieces.append(y)
    else:
        p.alg.mark(x[d], f"split into unequal parts by {where}")
        for m in sizes:
            y = list(x)
            y[d] = [p.alg.new(m, f"part of {where}")]
            pieces.append(y)
    return ("tuple", pieces)


def reduce(p, name, a, op, args, kw):
    op = a["op"]
    x = p.val(args[0])
    nd = len(x)
    dims = args[1] if len(args) > 1 and args[1] is not None and not isinstance(args[1], bool) else kw.get("dim")
    if dims is None or dims == []:
        dims = list(range(nd))
    dims = [d % nd for d in (dims if isinstance(dims, list) else [dims])]
    keep = (args[2] if len(args) > 2 and isinstance(args[2], bool) else kw.get("keepdim", False))
    if op not in ("mean", "sum"):
        p.alg.mark([t for d in dims for t in x[d]], f"reduced by {op} at node {name}")
    out = [([] if i in dims else e) for i, e in enumerate(x)] if keep else [e for i, e in enumerate(x) if i not in dims]
    if a.get("shapes"):
        return ("tuple", [out for _ in a["shapes"]])
    return out


def along(p, name, a, op, args, kw):
    x = p.val(args[0])
    d = (args[1] if len(args) > 1 else kw.get("dim", -1)) % len(x)
    p.alg.mark(x[d], f"mixed along the axis by {op} at node {name}")
    out = list(x)
    return ("tuple", [out, out]) if a.get("shapes") else out


def layer_norm(p, name, a, op, args, kw):
    x = p.val(args[0])
    k = len(args[1])
    for j, ref in enumerate(args[2:4]):
        if is_tensor(ref):
            w = p.val(ref)
            for i in range(k):
                p.alg.unify(w[i], x[len(x) - k + i])
            p.role(ref, 0, "passthrough" if j == 0 else "producer")
    p.alg.mark([t for e in x[len(x) - k :] for t in e],
               f"centred and scaled by layer_norm at node {name} ({a.get('module')}): removing channels changes its mean and variance in a way no weight can compensate")
    if a.get("shapes"):
        stats = list(x[: len(x) - k]) + [[]] * k
        return ("tuple", [list(x), stats, stats])
    return list(x)


def rms_norm(p, name, a, op, args, kw):
    x = p.val(args[0])
    k = len(args[1])
    if len(args) > 2 and is_tensor(args[2]):
        w = p.val(args[2])
        for i in range(k):
            p.alg.unify(w[i], x[len(x) - k + i])
        p.role(args[2], 0, "passthrough")
    return list(x)


AXIS_RULES: dict[str, AxisRule] = rule_table("axis", 
    (IDENTITY, identity),
    ("getitem", getitem),
    (ZERO_UNARY | OTHER_UNARY | ADDITIVE | COMPARE | BINARY, elementwise),
    (LIKE, identity),
    (CREATE, create),
    ("linear", linear),
    ("addmm", addmm),
    (MATMUL, matmul),
    ("embedding", embedding),
    ("scaled_dot_product_attention", sdpa),
    (VIEW, view),
    ({"transpose", "swapaxes"}, transpose),
    ("t", t),
    ("permute", permute),
    ("unsqueeze", unsqueeze),
    ("squeeze", squeeze),
    (EXPAND, expand),
    ("slice", slice_),
    ("select", select),
    ("cat", cat),
    ("stack", stack),
    (SPLIT, split),
    (REDUCE | REDUCE_TUPLE, reduce),
    (ALONG, along),
    (LAYER_NORM, layer_norm),
    ("rms_norm", rms_norm),
)
