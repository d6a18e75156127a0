"""The one spelling of a knowledge-analysis request (``lorashear analyze``, the ``analyze`` job kind and its form):
every field with its type, default, range, help and the estimators it applies to; the CLI flags and the form are
generated from it (``lorashear.settings``) and validation runs here, once, naming the field. Torch-free."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..settings import device_option, check, option, to_params

ESTIMATOR_NAMES = ("lora-taylor", "ablation", "taylor", "magnitude")
VARIANTS = ("first", "second", "vector")
AGGREGATES = ("sum", "prod", "max", "last")
LEVELS = ("unit", "layer", "group")


def parse_bins(text: str | None) -> dict[str, int] | None:
    """``attention=1,mlp=16`` → {kind: units per ablated block}; ValueError with a one-line message."""
    if text is None:
        return None
    bins = {}
    for part in text.split(","):
        kind, _, n = part.partition("=")
        if not kind.strip() or not n.strip().isdigit() or int(n) < 1:
            raise ValueError(f"expected KIND=N with N >= 1 (e.g. mlp=16), got {part!r}")
        bins[kind.strip()] = int(n)
    return bins


@dataclass
class AnalyzeSettings:
    """Everything that defines one knowledge analysis (the report's provenance)."""

    SELECTOR: ClassVar[str] = "estimator"  # estimator-specific options name the estimators they apply to

    estimator: str = option("lora-taylor", "ablation: measured loss increase (ground truth, slow); lora-taylor: "
                            "LoRAPrune's estimate from LoRA gradients (memory-light); taylor: LLM-Pruner's Taylor scores "
                            "(base-weight gradients); magnitude: squared weight norm (no data)", type="choice",
                            choices=ESTIMATOR_NAMES, label="Estimator")
    data: tuple[str, ...] = option(("demo",), "calibration text: demo (demo corpus, validation split), demo:test, or "
                                   "[NAME=]PATH; samples are split evenly over the sources", type="list", repeat=True,
                                   label="Calibration data")
    field: str = option("text", "record field holding the text", form=False)
    samples: int = option(16, "calibration windows", type="int", min=1, max=100_000, label="Calibration windows")
    seq_len: int = option(128, "tokens per calibration window", type="int", min=2, max=1_000_000, label="Tokens per window")
    seed: int = option(0, "seed of the calibration windows and of fresh LoRA adapters", type="int", min=0, label="Seed")
    batch_size: int | None = option(None, "windows per forward", type="int", min=1, none_text="all at once", form=False)
    variant: str | None = option(None, "first (|W·∇W|), second (|W·∇W − ½·W·H·W|) or vector (|Σ W·∇W|)",
                                 type="choice", choices=VARIANTS, methods=("taylor",), none_text="first", form=False)
    aggregate: str | None = option(None, "combine a unit's slices by sum, prod, max or last", type="choice",
                                   choices=AGGREGATES, methods=("taylor", "lora-taylor"), none_text="sum", form=False)
    rank: int | None = option(None, "rank of the fresh LoRA adapters", type="int", min=1, methods=("lora-taylor",),
                              none_text="8", form=False)
    alpha: float | None = option(None, "LoRA alpha of the fresh adapters", type="float", min=0.0, open_min=True,
                                 methods=("lora-taylor",), none_text="16", form=False)
    bins: str | None = option(None, "units per ablated block, e.g. attention=1,mlp=16,hidden=16", metavar="KIND=N,...",
                              methods=("ablation",), none_text="attention=1,mlp=16,hidden=16", form=False)
    whole_groups: bool = option(True, "skip zeroing each layer's whole attention / MLP", type="bool",
                                flag="--no-whole-groups", form=False)
    gamma: float | None = option(None, "mark the top GAMMA fraction unprunable", type="float", min=0.0, max=1.0,
                                 open_max=True, label="γ: mark the top fraction unprunable", none_text="mark nothing")
    select: str = option("group", "what γ counts: node groups (one layer's attention or MLP: the paper's), layers or "
                         "units", type="choice", choices=LEVELS, label="γ counts")
    scope: str = option("global", "units: rank across all groups or within each group", type="choice",
                        choices=("global", "group"), label="Units ranked")
    by: str = option("density", "rank by score per parameter (density) or by score", type="choice",
                     choices=("density", "score"), label="Rank by")
    device: str | None = device_option()

    def __post_init__(self) -> None:
        if self.device == "auto":
            self.device = None
        check(self, _cross)

    def to_dict(self) -> dict:
        return to_params(self)

    def estimator_options(self) -> dict[str, Any]:
        """Keyword options of ``knowledge.analyze`` / ``run_estimator`` that this request sets."""
        out: dict[str, Any] = {k: getattr(self, k) for k in ("variant", "aggregate", "rank", "alpha")
                               if getattr(self, k) is not None}
        if self.bins is not None:
            out["bins"] = parse_bins(self.bins)
        if not self.whole_groups:
            out["whole_groups"] = False
        if self.batch_size is not None and self.estimator != "magnitude":
            out["batch_size"] = self.batch_size
        if self.estimator == "lora-taylor":
            out["seed"] = self.seed
        return out


def _cross(st: AnalyzeSettings) -> dict[str, str]:
    errors = {}
    try:
        parse_bins(st.bins)
    except ValueError as exc:
        errors["bins"] = str(exc)
    if not st.whole_groups and st.estimator != "ablation":
        errors["whole_groups"] = f"does not apply to estimator {st.estimator} (it applies to: ablation)"
    return errors
