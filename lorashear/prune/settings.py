"""The one spelling of a plan request and of a prune request (``lorashear plan`` / ``lorashear prune``, the
``prune`` job kind, the app's Prune tab and Jobs form): every field with its type, default, range, help and the
methods it applies to. The CLI flags, the job parameters and the form are generated from these classes
(``lorashear.settings``); validation runs here, once, and every error names its field.

Method defaults live on the fields (``method_defaults``), so the plan preview resolves them exactly as the run
does (llm-pruner's uniform allocation, for instance). Torch-free: the CLI imports it for ``--help``.

The defaults are the recipe chosen on a held-out source on SmolLM2-135M (docs/lhspg.md, three seeds): llm-pruner
(one-shot first-order Taylor) over MLP channels, uniform over all decoder layers, distillation from the corrected
teacher, and ``train="auto"`` — every parameter trains once the structure is final on a model of at most 0.5 B
parameters (:func:`train_mode`), LoRA above. Full training tied LoRA within one std on the held-out source and was
24 % lower on the training sources; the rule written before the third seed's rows makes it the default on such a tie.
The one-shot plan scores 64 calibration windows (LLM-Pruner's paper: 10); 64 was lower on every seed
(docs/lhspg.md, "Issue 22: 64 calibration windows").
Every method gets the same recovery recipe by default, so a comparison isolates the choice of units;
``method="lhspg"`` is LoRAShear's own algorithm.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..settings import (device_option, distill_errors, distill_options, eval_options, SettingsError, check,
                        fill_method_defaults, lr_schedule_option, option, options, to_params)
from .names import METHODS, ONE_SHOT, PLAN_KINDS

ALLOCATIONS = ("global", "uniform")
GAMMA_LEVELS = ("unit", "layer", "group")
SALIENCIES = ("lora-taylor", "magnitude")
TAYLOR_VARIANTS = ("first", "second", "vector")
AGGREGATIONS = ("sum", "prod", "max", "last")
CALIB_DATA = ("train", "self")  # knowledge/calibration.py: calibration_data / self_generated
# recover.settings.TRAIN_MODES has lora and full only; prune adds auto, resolved once the model is loaded
# (``train_mode``: full for a model of at most FULL_TRAIN_MAX_PARAMS parameters when steps follow the final structure)
TRAIN_MODES = ("auto", "lora", "full")
FULL_TRAIN_MAX_PARAMS = 500_000_000
RECONSTRUCT_MODES = ("none", "bias", "block")  # prune/reconstruct.py MODES (torch-free here)


def check_layer_range(text: str | None) -> str | None:
    """The syntax of a layer range (``4:30`` indices, ``0.1:0.9`` fractions); the model resolves it."""
    if text is None:
        return None
    a, sep, b = text.partition(":")
    if not sep:
        return "expected START:STOP, e.g. 4:30 or 0.1:0.9"
    try:
        [float(x) for x in (a, b) if x.strip()]
    except ValueError:
        return "START and STOP must be numbers"
    return None


@dataclass
class PlanSettings:
    """Which units go: what ``lorashear plan`` and the app's preview compute, and the first half of a prune run."""

    ratio: float = option(0.2, "fraction of the model's parameters to remove", label="Target ratio of parameters to remove",
                          type="float", min=0.0, max=1.0, open_min=True, open_max=True, required=True)
    method: str = option("llm-pruner", "pruning method: llm-pruner (one-shot first-order Taylor: the default; on SmolLM2-135M "
                         "lowest on the training sources, tied with lhspg on a held-out one, docs/lhspg.md), lhspg (LoRAShear's own: progressive, on LoRA "
                         "saliency), or another baseline on the same groups and budget (docs/baselines.md)",
                         type="choice", choices=METHODS, label="Method")
    kinds: tuple[str, ...] = option(("mlp",), "group kinds that may be pruned: attention (whole kv heads with "
                                    "their queries), query_heads (GQA: the i-th query head of every kv group), mlp "
                                    "(channels), hidden (the residual width); mlp alone by default: measured on "
                                    "SmolLM2-135M, pruning whole kv heads (a third of a layer's attention there) "
                                    "cost more than MLP channels", type="list", choices=PLAN_KINDS,
                                    label="Group kinds")
    allocation: str | None = option(None, "global: one ranking across layers; uniform: the same fraction of every layer",
                                    type="choice", choices=ALLOCATIONS, label="Allocation",
                                    method_defaults={"llm-pruner": "uniform", "loraprune": "uniform"},
                                    none_text="the method's: uniform for llm-pruner and loraprune, else global")
    layers: str | None = option(None, "only prune these decoder layers, START:STOP (indices, e.g. 4:30, or fractions, "
                                "e.g. 0.1:0.9; LLM-Pruner's paper: 0.125:0.9375)", label="Layer range",
                                metavar="START:STOP", none_text="all layers")
    align: int | None = option(None, "keep every pruned width a multiple of N", type="int", min=1,
                               label="Align widths to a multiple of", none_text="no alignment")
    knowledge: str | None = option(None, "knowledge report (lorashear analyze) of this model: protect its top γ",
                                   type="file", label="Knowledge report", metavar="REPORT")
    gamma: float | None = option(None, "protect the top GAMMA fraction of the report (needs a knowledge report)",
                                 type="float", min=0.0, max=1.0, open_max=True, label="γ: protect the top fraction")
    gamma_level: str = option("group", "γ counts node groups (one layer's attention or MLP: the paper's), layers, or units",
                              type="choice", choices=GAMMA_LEVELS, label="γ counts")

    def __post_init__(self) -> None:
        check(self, _cross)
        fill_method_defaults(self)
        if self.allocation is None:
            self.allocation = "global"

    def to_dict(self) -> dict:
        return to_params(self)

    def plan_args(self) -> dict[str, Any]:
        """The planner's inputs (``prune.preview.plan_model`` keywords), method defaults resolved as the run does."""
        return {k: getattr(self, k) for k in options(PlanSettings) if k != "method"}


def _cross(st: Any) -> dict[str, str]:
    errors: dict[str, str] = {}
    if not st.kinds:
        errors["kinds"] = f"choose at least one group kind ({', '.join(PLAN_KINDS)})"
    if st.gamma is not None and not st.knowledge:
        errors["gamma"] = "γ needs a knowledge report (--knowledge REPORT)"
    bad = check_layer_range(st.layers)
    if bad:
        errors["layers"] = f"layer range {st.layers!r}: {bad}"
    return errors


@dataclass
class PruneSettings(PlanSettings):
    """Everything that defines a run (``run.json``); two runs with equal settings give equal weights on CPU."""

    steps: int = option(200, "optimizer steps in all: warm-up, periods and after; 0 (no training) only for one-shot "
                        f"methods ({', '.join(ONE_SHOT)})", type="int", min=0, max=10_000_000, label="Optimizer steps (in all)")
    # --- lhspg (warmup_steps also loraprune); None = not given, resolved from steps in __post_init__
    warmup_steps: int | None = option(None, "LoRA warm-up steps", type="int", min=0, methods=("lhspg", "loraprune"),
                                      none_text="10% of the steps", form=False)
    periods: int | None = option(None, "pruning periods", type="int", min=1, methods=("lhspg",),
                                 method_defaults={"lhspg": 4}, none_text="4", form=False)
    period_steps: int | None = option(None, "steps per period", type="int", min=1, methods=("lhspg",),
                                      none_text="30% of the steps over the periods", form=False)
    batch_size: int = option(4, "sequences per optimizer step", type="int", min=1, max=4096, label="Batch size")
    seq_len: int = option(128, "tokens per sequence", type="int", min=2, max=1_000_000, label="Tokens per sequence")
    lora_r: int = option(8, "LoRA rank", type="int", min=1, form=False)
    lora_alpha: float = option(16.0, "LoRA alpha", type="float", min=0.0, open_min=True, form=False)
    lora_targets: str = option("all-linear", "all-linear (every linear projection) or comma-separated module names", form=False)
    lr: float = option(2e-4, "learning rate", type="float", min=0.0, open_min=True, label="Learning rate")
    lr_schedule: str = lr_schedule_option("--lr until the structure is final, then a cosine decay to 0 over the steps "
                                          "after it. The corrected teacher (= the dense + same LoRA budget reference) "
                                          "keeps a constant lr: decayed, it was worse on SmolLM2 (docs/lhspg.md); the "
                                          "dense full-training reference decays like the run")
    train: str = option("auto", "lora: LoRA adapters throughout; full: from the step the structure is final (after "
                        "LHSPG's last period, LoRAPrune's last mask update, step 0 for one-shot methods) merge LoRA "
                        "and train every parameter with AdamW at --lr, removed units held at zero (for small models); "
                        "auto: full for a model of at most 0.5 B parameters when steps follow the final structure, "
                        "else lora (the report says which and why). auto is the default: on SmolLM2-135M full training "
                        "was 24 % lower than lora on the training sources and tied within one std on a held-out one "
                        "(docs/lhspg.md)",
                        type="choice", choices=TRAIN_MODES, label="Training after the structure is final")
    epsilon: float | None = option(None, "half-space projection threshold ε", type="float", min=0.0, max=1.0,
                                   open_max=True, methods=("lhspg",), method_defaults={"lhspg": 0.0}, none_text="0",
                                   label="Half-space ε")
    saliency: str | None = option(None, "LHSPG's per-unit saliency", type="choice", choices=SALIENCIES,
                                  methods=("lhspg",), method_defaults={"lhspg": "lora-taylor"}, none_text="lora-taylor",
                                  form=False)
    score_every: int | None = option(None, "update the saliency EMA every N steps", type="int", min=1, methods=("lhspg",),
                                     method_defaults={"lhspg": 1}, none_text="1", form=False)
    merge_survivors: bool | None = option(None, "do not merge B·A into the surviving groups' weights at period ends",
                                          type="bool", flag="--no-merge-survivors", methods=("lhspg",),
                                          method_defaults={"lhspg": True}, form=False)
    # --- llm-pruner / flap / loraprune
    taylor_variant: str | None = option(None, "Taylor importance: first (|W·∇W|), second (|W·∇W − ½·W·H·W|), vector (|Σ W·∇W|)",
                                        type="choice", choices=TAYLOR_VARIANTS, methods=("llm-pruner",),
                                        method_defaults={"llm-pruner": "first"}, none_text="first", form=False)
    aggregate: str | None = option(None, "per-unit aggregation of the slices' scores", type="choice", choices=AGGREGATIONS,
                                   methods=("llm-pruner",), method_defaults={"llm-pruner": "sum"}, none_text="sum", form=False)
    calib_samples: int | None = option(None, "calibration windows of --seq-len tokens", type="int", min=1,
                                       methods=("llm-pruner", "flap"), method_defaults={"llm-pruner": 64, "flap": 128},
                                       none_text="llm-pruner 64, flap 128", form=False)
    calib_data: str | None = option(None, "where the calibration windows come from: train (cut from --data) or self "
                                    "(sampled from the dense model itself, for a user without data; on SmolLM2-135M "
                                    "it was worse than train, also held out: docs/lhspg.md)", type="choice",
                                    choices=CALIB_DATA, methods=("llm-pruner", "flap"),
                                    method_defaults={"llm-pruner": "train", "flap": "train"}, none_text="train",
                                    form=False)
    mask_every: int | None = option(None, "steps between mask updates", type="int", min=1, methods=("loraprune",),
                                    method_defaults={"loraprune": 10}, none_text="10", form=False)
    cooldown_steps: int | None = option(None, "steps after the last mask update", type="int", min=0,
                                        methods=("loraprune",), none_text="10% of the steps", form=False)
    bias_compensation: bool | None = option(None, "no bias compensation of the removed units' mean contribution",
                                            type="bool", flag="--no-bias-compensation", methods=("flap",),
                                            method_defaults={"flap": True}, form=False)
    reconstruct: str = option("none", "after the structure is fixed (each LHSPG period end, LoRAPrune's last mask update, once for one-shot methods), "
                              "refit what reads the removed units to the dense model's block outputs on calibration "
                              "tokens: none; bias (output-bias mean compensation); block (ridge least squares of o_proj / "
                              "down_proj over the kept inputs)", type="choice", choices=RECONSTRUCT_MODES,
                              label="Block reconstruction")
    reconstruct_samples: int = option(64, "calibration windows of --seq-len training tokens for --reconstruct", type="int",
                                      min=1, form=False)
    reconstruct_ridge: float = option(1e-3, "ridge λ of --reconstruct block, relative to the mean diagonal of XᵀX",
                                      type="float", min=0.0, form=False)
    distill: float
    teacher: str | None
    pure_kd: bool
    kd_temperature: float
    kd_top_k: int | None
    # not given: 1.0 when the run trains (resolved in _cross_prune, before the teacher is)
    distill, teacher, pure_kd, kd_temperature, kd_top_k = distill_options(
        None, "1.0 (distil from the corrected teacher) when --steps > 0, else 0")  # docs/lhspg.md "Distillation"
    data: tuple[str, ...] = option(("demo",), "training text: demo (train split), [NAME=]PATH, or self (text "
                                   "sampled from the dense model, a source beside the others)", type="list",
                                   repeat=True, label="Training data")
    eval_data: tuple[str, ...] = option(("demo",), "evaluation text (default: demo, validation split)", type="list",
                                        repeat=True, form=False)
    eval_tokens: int | None
    eval_protocols: tuple[str, ...]
    eval_tokens, eval_protocols = eval_options("tokens per evaluation source (before and after)")
    seed: int = option(0, "seed of the data order, LoRA init and scores", type="int", min=0, label="Seed")
    device: str | None = device_option()
    checkpoint_every: int = option(50, "steps between checkpoints", type="int", min=1, form=False)
    measure_latency: bool = option(True, "skip the dense/pruned latency measurement", type="bool", flag="--no-latency",
                                   form=False)

    def __post_init__(self) -> None:
        if self.device == "auto":
            self.device = None
        check(self, _cross_prune)
        fill_method_defaults(self)
        if self.allocation is None:
            self.allocation = "global"
        if self.method == "lhspg":
            w = self.warmup_steps if self.warmup_steps is not None else self.steps // 10
            ps = self.period_steps if self.period_steps is not None else max(1, (self.steps * 3 // 10) // self.periods)
            self.warmup_steps, self.period_steps = w, ps
        elif self.method == "loraprune":
            self.warmup_steps = self.warmup_steps if self.warmup_steps is not None else self.steps // 10
            self.cooldown_steps = self.cooldown_steps if self.cooldown_steps is not None else self.steps // 10
        errors = _schedule(self)  # the resolved schedule must fit the step budget
        if errors:
            raise SettingsError(errors)

    def replace(self, **changes: Any) -> "PruneSettings":
        return replace(self, **changes)

    def final_step(self) -> int | None:
        """The step from which the structure no longer changes (the zero set is the plan's): after LHSPG's last
        period, after LoRAPrune's last mask update, 0 for the one-shot methods (their plan is applied in setup);
        ``None`` for a method that does not say. ``--train full`` trains every parameter from here; the run checks
        that the method's optimizer says the same (``PruningOptimizer.final_step``)."""
        if self.method == "lhspg":
            return self.warmup_steps + self.periods * self.period_steps
        if self.method == "loraprune":
            return self.steps - self.cooldown_steps
        return 0 if self.method in ONE_SHOT else None


def _cross_prune(st: Any) -> dict[str, str]:
    errors = _cross(st)
    if st.steps == 0 and st.method not in ONE_SHOT:
        errors["steps"] = f"0 steps (no training) only for one-shot methods ({', '.join(ONE_SHOT)}); {st.method} prunes while training"
    if st.distill is None:  # not given: distil from the corrected teacher whenever the run trains
        st.distill = 1.0 if st.steps > 0 else 0.0
    errors.update(distill_errors(st))
    if st.distill > 0 and st.steps == 0:
        errors["distill"] = "distillation trains the model: give --steps > 0"
    return errors


def _schedule(st: Any) -> dict[str, str]:
    if st.method == "lhspg":
        need = st.warmup_steps + st.periods * st.period_steps
        if need > st.steps:
            return {"steps": f"the schedule needs {st.warmup_steps} warm-up + {st.periods} × {st.period_steps} period "
                             f"steps = {need} steps, more than {st.steps}"}
    if st.method == "loraprune" and st.warmup_steps + st.cooldown_steps >= st.steps:
        return {"steps": f"loraprune needs warmup-steps {st.warmup_steps} + cooldown-steps {st.cooldown_steps} < steps {st.steps}"}
    if st.lr_schedule != "constant" and (st.final_step() is None or st.final_step() >= st.steps):
        return {"lr_schedule": f"--lr-schedule {st.lr_schedule} decays the steps after the structure is final, and "
                               + (f"{st.method} does not say when that is" if st.final_step() is None
                                  else f"--steps {st.steps} leaves none after step {st.final_step()}")
                               + ": give more --steps, or --lr-schedule constant"}
    if st.train == "full" and st.final_step() is None:
        return {"train": f"--train full: {st.method} does not say when its structure is final; use --train lora"}
    if st.train == "full" and st.final_step() >= st.steps:  # an empty full phase would silently train nothing
        if st.method in ONE_SHOT:
            return {"train": "--train full trains the pruned model after the one-shot plan: give --steps > 0"}
        where = (f"after warm-up {st.warmup_steps} + {st.periods} × {st.period_steps} period steps" if st.method == "lhspg"
                 else f"after the last mask update, {st.cooldown_steps} cooldown-steps before the end")
        return {"train": f"--train full trains only once the structure is final ({where} = step {st.final_step()}), "
                         f"and --steps {st.steps} leaves no step after it: give more --steps, or --train lora"}
    return {}


def method_options(method: str) -> tuple[str, ...]:
    """The settings that apply to ``method`` only (its own options)."""
    return tuple(n for n, (o, _) in options(PruneSettings).items() if method in o.methods)


def train_mode(st: Any, n_params: int) -> tuple[str, str]:
    """What a run with settings ``st`` on a model of ``n_params`` parameters trains after its structure is final:
    ("full" | "lora", one line saying why). ``train="auto"``: full when the model has at most 0.5 B parameters
    and the schedule leaves steps after the structure is final, else lora; lora and full are taken as asked."""
    if st.train != "auto":
        return st.train, f"{st.train} (--train {st.train})"
    size = f"{_count(n_params)} parameters"
    final = st.final_step()
    if n_params > FULL_TRAIN_MAX_PARAMS:
        return "lora", f"auto: lora — {size} > {_count(FULL_TRAIN_MAX_PARAMS)}"
    if final is None:
        return "lora", f"auto: lora — {st.method} does not say when its structure is final"
    if final >= st.steps:
        return "lora", f"auto: lora — no step after the structure is final (step {final} of {st.steps})"
    return "full", (f"auto: full — {size} ≤ {_count(FULL_TRAIN_MAX_PARAMS)} and {st.steps - final} steps after the "
                    "structure is final")


def _count(n: int) -> str:
    """134.5 M, 0.5 B, 12,345."""
    if n >= 100_000_000:
        return f"{n / 1e9:.4g} B" if n >= 1e9 or n % 100_000_000 == 0 else f"{n / 1e6:.1f} M"
    return f"{n / 1e6:.1f} M" if n >= 1_000_000 else f"{n:,}"
