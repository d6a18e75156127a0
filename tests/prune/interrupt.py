"""Helpers of the resume tests: interrupt a run at a step, compare what two runs saved."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file


def stop_at(step: int) -> Callable[[float, str], None]:
    """A ``progress`` callback that interrupts the run (as Ctrl-C would) when it reports step ``step``."""
    def progress(fraction: float, stage: str) -> None:
        if stage.startswith(f"step {step}/"):
            raise KeyboardInterrupt
    return progress


def same_saved_model(a: Path, b: Path) -> bool:
    """The two run folders saved the same tensors, bit for bit (``model/model.safetensors``)."""
    wa, wb = load_file(str(Path(a) / "model/model.safetensors")), load_file(str(Path(b) / "model/model.safetensors"))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
