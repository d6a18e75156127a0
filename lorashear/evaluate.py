"""Evaluation: perplexity under the two published protocols, and cost (parameters, MACs, speed, memory).

Perplexity protocols (both slice one token stream — the documents joined with EOS, ``data.token_stream`` —
into non-overlapping windows, drop the incomplete tail, and report ``exp(total NLL / predicted tokens)``;
every window predicts its tokens 2..W from the ones before, so a window of W tokens scores W-1 tokens):

* ``short`` — 128-token windows, as LLM-Pruner and LoRAPrune report WikiText-2/PTB perplexity;
* ``long`` — windows of ``min(2048, model context)`` tokens, as Wanda and SliceGPT do.

Numbers from the two protocols are not comparable with each other (longer windows give each token more
context, so lower perplexity); compare a pruned model with its dense parent under the same protocol.

Cost: ``count_parameters`` (unique tensors, tied weights once), ``macs_per_token`` (formula in its
docstring), latency of one forward at batch 1, throughput of a batched forward, and peak memory (CUDA:
``torch.cuda.max_memory_allocated``; CPU: the process's peak resident set size during the forward — Linux
``VmHWM`` reset just before it through ``/proc/self/clear_refs``, else ``getrusage`` ``ru_maxrss`` since
the process started; the method used is named in the report).

Device policy (``loading.pick_device``, applied by the one loader ``loading.load_model``): CUDA with bf16 when
a GPU is present, otherwise CPU with fp32.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from .data import load_sources, model_context, token_stream
from .errors import LorashearError
from .loading import load_model

SHORT_WINDOW = 128
LONG_WINDOW_MAX = 2048
PROTOCOLS = ("short", "long")


@torch.no_grad()
def forward_logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    """Logits of one forward of ``ids`` without KV cache, in eval mode (the model's training flag is restored):
    the number that compress's and save_pruned's self-checks compare between two models."""
    was_training = model.training
    model.eval()
    try:
        return model(input_ids=ids, use_cache=False).logits
    finally:
        model.train(was_training)


def _device_of(model: Any) -> torch.device:
    return next(model.parameters()).device


# ------------------------------------------------------------------------------------------ perplexity
@dataclass
class PerplexityResult:
    """One (source, protocol) measurement. ``n_tokens`` counts predicted (scored) tokens."""

    source: str
    protocol: str
    window: int
    ppl: float
    nll: float
    n_tokens: int
    n_windows: int
    stream_tokens: int

    def to_dict(self) -> dict:
        return asdict(self)


def protocol_window(protocol: str, model: Any) -> int:
    """Window length of a protocol for this model: 128, or min(2048, the model's context)."""
    if protocol == "short":
        return SHORT_WINDOW
    if protocol == "long":
        ctx = model_context(model)
        return min(LONG_WINDOW_MAX, ctx) if ctx else LONG_WINDOW_MAX
    raise LorashearError(f"unknown perplexity protocol {protocol!r}; choose short, long or both")


@torch.inference_mode()
def perplexity(
    model: Any,
    stream: torch.Tensor,
    window: int,
    *,
    batch_tokens: int = 8192,
    source: str = "data",
    protocol: str = "custom",
) -> PerplexityResult:
    """Perplexity of ``model`` on a 1-D token ``stream`` cut into non-overlapping ``window``-token windows.

    The incomplete tail is dropped (as both published protocols do). Windows are batched so that a batch
    holds about ``batch_tokens`` tokens; log-probabilities are computed in fp32 whatever the model dtype.
    """
    ctx = model_context(model)
    if window < 2:
        raise LorashearError(f"perplexity window must be >= 2 tokens, got {window}")
    if ctx is not None and window > ctx:
        raise LorashearError(f"perplexity window {window} is larger than the model's context ({ctx} tokens)")
    stream = stream.reshape(-1)
    n_windows = stream.numel() // window
    if n_windows == 0:
        raise LorashearError(
            f"{source}: only {stream.numel()} tokens, fewer than one {window}-token window"
        )
    windows = stream[: n_windows * window].view(n_windows, window)
    dev = _device_of(model)
    per_batch = max(1, batch_tokens // window)
    was_training = model.training
    model.eval()
    total = 0.0
    try:
        for i in range(0, n_windows, per_batch):
            ids = windows[i: i + per_batch].to(dev)
            logits = model(input_ids=ids, use_cache=False).logits
            total += torch.nn.functional.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"
            ).item()
    finally:
        model.train(was_training)
    n_tokens = n_windows * (window - 1)
    nll = total / n_tokens
    return PerplexityResult(source, protocol, window, math.exp(nll), nll, n_tokens, n_windows, int(stream.numel()))


def evaluate_perplexity(
    model: Any,
    tokenizer: Any,
    sources: Mapping[str, Sequence[str]] | Sequence[str],
    *,
    protocols: Sequence[str] = PROTOCOLS,
    max_tokens: int | None = None,
    batch_tokens: int = 8192,
) -> list[PerplexityResult]:
    """Perplexity per source and protocol. ``sources`` maps a name to its documents (a plain list is one
    source called ``data``); ``max_tokens`` keeps only the first N tokens of each source's stream."""
    if isinstance(sources, (list, tuple)):
        sources = {"data": list(sources)}
    if not sources:
        raise LorashearError("no evaluation data given")
    for p in protocols:
        protocol_window(p, model)  # validates the name early
    rows = []
    for name, texts in sources.items():
        stream = token_stream(list(texts), tokenizer)
        if max_tokens is not None:
            stream = stream[:max_tokens]
        for p in protocols:
            rows.append(perplexity(model, stream, protocol_window(p, model), batch_tokens=batch_tokens,
                                   source=name, protocol=p))
    return rows


def unigram_perplexity(train_texts: Sequence[str], eval_texts: Sequence[str], tokenizer: Any) -> float:
    """Perplexity of a context-free baseline: token frequencies of ``train_texts`` with add-one smoothing
    over the whole vocabulary, scored on every token of the ``eval_texts`` stream except the first.

    A model that has learned anything from context must be far below this.
    """
    train = token_stream(list(train_texts), tokenizer)
    ev = token_stream(list(eval_texts), tokenizer)[1:]
    vocab = max(len(tokenizer), int(train.max()) + 1, int(ev.max()) + 1)
    counts = torch.bincount(train, minlength=vocab).double() + 1.0
    logp = torch.log(counts / counts.sum())
    return math.exp(-logp[ev].mean().item())


# ------------------------------------------------------------------------------------------------- cost
def count_parameters(model: Any) -> int:
    """Number of parameters, counting shared (tied) tensors once."""
    seen, n = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


def _linear_shapes(model: Any) -> list[tuple[str, int, int]]:
    from transformers.pytorch_utils import Conv1D

    out = []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            out.append((name, m.in_features, m.out_features))
        elif isinstance(m, Conv1D):  # GPT-2 style: weight is (in, out)
            out.append((name, m.weight.shape[0], m.weight.shape[1]))
    return out


def _attention_widths(model: Any) -> list[int]:
    """Per attention layer, (number of query heads) x head_dim, read from module shapes so that pruned
    models with different head counts per layer are counted right."""
    widths = []
    for _, m in model.named_modules():
        q = getattr(m, "q_proj", None)
        if isinstance(q, torch.nn.Linear):
            widths.append(q.out_features)
            continue
        c = getattr(m, "c_attn", None)  # GPT-2: fused q|k|v, equal thirds
        if c is not None and hasattr(c, "weight") and c.weight.dim() == 2:
            widths.append(c.weight.shape[1] // 3)
    if not widths:
        cfg = getattr(model, "config", None)
        layers = getattr(cfg, "num_hidden_layers", 0) or 0
        heads = getattr(cfg, "num_attention_heads", 0) or 0
        head_dim = getattr(cfg, "head_dim", None) or ((getattr(cfg, "hidden_size", 0) or 0) // max(heads, 1))
        widths = [heads * head_dim] * layers
    return widths


def macs_per_token(model: Any, seq_len: int = SHORT_WINDOW) -> int:
    """Multiply-accumulates per generated/scored token of a forward pass over a ``seq_len`` sequence.

    Formula: ``sum(in x out over every Linear, lm_head included)`` + ``sum over attention layers of
    2 x (query heads x head_dim) x (seq_len + 1) / 2`` — the QK^T scores and the weighted sum of V, each
    one dot product of length head_dim per query head per attended position, and a causal token attends
    to (seq_len + 1) / 2 positions on average. Embedding lookups, norms, activations, RoPE and softmax are
    O(hidden) per token and left out.
    """
    if seq_len < 1:
        raise LorashearError(f"seq_len must be >= 1, got {seq_len}")
    linear = sum(i * o for _, i, o in _linear_shapes(model))
    attention = sum(2 * w for w in _attention_widths(model)) * (seq_len + 1) / 2
    return int(round(linear + attention))


@dataclass
class CostReport:
    """Size and speed of a model on one device. Memory numbers are not comparable across device types:
    see ``peak_memory_method``."""

    parameters: int
    macs_per_token: int
    macs_seq_len: int
    device: str
    dtype: str
    latency_ms: float
    latency_seq_len: int
    throughput_tokens_per_s: float
    throughput_batch_size: int
    peak_memory_bytes: int
    peak_memory_method: str

    def to_dict(self) -> dict:
        return asdict(self)


def _vm_hwm() -> int | None:
    """This process's peak resident set size in bytes (Linux ``VmHWM``), or None where there is none."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _cpu_peak_rss(fn) -> tuple[int, str]:
    """Run ``fn`` and return (peak RSS of the process in bytes, how it was measured). Never a sampled
    figure: the kernel's own high-water mark, reset just before ``fn`` where Linux allows it."""
    import resource
    import sys

    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        reset = _vm_hwm() is not None
    except OSError:
        reset = False
    fn()
    if reset:
        peak = _vm_hwm()
        if peak is not None:
            return peak, ("cpu: peak resident set size of the process during the first batched forward (Linux VmHWM, "
                          "reset just before it via /proc/self/clear_refs; includes the weights and the Python runtime)")
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = maxrss if sys.platform == "darwin" else maxrss * 1024
    return peak, ("cpu: peak resident set size of the process since it started (getrusage ru_maxrss; includes "
                  "the weights, the Python runtime and everything the process did before this forward)")


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


@torch.inference_mode()
def _time_forward(model: Any, ids: torch.Tensor, warmup: int, iters: int) -> float:
    dev = ids.device
    for _ in range(warmup):
        model(input_ids=ids, use_cache=False)
    _sync(dev)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        model(input_ids=ids, use_cache=False)
        _sync(dev)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


@torch.inference_mode()
def measure_cost(
    model: Any,
    *,
    seq_len: int = SHORT_WINDOW,
    batch_size: int = 8,
    warmup: int = 2,
    iters: int = 5,
    seed: int = 0,
) -> CostReport:
    """Parameters, MACs/token, and on the model's current device: latency (median forward time of one
    ``seq_len`` sequence at batch 1), throughput (tokens/s of a ``batch_size`` x ``seq_len`` forward) and
    peak memory of that batched forward (measured first, see ``CostReport.peak_memory_method``).

    On a CPU shared with other busy processes, torch's default of one OpenMP thread per core can make
    timings tens of times slower (threads wait on each other at every op); measure on an idle machine or
    with ``torch.set_num_threads(1)`` and report which."""
    ctx = model_context(model)
    if ctx is not None and seq_len > ctx:
        raise LorashearError(f"seq_len {seq_len} is larger than the model's context ({ctx} tokens)")
    if batch_size < 1 or iters < 1:
        raise LorashearError("batch_size and iters must be >= 1")
    dev = _device_of(model)
    dtype = next(model.parameters()).dtype
    vocab = int(getattr(model.config, "vocab_size", 2))
    gen = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        one = torch.randint(0, vocab, (1, seq_len), generator=gen).to(dev)
        many = torch.randint(0, vocab, (batch_size, seq_len), generator=gen).to(dev)
        # memory first: on CPU, buffers freed by earlier forwards are reused without growing the RSS
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
            model(input_ids=many, use_cache=False)
            _sync(dev)
            peak = torch.cuda.max_memory_allocated(dev)
            method = "cuda: torch.cuda.max_memory_allocated during the batched forward (weights included)"
        else:
            peak, method = _cpu_peak_rss(lambda: model(input_ids=many, use_cache=False))
        latency = _time_forward(model, one, warmup, iters)
        batched = _time_forward(model, many, 1, iters)
    finally:
        model.train(was_training)
    return CostReport(
        parameters=count_parameters(model),
        macs_per_token=macs_per_token(model, seq_len),
        macs_seq_len=seq_len,
        device=str(dev),
        dtype=str(dtype).replace("torch.", ""),
        latency_ms=latency * 1000,
        latency_seq_len=seq_len,
        throughput_tokens_per_s=batch_size * seq_len / batched,
        throughput_batch_size=batch_size,
        peak_memory_bytes=int(peak),
        peak_memory_method=method,
    )


# ------------------------------------------------------------------------------------------- lm-eval
def run_lm_eval(
    model: Any,
    tokenizer: Any,
    tasks: Sequence[str],
    *,
    include_path: str | Path | None = None,
    include_defaults: bool = True,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 1,
) -> dict[str, dict[str, Any]]:
    """Run lm-evaluation-harness tasks on an in-memory (e.g. pruned) model; returns ``results`` per task.

    Needs the optional extra (``pip install 'lorashear[eval]'``). Stock tasks download their datasets
    from the hub; offline, define a task in a YAML file over local files and pass its folder as
    ``include_path`` (``include_defaults=False`` then skips indexing the ~200 stock task folders).
    """
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise LorashearError("lm-eval is not installed: pip install 'lorashear[eval]'") from exc
    if not tasks:
        raise LorashearError("no lm-eval tasks given")
    if include_path is not None and not Path(include_path).exists():
        raise LorashearError(f"lm-eval include path not found: {include_path}")
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    manager = TaskManager(include_path=str(include_path) if include_path is not None else None,
                          include_defaults=include_defaults or include_path is None)
    known = set(manager.all_tasks)
    missing = [t for t in tasks if t not in known]
    if missing:
        raise LorashearError(f"unknown lm-eval task(s): {', '.join(missing)}")
    out = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit,
                                  num_fewshot=num_fewshot)
    return out["results"]


# --------------------------------------------------------------------------------------- whole report
@dataclass
class EvalReport:
    """What ``lorashear eval`` prints: perplexity rows, cost, and lm-eval results when asked for."""

    model: str
    perplexity: list[PerplexityResult]
    cost: CostReport | None = None
    lm_eval: dict | None = None

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "perplexity": [r.to_dict() for r in self.perplexity],
            "cost": self.cost.to_dict() if self.cost else None,
            "lm_eval": self.lm_eval,
        }


def perplexity_summary(model: Any, tokenizer: Any, sources: Mapping[str, Any], protocols: Sequence[str] = PROTOCOLS,
                       max_tokens: int | None = None, cost: bool = False) -> dict[str, Any]:
    """The evaluation block of a prune or recover run report: per-source rows, the mean per protocol, the token
    cap, and (``cost``) latency and memory."""
    rows = evaluate_perplexity(model, tokenizer, sources, protocols=protocols, max_tokens=max_tokens)
    out: dict[str, Any] = {"perplexity": [r.to_dict() for r in rows], "max_tokens_per_source": max_tokens}
    for p in protocols:
        vals = [r.ppl for r in rows if r.protocol == p]
        out[f"mean_{p}"] = sum(vals) / len(vals)
    if cost:
        out["cost"] = measure_cost(model).to_dict()
    return out


def evaluate_model(
    model_path: str | Path,
    *,
    data: Sequence[str] = ("demo",),
    field: str = "text",
    split: str | None = None,
    protocols: Sequence[str] = PROTOCOLS,
    max_tokens: int | None = None,
    cost: bool = True,
    device: str | None = None,
    tasks: Sequence[str] | None = None,
    include_path: str | Path | None = None,
    limit: int | float | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> EvalReport:
    """Load a model folder and evaluate it: perplexity per data source (specs as in
    ``data.load_sources``) under each protocol, optionally cost and lm-eval tasks. The one call behind
    ``lorashear eval`` and the ``eval`` job (``progress(fraction, stage)`` moves once per source)."""
    progress = progress or (lambda f, s: None)
    for p in protocols:
        if p not in PROTOCOLS:
            raise LorashearError(f"unknown perplexity protocol {p!r}; choose short, long or both")
    if max_tokens is not None and max_tokens < 2:
        raise LorashearError(f"max_tokens must be >= 2, got {max_tokens}")
    progress(0.02, "loading data")
    sources = load_sources(list(data), field=field, split=split)  # data errors before the slow model load
    progress(0.1, "loading the model")
    model, tokenizer = load_model(model_path, device=device)
    steps = len(sources) + (1 if cost else 0) + (1 if tasks else 0)
    rows = []
    for i, (name, texts) in enumerate(sources.items()):
        progress(0.15 + 0.8 * i / steps, f"perplexity on {name}")
        rows += evaluate_perplexity(model, tokenizer, {name: texts}, protocols=protocols, max_tokens=max_tokens)
    report = EvalReport(str(model_path), rows)
    if cost:
        progress(0.15 + 0.8 * len(sources) / steps, "measuring cost")
        report.cost = measure_cost(model)
    if tasks:
        progress(0.15 + 0.8 * (steps - 1) / steps, "lm-eval tasks")
        report.lm_eval = run_lm_eval(model, tokenizer, tasks, include_path=include_path, limit=limit)
    progress(1.0, "done")
    return report
