"""``--train full``: once the structure is final, every parameter of the (masked, not yet compressed) model trains.

A pruning method needs LoRA while it decides the structure (LHSPG's saliency and half-space projection act on the
LoRA factors; a one-shot method fixes its plan before training), but once the zero set no longer changes
(``PruningOptimizer.final_step``: after LHSPG's last period, after LoRAPrune's last mask update, step 0 for the
one-shot methods) the adapters are only a restriction. A small model can afford AdamW on every parameter — what
``recover --train full`` does on the compressed model — and the prune run's after-period then recovers with it:

* ``to_full`` merges the factors into the base weights (``merge_and_unload``: the effective weights are unchanged),
  drops the adapters and hands the run's record (plan, zero set, events, schedule position) to the pruning
  optimizer's ``release_lora``;
* ``FullTraining`` is AdamW over every parameter at the run's lr and weight decay 0 (the pruning optimizers' own);
  around each step the removed units' producer slices are held at exactly 0.0: their gradients are zeroed before
  the update (so the moments there stay 0) and the slices zeroed again after it. Exactly zero, not nearly: that is
  what makes ``compress`` exact (masked logits == compressed logits) for weights that all moved.

Its ``state_dict`` is AdamW's over the merged model plus the pruning optimizer's ``schedule_state``; a checkpoint of
the merged model's every parameter with it resumes the run exactly (``run.py``).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from .masked import PruningOptimizer, closure_loss

FULL = "full"  # the checkpoint's mark (state.json ``train``) of a step trained in full


class FullTraining(torch.optim.AdamW):
    """AdamW over every parameter of ``model`` (LoRA merged and gone) with ``record``'s zero set held at 0.0;
    ``record`` — the pruning optimizer after ``release_lora`` — keeps the plan, events and metrics of the run."""

    def __init__(self, model: nn.Module, record: PruningOptimizer, *, lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 0.0):
        params = list(model.parameters())  # tied tensors once
        for p in params:
            p.requires_grad_(True)
        super().__init__(params, lr=lr, betas=betas, weight_decay=weight_decay)
        self.model, self.record = model, record
        self._held: list[tuple[torch.Tensor, int, torch.Tensor]] | None = None

    def held(self) -> list[tuple[torch.Tensor, int, torch.Tensor]]:
        """(parameter, axis, indices) of every removed unit's producer slice, from the record's zero set."""
        if self._held is None:
            self._held = [(us.base, us.axis, us.indices(units).to(us.base.device))
                          for gid, units in self.record.sched["masked"].items() if units
                          for us in self.record.slices[gid]]
        return self._held

    @torch.no_grad()
    def hold(self) -> None:
        """The removed units' producer slices set to exactly 0.0."""
        for p, axis, idx in self.held():
            p.index_fill_(axis, idx, 0.0)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):  # type: ignore[override]
        loss = closure_loss(closure)
        for p, axis, idx in self.held():
            if p.grad is not None:
                p.grad.index_fill_(axis, idx, 0.0)
        super().step()
        self.hold()
        self.record.sched["step"] += 1  # the record's position follows the run (its phase and metrics read it)
        return loss

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        sd = super().state_dict()
        sd["lorashear"] = self.record.schedule_state()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        sd = dict(state_dict)
        extra = sd.pop("lorashear")
        super().load_state_dict(sd)
        self.record.restore_schedule(extra)
        self._held = None


def to_full(peft_model: Any, opt: PruningOptimizer, lr: float) -> tuple[nn.Module, FullTraining]:
    """Merge ``peft_model``'s LoRA into its base weights and drop the adapters; returns (the merged model, its
    ``FullTraining`` optimizer). ``opt`` keeps the record over the merged model. At a resume the merged weights and
    the record are then overwritten by the checkpoint's."""
    model = peft_model.merge_and_unload()
    opt.release_lora(model)
    full = FullTraining(model, opt, lr=lr)
    full.hold()  # merged B·A rows of removed units were zero already; exactly 0.0 from here
    return model, full
