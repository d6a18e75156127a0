"""Axis algebra: union-find over *atoms* (elementary tensor dimensions) with refinement.

Every tensor axis in the graph is an ordered product of atoms (outer → inner). Element-wise ops and
contractions *unify* axes; ``view``/``reshape`` *factor* an atom (``H*D → (H, D)``), which splits it
everywhere it occurs. After propagation, each leaf class is one candidate group and a unit is one index of
it: a unit of an outer factor is a contiguous block of the parent axis, a unit of an inner factor a
strided set.

Classes carry *reasons*: facts found during propagation that make them unremovable (an unknown op, a
buffer of fixed size, a slice that singles out some indices, …). Reasons survive unions and splits.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

Expr = list[int]  # one tensor axis: a product of atoms, outer → inner


class AxisConflict(Exception):
    """Two axes that the graph says are the same cannot be factored compatibly."""


@dataclass
class AxisAlgebra:
    parent: list[int] = field(default_factory=list)
    size: list[int] = field(default_factory=list)
    children: dict[int, tuple[int, ...]] = field(default_factory=dict)  # split roots → their factors
    reasons: dict[int, list[str]] = field(default_factory=dict)

    def new(self, size: int, reason: str | None = None) -> int:
        self.parent.append(len(self.parent))
        self.size.append(int(size))
        a = len(self.parent) - 1
        if reason:
            self.reasons[a] = [reason]
        return a

    def find(self, a: int) -> int:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:
            self.parent[a], a = root, self.parent[a]
        return root

    def leaves(self, a: int) -> list[int]:
        r = self.find(a)
        kids = self.children.get(r)
        if kids is None:
            return [r]
        out: list[int] = []
        for k in kids:
            out.extend(self.leaves(k))
        return out

    def expand(self, expr: Expr) -> list[int]:
        """Leaf classes of an axis, outer → inner, size-1 atoms dropped (they carry no units)."""
        out: list[int] = []
        for a in expr:
            out.extend(x for x in self.leaves(a) if self.size[x] != 1)
        return out

    def numel(self, expr: Expr) -> int:
        n = 1
        for a in self.expand(expr):
            n *= self.size[a]
        return n

    def split(self, a: int, sizes: tuple[int, ...]) -> tuple[int, ...]:
        r = self.find(a)
        assert r not in self.children and int(np.prod(sizes)) == self.size[r]
        inherited = self.reasons.get(r, [])
        kids = tuple(self.new(s) for s in sizes)
        for k in kids:
            if inherited:
                self.reasons[k] = list(inherited)
        self.children[r] = kids
        return kids

    def mark(self, expr_or_atoms, reason: str) -> None:
        """Attach ``reason`` to every leaf class of the given axes."""
        for a in self.expand(list(expr_or_atoms)):
            lst = self.reasons.setdefault(a, [])
            if reason not in lst and len(lst) < 8:
                lst.append(reason)

    def _union_leaves(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        assert ra not in self.children and rb not in self.children
        if self.size[ra] != self.size[rb]:
            raise AxisConflict(f"size {self.size[ra]} vs {self.size[rb]}")
        self.parent[ra] = rb
        if ra in self.reasons:
            dst = self.reasons.setdefault(rb, [])
            for r in self.reasons.pop(ra):
                if r not in dst and len(dst) < 8:
                    dst.append(r)

    def refine(self, e1: Expr, e2: Expr) -> None:
        """Split atoms until both axes are the same sequence of leaf sizes (common refinement)."""
        for _ in range(64):
            l1, l2 = self.expand(e1), self.expand(e2)
            i = j = 0
            changed = False
            while i < len(l1) and j < len(l2):
                s1, s2 = self.size[l1[i]], self.size[l2[j]]
                if s1 == s2:
                    i += 1
                    j += 1
                    continue
                big, small, lst, k = (l1[i], s2, l1, i) if s1 > s2 else (l2[j], s1, l2, j)
                sb = self.size[big]
                if sb % small:
                    raise AxisConflict(f"cannot factor {sb} by {small}")
                self.split(big, (small, sb // small))
                changed = True
                break
            if not changed:
                if i != len(l1) or j != len(l2):
                    raise AxisConflict(f"products differ: {[self.size[x] for x in l1]} vs {[self.size[x] for x in l2]}")
                return
        raise AxisConflict("refinement did not converge")

    def unify(self, e1: Expr, e2: Expr) -> None:
        self.refine(e1, e2)
        for a, b in zip(self.expand(e1), self.expand(e2)):
            self._union_leaves(a, b)

    def factor(self, expr: Expr, sizes: list[int]) -> list[Expr]:
        """View one axis (or a flattened run of axes) as ``sizes``: returns one expr per output axis."""
        flat = self.expand(expr)
        out: list[Expr] = []
        i = 0
        for s in sizes:
            s = int(s)
            acc: Expr = []
            prod = 1
            while prod < s:
                if i >= len(flat):
                    raise AxisConflict(f"view to {sizes} does not cover the input")
                a = flat[i]
                sa = self.size[a]
                if s % (prod * sa) == 0:
                    acc.append(a)
                    prod *= sa
                    i += 1
                    continue
                need = s // prod
                if s % prod or sa % need:
                    raise AxisConflict(f"cannot factor {sa} into {need} × …")
                kids = self.split(a, (need, sa // need))
                flat[i : i + 1] = list(kids)
            if prod != s:
                raise AxisConflict(f"view to {sizes} does not match")
            out.append(acc)
        if i != len(flat):
            raise AxisConflict(f"view to {sizes} leaves dimensions over")
        return out

    def class_reasons(self, leaf: int) -> list[str]:
        return self.reasons.get(self.find(leaf), [])


def unit_layout(alg: AxisAlgebra, expr: Expr, leaf: int) -> tuple[list[int], int] | None:
    """The leaf sizes of ``expr`` and the position of ``leaf`` among them (None if absent)."""
    leaves = alg.expand(expr)
    root = alg.find(leaf)
    pos = [k for k, a in enumerate(leaves) if alg.find(a) == root]
    if not pos:
        return None
    return [alg.size[a] for a in leaves], pos[0]


def layout_indices(sizes: list[int], pos: int, units) -> np.ndarray:
    """Flat indices along an axis of layout ``sizes`` whose digit ``pos`` is in ``units`` (sorted)."""
    total = int(np.prod(sizes)) if sizes else 1
    grid = np.arange(total).reshape(sizes) if sizes else np.arange(1)
    taken = np.take(grid, np.asarray(sorted(units), dtype=np.int64), axis=pos)
    return np.sort(taken.reshape(-1))
