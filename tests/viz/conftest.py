"""Fixtures for the app tests: a real model (the shipped demo model, or a tiny random LLaMA while the demo
model is not built), traced once per session by a real graph job into a runs directory."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "jobs"))  # test-only job kinds

from jobkinds_for_tests import STEPS, env_with_test_kinds  # noqa: E402


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    from viz.session import demo_model_dir

    demo, _ = demo_model_dir()
    if demo is not None:
        return demo
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    out = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(out)
    _tiny_tokenizer(cfg.vocab_size).save_pretrained(out)  # jobs that read text (analyze, eval) need one
    return out


def _tiny_tokenizer(vocab_size: int):
    """A real BPE tokenizer trained in milliseconds on CPython's own docs (nothing is downloaded)."""
    from pydoc_data.topics import topics
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, limit_alphabet=64, special_tokens=["<unk>", "<s>", "</s>"])
    tok.train_from_iterator(list(topics.values())[:50], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="session")
def traced(tmp_path_factory, model_dir):
    """(runs_dir, graph job id) — the graph job ran in a worker process, like at app start-up."""
    from viz.session import ensure_graph, make_state

    runs = tmp_path_factory.mktemp("runs")
    state = make_state(runs)
    job = ensure_graph(state, model_dir, meta=False, echo=lambda m: None, timeout_s=300)
    return runs, job.id


@pytest.fixture
def app_state(traced):
    """A fresh AppState on the session's runs dir (like an app restart), browsing the traced model, with the
    test-only 'steps' job kind available."""
    from lorashear.jobs import KINDS
    from viz.session import make_state

    runs, job_id = traced
    state = make_state(runs, kinds={**KINDS, STEPS.name: STEPS}, worker_env=env_with_test_kinds())
    state.model_job = job_id
    return state
