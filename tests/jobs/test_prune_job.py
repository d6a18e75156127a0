"""The registry's prune job: the same library call as the CLI, run in a worker, with live metrics and artifacts."""
from __future__ import annotations

import json

from lorashear.jobs.launcher import submit, wait
from lorashear.jobs.registry import SUCCEEDED


def _tiny_dir(tmp_path):
    from transformers import AutoTokenizer, LlamaConfig

    from lorashear.data import DEMO_MODEL_DIR
    from lorashear.loading import model_from_config

    tok = AutoTokenizer.from_pretrained(DEMO_MODEL_DIR)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=8, num_hidden_layers=2, max_position_embeddings=256, tie_word_embeddings=True)
    out = tmp_path / "tiny"
    model_from_config(cfg, seed=0).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_prune_job_records_metrics_and_artifacts(registry, tmp_path):
    model = _tiny_dir(tmp_path)
    job = submit(registry, "prune", {"model": str(model), "ratio": "0.2", "method": "lhspg", "distill": "0",
                                     "train": "lora", "kinds": "attention,mlp,hidden", "steps": "10", "batch_size": "2",
                                     "seq_len": "32", "eval_tokens": "512", "device": "cpu"},
                 tmp_path / "runs")
    done = wait(registry, job.id, timeout_s=300)
    assert done.status == SUCCEEDED, (done.message, done.log_path.read_text()[-3000:])
    metrics = registry.metrics(job.id)
    assert {"loss", "removed_params", "sparsity_mlp", "period"} <= set(metrics)
    assert len(metrics["loss"]) == 10
    assert metrics["removed_params"][-1][1] == done.result["params_before"] - done.result["params_after"]
    plan = json.loads(open(done.artifacts["plan"]).read())
    assert plan["params_removed"] == done.result["params_before"] - done.result["params_after"]
    assert (done.artifacts["model"] and json.loads(open(f"{done.artifacts['model']}/lorashear.json").read())["provenance"]["method"] == "lhspg")
