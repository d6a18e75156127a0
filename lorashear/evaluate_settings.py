"""The one spelling of an evaluation request (``lorashear eval``, the ``eval`` job kind and its form): every field with
its type, default, range and help; the CLI flags and the form are generated from it (``lorashear.settings``) and
validation runs here, once, naming the field. Torch-free (the CLI's ``--help``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .settings import device_option, check, option, to_params

PROTOCOL_CHOICES = ("short", "long", "both")


@dataclass
class EvalSettings:
    """What to evaluate a model on, and how."""

    data: tuple[str, ...] = option(("demo",), "evaluation text: demo (demo corpus, validation split), demo:test, or "
                                   "[NAME=]PATH (.jsonl/.json/.parquet/.csv/.txt[.gz], a saved dataset folder, or a hub "
                                   "name when online)", type="list", repeat=True, label="Data sources")
    field: str = option("text", "record field holding the text", form=False)
    protocol: str = option("both", "short: 128-token windows (LLM-Pruner); long: min(2048, context) windows (Wanda); both",
                           type="choice", choices=PROTOCOL_CHOICES, label="Perplexity protocol")
    max_tokens: int | None = option(None, "score only the first N tokens of each source", type="int", min=2,
                                    label="Max tokens per source", none_text="all")
    cost: bool = option(True, "skip parameters/MACs/latency/throughput/memory", type="bool", flag="--no-cost",
                        label="Measure cost (parameters, MACs, latency, throughput)")
    threads: int | None = option(None, "torch's CPU threads (1 keeps timings meaningful on a busy, shared CPU)",
                                 type="int", min=1, max=1024, label="CPU threads", none_text="one per core")
    device: str | None = device_option()
    tasks: tuple[str, ...] = option((), "comma-separated lm-eval tasks (needs the [eval] extra)", type="list", form=False)
    include_path: str | None = option(None, "folder of local lm-eval task YAML files", type="dir", form=False)
    limit: float | None = option(None, "lm-eval: examples per task (a fraction below 1)", type="float", min=0.0,
                                 open_min=True, form=False)

    def __post_init__(self) -> None:
        if self.device == "auto":
            self.device = None
        check(self)

    def to_dict(self) -> dict:
        return to_params(self)

    @property
    def protocols(self) -> tuple[str, ...]:
        return ("short", "long") if self.protocol == "both" else (self.protocol,)

    def evaluate_args(self) -> dict[str, Any]:
        """``evaluate.evaluate_model`` keywords."""
        limit = int(self.limit) if self.limit is not None and self.limit >= 1 else self.limit
        return {"data": list(self.data), "field": self.field, "protocols": self.protocols, "max_tokens": self.max_tokens,
                "cost": self.cost, "device": self.device, "tasks": list(self.tasks) or None,
                "include_path": self.include_path, "limit": limit}
