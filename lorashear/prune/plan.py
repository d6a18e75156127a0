"""The plan: which units go, so that the model loses a target fraction ρ of its parameters.

A ``Plan`` is the contract between a person (who previews it in the app or reads ``plan.json``) and every
pruning method (which must end with exactly this zero set). It is made from per-unit scores (lower = less
important) by ``make_plan``:

* parameters are counted *exactly*, the way ``compress`` will remove them: every member slice of every unit
  (producers, consumers, pass-through norms) on unique tensors (tied weights once), so a kv head of layer 3
  and a hidden channel that share an ``o_proj`` element remove it once. ``ρ`` is a fraction of the model's
  total parameters (tied once) — how LLM-Pruner and LoRAShear report "20 %";
* ``global`` allocation removes units in increasing order of score per parameter over every allowed group,
  until the exact count reaches the target, then keeps whichever of the last two stopping points is closer:
  the result is within one unit's parameters of the target (one aligned block with ``align``);
* ``uniform`` allocation removes the same fraction of units (rounded, the same count in every layer for each
  kind) in every group of the allowed kinds and layers, the fraction chosen so that the exact count is as close
  to the target as whole per-layer steps allow — a uniformly pruned model stays loadable by the stock class;
* an unprunable set (explicit units, or a knowledge report with γ) is never touched, and every group keeps at
  least one unit (``align`` units when aligned); a ratio they make unreachable is refused with the largest
  reachable ratio;
* ``align=N`` keeps each group's remaining width a multiple of N (a unit of width w moves in steps of
  N / gcd(N, w) units), because misaligned GEMM sizes are often no faster than the dense model at batch 1.
"""
from __future__ import annotations

import functools
import heapq
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from torch import nn

from ..adapters import is_lora_param
from ..errors import LorashearError
from ..settings import SettingsError
from ..groups import Group
from ..jsonio import read_json, write_json_atomic
from ..knowledge.scoring import unit_order
from ..knowledge.slices import ParamIndex
from .names import PLAN_KINDS

PLAN_FORMAT = "lorashear.plan/1"
KINDS = PLAN_KINDS
ALLOCATIONS = ("global", "uniform")
DEFAULT_KINDS = ("attention", "mlp")


@dataclass
class PlanSpec:
    """What the user asks for; ``make_plan`` turns it into units once scores are known."""

    ratio: float
    kinds: tuple[str, ...] = DEFAULT_KINDS
    allocation: str = "global"
    layers: tuple[int, int] | None = None  # [start, stop) of decoder layers whose groups may be pruned
    align: int | None = None
    protected: dict[str, list[int]] = field(default_factory=dict)  # unprunable units per group id

    def __post_init__(self) -> None:
        self.ratio = check_ratio(self.ratio)
        self.kinds = tuple(self.kinds)
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds:
            raise SettingsError.one("kinds", f"unknown group kind(s) {bad or '(none)'}; choose from {', '.join(KINDS)}")
        if self.allocation not in ALLOCATIONS:
            raise SettingsError.one("allocation", f"unknown allocation {self.allocation!r}; choose global or uniform")
        if self.align is not None and (not isinstance(self.align, int) or self.align < 1):
            raise SettingsError.one("align", f"align must be a positive integer, got {self.align!r}")
        if self.layers is not None:
            a, b = (int(x) for x in self.layers)
            if not 0 <= a < b:
                raise SettingsError.one("layers", f"layer range {a}:{b} is empty or negative")
            self.layers = (a, b)
        self.protected = {str(k): sorted({int(u) for u in v}) for k, v in (self.protected or {}).items()}


def check_ratio(ratio: Any) -> float:
    try:
        r = float(ratio)
    except (TypeError, ValueError):
        raise SettingsError.one("ratio", f"ratio must be a number in (0, 1), got {ratio!r}") from None
    if not 0.0 < r < 1.0 or math.isnan(r):
        raise SettingsError.one("ratio", f"ratio must be in (0, 1) (the fraction of parameters to remove), got {ratio!r}")
    return r


def parse_layers(text: str | None, n_layers: int) -> tuple[int, int] | None:
    """``"4:30"`` (indices, stop exclusive) or ``"0.125:0.9375"`` (fractions of the layer count) → (start, stop)."""
    if text is None or str(text).strip() == "":
        return None
    a, sep, b = str(text).partition(":")
    if not sep:
        raise SettingsError.one("layers", f"layer range {text!r}: expected START:STOP, e.g. 4:30 or 0.1:0.9")
    try:
        vals = [float(x) if x.strip() else None for x in (a, b)]
    except ValueError:
        raise SettingsError.one("layers", f"layer range {text!r}: START and STOP must be numbers") from None
    frac = any(v is not None and not float(v).is_integer() for v in vals) or (
        all(v is not None and 0 <= v <= 1 for v in vals) and "." in text)
    start = 0 if vals[0] is None else int(round(vals[0] * n_layers)) if frac else int(vals[0])
    stop = n_layers if vals[1] is None else int(round(vals[1] * n_layers)) if frac else int(vals[1])
    if not 0 <= start < stop <= n_layers:
        raise SettingsError.one("layers", f"layer range {text!r} is outside the model's {n_layers} layers (0:{n_layers})")
    return start, stop


@dataclass
class Plan:
    """The units to remove and how the numbers were reached. ``removal`` is what ``compress`` takes."""

    spec: PlanSpec
    params_total: int
    params_target: int
    params_removed: int
    removal: dict[str, list[int]]
    scores_from: str
    groups: dict[str, dict] = field(default_factory=dict)  # per group: kind, layer, n_units, removed, kept
    periods: list[dict[str, list[int]]] = field(default_factory=list)  # LHSPG: units taken per period

    @property
    def ratio_achieved(self) -> float:
        return self.params_removed / self.params_total

    def to_dict(self) -> dict:
        spec = asdict(self.spec)
        spec["kinds"] = list(self.spec.kinds)
        spec["layers"] = list(self.spec.layers) if self.spec.layers else None
        return {"format": PLAN_FORMAT, "spec": spec, "params_total": self.params_total,
                "params_target": self.params_target, "params_removed": self.params_removed,
                "params_after": self.params_total - self.params_removed,
                "ratio_target": self.spec.ratio, "ratio_achieved": self.ratio_achieved,
                "scores_from": self.scores_from, "removal": self.removal, "groups": self.groups,
                "periods": self.periods, "by_layer": self.by_layer()}

    def by_layer(self) -> dict[str, dict[str, int]]:
        """Units removed per layer and kind (``model`` for network-wide groups such as hidden)."""
        out: dict[str, dict[str, int]] = {}
        for gid, info in self.groups.items():
            key = "model" if info["layer"] is None else str(info["layer"])
            out.setdefault(key, {})[info["kind"]] = out.get(key, {}).get(info["kind"], 0) + info["removed"]
        return out

    def save(self, path: str | Path) -> Path:
        return write_json_atomic(path, self.to_dict())


def load_plan(path: str | Path) -> Plan:
    return plan_from_dict(read_json(path, PLAN_FORMAT, "plan"))


def plan_from_dict(d: Mapping[str, Any]) -> Plan:
    s = dict(d["spec"])
    spec = PlanSpec(ratio=s["ratio"], kinds=tuple(s["kinds"]), allocation=s["allocation"],
                    layers=tuple(s["layers"]) if s.get("layers") else None, align=s.get("align"),
                    protected=s.get("protected") or {})
    return Plan(spec, int(d["params_total"]), int(d["params_target"]), int(d["params_removed"]),
                {k: [int(u) for u in v] for k, v in d["removal"].items()}, d.get("scores_from", "?"),
                d.get("groups", {}), [{k: list(v) for k, v in p.items()} for p in d.get("periods", [])])


# ------------------------------------------------------------------------------------- exact counting
class ParamCounter:
    """Exact number of parameters a removal takes away: per unique tensor, ``numel − Π(size − removed)``
    over its axes, updated incrementally as units are added."""

    def __init__(self, model: nn.Module, groups: Sequence[Group]):
        idx = ParamIndex(model)
        self.total = sum(p.numel() for n, p in _unique_params(model) if not is_lora_param(n))
        self.shape: dict[int, tuple[int, ...]] = {}
        self._members: dict[str, list[tuple[int, int, np.ndarray]]] = {}
        for g in groups:
            ms = []
            for m in g.members:
                if is_lora_param(m.param):
                    continue
                p = idx.get(m.param)
                self.shape[id(p)] = tuple(p.shape)
                ms.append((id(p), m.axis, _unit_rows(tuple(m.layout), m.pos)))
            self._members[g.id] = ms
        # per tensor and axis: which indices are removed (bool mask) and how many
        self.removed: dict[int, dict[int, np.ndarray]] = {}
        self.n_removed: dict[int, dict[int, int]] = {}
        self.count = 0

    def _kept(self, key: int) -> int:
        rem = self.n_removed.get(key, {})
        return math.prod(n - rem.get(ax, 0) for ax, n in enumerate(self.shape[key]))

    def add(self, gid: str, units: Sequence[int]) -> int:
        """Remove ``units`` of group ``gid``; returns how many parameters that took away."""
        members = self._members[gid]
        touched = {key for key, _, _ in members}
        before = sum(self._kept(k) for k in touched)
        u = np.asarray(list(units), dtype=np.int64)
        for key, axis, rows in members:
            i = rows[u].reshape(-1)
            masks = self.removed.setdefault(key, {})
            mask = masks.get(axis)
            if mask is None:
                mask = masks[axis] = np.zeros(self.shape[key][axis], dtype=bool)
            new = int(np.count_nonzero(~mask[i]))  # the rows of distinct units are disjoint
            mask[i] = True
            n = self.n_removed.setdefault(key, {})
            n[axis] = n.get(axis, 0) + new
        after = sum(self._kept(k) for k in touched)
        self.count += before - after
        return before - after

    def copy(self) -> "ParamCounter":
        c = object.__new__(ParamCounter)
        c.total, c.shape, c._members, c.count = self.total, self.shape, self._members, self.count
        c.removed = {k: {ax: m.copy() for ax, m in v.items()} for k, v in self.removed.items()}
        c.n_removed = {k: dict(v) for k, v in self.n_removed.items()}
        return c


@functools.lru_cache(maxsize=4096)
def _unit_rows(layout: tuple[int, ...], pos: int) -> np.ndarray:
    """``[n_units, indices per unit]``: the flat indices along an axis of mixed-radix ``layout`` whose digit ``pos``
    is each unit — what ``Member.unit_indices`` computes, built once per layout so that planning a 7B model (350 k
    MLP channels) does not rebuild the whole axis for every unit it adds."""
    sizes = list(layout) or [1]
    grid = np.arange(int(np.prod(sizes))).reshape(sizes)
    rows = np.moveaxis(grid, pos, 0).reshape(sizes[pos], -1)
    rows.setflags(write=False)
    return rows


def _unique_params(model: nn.Module):
    seen = set()
    for n, p in model.named_parameters(remove_duplicate=False):
        if id(p) not in seen:
            seen.add(id(p))
            yield n, p


def count_removed(model: nn.Module, groups: Sequence[Group], removal: Mapping[str, Sequence[int]]) -> int:
    """Exact parameters ``compress`` would remove for ``removal``."""
    c = ParamCounter(model, groups)
    for gid, units in removal.items():
        if units:
            c.add(gid, units)
    return c.count


# ---------------------------------------------------------------------------------------------- planning
def candidate_groups(groups: Sequence[Group], spec: PlanSpec) -> list[Group]:
    """Prunable groups of the allowed kinds (and layer range, for per-layer groups)."""
    out = []
    for g in groups:
        if not g.prunable or g.kind not in spec.kinds:
            continue
        if spec.layers is not None and g.layer is not None and not spec.layers[0] <= g.layer < spec.layers[1]:
            continue
        out.append(g)
    if not out:
        raise SettingsError.one("kinds", f"no prunable group of kind(s) {', '.join(spec.kinds)}"
                             + (f" in layers {spec.layers[0]}:{spec.layers[1]}" if spec.layers else ""))
    return out


def _unit_width(g: Group) -> int:
    """Indices per unit along the first producer axis (a kv head with its queries: q rows per unit)."""
    for m in g.producers():
        return max(1, int(np.prod(m.layout)) // g.n_units)
    return 1


def _step(g: Group, align: int | None) -> int:
    if not align:
        return 1
    return align // math.gcd(align, _unit_width(g))


def _order(g: Group, scores: Mapping[str, np.ndarray], protected: set[int]) -> list[int]:
    """Removable units of ``g``, least important first (unscored units last, ties by index)."""
    s = np.asarray(scores.get(g.id, np.zeros(g.n_units)), dtype=np.float64)
    if s.shape != (g.n_units,):
        raise LorashearError(f"scores for group '{g.id}' have {s.shape[0] if s.ndim else 0} entries, the group has {g.n_units} units")
    return unit_order(s, exclude=protected).tolist()


def _max_remove(g: Group, order_len: int, step: int) -> int:
    """Most units removable: keep ≥ 1 (≥ step when aligned), respect protection, keep the width aligned."""
    cap = min(order_len, g.n_units - step)
    if cap <= 0:
        return 0
    return cap - ((cap - g.n_units % step) % step) if step > 1 else cap


def make_plan(model: nn.Module, groups: Sequence[Group], spec: PlanSpec,
              scores: Mapping[str, np.ndarray] | None = None, *, scores_from: str = "given") -> Plan:
    """Choose the units to remove (see the module docstring). ``scores``: group id → one score per unit, lower
    removed first; None scores every unit 0 (index order)."""
    cands = candidate_groups(groups, spec)
    scores = scores or {}
    if not scores:
        scores_from = "none (index order)"
    protected = {gid: set(u) for gid, u in spec.protected.items()}
    counter = ParamCounter(model, groups)
    target = int(round(spec.ratio * counter.total))
    orders = {g.id: _order(g, scores, protected.get(g.id, set())) for g in cands}
    steps = {g.id: _step(g, spec.align) for g in cands}
    caps = {g.id: _max_remove(g, len(orders[g.id]), steps[g.id]) for g in cands}
    if spec.allocation == "global":
        removal = _global(cands, scores, orders, steps, caps, counter, target)
    else:
        removal = _uniform(cands, orders, steps, caps, counter, target)
    removed = count_removed(model, groups, removal)
    reach = count_removed(model, groups, {g.id: orders[g.id][: caps[g.id]] for g in cands})
    if removed < target and abs(removed - target) > _largest_step(cands, steps) and reach < target:
        raise SettingsError.one(
            "ratio", f"ratio {spec.ratio:g} is unreachable: with kinds {', '.join(spec.kinds)}"
            + (f", layers {spec.layers[0]}:{spec.layers[1]}" if spec.layers else "")
            + f", the unprunable set and at least one unit kept per group, at most {reach / counter.total:.4f} "
              f"of the parameters ({reach:,} of {counter.total:,}) can be removed")
    info = {g.id: {"kind": g.kind, "layer": g.layer, "n_units": g.n_units, "removed": len(removal.get(g.id, [])),
                   "kept": g.n_units - len(removal.get(g.id, [])), "params_per_unit": g.params_per_unit,
                   "protected": len(protected.get(g.id, ()))} for g in cands}
    removal = {gid: sorted(u) for gid, u in removal.items() if u}
    return Plan(spec, counter.total, target, removed, removal, scores_from, info)


def _largest_step(cands: Sequence[Group], steps: Mapping[str, int]) -> int:
    return max(g.params_per_unit * steps[g.id] for g in cands)


def _blocks(g: Group, order: list[int], step: int, cap: int) -> list[list[int]]:
    """The group's removable units cut into blocks that keep the remaining width aligned."""
    return [order[a:b] for a, b in (_block_bounds(g, step, cap, k) for k in range(_n_blocks(g, step, cap)))]


def _first_block(g: Group, step: int) -> int:
    return (g.n_units % step or step) if step > 1 else 1


def _n_blocks(g: Group, step: int, cap: int) -> int:
    first = _first_block(g, step)
    return 0 if cap < first else 1 + (cap - first) // step


def _block_bounds(g: Group, step: int, cap: int, k: int) -> tuple[int, int]:
    """[start, stop) in the group's order of block ``k`` (computed, not stored: a 7B model has 350 k blocks)."""
    first = _first_block(g, step)
    start = 0 if k == 0 else first + (k - 1) * step
    return start, start + (first if k == 0 else step)


def _global(cands, scores, orders, steps, caps, counter: ParamCounter, target: int) -> dict[str, list[int]]:
    heap: list[tuple[float, int, str, int]] = []
    by_id = {g.id: g for g in cands}
    n_blocks = {g.id: _n_blocks(g, steps[g.id], caps[g.id]) for g in cands}

    def block(gid: str, k: int) -> list[int]:
        a, b = _block_bounds(by_id[gid], steps[gid], caps[gid], k)
        return orders[gid][a:b]

    ppu = {g.id: max(1, g.params_per_unit) for g in cands}

    arrays = {g.id: np.asarray(scores[g.id], dtype=np.float64) for g in cands if scores.get(g.id) is not None}

    def density(gid: str, b: list[int]) -> float:
        s = arrays.get(gid)
        if s is None:
            return 0.0
        vals = s[b[0]] if len(b) == 1 else s[b]
        return float(np.where(np.isnan(vals), np.inf, vals).sum()) / (ppu[gid] * len(b))

    tie = 0
    for g in cands:
        if n_blocks[g.id]:
            heapq.heappush(heap, (density(g.id, block(g.id, 0)), tie, g.id, 0))
            tie += 1
    removal: dict[str, list[int]] = {}
    last: tuple[str, list[int], int] | None = None
    while heap and counter.count < target:
        _, _, gid, k = heapq.heappop(heap)
        b = block(gid, k)
        before = counter.count
        counter.add(gid, b)
        removal.setdefault(gid, []).extend(b)
        last = (gid, b, before)
        if k + 1 < n_blocks[gid]:
            heapq.heappush(heap, (density(gid, block(gid, k + 1)), tie, gid, k + 1))
            tie += 1
    if last is not None and counter.count > target:
        gid, b, before = last
        if target - before < counter.count - target:  # stopping one block earlier is closer
            removal[gid] = removal[gid][: len(removal[gid]) - len(b)]
    return removal


def _uniform(cands, orders, steps, caps, counter: ParamCounter, target: int) -> dict[str, list[int]]:
    """One fraction f for every group: round(f·n) units, aligned and capped; f by bisection on the count."""

    def removal_at(f: float) -> dict[str, list[int]]:
        out = {}
        for g in cands:
            k = int(math.floor(f * g.n_units + 0.5))
            st = steps[g.id]
            if st > 1:
                r0 = g.n_units % st
                k = 0 if k < (r0 or st) else r0 + ((k - r0) // st) * st
            out[g.id] = orders[g.id][: min(k, caps[g.id])]
        return out

    def count(rem) -> int:
        c = counter.copy()
        for gid, u in rem.items():
            if u:
                c.add(gid, u)
        return c.count

    points = sorted({0.0, 1.0} | {(k - 0.5) / g.n_units + 1e-12 for g in cands for k in range(1, g.n_units + 1)})
    lo, hi = 0, len(points) - 1
    while lo < hi:  # smallest breakpoint whose count reaches the target
        mid = (lo + hi) // 2
        if count(removal_at(points[mid])) >= target:
            hi = mid
        else:
            lo = mid + 1
    best = removal_at(points[lo])
    if lo > 0:
        prev = removal_at(points[lo - 1])
        if abs(count(prev) - target) < abs(count(best) - target):
            best = prev
    return best


def period_share(n: int, period: int, n_periods: int) -> int:
    """How many of a group's ``n`` planned units period ``period`` (0-based) of ``n_periods`` takes."""
    return n * (period + 1) // n_periods - n * period // n_periods


def protected_from_report(report: Any, groups: Sequence[Group]) -> dict[str, list[int]]:
    """The unprunable units of a knowledge report (after ``select_unprunable``) as {group id: units}."""
    units = report.units
    if "unprunable" not in units.columns:
        return {}
    known = {g.id: g.n_units for g in groups}
    out: dict[str, list[int]] = {}
    for row in units[units["unprunable"]].itertuples():
        gid, u = str(row.group), int(row.unit)
        if gid not in known:
            raise LorashearError(f"the knowledge report names group '{gid}', which this model does not have")
        out.setdefault(gid, []).append(u)
    return out
