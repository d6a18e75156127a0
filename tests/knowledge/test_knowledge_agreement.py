"""The cheap estimators rank units like the measured ground truth (ablation) does, better than chance, and
removing what they call least important costs less loss than removing what they call most important."""
import copy

import pytest
import torch
import torch.nn.functional as F

import lorashear
from lorashear.knowledge import rank_agreement

ESTIMATORS = ("lora_taylor", "taylor")


@pytest.fixture(scope="module")
def agreement(reports):
    table = {name: rank_agreement(reports[name], reports["ablation"]).set_index("kind")
             for name in ("lora_taylor", "taylor", "magnitude")}
    print("\nSpearman rank correlation with ablation (pooled over layers / mean within a layer):")
    for name, t in table.items():
        print(f"  {name:12s} " + "  ".join(f"{k}: {r.spearman:+.2f} / {r.spearman_within:+.2f} (n={r.n})" for k, r in t.iterrows()))
    return table


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_head_ranking_agrees_with_ablation(agreement, estimator):
    assert agreement[estimator].loc["attention", "n"] == 24
    assert agreement[estimator].loc["attention", "spearman"] > 0


def _loss(model, samples):
    with torch.no_grad():
        logits = model(input_ids=samples, use_cache=False).logits
    return float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), samples[:, 1:].reshape(-1)))


def _masked_loss(model, groups, removal, samples):
    m = copy.deepcopy(model)
    lorashear.mask_units(m, groups, removal)
    return _loss(m, samples)


def _pick(rows, k, n_units):
    """The first k units of ``rows`` (already ordered), never all units of one group (mask_units keeps one)."""
    out: dict[str, list[int]] = {}
    for g, u in zip(rows["group"], rows["unit"]):
        if sum(map(len, out.values())) == k:
            break
        if len(out.get(g, [])) < n_units[g] - 1:
            out.setdefault(g, []).append(int(u))
    return out


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_zeroing_the_least_important_heads_hurts_less_than_the_most_important(reports, kmodel, kgroups, ksamples, estimator):
    """A quarter of all heads (6 of 24): the estimator's lowest-scored vs its highest-scored."""
    heads = reports[estimator].units.query("kind == 'attention'").sort_values("score")
    n_units = {g.id: g.n_units for g in kgroups}
    low = _masked_loss(kmodel, kgroups, _pick(heads, 6, n_units), ksamples[0])
    high = _masked_loss(kmodel, kgroups, _pick(heads.iloc[::-1], 6, n_units), ksamples[0])
    assert low < high


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_zeroing_the_least_important_channels_hurts_less_than_the_most_important(reports, kmodel, kgroups, ksamples, estimator):
    mlp = reports[estimator].units.query("kind == 'mlp'")
    low, high = {}, {}
    for g, rows in mlp.groupby("group"):
        order = rows.sort_values("score")["unit"].tolist()
        low[g], high[g] = order[:160], order[-160:]  # a quarter of each layer's 640 channels
    assert _masked_loss(kmodel, kgroups, low, ksamples[0]) < _masked_loss(kmodel, kgroups, high, ksamples[0])
