"""The shipped demo model, tokenizer, corpus and instruction set: present, loadable, intact, and trained."""
from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys

import pytest

from lorashear.data import DEMO_CORPUS_DIR, DEMO_DIR, DEMO_INSTRUCTIONS_DIR, DEMO_MODEL_DIR, DEMO_SOURCES, SPLITS, demo_corpus
from lorashear.evaluate import evaluate_perplexity, unigram_perplexity

MANIFEST = json.loads((DEMO_CORPUS_DIR / "MANIFEST.json").read_text())


def test_demo_model_loads_with_stock_auto_classes():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(DEMO_MODEL_DIR)
    tok = AutoTokenizer.from_pretrained(DEMO_MODEL_DIR)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert len(tok) == model.config.vocab_size


def test_demo_model_uses_grouped_query_attention_with_explicit_head_dim():
    cfg = json.loads((DEMO_MODEL_DIR / "config.json").read_text())
    assert cfg["num_key_value_heads"] < cfg["num_attention_heads"]
    assert cfg["num_attention_heads"] % cfg["num_key_value_heads"] == 0
    assert cfg["head_dim"] * cfg["num_attention_heads"] == cfg["hidden_size"]
    assert cfg["num_hidden_layers"] >= 6
    assert (DEMO_MODEL_DIR / "model.safetensors").exists()


def test_demo_tokenizer_round_trips_code_and_prose(demo_tokenizer):
    text = 'def f(x):\n\t"""Return x — unchanged."""\n    return x  # ok\n'
    assert demo_tokenizer.decode(demo_tokenizer(text, add_special_tokens=False)["input_ids"]) == text


@pytest.mark.parametrize("source", DEMO_SOURCES)
def test_demo_model_is_far_better_than_unigram_on_validation(demo_model, demo_tokenizer, source):
    # Fast subset: the first 1,024 validation tokens of the source, 128-token windows; the unigram baseline
    # is fitted on the first 100 training documents of the same source (full numbers: docs/demo_model.md).
    val = demo_corpus("validation")[source]
    (row,) = evaluate_perplexity(demo_model, demo_tokenizer, {source: val}, protocols=("short",), max_tokens=1024)
    unigram = unigram_perplexity(demo_corpus("train")[source][:100], val, demo_tokenizer)
    assert row.ppl <= unigram / 3, (row.ppl, unigram)


def test_corpus_files_match_the_manifest():
    for source in DEMO_SOURCES:
        for split in SPLITS:
            data = (DEMO_CORPUS_DIR / source / f"{split}.jsonl.gz").read_bytes()
            assert hashlib.sha256(data).hexdigest() == MANIFEST["corpus"][source][split]["sha256"]
            assert MANIFEST["corpus"][source][split]["documents"] > 0
    for split in SPLITS:
        data = (DEMO_INSTRUCTIONS_DIR / f"{split}.jsonl.gz").read_bytes()
        assert hashlib.sha256(data).hexdigest() == MANIFEST["instructions"][split]["sha256"]


def test_demo_folder_stays_lean():
    total = sum(p.stat().st_size for p in DEMO_DIR.rglob("*") if p.is_file())
    assert total < 30 * 2**20, f"demo/ is {total / 2**20:.1f} MiB"


@pytest.mark.skipif(platform.python_version() != MANIFEST["python"],
                    reason="the corpus is extracted from this interpreter's own stdlib; other versions differ")
def test_corpus_script_reproduces_the_shipped_files(tmp_path):
    script = DEMO_DIR.parent / "scripts" / "make_corpus.py"
    subprocess.run([sys.executable, str(script), "--out", str(tmp_path)], check=True, capture_output=True, timeout=300)
    fresh = json.loads((tmp_path / "corpus" / "MANIFEST.json").read_text())
    assert fresh == MANIFEST
