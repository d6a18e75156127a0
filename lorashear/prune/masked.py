"""What every pruning optimizer shares: AdamW over the LoRA factors of a PEFT model, a set of units that are
zero and held at zero, a plan, a schedule state that checkpoints resume from, and per-step metrics.

LHSPG (``lhspg.py``) and the baselines (``methods.py``: one-shot LLM-Pruner / FLAP / magnitude / random,
iterative LoRAPrune) are subclasses; the prune run's loop (``run.py``) only ever sees this interface:

* ``step()`` — an AdamW step on A and B, with the method's schedule around it; masked units stay zero;
* ``removal()`` — units that are zero now, per group;
* ``fixed_plan`` — the plan as it was fixed (given, or made at the end of warm-up; ``None`` until then), never
  changed afterwards; ``plan`` — the run's plan: the fixed plan, and once the schedule has finished, the fixed plan
  with the units actually zeroed (an iterative method re-reads saliency, so *which* units may differ; *how many*
  per group may not — checked against the fixed plan, refused otherwise);
* ``phase(t)`` — a label for step ``t`` (``warmup``, ``pruning``, ``after``, ``recovery``);
* ``boundary(t)`` — True when step ``t`` completed a masking stage (the run writes a checkpoint then);
* ``metrics()`` — per-step numbers (sparsity per kind, period) for the report and the Jobs view;
* ``events()`` — what the schedule did and when, as (step, text) rows;
* ``changed_tensors()`` — the base tensors the optimizer writes (a checkpoint must hold them besides LoRA);
* ``final_step`` — the step from which the zero set no longer changes; ``--train full`` (``full.py``) merges LoRA
  there, ``release_lora`` leaves this optimizer the run's record and ``full.FullTraining`` trains every parameter;
* ``state_dict`` / ``load_state_dict`` — AdamW state plus the schedule (``sched``) and settings (``hp``).
"""
from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ..errors import LorashearError
from ..groups import Group
from ..adapters import is_lora_param
from .plan import Plan, PlanSpec, candidate_groups, count_removed, plan_from_dict
from .units import UnitSlice, unit_slices, zero_units


def closure_loss(closure: Callable[[], Any] | None) -> Any:
    """``torch.optim.Optimizer.step``'s closure protocol: re-evaluate the loss with gradients on (the step itself
    runs under ``no_grad``); None without a closure."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class PruningOptimizer(torch.optim.AdamW):
    """AdamW over the LoRA factors of ``model`` with a held zero set: the base of every pruning method's
    optimizer. ``hp``: the method's settings (JSON-able; a checkpoint written with other settings is refused)."""

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
        self._plan_obj = plan  # the fixed plan: set once (given, or by the subclass when its warm-up ends)
        self._realized: Plan | None = None  # cache of ``plan`` once the schedule finished
        self._masked_idx: list | None = None

    # ------------------------------------------------------------------------------------ interface
    @property
    def fixed_plan(self) -> Plan | None:
        """The plan as fixed (``None`` until then); never changed afterwards."""
        return self._plan_obj

    @property
    def plan(self) -> Plan | None:
        """The run's plan: ``fixed_plan`` until the schedule finishes, then the fixed plan with the units actually
        zeroed, the periods that zeroed them and the exact count of removed parameters (a new ``Plan``)."""
        if self._plan_obj is None or not self.sched.get("finished"):
            return self._plan_obj
        if self._realized is None:
            self._realized = replace(self._plan_obj, removal=self.removal(),
                                     periods=[dict(p) for p in self.sched["periods"]],
                                     params_removed=count_removed(self.model, self.groups, self.removal()))
        return self._realized

    def events(self) -> list[list]:
        """What the schedule did and when: ``[step, text]`` rows (a copy)."""
        return [list(e) for e in self.sched["events"]]

    def changed_tensors(self) -> list[torch.Tensor]:
        """Base tensors this optimizer may write (unit rows it zeroes or projects, LoRA merged into its layers'
        bases): with the LoRA factors, what a checkpoint must hold to resume exactly."""
        seen: dict[int, torch.Tensor] = {}
        for sls in self.slices.values():
            for us in sls:
                seen.setdefault(id(us.base), us.base)
        for layer in self.lora_layers.values():
            w = layer.get_base_layer().weight
            seen.setdefault(id(w), w)
        reconstruction = getattr(self, "reconstruction", None)  # --reconstruct: the readers it refits
        for p in (reconstruction.writes(self.model, self.cands) if reconstruction is not None else ()):
            seen.setdefault(id(p), p)
        return list(seen.values())

    @property
    def total_steps(self) -> int:
        """Steps the schedule needs (training may go on after)."""
        return 0

    @property
    def final_step(self) -> int | None:
        """The step from which the zero set no longer changes (the structure is final): ``--train full`` trains
        every parameter from here (``full.FullTraining``). ``None``: this optimizer cannot say."""
        return None

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
        loss = closure_loss(closure)
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
        self._realized = None

    def note(self, text: str, step: int | None = None) -> None:
        """Record an event of the run at ``step`` (default: now) in the schedule's history."""
        self.sched["events"].append([self.sched["step"] if step is None else step, text])

    def release_lora(self, model: nn.Module) -> None:
        """LoRA was merged into ``model``'s base weights and removed (``--train full``, once the structure is final):
        from here this optimizer keeps only the run's record — plan, zero set, events, schedule position — over
        ``model``, whose unit slices carry no LoRA factors; the factors' AdamW state is dropped and it takes no more
        steps (``full.FullTraining`` does)."""
        self.model = model
        self.slices = unit_slices(model, self.cands)
        self.lora_layers = {}
        self.state.clear()
        self.param_groups[0]["params"] = []
        self._masked_idx = None
        self._realized = None

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
        """The schedule has ended: check the zero set against the fixed plan — the same number of units in every
        group (which units may differ when scores moved; the plan's parameter counts per group hold either way)
        and no protected unit — and from here on ``plan`` is the realized plan. The fixed plan is not touched."""
        fixed = self._plan_obj
        if fixed is None:
            return
        removal = self.removal()
        want = {gid: len(u) for gid, u in fixed.removal.items() if u}
        got = {gid: len(u) for gid, u in removal.items()}
        if got != want:
            raise RuntimeError(f"{self.method}: the zero set differs from the plan fixed at step "
                               f"{self.sched['step']}: units per group {got} vs {want}")
        hit = {gid: sorted(set(u) & set(self.spec.protected.get(gid, ()))) for gid, u in removal.items()}
        if any(hit.values()):
            raise RuntimeError(f"{self.method}: protected units were zeroed: {({g: u for g, u in hit.items() if u})}")
        self.sched["finished"] = True
        self._realized = None

    # ------------------------------------------------------------------------------------ state
    def schedule_state(self) -> dict[str, str]:
        """The schedule and settings without the AdamW state (``state_dict``'s ``lorashear`` entry): what
        ``full.FullTraining`` checkpoints of the run's record once LoRA is gone."""
        return {"method": self.method, "sched": json.dumps(self.sched), "hp": json.dumps(self.hp)}

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        sd = super().state_dict()
        sd["lorashear"] = self.schedule_state()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        sd = dict(state_dict)
        extra = sd.pop("lorashear", None) or sd.pop("lhspg", None)
        super().load_state_dict(sd)
        if extra is not None:
            self.restore_schedule(extra)

    def restore_schedule(self, extra: Mapping[str, str]) -> None:
        """Take over the schedule of ``schedule_state()`` (refused, in one line, when another method or other
        settings wrote it)."""
        if extra.get("method", self.method) != self.method:
            raise LorashearError(f"checkpoint was written by method {extra['method']!r}, not {self.method!r}")
        hp = json.loads(extra["hp"])
        if hp != json.loads(json.dumps(self.hp)):
            raise LorashearError(f"checkpoint was written with other {self.method} settings: {hp} vs {self.hp}")
        self.sched = json.loads(extra["sched"])
        if self.sched.get("plan"):
            self._plan_obj = plan_from_dict(self.sched["plan"])
        self._masked_idx = None
        self._realized = None
        reconstruction = getattr(self, "reconstruction", None)
        if reconstruction is not None:  # the report lists the refits done before the checkpoint too
            reconstruction.restored(self.sched)
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
