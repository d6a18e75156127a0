"""LHSPG as an optimizer on a real PEFT LoRA model: the zero set is the plan, exactness, protection, no base
gradients, masks that hold, and state that resumes exactly."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model

from lorashear import LorashearError, compress
from lorashear.prune import LHSPG, PlanSpec
from lorashear.prune.units import unit_slices
from tiny_models import build, traced

SCHED = dict(warmup_steps=2, periods=2, period_steps=3, lr=1e-3)


def _peft(arch="llama-gqa", seed=0):
    model = build(arch, seed=seed)
    torch.manual_seed(seed)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))


def _batch(t, vocab=64):
    g = torch.Generator().manual_seed(1000 + t)
    return torch.randint(0, vocab, (2, 12), generator=g)


def _train(model, opt, steps, start=0, check_base_grads=False):
    model.train()
    for t in range(start, steps):
        ids = _batch(t)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        if check_base_grads:
            assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)
        opt.step()
        opt.zero_grad(set_to_none=True)


def _unit_norms(model, groups, removal):
    norms = {}
    for gid, sls in unit_slices(model, [g for g in groups if g.id in removal]).items():
        for us in sls:
            idx = us.indices(removal[gid])
            x = us.rows(idx) + (us.delta(idx) if us.lora_b is not None else 0)
            norms.setdefault(gid, 0.0)
            norms[gid] += float(x.abs().sum())
    return norms


@pytest.fixture(scope="module")
def pruned():
    _, _, groups = traced("llama-gqa")
    model = _peft()
    spec = PlanSpec(0.25, kinds=("attention", "mlp", "hidden"))
    opt = LHSPG(model, groups, spec, **SCHED)
    _train(model, opt, opt.total_steps + 2, check_base_grads=True)
    return model, groups, opt


def test_is_a_torch_optimizer(pruned):
    assert isinstance(pruned[2], torch.optim.Optimizer)


def test_zero_set_at_the_end_equals_the_plan(pruned):
    model, groups, opt = pruned
    assert opt.plan is not None and opt.removal() == opt.plan.removal
    assert sum(len(p_units) for period in opt.sched["periods"] for p_units in period.values()) == \
        sum(len(u) for u in opt.plan.removal.values())
    assert all(v == 0.0 for v in _unit_norms(model, groups, opt.removal()).values())


def test_removed_parameters_hit_the_target_within_one_unit(pruned):
    _, groups, opt = pruned
    largest = max(g.params_per_unit for g in groups if g.prunable)
    assert abs(opt.plan.params_removed - opt.plan.params_target) <= largest


def test_masked_and_compressed_models_agree(pruned):
    model, groups, opt = pruned
    merged = copy.deepcopy(model).merge_and_unload().eval()
    ids = _batch(99)
    with torch.no_grad():
        ref = merged(input_ids=ids).logits
        small, _ = compress(merged, groups, opt.removal())
        got = small(input_ids=ids).logits
    assert (ref - got).abs().max().item() <= 1e-4


def test_no_base_weight_has_a_gradient(pruned):
    model, _, _ = pruned
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)


def test_surviving_units_are_not_zero(pruned):
    model, groups, opt = pruned
    kept = {g.id: [u for u in range(g.n_units) if u not in set(opt.removal().get(g.id, []))] for g in groups if g.id in opt.removal()}
    assert all(v > 0 for v in _unit_norms(model, groups, kept).values())


def test_unprunable_units_are_untouched():
    _, _, groups = traced("llama-gqa")
    model = _peft()
    mlp = [g for g in groups if g.kind == "mlp"]
    protected = {g.id: list(range(g.n_units // 2)) for g in mlp}
    opt = LHSPG(model, groups, PlanSpec(0.2, kinds=("mlp",), protected=protected), **SCHED)
    before = {g.id: _unit_norms(model, groups, {g.id: protected[g.id]})[g.id] for g in mlp}
    _train(model, opt, opt.total_steps)
    assert not any(set(opt.removal().get(gid, [])) & set(units) for gid, units in protected.items())
    after = {g.id: _unit_norms(model, groups, {g.id: protected[g.id]})[g.id] for g in mlp}
    assert all(after[gid] > 0.5 * before[gid] for gid in before)


def _with_hp(state, **extra):
    """A checkpoint as an older version wrote it: extra LHSPG settings in its ``hp``."""
    import json

    hp = {**json.loads(state["lorashear"]["hp"]), **extra}
    return {**state, "lorashear": {**state["lorashear"], "hp": json.dumps(hp)}}


@pytest.mark.parametrize("written_by", ["this version", "a version with rescore"])
def test_state_dict_resumes_exactly(written_by):
    """Also a checkpoint from before the always-True ``rescore`` setting was removed: the same schedule resumes."""
    _, _, groups = traced("llama-gqa")
    spec = PlanSpec(0.2, kinds=("attention", "mlp"))
    a = _peft()
    opt_a = LHSPG(a, groups, spec, **SCHED)
    _train(a, opt_a, 9)
    b = _peft()
    opt_b = LHSPG(b, groups, spec, **SCHED)
    _train(b, opt_b, 4)  # stops inside period 1
    weights = {n: p.detach().clone() for n, p in b.named_parameters()}
    state = copy.deepcopy(opt_b.state_dict())
    if written_by != "this version":
        state = _with_hp(state, rescore=True)
    c = _peft()
    with torch.no_grad():
        for n, p in c.named_parameters():
            p.copy_(weights[n])
    opt_c = LHSPG(c, groups, spec, **SCHED)
    opt_c.load_state_dict(state)
    _train(c, opt_c, 9, start=4)
    for (n, pa), (_, pc) in zip(a.named_parameters(), c.named_parameters()):
        assert torch.equal(pa, pc), n
    assert opt_a.removal() == opt_c.removal()


def test_a_checkpoint_that_followed_the_fixed_plan_is_refused_in_one_line():
    _, _, groups = traced("llama-gqa")
    spec = PlanSpec(0.2, kinds=("attention", "mlp"))
    opt = LHSPG(_peft(), groups, spec, **SCHED)
    state = _with_hp(copy.deepcopy(opt.state_dict()), rescore=False)
    with pytest.raises(LorashearError, match="rescore=False") as exc:
        LHSPG(_peft(), groups, spec, **SCHED).load_state_dict(state)
    assert "\n" not in str(exc.value)


def test_needs_lora_and_frozen_base():
    _, _, groups = traced("llama-gqa")
    with pytest.raises(LorashearError, match="LoRA"):
        LHSPG(build("llama-gqa"), groups, PlanSpec(0.2))


def test_zero_periods_are_refused():
    _, _, groups = traced("llama-gqa")
    with pytest.raises(LorashearError, match="periods"):
        LHSPG(_peft(), groups, PlanSpec(0.2), warmup_steps=1, periods=0, period_steps=2)


def test_input_axis_slice_reads_the_columns_of_the_lora_delta():
    """A query-head unit's producer is o_proj columns: its LoRA part is s·B·A[:, j], read from the columns of A."""
    _, _, groups = traced("llama-gqa")
    model = _peft()
    for n, p in model.named_parameters():
        if "lora_" in n:
            torch.nn.init.normal_(p.data, std=0.1)  # B ≠ 0, so the delta is not trivially zero
    g = next(g for g in groups if g.kind == "query_heads")
    us = next(u for u in unit_slices(model, [g])[g.id] if u.lora_b is not None)
    assert us.lora_side == "in" and us.axis == 1
    idx = us.indices([1])
    layer = next(m for m in model.modules() if getattr(m, "base_layer", None) is not None
                 and m.get_base_layer().weight is us.base)
    full = layer.get_delta_weight("default").float()  # s·B·A, [out, in]
    assert torch.allclose(us.delta(idx), full[:, idx].T, atol=1e-6)
    us.zero_lora_rows(idx)
    assert layer.get_delta_weight("default")[:, idx].abs().max().item() == 0.0


@pytest.mark.parametrize("arch", ["llama-gqa", "mistral", "qwen2"])
def test_query_heads_prune_exactly_with_the_other_kinds(arch):
    """LHSPG shrinks a query head's o_proj columns (base and LoRA-A columns) to exact zero; the compressed model
    equals the masked one, with kv heads, MLP channels and hidden channels pruned in the same run."""
    from lorashear.prune import make_plan

    _, _, groups = traced(arch)
    model = _peft(arch)
    spec = PlanSpec(0.3, kinds=("attention", "query_heads", "mlp", "hidden"))
    # query heads scored least important, so the plan takes them first, then the other kinds by index
    scores = {g.id: np.full(g.n_units, -1.0) for g in groups if g.kind == "query_heads"}
    plan = make_plan(build(arch), groups, spec, scores)
    opt = LHSPG(model, groups, spec, plan=plan, **SCHED)
    _train(model, opt, opt.total_steps + 2)
    removal = opt.removal()
    kinds = {g.id: g.kind for g in groups}
    assert {kinds[gid] for gid, units in removal.items() if units} >= {"query_heads", "mlp"}, removal
    assert all(v == 0.0 for v in _unit_norms(model, groups, removal).values())
    merged = copy.deepcopy(model).merge_and_unload().eval()
    ids = _batch(99)
    with torch.no_grad():
        ref = merged(input_ids=ids).logits
        small, _ = compress(merged, groups, removal)
        got = small(input_ids=ids).logits
    assert (ref - got).abs().max().item() <= 1e-4


def test_magnitude_saliency_plans_like_the_magnitude_method():
    """Saliency is compared per parameter, so LHSPG's magnitude saliency must be the squared norm the one-shot
    magnitude method plans with: with no warm-up (LoRA still zero) both fix the same plan."""
    from lorashear.knowledge.estimators import magnitude
    from lorashear.prune import make_plan
    from lorashear.prune.plan import candidate_groups

    _, _, groups = traced("llama-gqa")
    model = _peft()
    spec = PlanSpec(0.3, kinds=("attention", "mlp"))
    scores = magnitude(model, candidate_groups(groups, spec), kinds=spec.kinds).units
    expected = make_plan(model, groups, spec, scores).removal  # on the dense weights, before the first step
    opt = LHSPG(model, groups, spec, warmup_steps=0, periods=1, period_steps=2, saliency="magnitude")
    _train(model, opt, 1)
    assert any(g.kind == "attention" for g in groups if g.id in expected)  # the case the unsquared norm got wrong
    assert opt._plan_obj.removal == expected
