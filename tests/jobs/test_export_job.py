"""The registry's export job: a hand selection of units removed by compress + save_pruned in a worker; the folder
reloads through the one loader with exactly the shapes and parameter count the selection implies."""
from __future__ import annotations

import json

import pytest

from lorashear.jobs import JobParamError
from lorashear.jobs.launcher import submit, wait
from lorashear.jobs.registry import SUCCEEDED

HEADS, MLP = "model.layers.1.self_attn:heads", "model.layers.2.mlp:channels"


def test_export_job_removes_a_hand_selection_and_the_folder_reloads(registry, tmp_path):
    from lorashear.data import DEMO_MODEL_DIR
    from lorashear.evaluate import count_parameters
    from lorashear.groups import find_groups
    from lorashear.loading import load_causal_lm
    from lorashear.prune.plan import count_removed
    from lorashear.trace import trace

    units = {HEADS: [0, 2], MLP: [5, 6, 7]}
    job = submit(registry, "export", {"model": str(DEMO_MODEL_DIR), "units": json.dumps(units)}, tmp_path / "runs")
    done = wait(registry, job.id, timeout_s=300)
    assert done.status == SUCCEEDED, (done.message, done.log_path.read_text()[-3000:])

    dense = load_causal_lm(DEMO_MODEL_DIR)
    expected = count_removed(dense, find_groups(trace(dense)), units)  # the planner's exact count
    small = load_causal_lm(done.artifacts["model"])
    assert count_parameters(small) == count_parameters(dense) - expected == done.result["params_after"]
    attn = small.model.layers[1].self_attn
    assert attn.k_proj.weight.shape[0] == dense.model.layers[1].self_attn.k_proj.weight.shape[0] // 2  # 2 of 4 kv heads
    assert small.model.layers[2].mlp.up_proj.weight.shape[0] == 640 - 3
    side = json.loads(open(f"{done.artifacts['model']}/lorashear.json").read())
    assert side["removed"] == units and side["provenance"]["method"] == "hand selection"
    assert side["layer_sizes"]["1"]["attention"] == 2 and side["layer_sizes"]["2"]["mlp"] == 637


def test_export_job_refuses_bad_selections_per_field(registry, tmp_path):
    from lorashear.data import DEMO_MODEL_DIR

    for units, msg in (("{not json", "not valid JSON"), ('{"a": [1.5]}', "whole numbers"),
                       ("[]", "JSON object"), ('{"a": []}', "no unit selected")):
        with pytest.raises(JobParamError) as e:
            submit(registry, "export", {"model": str(DEMO_MODEL_DIR), "units": units}, tmp_path / "runs")
        assert set(e.value.errors) == {"units"} and msg in e.value.errors["units"], (units, e.value.errors)
    assert registry.list() == []
    # an id the model does not have is found by compress in the worker: a failed job with a one-line reason
    job = submit(registry, "export", {"model": str(DEMO_MODEL_DIR), "units": '{"model.layers.9.mlp:channels": [1]}'},
                 tmp_path / "runs")
    done = wait(registry, job.id, timeout_s=300)
    assert done.status == "failed" and "unknown group 'model.layers.9.mlp:channels'" in done.message


@pytest.mark.skipif(__import__("importlib").util.find_spec("llama_cpp") is None,
                    reason="llama-cpp-python is not installed (pip install llama-cpp-python)")
def test_export_job_with_measure_records_llama_cpp_figures(registry, tmp_path):
    """The Export job's *Measure*: the GGUF file run in llama.cpp in the worker; the figures in the result and in the
    ``llama_cpp`` artifact beside the file (what the Compare view reads)."""
    from lorashear.data import DEMO_MODEL_DIR
    from lorashear.deploy_measure import figures_path, read_figures

    job = submit(registry, "export", {"model": str(DEMO_MODEL_DIR), "format": "gguf", "dtype": "f16", "measure": "true",
                                        "measure_threads": "1"},
                 tmp_path / "runs")
    done = wait(registry, job.id, timeout_s=300)
    assert done.status == SUCCEEDED, (done.message, done.log_path.read_text()[-3000:])
    figs = read_figures(done.artifacts["gguf"])
    assert done.artifacts["llama_cpp"] == str(figures_path(done.artifacts["gguf"]))
    assert figs.dtype == "f16" and figs.threads == 1 and figs.gen_tokens_per_s == done.result["llama_cpp"]["gen_tokens_per_s"] > 0
    assert "llama.cpp: prompt" in done.log_path.read_text()
