"""Data layer: load text / instruction data, tokenize, pack into blocks, mix sources, sample calibration.

Every later step (knowledge analysis, pruning, recovery, evaluation) consumes tokens through here, so the
rules live in one place:

* **Documents are joined with the EOS token** when packed into a stream (``token_stream``); blocks are
  contiguous, non-overlapping slices of that stream. Training, calibration and perplexity all use the same
  stream, so numbers are comparable.
* **Local files always work** (``.txt``/``.md``, ``.json``, ``.jsonl``, ``.parquet``, ``.csv``, any of the
  text formats gzip-compressed, a folder written by ``datasets.save_to_disk``, a folder of ``.txt``
  files); a name that is not a local path is tried as a Hugging Face hub dataset (works only online).
* **Bad input raises ``LorashearError`` naming the cause** (file, line, field, sizes), never a bare
  ``KeyError`` from deep inside.

The shipped demo assets (made by ``scripts/make_corpus.py`` and ``scripts/train_demo_model.py``) are
found with ``DEMO_MODEL_DIR``, ``demo_corpus(split)`` and ``demo_instructions(split)``.
"""
from __future__ import annotations

import gzip
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from .errors import LorashearError

# ------------------------------------------------------------------------------------------ demo assets
DEMO_DIR = Path(__file__).resolve().parent.parent / "demo"
DEMO_MODEL_DIR = DEMO_DIR / "model"
DEMO_CORPUS_DIR = DEMO_DIR / "corpus"
DEMO_INSTRUCTIONS_DIR = DEMO_DIR / "instructions"
DEMO_SOURCES: tuple[str, ...] = ("docs", "docstrings", "code")
SPLITS: tuple[str, ...] = ("train", "validation", "test")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise LorashearError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")


def demo_corpus(split: str = "validation", sources: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Texts of the shipped demo corpus, per source: ``{"docs": [...], "docstrings": [...], "code": [...]}``.

    Wrap the result in ``Mixture(...)`` to sample from it with weights.
    """
    _check_split(split)
    names = tuple(sources) if sources is not None else DEMO_SOURCES
    unknown = [s for s in names if s not in DEMO_SOURCES]
    if unknown:
        raise LorashearError(f"unknown demo source(s) {unknown}; the demo corpus has {', '.join(DEMO_SOURCES)}")
    return {s: load_texts(DEMO_CORPUS_DIR / s / f"{split}.jsonl.gz") for s in names}


def demo_instructions(split: str = "train") -> list[dict[str, str]]:
    """The shipped Alpaca-format instruction set (``instruction`` / ``input`` / ``output``) for a split."""
    _check_split(split)
    return load_instructions(DEMO_INSTRUCTIONS_DIR / f"{split}.jsonl.gz")


# ----------------------------------------------------------------------------------------------- loading
_TEXT_SUFFIXES = {".txt", ".md", ".rst", ".py"}


def _suffixes(path: Path) -> tuple[str, bool]:
    """(format suffix, gzipped?) — ``data.jsonl.gz`` -> (".jsonl", True)."""
    sfx = [s.lower() for s in path.suffixes]
    if sfx and sfx[-1] == ".gz":
        return (sfx[-2] if len(sfx) > 1 else ""), True
    return (sfx[-1] if sfx else ""), False


def _read_text(path: Path, gz: bool) -> str:
    try:
        raw = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
        return raw.decode("utf-8")
    except (OSError, EOFError) as exc:
        raise LorashearError(f"cannot read {path}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise LorashearError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def _read_jsonl(path: Path, gz: bool) -> list[dict]:
    records = []
    for lineno, line in enumerate(_read_text(path, gz).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LorashearError(f"{path}: line {lineno}: malformed JSON ({exc.msg})") from exc
        if not isinstance(obj, dict):
            raise LorashearError(f"{path}: line {lineno}: expected a JSON object, got {type(obj).__name__}")
        records.append(obj)
    return records


def _read_json(path: Path, gz: bool) -> list[dict]:
    text = _read_text(path, gz)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        # A JSON-lines file saved as .json is common; accept it (with line numbers on errors).
        if exc.msg == "Extra data" and text.lstrip().startswith("{"):
            return _read_jsonl(path, gz)
        raise LorashearError(f"{path}: line {exc.lineno}: malformed JSON ({exc.msg})") from exc
    if isinstance(obj, dict):
        lists = [k for k, v in obj.items() if isinstance(v, list)]
        if len(lists) == 1:  # {"data": [...]} style
            obj = obj[lists[0]]
        else:
            raise LorashearError(f"{path}: expected a JSON list of objects (or one object holding one list)")
    if not isinstance(obj, list):
        raise LorashearError(f"{path}: expected a JSON list of objects, got {type(obj).__name__}")
    for i, rec in enumerate(obj):
        if not isinstance(rec, dict):
            raise LorashearError(f"{path}: item {i} is {type(rec).__name__}, expected an object")
    return obj


def _read_dataset(ds: Any, where: str, split: str | None) -> list[dict]:
    """Rows of a ``datasets.Dataset`` (or one split of a ``DatasetDict``)."""
    import datasets

    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        chosen = split or ("train" if "train" in ds else None)
        if chosen not in ds:
            raise LorashearError(f"{where} has splits {', '.join(ds)}; choose one with split=...")
        ds = ds[chosen]
    return [dict(r) for r in ds]


_DATA_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".gz", ".txt", ".md", ".rst", ".arrow")


def _looks_like_hub_name(s: str) -> bool:
    """``wikitext`` or ``owner/name`` (not a relative/absolute path, not a file name with a data suffix)."""
    if s.startswith((".", "/", "~")) or "\\" in s or len(s.split("/")) > 2 or not all(s.split("/")):
        return False
    return not s.lower().endswith(_DATA_SUFFIXES)


def load_records(source: str | Path | Any, *, split: str | None = None) -> list[dict]:
    """Load rows (dicts) from a file, a folder, a ``datasets`` object, or (online) a hub dataset name.

    Supported local files: ``.jsonl``, ``.json`` (a list of objects), ``.parquet``, ``.csv``, ``.txt``/``.md``
    (the whole file is one record ``{"text": ...}``), each optionally ``.gz``. A folder is either a
    ``datasets.save_to_disk`` folder or a folder of such files (read in sorted order). Raises
    ``LorashearError`` for missing paths, malformed JSON (with the line number) and empty data.
    """
    if not isinstance(source, (str, Path)):
        if hasattr(source, "column_names") or hasattr(source, "keys"):
            records = _read_dataset(source, "the given dataset", split)
            if not records:
                raise LorashearError("the given dataset is empty")
            return records
        raise LorashearError(f"cannot load data from a {type(source).__name__}; pass a path or a datasets.Dataset")
    path = Path(source).expanduser()
    if not path.exists():
        name = str(source)
        if _looks_like_hub_name(name):
            return _load_hub(name, split)
        raise LorashearError(f"data file not found: {path}")
    if path.is_dir():
        records = _load_dir(path, split)
    else:
        records = _load_file(path)
    if not records:
        raise LorashearError(f"{path} holds no records (empty dataset)")
    return records


def _load_file(path: Path) -> list[dict]:
    fmt, gz = _suffixes(path)
    if fmt == ".jsonl":
        return _read_jsonl(path, gz)
    if fmt == ".json":
        return _read_json(path, gz)
    if fmt in _TEXT_SUFFIXES:
        text = _read_text(path, gz)
        return [{"text": text}] if text.strip() else []
    if fmt == ".parquet" and not gz:
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as exc:  # pyarrow raises several types for a broken file
            raise LorashearError(f"cannot read Parquet file {path}: {exc}") from exc
    if fmt == ".csv":
        import pandas as pd

        try:
            frame = pd.read_csv(io.StringIO(_read_text(path, gz)))
        except Exception as exc:
            raise LorashearError(f"cannot read CSV file {path}: {exc}") from exc
        return frame.to_dict(orient="records")
    raise LorashearError(
        f"unsupported data file {path.name}: use .jsonl, .json, .parquet, .csv or .txt (optionally .gz)"
    )


def _load_dir(path: Path, split: str | None) -> list[dict]:
    if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as exc:
            raise LorashearError(f"cannot load the saved dataset at {path}: {exc}") from exc
        return _read_dataset(ds, str(path), split)
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    if split is not None:
        files = [p for p in files if p.name.split(".")[0] == split] or files
    records: list[dict] = []
    for f in files:
        try:
            records.extend(_load_file(f))
        except LorashearError as exc:
            if "unsupported data file" not in str(exc):
                raise
    return records


def _load_hub(name: str, split: str | None) -> list[dict]:
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as exc:  # offline, unknown name, gated...
        raise LorashearError(
            f"{name!r} is not a local path and could not be loaded from the Hugging Face hub "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    records = _read_dataset(ds, name, split)
    if not records:
        raise LorashearError(f"hub dataset {name!r} is empty")
    return records


def _field_values(records: list[dict], fields: Sequence[str], where: str) -> None:
    available = sorted({k for r in records[:1000] for k in r})
    for f in fields:
        if f not in records[0]:
            raise LorashearError(f"field {f!r} not found in {where}; available fields: {', '.join(available)}")


def load_texts(source: str | Path | Any, *, field: str = "text", split: str | None = None) -> list[str]:
    """Documents (strings) from ``source`` (see ``load_records``), taken from ``field``; empty ones dropped."""
    records = load_records(source, split=split)
    where = str(source) if isinstance(source, (str, Path)) else "the given dataset"
    _field_values(records, [field], where)
    texts = []
    for i, r in enumerate(records):
        v = r.get(field)
        if v is None:
            raise LorashearError(f"record {i} of {where} has no field {field!r}")
        if not isinstance(v, str):
            raise LorashearError(f"record {i} of {where}: field {field!r} is {type(v).__name__}, expected text")
        if v.strip():
            texts.append(v)
    if not texts:
        raise LorashearError(f"{where} holds no non-empty text in field {field!r}")
    return texts


# ----------------------------------------------------------------------------------------- tokenization
def _eos_id(tokenizer: Any) -> int | None:
    return getattr(tokenizer, "eos_token_id", None)


def tokenize_texts(texts: Sequence[str], tokenizer: Any) -> list[list[int]]:
    """Token ids of each document, without special tokens (the stream adds EOS between documents)."""
    if isinstance(texts, str):
        texts = [texts]
    out: list[list[int]] = []
    for start in range(0, len(texts), 256):  # batches keep the fast tokenizer's parallelism, bounded memory
        batch = list(texts[start:start + 256])
        # verbose=False: documents longer than the model's context are fine here, they get packed
        out.extend(tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"])
    return out


def token_stream(texts: Sequence[str], tokenizer: Any, *, add_eos: bool = True) -> torch.Tensor:
    """All documents as one 1-D LongTensor, each followed by EOS (when the tokenizer has one)."""
    eos = _eos_id(tokenizer) if add_eos else None
    ids: list[int] = []
    for doc in tokenize_texts(texts, tokenizer):
        ids.extend(doc)
        if eos is not None:
            ids.append(eos)
    if not ids:
        raise LorashearError("no tokens: the texts are empty")
    return torch.tensor(ids, dtype=torch.long)


def texts_for_tokens(texts: Sequence[str], tokenizer: Any, n_tokens: int, *, seed: int | None = None) -> list[str]:
    """The fewest documents that hold at least ``n_tokens`` tokens (EOS included): a prefix of ``texts``
    (``seed=None``: a stream cut at ``n_tokens`` is then the same as the full stream's first tokens), or a
    seeded random subset kept in corpus order. Saves tokenizing a whole corpus when a run reads a fraction."""
    order = list(range(len(texts)))
    if seed is not None:
        order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(int(seed))).tolist()
    chosen, count = [], 0
    for start in range(0, len(order), 8):  # small batches: one source file can hold 100k tokens
        batch = order[start:start + 8]
        for i, ids in zip(batch, tokenize_texts([texts[i] for i in batch], tokenizer)):
            chosen.append(i)
            count += len(ids) + 1
            if count >= n_tokens:
                return [texts[i] for i in sorted(chosen)]
    return [texts[i] for i in sorted(chosen)]


def model_context(model_or_config: Any) -> int | None:
    """The model's maximum sequence length (``max_position_embeddings`` or equivalent), if it declares one."""
    cfg = getattr(model_or_config, "config", model_or_config)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def check_seq_len(seq_len: int, model_or_config: Any | None) -> None:
    """Raise ``LorashearError`` if ``seq_len`` is not positive or exceeds the model's context."""
    if not isinstance(seq_len, int) or seq_len < 2:
        raise LorashearError(f"sequence length must be an integer >= 2, got {seq_len!r}")
    if model_or_config is None:
        return
    ctx = model_context(model_or_config)
    if ctx is not None and seq_len > ctx:
        raise LorashearError(f"sequence length {seq_len} is larger than the model's context ({ctx} tokens)")


def pack(
    texts: Sequence[str] | torch.Tensor,
    tokenizer: Any,
    block_size: int,
    *,
    model: Any | None = None,
    add_eos: bool = True,
) -> torch.Tensor:
    """Pack documents into ``[n_blocks, block_size]`` token blocks (contiguous slices of ``token_stream``).

    The tail that does not fill a whole block is dropped, so every block is full-length and no padding or
    attention mask is needed. ``texts`` may also be a ready 1-D token stream. Pass ``model`` (or its config)
    to have ``block_size`` checked against its context.
    """
    check_seq_len(block_size, model)
    stream = texts if isinstance(texts, torch.Tensor) else token_stream(texts, tokenizer, add_eos=add_eos)
    n = stream.numel() // block_size
    if n == 0:
        raise LorashearError(f"only {stream.numel()} tokens: not enough for one block of {block_size}")
    return stream[: n * block_size].view(n, block_size).clone()


def calibration_samples(
    texts: Sequence[str],
    tokenizer: Any,
    n_samples: int,
    seq_len: int,
    *,
    seed: int = 0,
    model: Any | None = None,
) -> torch.Tensor:
    """``[n_samples, seq_len]`` windows drawn at seeded random offsets of the token stream.

    The same (texts, tokenizer, n, seq_len, seed) always gives the same tensor; windows may overlap, as in
    the Wanda/SparseGPT calibration loaders.
    """
    check_seq_len(seq_len, model)
    if not isinstance(n_samples, int) or n_samples < 1:
        raise LorashearError(f"number of calibration samples must be >= 1, got {n_samples!r}")
    stream = token_stream(texts, tokenizer)
    if stream.numel() < seq_len:
        raise LorashearError(f"only {stream.numel()} tokens of calibration text: fewer than seq_len={seq_len}")
    gen = torch.Generator().manual_seed(int(seed))
    starts = torch.randint(0, stream.numel() - seq_len + 1, (n_samples,), generator=gen)
    return torch.stack([stream[s: s + seq_len] for s in starts.tolist()])


# -------------------------------------------------------------------------------------------- mixtures
@dataclass
class Mixture:
    """Named text sources with sampling weights (weights need not sum to 1; they are normalised).

    ``Mixture(demo_corpus("train"))`` gives equal weights. ``pack`` turns it into a ``PackedMixture``
    from which seeded batches are drawn with the stored weights or any other weights (the dynamic data
    adaptor of recovery changes them every round).
    """

    sources: dict[str, list[str]]
    weights: dict[str, float] = field(default_factory=dict)
    name: str = "mixture"

    def __post_init__(self) -> None:
        if not self.sources:
            raise LorashearError(f"mixture {self.name!r} has no sources")
        for s, texts in self.sources.items():
            if not texts:
                raise LorashearError(f"source {s!r} of mixture {self.name!r} is empty")
        if not self.weights:
            self.weights = {s: 1.0 for s in self.sources}
        self.weights = normalize_weights(self.weights, self.sources)

    def pack(self, tokenizer: Any, block_size: int, *, model: Any | None = None) -> "PackedMixture":
        return PackedMixture(
            {s: pack(t, tokenizer, block_size, model=model) for s, t in self.sources.items()},
            dict(self.weights),
        )


def normalize_weights(weights: Mapping[str, float], sources: Iterable[str]) -> dict[str, float]:
    """Check weights name known sources and are >= 0 with a positive sum; return them summing to 1."""
    names = list(sources)
    unknown = [w for w in weights if w not in names]
    if unknown:
        raise LorashearError(f"weights for unknown source(s) {unknown}; sources are {', '.join(names)}")
    vals = {s: float(weights.get(s, 0.0)) for s in names}
    if any(v < 0 or v != v for v in vals.values()):
        raise LorashearError(f"source weights must be >= 0, got {vals}")
    total = sum(vals.values())
    if total <= 0:
        raise LorashearError("source weights sum to zero")
    return {s: v / total for s, v in vals.items()}


@dataclass
class PackedMixture:
    """Per-source packed blocks ``{source: [n_blocks, block_size]}`` plus default weights."""

    blocks: dict[str, torch.Tensor]
    weights: dict[str, float]

    @property
    def block_size(self) -> int:
        return next(iter(self.blocks.values())).shape[1]

    def sample(
        self, n_blocks: int, *, seed: int = 0, weights: Mapping[str, float] | None = None
    ) -> tuple[torch.Tensor, list[str]]:
        """Draw ``n_blocks`` blocks: the source of each is drawn ∝ weights, then a block of it uniformly
        (without replacement until that source is exhausted). Returns (``[n, block_size]``, source per row).
        Deterministic for a given seed and weights.
        """
        if not isinstance(n_blocks, int) or n_blocks < 1:
            raise LorashearError(f"n_blocks must be >= 1, got {n_blocks!r}")
        w = normalize_weights(weights if weights is not None else self.weights, self.blocks)
        names = list(self.blocks)
        gen = torch.Generator().manual_seed(int(seed))
        probs = torch.tensor([w[s] for s in names], dtype=torch.float64)
        picks = torch.multinomial(probs, n_blocks, replacement=True, generator=gen).tolist()
        order = {s: torch.randperm(self.blocks[s].shape[0], generator=gen).tolist() for s in names}
        used = {s: 0 for s in names}
        rows, srcs = [], []
        for k in picks:
            s = names[k]
            perm = order[s]
            rows.append(self.blocks[s][perm[used[s] % len(perm)]])
            used[s] += 1
            srcs.append(s)
        return torch.stack(rows), srcs


SELF_DATA = "self"  # a --data spec of lorashear prune: text sampled from the dense model (prune/run.py _data)


def file_specs(specs: Sequence[str]) -> list[str]:
    """The data specs that ``load_sources`` reads: every one but ``SELF_DATA``, which the model generates."""
    return [s for s in specs if s != SELF_DATA]


def parse_data_spec(spec: str) -> tuple[str, str, float]:
    """Parse a command-line data spec ``[NAME=]PATH[@WEIGHT]`` into (name, path, weight).

    The name defaults to the file name without suffixes; the weight to 1.
    """
    name, _, rest = spec.partition("=") if "=" in spec else ("", "", spec)
    path, weight = rest, 1.0
    if "@" in rest:
        path, _, w = rest.rpartition("@")
        try:
            weight = float(w)
        except ValueError as exc:
            raise LorashearError(f"bad weight {w!r} in data spec {spec!r}; expected NAME=PATH@WEIGHT") from exc
    if not path:
        raise LorashearError(f"empty path in data spec {spec!r}")
    if not name:
        name = Path(path).name.split(".")[0] or path
    return name, path, weight


def check_data_spec(spec: str) -> None:
    """Refuse what ``load_sources`` would refuse first, without reading any data (a job form checks its fields
    with this before it launches): an unknown demo split, a malformed spec, a path that does not exist. A name
    that is no local path is refused too: it could only be a hub dataset, which a form does not look up."""
    spec = spec.strip()
    if spec == "demo" or spec.startswith("demo:"):
        if spec.partition(":")[2]:
            _check_split(spec.partition(":")[2])
        return
    if spec == SELF_DATA:
        return
    _, path, _ = parse_data_spec(spec)
    if Path(path).expanduser().exists():
        return
    if _looks_like_hub_name(path):
        raise LorashearError(f"{path!r} is not a local path, nor demo or demo:SPLIT (hub dataset names are not looked up here)")
    raise LorashearError(f"data file not found: {Path(path).expanduser()}")


def load_sources(specs: Sequence[str], *, field: str = "text", split: str | None = None) -> dict[str, list[str]]:
    """Named text sources from command-line style specs (weights, if any, are ignored here).

    ``"demo"`` is every source of the demo corpus (validation split unless ``split`` is given),
    ``"demo:test"`` picks the split; anything else is ``[NAME=]PATH[@WEIGHT]`` read with ``load_texts``.
    """
    out: dict[str, list[str]] = {}
    for spec in specs:
        if spec == SELF_DATA:  # needs the model: the run that takes it (prune) draws it before calling here
            raise LorashearError(f"data {SELF_DATA!r} (text sampled from the model) is taken by lorashear prune only")
        if spec == "demo" or spec.startswith("demo:"):
            chosen = spec.partition(":")[2] or split or "validation"
            for name, texts in demo_corpus(chosen).items():
                out[name if name not in out else f"{name}:{chosen}"] = texts
            continue
        name, path, _ = parse_data_spec(spec)
        if name in out:
            raise LorashearError(f"two data sources are named {name!r}; name them with NAME=PATH")
        out[name] = load_texts(path, field=field, split=split)
    if not out:
        raise LorashearError("no data sources given")
    return out


# ----------------------------------------------------------------------------------- instruction data
ALPACA_PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def load_instructions(
    source: str | Path | Any,
    *,
    instruction: str = "instruction",
    input: str = "input",
    output: str = "output",
    split: str | None = None,
) -> list[dict[str, str]]:
    """Alpaca-format examples ``{"instruction", "input", "output"}`` from ``source`` (see ``load_records``).

    Field names can be remapped (e.g. ``instruction="prompt", output="response"``); a missing ``input``
    field means "no input". Raises ``LorashearError`` when instruction/output fields are absent.
    """
    records = load_records(source, split=split)
    where = str(source) if isinstance(source, (str, Path)) else "the given dataset"
    _field_values(records, [instruction, output], where)
    out = []
    for i, r in enumerate(records):
        ins, inp, outp = r.get(instruction), r.get(input, "") or "", r.get(output)
        if not isinstance(ins, str) or not isinstance(outp, str) or not isinstance(inp, str):
            raise LorashearError(f"record {i} of {where}: instruction/input/output must be text")
        out.append({"instruction": ins, "input": inp, "output": outp})
    return out


def format_alpaca(example: Mapping[str, str]) -> tuple[str, str]:
    """(prompt, response) with the Stanford Alpaca template; the prompt ends with ``### Response:\\n``."""
    tpl = ALPACA_PROMPT if example.get("input") else ALPACA_PROMPT_NO_INPUT
    return tpl.format(instruction=example["instruction"], input=example.get("input", "")), example["output"]


def tokenize_instruction(example: Mapping[str, str], tokenizer: Any, max_length: int) -> dict[str, list[int]] | None:
    """Token ids and labels of one example; prompt positions get label -100 so only the response is learned.

    Prompt and response are tokenized separately and concatenated (the boundary is exact), followed by
    EOS (labelled, so the model learns to stop). Longer than ``max_length``: the response is cut at the end.
    Returns None when not even one response token fits.
    """
    prompt, response = format_alpaca(example)
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    eos = _eos_id(tokenizer)
    if eos is not None:
        r_ids = r_ids + [eos]
    room = max_length - len(p_ids)
    if room < 1:
        return None
    r_ids = r_ids[:room]
    ids = p_ids + r_ids
    return {"input_ids": ids, "labels": [-100] * len(p_ids) + list(r_ids), "attention_mask": [1] * len(ids)}


def tokenize_instructions(
    examples: Sequence[Mapping[str, str]], tokenizer: Any, max_length: int, *, model: Any | None = None
) -> list[dict[str, list[int]]]:
    """``tokenize_instruction`` over a list; examples whose prompt alone fills ``max_length`` are dropped."""
    check_seq_len(max_length, model)
    feats = [f for f in (tokenize_instruction(e, tokenizer, max_length) for e in examples) if f is not None]
    if not feats:
        raise LorashearError(f"no instruction example fits in max_length={max_length} (every prompt is longer)")
    return feats


def collate_instructions(features: Sequence[Mapping[str, list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: ``input_ids`` with ``pad_token_id``, ``labels`` with -100, ``attention_mask`` 0."""
    n = max(len(f["input_ids"]) for f in features)
    ids = torch.full((len(features), n), int(pad_token_id), dtype=torch.long)
    labels = torch.full((len(features), n), -100, dtype=torch.long)
    mask = torch.zeros((len(features), n), dtype=torch.long)
    for i, f in enumerate(features):
        k = len(f["input_ids"])
        ids[i, :k] = torch.tensor(f["input_ids"])
        labels[i, :k] = torch.tensor(f["labels"])
        mask[i, :k] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
