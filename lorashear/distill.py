"""Distillation for the training stages (prune: LHSPG and every baseline; recover): the loss and the teacher.

Why: a pruned model recovers more per token from the dense model's whole next-token distribution than from the
one observed token (Minitron, arXiv 2408.11796), and the teacher should first be fine-tuned on the distillation
data ("teacher correction"). Here the corrected teacher is exactly the honest reference a pruning run is judged
against: the dense model given the same LoRA budget on the same data stream (``prune.run.finetune_dense``). Both
train through ``train_lora`` below, so the teacher *is* that reference, step for step.

The loss (``loss_fn``) per labelled next-token position, with temperature T::

    loss = CE(model)  [dropped with pure_kd]  +  distill × T² × KL(softmax(teacher / T) ‖ softmax(model / T))

averaged over the labelled tokens (or summed, for ``runs.train_step``'s micro-batches). With ``top_k`` the KL is
taken over the teacher's top-k logits only, both distributions renormalised over those k entries: the teacher's
side is then ``k`` values per token instead of the vocabulary (the student's full logits exist anyway, for CE).
The teacher runs under ``torch.no_grad()`` in eval mode and is never trained.

Teachers (``teacher`` setting): ``dense`` (the dense model as loaded), ``finetuned`` (the corrected teacher,
cached on disk: ``corrected_teacher``), or a model folder (loaded once). Sharing base weights: a LoRA student
could share its frozen base with a teacher of the same base, but no student here has that base — the pruning run
prunes the dense base *in place* (its rows are zeroed and, at period ends, merged into), and recovery's student
is the already compressed model — so every teacher is one separate copy of dense-sized weights, never two.

The cache: ``$LORASHEAR_CACHE/teachers/<key>/`` (default ``~/.cache/lorashear``), written atomically, holds the
teacher's LoRA factors (``adapter.safetensors``, small) and ``teacher.json``; the key is a hash of the dense
model's weights and config, the packed training tokens and their sampling weights, and the budget (steps, batch,
sequence length, lr, LoRA r / alpha / targets, seed). Reuse rebuilds the teacher from the dense model and those
factors, bit for bit the teacher training would give.

This module sits below prune and recover and imports neither.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from . import runs
from .adapters import add_lora, is_lora_param
from .errors import LorashearError
from .jsonio import write_dir_atomic, write_json_atomic

TEACHER_FORMAT = "lorashear.teacher/1"
Progress = Callable[[float, str], None]


# ------------------------------------------------------------------------------------------------ the loss
def kd_per_token(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                 top_k: int | None = None) -> torch.Tensor:
    """T² × KL(softmax(teacher / T) ‖ softmax(student / T)) per position (the last axis is the vocabulary);
    ``top_k``: over the teacher's top-k logits only, both renormalised over them."""
    t = teacher_logits.detach().float() / temperature
    s = student_logits.float() / temperature
    if top_k is not None and top_k < t.shape[-1]:
        t, idx = t.topk(top_k, dim=-1)
        s = s.gather(-1, idx)
    lt, ls = t.log_softmax(-1), s.log_softmax(-1)
    return (lt.exp() * (lt - ls)).sum(-1) * temperature ** 2


def loss_fn(teacher: Any, weight: float, *, pure: bool = False, temperature: float = 1.0,
            top_k: int | None = None) -> runs.LossFn:
    """``runs.train_step``'s ``loss_fn``: next-token cross-entropy (none with ``pure``) + ``weight`` × the
    distillation term, over the batch's labelled next-token positions (labels -100 carry neither term)."""

    def loss(model: Any, batch: Mapping[str, torch.Tensor], reduction: str = "mean") -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs, use_cache=False).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        keep = labels != -100
        every = bool(keep.all())  # pretraining batches: no copy through a boolean index
        pick = (lambda x: x.reshape(-1, x.shape[-1])) if every else (lambda x: x[keep])
        k = top_k if top_k is not None and top_k < logits.shape[-1] else None
        with torch.no_grad():
            tl = _scaled(pick(teacher(**inputs, use_cache=False).logits[:, :-1]), temperature)
            if k is not None:  # keep k values per token, not the vocabulary
                tl, idx = tl.topk(k, dim=-1)
            lt = tl.log_softmax(-1)
            del tl
        s = pick(logits)
        s = _scaled(s.gather(-1, idx) if k is not None else s, temperature)
        ls = s.log_softmax(-1)
        kd = torch.nn.functional.kl_div(ls, lt, log_target=True, reduction="sum") * temperature ** 2
        total = weight * kd
        if not pure and k is None and temperature == 1.0:  # the same log-softmax gives the next-token term
            total = total - ls.gather(-1, pick(labels.unsqueeze(-1))).sum()
        elif not pure:
            total = total + torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), labels,
                                                              ignore_index=-100, reduction="sum")
        return total / max(int(keep.sum()), 1) if reduction == "mean" else total
    return loss


def _scaled(x: torch.Tensor, temperature: float) -> torch.Tensor:
    """``x`` in fp32, divided by the temperature (no copy when neither changes anything)."""
    x = x.float()
    return x if temperature == 1.0 else x / temperature


# ---------------------------------------------------------------------------------------- the budget
@dataclass(frozen=True)
class Budget:
    """What a same-budget LoRA fine-tune is given: the corrected teacher's (and the dense reference's) recipe."""

    steps: int
    batch_size: int
    seq_len: int
    lr: float
    lora_r: int
    lora_alpha: float
    lora_targets: str
    seed: int
    lr_schedule: str = "constant"  # runs.scheduled_lr over all the steps

    @classmethod
    def of(cls, st: Any, steps: int | None = None, lr_schedule: str = "constant") -> "Budget":
        """The budget of a run's settings (``steps``: when the settings count tokens instead)."""
        return cls(steps=st.steps if steps is None else steps, batch_size=st.batch_size, seq_len=st.seq_len,
                   lr=float(st.lr), lora_r=st.lora_r, lora_alpha=float(st.lora_alpha), lora_targets=st.lora_targets,
                   seed=st.seed, lr_schedule=lr_schedule)

    def key(self) -> dict[str, Any]:
        """The fields a teacher's cache key hashes: a constant schedule is left out, so the keys of teachers
        cached before schedules existed still match."""
        d = asdict(self)
        if d["lr_schedule"] == "constant":
            del d["lr_schedule"]
        return d


def train_lora(model: Any, packed: Any, budget: Budget, *, weights: Mapping[str, float] | None = None,
               progress: Progress | None = None) -> tuple[Any, list[float]]:
    """The dense same-budget fine-tune: LoRA on ``model`` (in place), AdamW, ``budget.steps`` steps on the
    batches ``packed.sample`` draws at ``runs.batch_seed(seed, t)`` — the pruning run's data stream, without
    pruning. Returns (the PEFT model, losses)."""
    peft_model = add_lora(model, budget.lora_r, budget.lora_alpha, budget.lora_targets, budget.seed)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    return peft_model, _train(peft_model, params, packed, budget, weights, progress)


def train_full(model: Any, packed: Any, budget: Budget, *, weights: Mapping[str, float] | None = None,
               progress: Progress | None = None) -> tuple[Any, list[float]]:
    """The dense model given a ``--train full`` run's budget: every parameter, AdamW at ``budget.lr``, the same
    steps and data stream as :func:`train_lora` (no adapters: ``lora_*`` are unused). The fair reference for a
    pruned model trained with ``--train full`` — a LoRA-trained dense model would flatter it. Not a teacher and not
    cached. Returns (``model``, trained in place, losses)."""
    params = [p for p in model.parameters()]
    for p in params:
        p.requires_grad_(True)
    return model, _train(model, params, packed, budget, weights, progress)


def _train(model: Any, params: list, packed: Any, budget: Budget, weights: Mapping[str, float] | None,
           progress: Progress | None) -> list[float]:
    """``budget.steps`` AdamW steps over ``params`` on the run's data stream; returns the losses."""
    progress = progress or (lambda f, s: None)
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(params, lr=budget.lr)
    model.train()
    losses = []
    for t in range(budget.steps):
        ids, _ = packed.sample(budget.batch_size, seed=runs.batch_seed(budget.seed, t), weights=weights)
        ids = ids.to(device)
        runs.set_lr(opt, runs.scheduled_lr(budget.lr, budget.lr_schedule, t, 0, budget.steps))
        losses.append(runs.train_step(model, opt, {"input_ids": ids, "labels": ids}, t))
        progress((t + 1) / max(budget.steps, 1), f"step {t + 1}/{budget.steps} loss {losses[-1]:.3f}")
    return losses


# ------------------------------------------------------------------------------------------------ cache
def cache_root() -> Path:
    """``$LORASHEAR_CACHE`` or ``~/.cache/lorashear``."""
    return Path(os.environ.get("LORASHEAR_CACHE") or Path.home() / ".cache" / "lorashear")


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def model_identity(model: Any) -> str:
    """A hash of what the model computes: its class, config (names and versions left out) and every tensor."""
    h = hashlib.blake2b(digest_size=16)
    h.update(type(model).__name__.encode())
    cfg = {k: v for k, v in model.config.to_dict().items() if not k.startswith("_") and k != "transformers_version"}
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    for name, t in model.state_dict().items():
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


def teacher_key(model: Any, packed: Any, budget: Budget, weights: Mapping[str, float] | None = None) -> str:
    """The cache key of a corrected teacher: (model identity, training tokens and sampling weights, budget)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(model_identity(model).encode())
    for name, blocks in packed.blocks.items():
        h.update(f"{name}{tuple(blocks.shape)}".encode())
        h.update(_tensor_bytes(blocks))
    w = dict(weights) if weights is not None else dict(packed.weights)
    h.update(json.dumps({"weights": w, "budget": budget.key(), "format": TEACHER_FORMAT}, sort_keys=True).encode())
    return h.hexdigest()


def corrected_teacher(model: Any, packed: Any, budget: Budget, *, weights: Mapping[str, float] | None = None,
                      progress: Progress | None = None) -> tuple[Any, dict]:
    """The dense ``model`` (consumed: its weights become the teacher's) after the same-budget LoRA fine-tune on
    ``packed``, merged, in eval mode, frozen. Trained once per key and cached; a matching key reuses the cached
    factors instead of training. Returns (teacher, info: kind, key, path, reused, steps, last losses)."""
    progress = progress or (lambda f, s: None)
    key = teacher_key(model, packed, budget, weights)
    folder = cache_root() / "teachers" / key
    meta_file, adapter_file = folder / "teacher.json", folder / "adapter.safetensors"
    with torch.random.fork_rng(devices=[]):  # building the teacher leaves the run's random stream as it was
        if meta_file.is_file() and adapter_file.is_file():
            from safetensors.torch import load_file

            progress(1.0, f"reusing the fine-tuned teacher {key[:12]}")
            meta = json.loads(meta_file.read_text())
            peft_model = add_lora(model, budget.lora_r, budget.lora_alpha, budget.lora_targets, budget.seed)
            saved = load_file(str(adapter_file))
            params = {n: p for n, p in peft_model.named_parameters() if is_lora_param(n)}
            if set(saved) != set(params):
                raise LorashearError(f"{folder}: cached teacher adapters do not fit this model; delete the folder")
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(saved[n].to(p.device))
            reused = True
        else:
            peft_model, losses = train_lora(model, packed, budget, weights=weights,
                                            progress=lambda f, s: progress(f, f"fine-tuning the teacher: {s}"))
            meta = {"format": TEACHER_FORMAT, "key": key, "budget": asdict(budget),
                    "weights": dict(weights) if weights is not None else dict(packed.weights),
                    "losses": losses}
            tensors = runs.checkpoint_tensors(peft_model)

            def write(tmp: Path) -> None:
                from safetensors.torch import save_file

                save_file(tensors, str(tmp / "adapter.safetensors"))
                (tmp / "teacher.json").write_text(json.dumps(meta))

            write_dir_atomic(folder, write)
            reused = False
    teacher = peft_model.merge_and_unload().eval().requires_grad_(False)
    tail = meta["losses"][-10:]
    return teacher, {"kind": "finetuned", "key": key, "path": str(folder), "reused": reused, "steps": budget.steps,
                     "train_loss_last10": sum(tail) / len(tail) if tail else None}


def teacher_losses(info: Mapping[str, Any]) -> list[float]:
    """The training losses of a cached corrected teacher (recorded when it was trained), or []."""
    f = Path(info.get("path", "")) / "teacher.json"
    return list(json.loads(f.read_text()).get("losses", [])) if info.get("kind") == "finetuned" and f.is_file() else []


def cached_eval(info: Mapping[str, Any], what: Mapping[str, Any], compute: Callable[[], dict]) -> dict:
    """The teacher's evaluation for ``what`` (the evaluation's settings), read from its cache folder when a run
    already computed it there, else ``compute()``d and stored beside the teacher (atomically)."""
    if info.get("kind") != "finetuned":
        return compute()
    digest = hashlib.blake2b(json.dumps(what, sort_keys=True, default=str).encode(), digest_size=8).hexdigest()
    f = Path(info["path"]) / f"eval-{digest}.json"
    if f.is_file():
        return json.loads(f.read_text())
    result = compute()
    if Path(info["path"]).is_dir():
        write_json_atomic(f, result)
    return result


# --------------------------------------------------------------------------------------------- the teacher
def build_teacher(kind: str, dense: Callable[[], Any], *, packed: Any, budget: Budget, device: Any,
                  vocab: int, dtype: torch.dtype | None = None, weights: Mapping[str, float] | None = None,
                  progress: Progress | None = None) -> tuple[Any, dict]:
    """The teacher a run distils from: ``dense`` (a callable giving the dense model, which the teacher may own),
    ``finetuned`` (``corrected_teacher`` of it on ``packed`` with ``budget``), or any other ``kind``: a model
    folder (or loader source), loaded once on ``device`` in ``dtype`` (the student's). Its vocabulary must be the
    student's (``vocab`` logits)."""
    from .loading import load_causal_lm, resolve_source

    if kind == "dense":
        teacher, info = dense().eval().requires_grad_(False), {"kind": "dense"}
    elif kind == "finetuned":
        teacher, info = corrected_teacher(dense(), packed, budget, weights=weights, progress=progress)
    else:
        path = resolve_source(kind)
        if path.is_file() and path.suffix.lower() != ".gguf":
            raise LorashearError(f"teacher {kind}: a config file has no weights; give a model folder")
        teacher = load_causal_lm(path, dtype=dtype, device=device).requires_grad_(False)
        info = {"kind": "folder", "path": str(kind)}
    out = teacher.get_output_embeddings()
    n = out.weight.shape[0] if out is not None else getattr(teacher.config, "vocab_size", None)
    if n != vocab:
        raise LorashearError(f"teacher {kind}: {n} output logits, but the model being trained has {vocab}; "
                             "a teacher must share the student's vocabulary")
    return teacher, info


def check_teacher(kind: str | None) -> None:
    """Refuse a teacher folder that cannot load (one line), before a run loads, traces or trains anything."""
    if kind is None or kind in ("dense", "finetuned"):
        return
    from .loading import check_model_source

    try:
        path = check_model_source(kind)
    except LorashearError as exc:
        raise LorashearError(f"teacher: {exc}") from None
    if path.is_file() and path.suffix.lower() != ".gguf":
        raise LorashearError(f"teacher {kind}: a config file has no weights; give a model folder")


def output_size(model: Any) -> int:
    """The number of logits ``model`` gives per position."""
    out = model.get_output_embeddings()
    return int(out.weight.shape[0]) if out is not None else int(model.config.vocab_size)


def snapshot(model: Any) -> Any:
    """A copy of ``model`` to build a teacher from later (the pruning run changes its own model in place)."""
    return copy.deepcopy(model)


__all__ = ["kd_per_token", "loss_fn", "Budget", "train_lora", "train_full", "cache_root", "model_identity", "teacher_key",
           "corrected_teacher", "cached_eval", "build_teacher", "check_teacher", "output_size", "snapshot"]
