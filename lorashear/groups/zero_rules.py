"""Pass 2's op → rule table: on which classes an op's output is zero, given which classes its inputs are zero on.

A rule is ``rule(f, name, a, op, args, carried)`` with ``f`` the ``ZeroFlow`` (``f.z(ref)``: the classes an
input is zero on, ``f.c(ref)``: the classes it carries), ``carried`` the classes of the op's output; it
returns the output's zero set and records a violation wherever a class is contracted or reduced without
being zero. An op without an entry returns the empty set: it is never assumed to keep zeros.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .ops import rule_table, ADDITIVE, EXPAND, IDENTITY, MATMUL, SPLIT, VIEW, ZERO_UNARY, is_tensor, tensor_refs

# A rule receives the walk (zeroflow.ZeroFlow) as its first argument; the table does not import the walk that imports
# it, so the annotations name it through this alias.
ZeroFlow = Any

ZeroRule = Callable[["ZeroFlow", str, dict, str, Any, set], set]


def _where(name: str, a: dict, op: str) -> str:
    return f"{op} at node {name} ({a.get('module') or 'top'})"


def _tensors(args) -> list[dict]:
    return list(tensor_refs(args))


def first_input(f, name, a, op, args, carried):
    """Zero wherever the first input is: getitem, identities, zero-preserving unaries, views and index moves."""
    return f.z(args[0])


def pow_(f, name, a, op, args, carried):
    if isinstance(args[1], (int, float)) and args[1] > 0:
        return f.z(args[0])
    return set()


def joined(f, name, a, op, args, carried):
    """``stack``/``cat``: zero on a class where every part that carries it is zero."""
    return {k for k in carried if all(k in f.z(r) for r in args[0] if k in f.c(r))}


def clamp(f, name, a, op, args, carried):
    lo = args[1] if op in ("clamp", "clamp_min") and len(args) > 1 else None
    hi = args[2] if op == "clamp" and len(args) > 2 else (args[1] if op == "clamp_max" else None)
    keeps_zero = (lo is None or (isinstance(lo, (int, float)) and lo <= 0)) and (hi is None or (isinstance(hi, (int, float)) and hi >= 0))
    return f.z(args[0]) if keeps_zero else set()


def mul(f, name, a, op, args, carried):
    tensors = _tensors(args)
    return set().union(*(f.z(r) for r in tensors)) if tensors else set()


def div(f, name, a, op, args, carried):
    return f.z(args[0])


def masked_fill(f, name, a, op, args, carried):
    return f.z(args[0]) if args[2] == 0 else set()


def additive(f, name, a, op, args, carried):
    scalars_zero = all(s == 0 for s in args if isinstance(s, (int, float)) and not isinstance(s, bool)) if op in ("add", "sub", "rsub") else True
    ops = _tensors(args) if op != "where" else [r for r in args[1:] if is_tensor(r)]
    if not scalars_zero or (op == "where" and len(ops) < 2):
        return set()
    return {k for k in carried if all(k in f.c(r) and k in f.z(r) for r in ops)}


def linear(f, name, a, op, args, carried):
    where = _where(name, a, op)
    x = f.p.val(args[0])
    contracted = f.axis_classes(x[-1])
    reaching = contracted - f.z(args[0])
    f.violate(reaching, f"reaches {where} without being zero")
    f.read_zero(contracted & f.z(args[0]), f"contracted by {where}")
    if isinstance(args[1], dict) and "param" in args[1]:
        for k in reaching:
            f.consumer_reach.setdefault(k, []).append((f"reaches {where} without being zero", args[1]["param"]))
    out = f.z(args[0]) - contracted
    wz = f.z(args[1])
    bz = f.z(args[2]) if len(args) > 2 and args[2] is not None else None
    w = f.p.val(args[1])
    for k in f.axis_classes(w[0]):
        if k in wz and (bz is None or k in bz):
            out.add(k)
    return out


def matmul(f, name, a, op, args, carried):
    where = _where(name, a, op)
    i0 = 1 if op == "addmm" else 0
    ra, rb = args[i0], args[i0 + 1]
    a_, b_ = f.p.val(ra), f.p.val(rb)
    contracted = f.axis_classes(a_[-1])
    f.violate({k for k in contracted if k not in f.z(ra) and k not in f.z(rb)}, f"reaches {where} without being zero")
    f.read_zero({k for k in contracted if k in f.z(ra) or k in f.z(rb)}, f"contracted by {where}")
    out = {k for k in f.axis_classes(a_[-2]) if k in f.z(ra)} | {k for k in f.axis_classes(b_[-1]) if k in f.z(rb)}
    out |= {k for e in a_[:-2] for k in f.axis_classes(e) if k in f.z(ra)}
    out |= {k for e in b_[:-2] for k in f.axis_classes(e) if k in f.z(rb)}
    if op == "addmm" and is_tensor(args[0]):
        out &= f.z(args[0]) | (out - f.c(args[0]))
    return out


def embedding(f, name, a, op, args, carried):
    return f.z(args[0])


def sdpa(f, name, a, op, args, carried):
    q, k, v = args[:3]
    qd = f.axis_classes(f.p.val(q)[-1])
    f.violate({c for c in qd if c not in f.z(q) and c not in f.z(k)}, f"reaches the attention scores of {_where(name, a, op)} without being zero")
    f.read_zero({c for c in qd if c in f.z(q) or c in f.z(k)}, f"contracted by the attention scores of {_where(name, a, op)}")
    return f.z(v)


def mean_sum(f, name, a, op, args, carried):
    reduced = f.c(args[0]) - carried
    notzero = reduced - f.z(args[0])
    f.violate(notzero, f"reduced by {_where(name, a, op)} without being zero")
    f.read_zero(reduced & f.z(args[0]), f"reduced by {_where(name, a, op)}")
    if op == "mean":
        for k in reduced & f.z(args[0]):
            rms_compensation(f, k, name, a)
    return f.z(args[0])


def rms_norm(f, name, a, op, args, carried):
    k_norm = f.axis_classes(f.p.val(args[0])[-1])
    f.read_zero(k_norm & f.z(args[0]), f"normalised over by {_where(name, a, op)}")
    for k in k_norm & f.z(args[0]):
        f.compensation.setdefault(k, []).append(
            {"node": name, "module": a.get("module", ""), "weight": args[2].get("param") if is_tensor(args[2]) else None,
             "eps": args[3] if len(args) > 3 else None})
    return f.z(args[0])


def rms_compensation(f: ZeroFlow, k: int, name: str, a: dict) -> None:
    """Accept ``mean(x**2)`` → ``+eps`` → ``rsqrt`` → ``x * ·`` → ``weight * ·``; record weight and eps."""
    g = f.p.g
    src = a["args"][0].get("node") if isinstance(a["args"][0], dict) else None
    sa = g.nodes[src] if src in g else {}
    squared = (sa.get("op") == "pow" and sa["args"][1] == 2) or (sa.get("op") == "mul" and sa["args"][0] == sa["args"][1])
    if not squared:
        return f.violate({k}, f"averaged by mean at node {name} (not an RMS norm)")
    chain = [name]
    eps = 0.0
    cur = name
    for expect in ("add", "rsqrt"):
        users = list(g.successors(cur))
        if len(users) != 1 or g.nodes[users[0]]["op"] != expect:
            if expect == "add":
                continue
            return f.violate({k}, f"RMS statistic at node {name} is not used as x * rsqrt(mean + eps)")
        cur = users[0]
        if expect == "add":
            scalars = [x for x in g.nodes[cur]["args"] if isinstance(x, (int, float)) and not isinstance(x, bool)]
            if len(scalars) != 1 or any(is_tensor(x) for x in g.nodes[cur]["args"] if not (isinstance(x, dict) and x.get("node") == name)):
                return f.violate({k}, f"RMS norm eps at node {cur} is not a plain number; no exact compensation")
            eps = float(scalars[0])
        chain.append(cur)
    module = a.get("module", "")
    weight = None
    for n2, b in g.nodes(data=True):
        if b.get("kind") != "op" or b.get("module") != module:
            continue
        for r in b["params"]:
            shape = f.p.og.params[r]["shape"]
            if len(shape) == 1 and k in f.axis_classes(f.p.pexpr[r][0]):
                if b["op"] != "mul":
                    return f.violate({k}, f"norm weight '{r}' enters {b['op']} at node {n2}, not a plain scale; no exact compensation")
                weight = r
    if weight is None:
        return f.violate({k}, f"RMS norm at node {name} ({module}) has no weight to carry the compensation")
    f.compensation.setdefault(k, []).append({"node": name, "module": module, "weight": weight, "eps": eps})


ZERO_RULES: dict[str, ZeroRule] = rule_table("zero", 
    ("getitem", first_input),
    (IDENTITY | ZERO_UNARY | VIEW | EXPAND | SPLIT | {"transpose", "swapaxes", "t", "permute", "unsqueeze", "squeeze",
                                                     "slice", "select", "zeros_like"}, first_input),
    ("pow", pow_),
    ({"stack", "cat"}, joined),
    ({"clamp", "clamp_min", "clamp_max"}, clamp),
    ("mul", mul),
    ({"div", "true_divide", "floor_divide"}, div),
    ("masked_fill", masked_fill),
    (ADDITIVE, additive),
    ("linear", linear),
    ({"addmm"} | MATMUL, matmul),
    ("embedding", embedding),
    ("scaled_dot_product_attention", sdpa),
    ({"mean", "sum"}, mean_sum),
    ("rms_norm", rms_norm),
)
