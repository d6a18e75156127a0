"""The Compare view's numbers without a browser, from a real prune job run in a worker: exact parameter counts of
the dense and the pruned model, per-layer sizes read from the folders, and the conditions of every timing."""
from __future__ import annotations

import json

import pytest

from lorashear.jobs import SUCCEEDED, submit, wait
from viz.views import compare as C

TINY_PRUNE = {"ratio": "0.2", "method": "magnitude", "steps": "2", "batch_size": "1", "seq_len": "32",
              "eval_tokens": "1024", "device": "cpu"}


@pytest.fixture(scope="module")
def pruned(traced, model_dir):
    from viz.session import make_state

    runs, _ = traced
    state = make_state(runs)
    job = submit(state.registry, "prune", {"model": str(model_dir), **TINY_PRUNE}, runs)
    done = wait(state.registry, job.id, timeout_s=600)
    assert done.status == SUCCEEDED, (done.message, done.log_path.read_text()[-3000:])
    return done


def test_rows_carry_exact_parameters_and_conditions(app_state, pruned):
    rows = [e for e in C.entries(app_state) if e["job"] == pruned.id]
    roles = {e["role"].split(" (")[0]: e for e in rows}
    assert set(roles) == {"dense", "pruned"}
    assert roles["dense"]["params"] == pruned.result["params_before"]
    assert roles["pruned"]["params"] == pruned.result["params_after"]
    for e in rows:
        c = e["conditions"]
        assert c["device"] == "cpu" and c["threads"] >= 1 and c["tokens"] == 1024 and c["load"] is not None
        text = C.conditions_text(c)
        assert "thread" in text and "1,024 tokens/source" in text and "load" in text
    html_text = str(C.content(app_state))
    assert f"{pruned.result['params_before']:,}" in html_text and f"{pruned.result['params_after']:,}" in html_text


def test_per_layer_comparison_shows_every_removed_unit(app_state, pruned):
    rows = [e for e in C.entries(app_state) if e["job"] == pruned.id]
    comp = C.layer_comparison(rows)
    dense, small = comp["series"]
    assert dense["label"].startswith("dense") and small["label"].startswith("pruned")
    assert sum(dense["params_by_layer"]) == pruned.result["params_before"]
    assert sum(small["params_by_layer"]) == pruned.result["params_after"]
    plan = json.loads(open(pruned.artifacts["plan"]).read())
    for i, layer in enumerate(comp["layers"]):
        heads = len(plan["removal"].get(f"model.layers.{layer}.self_attn:heads", []))
        channels = len(plan["removal"].get(f"model.layers.{layer}.mlp:channels", []))
        assert dense["heads_by_layer"][i] - small["heads_by_layer"][i] == heads
        assert dense["channels_by_layer"][i] - small["channels_by_layer"][i] == channels
    fig = C._bars(comp, "heads_by_layer", "heads")
    assert [list(t.y) for t in fig.data] == [dense["heads_by_layer"], small["heads_by_layer"]]
