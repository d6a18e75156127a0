"""Data-parallel recovery under ``accelerate launch``: two CPU processes × two accumulation steps on the same
global batch as one process give the same mixture trajectory and weights, including the instruction stage whose
rows carry different numbers of labelled tokens (the loss is weighted by the global token count)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lorashear.recover import recover

ROOT = Path(__file__).resolve().parents[2]
RUN = dict(tokens=4 * 4 * 32, round_steps=2, batch_size=4, seq_len=32, val_tokens=256, eval_tokens=256,
           instruct_steps=4, instruct_eval_every=2, instruct_max_length=64, instruct_val_examples=8, device="cpu")


@pytest.fixture(scope="module")
def tiny_pruned(tmp_path_factory, demo_tokenizer):
    """A random tiny LLaMA and a copy of it with a quarter of its MLP channels removed (no training)."""
    from transformers import LlamaConfig

    from lorashear import compress, find_groups, save_pruned, trace
    from lorashear.loading import model_from_config

    cfg = LlamaConfig(vocab_size=len(demo_tokenizer), hidden_size=32, intermediate_size=48, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=8, num_hidden_layers=2, max_position_embeddings=256,
                      tie_word_embeddings=True)
    root = tmp_path_factory.mktemp("tiny")
    model = model_from_config(cfg, seed=0)
    model.save_pretrained(root / "dense")
    demo_tokenizer.save_pretrained(root / "dense")
    groups = find_groups(trace(model))
    removal = {g.id: list(range(0, g.n_units, 4)) for g in groups if g.kind == "mlp" and g.prunable}
    small, report = compress(model, groups, removal)
    save_pruned(small, root / "pruned", report=report, tokenizer=demo_tokenizer,
                provenance={"method": "test", "source": str(root / "dense")})
    return root / "pruned", root / "dense"


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="needs the accelerate launcher")
def test_two_processes_match_one(tiny_pruned, tmp_path):
    pruned, dense = tiny_pruned
    ref = recover(pruned, tmp_path / "one", dense=dense, **RUN)
    args = [str(Path(__file__).with_name("recover_under_accelerate.py")), str(pruned), str(dense), str(tmp_path / "two"),
            json.dumps(RUN)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
               OMP_NUM_THREADS="1", ACCELERATE_GRADIENT_ACCUMULATION_STEPS="2")
    r = subprocess.run(["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                        "--mixed_precision", "no", "--dynamo_backend", "no", *args],
                       capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    rep = json.loads((tmp_path / "two" / "report.json").read_text())
    assert rep["processes"] == 2 and rep["gradient_accumulation_steps"] == 2
    assert len(rep["rounds"]) == len(ref["rounds"])
    for a, b in zip(ref["rounds"], rep["rounds"]):
        assert all(abs(a["weights"][s] - b["weights"][s]) < 1e-6 for s in a["weights"])
        assert all(abs(a["loss"][s] - b["loss"][s]) < 1e-5 for s in a["loss"])
    ha, hb = ref["instruct"]["history"], rep["instruct"]["history"]
    assert [h["step"] for h in ha] == [h["step"] for h in hb] and len(ha) == 3
    assert all(abs(x["val_loss"] - y["val_loss"]) < 1e-5 for x, y in zip(ha, hb))
    wa = load_file(str(tmp_path / "one/model/model.safetensors"))
    wb = load_file(str(tmp_path / "two/model/model.safetensors"))
    assert wa.keys() == wb.keys() and all((wa[k] - wb[k]).abs().max().item() <= 1e-5 for k in wa)
    assert any(not torch.equal(wa[k], load_file(str(pruned / "model.safetensors"))[k])
               for k in wa if k in load_file(str(pruned / "model.safetensors")))  # it did train
