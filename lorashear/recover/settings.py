"""The one spelling of a recovery request (``lorashear recover``, the ``recover`` job kind and the app's form):
every field with its type, default, range and help; the CLI flags and the job's form are generated from it
(``lorashear.settings``) and validation runs here, once, naming the field. Torch-free (the CLI's ``--help``)."""
from __future__ import annotations

from dataclasses import dataclass

from ..settings import (device_option, distill_errors, distill_options, eval_options, check, lr_schedule_option, option,
                        to_params)

MIXTURES = ("dynamic", "static")
TRAIN_MODES = ("lora", "full")


@dataclass
class RecoverSettings:
    """Everything that defines a recovery run (``run.json``)."""

    data: tuple[str, ...] = option(("demo",), "sources with train and validation splits: demo, or NAME=PATH (train)",
                                   type="list", repeat=True, label="Sources")
    val_data: tuple[str, ...] = option((), "validation text of a NAME=PATH source", type="list", repeat=True,
                                       flag="--val", metavar="NAME=PATH", form=False)
    mixture: str = option("dynamic", "dynamic: weights follow the per-source deviation from dense; static: uniform weights",
                          type="choice", choices=MIXTURES, label="Mixture")
    eta: float = option(1.0, "temperature η of the weight update", type="float", min=0.0, max=100.0, label="Temperature η")
    floor: float = option(0.1, "share c of the mixture spread evenly over all sources", type="float", min=0.0, max=1.0,
                          label="Floor c")
    tokens: int = option(200 * 4 * 128, "stage-1 token budget (never exceeded)", type="int", min=1,
                         label="Stage-1 token budget")
    round_steps: int = option(25, "optimizer steps per round", type="int", min=1, label="Steps per round")
    stop_deviation: float | None = option(None, "stop when every source's loss is within this many nats of dense",
                                          type="float", min=0.0, form=False, none_text="run the whole budget")
    val_tokens: int = option(8192, "validation tokens per source for each round's loss", type="int", min=1, form=False)
    batch_size: int = option(4, "sequences per optimizer step", type="int", min=1, max=4096, form=False)
    seq_len: int = option(128, "tokens per sequence", type="int", min=2, max=1_000_000, form=False)
    instructions: str | None = option("demo", "Alpaca-format instructions for stage 2: demo, a path, or none",
                                      label="Instructions (stage 2)")
    instruct_steps: int = option(100, "stage-2 steps (0 skips stage 2)", type="int", min=0, label="Instruction steps")
    instruct_eval_every: int = option(20, "steps between stage-2 validations", type="int", min=1, form=False)
    instruct_patience: int = option(2, "validations without improvement before stage 2 stops", type="int", min=1,
                                    form=False)
    instruct_max_length: int = option(256, "tokens per instruction example", type="int", min=1, cli=False, form=False)
    instruct_val_examples: int = option(64, "instruction examples held out for validation", type="int", min=1,
                                        cli=False, form=False)
    lora_r: int = option(8, "LoRA rank", type="int", min=1, form=False)
    lora_alpha: float = option(16.0, "LoRA alpha", type="float", min=0.0, open_min=True, form=False)
    lora_targets: str = option("all-linear", "all-linear or comma-separated module names", cli=False, form=False)
    lr: float = option(2e-4, "learning rate", type="float", min=0.0, open_min=True, form=False)
    lr_schedule: str = lr_schedule_option("a cosine decay from --lr to 0 over the stage-1 token budget; stage 2 "
                                          "trains at --lr, and the corrected teacher at a constant --lr")
    train: str = option("lora", "lora: LoRA adapters, merged at the end; full: every parameter of the pruned model "
                        "(AdamW, same schedule and lr; for small models)", type="choice", choices=TRAIN_MODES,
                        label="Training")
    distill: float
    teacher: str | None
    pure_kd: bool
    kd_temperature: float
    kd_top_k: int | None
    distill, teacher, pure_kd, kd_temperature, kd_top_k = distill_options()  # stage 1 only; docs/recovery.md
    eval_tokens: int | None
    eval_protocols: tuple[str, ...]
    eval_tokens, eval_protocols = eval_options("tokens per source for the before/after perplexity")
    seed: int = option(0, "seed of the data order and LoRA init", type="int", min=0, label="Seed")
    device: str | None = device_option()

    def __post_init__(self) -> None:
        if self.device == "auto":
            self.device = None
        if isinstance(self.instructions, str) and self.instructions.strip().lower() == "none":
            self.instructions = None
        check(self, _cross)

    def to_dict(self) -> dict:
        return to_params(self)


def _cross(st: RecoverSettings) -> dict[str, str]:
    errors = distill_errors(st)
    if st.tokens < st.batch_size * st.seq_len:
        errors["tokens"] = f"token budget {st.tokens} is smaller than one batch ({st.batch_size} × {st.seq_len})"
    return errors
