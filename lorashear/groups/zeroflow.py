"""Pass 2: the zero-invariance proof. One walk computes, for every value, the classes it is zero on when each
class's *producer* slices are zeroed (all classes at once: the rules are per class, so sets evaluate every
class independently in one walk).

Each op's rule is in ``zero_rules.ZERO_RULES``. A class is exact only if every contraction (``linear``,
``matmul``, attention scores) and reduction over it reads zeros; the rules record each place where it does
not as a *violation* (the reason names the op and node). Mean reductions are accepted only as RMS norms
with an exact weight/eps compensation, recorded per class.
"""
from __future__ import annotations

from typing import Any

from ..axes import Expr
from .ops import op_name, rule_failure, tensor_refs
from .propagate import AxisPropagation
from .zero_rules import ZERO_RULES

MAX_VIOLATIONS = 6  # reasons kept per class; a class with this many may have had more dropped


class ZeroFlow:
    def __init__(self, prop: AxisPropagation):
        self.p = prop
        self.alg = prop.alg
        self.zero: dict[str, Any] = {}
        self.violations: dict[int, list[str]] = {}
        self.compensation: dict[int, list[dict]] = {}
        # class -> (reason, weight param) where the class is contracted by a linear without being zero but the
        # weight's input columns carry it: zeroing those columns (the consumer side) kills the unit there
        self.consumer_reach: dict[int, list[tuple[str, str]]] = {}
        # class -> where it is contracted or reduced *while zero*: exact under the producer-side proof only (a
        # proof that zeroes other slices, as the query-head one does, leaves these reads live)
        self.read_while_zero: dict[int, list[str]] = {}

    def classes(self, v) -> set[int]:
        if v is None:
            return set()
        if isinstance(v, tuple):
            return set().union(*(self.classes(x) for x in v[1])) if v[1] else set()
        return {self.alg.find(a) for e in v for a in self.alg.expand(e)}

    def axis_classes(self, e: Expr) -> set[int]:
        return {self.alg.find(a) for a in self.alg.expand(e)}

    def z(self, ref) -> set[int]:
        """Classes the referenced value is zero on (a parameter: the classes of its producer axes)."""
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
        """Classes the referenced value carries."""
        return self.classes(self.p.val(ref)) if isinstance(ref, dict) else set()

    def violate(self, classes, reason: str) -> None:
        for k in classes:
            lst = self.violations.setdefault(k, [])
            if reason not in lst and len(lst) < MAX_VIOLATIONS:
                lst.append(reason)

    def read_zero(self, classes, where: str) -> None:
        for k in classes:
            lst = self.read_while_zero.setdefault(k, [])
            if where not in lst:
                lst.append(where)

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
                touched = carried.union(*(self.c(r) for r in tensor_refs([a.get("args"), a.get("kwargs")])))
                self.violate(touched, rule_failure(name, a, exc))
            self.zero[name] = z & carried

    def rule(self, name: str, a: dict, carried: set[int]) -> set[int]:
        """The classes this op's output is zero on; an op without a rule is zero on nothing (safe)."""
        op, args = op_name(a), a["args"]
        rule = ZERO_RULES.get(op)
        return rule(self, name, a, op, args, carried) if rule is not None else set()
