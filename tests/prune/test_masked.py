"""The pruning optimizers' shared interface (masked.py): the plan fixed at the end of warm-up is never changed,
the realized plan is checked against it, and what the run's checkpoints need is asked of the optimizer."""
from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from lorashear.prune import LHSPG, PlanSpec
from lorashear.prune.masked import PruningOptimizer
from tiny_models import build, traced

SCHED = dict(warmup_steps=2, periods=2, period_steps=3, lr=1e-3)


def _setup():
    _, _, groups = traced("llama-gqa")
    model = build("llama-gqa", seed=0)
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))
    return model, groups, LHSPG(model, groups, PlanSpec(0.25, kinds=("attention", "mlp", "hidden")), **SCHED)


def _step(model, opt, t):
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1000 + t))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def test_the_fixed_plan_is_never_changed_and_the_run_plan_is_checked_against_it():
    model, _, opt = _setup()
    assert isinstance(opt, PruningOptimizer) and opt.plan is None
    for t in range(SCHED["warmup_steps"] + 1):  # the plan is fixed at the first pruning step
        _step(model, opt, t)
    fixed = opt.fixed_plan
    snapshot = copy.deepcopy(fixed.to_dict())
    for t in range(SCHED["warmup_steps"] + 1, opt.total_steps + 1):
        _step(model, opt, t)
    assert opt.fixed_plan is fixed and fixed.to_dict() == snapshot  # not overwritten by the end of the schedule
    plan = opt.plan
    assert plan is not fixed and plan.removal == opt.removal()
    assert {g: len(u) for g, u in plan.removal.items()} == {g: len(u) for g, u in fixed.removal.items() if u}


def test_a_zero_set_that_left_the_plan_is_refused():
    model, groups, opt = _setup()
    for t in range(opt.total_steps - 1):  # up to the last step of the last period
        _step(model, opt, t)
    extra = next(g for g in groups if g.id in opt.fixed_plan.removal)
    taken = set(opt.fixed_plan.removal[extra.id]) | set(opt.removal().get(extra.id, [])) \
        | set(opt.sched["period"]["units"].get(extra.id, []))
    free = next(u for u in range(extra.n_units) if u not in taken)
    opt.mask({extra.id: [free]}, "a unit the plan does not take")
    with pytest.raises(RuntimeError, match="zero set differs from the plan fixed"):
        _step(model, opt, opt.total_steps - 1)


def test_checkpoints_ask_the_optimizer_what_it_changes():
    model, _, opt = _setup()
    changed = {id(t) for t in opt.changed_tensors()}
    names = {n for n, p in model.named_parameters() if id(p) in changed}
    assert names and not any("lora_" in n for n in names)
    assert any("mlp.up_proj.base_layer.weight" in n for n in names)  # a producer of MLP channels
    for t in range(SCHED["warmup_steps"] + 1):
        _step(model, opt, t)
    events = opt.events()
    assert events and events[-1][1].startswith("period 1/2 starts")
    events.append([99, "not the optimizer's"])
    assert opt.events() != events  # a copy
