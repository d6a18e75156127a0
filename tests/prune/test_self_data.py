"""``--data self``: text sampled from the dense model as one more training source of a prune run."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lorashear import LorashearError
from lorashear.data import check_data_spec, load_sources
from lorashear.knowledge.calibration import self_generated
from lorashear.prune import prune
from lorashear.prune.run import SELF_DATA_SEED, PruneSettings, _data

FAST = dict(kinds=("mlp",), ratio=0.05, allocation="uniform", steps=4, batch_size=2, seq_len=32, eval_tokens=512,
            measure_latency=False, checkpoint_every=100, distill=0.0, train="lora", method="llm-pruner",
            calib_samples=4)


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_dir).eval(), AutoTokenizer.from_pretrained(tiny_dir)


def test_self_is_a_source_beside_the_files_with_enough_blocks_for_every_step(tiny):
    model, tok = tiny
    st = PruneSettings(data=("demo", "self"), ratio=0.05, steps=4, batch_size=2, seq_len=32)
    packed, _ = _data(st, tok, model)
    assert set(packed.blocks) == {"docs", "docstrings", "code", "self"}
    assert packed.weights["self"] == pytest.approx(0.25)
    assert packed.blocks["self"].numel() >= st.steps * st.batch_size * st.seq_len


def test_self_blocks_are_the_models_samples_seeded_apart_from_calibration(tiny):
    """The blocks are the decoded windows of ``self_generated`` at ``SELF_DATA_SEED + seed``, re-tokenized: the same
    token ids up to the packing's separators."""
    model, tok = tiny
    st = PruneSettings(data=("self",), ratio=0.05, steps=2, batch_size=2, seq_len=16, seed=1)
    packed, _ = _data(st, tok, model)
    ids, _ = self_generated(model, tok, n_samples=5, seq_len=17, seed=SELF_DATA_SEED + 1, batch_size=64)
    first = tok(tok.decode(ids[0, 1:], skip_special_tokens=True), add_special_tokens=False)["input_ids"]
    assert packed.blocks["self"][0, :8].tolist() == first[:8]
    again, _ = _data(st, tok, model)
    assert torch.equal(again.blocks["self"], packed.blocks["self"])


def test_a_run_trains_on_self_data_and_records_it(tiny_dir, tmp_path):
    rep = prune(tiny_dir, tmp_path / "o", data=("self",), **FAST)
    assert rep["settings"]["data"] == ["self"] and rep["tokens_trained"] == 4 * 2 * 32


def test_self_passes_the_form_check_but_only_prune_takes_it():
    check_data_spec("self")
    with pytest.raises(LorashearError, match="lorashear prune only"):
        load_sources(["self"])
