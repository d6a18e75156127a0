"""Data layer: loading real files, packing, mixtures, instruction masking, calibration sampling, bad input."""
from __future__ import annotations

import gzip
import json

import pytest
import torch

from lorashear.data import (
    DEMO_SOURCES,
    Mixture,
    calibration_samples,
    collate_instructions,
    demo_corpus,
    demo_instructions,
    format_alpaca,
    load_instructions,
    load_sources,
    load_texts,
    pack,
    parse_data_spec,
    token_stream,
    tokenize_instruction,
    tokenize_instructions,
)
from lorashear.errors import LorashearError

DOCS = ["def add(a, b):\n    return a + b\n", "The assert statement checks a condition.", "import os\nprint(os.sep)\n"]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------------------------------- loading
@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "json", "parquet", "csv"])
def test_load_texts_reads_each_file_format(tmp_path, fmt):
    rows = [{"text": t, "other": i} for i, t in enumerate(DOCS)]
    path = tmp_path / f"data.{fmt}"
    if fmt == "jsonl":
        _write_jsonl(path, rows)
    elif fmt == "jsonl.gz":
        path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    elif fmt == "parquet":
        import pandas as pd

        pd.DataFrame(rows).to_parquet(path)
    elif fmt == "csv":
        import pandas as pd

        pd.DataFrame(rows).to_csv(path, index=False)
    assert load_texts(path) == DOCS


def test_load_texts_reads_a_plain_text_file_as_one_document(tmp_path):
    (tmp_path / "a.txt").write_text(DOCS[0])
    assert load_texts(tmp_path / "a.txt") == [DOCS[0]]


def test_load_texts_reads_a_saved_datasets_folder(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": DOCS}).save_to_disk(str(tmp_path / "ds"))
    assert load_texts(tmp_path / "ds") == DOCS


def test_load_texts_accepts_an_in_memory_dataset():
    import datasets

    assert load_texts(datasets.Dataset.from_dict({"body": DOCS}), field="body") == DOCS


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(LorashearError, match=r"not found: .*nope\.jsonl"):
        load_texts(tmp_path / "nope.jsonl")


def test_empty_file_is_an_empty_dataset_error(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(LorashearError, match="no records"):
        load_texts(tmp_path / "empty.jsonl")


def test_malformed_json_line_reports_its_line_number(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "ok too"}\n{"text": oops}\n')
    with pytest.raises(LorashearError, match=r"line 3: malformed JSON"):
        load_texts(path)


def test_malformed_json_document_reports_its_line_number(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n {"text": "a"},\n {"text": }\n]')
    with pytest.raises(LorashearError, match=r"line 3"):
        load_texts(path)


def test_unknown_field_lists_the_available_fields(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [{"content": "x", "id": 1}])
    with pytest.raises(LorashearError, match=r"field 'text' not found.*available fields: content, id"):
        load_texts(path)


def test_unsupported_suffix_is_refused(tmp_path):
    (tmp_path / "d.xlsx").write_bytes(b"x")
    with pytest.raises(LorashearError, match="unsupported data file"):
        load_texts(tmp_path / "d.xlsx")


def test_parse_data_spec_reads_name_path_and_weight():
    assert parse_data_spec("code=/x/code.jsonl@0.5") == ("code", "/x/code.jsonl", 0.5)
    assert parse_data_spec("/x/train.jsonl.gz") == ("train", "/x/train.jsonl.gz", 1.0)
    with pytest.raises(LorashearError, match="bad weight"):
        parse_data_spec("a=b.jsonl@heavy")


def test_load_sources_names_demo_sources_and_files(tmp_path):
    path = _write_jsonl(tmp_path / "mine.jsonl", [{"text": "hello"}])
    out = load_sources(["demo:test", f"x={path}"])
    assert list(out) == [*DEMO_SOURCES, "x"] and out["x"] == ["hello"]


# ----------------------------------------------------------------------------------------- demo data
def test_demo_corpus_has_every_source_and_split():
    for split in ("train", "validation", "test"):
        corpus = demo_corpus(split)
        assert list(corpus) == list(DEMO_SOURCES)
        assert all(len(texts) > 0 and all(isinstance(t, str) and t for t in texts) for texts in corpus.values())


def test_demo_corpus_rejects_an_unknown_split():
    with pytest.raises(LorashearError, match="unknown split 'dev'"):
        demo_corpus("dev")


def test_demo_instructions_are_alpaca_records():
    ex = demo_instructions("validation")
    assert len(ex) > 50
    assert all(set(e) == {"instruction", "input", "output"} and e["instruction"] and e["output"] for e in ex)


# ------------------------------------------------------------------------------------------- packing
def test_pack_is_the_eos_joined_stream_cut_into_full_blocks(demo_tokenizer):
    eos = demo_tokenizer.eos_token_id
    expected = []
    for d in DOCS:
        expected += demo_tokenizer(d, add_special_tokens=False)["input_ids"] + [eos]
    blocks = pack(DOCS, demo_tokenizer, 8)
    assert blocks.shape == (len(expected) // 8, 8)
    assert blocks.flatten().tolist() == expected[: blocks.numel()]


def test_pack_refuses_blocks_longer_than_the_model_context(demo_tokenizer, demo_model):
    with pytest.raises(LorashearError, match=r"larger than the model's context \(512"):
        pack(DOCS, demo_tokenizer, 1024, model=demo_model)


def test_pack_refuses_too_little_text(demo_tokenizer):
    with pytest.raises(LorashearError, match="not enough for one block"):
        pack(["tiny"], demo_tokenizer, 64)


# ---------------------------------------------------------------------------------------- calibration
def test_calibration_samples_are_seeded_windows_of_the_stream(demo_tokenizer):
    texts = demo_corpus("test")["docs"]
    a = calibration_samples(texts, demo_tokenizer, 6, 32, seed=7)
    b = calibration_samples(texts, demo_tokenizer, 6, 32, seed=7)
    c = calibration_samples(texts, demo_tokenizer, 6, 32, seed=8)
    assert a.shape == (6, 32) and torch.equal(a, b) and not torch.equal(a, c)
    stream = token_stream(texts, demo_tokenizer).tolist()
    joined = ",".join(map(str, stream))
    assert all(",".join(map(str, row.tolist())) in joined for row in a)


def test_calibration_refuses_more_tokens_than_exist(demo_tokenizer):
    with pytest.raises(LorashearError, match="fewer than seq_len=64"):
        calibration_samples(["x = 1"], demo_tokenizer, 2, 64)


# ------------------------------------------------------------------------------------------- mixtures
def test_mixture_sampling_is_deterministic_and_follows_weights(demo_tokenizer):
    corpus = {s: t[:3] for s, t in demo_corpus("test").items()}
    packed = Mixture(corpus).pack(demo_tokenizer, 16)
    x1, s1 = packed.sample(40, seed=3)
    x2, s2 = packed.sample(40, seed=3)
    assert torch.equal(x1, x2) and s1 == s2
    only_code, src = packed.sample(10, seed=3, weights={"code": 1.0, "docs": 0.0, "docstrings": 0.0})
    assert set(src) == {"code"}
    code_rows = {tuple(r.tolist()) for r in packed.blocks["code"]}
    assert all(tuple(r.tolist()) in code_rows for r in only_code)


def test_mixture_rejects_weights_for_unknown_sources():
    with pytest.raises(LorashearError, match="unknown source"):
        Mixture({"a": ["x"]}, weights={"b": 1.0})


# --------------------------------------------------------------------------------------- instructions
def test_prompt_tokens_are_masked_and_the_response_is_learned(demo_tokenizer):
    ex = {"instruction": "What does `json.dumps` do?", "input": "def dumps(obj)", "output": "Serialize obj to JSON."}
    feat = tokenize_instruction(ex, demo_tokenizer, 256)
    prompt, response = format_alpaca(ex)
    n_prompt = len(demo_tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert feat["labels"][:n_prompt] == [-100] * n_prompt
    learned = feat["labels"][n_prompt:]
    assert learned[-1] == demo_tokenizer.eos_token_id
    assert demo_tokenizer.decode(learned[:-1]) == response
    assert feat["input_ids"][n_prompt:] == learned


def test_instruction_longer_than_max_length_keeps_the_prompt_and_cuts_the_response(demo_tokenizer):
    ex = {"instruction": "Say it.", "input": "", "output": "word " * 200}
    feat = tokenize_instruction(ex, demo_tokenizer, 64)
    assert len(feat["input_ids"]) == 64 and feat["labels"][-1] != -100


def test_examples_whose_prompt_fills_max_length_leave_an_error(demo_tokenizer):
    ex = {"instruction": "long " * 100, "input": "", "output": "x"}
    with pytest.raises(LorashearError, match="no instruction example fits"):
        tokenize_instructions([ex], demo_tokenizer, 32)


def test_collate_pads_labels_with_minus_100(demo_tokenizer):
    feats = [tokenize_instruction({"instruction": "a", "input": "", "output": o}, demo_tokenizer, 128)
             for o in ("short", "a much longer answer than the other one")]
    batch = collate_instructions(feats, demo_tokenizer.pad_token_id)
    k = len(feats[0]["input_ids"])
    assert batch["input_ids"].shape[0] == 2
    assert (batch["labels"][0, k:] == -100).all() and (batch["attention_mask"][0, k:] == 0).all()
    assert (batch["input_ids"][0, k:] == demo_tokenizer.pad_token_id).all()


def test_load_instructions_remaps_field_names(tmp_path):
    path = _write_jsonl(tmp_path / "i.jsonl", [{"prompt": "Add.", "response": "3"}])
    assert load_instructions(path, instruction="prompt", output="response") == [
        {"instruction": "Add.", "input": "", "output": "3"}
    ]


def test_load_instructions_names_the_missing_field(tmp_path):
    path = _write_jsonl(tmp_path / "i.jsonl", [{"instruction": "Add.", "answer": "3"}])
    with pytest.raises(LorashearError, match="field 'output' not found"):
        load_instructions(path)
