"""Op families the group rules share, and helpers for reading an op node's JSON-safe arguments.

Both passes dispatch on the same short aten names; the families here say which ops behave alike (identity,
element-wise, reductions, views, …) so that each pass's rule table lists a family once.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

IDENTITY = {"clone", "contiguous", "alias", "detach", "dropout", "_to_copy", "to", "type_as", "lift_fresh_copy",
            "feature_dropout", "alpha_dropout", "_assert_tensor_metadata", "_to_dim_order_copy"}
ZERO_UNARY = {"neg", "silu", "gelu", "relu", "tanh", "sin", "sqrt", "abs", "erf", "hardtanh", "leaky_relu", "elu",
              "square", "relu6", "mish", "sign", "trunc", "round", "floor", "ceil", "expm1", "sinh", "asin", "atan",
              "hardswish", "selu", "celu", "gelu_", "silu_", "relu_", "tanh_"}
OTHER_UNARY = {"sigmoid", "exp", "cos", "rsqrt", "reciprocal", "log", "log1p", "softplus", "logical_not",
               "bitwise_not", "isnan", "isinf", "cosh", "acos", "log2", "exp2", "hardsigmoid", "erfc", "lgamma"}
ADDITIVE = {"add", "sub", "rsub", "where", "maximum", "minimum", "lerp", "fmax", "fmin"}
COMPARE = {"eq", "ne", "lt", "le", "gt", "ge", "__and__", "__or__", "__xor__", "logical_and", "logical_or",
           "bitwise_and", "bitwise_or", "logical_xor"}
BINARY = {"mul", "div", "pow", "masked_fill", "clamp", "clamp_min", "clamp_max", "true_divide", "floor_divide",
          "remainder", "fmod"}
CREATE = {"arange", "ones", "zeros", "full", "empty", "scalar_tensor", "rand", "randn", "randint", "linspace",
          "new_ones", "new_zeros", "new_full", "new_empty", "tensor"}
LIKE = {"ones_like", "zeros_like", "full_like", "empty_like", "rand_like", "randn_like"}
REDUCE = {"mean", "sum", "amax", "amin", "var", "std", "logsumexp", "prod", "norm", "linalg_vector_norm", "any",
          "all", "argmax", "argmin", "count_nonzero"}
REDUCE_TUPLE = {"max", "min", "var_mean", "std_mean", "aminmax"}
ALONG = {"softmax", "_softmax", "log_softmax", "_log_softmax", "cumsum", "cumprod", "cummax", "sort", "topk"}
VIEW = {"view", "reshape", "_unsafe_view", "view_copy", "_reshape_alias", "flatten", "unflatten"}
SPLIT = {"split", "split_with_sizes", "chunk", "unbind", "tensor_split"}
EXPAND = {"expand", "expand_copy", "broadcast_to"}
MATMUL = {"mm", "bmm", "matmul"}
LAYER_NORM = {"layer_norm", "native_layer_norm"}


def op_name(a: dict) -> str:
    """The op name the rules dispatch on: ``max.other``/``min.other`` (two tensors, element-wise) are
    ``maximum``/``minimum``, not the reductions ``max.dim``/``min.dim``."""
    op = a["op"]
    if op in ("max", "min") and str(a.get("target", "")).endswith(".other"):
        return "maximum" if op == "max" else "minimum"
    return op


def is_tensor(ref) -> bool:
    return isinstance(ref, dict) and any(k in ref for k in ("node", "param", "buffer"))


def tensor_refs(obj) -> Iterator[dict]:
    """Every tensor reference (``{"node"|"param"|"buffer": name}``) inside nested op arguments."""
    if isinstance(obj, list):
        for v in obj:
            yield from tensor_refs(v)
    elif isinstance(obj, dict) and ("node" in obj or "param" in obj or "buffer" in obj):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from tensor_refs(v)


def rule_failure(name: str, a: dict, exc: Exception) -> str:
    """The reason recorded when a rule raises: it names the op and node, so a rule bug refuses only what it touches."""
    msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return f"rule for {a.get('target', a.get('op'))} failed at node {name} ({a.get('module') or 'top'}): {type(exc).__name__}: {msg}"


def rule_table(what: str, *entries: tuple[set[str] | str, Callable[..., Any]]) -> dict[str, Callable[..., Any]]:
    """An op -> rule table; an op listed twice is a mistake in the table, caught at import (``what`` names the
    table in that error: "axis", "zero")."""
    table: dict[str, Callable[..., Any]] = {}
    for ops, rule in entries:
        for op in ([ops] if isinstance(ops, str) else sorted(ops)):
            if op in table:
                raise ValueError(f"op {op!r} has two {what} rules")
            table[op] = rule
    return table
