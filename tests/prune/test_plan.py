"""The plan: exact parameter counts, allocations, layer ranges, protection, alignment, refusals."""
from __future__ import annotations

import numpy as np
import pytest

from lorashear import LorashearError, compress
from lorashear.prune import PlanSpec, count_removed, load_plan, make_plan
from lorashear.prune.plan import parse_layers
from tiny_models import traced


def _scores(groups, seed=0):
    rng = np.random.default_rng(seed)
    return {g.id: rng.random(g.n_units) for g in groups if g.prunable}


@pytest.mark.parametrize("arch", ["llama", "llama-gqa", "llama-tied", "mistral", "qwen2"])
def test_counted_parameters_equal_what_compress_removes(arch):
    model, _, groups = traced(arch)
    plan = make_plan(model, groups, PlanSpec(0.3, kinds=("attention", "mlp", "hidden")), _scores(groups))
    small, report = compress(model, groups, plan.removal)
    assert report.params_before - report.params_after == plan.params_removed


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.4])
def test_global_plan_is_within_one_unit_of_the_target(ratio):
    model, _, groups = traced("llama-gqa")
    plan = make_plan(model, groups, PlanSpec(ratio, kinds=("attention", "mlp", "hidden")), _scores(groups))
    largest = max(g.params_per_unit for g in groups if g.id in plan.removal)
    assert abs(plan.params_removed - plan.params_target) <= largest
    assert plan.params_target == round(ratio * plan.params_total)


def test_global_plan_removes_lowest_scores_first():
    model, _, groups = traced("llama")
    scores = _scores(groups, seed=3)
    plan = make_plan(model, groups, PlanSpec(0.1, kinds=("mlp",)), scores)
    for gid, units in plan.removal.items():
        kept = sorted(set(range(len(scores[gid]))) - set(units))
        assert max(scores[gid][units]) <= min(scores[gid][kept])


def test_uniform_plan_removes_the_same_count_in_every_layer():
    model, _, groups = traced("llama-gqa")
    plan = make_plan(model, groups, PlanSpec(0.2, kinds=("attention", "mlp"), allocation="uniform"), _scores(groups))
    for kind in ("attention", "mlp"):
        counts = {info["removed"] for info in plan.groups.values() if info["kind"] == kind}
        assert len(counts) == 1


def test_layer_range_prunes_only_those_layers():
    model, _, groups = traced("llama")
    plan = make_plan(model, groups, PlanSpec(0.1, kinds=("attention", "mlp"), layers=(1, 2)), _scores(groups))
    layers = {next(g.layer for g in groups if g.id == gid) for gid in plan.removal}
    assert layers == {1}


def test_layer_range_parses_indices_and_fractions():
    assert parse_layers("4:30", 32) == (4, 30)
    assert parse_layers("0.125:0.9375", 32) == (4, 30)
    with pytest.raises(LorashearError, match="outside the model"):
        parse_layers("4:40", 32)


def test_unreachable_ratio_names_the_largest_reachable():
    model, _, groups = traced("llama-gqa")
    with pytest.raises(LorashearError, match=r"unreachable.*at most 0\.\d+"):
        make_plan(model, groups, PlanSpec(0.9, kinds=("mlp",)), _scores(groups))


def test_protected_units_are_never_planned():
    model, _, groups = traced("llama-gqa")
    mlp = next(g for g in groups if g.kind == "mlp")
    scores = {g.id: np.zeros(g.n_units) for g in groups if g.prunable}  # all equal: index order would take 0..k
    plan = make_plan(model, groups, PlanSpec(0.2, kinds=("mlp",), protected={mlp.id: [0, 1, 2, 3]}), scores)
    assert not set(plan.removal[mlp.id]) & {0, 1, 2, 3}


def test_every_group_keeps_a_unit():
    model, _, groups = traced("llama-gqa")
    plan = make_plan(model, groups, PlanSpec(0.5, kinds=("attention", "mlp")), _scores(groups))
    assert all(info["kept"] >= 1 for info in plan.groups.values())


def test_align_keeps_pruned_widths_multiples_of_n():
    model, _, groups = traced("llama")  # MLP 48 channels
    plan = make_plan(model, groups, PlanSpec(0.2, kinds=("mlp",), align=8), _scores(groups))
    for gid, info in plan.groups.items():
        assert info["kept"] % 8 == 0


def test_plan_json_round_trip(tmp_path):
    model, _, groups = traced("llama-gqa")
    plan = make_plan(model, groups, PlanSpec(0.2, kinds=("attention", "mlp")), _scores(groups))
    back = load_plan(plan.save(tmp_path / "plan.json"))
    assert back.removal == plan.removal and back.params_removed == plan.params_removed
    assert count_removed(model, groups, back.removal) == plan.params_removed


@pytest.mark.parametrize("ratio", [0, 1, -0.1, 1.5, "x"])
def test_ratio_outside_zero_one_is_refused(ratio):
    with pytest.raises(LorashearError, match="ratio"):
        PlanSpec(ratio)


def test_unknown_kind_is_refused():
    with pytest.raises(LorashearError, match="unknown group kind"):
        PlanSpec(0.2, kinds=("heads",))
