"""Evaluation: perplexity protocols against a hand computation, unigram baseline, cost formulae, the CLI."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter

import pytest
import torch

from lorashear.data import DEMO_MODEL_DIR, demo_corpus, token_stream
from lorashear.errors import LorashearError
from lorashear.loading import pick_device
from lorashear.evaluate import (
    count_parameters,
    evaluate_perplexity,
    macs_per_token,
    measure_cost,
    perplexity,
    protocol_window,
    unigram_perplexity,
)


def _hand_ppl(model, stream, window):
    """Window by window, one forward each: exp(mean over scored tokens of -log p(next token)), in fp64."""
    nll, count = 0.0, 0
    for i in range(stream.numel() // window):
        ids = stream[i * window:(i + 1) * window]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids[None]).logits[0].double(), dim=-1)
        nll -= logp[torch.arange(window - 1), ids[1:]].sum().item()
        count += window - 1
    return math.exp(nll / count), count


@pytest.fixture(scope="module")
def small_stream(demo_tokenizer):
    return token_stream(demo_corpus("test")["docs"], demo_tokenizer)[:1100]


def test_protocol_windows_are_128_and_the_model_context(demo_model):
    assert protocol_window("short", demo_model) == 128
    assert protocol_window("long", demo_model) == min(2048, demo_model.config.max_position_embeddings)


@pytest.mark.parametrize("protocol", ["short", "long"])
def test_perplexity_matches_a_hand_computation(demo_model, small_stream, protocol):
    window = protocol_window(protocol, demo_model)
    stream = small_stream[: 2 * window + 50]  # two windows and a dropped tail
    got = perplexity(demo_model, stream, window, batch_tokens=window, protocol=protocol)
    want, count = _hand_ppl(demo_model, stream, window)
    assert got.n_windows == 2 and got.n_tokens == count == 2 * (window - 1)
    assert got.ppl == pytest.approx(want, rel=1e-4)


def test_perplexity_refuses_a_window_beyond_the_context(demo_model, small_stream):
    with pytest.raises(LorashearError, match="larger than the model's context"):
        perplexity(demo_model, small_stream, 1024)


def test_perplexity_refuses_text_shorter_than_one_window(demo_model):
    with pytest.raises(LorashearError, match="fewer than one 128-token window"):
        perplexity(demo_model, torch.arange(50), 128, source="tiny")


def test_evaluate_perplexity_reports_each_source_and_protocol(demo_model, demo_tokenizer):
    rows = evaluate_perplexity(demo_model, demo_tokenizer, {"a": ["x = 1\n" * 200]}, max_tokens=600)
    assert [(r.source, r.protocol, r.window) for r in rows] == [("a", "short", 128), ("a", "long", 512)]
    assert rows[0].n_tokens == 4 * 127 and rows[1].n_tokens == 511


def test_unigram_perplexity_matches_add_one_counts(demo_tokenizer):
    train, evals = ["a b a b c"], ["a c"]
    tr = token_stream(train, demo_tokenizer).tolist()
    ev = token_stream(evals, demo_tokenizer).tolist()[1:]
    counts, v = Counter(tr), len(demo_tokenizer)
    want = math.exp(-sum(math.log((counts[t] + 1) / (len(tr) + v)) for t in ev) / len(ev))
    assert unigram_perplexity(train, evals, demo_tokenizer) == pytest.approx(want, rel=1e-9)


def test_parameter_count_counts_tied_embeddings_once(demo_model):
    assert demo_model.config.tie_word_embeddings
    with_duplicates = sum(p.numel() for _, p in demo_model.named_parameters(remove_duplicate=False))
    assert count_parameters(demo_model) == with_duplicates - demo_model.lm_head.weight.numel()


def test_macs_per_token_follows_the_documented_formula(demo_model):
    c = demo_model.config
    h, q, kv, inter, n = c.hidden_size, c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim, c.intermediate_size, c.num_hidden_layers
    linear = n * (h * q + 2 * h * kv + q * h + 3 * h * inter) + h * c.vocab_size
    seq = 128
    assert macs_per_token(demo_model, seq) == linear + n * 2 * q * (seq + 1) // 2


def test_measure_cost_reports_speed_and_memory_on_this_device(demo_model):
    cost = measure_cost(demo_model, seq_len=32, batch_size=2, warmup=1, iters=2)
    assert cost.parameters == count_parameters(demo_model)
    assert cost.latency_ms > 0 and cost.throughput_tokens_per_s > 0 and cost.peak_memory_bytes > 0
    assert cost.peak_memory_method.startswith(cost.device.split(":")[0])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_pick_device_falls_back_to_cpu_fp32():
    assert pick_device() == (torch.device("cpu"), torch.float32)
    with pytest.raises(LorashearError, match="no CUDA GPU"):
        pick_device("cuda")


# ------------------------------------------------------------------------------------------------ CLI
def _cli(*args):
    return subprocess.run([sys.executable, "-m", "lorashear", "eval", *args], capture_output=True, text=True,
                          cwd=DEMO_MODEL_DIR.parent.parent, timeout=300)


def test_cli_bad_data_file_exits_2_with_one_line_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{broken\n')
    res = _cli(str(DEMO_MODEL_DIR), "--data", str(bad))
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [f"lorashear eval: error: {bad}: line 2: malformed JSON (Expecting property name enclosed in double quotes)"]


def test_cli_evaluates_a_local_file_and_writes_json(tmp_path):
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in demo_corpus("test")["code"][:2]))
    res = _cli("demo", "--data", f"mine={data}", "--protocol", "short", "--max-tokens", "400", "--no-cost",
               "--json", str(tmp_path / "out.json"))
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "out.json").read_text())
    (row,) = report["perplexity"]
    assert (row["source"], row["protocol"], row["n_tokens"]) == ("mine", "short", 3 * 127)
    assert "mine" in res.stdout and "perplexity" in res.stdout


# -------------------------------------------------------------------------------------------- lm-eval
def test_lm_eval_adapter_runs_a_local_task(tmp_path, demo_model, demo_tokenizer):
    pytest.importorskip("lm_eval")
    from lorashear.evaluate import run_lm_eval

    rows = [{"question": "def f(x):\n    return", "choices": [" x", " the class"], "answer": 0},
            {"question": "import", "choices": [" os", " banana ("], "answer": 0}]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "task.yaml").write_text(
        "task: lorashear_local_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {tmp_path / 'data.jsonl'}\noutput_type: multiple_choice\ntest_split: test\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\nmetadata:\n  version: 1.0\n"
    )
    res = run_lm_eval(demo_model, demo_tokenizer, ["lorashear_local_mc"], include_path=tmp_path,
                      include_defaults=False)
    assert 0.0 <= res["lorashear_local_mc"]["acc,none"] <= 1.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU measurement")
def test_cpu_peak_memory_is_the_process_peak_rss_not_a_sampled_zero(demo_model):
    from lorashear.evaluate import _cpu_peak_rss

    weights = sum(p.numel() * p.element_size() for p in demo_model.parameters())
    cost = measure_cost(demo_model, seq_len=16, batch_size=1, warmup=1, iters=1)
    assert cost.peak_memory_bytes > weights and "peak resident set size" in cost.peak_memory_method
    base, _ = _cpu_peak_rss(lambda: None)
    peak, method = _cpu_peak_rss(lambda: torch.ones(64 * 2**20, dtype=torch.float32).sum())  # 256 MiB touched
    assert peak - base >= 200 * 2**20, (peak, base, method)
