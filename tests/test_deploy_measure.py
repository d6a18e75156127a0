"""lorashear.deploy_measure: llama.cpp's own figures for a GGUF file. The figures file (written, read back, refused
when the GGUF changed) runs everywhere; the measurement itself runs a tiny random-init LLaMA exported with
``export_model`` in llama.cpp, and is skipped where llama-cpp-python is not installed (it is no dependency)."""
from __future__ import annotations

import importlib.util
import math
import os
import sys

import pytest

from lorashear import LorashearError
from lorashear.deploy_measure import (FORMAT, LlamaCppFigures, figures_path, llama_cpp_module, measure_gguf,
                                      read_figures, write_figures)

needs_llama_cpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                     reason="llama-cpp-python is not installed (pip install llama-cpp-python)")


def _byte_level_tokenizer():
    """A real byte-level BPE tokenizer (what ``export_model`` converts for llama.cpp), trained in milliseconds on
    CPython's own docs: nothing is downloaded."""
    from pydoc_data.topics import topics
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<s>", "</s>"])
    tok.train_from_iterator(list(topics.values())[:20], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """(GGUF file, the model it was written from; its folder is the file's sibling ``model``): tests/tiny_models.py's
    GQA llama with a byte-level vocabulary."""
    pytest.importorskip("gguf")
    sys.path.insert(0, os.path.dirname(__file__))
    from tiny_models import CONFIGS

    from lorashear.deploy import export_model
    from lorashear.loading import model_from_config

    tok = _byte_level_tokenizer()
    cfg = CONFIGS["llama-gqa"]()
    cfg.vocab_size, cfg.bos_token_id, cfg.eos_token_id = len(tok), tok.bos_token_id, tok.eos_token_id
    model = model_from_config(cfg, seed=0)
    folder = tmp_path_factory.mktemp("tiny") / "model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    out = folder.parent / "tiny.gguf"
    export_model(folder, out, format="gguf", dtype="f32")
    return out, model.eval()


# ------------------------------------------------------------------------------------- the figures file
def test_figures_are_written_beside_the_file_and_read_back(tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF file stand-in")
    figs = LlamaCppFigures.of_runs(f, [100.0, 300.0, 200.0], [10.0, 12.0, 11.0], threads=2, prompt_tokens=128,
                                   gen_tokens=32, llama_cpp_python="0.3.36", load_avg_after=1.5)
    path = write_figures(f, figs)
    assert path == figures_path(f) == tmp_path / "m.gguf.llama_cpp.json"
    back = read_figures(f)
    assert back == figs and back.prompt_tokens_per_s == 200.0 and back.gen_tokens_per_s == 11.0 and back.reps == 3
    assert back.how() == "2 threads · median of 3 · 128-token prompt, 32 generated · load 1.5 · llama-cpp-python 0.3.36"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "m.gguf.llama_cpp.json"]  # no temporary file


def test_figures_of_a_replaced_file_are_refused(tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"old")
    write_figures(f, LlamaCppFigures.of_runs(f, [1.0], [1.0], threads=1, prompt_tokens=8, gen_tokens=2,
                                             llama_cpp_python="x"))
    f.write_bytes(b"a new, larger file")
    with pytest.raises(LorashearError, match="has changed since it was measured") as info:
        read_figures(f)
    assert "\n" not in str(info.value)
    assert read_figures(tmp_path / "other.gguf") is None  # never measured: nothing


def test_a_foreign_json_is_not_read_as_figures(tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"x")
    figures_path(f).write_text('{"format": "something else"}')
    with pytest.raises(LorashearError, match="not a lorashear llama.cpp figures file"):
        read_figures(f)
    assert FORMAT != "something else"


def test_missing_llama_cpp_is_one_line_naming_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails as when it is not installed
    with pytest.raises(LorashearError, match=r"needs llama-cpp-python.*: pip install llama-cpp-python") as info:
        llama_cpp_module()
    assert "\n" not in str(info.value)


def test_bad_measurement_settings_are_refused(tmp_path):
    with pytest.raises(LorashearError, match="reps must be a whole number ≥ 1"):
        measure_gguf(tmp_path / "m.gguf", reps=0)
    with pytest.raises(LorashearError, match="not a GGUF file"):
        measure_gguf(tmp_path / "missing.gguf")


# ------------------------------------------------------------------------------------- in llama.cpp itself
@needs_llama_cpp
def test_measure_gguf_times_the_file_in_llama_cpp(tiny_gguf):
    path, _ = tiny_gguf
    figs = measure_gguf(path, threads=1, prompt_tokens=16, gen_tokens=4, reps=2)
    import llama_cpp

    assert figs["format"] == FORMAT and figs["file"] == str(path) and figs["file_bytes"] == path.stat().st_size
    assert len(figs["prompt_runs"]) == len(figs["gen_runs"]) == figs["reps"] == 2
    assert figs["prompt_tokens_per_s"] > 0 and figs["gen_tokens_per_s"] > 0
    assert (figs["threads"], figs["prompt_tokens"], figs["gen_tokens"]) == (1, 16, 4)
    assert figs["llama_cpp_python"] == llama_cpp.__version__ and figs["dtype"] == "f32"
    assert figs["perplexity"] is None
    write_figures(path, figs)
    assert read_figures(path).gen_tokens_per_s == figs["gen_tokens_per_s"]


@needs_llama_cpp
def test_measure_gguf_perplexity_is_transformers_perplexity(tiny_gguf):
    """llama.cpp's perplexity over token windows equals the same model's in transformers (f32 weights; llama.cpp's
    f16 K/V cache leaves a small difference)."""
    import torch

    path, model = tiny_gguf
    windows = [[5, 17, 200, 33, 48, 101, 7, 250], [9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 299]]
    figs = measure_gguf(path, threads=1, prompt_tokens=8, gen_tokens=2, reps=1, ppl_texts=windows)
    nll, n = 0.0, 0
    with torch.no_grad():
        for w in windows:
            logits = model(input_ids=torch.tensor([w])).logits[0, :-1].double()
            nll += float(torch.nn.functional.cross_entropy(logits, torch.tensor(w[1:]), reduction="sum"))
            n += len(w) - 1
    assert figs["ppl_windows"] == 2 and figs["ppl_tokens"] == n
    assert figs["perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-3)


@needs_llama_cpp
def test_cli_export_measure_records_the_figures_beside_the_file(tiny_gguf, tmp_path, capsys):
    """``lorashear export --format gguf --measure``: the file, then its figures in the output and beside it; a later
    export over it without --measure removes them (they described the old file)."""
    from lorashear.cli import main

    folder = tiny_gguf[0].parent / "model"
    out = tmp_path / "t.gguf"
    assert main(["export", str(folder), "--out", str(out), "--format", "gguf", "--measure", "--measure-threads", "1"]) == 0
    text = capsys.readouterr().out
    figs = read_figures(out)
    assert figs is not None and figs.file == str(out) and figs.reps == 3 and figs.threads == 1
    assert f"generation {figs.gen_tokens_per_s:,.1f} tok/s" in text and str(figures_path(out)) in text
    assert main(["export", str(folder), "--out", str(out), "--format", "gguf", "--force"]) == 0
    assert out.is_file() and not figures_path(out).exists()


def test_export_measure_without_llama_cpp_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    from lorashear.cli import main

    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    out = tmp_path / "m.gguf"
    assert main(["export", "demo", "--out", str(out), "--format", "gguf", "--measure"]) != 0
    err = capsys.readouterr().err.strip()
    assert err.endswith("pip install llama-cpp-python") and "\n" not in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
