"""What every pruning optimizer shares: AdamW over the LoRA factors of a PEFT model, a set of units that are
zero and held at zero, a plan, a schedule state that checkpoints resume from, and per-step metrics.

LHSPG (``lhspg.py``) and the baselines (``methods.py``: one-shot LLM-Pruner / FLAP / magnitude / random,
iterative LoRAPrune) are subclasses; the prune run's loop (``run.py``) only ever sees this interface:

* ``step()`` — an AdamW step on A and B, with the method's schedule around it; masked units stay zero;
* ``removal()`` — units that are zero now, per group; ``plan`` — the plan (``None`` until it is fixed);
* ``phase(t)`` — a label for step ``t`` (``warmup``, ``pruning``, ``after``, ``recovery``);
* ``boundary(t)`` — True when step ``t`` completed a masking stage (the run writes a checkpoint then);
* ``metrics()`` — per-step numbers (sparsity per kind, period) for the report and the Jobs view;
* ``state_dict`` / ``load_state_dict`` — AdamW state plus the schedule (``sched``) and settings (``hp``).
"""
from __future__ import annotations

import json
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ..errors import LorashearError
from ..groups import Group
from ..adapters import is_lora_param
from .plan import Plan, PlanSpec, candidate_groups, count_removed, plan_from_dict
from .units import UnitSlice, unit_slices, zero_units


class MaskedLoRA(torch.optim.AdamW):
    """AdamW over the LoRA factors of ``model`` with a held zero set. ``hp``: the method's settings (JSON-able;
    a checkpoint written with other settings is refused)."""

    method = "masked"

    def __init__(self, model: nn.Module, groups: Sequence[Group], spec: PlanSpec, *, lr: float = 2e-4,
                 betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 0.0, plan: Plan | None = None,
                 hp: Mapping[str, Any] | None = None):
        lora = [p for n, p in model.named_parameters() if is_lora_param(n)]
        if not lora:
            raise LorashearError(f"{type(self).__name__} needs a PEFT LoRA model (no LoRA parameters found)")
        base_grads = [n for n, p in model.named_parameters() if p.requires_grad and not is_lora_param(n)]
        if base_grads:
            raise LorashearError(f"base weights must be frozen for {type(self).__name__}; trainable: {base_grads[:3]}")
        super().__init__(lora, lr=lr, betas=betas, weight_decay=weight_decay)
        self.model, self.groups, self.spec = model, list(groups), spec
        self.cands = candidate_groups(self.groups, spec)
        self.n_units = {g.id: g.n_units for g in self.cands}
        self.slices: dict[str, list[UnitSlice]] = unit_slices(model, self.cands)
        self.lora_layers = lora_layers(model)
        self.hp: dict[str, Any] = dict(hp or {})
        self.sched: dict[str, Any] = {
            "step": 0,  # optimizer steps taken
            "scores": {},  # group id -> score per unit (EMA for the iterative methods)
            "plan": plan.to_dict() if plan is not None else None,
            "quota": {gid: len(u) for gid, u in plan.removal.items()} if plan is not None else None,
            "masked": {},  # group id -> units already zero
            "period": None,  # LHSPG: the period in progress
            "periods": [],  # units taken per masking stage (the history)
            "events": [],  # (step, what)
        }
        self._plan_obj = plan
        self._masked_idx: list | None = None

    # ------------------------------------------------------------------------------------ interface
    @property
    def plan(self) -> Plan | None:
        return self._plan_obj

    @property
    def total_steps(self) -> int:
        """Steps the schedule needs (training may go on after)."""
        return 0

    def phase(self, step: int | None = None) -> str:
        return "recovery"

    def period_index(self, step: int | None = None) -> int | None:
        return None

    def boundary(self, step: int) -> bool:
        """True when step ``step`` (0-based) completed a masking stage."""
        return False

    def removal(self) -> dict[str, list[int]]:
        """Units that are zero now (masked), per group."""
        return {gid: sorted(u) for gid, u in self.sched["masked"].items() if u}

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        t = self.sched["step"]
        self._before(t)
        super().step()
        self._hold_masked()
        self._after(t)
        self.sched["step"] = t + 1
        return loss

    def _before(self, t: int) -> None:
        """Runs before the AdamW step of step ``t`` (gradients of the factors are there)."""

    def _after(self, t: int) -> None:
        """Runs after the AdamW step of step ``t`` and the hold of the masked units."""

    # ------------------------------------------------------------------------------------ masking
    def mask(self, units: Mapping[str, Sequence[int]], what: str) -> None:
        """Zero ``units`` now (base rows and LoRA-B rows) and hold them at zero from here on."""
        units = {gid: sorted(int(u) for u in us) for gid, us in units.items() if us}
        zero_units(self.slices, units)
        for gid, us in units.items():
            self.sched["masked"][gid] = sorted(set(self.sched["masked"].get(gid, [])) | set(us))
        self.sched["periods"].append(units)
        self.sched["events"].append([self.sched["step"], f"{what}: {sum(map(len, units.values()))} units masked"])
        self._masked_idx = None

    def _hold_masked(self) -> None:
        """Masked units stay exactly zero: AdamW moved their LoRA-B rows; put them back to zero."""
        if not self.sched["masked"]:
            return
        if self._masked_idx is None:
            self._masked_idx = [(us, us.indices(units)) for gid, units in self.sched["masked"].items() if units
                                for us in self.slices[gid] if us.lora_b is not None]
        for us, idx in self._masked_idx:
            us.zero_lora_rows(idx)

    def _finish_plan(self) -> None:
        """At the end of the schedule the plan's removal is the zero set (same counts per group; which units may
        differ from the plan fixed earlier when scores moved); the exact count is recomputed."""
        if self._plan_obj is None:
            return
        self._plan_obj.removal = self.removal()
        self._plan_obj.periods = [dict(p) for p in self.sched["periods"]]
        self._plan_obj.params_removed = count_removed(self.model, self.groups, self._plan_obj.removal)
        self.sched["plan"] = self._plan_obj.to_dict()

    # ------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        sd = super().state_dict()
        sd["lorashear"] = {"method": self.method, "sched": json.dumps(self.sched), "hp": json.dumps(self.hp)}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        sd = dict(state_dict)
        extra = sd.pop("lorashear", None) or sd.pop("lhspg", None)
        super().load_state_dict(sd)
        if extra is not None:
            if extra.get("method", self.method) != self.method:
                raise LorashearError(f"checkpoint was written by method {extra['method']!r}, not {self.method!r}")
            hp = json.loads(extra["hp"])
            if hp != json.loads(json.dumps(self.hp)):
                raise LorashearError(f"checkpoint was written with other {self.method} settings: {hp} vs {self.hp}")
            self.sched = json.loads(extra["sched"])
            if self.sched.get("plan"):
                self._plan_obj = plan_from_dict(self.sched["plan"])
            self._masked_idx = None
            self._loaded()

    def _loaded(self) -> None:
        """Drop caches after ``load_state_dict``."""

    def metrics(self) -> dict[str, float]:
        """Per-step numbers for the run report and the Jobs view."""
        p = self.period_index()
        out: dict[str, float] = {"period": float(p + 1) if p is not None else 0.0}
        removed = self.removal()
        for kind in self.spec.kinds:
            tot = sum(g.n_units for g in self.cands if g.kind == kind)
            if tot:
                out[f"sparsity_{kind}"] = sum(len(removed.get(g.id, [])) for g in self.cands if g.kind == kind) / tot
        return out


def lora_layers(model: nn.Module) -> dict[int, nn.Module]:
    """id(lora_B weight or lora_embedding_B) -> the PEFT LoRA layer that owns it."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for mod in model.modules():
        if isinstance(mod, LoraLayer):
            for name in mod.active_adapters:
                if name in getattr(mod, "lora_B", {}):
                    out[id(mod.lora_B[name].weight)] = mod
                if name in getattr(mod, "lora_embedding_B", {}):
                    out[id(mod.lora_embedding_B[name])] = mod
    return out
