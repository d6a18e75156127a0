"""llama.cpp's own figures for a GGUF file: prompt-processing and generation tokens/s (and optionally perplexity)
measured in llama.cpp itself, through llama-cpp-python — the runtime people deploy on, not our PyTorch timing.

Why a separate module: the measurement needs llama-cpp-python, which is no dependency of the project (it compiles
llama.cpp); everything here imports it only when called, and refuses in one line when it is missing. The file is
written by ``lorashear.deploy``; this module only reads and runs it, so ``deploy`` may call it (``export
--measure``) and the app's Compare view reads the figures it wrote (``read_figures``) without importing torch.

How a figure is obtained (recorded with it, because a tokens/s number without its conditions reads as a property
of the model): ``threads`` CPU threads; a fixed prompt of ``prompt_tokens`` random token ids (seed 0) evaluated in
one batch (prompt tokens/s), then ``gen_tokens`` tokens generated one at a time, each the greedy argmax of the
previous step's logits (generation tokens/s); one warm-up run, then the median of ``reps`` runs; the load average
before and after; the llama-cpp-python version. llama.cpp's CPU "extra" buffer types (weight repacking, AMX) are off
by default (``llama-cli --no-repack``): on the AMX VM this was measured on they crash on every Q8_0 file.

The figures are written beside the GGUF file as ``<file>.llama_cpp.json`` (atomically), with the file's size and
modification time: figures of a file that has since been replaced are refused rather than shown.
"""
from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

from .errors import LorashearError
from .jsonio import read_json, write_json_atomic

FORMAT = "lorashear-llama-cpp-figures"
SUFFIX = ".llama_cpp.json"
PROMPT_SEED = 0
FILE_TYPES = {"0": "f32", "1": "f16", "7": "q8_0", "2": "q4_0"}  # llama.cpp's LLAMA_FTYPE_* as lorashear export names them
INSTALL_HINT = "pip install llama-cpp-python"

# llama.cpp's CPU extra buffer types for the next ``open_llama`` (read by the wrapped default params)
_EXTRA_BUFTS = {"on": False}


# --------------------------------------------------------------------------------------------- the figures
@dataclass
class LlamaCppFigures:
    """What llama.cpp measured on one GGUF file, and how."""

    file: str
    file_bytes: int
    file_mtime_ns: int
    prompt_tokens_per_s: float  # median of the runs
    gen_tokens_per_s: float  # median of the runs
    prompt_runs: list[float]
    gen_runs: list[float]
    threads: int
    reps: int
    prompt_tokens: int
    gen_tokens: int
    llama_cpp_python: str
    load_avg_before: float | None
    load_avg_after: float | None
    cpus: int | None
    when: float
    extra_bufts: bool = False
    perplexity: float | None = None
    ppl_windows: int = 0
    ppl_tokens: int = 0  # tokens predicted (each window's first token is context only)
    dtype: str | None = None  # the file's weight type as exported (f32, f16, q8_0, q4_0), when known

    @classmethod
    def of_runs(cls, path: str | Path, prompt_runs: Sequence[float], gen_runs: Sequence[float], *, threads: int,
                prompt_tokens: int, gen_tokens: int, llama_cpp_python: str, load_avg_before: float | None = None,
                load_avg_after: float | None = None, extra_bufts: bool = False, perplexity: float | None = None,
                ppl_windows: int = 0, ppl_tokens: int = 0, dtype: str | None = None,
                when: float | None = None) -> "LlamaCppFigures":
        """The figures of ``path`` from the per-run tokens/s (medians taken here; the file's identity read now)."""
        if not prompt_runs or len(prompt_runs) != len(gen_runs):
            raise LorashearError("llama.cpp figures need the same number (≥ 1) of prompt and generation runs")
        st = Path(path).stat()
        return cls(file=str(path), file_bytes=st.st_size, file_mtime_ns=st.st_mtime_ns,
                   prompt_tokens_per_s=float(statistics.median(prompt_runs)),
                   gen_tokens_per_s=float(statistics.median(gen_runs)),
                   prompt_runs=[float(x) for x in prompt_runs], gen_runs=[float(x) for x in gen_runs],
                   threads=int(threads), reps=len(prompt_runs), prompt_tokens=int(prompt_tokens),
                   gen_tokens=int(gen_tokens), llama_cpp_python=str(llama_cpp_python),
                   load_avg_before=load_avg_before, load_avg_after=load_avg_after, cpus=os.cpu_count(),
                   when=time.time() if when is None else when, extra_bufts=extra_bufts, perplexity=perplexity,
                   ppl_windows=ppl_windows, ppl_tokens=ppl_tokens, dtype=dtype)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "llama.cpp figures") -> "LlamaCppFigures":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise LorashearError(f"{where}: not lorashear llama.cpp figures")
        names = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except TypeError as exc:
            raise LorashearError(f"{where}: incomplete llama.cpp figures ({exc})") from None

    def how(self) -> str:
        """'2 threads · median of 3 · 128-token prompt, 32 generated · load 1.9 · llama-cpp-python 0.3.36'."""
        parts = [f"{self.threads} thread{'s' if self.threads != 1 else ''}", f"median of {self.reps}",
                 f"{self.prompt_tokens}-token prompt, {self.gen_tokens} generated"]
        if self.load_avg_after is not None:
            parts.append(f"load {self.load_avg_after:.1f}")
        parts.append(f"llama-cpp-python {self.llama_cpp_python}")
        return " · ".join(parts)


def figures_path(gguf_file: str | Path) -> Path:
    """``<file>.llama_cpp.json``: where the figures of ``gguf_file`` live."""
    p = Path(gguf_file)
    return p.with_name(p.name + SUFFIX)


def write_figures(gguf_file: str | Path, figures: LlamaCppFigures | dict[str, Any]) -> Path:
    """Write ``figures`` (or ``measure_gguf``'s dict, checked) beside ``gguf_file`` atomically (a reader never sees
    half a file); returns the path."""
    if isinstance(figures, dict):
        figures = LlamaCppFigures.from_dict(figures)
    if Path(figures.file).expanduser().resolve() != Path(gguf_file).expanduser().resolve():
        raise LorashearError(f"these llama.cpp figures are of {figures.file}, not of {gguf_file}")
    return write_json_atomic(figures_path(gguf_file), figures.to_dict())


def read_figures(gguf_file: str | Path) -> LlamaCppFigures | None:
    """The figures beside ``gguf_file``; None when it has none. Refused (LorashearError) when the JSON is not ours or
    the GGUF file has changed since it was measured (size or modification time differ)."""
    path = figures_path(gguf_file)
    if not path.is_file():
        return None
    figs = LlamaCppFigures.from_dict(read_json(path, FORMAT, "llama.cpp figures"), str(path))
    gf = Path(gguf_file)
    if gf.is_file():
        st = gf.stat()
        if (st.st_size, st.st_mtime_ns) != (figs.file_bytes, figs.file_mtime_ns):
            raise LorashearError(f"{path}: {gf.name} has changed since it was measured; measure it again")
    return figs


# ------------------------------------------------------------------------------------------- llama.cpp
def llama_cpp_module():
    """``llama_cpp``, or a one-line refusal naming the install command (it is no dependency of lorashear)."""
    try:
        import llama_cpp
    except ImportError:
        raise LorashearError(f"measuring in llama.cpp needs llama-cpp-python, which is not installed: {INSTALL_HINT}") \
            from None
    return llama_cpp


def _wrap_default_params(llama_cpp) -> None:
    """llama-cpp-python has no argument for llama.cpp's ``use_extra_bufts`` (``llama-cli --no-repack``): its default
    model params are wrapped once so that ``open_llama`` decides it per model."""
    if getattr(llama_cpp, "_lorashear_wrapped", False):
        return
    orig = llama_cpp.llama_model_default_params

    def params():
        p = orig()
        p.use_extra_bufts = _EXTRA_BUFTS["on"]
        return p
    llama_cpp.llama_model_default_params = params
    import llama_cpp.llama as mod

    mod.llama_cpp.llama_model_default_params = params
    llama_cpp._lorashear_wrapped = True


def open_llama(path: str | Path, *, n_ctx: int, threads: int, logits_all: bool = True, f32_cache: bool = False,
               extra_bufts: bool = False):
    """llama.cpp (a ``llama_cpp.Llama``) on ``path``. ``logits_all``: keep every position's logits (perplexity,
    logit comparisons); ``f32_cache``: K/V cache in f32 (llama.cpp's default f16 cache alone moves logits by ~1e-3);
    ``extra_bufts``: llama.cpp's CPU repack/AMX buffer types (off: they crash Q8_0 files on AMX VMs)."""
    llama_cpp = llama_cpp_module()
    path = Path(path)
    if not path.is_file():
        raise LorashearError(f"{path}: no such GGUF file")
    _wrap_default_params(llama_cpp)
    _EXTRA_BUFTS["on"] = bool(extra_bufts)
    extra = {"type_k": 0, "type_v": 0} if f32_cache else {}  # GGML_TYPE_F32
    try:
        return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=threads,
                               n_threads_batch=threads, logits_all=logits_all, verbose=False, **extra)
    except ValueError as exc:  # llama-cpp-python's "Failed to load model from file"
        raise LorashearError(f"{path}: llama.cpp could not load it ({str(exc).splitlines()[0]})") from None


def random_prompt(n_vocab: int, n: int, seed: int = PROMPT_SEED) -> list[int]:
    """``n`` token ids drawn from ``[4, n_vocab)`` (the first ids are often special): the same prompt for every file
    of a vocabulary, so files are timed on identical work."""
    import numpy as np

    lo = 4 if n_vocab > 8 else 0
    return [int(x) for x in np.random.default_rng(seed).integers(lo, n_vocab, n)]


def last_logits(llm) -> Any:
    """The logits of the last evaluated position (a view of llama.cpp's buffer): what a sampler reads."""
    import numpy as np

    llama_cpp = llama_cpp_module()
    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))


def time_once(llm, prompt: Sequence[int], gen_tokens: int) -> tuple[float, float]:
    """(prompt tokens/s, generation tokens/s) of one run: ``prompt`` in one batch, then ``gen_tokens`` greedy tokens
    one at a time — the work of a chat turn."""
    import numpy as np

    llm.reset()
    t0 = time.perf_counter()
    llm.eval(list(prompt))
    t1 = time.perf_counter()
    for _ in range(gen_tokens):
        llm.eval([int(np.argmax(last_logits(llm)))])
    t2 = time.perf_counter()
    return len(prompt) / (t1 - t0), gen_tokens / (t2 - t1)


def logits_of(llm, ids: Sequence[int]) -> Any:
    """llama.cpp's logits at every position of ``ids`` (the model opened with ``logits_all``), float32 (n, vocab)."""
    import numpy as np

    llm.reset()
    llm.eval(list(ids))
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def window_nll(llm, ids: Sequence[int]) -> float:
    """Summed negative log-likelihood of ``ids[1:]`` given the tokens before each (float64 log-softmax)."""
    import numpy as np

    x = logits_of(llm, ids)[:-1].astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    logz = (m[:, 0] + np.log(np.exp(x - m).sum(axis=1)))
    target = x[np.arange(len(ids) - 1), np.asarray(ids[1:])]
    return float((logz - target).sum())


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def measure_gguf(path: str | Path, *, threads: int = 2, prompt_tokens: int = 128, gen_tokens: int = 32,
                 reps: int = 3, ppl_texts: Sequence[Sequence[int] | str] | None = None,
                 extra_bufts: bool = False) -> dict[str, Any]:
    """Measure the GGUF file ``path`` in llama.cpp: the medians of ``reps`` runs of prompt processing
    (``prompt_tokens`` in one batch) and generation (``gen_tokens`` greedy tokens), on ``threads`` threads, after
    one warm-up run; and, when ``ppl_texts`` is given, perplexity over those windows — each a list of token ids, or a
    text tokenized by the file's own tokenizer — with llama.cpp's logits. Returns ``LlamaCppFigures.to_dict()``
    (the figures and how they were obtained, with the file's weight type from its ``general.file_type``)."""
    for name, v, lo in (("threads", threads, 1), ("prompt_tokens", prompt_tokens, 1), ("gen_tokens", gen_tokens, 1),
                        ("reps", reps, 1)):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise LorashearError(f"measure_gguf: {name} must be a whole number ≥ {lo}, got {v!r}")
    path = Path(path).expanduser()
    if path.suffix.lower() != ".gguf" or not path.is_file():
        raise LorashearError(f"{path}: not a GGUF file (measure_gguf runs a .gguf file in llama.cpp)")
    llama_cpp = llama_cpp_module()
    load_before = _load()
    llm = open_llama(path, n_ctx=prompt_tokens + gen_tokens + 8, threads=threads, logits_all=False,
                     extra_bufts=extra_bufts)
    try:
        prompt = random_prompt(llm.n_vocab(), prompt_tokens)
        time_once(llm, prompt, gen_tokens)  # warm-up: page the weights in, size the buffers
        runs = [time_once(llm, prompt, gen_tokens) for _ in range(reps)]
        n_ctx_train = int(llama_cpp.llama_model_n_ctx_train(llm.model))
        ft = llm.metadata.get("general.file_type")
        dtype = None if ft is None else FILE_TYPES.get(str(ft), f"file type {ft}")
    finally:
        llm.close()
    ppl, n_windows, n_tokens = None, 0, 0
    if ppl_texts:
        ppl, n_windows, n_tokens = _perplexity(path, ppl_texts, threads, extra_bufts, n_ctx_train, llama_cpp)
    figs = LlamaCppFigures.of_runs(path, [r[0] for r in runs], [r[1] for r in runs], threads=threads,
                                   prompt_tokens=prompt_tokens, gen_tokens=gen_tokens,
                                   llama_cpp_python=llama_cpp.__version__, load_avg_before=load_before,
                                   load_avg_after=_load(), extra_bufts=extra_bufts, perplexity=ppl,
                                   ppl_windows=n_windows, ppl_tokens=n_tokens, dtype=dtype)
    return figs.to_dict()


def _perplexity(path: Path, texts: Sequence[Sequence[int] | str], threads: int, extra_bufts: bool, n_train: int,
                llama_cpp) -> tuple[float, int, int]:
    """exp(mean NLL) over the windows (each window scored on its own, its first token as context only)."""
    vocab = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        windows = [vocab.tokenize(t.encode(), add_bos=True, special=False) if isinstance(t, str) else [int(i) for i in t]
                   for t in texts]
        n_vocab = vocab.n_vocab()
    finally:
        vocab.close()
    for i, w in enumerate(windows):
        if len(w) < 2:
            raise LorashearError(f"measure_gguf: perplexity window {i} has {len(w)} token(s); it needs at least 2")
        if len(w) > n_train:
            raise LorashearError(f"measure_gguf: perplexity window {i} has {len(w)} tokens, more than the model's "
                                 f"context ({n_train})")
        if min(w) < 0 or max(w) >= n_vocab:
            raise LorashearError(f"measure_gguf: perplexity window {i} holds a token id outside the vocabulary "
                                 f"(0..{n_vocab - 1})")
    llm = open_llama(path, n_ctx=max(map(len, windows)), threads=threads, logits_all=True, extra_bufts=extra_bufts)
    try:
        total = sum(window_nll(llm, w) for w in windows)
    finally:
        llm.close()
    n = sum(len(w) - 1 for w in windows)
    return math.exp(total / n), len(windows), n
