"""Fixtures for the pruning tests: a tiny GQA LLaMA folder with the real demo tokenizer (builds in < 1 s)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, demo_tokenizer):
    """A random-init LLaMA (2 layers, hidden 32, 4 query / 2 kv heads, MLP 48) over the demo vocabulary."""
    from transformers import LlamaConfig

    from lorashear.loading import model_from_config

    cfg = LlamaConfig(vocab_size=len(demo_tokenizer), hidden_size=32, intermediate_size=48, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=8, num_hidden_layers=2, max_position_embeddings=256,
                      tie_word_embeddings=True)
    model = model_from_config(cfg, seed=0)
    out = tmp_path_factory.mktemp("tiny") / "model"
    model.save_pretrained(out)
    demo_tokenizer.save_pretrained(out)
    return out
