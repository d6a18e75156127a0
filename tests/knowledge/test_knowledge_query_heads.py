"""GQA query heads are scored and kept apart: present in the report with their kind, measured honestly, and
never added into a roll-up or the γ selection (which would count each layer's attention twice)."""
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from lorashear.knowledge import analyze, select_unprunable, summary_table
from lorashear.knowledge.estimators import LORA_TAYLOR_UNSCORABLE
from tests.tiny_models import build, ids, traced

GQA = ["llama-gqa", "mistral", "qwen2"]


def _reports(arch: str, estimator: str):
    """(report with query heads, report of the same run without them) on a fresh tiny model."""
    _, _, groups = traced(arch)
    model = build(arch).eval()
    samples = ids(seed=1, batch=2, seq=12)
    x = None if estimator == "magnitude" else samples
    with_q = analyze(model, x, estimator=estimator, groups=groups)
    without = analyze(model, x, estimator=estimator, groups=[g for g in groups if g.kind != "query_heads"])
    return with_q, without, groups


@pytest.mark.parametrize("arch", GQA)
@pytest.mark.parametrize("estimator", ["taylor", "magnitude", "ablation"])
def test_query_heads_are_scored_and_roll_ups_do_not_count_them(arch, estimator):
    rep, ref, groups = _reports(arch, estimator)
    qgroups = [g for g in groups if g.kind == "query_heads" and g.prunable]
    assert qgroups, "the tiny GQA config has query-head groups"
    q = rep.units[rep.units["kind"] == "query_heads"]
    assert len(q) == sum(g.n_units for g in qgroups)
    assert np.isfinite(q["score"]).all() and (q["score"] != 0).all()  # ablation deltas may be negative
    # roll-ups: identical to the report made without query heads
    layers, ref_layers = rep.by_layer(), ref.by_layer()
    assert "query_heads" in layers.columns and "query_heads" not in ref_layers.columns
    pd.testing.assert_frame_equal(layers[ref_layers.columns], ref_layers)
    groups_tab = rep.by_group()
    rolled = groups_tab[groups_tab["rollup"]].drop(columns="rollup").reset_index(drop=True)
    pd.testing.assert_frame_equal(rolled, ref.by_group().drop(columns="rollup"))
    assert groups_tab.loc[~groups_tab["rollup"], "share"].isna().all()
    assert groups_tab["share"].sum() == pytest.approx(1.0)
    kinds = rep.by_kind().set_index("kind")
    assert not kinds.loc["query_heads", "rollup"]
    assert kinds.loc[kinds["rollup"], "score"].sum() == pytest.approx(ref.units["score"].sum())
    # γ: the same units of the roll-up kinds, at every level; the query heads are marked apart
    for level, scope in [("group", "global"), ("layer", "global"), ("unit", "global"), ("unit", "group")]:
        a = select_unprunable(rep, 0.3, level=level, scope=scope)
        b = select_unprunable(ref, 0.3, level=level, scope=scope)
        main = a.units[a.units["kind"] != "query_heads"].reset_index(drop=True)
        pd.testing.assert_frame_equal(main, b.units.reset_index(drop=True))
        sa, sb = dict(a.meta["selection"]), dict(b.meta["selection"])
        assert sa.pop("overlap")["units"] == len(q)
        assert sa == sb
    # summary: the query heads in their own labelled column, outside the total
    text = summary_table(rep)
    assert "(query_heads)" in text and "not in total" in text


@pytest.mark.parametrize("arch", GQA)
def test_ablation_of_a_query_head_is_the_loss_with_its_o_proj_columns_zeroed(arch):
    _, _, groups = traced(arch)
    model = build(arch).eval()
    samples = ids(seed=2, batch=2, seq=12)
    g = next(g for g in groups if g.kind == "query_heads" and g.layer == 1)
    rep = analyze(model, samples, estimator="ablation", groups=[g])
    assert not (rep.blocks["level"] == "group").any()  # all query heads = the whole attention: measured there

    def loss():
        with torch.no_grad():
            logits = model(input_ids=samples, use_cache=False).logits
        return float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), samples[:, 1:].reshape(-1)))

    base = loss()
    (producer,) = [m for m in g.members if m.role == "producer"]
    assert producer.param.endswith("o_proj.weight") and producer.axis == 1
    w = model.get_parameter(producer.param)
    for u in range(g.n_units):
        cols = torch.as_tensor(producer.unit_indices([u]))
        saved = w.detach().clone()
        with torch.no_grad():
            w[:, cols] = 0
        try:
            expect = loss() - base
        finally:
            with torch.no_grad():
                w.copy_(saved)
        assert rep.scores(g.id)[u] == pytest.approx(expect, rel=1e-4, abs=1e-6)


def test_lora_taylor_says_it_cannot_score_query_heads():
    rep, _, _ = _reports("llama-gqa", "lora_taylor")
    assert not (rep.units["kind"] == "query_heads").any()
    assert rep.meta["notes"]["unscored_kinds"] == {"query_heads": LORA_TAYLOR_UNSCORABLE["query_heads"]}
    assert "query_heads not scored by lora_taylor" in summary_table(rep)


def test_a_model_without_gqa_has_no_query_heads():
    _, _, groups = traced("llama")
    rep = analyze(build("llama").eval(), None, estimator="magnitude", groups=groups)
    assert set(rep.units["kind"]) == {"attention", "mlp", "hidden"}
    assert "overlap" not in select_unprunable(rep, 0.3).meta["selection"]
    assert "query_heads" not in rep.by_layer().columns
