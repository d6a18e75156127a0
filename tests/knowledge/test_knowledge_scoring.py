"""The shared scoring rules: one unit order, one saliency EMA, one LoRA-Taylor accumulator (on a real PEFT model,
checked against the formula computed densely)."""
import json

import numpy as np
import pytest
import torch

from lorashear.knowledge.scoring import ema_update, lora_taylor_units, unit_order
from lorashear.knowledge.slices import ParamIndex
from tiny_models import build, ids, traced


# ------------------------------------------------------------------------------------------------ order
def test_unit_order_is_least_important_first_ties_by_index_unscored_last():
    s = [3.0, np.nan, 1.0, 1.0, -np.inf, np.inf]
    assert unit_order(s).tolist() == [4, 2, 3, 0, 5, 1]


def test_unit_order_descending_keeps_unscored_last_and_ties_by_index():
    s = [3.0, np.nan, 1.0, 3.0, 0.5]
    assert unit_order(s, descending=True).tolist() == [0, 3, 2, 4, 1]


def test_unit_order_leaves_out_excluded_units():
    assert unit_order([0.5, 0.1, 0.3, 0.2], exclude={1, 3}).tolist() == [2, 0]
    assert unit_order([0.5, 0.1], exclude=()).tolist() == [1, 0]


# -------------------------------------------------------------------------------------------------- EMA
def test_ema_update_starts_from_the_first_value_then_mixes_and_stays_json():
    store = {}
    ema_update(store, {"g": np.array([1.0, 2.0])}, beta=0.9)
    assert store == {"g": [1.0, 2.0]}
    ema_update(store, {"g": np.array([3.0, 0.0]), "h": np.array([5.0])}, beta=0.9)
    assert store["g"] == pytest.approx([0.9 * 1.0 + 0.1 * 3.0, 0.9 * 2.0]) and store["h"] == [5.0]
    assert json.loads(json.dumps(store)) == store  # what an optimizer's checkpointed schedule holds


# --------------------------------------------------------------------------------------- LoRA-Taylor
@pytest.fixture(scope="module")
def peft_with_grads():
    """llama-gqa with trained-looking adapters (B ≠ 0) after one backward; its groups, every kind."""
    _, _, groups = traced("llama-gqa")
    model = build("llama-gqa", lora=True)
    model.train()
    x = ids(3)
    model(input_ids=x, labels=x).loss.backward()
    return model, [g for g in groups if g.prunable]


def _dense_unit_scores(s, n_units):
    """Σ over the unit's indices of |Ĝ ⊙ W'|, Ĝ = s·(∇B·A + B·∇A − ∇B·∇A), W' = W + s·B·A, formed whole."""
    layer = s.lora
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    sc = layer.scaling["default"]
    g = sc * (b.grad @ a + b @ a.grad - b.grad @ a.grad)
    w = s.tensor + sc * b @ a
    per_index = (g * w).abs().detach().double().sum(1 - s.axis)
    return np.bincount(s.unit_of.numpy(), weights=per_index.numpy(), minlength=n_units)


def test_lora_taylor_units_is_the_formula_summed_over_each_units_slices(peft_with_grads):
    model, groups = peft_with_grads
    index = ParamIndex(model)
    slices = {g.id: index.slices(g, ("producer",)) for g in groups}
    n = {g.id: g.n_units for g in groups}
    got = lora_taylor_units(slices, n)
    assert set(got) == set(slices)
    for g in groups:
        want = sum((_dense_unit_scores(s, g.n_units) for s in slices[g.id] if s.lora is not None), np.zeros(g.n_units))
        assert want.any(), g.id
        np.testing.assert_allclose(got[g.id], want, rtol=1e-4, err_msg=g.id)


def test_lora_taylor_units_normalize_sums_unit_length_vectors_per_slice(peft_with_grads):
    model, groups = peft_with_grads
    index = ParamIndex(model)
    g = next(g for g in groups if g.kind == "hidden")  # o_proj and down_proj rows of every layer: several slices
    sls = [s for s in index.slices(g, ("producer", "consumer")) if s.lora is not None]
    got = lora_taylor_units({g.id: sls}, {g.id: g.n_units}, unbias=False, normalize=True)[g.id]
    vs = [_dense_unit_scores(s, g.n_units) for s in sls]
    want = sum(v / (np.linalg.norm(v) + 1e-8) for v in vs)
    assert len(vs) > 2
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_lora_taylor_units_is_none_before_any_gradient():
    _, _, groups = traced("llama-gqa")
    model = build("llama-gqa", lora=True)
    g = next(g for g in groups if g.prunable and g.kind == "mlp")
    assert lora_taylor_units({g.id: ParamIndex(model).slices(g)}, {g.id: g.n_units}) is None
    with torch.no_grad():
        x = ids(0)
        model(input_ids=x)
    assert lora_taylor_units({g.id: ParamIndex(model).slices(g)}, {g.id: g.n_units}) is None
