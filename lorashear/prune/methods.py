"""The pruning methods of ``lorashear prune --method``: one registry for the CLI, the job kind and ``PruneSettings``.

Every method is the same run (``run.py``: data stream, plan, LoRA settings, step and token budget, compress,
``save_pruned``, report) with a different *optimizer* over the LoRA factors — a ``PruningOptimizer`` subclass that
zeroes units at its scheduled steps and holds them at zero — and, for the one-shot methods, scores computed on
the dense model before LoRA is added. What each does, and where it follows the published code: ``docs/baselines.md``.

* ``lhspg`` — LoRAShear's LHSPG (``lhspg.py``): saliency EMA during warm-up, progressive periods.
* ``llm-pruner`` — one-shot; Taylor importance (``knowledge.estimators.taylor``: element-wise first order,
  second order with the diagonal Fisher, or vector-wise; aggregated sum / prod / max / last) on
  ``calib_samples`` calibration windows (default 64; the paper's 10 is ``calib_samples=10``) cut from the training
  data, or sampled from the dense model itself with ``calib_data="self"``, scored in chunks of ``batch_size``;
  defaults to ``uniform`` allocation over every layer (the paper's layers 4–29 of 32 are
  ``layers="0.125:0.9375"``); then the run's recovery. The default method.
* ``loraprune`` — iterative; the LoRA-gradient criterion ``|Ĝ ⊙ W'|`` with ``Ĝ = s·(∇B·A + B·∇A − ∇B·∇A)``,
  normalised per module, summed per unit, EMA 0.9; masks every ``mask_every`` steps on a cubic schedule;
  ``uniform`` allocation by default (the code prunes per layer: module-normalised scores do not compare across
  groups of different sizes).
* ``flap`` — one-shot, training-free: fluctuation importance standardised per layer and kind, bias compensation
  (``flap.py``); ``steps=0`` reports it with no training at all.
* ``magnitude`` / ``random`` — one-shot by ‖W_u‖² / seeded uniform scores: the floors.

``--reconstruct bias|block`` (``reconstruct.py``) works with every method: ``prepare`` keeps a frozen dense copy and
the calibration windows before anything changes; a one-shot method refits right after its plan is applied (the
units are zeroed in ``setup``, before LoRA is added), LHSPG at each period end, LoRAPrune after its last mask update.
"""
from __future__ import annotations

import copy
import math
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import LorashearError
from ..groups import Group
from ..knowledge.scoring import ema_update, lora_taylor_units, unit_order
from .masked import PruningOptimizer
from .names import METHODS as NAMES, ONE_SHOT
from .plan import Plan, PlanSpec, candidate_groups, make_plan
from .reconstruct import Reference, describe, refit


@dataclass(frozen=True)
class Method:
    """A pruning method: its options and their defaults are declared on ``PruneSettings`` (``settings.py``)."""

    name: str
    summary: str
    prepare: Callable[[nn.Module, Any], dict] | None = None  # before tracing (FLAP: bias fields)
    setup: Callable[..., tuple[Plan, dict]] | None = None  # scores on the dense model -> plan (one-shot methods)
    optimizer: Callable[..., PruningOptimizer] | None = None


# ------------------------------------------------------------------------------------------ optimizers
class OneShot(PruningOptimizer):
    """All of the plan's units are zero from step 0 on; LoRA trains the survivors (recovery)."""

    def __init__(self, model: nn.Module, groups: Sequence[Group], spec: PlanSpec, plan: Plan, *, method: str,
                 lr: float = 2e-4, **kw: Any):
        super().__init__(model, groups, spec, lr=lr, plan=plan, hp={"method": method}, **kw)
        self.method = method
        self.mask(plan.removal, f"{method}: one-shot")

    def phase(self, step: int | None = None) -> str:
        return "recovery"

    @property
    def final_step(self) -> int:
        """The plan's units are zero from the start (``mask`` in ``__init__``): final from step 0."""
        return 0


class LoRAPrune(PruningOptimizer):
    """LoRAPrune's progressive pruning: ``warmup_steps`` of LoRA training with the importance EMA; the plan is
    fixed from the EMA at the end of warm-up (counts per group, the run's allocation); then every
    ``mask_every`` steps each group's masked count follows the cubic schedule
    ``n_g(t) = round(q_g · (1 − (1 − (t − t_w)/(t_e − t_w))³))`` toward its quota ``q_g``, taking its
    lowest-EMA unmasked units; the last update (``t_e``, all quotas met) is ``cooldown_steps`` before the end."""

    method = "loraprune"

    def __init__(self, model: nn.Module, groups: Sequence[Group], spec: PlanSpec, *, steps: int, warmup_steps: int,
                 cooldown_steps: int, mask_every: int = 10, ema: float = 0.9, lr: float = 2e-4, plan: Plan | None = None,
                 reconstruction: Reference | None = None, **kw: Any):
        for name, v, lo in (("steps", steps, 1), ("warmup_steps", warmup_steps, 0), ("cooldown_steps", cooldown_steps, 0),
                            ("mask_every", mask_every, 1)):
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise LorashearError(f"{name.replace('_', '-')} must be an integer >= {lo}, got {v!r}")
        if warmup_steps + cooldown_steps >= steps:
            raise LorashearError(f"loraprune needs warm-up {warmup_steps} + cool-down {cooldown_steps} < --steps {steps}")
        hp = dict(steps=steps, warmup_steps=warmup_steps, cooldown_steps=cooldown_steps, mask_every=mask_every, ema=float(ema))
        if reconstruction is not None:
            hp.update(reconstruct=reconstruction.mode, reconstruct_ridge=reconstruction.ridge)
        super().__init__(model, groups, spec, lr=lr, plan=plan, hp=hp, **kw)
        self.reconstruction = reconstruction
        from ..knowledge.slices import ParamIndex

        index = ParamIndex(model)
        self.score_slices = {g.id: [s for s in index.slices(g, ("producer", "consumer")) if s.lora is not None]
                             for g in self.cands}

    @property
    def last_update(self) -> int:
        return self.hp["steps"] - self.hp["cooldown_steps"] - 1

    @property
    def total_steps(self) -> int:
        return self.last_update + 1

    @property
    def final_step(self) -> int:
        """Every quota is met by the last mask update; the cooldown steps after it train the final structure."""
        return self.last_update + 1

    def update_steps(self) -> list[int]:
        tw, te, k = self.hp["warmup_steps"], self.last_update, self.hp["mask_every"]
        return sorted({t for t in range(tw + k, te, k)} | {te})

    def target_fraction(self, t: int) -> float:
        tw, te = self.hp["warmup_steps"], self.last_update
        if t < tw:
            return 0.0
        if t >= te:
            return 1.0
        return 1.0 - (1.0 - (t - tw) / (te - tw)) ** 3

    def phase(self, step: int | None = None) -> str:
        t = self.sched["step"] if step is None else step
        if t < self.hp["warmup_steps"]:
            return "warmup"
        return "pruning" if t <= self.last_update else "after"

    def boundary(self, step: int) -> bool:
        return step == self.last_update

    def _before(self, t: int) -> None:
        if t > self.last_update:
            return
        self._score()
        if t == self.hp["warmup_steps"] and self._plan_obj is None:
            scores = {gid: np.asarray(v) for gid, v in self.sched["scores"].items()}
            self._plan_obj = make_plan(self.model, self.groups, self.spec, scores,
                                       scores_from=f"LoRAPrune importance EMA after {t} warm-up steps")
            self.sched["plan"] = self._plan_obj.to_dict()
            self.sched["quota"] = {gid: len(u) for gid, u in self._plan_obj.removal.items()}
        if t in set(self.update_steps()):
            f = self.target_fraction(t)
            protected = {gid: set(u) for gid, u in self.spec.protected.items()}
            take: dict[str, list[int]] = {}
            for gid, q in self.sched["quota"].items():
                want = min(q, int(math.floor(q * f + 0.5)))
                have = set(self.sched["masked"].get(gid, []))
                if want <= len(have):
                    continue
                s = self.sched["scores"].get(gid, np.zeros(self.n_units[gid]))
                take[gid] = unit_order(s, exclude=have | protected.get(gid, set()))[: want - len(have)].tolist()
            if take:
                self.mask(take, f"mask update at {f:.3f} of the target")
            if t == self.last_update:
                if self.reconstruction is not None:  # the structure is final: refit its readers once
                    refit(self, self.reconstruction, when=f"after the last mask update (step {t})")
                    self.reconstruction.release()
                self._finish_plan()

    def _score(self) -> None:
        # producer and consumer slices, each module's vector L2-normalised before the sum (LoRAPrune's code)
        new = lora_taylor_units(self.score_slices, self.n_units, unbias=False, normalize=True)
        if new is not None:
            ema_update(self.sched["scores"], new, self.hp["ema"])


# ---------------------------------------------------------------------------------- reconstruction
_REFERENCES: "weakref.WeakKeyDictionary[nn.Module, Reference]" = weakref.WeakKeyDictionary()


def prepare_method(method: Method, model: nn.Module, st: Any, tok: Any) -> dict[str, Any]:
    """What a run does to the dense model before tracing: the method's ``prepare`` (FLAP: bias fields) and, with
    ``--reconstruct``, the dense reference (a frozen copy and the calibration windows, kept for the refits; bias
    mode first gives o_proj / down_proj a bias through the stock config flags, or refuses). Returns the run
    report's ``method_info`` entries."""
    out: dict[str, Any] = {}
    if method.prepare is not None:
        out["prepare"] = method.prepare(model, st)
    mode = getattr(st, "reconstruct", "none")
    if mode == "none":
        return out
    rec: dict[str, Any] = {"mode": mode, "ridge": st.reconstruct_ridge}
    if mode == "bias":
        rec["biases"] = _bias_fields(model, st)
    ids, info = _windows(model, tok, st, st.reconstruct_samples, "train")
    rec["calibration"] = info
    dense = copy.deepcopy(model).eval().requires_grad_(False)
    _REFERENCES[model] = Reference(dense, ids, mode, float(st.reconstruct_ridge), rec)
    out["reconstruct"] = rec
    return out


def _bias_fields(model: nn.Module, st: Any) -> dict:
    """Bias mode moves the bias of o_proj / down_proj: give them one through the config, or refuse in one line."""
    from .flap import add_biases

    kinds = [k for k in st.kinds if k in ("attention", "query_heads", "mlp")]
    added = add_biases(model, kinds)
    wanted = (("o_proj",) if {"attention", "query_heads"} & set(kinds) else ()) + (("down_proj",) if "mlp" in kinds else ())
    missing = [p for p, m in model.named_modules() if isinstance(m, nn.Linear) and p.rsplit(".", 1)[-1] in wanted
               and m.bias is None]
    if missing:
        raise LorashearError(f"--reconstruct bias needs a bias on {missing[0]} and the model's config cannot carry one "
                             f"({added['biases']}); use --reconstruct block")
    return added


def _reference_of(model: nn.Module) -> Reference | None:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _REFERENCES.get(base)


def _reconstructing(setup: Callable[..., tuple[Plan, dict]]) -> Callable[..., tuple[Plan, dict]]:
    """A one-shot ``setup`` followed, with ``--reconstruct``, by the plan's units zeroed on the dense model and the
    refit of their readers (once: the structure is final). ``OneShot`` masks the same units again (a no-op)."""
    def run(model, groups, spec, st, tok):
        plan, info = setup(model, groups, spec, st, tok)
        ref = _REFERENCES.pop(model, None)
        if ref is not None:
            from .units import unit_slices, zero_units

            zero_units(unit_slices(model, candidate_groups(groups, spec)), plan.removal)
            rep = ref.apply(model, groups, plan.removal, when="after the one-shot plan was applied")
            ref.release()
            info["reconstruct"] = {**ref.record, "result": describe(rep)}
        return plan, info
    run.__doc__ = setup.__doc__
    return run


# ---------------------------------------------------------------------------------- one-shot scoring
def _calibration(model: nn.Module, tok: Any, st: Any) -> tuple[torch.Tensor, dict]:
    return _windows(model, tok, st, st.calib_samples, st.calib_data)


def _windows(model: nn.Module, tok: Any, st: Any, n: int, where: str) -> tuple[torch.Tensor, dict]:
    """``n`` calibration windows of ``st.seq_len`` tokens: ``self`` sampled from the (dense) model, ``train`` cut
    from the training files — ``--data self`` among them is left out, and with no file left the windows are the
    model's samples, as the training text is."""
    from ..data import file_specs
    from ..knowledge.calibration import calibration_data, self_generated

    files = file_specs(st.data)
    if where == "self" or not files:
        return self_generated(model, tok, n_samples=n, seq_len=st.seq_len, seed=st.seed,
                              batch_size=16)  # no-grad sampling with a KV cache: 16 rows bound its memory
    return calibration_data(tok, files, n_samples=n, seq_len=st.seq_len, seed=st.seed, model=model, split="train")


def _plan(model, groups, spec, scores, source) -> Plan:
    return make_plan(model, groups, spec, scores, scores_from=source)


def _setup_llm_pruner(model, groups, spec, st, tok):
    from ..knowledge.estimators import taylor

    samples, info = _calibration(model, tok, st)
    cands = candidate_groups(groups, spec)
    # in chunks of the training batch: the gradient of the mean is summed chunk by chunk, so memory stays that of
    # a training step however many windows are scored (64 windows as one batch peaked at 2.2x a training step)
    sc = taylor(model, cands, samples, variant=st.taylor_variant, aggregate=st.aggregate, kinds=spec.kinds,
                batch_size=st.batch_size)
    plan = _plan(model, groups, spec, sc.units, f"LLM-Pruner Taylor ({st.taylor_variant}, {st.aggregate}) on "
                 f"{info['n_samples']} × {info['seq_len']} calibration tokens in batches of {st.batch_size}, "
                 f"dense model")
    return plan, {"calibration": info, "calibration_tokens": info["tokens"], "calibration_loss": sc.notes.get("base_loss")}


def _setup_magnitude(model, groups, spec, st, tok):
    from ..knowledge.estimators import magnitude

    cands = candidate_groups(groups, spec)
    scores = magnitude(model, cands, kinds=spec.kinds).units  # squared norms: they add up over parameters
    return _plan(model, groups, spec, scores, "weight magnitude ‖x_u‖² of the dense model"), {}


def _setup_random(model, groups, spec, st, tok):
    rng = np.random.default_rng(st.seed)
    cands = sorted(candidate_groups(groups, spec), key=lambda g: g.id)
    scores = {g.id: rng.random(g.n_units) for g in cands}
    return _plan(model, groups, spec, scores, f"uniform random scores (seed {st.seed})"), {}


def _prepare_flap(model, st) -> dict:
    from .flap import add_biases

    if not st.bias_compensation:
        return {"biases": "none added: bias compensation off", "params_added": 0}
    return add_biases(model, st.kinds)


def _setup_flap(model, groups, spec, st, tok):
    from . import flap

    samples, info = _calibration(model, tok, st)
    cands = candidate_groups(groups, spec)
    raw, z, stats = flap.fluctuation(model, cands, samples)
    plan = _plan(model, groups, spec, flap.plan_scores(cands, z),
                 f"FLAP fluctuation (WIFV, standardised per layer and kind) on {info['n_samples']} × {info['seq_len']} calibration tokens")
    out = {"calibration": info, "calibration_tokens": info["tokens"]}
    if st.bias_compensation:
        out["bias_compensation"] = flap.compensate(cands, plan.removal, stats)
    return plan, out


def _opt_lhspg(peft_model, groups, spec, st, plan):
    from .lhspg import LHSPG

    return LHSPG(peft_model, groups, spec, warmup_steps=st.warmup_steps, periods=st.periods, period_steps=st.period_steps,
                 lr=st.lr, epsilon=st.epsilon, saliency=st.saliency, score_every=st.score_every,
                 merge_survivors=st.merge_survivors, reconstruction=_reference_of(peft_model))


def _opt_loraprune(peft_model, groups, spec, st, plan):
    return LoRAPrune(peft_model, groups, spec, steps=st.steps, warmup_steps=st.warmup_steps,
                     cooldown_steps=st.cooldown_steps, mask_every=st.mask_every, lr=st.lr,
                     reconstruction=_reference_of(peft_model))


def _opt_one_shot(name: str):
    def make(peft_model, groups, spec, st, plan):
        return OneShot(peft_model, groups, spec, plan, method=name, lr=st.lr)
    return make


REGISTRY: dict[str, Method] = {m.name: m for m in (
    Method("lhspg", "LoRAShear's LHSPG: saliency warm-up, progressive periods with half-space projection",
           optimizer=_opt_lhspg),
    Method("llm-pruner", "LLM-Pruner: one-shot Taylor importance on calibration samples, then LoRA recovery",
           setup=_reconstructing(_setup_llm_pruner), optimizer=_opt_one_shot("llm-pruner")),
    Method("loraprune", "LoRAPrune: LoRA-gradient importance EMA, cubic mask schedule during LoRA training",
           optimizer=_opt_loraprune),
    Method("flap", "FLAP: fluctuation importance and bias compensation, training-free (then LoRA unless --steps 0)",
           prepare=_prepare_flap, setup=_reconstructing(_setup_flap), optimizer=_opt_one_shot("flap")),
    Method("magnitude", "one-shot by weight magnitude ‖W_u‖², then LoRA recovery (a floor)",
           setup=_reconstructing(_setup_magnitude), optimizer=_opt_one_shot("magnitude")),
    Method("random", "one-shot by seeded random scores, then LoRA recovery (a floor)",
           setup=_reconstructing(_setup_random), optimizer=_opt_one_shot("random")),
)}
METHODS = tuple(REGISTRY)
assert METHODS == NAMES and tuple(m for m, v in REGISTRY.items() if v.setup is not None) == ONE_SHOT


def get_method(name: str) -> Method:
    m = REGISTRY.get(name)
    if m is None:
        raise LorashearError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return m
